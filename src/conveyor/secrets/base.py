"""What a secret provider is, and what it hands back.

A provider answers for names in one environment: the local encrypted store, the agent's own
environment, a dotenv file, a command, AWS Secrets Manager, Vault. `get` says "I have no such
name" with None, and "I could not ask" (timeout, refused, auth error) by raising
ProviderUnavailable, so the resolver can try the next provider and say why it did. A value never
appears in an exception's message, a repr or a log line: only names, versions and providers do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


class SecretError(Exception):
    """A secret cannot be had; the message names it (never its value) and what to do."""


class ProviderUnavailable(SecretError):
    """The provider could not be asked (timeout, connection refused, authentication)."""


@dataclass(frozen=True)
class SecretValue:
    """One version of one secret, as a provider returned it."""

    name: str
    value: str = field(repr=False)
    # The provider's own version id: "3" in the local store, a VersionId in AWS, a KV version.
    version: str
    provider: str

    def __str__(self) -> str:
        return f"[secret:{self.name}]"


class Provider(Protocol):
    """Answers for secret names of one environment. Every call returns in bounded time."""

    name: str

    async def get(self, name: str, version: str | None = None) -> SecretValue | None:
        """The value (the given version, else the current one); None if it has no such name.

        Raises ProviderUnavailable when it cannot tell.
        """
        ...
