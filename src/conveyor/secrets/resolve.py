"""Resolving secret names into values: the providers of an environment, tried in order.

For each name the providers are asked in the order `providers` lists them, each bounded by the
settings' timeout; the first that has the name wins. A provider that fails (timeout, refused,
a value that does not decrypt) is noted and the next one is asked. A name nobody has is a
SecretError naming it and every provider tried with why. Each call is one entry in the audit
log: the names, and which provider gave which version — never a value. A value fetched from a
remote provider is copied, encrypted, into the local store for a break-glass read.

This is what the engine calls before it starts a service:

    resolver = Resolver(store, env.app, env.secrets, paths.home, actor)
    values = await resolver.resolve(env.name, required_names(env))
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from conveyor.config.models import ResolvedEnvironment
from conveyor.config.secrets import SecretsSettings
from conveyor.secrets.base import Provider, SecretError, SecretValue
from conveyor.secrets.keys import Prompt
from conveyor.secrets.local import Clock, LocalSecrets
from conveyor.secrets.registry import CACHED, ProviderContext, make
from conveyor.store import audit
from conveyor.store.db import Store

FOUND, MISSING, FAILED = "found", "missing", "failed"
BOUND_MARGIN = 1.0


def required_names(env: ResolvedEnvironment) -> list[str]:
    """The secrets an environment needs: every service's, then the webhooks' url_secret."""
    names = [name for svc in env.services.values() for name in svc.secrets]
    names += [n.url_secret for n in env.notifications if n.url_secret]
    return list(dict.fromkeys(names))


@dataclass(frozen=True)
class Attempt:
    """One provider asked for one name."""

    name: str
    provider: str
    outcome: str  # found | missing | failed
    detail: str  # "version 3", "not found", "timed out after 5s"
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "provider": self.provider,
            "outcome": self.outcome,
            "detail": self.detail,
            "ms": round(self.seconds * 1000, 1),
        }


class Resolved(dict[str, SecretValue]):
    """The values by name, with what happened on the way: `notes` (provider failures worth
    showing) and every `attempts`."""

    def __init__(self) -> None:
        super().__init__()
        self.notes: list[str] = []
        self.attempts: list[Attempt] = []

    def versions(self) -> dict[str, tuple[str, str]]:
        """(provider, version) by name: what a deployment records, and `pinned` takes back."""
        return {name: (v.provider, v.version) for name, v in self.items()}

    def missing(self, names: Sequence[str]) -> list[str]:
        return [name for name in names if name not in self]


@dataclass
class Resolver:
    """The secrets of one app as one environment's settings find them."""

    store: Store
    app: str
    settings: SecretsSettings
    home: Path
    actor: str
    prompt: Prompt | None = None
    project_dir: Path | None = None
    clock: Clock = field(default=lambda: datetime.now(UTC))
    # The audit log's action for each call: a deploy's resolution, or `conveyor secrets get`.
    audit_action: str = "secrets.resolve"
    local: LocalSecrets = field(init=False)
    _providers: dict[tuple[str, str], Provider] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        self.local = LocalSecrets(
            self.store, self.app, self.home, self.prompt, self.project_dir, self.clock
        )

    def provider(self, environment: str, kind: str) -> Provider:
        key = (environment, kind)
        if key not in self._providers:
            ctx = ProviderContext(self.app, environment, self.settings, self.local)
            self._providers[key] = make(kind, ctx)
        return self._providers[key]

    async def resolve(
        self,
        environment: str,
        names: Sequence[str],
        pinned: Mapping[str, tuple[str, str]] | None = None,
        purpose: str = "deploy",
    ) -> Resolved:
        """Every name's value; SecretError naming each one that cannot be had, and why.

        `pinned`: (provider, version) by name, as `Resolved.versions()` gave them (a rollback
        restoring what a release ran with): that provider is asked for that version, only.
        """
        found = await self.check(environment, names, pinned, purpose)
        missing = found.missing(names)
        if missing:
            raise SecretError(self.explain(environment, missing, found))
        return found

    async def check(
        self,
        environment: str,
        names: Sequence[str],
        pinned: Mapping[str, tuple[str, str]] | None = None,
        purpose: str = "check",
    ) -> Resolved:
        """As resolve, but a name nobody has is left out instead of failing the call."""
        names = list(dict.fromkeys(names))
        pinned = pinned or {}
        found = Resolved()
        if names:
            await asyncio.gather(
                *(self._one(environment, name, pinned.get(name), found) for name in names)
            )
        await asyncio.to_thread(self._audit, environment, names, found, purpose)
        return found

    async def _one(
        self, environment: str, name: str, pin: tuple[str, str] | None, found: Resolved
    ) -> None:
        kinds = [pin[0]] if pin is not None else list(self.settings.providers)
        for kind in kinds:
            value = await self._ask(environment, kind, name, pin[1] if pin else None, found)
            if value is not None:
                found[name] = value
                if kind in CACHED:
                    await self._cache(environment, value, found)
                return

    async def _ask(
        self, environment: str, kind: str, name: str, version: str | None, found: Resolved
    ) -> SecretValue | None:
        provider = self.provider(environment, kind)
        timeout = self.settings.timeout
        started = time.monotonic()

        def attempt(outcome: str, detail: str) -> None:
            found.attempts.append(Attempt(name, kind, outcome, detail, time.monotonic() - started))

        try:
            # A margin over the provider's own bound (command, aws, vault): its message says more.
            value = await asyncio.wait_for(provider.get(name, version), timeout + BOUND_MARGIN)
        except TimeoutError:
            attempt(FAILED, f"timed out after {timeout:g}s")
        except SecretError as exc:  # ProviderUnavailable, or a value that does not decrypt
            attempt(FAILED, str(exc).removeprefix(f"{kind}: "))
        else:
            if value is not None:
                attempt(FOUND, f"version {value.version}")
                return value
            attempt(MISSING, f"no version {version}" if version else "not found")
            return None
        found.notes.append(f"{name}: {kind} failed ({found.attempts[-1].detail})")
        return None

    async def _cache(self, environment: str, value: SecretValue, found: Resolved) -> None:
        try:
            await asyncio.to_thread(self.local.cache, environment, value)
        except SecretError as exc:
            found.notes.append(
                f"{value.name} from {value.provider} not cached for break-glass: {exc}"
            )

    def explain(self, environment: str, missing: Sequence[str], found: Resolved) -> str:
        parts = []
        for name in missing:
            tried = [a for a in found.attempts if a.name == name]
            why = "; ".join(f"{a.provider}: {a.detail}" for a in tried) or "no provider"
            parts.append(f"{name} for {environment}: {why}")
        first = missing[0]
        doctor = f"`conveyor secrets doctor --env {environment}` shows every provider"
        if any(a.outcome == FAILED for a in found.attempts if a.name in missing):
            hint = f"({doctor})"
        else:  # nobody has it: it was never stored
            hint = f"(`conveyor secrets set {first} --env {environment}` stores it; {doctor})"
        head = "secret" if len(missing) == 1 else f"{len(missing)} secrets"
        return f"{head} not resolved: " + " | ".join(parts) + " " + hint

    def _audit(self, environment: str, names: list[str], found: Resolved, purpose: str) -> None:
        failed = sorted({a.provider for a in found.attempts if a.outcome == FAILED})
        missing = found.missing(names)
        audit.record(
            self.store,
            at=self.clock(),
            actor=self.actor,
            action=self.audit_action,
            app=self.app,
            environment=environment,
            target=", ".join(names),
            outcome="failed" if missing else "ok",
            detail=purpose,
            data={
                "purpose": purpose,
                "secrets": {
                    name: {"provider": v.provider, "version": v.version}
                    for name, v in sorted(found.items())
                },
                "missing": missing,
                "failed_providers": failed,
            },
        )
