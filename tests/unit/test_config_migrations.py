"""[migrations] in conveyor.toml: defaults, per-environment overrides, located errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from conveyor.config import ConfigError, load_config
from conveyor.migrations.database import NoDatabase, database_url, masked, redact

BASE = """\
[app]
name = "shop"

[services.web]
command = "x"
port = 8000

[migrations]
dir = "db/migrations"
backup = true

[environments.dev]

[environments.production.migrations]
{override}
"""


def load(tmp_path: Path, override: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "conveyor.toml"
    path.write_text(BASE.format(override=override))
    return load_config(path)


def test_an_environment_overrides_keys_of_the_base(tmp_path: Path) -> None:
    config = load(tmp_path, 'database_url_secret = "PROD_DB"\nlock_wait = "1m"')
    prod = config.environment("production").migrations
    dev = config.environment("dev").migrations
    assert prod is not None and dev is not None
    assert (prod.dir, prod.backup, prod.database_url_secret, prod.lock_wait) == (
        "db/migrations",
        True,
        "PROD_DB",
        60.0,
    )
    assert (dev.database_url_secret, dev.lock_wait, dev.backup_keep) == ("DATABASE_URL", 300.0, 5)


@pytest.mark.parametrize(
    ("override", "line", "key", "words"),
    [
        ("backup_keep = 0", 15, "environments.production.migrations.backup_keep", "at least 1"),
        ('dir = "../elsewhere"', 15, "environments.production.migrations.dir", "inside the"),
        ("backups = true", 15, "environments.production.migrations.backups", "unknown key"),
        (
            'database_url = "mysql://u:hunter2@h/db"',
            15,
            "environments.production.migrations.database_url",
            "postgresql://",
        ),
    ],
)
def test_bad_keys_are_located(
    tmp_path: Path, override: str, line: int, key: str, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, override)
    assert caught.value.line == line and caught.value.key == key
    assert words in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_no_migrations_table_means_no_step(tmp_path: Path) -> None:
    path = tmp_path / "conveyor.toml"
    path.write_text(BASE.split("[migrations]")[0])
    assert load_config(path).environment("dev").migrations is None


def test_database_url_order_and_masking(tmp_path: Path) -> None:
    config = load(tmp_path, "")
    cfg = config.environment("production").migrations
    assert cfg is not None
    url = "postgresql://app:p%40ss@db.internal:5433/shop"
    assert database_url(cfg, "production", env={"DATABASE_URL": url}) == url
    assert database_url(cfg, "production", lambda name, env: f"{name}@{env}", env={}) == (
        "DATABASE_URL@production"
    )
    with pytest.raises(NoDatabase, match="no database URL for environment 'production'"):
        database_url(cfg, "production", env={})
    assert masked(url) == "postgresql://app:***@db.internal:5433/shop"
    assert masked("postgresql://app@db/shop") == "postgresql://app@db/shop"
    out = redact(f"connecting to {url} with p@ss or p%40ss", url)
    assert "p@ss" not in out and "p%40ss" not in out
