"""Which app database an environment migrates, and how to name it without its password.

The URL comes, in this order, from `[migrations] database_url` (a local development database),
the secret named by `database_url_secret` (resolved per environment by the secret store), or
the variable of that name in conveyor's own environment. It is never printed, logged or put on
a command line: messages show `masked(url)`, child processes get it in their environment.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from urllib.parse import unquote, urlsplit, urlunsplit

from conveyor.config.migrations import MigrationsConfig
from conveyor.migrations.runner import MigrationError

MASK = "***"


class NoDatabase(MigrationError):
    pass


def masked(url: str) -> str:
    """`url` with its password replaced by ***; an unparsable URL shows only its scheme."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:{MASK}@{host}{port}"))
    except ValueError:
        scheme = url.split(":", 1)[0] if ":" in url else "?"
        return f"{scheme}://<unparsable url>"


def password(url: str) -> str | None:
    try:
        secret = urlsplit(url).password
    except ValueError:
        return None
    return unquote(secret) if secret else None


def redact(text: str, url: str) -> str:
    """`text` (a tool's output) with the URL and its password masked wherever they appear."""
    text = text.replace(url, masked(url))
    secret = password(url)
    if secret:
        text = text.replace(secret, MASK)
        raw = urlsplit(url).password
        if raw and raw != secret:
            text = text.replace(raw, MASK)
    return text


# A function that resolves a secret's name in an environment to its value (None: no such name);
# the secret store's resolver is handed in by whoever has one (the agent, a command).
SecretLookup = Callable[[str, str], "str | None"]


def database_url(
    cfg: MigrationsConfig,
    environment: str,
    lookup: SecretLookup | None = None,
    env: Mapping[str, str] | None = None,
) -> str:
    """The URL of `environment`'s app database. Raises NoDatabase saying where it looked."""
    if cfg.database_url:
        return cfg.database_url
    name = cfg.database_url_secret
    if lookup is not None:
        value = lookup(name, environment)
        if value:
            return value
    value = (os.environ if env is None else env).get(name)
    if value:
        return value
    where = "the secret store nor " if lookup is not None else ""
    raise NoDatabase(
        f"no database URL for environment {environment!r}: neither {where}the environment "
        f"variable has {name} ([migrations] database_url_secret); set the secret with "
        f"`conveyor secrets set {name} --env {environment}`, export {name}, or set "
        "[migrations] database_url for a local development database"
    )
