"""`conveyor agent install`: the systemd unit that keeps a project's agent running (issue 7)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conveyor.agent.systemd import next_steps, unit_name, unit_path, unit_text

PROJECT = Path("/srv/my shop")


def unit(user: str | None = "deploy", home: str | None = None) -> str:
    return unit_text(
        app="shop",
        project_dir=PROJECT,
        python="/opt/venv/bin/python",
        user=user,
        path_env="/opt/venv/bin:/usr/bin:/bin",
        conveyor_home=home,
    )


def directives(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def test_the_unit_restarts_the_agent_and_never_stops_the_apps() -> None:
    d = directives(unit())
    assert d["Restart"] == ["always"]
    assert d["StartLimitIntervalSec"] == ["0"]
    # Only the agent's own process gets SIGTERM, which it takes as --keep-running.
    assert d["KillMode"] == ["process"] and d["KillSignal"] == ["SIGTERM"]
    assert d["WorkingDirectory"] == ['"/srv/my shop"']
    assert d["User"] == ["deploy"]
    assert d["ExecStart"] == [
        '/opt/venv/bin/python -m conveyor.agent --project "/srv/my shop" --wait-for-lock'
    ]
    assert d["Environment"] == ["PATH=/opt/venv/bin:/usr/bin:/bin"]
    assert d["EnvironmentFile"] == ['-"/srv/my shop/.conveyor/agent.env"']
    assert d["WantedBy"] == ["multi-user.target"]


def test_a_user_unit_has_no_user_line_and_starts_with_the_session() -> None:
    d = directives(unit(user=None, home="/var/lib/conveyor"))
    assert "User" not in d
    assert d["WantedBy"] == ["default.target"]
    assert "CONVEYOR_HOME=/var/lib/conveyor" in d["Environment"]


def test_specifiers_and_variables_are_escaped() -> None:
    text = unit_text("shop", Path("/srv/100%"), "/usr/bin/python3", None, "/a$b", None)
    assert '--project "/srv/100%%"' in text
    assert "Description=conveyor agent for shop (/srv/100%%)" in text
    assert 'Environment="PATH=/a$$b"' in text


def test_names_paths_and_next_steps() -> None:
    assert unit_name("shop") == "conveyor-shop.service"
    assert unit_name("a b/c") == "conveyor-a-b-c.service"
    home = Path("/home/ann")
    assert unit_path("shop", True, home) == home / ".config/systemd/user/conveyor-shop.service"
    assert unit_path("shop", False, home) == Path("/etc/systemd/system/conveyor-shop.service")
    assert next_steps("shop", True) == (
        "systemctl --user daemon-reload && systemctl --user enable --now conveyor-shop.service"
    )


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_accepts_the_unit(tmp_path: Path) -> None:
    project = tmp_path / "shop"
    project.mkdir()
    text = unit_text("shop", project, sys.executable, None, os.environ.get("PATH", ""), None)
    path = tmp_path / unit_name("shop")
    path.write_text(text)
    check = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "SYSTEMD_LOG_LEVEL": "notice"},
    )
    problems = [
        line
        for line in (check.stdout + check.stderr).splitlines()
        if str(path) in line or path.name in line
    ]
    assert check.returncode == 0 and not problems, check.stdout + check.stderr
