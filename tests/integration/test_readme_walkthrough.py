"""The README's "Using it on your app", command by command, on a small Flask app.

The app lives in a git repository and has its own virtualenv with Flask and gunicorn from PyPI,
as a new user's app would; conveyor runs from the test's Python with that virtualenv active.
"""

from __future__ import annotations

import http.client
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import venv
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_releases import GIT_ENV, git

from conftest import Project, wait_for
from conveyor.runtimes.local import free_port

README = Path(__file__).parents[2] / "README.md"
APP = """\
from flask import Flask

app = Flask(__name__)
GREETING = "{greeting}"


@app.get("/")
def index() -> str:
    return GREETING + "\\n"


@app.get("/healthz")
def healthz() -> str:
    return "ok\\n"
"""


def readme_commands() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Using it on your app") :]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block is not None, "no sh block under 'Using it on your app'"
    return [line.strip() for line in block.group(1).splitlines() if line.strip()]


@pytest.fixture(scope="session")
def flask_venv() -> Iterator[Path]:
    """A virtualenv with Flask and gunicorn, made once per test session (pip takes a while)."""
    root = Path(tempfile.mkdtemp(prefix="cvflask", dir="/tmp"))
    target = root / "venv"
    venv.EnvBuilder(with_pip=True).create(target)
    python = str(target / "bin" / "python")
    pip = subprocess.run(
        [python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "flask", "gunicorn"],
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
    )
    try:
        if pip.returncode != 0:
            if os.environ.get("CI") == "true":
                pytest.fail(f"cannot install flask and gunicorn from PyPI: {pip.stderr}")
            pytest.skip(f"cannot install flask and gunicorn from PyPI: {pip.stderr[-300:]}")
        yield target
    finally:
        shutil.rmtree(root, ignore_errors=True)


def get(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/")
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def test_the_readme_walkthrough_on_a_flask_app(flask_venv: Path) -> None:
    commands = readme_commands()
    assert commands[0].startswith("pip install -e /path/to/conveyor")
    assert commands[1].startswith("cd myapp")

    root = Path(tempfile.mkdtemp(prefix="cvmyapp", dir="/tmp"))
    proj = Project(root)  # for its cleanup: it kills whatever a failed test left running
    for leftover in ("app.py", "worker.py"):
        (root / leftover).unlink()
    (root / ".venv").symlink_to(flask_venv)
    (root / "app.py").write_text(APP.format(greeting="hello from v1"))
    (root / ".gitignore").write_text(".venv\n__pycache__/\n")
    git(root, "init", "-q")
    git(root, "add", ".")
    git(root, "commit", "-qm", "app")
    # The user's shell: the app's virtualenv active, conveyor installed (here: this Python's).
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVEYOR_")}
    env.update({k: v for k, v in GIT_ENV.items() if k.startswith("GIT_")})
    env["VIRTUAL_ENV"] = str(root / ".venv")
    env["PATH"] = f"{root / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    port = free_port()
    seen: list[str] = []

    def run(line: str) -> subprocess.CompletedProcess[str]:
        args = shlex.split(line.split("#", 1)[0])
        assert args[0] == "conveyor"
        proc = subprocess.run(
            [sys.executable, "-m", "conveyor", *args[1:]],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
            stdin=subprocess.DEVNULL,
        )
        assert proc.returncode == 0, f"{line}\n{proc.stdout}\n{proc.stderr}"
        seen.append(args[1])
        return proc

    try:
        for line in commands[2:]:
            if line.startswith("#"):
                assert "edit" in line and "commit" in line, line
                (root / "app.py").write_text(APP.format(greeting="hello from v2"))
                git(root, "commit", "-qam", "v2")
                continue
            proc = run(line)
            out = proc.stdout + proc.stderr
            words = shlex.split(line.split("#", 1)[0])[1:]
            if words[0] == "init":
                text = (root / "conveyor.toml").read_text()
                # The app's own production server from its own virtualenv, and its health route.
                assert f'command = "{root}/.venv/bin/gunicorn' in text, text
                assert 'path = "/healthz"' in text
                assert ".conveyor/" in (root / ".gitignore").read_text().splitlines()
                assert "gunicorn" in out
                # 8080 may be taken on this machine: the one edit a user might have to make.
                (root / "conveyor.toml").write_text(text.replace("port = 8080", f"port = {port}"))
            elif words[:2] == ["release", "create"]:
                version = words[words.index("--version") + 1]
                assert f"release {version}: sha256-" in out
                assert "same content" not in out, out
                if version == "v1":
                    # init added .conveyor/ to .gitignore: the only change not in the release.
                    assert "uncommitted changes are not in the release" in out
                    assert out.strip().endswith("): .gitignore (modified)"), out
                else:
                    assert "uncommitted" not in out, out
            elif words[0] == "deploy":
                assert f"{words[1]} is live in dev" in out
                assert get(port) == f"hello from {words[1]}\n"
            elif words[0] == "status":
                assert re.search(r"web\s+v2 \((blue|green)\)\s+healthy\s+v1", out), out
                assert f"http://127.0.0.1:{port}" in out
            elif words[0] == "history":
                assert re.search(r"\bv2\s+deploy\s+succeeded", out), out
                assert re.search(r"\bv1\s+deploy\s+succeeded", out), out
            elif words[0] == "rollback":
                assert "rolled back dev from v2 to v1" in out
                wait_for(lambda: get(port) == "hello from v1\n", what="v1 to serve again")
        assert seen == [
            "init",
            "release",
            "deploy",
            "release",
            "deploy",
            "status",
            "history",
            "rollback",
        ]
    finally:
        proj.cleanup()
        if not os.environ.get("CONVEYOR_TEST_KEEP"):
            shutil.rmtree(root, ignore_errors=True)
