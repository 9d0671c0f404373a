"""The long-running agent: one per project. It owns the rollout engine and the process supervisor.

The CLI talks to it over a unix socket (mode 0600, in `.conveyor/`): one JSON request per line, answered
by zero or more `{"type": "progress"}` lines and one `{"type": "result"}` line. Services and the proxy run
in their own sessions, so they keep serving when the agent dies; a new agent adopts them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from conveyor import __version__, identity, markers
from conveyor.agent import backups, runs
from conveyor.agent.client import START_ERROR
from conveyor.agent.metrics import AdminServer
from conveyor.aio import cancel_and_wait, wind_down
from conveyor.doctor import check
from conveyor.engine.engine import Engine
from conveyor.engine.errors import EngineError
from conveyor.engine.outcome import Emit, Outcome
from conveyor.engine.secrets import redact_logs
from conveyor.engine.status import history_row
from conveyor.paths import Paths
from conveyor.store.db import (
    LOST_HINT,
    DeploymentRecord,
    InstanceRecord,
    Store,
    StoreError,
    database_url,
)

log = logging.getLogger("conveyor.agent")

SUPERVISE_EVERY = 0.5
# How long what is left of a stopped agent (tasks, threads) may delay the end of its process.
WIND_DOWN = 5.0
# How often the agent looks whether its daily backup is due (sooner when backup_every is shorter).
BACKUP_CHECK_EVERY = 60.0


class Agent:
    def __init__(self, project_dir: Path, paths: Paths) -> None:
        self.project_dir = project_dir
        self.paths = paths
        self.store = Store.open(database_url(paths.home, project_dir / "conveyor.toml"))
        self.project_id = markers.project_id(paths.home)
        self.engine = Engine(project_dir, paths, self.store)
        self.started_at = time.time()
        self._stop = asyncio.Event()
        self._keep_running = True
        self.admin: AdminServer | None = None
        # What this agent found when it started: how the previous run ended, the deployments it
        # left in progress and how each ended, the recovery's notes. Commands show it.
        self.recovery: dict[str, Any] = {
            "previous": None,
            "interrupted": [],
            "notes": [],
            "orphans": [],
        }
        # Set once the state database is found deleted or replaced: from then on the agent
        # acts on nothing (traffic stays as it is) and says so in every answer.
        self.store_lost: str | None = None
        self._backup_task: asyncio.Task[None] | None = None
        self._backup_check_at = 0.0

    async def run(self) -> None:
        # Read the admin settings first: a missing token file must stop us before we touch anything.
        admin_host, admin_port, token = self._admin_settings()
        previous = runs.how_it_ended(runs.read(self.paths.home))
        in_progress = self._in_progress()
        # Recovery ends before the socket serves: no command sees a deployment that nobody drives.
        notes = self._free_stale_locks() + await self.engine.recover()
        # The proxy of an older conveyor, reloaded by the router as it adopted it (builtin.py).
        reloaded = getattr(self.engine.ctx.traffic.router, "reload_note", None)
        if reloaded:
            notes.append(reloaded)
        orphans = self._orphans()
        if orphans:
            notes.append(
                f"found {len(orphans)} process group(s) of this project that the state database "
                f"does not know ({'; '.join(m.describe() for m in orphans)}): "
                "`conveyor doctor --fix` stops them"
            )
        for note in notes:
            log.info("%s", note)
        self.recovery = {
            "previous": previous,
            "interrupted": [self._ended(dep) for dep in in_progress],
            "notes": notes,
            "orphans": [m.to_json() for m in orphans],
        }
        sock = self.paths.agent_socket
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        server = await asyncio.start_unix_server(self._serve, path=str(sock), limit=2**20)
        os.chmod(sock, 0o600)
        self.admin = AdminServer(self.engine, admin_host, admin_port, token)
        await self.admin.start()
        self._write_info()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        supervisor = asyncio.create_task(self._supervise())
        log.info(
            "agent %s ready for %s (admin http://%s:%d)",
            os.getpid(),
            self.project_dir,
            admin_host,
            self.admin.port,
        )
        await self._stop.wait()
        # Its pass ends here, not later: with --keep-running nothing may act on the proxy or
        # the services once the stop is answered (an upgrade replaces them next). Cancelled
        # until it ends: a pass inside wait_for can lose one cancellation on 3.11 (aio.py).
        await cancel_and_wait([supervisor])
        if self._backup_task is not None:
            await asyncio.gather(self._backup_task, return_exceptions=True)
        server.close()
        await self.admin.stop()
        try:
            await self.engine.shutdown(self._keep_running)
        except StoreError:
            log.exception("cannot stop the services recorded in the state database")
        if not self._keep_running:
            # Every process of the project goes, known or not: found by its marker.
            found = markers.scan(self.project_id)
            for group in await markers.stop(self.project_id, found, 10.0):
                log.info("stopped %s, which the state database did not know", group.describe())
        with contextlib.suppress(FileNotFoundError):
            sock.unlink()
        runs.write(self.paths.home, {**self._info(), "stopped_at": time.time()})
        self.store.close()
        log.info("agent stopped (services %s)", "left running" if self._keep_running else "stopped")

    def _admin_settings(self) -> tuple[str, int, str | None]:
        try:
            cfg = self.engine.ctx.project.load()
        except EngineError:
            return "127.0.0.1", 0, None
        token = None
        if cfg.agent.admin_token_file:
            path = self.project_dir / cfg.agent.admin_token_file
            try:
                token = path.read_text().strip()
            except OSError as exc:
                raise SystemExit(f"cannot read agent.admin_token_file {path}: {exc}") from exc
            if not token:
                raise SystemExit(f"agent.admin_token_file {path} is empty")
        return cfg.agent.admin_host, cfg.agent.admin_port, token

    def _free_stale_locks(self) -> list[str]:
        """The locks a crashed agent of this host left: freed now, not when their lease ends."""
        try:
            app = self.engine.ctx.project.app
        except EngineError:
            return []
        return self.engine.ctx.locks.free_stale(app)

    def _info(self) -> dict[str, Any]:
        admin = self.admin
        return {
            "pid": os.getpid(),
            "version": __version__,
            "started_at": self.started_at,
            "admin": f"http://{admin.host}:{admin.port}" if admin else None,
            "project": str(self.project_dir),
            **self.recovery,
            "store_lost": self.store_lost,
        }

    def _write_info(self) -> None:
        runs.write(self.paths.home, self._info())

    def _rows(self) -> list[InstanceRecord] | None:
        """The colors the store records; None when the configuration (the app) cannot be read."""
        try:
            app = self.engine.app
        except EngineError:
            return None
        return self.store.instances(app)

    def _orphans(self) -> list[markers.Marked]:
        """The project's processes (by their markers) that neither the store nor the fleet knows."""
        rows = self._rows()
        if rows is None:
            return []  # without the records, nothing can be called an orphan for sure
        refs = [dict(row.handle.get("ref") or {}) for row in rows]
        refs += [dict(h.ref) for h in self.engine.ctx.fleet.handles.values()]
        return markers.unknown(markers.scan(self.project_id), refs)

    async def _doctor(self, stop: list[int]) -> dict[str, Any]:
        rows: list[InstanceRecord] | None = None
        problem = self.store_lost
        if problem is None:
            try:
                rows = self._rows()
            except StoreError as exc:
                problem = str(exc)
            if rows is None and problem is None:
                problem = "cannot read conveyor.toml: orphans cannot be told apart"
        # The colors this agent is starting have no row yet: they are not orphans.
        starting = [dict(h.ref) for h in self.engine.ctx.fleet.handles.values()]
        return await check(self.project_id, self.store.where, rows, problem, starting, stop)

    def _in_progress(self) -> list[DeploymentRecord]:
        """The deployments the previous agent left unfinished (read before recovery ends them)."""
        try:
            cfg = self.engine.ctx.project.load()
        except EngineError:
            return []
        found = (self.store.in_progress(cfg.app.name, env) for env in sorted(cfg.environments))
        return [dep for dep in found if dep is not None]

    def _ended(self, dep: DeploymentRecord) -> dict[str, Any]:
        """How an interrupted deployment ended after recovery, and which version now serves."""
        after = self.store.get_deployment(dep.id)
        active = sorted(
            {
                r.version
                for r in self.store.instances(dep.app, dep.environment)
                if r.role == "active"
            }
        )
        if not active:
            result = "ended with nothing running"
        elif len(active) == 1:
            result = f"ended on {active[0]} (all traffic on {active[0]})"
        else:
            result = f"ended on {', '.join(active)}"
        return {
            "deployment": dep.id,
            "environment": dep.environment,
            "version": dep.version,
            "outcome": after.outcome if after else dep.outcome,
            "active": active,
            "result": result,
        }

    def _store_lost(self) -> bool:
        """Whether the state database was deleted or replaced; the first time, say so."""
        if self.store_lost is None:
            problem = self.store.lost()
            if problem is None:
                return False
            self.store_lost = (
                f"{problem}: the agent stopped acting on every environment at "
                f"{runs.clock(time.time())} and keeps their traffic as it is; {LOST_HINT}"
            )
            log.error("%s", self.store_lost)
            self._write_info()
        return True

    def _backup_if_due(self) -> None:
        """Start the periodic backup when it is due ([agent] backup_every, backup_keep)."""
        now = time.monotonic()
        if now < self._backup_check_at or (self._backup_task and not self._backup_task.done()):
            return
        try:
            agent_cfg = self.engine.ctx.project.load().agent
        except EngineError:
            return
        every, keep = agent_cfg.backup_every, agent_cfg.backup_keep
        self._backup_check_at = now + min(BACKUP_CHECK_EVERY, every or BACKUP_CHECK_EVERY)
        folder = backups.directory(self.paths.home)
        if backups.due(folder, every):
            self._backup_task = asyncio.create_task(self._backup(folder, keep))

    async def _backup(self, folder: Path, keep: int) -> None:
        from conveyor.store.backup import suffix

        target = backups.next_path(folder, suffix(self.store.dialect))
        try:
            # In a thread: pg_dump, or a large SQLite file, must not hold up the agent.
            size = await asyncio.to_thread(self.store.backup, target)
        except StoreError as exc:
            log.error("the periodic backup failed: %s", exc)
            return
        log.info("backed up the state database to %s (%d bytes)", target, size)
        for old in backups.prune(folder, keep):
            log.info("removed the old backup %s", old)

    async def _supervise(self) -> None:
        while True:
            await asyncio.sleep(SUPERVISE_EVERY)
            runs.touch(self.paths.home)
            if self._store_lost():
                continue  # restarting or rolling back on a state it no longer has: never
            self._backup_if_due()
            try:
                for note in await self.engine.supervise_once():
                    log.info("%s", note)
            except Exception:  # the supervisor must outlive any one bad pass
                log.exception("supervisor pass failed")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request: dict[str, Any] | None = None
        try:
            line = await reader.readline()
            if not line:
                return
            request = _request(line)

            def emit(event: dict[str, Any]) -> None:
                # A client that went away (Ctrl-C) must not stop the deployment.
                with contextlib.suppress(Exception):
                    writer.write(json.dumps({"type": "progress", **event}).encode() + b"\n")

            # Whatever this request writes (a lock, the audit log) names who sent it.
            identity.acting.set(str(request.get("actor") or "") or None)
            result = await self._handle(request, emit)
        except BadRequest as exc:
            result = {"ok": False, "exit": 2, "error": f"bad request: {exc}"}
        except EngineError as exc:
            result = {"ok": False, "exit": exc.exit_code, "error": str(exc)}
            result.update(getattr(exc, "details", {}))
        except StoreError as exc:
            # The database, not the request: one line for the user, the traceback for agent.log.
            log.exception("request failed on the state database")
            self._store_lost()
            result = {"ok": False, "exit": 1, "error": self.store_lost or str(exc)}
        except Exception as exc:
            # A bug, not the caller's mistake (whatever its type): exit 1, traceback in agent.log.
            log.exception("request failed")
            result = {
                "ok": False,
                "exit": 1,
                "error": f"internal error: {exc!r}; see {self.paths.agent_log}",
            }
        if request is not None and request["op"] in AUDITED:
            self._audit(request, result)
        with contextlib.suppress(Exception):
            writer.write(json.dumps({"type": "result", **result}).encode() + b"\n")
            await writer.drain()
            writer.close()

    async def _handle(self, req: dict[str, Any], emit: Emit) -> dict[str, Any]:
        op = req["op"]
        if op == "ping":
            return {"ok": True, "exit": 0, "data": self._info()}
        if op == "doctor":
            stop = [int(pgid) for pgid in req.get("stop", []) if isinstance(pgid, int)]
            return {"ok": True, "exit": 0, "data": await self._doctor(stop)}
        if op != "stop" and self._store_lost():
            return {"ok": False, "exit": 1, "error": self.store_lost}
        if op == "deploy":
            refusal, emit = await self._admit(req, emit)
            if refusal is not None:
                return refusal
            force = bool(req.get("force", False))
            return _outcome(await self.engine.deploy(req["env"], req["version"], emit, force=force))
        if op == "rollback":
            outcome = await self.engine.rollback(
                req["env"],
                emit,
                keep_secrets=bool(req.get("keep_secrets", False)),
                migrations_down=req.get("migrations") == "down",
                force=bool(req.get("force", False)),
            )
            return _outcome(outcome)
        if op == "promote":
            data = self.engine.promote(req["env"], bool(req.get("full", False)))
            return {"ok": True, "exit": 0, "data": data}
        if op == "abort":
            data = self.engine.abort(req["env"], str(req.get("reason") or "by request"))
            return {"ok": True, "exit": 0, "data": data}
        if op == "stop_env":
            return _outcome(await self.engine.stop_env(req["env"], emit))
        if op == "start_env":
            return _outcome(await self.engine.start_env(req["env"], emit))
        if op == "status":
            return {"ok": True, "exit": 0, "data": await self.engine.status(req["env"])}
        if op == "history":
            return {"ok": True, "exit": 0, "data": self._history(req)}
        if op == "stop":
            self._keep_running = bool(req.get("keep_running", False))
            self._stop.set()
            return {"ok": True, "exit": 0, "data": {"keep_running": self._keep_running}}
        return {"ok": False, "exit": 2, "error": f"unknown operation {op!r}"}

    async def _admit(self, req: dict[str, Any], emit: Emit) -> tuple[dict[str, Any] | None, Emit]:
        """Every gate of the environment, and the release's digest, before anything starts
        (conveyor.promotion); in a thread, as hashing a release takes a while."""
        from conveyor.promotion import admit

        ctx = self.engine.ctx
        cfg = ctx.project.load()
        now = ctx.clock.utcnow()
        return await asyncio.to_thread(
            admit, cfg, self.store, self.paths.home, req, now, ctx.journal, emit
        )

    def _audit(self, req: dict[str, Any], result: dict[str, Any]) -> None:
        """One audit entry per request that changes something: who, what, and how it ended."""
        data = result.get("data") or {}
        deployment = data.get("deployment")
        if result.get("ok"):
            outcome = "ok"
        elif deployment is not None and data.get("outcome"):
            outcome = "failed"  # it ran, and did not go live (or was rolled back)
        else:
            outcome = "refused"  # nothing ran: locked, nothing to promote, bad input
        target = req.get("version") or data.get("version") or req["env"]
        facts: dict[str, Any] = {"exit": result.get("exit"), "deployment": deployment}
        for key in ("force", "full", "reason", "override_freeze", "keep_secrets", "migrations"):
            if req.get(key) is not None:
                facts[key] = req[key]
        if data.get("outcome"):
            facts["result"] = data["outcome"]
        if isinstance(req.get("via"), dict):
            # Sent through the HTTP API: its token id, the role used, the source address.
            facts["via"] = {str(k): v for k, v in req["via"].items()}
        if result.get("lock"):
            facts["lock"] = result["lock"]
        actions = [AUDITED[req["op"]]]
        if req["op"] == "deploy" and req.get("override_freeze"):
            actions.append("freeze.override")  # its own entry: an admin went past a gate
        try:
            project = self.engine.ctx.project
            for action in actions:
                self.engine.ctx.journal.audit(
                    project.known_app or self.project_dir.name,
                    action,
                    req["env"],
                    str(target),
                    outcome,
                    str(result.get("error") or data.get("reason") or ""),
                    facts,
                )
        except Exception:  # the answer still goes out; the gap is in agent.log
            log.exception("appending to the audit log failed")

    def _history(self, req: dict[str, Any]) -> dict[str, Any]:
        # Answered here, from the store the agent holds open: the CLI then needs no database
        # library at all, and reads the state recovery left.
        env = self.engine.ctx.project.environment(req["env"])
        limit = max(0, int(req["limit"]))
        detail = bool(req.get("detail", False))
        deps = self.store.list_deployments(env.app, env.name, limit=limit)
        return {"deployments": [history_row(self.store, d, detail=detail) for d in deps]}


