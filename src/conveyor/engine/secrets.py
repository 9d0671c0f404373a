"""The secrets of a deployment: resolved before anything starts, pinned, handed over, forgotten.

A deployment resolves every secret its services name before any process starts (a missing one
fails it while the old version keeps serving), and records which version of each it used
(provider and version, never a value: the journal's `secrets` event). Restarts by the
supervisor, adoption and rollbacks resolve those same versions again (`pins_of`), so a color
always runs with the secrets it was deployed with.

Values reach a process only through its environment; with `as_file = true`, through 0600
files in a private directory (0700) under the conveyor home, one per environment, service and
color, whose paths are in the environment as NAME_FILE; the files go when the color stops.
Every value resolved is added to the one `Redactor` the engine writes through (journal, hook
output, measurements, webhooks, what the CLI is shown).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from conveyor import identity
from conveyor.config import Config, ResolvedEnvironment, ServiceConfig
from conveyor.engine.errors import UserError
from conveyor.engine.journal import Journal
from conveyor.engine.outcome import Emit, Outcome
from conveyor.secrets.base import SecretError, SecretValue
from conveyor.secrets.redact import Redactor
from conveyor.store.db import Store

Pin = tuple[str, str]  # (provider, version)
# (environment, names, pinned versions or None for the current ones, purpose) -> values.
Resolve = Callable[
    [ResolvedEnvironment, Sequence[str], Mapping[str, Pin] | None, str],
    Awaitable[dict[str, SecretValue]],
]
EVENT = "secrets"  # the journal event that records a deployment's secret versions


def names_of(svc: ServiceConfig | None) -> list[str]:
    return list(svc.secrets) if svc is not None else []


def needed(env: ResolvedEnvironment) -> list[str]:
    """Every secret some service of `env` names, in the order they appear (hooks get them all)."""
    found: list[str] = []
    for svc in env.services.values():
        found.extend(n for n in names_of(svc) if n not in found)
    return found


def pins(values: Mapping[str, SecretValue]) -> dict[str, dict[str, str]]:
    """What the journal keeps of resolved secrets: provider and version, never the value."""
    return {n: {"provider": v.provider, "version": v.version} for n, v in sorted(values.items())}


def pins_of(store: Store, deployment_id: int | None) -> dict[str, Pin] | None:
    """The secret versions a deployment recorded; None when it recorded none."""
    if deployment_id is None:
        return None
    for event in reversed(store.events(deployment_id)):
        if event.state == EVENT:
            found = event.data.get("secrets", {})
            return {n: (str(p["provider"]), str(p["version"])) for n, p in found.items()}
    return None


def changes(old: Mapping[str, Pin] | None, new: Mapping[str, SecretValue]) -> list[str]:
    """What changed between a deployment's versions and `new`: "DB_URL local:3 -> local:4"."""
    before = old or {}
    out = []
    for name, value in sorted(new.items()):
        was = before.get(name)
        now = (value.provider, value.version)
        if was != now:
            shown = f"{was[0]}:{was[1]}" if was else "none"
            out.append(f"{name} {shown} -> {now[0]}:{now[1]}")
    out.extend(
        f"{name} {p[0]}:{p[1]} -> none" for name, p in sorted(before.items()) if name not in new
    )
    return out


def default_resolve(store: Store, project_dir: Path, home: Path) -> Resolve:
    """The secret store's resolver (conveyor.secrets.resolve): each environment's providers."""

    async def resolve(
        env: ResolvedEnvironment,
        names: Sequence[str],
        pinned: Mapping[str, Pin] | None,
        purpose: str,
    ) -> dict[str, SecretValue]:
        from conveyor.secrets.resolve import Resolver

        resolver = Resolver(
            store, env.app, env.secrets, home, identity.actor(), project_dir=project_dir
        )
        # The Resolved mapping itself: its `notes` (a provider that failed, and the next one
        # answered) go into the deployment's history.
        return await resolver.resolve(env.name, names, pinned, purpose)

    return resolve


def unresolved(
    journal: Journal,
    env: ResolvedEnvironment,
    version: str,
    kind: str,
    previous: str | None,
    reason: str,
    emit: Emit,
    exc: SecretError,
) -> Outcome:
    """A secret could not be had: the deployment is recorded as failed before anything
    started (the error names the secret and the providers tried)."""
    dep_id = journal.open(env.app, env.name, version, kind, previous, reason)
    why = f"{exc}; nothing was started"
    if previous:
        why += f", {previous} keeps serving"
    journal.record(dep_id, "failed", why, emit=emit)
    journal.finish(dep_id, "failed", why)
    return Outcome(
        1,
        dep_id,
        "failed",
        journal.redacted(why),
        {"environment": env.name, "version": version, "previous_version": previous},
    )


