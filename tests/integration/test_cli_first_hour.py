"""What a new user hits in their first hour with the CLI (issue 9), through the real command line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_releases import git

from conftest import Project, wait_for
from conveyor.paths import Paths

ENV_COMMANDS = [
    ["status"],
    ["history"],
    ["logs", "web"],
    ["deploy", "v1"],
    ["rollback"],
    ["promote"],
    ["abort"],
]


@pytest.fixture
def outside() -> Iterator[Path]:
    """A directory with no conveyor.toml in it or above it."""
    root = Path(tempfile.mkdtemp(prefix="cvout", dir="/tmp"))
    try:
        yield root
    finally:
        subprocess.run(["rm", "-rf", str(root)], check=False)


def run(
    cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    return subprocess.run(
        [sys.executable, "-m", "conveyor", *args],
        cwd=cwd,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )


def parsed(proc: subprocess.CompletedProcess[str]) -> dict[str, object]:
    try:
        data = json.loads(proc.stdout)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"not JSON: {proc.stdout!r} {proc.stderr!r}") from exc
    assert isinstance(data, dict)
    return data


# --- --env ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ENV_COMMANDS, ids=lambda c: c[0])
def test_every_command_refuses_an_unknown_environment(project: Project, command: list[str]) -> None:
    project.configure(extra="[environments.qa]")
    proc = project.cli(*command, "--env", "prod")
    assert proc.returncode == 2, proc.stderr
    assert "unknown environment 'prod' (known: dev, qa)" in proc.stderr
    # Checked against the configuration: no agent was started for it.
    assert not (project.home / "agent.sock").exists()
    assert project.pid("agent") is None


# --- messages that mislead -----------------------------------------------------------------------


def test_logs_refuses_a_color_that_is_not_blue_or_green(project: Project) -> None:
    project.configure()
    proc = project.cli("logs", "web", "--color", "purple")
    assert proc.returncode == 2
    assert "--color must be blue or green" in proc.stderr


def test_deploy_of_an_invalid_version_name_says_why_and_suggests_nothing_broken(
    project: Project,
) -> None:
    project.configure()
    proc = project.cli("deploy", "../../etc", "--env", "dev")
    assert proc.returncode == 2
    assert "invalid release version '../../etc'" in proc.stderr
    assert "release create" not in proc.stderr


def test_outside_a_project_the_init_hint_is_printed_once(outside: Path) -> None:
    proc = run(outside, "status")
    assert proc.returncode == 2
    assert proc.stderr.count("conveyor init") == 1, proc.stderr
    assert proc.stderr.startswith("error: no conveyor.toml in")


def test_an_empty_conveyor_toml_is_one_message(outside: Path) -> None:
    (outside / "conveyor.toml").write_text("# nothing yet\n")
    proc = run(outside, "status")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: conveyor.toml is empty: it needs at least [app] name and one [services.NAME] "
        "(`conveyor init` writes a commented one)"
    ]


# --- --json: failures are JSON too --------------------------------------------------------------


def test_json_failures_are_json_objects_with_error_and_exit(
    project: Project, outside: Path
) -> None:
    project.configure()
    project.release("v1")
    cases = [
        (project.cli("deploy", "nope", "--env", "dev", "--json"), 2, "unknown release 'nope'"),
        (project.cli("deploy", "--json"), 2, "VERSION"),  # a usage error, found before the command
        (project.cli("history", "--env", "prod", "--json"), 2, "unknown environment 'prod'"),
        (project.cli("rollback", "--env", "dev", "--json"), 1, ""),  # the agent's refusal
        (project.cli("release", "create", "--version", "v1", "--json"), 2, "already exists"),
        (project.cli("logs", "web", "--json", "--color", "red"), 2, "--color"),
        (run(outside, "status", "--json"), 2, "no conveyor.toml"),
    ]
    for proc, code, words in cases:
        assert proc.returncode == code, (proc.args, proc.stdout, proc.stderr)
        data = parsed(proc)
        assert data["exit"] == code and isinstance(data["error"], str), data
        assert words in data["error"], data
        assert "error:" not in proc.stderr, proc.stderr


# --- a crash during a deploy ---------------------------------------------------------------------

CRASHING_APP = """\
import sys
print("\\x1b[31mERROR\\x1b[0m no database \\x1b]0;pwned\\x07[bold]really[/bold]", flush=True)
sys.exit(3)
"""


def test_a_crash_is_reported_once_without_escape_sequences(project: Project) -> None:
    project.configure()
    (project.dir / "app.py").write_text(CRASHING_APP)
    project.release("v1")
    proc = project.cli("deploy", "v1", "--env", "dev")
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert out.count("exited before it took traffic") == 1, out
    assert "\x1b" not in out and "\x07" not in out
    # Quoted as it was printed, less the escapes; rich markup in app output is not interpreted.
    assert "ERROR no database [bold]really[/bold]" in proc.stderr
    code, data = project.deploy("v1")
    assert code == 1 and "\x1b" not in data["error"] and "\x1b" not in data["reason"]


# --- Ctrl-C --------------------------------------------------------------------------------------


def test_ctrl_c_on_deploy_detaches_and_says_how_to_follow_or_stop(project: Project) -> None:
    project.configure(start_timeout="120s")
    project.release("v1", healthy=False)  # never healthy: the deployment waits until aborted
    deploy = subprocess.Popen(
        [sys.executable, "-m", "conveyor", "deploy", "v1", "--env", "dev"],
        env=project.env,
        cwd=project.dir,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert deploy.stdout is not None
        for line in deploy.stdout:
            if "deployment #1" in line:
                break
        deploy.send_signal(signal.SIGINT)
        rest, err = deploy.communicate(timeout=60)
    finally:
        deploy.kill()
    assert deploy.returncode == 130, err
    assert (
        "detached — deployment #1 continues in the agent; `conveyor status --env dev` to follow "
        "it, `conveyor abort --env dev` to stop it"
    ) in rest
    assert project.db("SELECT outcome FROM deployments") == [("in_progress",)]
    assert project.cli("abort", "--env", "dev").returncode == 0
    wait_for(
        lambda: project.db("SELECT outcome FROM deployments") == [("aborted",)],
        what="the detached deployment to be aborted",
    )


# --- logs --json ---------------------------------------------------------------------------------


def test_logs_json_is_one_object_per_line(project: Project) -> None:
    project.configure()
    log = Paths.for_project(project.dir).service_log("dev", "web", "green")
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("--- start ---\nGET / 200\nGET /x 404\n")
    proc = project.cli("logs", "web", "--json", "-n", "2")
    assert proc.returncode == 0, proc.stderr
    first, *lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert first["agent"]["started"] is True  # this command started it
    # Lines written before the log writer stamped them: no time, no stream.
    assert lines == [
        {"time": None, "service": "web", "color": "green", "stream": None, "line": "GET / 200"},
        {"time": None, "service": "web", "color": "green", "stream": None, "line": "GET /x 404"},
    ]


# --- --help and completion -----------------------------------------------------------------------


def test_help_lists_commands_in_order_of_use_and_names_arguments(project: Project) -> None:
    proc = project.cli("--help")
    assert proc.returncode == 0
    listed = re.findall(r"^  (\w+) ", proc.stdout.split("Commands:")[1], re.MULTILINE)
    order = (
        "init release releases deploy gates check approve reject status history logs rollback "
        "promote abort stop start manifest schema render lock unlock locks audit secrets tokens "
        "access agent serve proxy doctor db migrate migrations demo"
    )
    assert listed == [*order.split(), "completion"]
    assert " deploy [OPTIONS] VERSION\n" in project.cli("deploy", "--help").stdout
    assert " logs [OPTIONS] SERVICE\n" in project.cli("logs", "--help").stdout


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_a_script_for_each_shell(outside: Path, shell: str) -> None:
    proc = run(outside, "completion", shell)
    assert proc.returncode == 0, proc.stderr
    assert "_CONVEYOR_COMPLETE" in proc.stdout


def test_bash_completion_completes_commands(outside: Path) -> None:
    # The script calls `conveyor` back: the one installed beside this Python.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    script = run(outside, "completion", "bash").stdout
    proc = subprocess.run(
        [
            "bash",
            "-c",
            f"{script}\nCOMP_WORDS=(conveyor de); COMP_CWORD=1; _conveyor_completion conveyor; "
            'printf "%s\\n" "${COMPREPLY[@]}"',
        ],
        cwd=outside,
        env={**os.environ, "PATH": path},
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    assert "deploy" in proc.stdout.split(), proc.stdout
    assert run(outside, "completion", "tcsh").returncode == 2


# --- release create warnings ---------------------------------------------------------------------


def test_release_create_warns_about_uncommitted_changes_and_same_content(project: Project) -> None:
    project.configure()

    git(project.dir, "init", "-q")
    git(project.dir, "add", "app.py", "worker.py")
    git(project.dir, "commit", "-qm", "app")
    first = project.cli("release", "create", "--version", "v1")
    assert first.returncode == 0
    assert "uncommitted" not in first.stderr and "same content" not in first.stderr
    (project.dir / "app.py").write_text("# edited, not committed\n")
    proc = project.cli("release", "create", "--version", "v2")
    assert proc.returncode == 0
    assert (
        "warning: uncommitted changes are not in the release (it is commit " in proc.stderr
        and "app.py (modified)" in proc.stderr
    ), proc.stderr
    assert "warning: same content as v1" in proc.stderr
    assert "conveyor.toml" not in proc.stderr  # read from the project, not from the release
    code, data = project.json("release", "create", "--version", "v3")
    assert code == 0 and data["same_content_as"] == ["v1", "v2"]
    assert {"path": "app.py", "change": "modified"} in data["uncommitted"]


def test_release_without_git_leaves_secrets_out_and_names_them(project: Project) -> None:
    project.configure()
    (project.dir / ".env").write_text("SECRET=1\n")
    (project.dir / "server.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    proc = project.cli("release", "create", "--version", "v1")
    assert proc.returncode == 0, proc.stderr
    assert "left out: .env, server.pem" in proc.stdout


# --- init ----------------------------------------------------------------------------------------


def test_init_in_an_unknown_directory_writes_a_placeholder_and_says_so(outside: Path) -> None:
    (outside / "package.json").write_text("{}\n")
    (outside / ".env").write_text("SECRET=1\n")
    proc = run(outside, "init")
    assert proc.returncode == 0, proc.stderr
    assert "did not recognise the app here: edit `services.web.command`" in proc.stdout
    text = (outside / "conveyor.toml").read_text()
    assert "http.server" not in text
    assert "# conveyor init did not recognise this app: replace this placeholder" in text
    assert not (outside / ".gitignore").exists()  # not a git work tree: nothing to ignore for


def test_init_adds_the_state_directory_to_gitignore_once(outside: Path) -> None:
    git(outside, "init", "-q")
    (outside / ".gitignore").write_text("*.pyc")  # no newline at the end
    assert run(outside, "init").returncode == 0
    assert run(outside, "init", "--force").returncode == 0
    assert (outside / ".gitignore").read_text() == "*.pyc\n.conveyor/\n"