class BadRequest(Exception):
    """The request itself is malformed: not JSON, unknown op, a missing or mistyped field."""


# The fields each operation needs, and their types.
_FIELDS: dict[str, dict[str, type]] = {
    "ping": {},
    "deploy": {"env": str, "version": str},
    "rollback": {"env": str},
    "promote": {"env": str},
    "abort": {"env": str},
    "status": {"env": str},
    "history": {"env": str, "limit": int},
    "stop_env": {"env": str},
    "start_env": {"env": str},
    "stop": {},
    "doctor": {},
}


# The requests that change something, and their action's name in the audit log.
AUDITED = {
    "deploy": "deploy",
    "rollback": "rollback",
    "promote": "promote",
    "abort": "abort",
    "stop_env": "stop",
    "start_env": "start",
}


def _request(line: bytes) -> dict[str, Any]:
    """Decode and check one request line, before anything acts on it."""
    try:
        request = json.loads(line)
    except ValueError as exc:
        raise BadRequest(f"not JSON: {exc}") from exc
    if not isinstance(request, dict):
        raise BadRequest("expected a JSON object")
    op = request.get("op")
    if op not in _FIELDS:
        raise BadRequest(f"unknown operation {op!r}")
    for name, kind in _FIELDS[op].items():
        if not isinstance(request.get(name), kind):
            raise BadRequest(f"{op} needs {name!r} ({kind.__name__})")
    return request


