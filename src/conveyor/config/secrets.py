"""The secrets keys of conveyor.toml: which providers answer, in which order, and their settings.

`[secrets]` holds the defaults, `[environments.NAME.secrets]` overrides them key by key (a
provider's table as a whole), and `SecretsSettings` is what one environment ends up with: what
`conveyor.secrets.resolve.Resolver` is made from. Which services get which secrets is
`[services.NAME] secrets` (conveyor.config.models).

Imported by conveyor.config.models, so this imports nothing of it.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    WithJsonSchema,
    model_validator,
)

from conveyor.config.errors import Issue, LocatedValueError, toml_type
from conveyor.core.durations import parse_duration

ProviderKind = Literal["local", "env", "dotenv", "command", "aws", "vault"]
PROVIDER_KINDS: tuple[ProviderKind, ...] = get_args(ProviderKind)
DEFAULT_PROVIDERS: tuple[ProviderKind, ...] = ("local",)
DEFAULT_TIMEOUT = 5.0
# A secret is handed to a service as an environment variable: its name must be one.
SECRET_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_NAME = 200
# What a command provider's command may contain, substituted per secret.
COMMAND_PLACEHOLDERS = ("name", "environment", "app")


def check_secret_name(value: str) -> str:
    if not SECRET_NAME.fullmatch(value) or len(value) > MAX_NAME:
        raise ValueError(
            f"invalid secret name {value!r}: use letters, digits and '_', not starting with a "
            "digit (it becomes an environment variable)"
        )
    if value == "PORT" or value.startswith("CONVEYOR_"):
        raise ValueError(f"{value} is set by conveyor itself: choose another secret name")
    return value


SecretName = Annotated[str, AfterValidator(check_secret_name)]


def _distinct_names(value: list[str]) -> list[str]:
    for index, name in enumerate(value):
        if name in value[:index]:
            raise LocatedValueError(f"secret {name!r} is listed twice", str(index))
    return value


SecretNames = Annotated[list[SecretName], AfterValidator(_distinct_names)]


def _timeout(value: object) -> float:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ValueError(f'expected a duration such as "5s", got {toml_type(value) or "a date"}')
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("must be greater than 0")
    return seconds


Timeout = Annotated[
    float,
    BeforeValidator(_timeout),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "number", "exclusiveMinimum": 0}]}),
]


class _Model(BaseModel):
    # As conveyor.config.models._Model: strict and closed (a typo is an error, not ignored).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _not_blank(what: str) -> Any:
    def check(value: str) -> str:
        if not value.strip():
            raise ValueError(f"{what} must not be empty")
        return value

    return check


class AwsSecrets(_Model):
    """AWS Secrets Manager: secret `prefix + NAME` in `region` (credentials as boto3 finds them)."""

    region: str | None = None
    prefix: str = ""
    # Another endpoint than AWS's own (a VPC endpoint; moto in the contract tests).
    endpoint_url: str | None = None
    profile: str | None = None


class VaultSecrets(_Model):
    """Vault KV version 2: field NAME of the secret at `path` under `mount` (token: VAULT_TOKEN)."""

    url: Annotated[str, AfterValidator(_not_blank("url"))]
    # Declared after url, before path: pydantic reports missing keys in this order.
    mount: str = "secret"
    path: Annotated[str, AfterValidator(_not_blank("path"))]
    namespace: str | None = None


def _check_command(value: str) -> str:
    if not value.strip():
        raise ValueError('command must not be empty (e.g. command = "op read op://shop/{name}")')
    try:
        words = shlex.split(value)
    except ValueError as exc:
        raise ValueError(f"command cannot be split into words: {exc}") from None
    for word in words:
        for found in re.findall(r"\{([^{}]*)\}", word):
            if found not in COMMAND_PLACEHOLDERS:
                known = " ".join(f"{{{p}}}" for p in COMMAND_PLACEHOLDERS)
                raise ValueError(f"unknown placeholder {{{found}}} in command (known: {known})")
    return value


class SecretsConfig(_Model):
    """`[secrets]`, or `[environments.NAME.secrets]`: every key optional (unset: inherited)."""

    providers: list[ProviderKind] | None = None
    # How long one provider may take to answer for one name.
    timeout: Timeout | None = None
    aws: AwsSecrets | None = None
    vault: VaultSecrets | None = None
    command: Annotated[str, AfterValidator(_check_command)] | None = None
    dotenv: Annotated[str, AfterValidator(_not_blank("dotenv"))] | None = None

    @model_validator(mode="after")
    def _distinct_providers(self) -> SecretsConfig:
        providers = self.providers
        if providers is not None:
            if not providers:
                raise LocatedValueError(
                    'providers must name at least one provider (e.g. ["local"])', "providers"
                )
            for index, kind in enumerate(providers):
                if kind in providers[:index]:
                    raise LocatedValueError(
                        f"provider {kind!r} is listed twice", "providers", str(index)
                    )
        return self


class SecretsSettings(_Model):
    """The secrets settings of one environment, defaults and overrides merged."""

    providers: tuple[ProviderKind, ...] = DEFAULT_PROVIDERS
    timeout: float = DEFAULT_TIMEOUT
    aws: AwsSecrets | None = None
    vault: VaultSecrets | None = None
    command: str | None = None
    # Absolute: made so against the directory of conveyor.toml when resolved.
    dotenv: Path | None = None


# What a provider needs configured before it can be listed, and an example of it.
_NEEDS = {
    "command": 'command = "op read op://shop/{name}/password"',
    "dotenv": 'dotenv = ".env.local"',
    "vault": 'vault = { url = "https://vault:8200", mount = "secret", path = "shop" }',
}


def resolve_secrets(
    base: SecretsConfig, override: SecretsConfig | None, env: str, project_dir: Path
) -> tuple[SecretsSettings | None, list[Issue]]:
    """`override` (environment `env`'s) on top of `base`; the settings, or what is missing."""
    merged: dict[str, Any] = {}
    for layer in (base, override):
        if layer is not None:
            merged.update({k: v for k, v in layer if v is not None})
    providers = tuple(merged.pop("providers", DEFAULT_PROVIDERS))
    if override is not None and override.providers is not None:
        where: tuple[str, ...] = ("environments", env, "secrets", "providers")
    else:
        where = ("secrets", "providers")
    issues = [
        Issue(
            (*where, str(providers.index(kind))),
            f"provider {kind!r} needs its settings in [secrets] or "
            f"[environments.{env}.secrets]: {_NEEDS[kind]}",
        )
        for kind in providers
        if kind in _NEEDS and merged.get(kind) is None
    ]
    if issues:
        return None, issues
    if merged.get("dotenv") is not None:
        merged["dotenv"] = project_dir / merged["dotenv"]
    return SecretsSettings.model_construct(providers=providers, **_with_defaults(merged)), []


def _with_defaults(merged: dict[str, Any]) -> dict[str, Any]:
    defaults = {name: f.default for name, f in SecretsSettings.model_fields.items()}
    defaults.pop("providers")
    return {**defaults, **merged}
