"""The local secret store: values encrypted into the state database, every version kept.

`LocalSecrets` is what the CLI writes and reads through; `LocalProvider` answers the resolver
for one environment. The master key is looked up only when a value is sealed or opened, so
naming a secret the store does not have needs no key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

from conveyor.secrets.base import SecretValue
from conveyor.secrets.crypto import seal, slot, unseal
from conveyor.secrets.keys import KeySource, Prompt
from conveyor.store.db import Store
from conveyor.store.secrets import CachedRecord, SecretRecord, SecretStore

Clock = Callable[[], datetime]


def _utcnow() -> datetime:
    return datetime.now(UTC)


def describe(name: str, environment: str, version: int | str | None = None) -> str:
    """How a secret is named in messages."""
    at = f" version {version}" if version is not None else ""
    return f"secret {name}{at} of {environment}"


class LocalSecrets:
    """The encrypted secrets of one app in one state store."""

    def __init__(
        self,
        store: Store,
        app: str,
        home: Path,
        prompt: Prompt | None = None,
        project_dir: Path | None = None,
        clock: Clock = _utcnow,
    ) -> None:
        self.rows = SecretStore(store)
        self.app = app
        self.keys = KeySource(self.rows, app, home, prompt, project_dir)
        self._clock = clock

    def _key(self) -> bytes:
        found = self.keys.get(create=True)
        assert found is not None
        return found.key

    # writing

    def write(
        self,
        environment: str,
        values: Mapping[str, str | None],
        actor: str,
        action: str = "set",
        detail: str = "",
    ) -> list[SecretRecord]:
        """A new version of each secret (None: a tombstone), all in one transaction with its
        audit entry."""
        key = self._key() if any(v is not None for v in values.values()) else b""

        def sealer(name: str, value: str) -> Callable[[int], tuple[bytes, bytes]]:
            return lambda version: seal(key, value, slot(self.app, environment, name, version))

        items = [
            (name, sealer(name, value) if value is not None else None)
            for name, value in values.items()
        ]
        return self.rows.write(
            self.app,
            environment,
            items,
            action=action,
            actor=actor,
            at=self._clock(),
            detail=detail,
        )

    # reading

    def read(
        self, environment: str, name: str, version: int | None = None
    ) -> tuple[SecretRecord, str] | None:
        """The record and value of `name` (the given version, else the newest); None if the
        store has no such version, or `name` was removed."""
        rec = self.rows.get(self.app, environment, name, version)
        if rec is None or rec.removed:
            return None
        assert rec.nonce is not None and rec.ciphertext is not None
        value = unseal(
            self._key(),
            rec.nonce,
            rec.ciphertext,
            slot(self.app, environment, name, rec.version),
            describe(name, environment, rec.version),
        )
        return rec, value

    # the break-glass cache of values from remote providers

    def cache(self, environment: str, value: SecretValue) -> None:
        version = value.version
        nonce, ciphertext = seal(
            self._key(),
            value.value,
            slot(self.app, environment, value.name, f"{value.provider}:{version}", "cache"),
        )
        self.rows.put_cached(
            CachedRecord(
                self.app,
                environment,
                value.name,
                value.provider,
                version,
                nonce,
                ciphertext,
                self._clock(),
            )
        )

    def cached(self, environment: str, name: str) -> tuple[CachedRecord, str] | None:
        """The newest cached copy of `name` and its value, or None."""
        found = self.rows.cached(self.app, environment, name)
        if not found:
            return None
        rec = found[0]
        value = unseal(
            self._key(),
            rec.nonce,
            rec.ciphertext,
            slot(self.app, environment, name, f"{rec.provider}:{rec.version}", "cache"),
            f"the cached copy of {describe(name, environment)} from {rec.provider}",
        )
        return rec, value


class LocalProvider:
    """The `local` provider: the newest version in the local store, or the one asked for."""

    name = "local"

    def __init__(self, local: LocalSecrets, environment: str) -> None:
        self._local = local
        self._environment = environment

    async def get(self, name: str, version: str | None = None) -> SecretValue | None:
        number: int | None = None
        if version is not None:
            if not version.isdigit():
                return None  # not a version of this store
            number = int(version)
        found = await asyncio.to_thread(self._local.read, self._environment, name, number)
        if found is None:
            return None
        rec, value = found
        return SecretValue(name, value, str(rec.version), self.name)