class DeploySecrets:
    """The engine's part for secrets: resolving (and remembering the values to redact), and the
    private files of `as_file` services."""

    def __init__(self, run_dir: Path, resolve: Resolve | None = None) -> None:
        self.run_dir = run_dir  # <home>/run/secrets
        self.redactor = Redactor()
        self._resolve = resolve

    async def resolve(
        self,
        env: ResolvedEnvironment,
        names: Sequence[str],
        pinned: Mapping[str, Pin] | None,
        purpose: str,
    ) -> dict[str, SecretValue]:
        """The values of `names` (the pinned versions, else the current ones); SecretError names
        what is missing and the providers tried."""
        if not names:
            return {}
        wanted = {n: pinned[n] for n in names if pinned and n in pinned} if pinned else None
        if self._resolve is None:
            raise SecretError(f"cannot resolve {', '.join(names)}: no secret resolver here")
        values = await self._resolve(env, list(names), wanted or None, purpose)
        missing = [n for n in names if n not in values]
        if missing:
            raise SecretError(f"secret {', '.join(missing)} was not resolved")
        self.redactor.add({n: v.value for n, v in values.items()})
        return values

    def directory(self, environment: str, service: str, color: str) -> Path:
        return self.run_dir / environment / service / color

    def hand_over(
        self,
        environment: str,
        service: str,
        color: str,
        svc: ServiceConfig,
        values: Mapping[str, SecretValue],
    ) -> tuple[dict[str, str], dict[str, str]]:
        """The environment variables that carry the service's secrets, and name -> value (for
        the runtime to redact). With `as_file`, the values go into 0600 files instead."""
        names = names_of(svc)
        missing = [n for n in names if n not in values]
        if missing:
            raise SecretError(f"secret {', '.join(missing)} of {service} was not resolved")
        given = {n: values[n].value for n in names}
        if not svc.as_file:
            return dict(given), given
        where = self.directory(environment, service, color)
        self.remove(environment, service, color)
        _private_dir(self.run_dir, where)
        env: dict[str, str] = {}
        for name, value in given.items():
            path = where / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
            env[f"{name}_FILE"] = str(path)
        return env, given

    def remove(self, environment: str, service: str, color: str) -> None:
        """Forget a color's secret files (it stopped)."""
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            shutil.rmtree(self.directory(environment, service, color))


def _private_dir(top: Path, path: Path) -> None:
    """`path` and the directories from `top` down to it, for this user alone (0700)."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    part = path
    while True:
        os.chmod(part, 0o700)
        if part == top or part == part.parent:
            break
        part = part.parent


def refuse_literal_credentials(cfg: Config) -> None:
    """A conveyor.toml holding a credential in a service's env or in a URL is not deployed:
    it is committed to git. UserError (exit 2) naming file:line:key and the way out."""
    from conveyor.secrets.scan import scan_config_values

    try:
        text = cfg.source.read_text()
    except OSError:
        text = None  # findings then name the key without its line
    findings = scan_config_values(cfg, text)
    if not findings:
        return
    lines = [str(f) for f in findings]
    raise UserError(
        "conveyor.toml holds what looks like a credential, which is committed with it:\n"
        + "\n".join(f"  {line}" for line in lines)
        + "\nstore it with `conveyor secrets set NAME --env ENV` and name it in "
        "`[services.NAME] secrets` (or `url_secret`) instead"
    )


class RedactingFilter(logging.Filter):
    """Redacts every record (message and traceback) a handler writes: agent.log too."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        if self.redactor:
            record.msg, record.args = self.redactor.text(record.getMessage()), ()
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = self.redactor.text(record.exc_text)
        return True


def redact_logs(redactor: Redactor) -> None:
    """Every handler of the root logger redacts what it writes."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter(redactor))


def redacting(
    emit: Callable[[dict[str, Any]], None], redactor: Redactor
) -> Callable[[dict[str, Any]], None]:
    """An emit whose events are redacted before anyone sees them."""

    def send(event: dict[str, Any]) -> None:
        emit(redactor.data(event) if redactor else event)

    return send
