"""pydantic's validation errors translated to issues in TOML's words, at TOML key paths."""

from __future__ import annotations

import types
from collections.abc import Sequence
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from conveyor.config.errors import Issue, LocatedValueError, did_you_mean, dotted_key, toml_type
from conveyor.config.models import Config

# pydantic's wording is about Python types; users wrote TOML.
_EXPECTED = {
    "model_type": "expected a table",
    "dict_type": "expected a table",
    "int_type": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "string_type": "expected a string",
    "bool_type": "expected true or false",
    "list_type": "expected an array",
}


def issues_from_validation(
    err: ValidationError, model: type[BaseModel], prefix: tuple[str, ...] = ()
) -> list[Issue]:
    """Translate pydantic's errors for `model` (found at `prefix` in the document) to issues."""
    issues: list[Issue] = []
    for error in err.errors(include_url=False):
        # "[key]" marks an error in a dict key (e.g. a bad service name): point at the key itself.
        loc = tuple(str(part) for part in error["loc"] if part != "[key]")
        path = (*prefix, *loc)
        kind = error["type"]
        if kind == "extra_forbidden":
            fields = _fields_at(model, loc[:-1])
            hint = did_you_mean(loc[-1], fields)
            message = f"unknown key {loc[-1]!r}"
            message += f" (did you mean {hint!r}?)" if hint else _known_keys(fields)
            issues.append(Issue(path, message, "unknown", hint))
        elif kind == "missing":
            is_table = _is_table(model, loc)
            what = f"missing table [{dotted_key(path)}]" if is_table else "missing required key"
            issues.append(Issue(path, what, "missing"))
        elif kind in ("value_error", "assertion_error"):
            cause = error["ctx"]["error"]
            if isinstance(cause, LocatedValueError):
                path = (*path, *cause.path)
            issues.append(Issue(path, str(cause)))
        else:
            expected = _EXPECTED.get(kind) or _lower_first(error["msg"]).replace(
                "input should be", "must be"
            )
            issues.append(Issue(path, f"{expected}{_got(error['input'])}"))
    return issues


def _known_keys(fields: Sequence[str]) -> str:
    return f" (valid keys: {', '.join(fields)})" if fields else ""


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _got(value: object) -> str:
    name = toml_type(value)
    if name is None:
        return ""
    if isinstance(value, dict | list):
        return f" (got {name})"
    return f" (got {name}: {value!r})"


def _unwrap(annotation: Any) -> Any:
    """Strip Annotated[...] and Optional[...] down to the type that describes the value."""
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(annotation) if a is not type(None)]
            if len(args) != 1:
                return annotation
            annotation = args[0]
        else:
            return annotation


def _type_at(model: type[BaseModel], loc: Sequence[str]) -> Any:
    current: Any = model
    remaining = list(loc)
    while remaining:
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(remaining.pop(0))
            if field is None:
                return None
            current = field.annotation
        elif get_origin(current) is dict:
            remaining.pop(0)
            current = get_args(current)[1]
        elif get_origin(current) is list:
            remaining.pop(0)  # the index
            current = get_args(current)[0]
        else:
            return None
    return _unwrap(current)


def _fields_at(model: type[BaseModel], loc: Sequence[str]) -> list[str]:
    found = _type_at(model, loc)
    if isinstance(found, type) and issubclass(found, BaseModel):
        return [name for name in found.model_fields if not (found is Config and name == "source")]
    return []


def _is_table(model: type[BaseModel], loc: Sequence[str]) -> bool:
    found = _type_at(model, loc)
    return get_origin(found) is dict or (isinstance(found, type) and issubclass(found, BaseModel))
