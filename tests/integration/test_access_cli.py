"""`conveyor tokens` and `conveyor access` through the real CLI, in a temp project, on SQLite and
PostgreSQL: the first admin, a token for CI, listing, revoking, and the secret shown once and
found nowhere afterwards (database, listings, audit log, files under the project)."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from datetime import UTC, datetime

import pytest

from conftest import Project
from conveyor.auth import service
from conveyor.auth.service import Unauthenticated
from conveyor.core.access import decide
from conveyor.store.db import Store

pytestmark = pytest.mark.both_databases


def _store(project: Project) -> Store:
    return Store.open(project.database_url or f"sqlite:///{project.home / 'state.db'}")


def _everything_stored(project: Project) -> str:
    """Every table's rows, and every file under the project (the SQLite file and its journal,
    logs), as text to search."""
    tables = [r[0] for r in project.db(_TABLES_SQL if project.database_url is None else _PG_SQL)]
    rows = [repr(project.db(f"SELECT * FROM {table}")) for table in tables]
    files = [
        path.read_bytes().decode("latin-1") for path in project.dir.rglob("*") if path.is_file()
    ]
    return "\n".join(rows + files)


_TABLES_SQL = "SELECT name FROM sqlite_master WHERE type = 'table'"
_PG_SQL = "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"


def test_tokens_and_roles_end_to_end(project: Project) -> None:
    project.configure()
    with (project.dir / "conveyor.toml").open("a") as f:
        f.write("\n[environments.staging]\n")
    project.env["CONVEYOR_USER"] = "alice"

    # Nobody holds anything yet: a deployer token is refused, saying what would allow it.
    proc = project.cli("tokens", "create", "--role", "deployer", "--env", "staging")
    assert proc.returncode == 2
    assert "conveyor access grant alice deployer --env staging" in proc.stderr
    # The first admin: alice's own admin token on a fresh install.
    code, first = project.json("tokens", "create", "--role", "admin", "--description", "me")
    assert code == 0, first
    assert first["first_admin"] is True and first["owner"] == "alice"
    assert "will not be shown again" in first["note"]
    admin_token = first["token"]

    # Usage errors name the option.
    proc = project.cli("access", "grant", "ci-bot", "boss")
    assert proc.returncode == 2 and "ROLE: unknown role 'boss'" in proc.stderr
    proc = project.cli("access", "grant", "ci-bot", "deployer", "--env", "prod")
    assert proc.returncode == 2 and "--env: no environment 'prod'" in proc.stderr
    proc = project.cli("tokens", "create", "--role", "admin", "--expires", "soon")
    assert proc.returncode == 2 and "--expires: invalid expiry 'soon'" in proc.stderr

    proc = project.cli("access", "grant", "ci-bot", "deployer", "--env", "staging")
    assert proc.returncode == 0 and "ci-bot is deployer on staging" in proc.stdout
    proc = project.cli(
        "tokens",
        "create",
        "--role",
        "deployer",
        "--env",
        "staging",
        "--user",
        "ci-bot",
        "--expires",
        "30d",
        "--description",
        "CI pipeline",
    )
    assert proc.returncode == 0, proc.stderr
    ci_token = proc.stdout.strip()  # the token alone on stdout
    assert ci_token.startswith("cvy_") and "\n" not in ci_token
    assert "will not be shown again" in proc.stderr and ci_token not in proc.stderr
    ci_id = ci_token.split("_")[1]

    # The token works (through the same service the API uses) only where its owner may act.
    store = _store(project)
    try:
        now = datetime.now(UTC)
        who = service.authenticate(store, [], ci_token, now, "127.0.0.1")
        assert who.subject == "ci-bot" and who.token_id == ci_id
        assert decide(who, "deploy", "staging").allowed
        assert not decide(who, "deploy", "dev").allowed
        assert not decide(who, "approve", "staging").allowed
    finally:
        store.close()

    code, listed = project.json("tokens", "list")
    assert code == 0
    by_id = {t["id"]: t for t in listed["tokens"]}
    assert by_id[ci_id]["owner"] == "ci-bot" and by_id[ci_id]["state"] == "active"
    assert by_id[ci_id]["last_used_from"] == "127.0.0.1"
    assert by_id[ci_id]["description"] == "CI pipeline"
    assert "digest" not in by_id[ci_id]
    proc = project.cli("tokens", "list", "--user", "ci-bot")
    assert proc.returncode == 0 and ci_id in proc.stdout
    assert len(proc.stdout.strip().splitlines()) == 2  # the header and ci-bot's one token

    # Revoking is destructive: without a terminal, only with --yes.
    proc = project.cli("tokens", "revoke", ci_id)
    assert proc.returncode == 2 and "needs --yes" in proc.stderr
    proc = project.cli("tokens", "revoke", ci_id, "--yes")
    assert proc.returncode == 0 and f"revoked token {ci_id} of ci-bot" in proc.stdout
    proc = project.cli("tokens", "revoke", "nosuchtoken00", "--yes")
    assert proc.returncode == 2 and "no token with id nosuchtoken00" in proc.stderr
    store = _store(project)
    try:
        with pytest.raises(Unauthenticated, match="revoked by alice"):
            service.authenticate(store, [], ci_token, datetime.now(UTC))
    finally:
        store.close()

    proc = project.cli("access", "revoke", "ci-bot", "deployer", "--env", "staging")
    assert proc.returncode == 2 and "needs --yes" in proc.stderr
    proc = project.cli("access", "revoke", "ci-bot", "deployer", "--env", "staging", "--yes")
    assert proc.returncode == 0, proc.stderr
    code, access = project.json("access", "list")
    assert code == 0
    assert [(b["subject"], b["role"], b["environment"]) for b in access["bindings"]] == [
        ("alice", "admin", None)
    ]

    code, logged = project.json("audit")
    assert code == 0
    assert [(e["action"], e["target"]) for e in logged["entries"]] == [
        ("access.grant", "alice"),
        ("token.create", first["id"]),
        ("access.grant", "ci-bot"),
        ("token.create", ci_id),
        ("token.revoke", ci_id),
        ("access.revoke", "ci-bot"),
    ]
    assert project.cli("audit", "verify").returncode == 0

    # Neither secret is anywhere: not in the database, nor in a listing, nor in the audit log.
    outputs = [
        project.cli("tokens", "list").stdout,
        json.dumps(project.json("tokens", "list")),
        json.dumps(logged),
        _everything_stored(project),
    ]
    for token in (admin_token, ci_token):
        secret = token.split("_", 2)[2]
        for text in outputs:
            assert secret not in text
    # The search did see the stored state: the tokens' public ids are there.
    assert ci_id in outputs[3] and first["id"] in outputs[3]


def test_revoking_on_a_terminal_asks_first(project: Project) -> None:
    project.configure()
    project.env["CONVEYOR_USER"] = "alice"
    code, made = project.json("tokens", "create", "--role", "admin", "--expires", "never")
    assert code == 0 and made["expires_at"] is None
    for answer, revoked in (("n", False), ("y", True)):
        primary, replica = pty.openpty()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "conveyor", "tokens", "revoke", made["id"]],
                env=project.env,
                cwd=project.dir,
                stdin=replica,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            os.write(primary, f"{answer}\n".encode())
            out, err = proc.communicate(timeout=60)
        finally:
            os.close(primary)
            os.close(replica)
        assert f"Revoke token {made['id']} of alice (admin on every environment)?" in out + err
        assert (proc.returncode == 0) is revoked, (out, err)
        code, listed = project.json("tokens", "list")
        assert listed["tokens"][0]["state"].startswith("revoked") is revoked


@pytest.mark.parametrize(
    "command",
    [
        ("tokens",),
        ("tokens", "create"),
        ("tokens", "list"),
        ("tokens", "revoke"),
        ("access",),
        ("access", "grant"),
        ("access", "revoke"),
        ("access", "list"),
    ],
)
def test_every_access_command_has_help_with_an_example(command: tuple[str, ...]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "conveyor", *command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0 and "Example:" in proc.stdout, proc.stderr
    assert f"conveyor {' '.join(command)}" in proc.stdout.split("Example:")[1]
