"""Backups of an environment's app database, taken before migrating (`[migrations] backup`).

    .conveyor/backups/<environment>/20261206T011500Z-d12.dump   pg_dump -Fc (custom format)
    .conveyor/backups/<environment>/20261206T011500Z-d12.json   what it is: database (masked),
                                                                 deployment, release live then,
                                                                 applied versions, size

The newest `backup_keep` are kept. A restore is `pg_restore --clean --if-exists` in one
transaction: it either puts the whole backup back (goose_db_version included, so the applied
versions are the backup's again) or changes nothing. The password goes to pg_dump and
pg_restore in PGPASSWORD, never on their command line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from conveyor.environ import inherited
from conveyor.migrations.database import masked, password, redact
from conveyor.migrations.runner import MigrationError

DUMP_TIMEOUT = 3600.0


class BackupError(MigrationError):
    pass


@dataclass(frozen=True)
class Backup:
    name: str  # the file name without .dump: what `conveyor db restore` takes
    path: Path
    environment: str
    at: datetime
    database: str  # masked
    deployment_id: int | None  # the deployment it was taken for (None: by hand)
    live_version: str | None  # the release live when it was taken
    versions: tuple[int, ...]  # the migrations applied in it
    bytes: int
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "path": str(self.path),
            "environment": self.environment,
            "at": self.at.isoformat(),
            "database": self.database,
            "deployment_id": self.deployment_id,
            "live_version": self.live_version,
            "versions": list(self.versions),
            "bytes": self.bytes,
            "seconds": round(self.seconds, 3),
        }


def directory(home: Path, environment: str) -> Path:
    return home / "backups" / environment


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupError(
            f"{name} is not installed: install the PostgreSQL client "
            "(apt-get install postgresql-client)"
        )
    return found


def _libpq(url: str) -> tuple[str, dict[str, str]]:
    """The URL without its password (for --dbname) and the environment carrying the password."""
    env = inherited()
    secret = password(url)
    if secret:
        env["PGPASSWORD"] = secret
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    if len(netloc) == 2:
        user = netloc[0].split(":", 1)[0]
        parts = parts._replace(netloc=f"{user}@{netloc[1]}")
    scheme = "postgresql" if parts.scheme in ("postgresql", "postgres") else parts.scheme
    return urlunsplit(parts._replace(scheme=scheme)), env


def _run(argv: Sequence[str], env: dict[str, str], url: str, what: str) -> None:
    try:
        proc = subprocess.run(
            list(argv),
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=DUMP_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackupError(f"{what} failed: {redact(str(exc), url)}") from None
    if proc.returncode != 0:
        lines = redact(proc.stderr, url).strip().splitlines()
        raise BackupError(f"{what} failed: {lines[-1] if lines else f'exit {proc.returncode}'}")


def take(
    url: str,
    folder: Path,
    environment: str,
    versions: Sequence[int],
    deployment_id: int | None,
    live_version: str | None,
    keep: int,
    progress: Callable[[str], None],
    now: datetime | None = None,
) -> Backup:
    """pg_dump -Fc of the database into `folder`, then the oldest beyond `keep` removed."""
    pg_dump = _tool("pg_dump")
    at = (now or datetime.now(UTC)).astimezone(UTC)
    name = f"{at:%Y%m%dT%H%M%SZ}-" + (f"d{deployment_id}" if deployment_id else "manual")
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = folder / f"{name}.dump"
    n = 1
    while target.exists():  # two in one second (a test, a retried deploy): never overwrite
        n += 1
        target = folder / f"{name}-{n}.dump"
    name = target.name.removesuffix(".dump")
    part = target.with_name(target.name + ".part")
    dbname, env = _libpq(url)
    progress(f"backing up {masked(url)} to {target}")
    started = time.monotonic()
    try:
        _run([pg_dump, "-Fc", f"--file={part}", f"--dbname={dbname}"], env, url, "pg_dump")
        os.chmod(part, 0o600)
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
    backup = Backup(
        name=name,
        path=target,
        environment=environment,
        at=at,
        database=masked(url),
        deployment_id=deployment_id,
        live_version=live_version,
        versions=tuple(sorted(versions)),
        bytes=target.stat().st_size,
        seconds=time.monotonic() - started,
    )
    meta = target.with_suffix(".json")
    meta.write_text(json.dumps(backup.to_json(), indent=2) + "\n", encoding="utf-8")
    os.chmod(meta, 0o600)
    for old in listed(folder)[keep:]:
        old.path.unlink(missing_ok=True)
        old.path.with_suffix(".json").unlink(missing_ok=True)
    return backup


def listed(folder: Path) -> list[Backup]:
    """The backups in `folder`, newest first (a dump without its .json is listed from its name)."""
    if not folder.is_dir():
        return []
    found: list[Backup] = []
    for dump in folder.glob("*.dump"):
        meta = dump.with_suffix(".json")
        data: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(meta.read_text(encoding="utf-8"))
        try:
            at = datetime.fromisoformat(str(data["at"]))
        except (KeyError, ValueError):
            at = datetime.fromtimestamp(dump.stat().st_mtime, UTC)
        found.append(
            Backup(
                name=dump.name.removesuffix(".dump"),
                path=dump,
                environment=str(data.get("environment", folder.name)),
                at=at,
                database=str(data.get("database", "?")),
                deployment_id=data.get("deployment_id"),
                live_version=data.get("live_version"),
                versions=tuple(data.get("versions", ())),
                bytes=dump.stat().st_size,
                seconds=float(data.get("seconds", 0.0)),
            )
        )
    return sorted(found, key=lambda b: (b.at, b.name), reverse=True)


def find(folder: Path, name: str) -> Backup | None:
    """A backup by name (with or without .dump), or by path."""
    wanted = Path(name).name.removesuffix(".dump")
    return next((b for b in listed(folder) if b.name == wanted), None)


def restore(backup: Backup, url: str, progress: Callable[[str], None]) -> float:
    """pg_restore --clean --if-exists in one transaction; the seconds it took."""
    pg_restore = _tool("pg_restore")
    dbname, env = _libpq(url)
    progress(f"restoring {backup.name} into {masked(url)}")
    started = time.monotonic()
    _run(
        [
            pg_restore,
            "--clean",
            "--if-exists",
            "--single-transaction",
            "--no-owner",
            f"--dbname={dbname}",
            str(backup.path),
        ],
        env,
        url,
        "pg_restore",
    )
    return time.monotonic() - started
