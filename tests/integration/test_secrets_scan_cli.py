"""`conveyor secrets scan` through the real CLI: which files it reads in a git checkout, its exit
codes (1 findings, 0 clean, 2 unreadable), --json, and no finding on conveyor's own tree.
Planted values are made at run time, as in tests/unit/test_secret_scan.py."""

from __future__ import annotations

import json
import os
import random
import string
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_rng = random.Random(5)


def rand(n: int) -> str:
    return "".join(_rng.choice(string.ascii_letters + string.digits) for _ in range(n))


def scan(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "conveyor", "secrets", "scan", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def tokens() -> dict[str, str]:
    return {
        "github": "gh" + "p_" + rand(36),
        "npm": "np" + "m_" + rand(36),
        "ignored": "gl" + "pat-" + rand(20),
        "untracked": "sk" + "_live_" + rand(24),
    }


@pytest.fixture
def checkout(tmp_path: Path, tokens: dict[str, str]) -> Path:
    repo = tmp_path / "shop"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / ".gitignore").write_text(".env.local\n")
    (repo / "conveyor.toml").write_text(
        f'[app]\nname = "shop"\n\n[services.web.env]\nGITHUB_TOKEN = "{tokens["github"]}"\n'
    )
    (repo / ".env").write_text(f"LOG_LEVEL=info\nNPM_TOKEN={tokens['npm']}\n")
    (repo / ".env.local").write_text(f"GITLAB_TOKEN={tokens['ignored']}\n")
    (repo / "src").mkdir()
    (repo / "src" / "pay.py").write_text(f'STRIPE = "{tokens["untracked"]}"\n')
    git(repo, "add", ".gitignore", "conveyor.toml", ".env")
    return repo


def test_findings_exit_1_with_file_line_rule_and_masked_value(
    checkout: Path, tokens: dict[str, str]
) -> None:
    done = scan(cwd=checkout)
    assert done.returncode == 1, done.stderr
    assert done.stdout.splitlines() == [
        ".env:2: npm-token: NPM_TOKEN=npm_********",
        'conveyor.toml:5: github-token: GITHUB_TOKEN = "ghp_********"',
        'src/pay.py:1: stripe-key: STRIPE = "sk_l********"',
    ]
    assert "3 likely secrets in 4 files scanned" in done.stderr
    assert "conveyor:allow-secret because" in done.stderr
    for token in tokens.values():
        assert token not in done.stdout + done.stderr


def test_json_output(checkout: Path, tokens: dict[str, str]) -> None:
    done = scan(str(checkout), "--json", cwd=checkout.parent)
    assert done.returncode == 1
    result = json.loads(done.stdout)
    assert result["exit"] == 1 and result["errors"] == [] and result["files"] == 4
    assert [(f["file"], f["line"], f["rule"]) for f in result["findings"]] == [
        (str(checkout / ".env"), 2, "npm-token"),
        (str(checkout / "conveyor.toml"), 5, "github-token"),
        (str(checkout / "src" / "pay.py"), 1, "stripe-key"),
    ]
    for token in tokens.values():
        assert token not in done.stdout


def test_an_ignored_env_file_is_not_read_but_a_named_one_is(checkout: Path) -> None:
    done = scan(".env.local", cwd=checkout)
    assert done.returncode == 1
    assert done.stdout.startswith(".env.local:1: gitlab-token: GITLAB_TOKEN=glpa********")


def test_allowed_in_place_exits_0(checkout: Path) -> None:
    (checkout / "src" / "pay.py").unlink()
    (checkout / ".env").write_text("LOG_LEVEL=info\n")
    toml = (checkout / "conveyor.toml").read_text()
    (checkout / "conveyor.toml").write_text(
        toml.replace(
            "GITHUB_TOKEN",
            "# conveyor:allow-secret because a revoked token kept for a demo\nGITHUB_TOKEN",
        )
    )
    done = scan(cwd=checkout)
    assert (done.returncode, done.stdout.strip()) == (0, "no likely secrets in 3 files")


def test_outside_git_every_file_is_read(tmp_path: Path, tokens: dict[str, str]) -> None:
    (tmp_path / ".env.local").write_text(f"GITLAB_TOKEN={tokens['ignored']}\n")
    (tmp_path / ".venv").mkdir()
    (tmp_path / ".venv" / "site.py").write_text(f'T = "{tokens["github"]}"\n')
    (tmp_path / "image.bin").write_bytes(b"\0" + tokens["npm"].encode())
    done = scan("--json", cwd=tmp_path)
    result = json.loads(done.stdout)
    assert [f["file"] for f in result["findings"]] == [".env.local"]
    assert (done.returncode, result["files"]) == (1, 1)


def test_a_path_that_cannot_be_read_exits_2(tmp_path: Path) -> None:
    missing = scan(str(tmp_path / "nothing"), cwd=tmp_path)
    assert missing.returncode == 2
    assert "nothing: no such file or directory" in missing.stderr
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    done = scan(str(fifo), "--json", cwd=tmp_path)
    assert done.returncode == 2
    assert json.loads(done.stdout)["errors"] == [f"{fifo}: cannot read: not a regular file"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_file_exits_2(tmp_path: Path) -> None:
    secret = tmp_path / "locked.env"
    secret.write_text("A=1\n")
    secret.chmod(0)
    done = scan(str(tmp_path), cwd=tmp_path)
    assert done.returncode == 2 and "locked.env: cannot read" in done.stderr


# "." is src, tests, docs, examples, README.md and the rest; examples on their own as users copy them.
@pytest.mark.parametrize("part", [".", "examples"])
def test_conveyors_own_tree_is_clean(part: str) -> None:
    done = scan(part, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("no likely secrets in ")


def test_help_has_an_example() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "conveyor", "secrets", "scan", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "conveyor secrets scan . --json" in done.stdout
