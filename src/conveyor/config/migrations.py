"""`[migrations]` in conveyor.toml: the app database's schema migrations (docs/migrations.md).

    [migrations]
    dir = "migrations"                    # goose-style NNN_name.sql files, in the release
    database_url_secret = "DATABASE_URL"  # resolved per environment (or database_url = "...")
    backup = true                         # pg_dump before migrating, the last backup_keep kept

    [environments.production.migrations]
    database_url_secret = "PROD_DATABASE_URL"

Or delegate to the app's own tool: `command = "alembic upgrade head"` and
`down_command = "alembic downgrade -1"` run in the release with DATABASE_URL in their
environment. An environment may override any key (its table is merged into this one).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError

from conveyor.config.errors import Issue
from conveyor.core.durations import parse_duration


def _seconds(value: object) -> float:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ValueError('expected a duration such as "5m"')
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("must be greater than 0")
    return seconds


def _inside_release(value: str) -> str:
    parts = PurePosixPath(value).parts
    if not value or value.startswith("/") or ".." in parts:
        raise ValueError(
            f"dir must be a directory inside the release, relative to its root (got {value!r})"
        )
    return value


def _postgres_url(value: str | None) -> str | None:
    if value is not None and not value.startswith(("postgresql://", "postgres://")):
        # Never echo the value: it may hold a password.
        raise ValueError("expected a postgresql://user@host:port/database URL")
    return value


def _keep(value: int) -> int:
    if value < 1:
        raise ValueError(f"must be at least 1 (got {value})")
    return value


Seconds = Annotated[float, BeforeValidator(_seconds)]


class MigrationsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    dir: Annotated[str, AfterValidator(_inside_release)] = "migrations"
    # The secret holding the database URL, resolved per environment; without a secret store,
    # the variable of that name in conveyor's environment.
    database_url_secret: str = "DATABASE_URL"
    # A URL written here wins over the secret: for a local development database only.
    database_url: Annotated[str | None, AfterValidator(_postgres_url)] = None
    # Delegation to the app's own tool (instead of dir).
    command: str | None = None
    down_command: str | None = None
    command_timeout: Seconds = 600.0
    # How long to wait for another deploy's migrations (the advisory lock) before giving up.
    lock_wait: Seconds = 300.0
    backup: bool = False
    backup_keep: Annotated[int, AfterValidator(_keep)] = 5

    @property
    def delegated(self) -> bool:
        return self.command is not None


def merged(
    base: MigrationsConfig | None, override: Mapping[str, Any], prefix: tuple[str, ...]
) -> tuple[MigrationsConfig | None, list[Issue]]:
    """An environment's `[environments.E.migrations]` on top of `[migrations]`."""
    if not override:
        return base, []
    from conveyor.config.environments import deep_merge
    from conveyor.config.pydantic_errors import issues_from_validation

    data = deep_merge(base.model_dump(exclude_unset=True) if base else {}, override)
    try:
        return MigrationsConfig.model_validate(data), []
    except ValidationError as err:
        return None, issues_from_validation(err, MigrationsConfig, prefix)
