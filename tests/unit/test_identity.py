"""Who acts: CONVEYOR_USER, else the git user, else the login name; names that cannot be recorded."""

from __future__ import annotations

import getpass
import subprocess
from pathlib import Path

import pytest

from conveyor import identity


@pytest.fixture
def no_git_user(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A directory outside any repository, with no global or system git user."""
    monkeypatch.delenv("CONVEYOR_USER", raising=False)
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    work = tmp_path / "work"
    work.mkdir()
    return work


def test_conveyor_user_comes_first(monkeypatch: pytest.MonkeyPatch, no_git_user: Path) -> None:
    subprocess.run(["git", "init", "-q", str(no_git_user)], check=True)
    subprocess.run(["git", "-C", str(no_git_user), "config", "user.name", "Ada"], check=True)
    monkeypatch.setenv("CONVEYOR_USER", "  release-manager ")
    assert identity.whoami(no_git_user) == identity.Identity("release-manager", "CONVEYOR_USER")


def test_then_the_git_user_of_the_project(no_git_user: Path) -> None:
    subprocess.run(["git", "init", "-q", str(no_git_user)], check=True)
    subprocess.run(["git", "-C", str(no_git_user), "config", "user.name", "Ada L"], check=True)
    assert identity.whoami(no_git_user) == identity.Identity("Ada L", "git")
    assert identity.current_user(no_git_user) == "Ada L"


def test_then_the_login_name(no_git_user: Path) -> None:
    assert identity.whoami(no_git_user) == identity.Identity(getpass.getuser(), "os")


@pytest.mark.parametrize(
    ("value", "message"),
    [("", "is empty"), ("a\nb", "holds a control character"), ("x" * 201, "is longer than 200")],
)
def test_names_that_cannot_be_recorded(
    monkeypatch: pytest.MonkeyPatch, no_git_user: Path, value: str, message: str
) -> None:
    monkeypatch.setenv("CONVEYOR_USER", value)
    with pytest.raises(identity.IdentityError, match=f"CONVEYOR_USER {message}"):
        identity.whoami(no_git_user)


def test_the_agent_acts_for_the_request_user(
    monkeypatch: pytest.MonkeyPatch, no_git_user: Path
) -> None:
    monkeypatch.setenv("CONVEYOR_USER", "operator")
    assert identity.actor() == "operator"
    token = identity.acting.set("alice")
    try:
        assert identity.actor() == "alice"
    finally:
        identity.acting.reset(token)
    assert identity.actor() == "operator"
