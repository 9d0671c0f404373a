"""Secret providers made by kind: the names `[secrets] providers` lists.

A provider module adds itself with one line in PROVIDERS (a factory taking the context). A kind
that conveyor.toml accepts but this conveyor cannot make (its package is missing) answers every
lookup with ProviderUnavailable saying so, so the resolver reports it and tries the next one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from conveyor.config.secrets import SecretsSettings
from conveyor.secrets.base import Provider, ProviderUnavailable, SecretError, SecretValue
from conveyor.secrets.local import LocalProvider, LocalSecrets
from conveyor.secrets.providers import CommandProvider, DotenvProvider, EnvProvider


@dataclass(frozen=True)
class ProviderContext:
    """What a provider of one environment is made from."""

    app: str
    environment: str
    settings: SecretsSettings
    local: LocalSecrets


ProviderFactory = Callable[[ProviderContext], Provider]


def _local(ctx: ProviderContext) -> Provider:
    return LocalProvider(ctx.local, ctx.environment)


def _env(ctx: ProviderContext) -> Provider:
    return EnvProvider()


def _dotenv(ctx: ProviderContext) -> Provider:
    assert ctx.settings.dotenv is not None  # configuration requires it (config/secrets.py)
    return DotenvProvider(ctx.settings.dotenv)


def _command(ctx: ProviderContext) -> Provider:
    assert ctx.settings.command is not None  # configuration requires it
    return CommandProvider(ctx.settings.command, ctx.app, ctx.environment, ctx.settings.timeout)


def _aws(ctx: ProviderContext) -> Provider:
    from conveyor.secrets.aws import AwsProvider  # boto3 is an extra: imported when listed

    settings = ctx.settings.aws.model_dump() if ctx.settings.aws is not None else {}
    return AwsProvider.from_settings(settings, ctx.settings.timeout)


def _vault(ctx: ProviderContext) -> Provider:
    from conveyor.secrets.vault import VaultProvider  # hvac too

    settings = ctx.settings.vault.model_dump() if ctx.settings.vault is not None else {}
    return VaultProvider.from_settings(settings, ctx.settings.timeout)


PROVIDERS: dict[str, ProviderFactory] = {
    "local": _local,
    "env": _env,
    "dotenv": _dotenv,
    "command": _command,
    "aws": _aws,
    "vault": _vault,
}
# Providers whose values are copied, encrypted, into the local store as they are fetched: the
# ones that can be unreachable (a break-glass read falls back on the copy).
CACHED = frozenset({"command", "aws", "vault"})


class Unavailable:
    """A kind this conveyor cannot make: every lookup says why."""

    def __init__(self, name: str, why: str) -> None:
        self.name = name
        self.why = why

    async def get(self, name: str, version: str | None = None) -> SecretValue | None:
        raise ProviderUnavailable(self.why)


def make(kind: str, ctx: ProviderContext) -> Provider:
    factory = PROVIDERS.get(kind)
    if factory is None:
        extra = {"aws": "aws", "vault": "vault"}.get(kind)
        hint = f" (install conveyor-deploy[{extra}])" if extra else ""
        return Unavailable(kind, f"this conveyor has no {kind} provider{hint}")
    try:
        return factory(ctx)
    except SecretError as exc:  # a missing package, or settings it refuses
        return Unavailable(kind, str(exc))
