"""Option values turned into their types without pydantic.

typer (0.29) coerces every option value through a pydantic TypeAdapter that it builds on first
use. Importing pydantic and building the adapters cost more than the rest of `conveyor status
--json` (issue 7: about 90 ms of 300 on a loaded machine). Our parameters are all plain (str,
int, float, bool, Path without constraints): `install` gives each of them a coercion that needs
no pydantic, with click's messages ("'abc' is not a valid integer."). Any other parameter keeps
typer's. The hook is typer's lazily built `_runtime_param`: should a typer release drop it,
nothing is installed, commands stay correct, and tests/unit/test_quick_commands.py fails.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from typer._click import Command, Context
from typer._click.exceptions import BadParameter
from typer._coercion import RuntimeParam
from typer._param_types import coerce_cli_path

_NUMBERS: dict[type, str] = {int: "integer", float: "float"}


class PlainParam(RuntimeParam):
    """The coercion of one str, int, float, bool or Path parameter."""

    def _coerce_value(self, value: Any, param: Any, ctx: Context) -> Any:
        kind = self.annotation
        if kind is str:
            return value if isinstance(value, str) else str(value)
        if kind is bool:
            return _boolean(value, param, ctx)
        if kind in _NUMBERS:
            if isinstance(value, kind) and not isinstance(value, bool):
                return value
            try:
                return kind(value.strip() if isinstance(value, str) else value)
            except (TypeError, ValueError):
                raise BadParameter(
                    f"{value!r} is not a valid {_NUMBERS[kind]}.", ctx=ctx, param=param
                ) from None
        # Path: typer's own checks, given a Path (a str would send it to pydantic).
        path = value if isinstance(value, Path) else Path(value)
        return coerce_cli_path(path, self.parameter_info, path_type=Path, param=param, ctx=ctx)


_TRUE = frozenset({"1", "true", "t", "yes", "y", "on"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off", ""})


def _boolean(value: Any, param: Any, ctx: Context) -> bool:
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise BadParameter(f"{value!r} is not a valid boolean.", ctx=ctx, param=param)


def plain(param: Any) -> bool:
    """Whether `param` is a typer parameter of a plain type: no parser, choices, bounds, files,
    lists or path checks beyond typer's defaults."""
    descriptor = getattr(param, "type_descriptor", None)
    if descriptor is None or not hasattr(param, "_runtime_param"):
        return False
    info = descriptor.parameter_info
    if param.multiple or param.nargs != 1 or descriptor.file_annotation is not None:
        return False
    if info.parser is not None or info.min is not None or info.max is not None:
        return False
    kind = descriptor.annotation
    if kind is Path:
        return info.path_type is None and not info.resolve_path
    return kind in (str, int, float, bool) and not descriptor.is_choice


def install(command: Command, ctx: Context) -> int:
    """Give every plain parameter of `command` and its subcommands, their help options
    included, the coercion above; return how many parameters got it. `ctx` is the root
    command's context: subcommands inherit its help option names."""
    count = 0
    for param in [*command.params, command.get_help_option(ctx)]:
        if plain(param) and param._runtime_param is None:  # type: ignore[union-attr]
            descriptor = param.type_descriptor  # type: ignore[union-attr]
            param._runtime_param = PlainParam(  # type: ignore[union-attr]
                parameter_info=descriptor.parameter_info, annotation=descriptor.annotation
            )
            count += 1
    for sub in getattr(command, "commands", {}).values():
        count += install(sub, ctx)
    return count