def _outcome(outcome: Outcome) -> dict[str, Any]:
    return {
        "ok": outcome.exit_code == 0,
        "exit": outcome.exit_code,
        "data": outcome.to_json(),
        "error": None if outcome.exit_code == 0 else outcome.reason,
    }


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="conveyor-agent")
    parser.add_argument("--project", type=Path, required=True)
    parser.add_argument(
        "--wait-for-lock",
        action="store_true",
        help="when another agent runs for the project, wait for it to end instead of exiting "
        "(systemd: a unit restarted while a command-started agent runs takes over after it)",
    )
    args = parser.parse_args(argv)
    project = args.project.resolve()
    paths = Paths.for_project(project)
    paths.ensure()
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    # One agent per project: a second one would fight the first over processes and routes.
    lock = open(paths.home / "agent.lock", "w")  # noqa: SIM115 - held for the process lifetime
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | (0 if args.wait_for_lock else fcntl.LOCK_NB))
    except BlockingIOError:
        print("another conveyor agent is already running for this project", file=sys.stderr)
        return 1
    paths.agent_pidfile.write_text(str(os.getpid()))
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        pass
    try:
        agent = Agent(project, paths)
    except StoreError as exc:
        # One line that the command which started us shows (AgentClient.ensure reads it).
        print(f"{START_ERROR}{exc}", file=sys.stderr, flush=True)
        with contextlib.suppress(FileNotFoundError):
            paths.agent_pidfile.unlink()
        return 1
    redact_logs(agent.engine.ctx.secrets.redactor)  # agent.log never holds a secret value
    asyncio.run(_run_then_exit(agent, paths))
    return 0  # not reached: _run_then_exit ends the process


async def _run_then_exit(agent: Agent, paths: Paths) -> None:
    """Run the agent; once it has stopped, end the process within WIND_DOWN seconds.

    `agent stop` returns when this process has ended (its lock released). What is left once
    `run` returns acts on nothing (the state database is closed), but it must not keep the
    process alive: a task that ignores its cancellation, or a thread blocked in a Docker call or
    a metrics fetch, would (Python 3.11 waits for the default executor without end at exit).
    """
    await agent.run()
    for task in await wind_down(WIND_DOWN):
        log.warning(
            "abandoned at stop, still running %gs after its cancellation: %r", WIND_DOWN, task
        )
    with contextlib.suppress(FileNotFoundError):
        paths.agent_pidfile.unlink()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
