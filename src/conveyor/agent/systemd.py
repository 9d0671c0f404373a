"""systemd units that keep the project's agent, and its API server, running on a server.

systemd restarts the agent whenever it ends (`Restart=always`). Stopping or restarting the unit
must never stop the apps: the agent takes SIGTERM as `conveyor agent stop --keep-running` does
(services and the proxy keep serving, the next agent adopts them), and `KillMode=process` keeps
systemd from killing the rest of the unit's cgroup, where the services and the proxy it started
live (their own sessions do not take them out of it).

`conveyor serve --install-unit` writes a second unit for the API and dashboard: the same
restart policy, SIGTERM for uvicorn's graceful stop, and nothing else in its cgroup to spare.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path


def unit_name(app: str, role: str = "agent") -> str:
    """conveyor-<app>.service (the agent) or conveyor-<app>-serve.service, with anything systemd
    would not take in a name made a dash."""
    suffix = "" if role == "agent" else f"-{role}"
    return f"conveyor-{re.sub(r'[^A-Za-z0-9_.-]', '-', app)}{suffix}.service"


def unit_path(app: str, user_unit: bool, home: Path, role: str = "agent") -> Path:
    """Where the unit goes: the user's units (`systemctl --user`) or the system's."""
    if user_unit:
        return home / ".config" / "systemd" / "user" / unit_name(app, role)
    return Path("/etc/systemd/system") / unit_name(app, role)


def _quote(value: str) -> str:
    """One word of a systemd command line or assignment: double quotes when needed, with the
    characters systemd treats specially escaped ("%" is a specifier, "$" a variable)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    escaped = escaped.replace("$", "$$")
    return f'"{escaped}"' if re.search(r'[\s"\\;$%\']', value) else escaped


def _unit(
    written_by: str,
    description: str,
    after: str,
    project_dir: Path,
    user: str | None,
    exec_words: list[str],
    path_env: str,
    conveyor_home: str | None,
    env_files: list[str],
    stop: list[str],
) -> str:
    """A unit that runs `exec_words` in the project directory and restarts it whenever it
    ends. `stop`: how systemd stops it (KillSignal=..., KillMode=..., TimeoutStopSec=...)."""
    env = [f"Environment={_quote('PATH=' + path_env)}"]
    if conveyor_home:
        env.append(f"Environment={_quote('CONVEYOR_HOME=' + conveyor_home)}")
    conf = project_dir / ".conveyor"
    lines = [
        f"# Written by {written_by}.",
        "[Unit]",
        f"Description={description}".replace("%", "%%"),
        f"After={after}",
        # Never give up restarting (the default gives up after 5 starts in 10 s).
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "Type=simple",
        f"WorkingDirectory={_quote(str(project_dir))}",
        *([f"User={user}"] if user else []),
        f"ExecStart={' '.join(_quote(w) for w in exec_words)}",
        *env,
        # Secrets (CONVEYOR_DATABASE_URL with a password, ...) go in these optional files.
        *(f"EnvironmentFile=-{_quote(str(conf / name))}" for name in env_files),
        "Restart=always",
        "RestartSec=1",
        *stop,
        "",
        "[Install]",
        f"WantedBy={'multi-user.target' if user else 'default.target'}",
        "",
    ]
    return "\n".join(lines)


def unit_text(
    app: str,
    project_dir: Path,
    python: str,
    user: str | None,
    path_env: str,
    conveyor_home: str | None,
) -> str:
    """The unit for `app`'s agent. `user`: the account it runs as (system units only; a user
    unit runs as its owner). `path_env`: PATH for the agent and the services it starts, as the
    installing shell had it, so they find the same programs as when started from a command.
    `conveyor_home`: $CONVEYOR_HOME when it was set."""
    return _unit(
        "`conveyor agent install`; `conveyor agent install --print` shows it again",
        f"conveyor agent for {app} ({project_dir})",
        "network.target",
        project_dir,
        user,
        [python, "-m", "conveyor.agent", "--project", str(project_dir), "--wait-for-lock"],
        path_env,
        conveyor_home,
        ["agent.env"],
        # SIGTERM: the agent stops as with --keep-running; only the agent's own process is
        # signalled, so the services and the proxy in this cgroup keep serving.
        ["KillSignal=SIGTERM", "KillMode=process", "TimeoutStopSec=90"],
    )


def serve_unit_text(
    app: str,
    project_dir: Path,
    python: str,
    user: str | None,
    path_env: str,
    conveyor_home: str | None,
    serve_args: list[str],
) -> str:
    """The unit for `app`'s `conveyor serve`, run with `serve_args` (its options, as given)."""
    return _unit(
        "`conveyor serve --install-unit`; add --print-unit to show it again",
        f"conveyor API and dashboard for {app} ({project_dir})",
        # After the agent's unit when both are installed; it does not need it (the server
        # starts the agent when an action needs it, as the CLI does).
        f"network.target {unit_name(app)}",
        project_dir,
        user,
        [python, "-m", "conveyor", "serve", *serve_args],
        path_env,
        conveyor_home,
        # The agent's settings (CONVEYOR_DATABASE_URL, ...), then the server's own.
        ["agent.env", "serve.env"],
        # uvicorn stops gracefully on SIGTERM: open event streams are closed within 3 s.
        ["KillSignal=SIGTERM", "TimeoutStopSec=30"],
    )


def install(text: str, app: str, user_unit: bool, home: Path, role: str = "agent") -> Path:
    """Write the unit where systemd looks for it; OSError (with a hint for a system unit) when
    it cannot be written."""
    target = unit_path(app, user_unit, home, role)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
    except OSError as exc:
        hint = "" if user_unit else " (a system unit needs root: sudo, or --user)"
        raise OSError(f"cannot write {target}: {exc.strerror or exc}{hint}") from exc
    return target


def next_steps(app: str, user_unit: bool, role: str = "agent") -> str:
    """The commands that load and start the unit once it is written."""
    systemctl = "systemctl --user" if user_unit else "sudo systemctl"
    name = shlex.quote(unit_name(app, role))
    return f"{systemctl} daemon-reload && {systemctl} enable --now {name}"
