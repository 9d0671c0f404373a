"""Calling a provider from a test: once, or bounded by the provider's own timeout."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from conveyor.secrets.base import SecretValue


class TimedProvider(Protocol):
    timeout: float

    async def get(self, name: str, version: str | None = None) -> SecretValue | None: ...


def get(provider: TimedProvider, name: str, version: str | None = None) -> Any:
    return asyncio.run(provider.get(name, version))


def get_within_timeout(provider: TimedProvider, name: str) -> None:
    """A get that must end (here: fail) within the provider's timeout, and a margin for a loaded
    machine (left alone, botocore and requests would wait 60s or for ever); measured inside the
    loop, not including the wait for its worker thread at exit."""

    async def timed() -> None:
        started = time.monotonic()
        try:
            await provider.get(name)
        finally:
            elapsed = time.monotonic() - started
            assert elapsed < provider.timeout + 5, elapsed

    asyncio.run(timed())
