"""What the local CLI can do, the API and `--server` can too, through the same code: a deploy
through a freeze window (admins, with a reason, audited), a rollback keeping the current secrets
or taking its migrations down, an approval given before anyone asked to deploy, and the
withdrawal of an approval or a rejection. A real `conveyor serve`, agent and project."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from apikit import Served, serve, token
from migration_files import EMAIL, USERS
from test_api_cli_remote import Elsewhere
from test_migrations_deploy import columns, release
from test_secrets_deploy import configure, digest, long_value, set_secret, with_master_key
from test_secrets_deploy import served as served_secrets

from conftest import Project, wait_for
from conveyor.runtimes.local import free_port


@contextmanager
def elsewhere(served: Served, tok: str) -> Iterator[Elsewhere]:
    """The CLI in a directory without a project, acting through `served` with `tok`."""
    remote = Elsewhere(served.url, tok)
    try:
        yield remote
    finally:
        shutil.rmtree(remote.dir, ignore_errors=True)


def audit_entries(served: Served, admin_tok: str, env: str, action: str) -> list[dict[str, Any]]:
    """The audit log's entries of `action` in `env`, newest first."""
    params = {"environment": env, "action": action}
    got = served.client(admin_tok).get("/api/v1/audit", params=params)
    assert got.status_code == 200, got.text
    return list(got.json()["entries"])


def test_a_deploy_through_a_freeze_needs_an_admin_and_a_reason(project: Project) -> None:
    today = datetime.now(UTC).date()
    window = f"{today - timedelta(days=1)} - {today + timedelta(days=1)}"
    project.configure(extra=f'freeze = ["{window}"]\n\n[access]\nadmins = ["alice"]\n')
    project.release("v1")
    alice_id, alice_tok = token(project, "alice", "admin")
    _, alice_deployer_tok = token(project, "alice", "deployer")  # a narrower token of hers
    _, bob_tok = token(project, "bob", "admin")  # an admin by binding, not in [access] admins
    dan_id, dan_tok = token(project, "dan", "deployer")
    with serve(project) as served:
        url = "/api/v1/environments/dev/deployments"
        through = {"version": "v1", "override_freeze": True, "reason": "hotfix"}
        r = served.client(dan_tok).post(url, json=through)
        assert r.status_code == 403 and "admin role on dev" in r.json()["error"], r.text
        r = served.client(alice_deployer_tok).post(url, json=through)
        assert r.status_code == 403, r.text
        alice = served.client(alice_tok)
        r = alice.post(url, json={"version": "v1", "override_freeze": True})
        assert r.status_code == 422 and "reason" in r.json()["error"], r.text
        r = alice.post(url, json={"version": "v1"})
        assert r.status_code == 409 and "freeze" in r.json()["error"], r.text
        # The agent's own check, as for the CLI: only [access] admins may override.
        r = served.client(bob_tok).post(url, json=through)
        assert r.status_code == 409 and "bob may not override it" in r.json()["error"], r.text
        assert project.db("SELECT id FROM deployments") == []

        with elsewhere(served, alice_tok) as remote:
            proc = remote.run("deploy", "v1", "--env", "dev", "--override-freeze")
            assert proc.returncode == 2 and "--reason" in proc.stderr
            code, out = remote.json(
                "deploy", "v1", "--env", "dev", "--override-freeze", "--reason", "hotfix"
            )
            assert code == 0 and out["outcome"] == "succeeded", out
        assert project.serving() == "v1"

        def overridden() -> list[dict[str, Any]]:
            return audit_entries(served, alice_tok, "dev", "freeze.override")

        entries = wait_for(
            lambda: [e for e in overridden() if e["outcome"] == "ok"] and overridden(),
            what="the audit entry of the override",
        )
        ok = [e for e in entries if e["outcome"] == "ok"]
        assert [(e["actor"], e["target"]) for e in ok] == [("alice", "v1")]
        assert ok[0]["data"]["reason"] == "hotfix"
        assert ok[0]["data"]["via"]["token"] == alice_id
        assert ok[0]["data"]["via"]["role"] == "admin"
        assert ok[0]["data"]["via"]["source"] == "127.0.0.1"
        refused = [(e["actor"], e["data"]["via"]["token"]) for e in entries if e["actor"] == "dan"]
        assert refused == [("dan", dan_id)]
        assert ("bob", "refused") in {(e["actor"], e["outcome"]) for e in entries}


@pytest.mark.postgres
def test_a_remote_rollback_takes_migrations_down_or_keeps_the_secrets(
    project: Project, fresh_pg_url: str
) -> None:
    with_master_key(project)
    configure(project, names=("DATABASE_URL", "DB_PASSWORD"))
    with (project.dir / "conveyor.toml").open("a") as f:
        f.write('\n[migrations]\ndatabase_url_secret = "DATABASE_URL"\n')
    set_secret(project, "DATABASE_URL", fresh_pg_url)
    first, second = long_value(), long_value()
    set_secret(project, "DB_PASSWORD", first)
    release(project, "v1", {"001_users.sql": USERS})
    assert project.deploy("v1")[0] == 0
    set_secret(project, "DB_PASSWORD", second)
    release(project, "v2", {"002_email.sql": EMAIL})
    assert project.deploy("v2")[0] == 0
    assert columns(fresh_pg_url) == {"id", "name", "email"}
    dan_id, dan_tok = token(project, "dan", "deployer")
    _, ann_tok = token(project, "ann", "admin")
    with serve(project) as served, elsewhere(served, dan_tok) as dan:
        live = project.db("SELECT id FROM deployments ORDER BY id DESC LIMIT 1")[0][0]
        r = served.client(dan_tok).post(
            f"/api/v1/deployments/{live}/rollback", json={"force": True}
        )
        assert r.status_code == 422 and "force only applies" in r.json()["error"], r.text
        proc = dan.run("rollback", "--env", "dev", "--migrations", "down")
        assert proc.returncode == 2 and "--yes" in proc.stderr  # no terminal to ask on

        down = ("rollback", "--env", "dev", "--migrations", "down", "--yes")
        code, out = dan.json(*down, "--force")
        assert code == 0, out
        assert project.serving() == "v1"
        assert columns(fresh_pg_url) == {"id", "name"}  # 002's Down section ran
        assert [m["name"] for m in out["migrations_down"]] == ["email"]
        assert served_secrets(project)["DB_PASSWORD"]["sha256"] == digest(first)  # v1's own

        # Without --force, a Down section that drops data is refused, as locally: exit 1.
        assert project.deploy("v2")[0] == 0  # applies 002 again, with the current secret
        assert columns(fresh_pg_url) == {"id", "name", "email"}
        code, out = dan.json(*down)
        assert code == 1 and "pass --force" in out["error"], out
        assert project.serving() == "v1" and columns(fresh_pg_url) == {"id", "name", "email"}

        assert project.deploy("v2")[0] == 0
        code, out = dan.json("rollback", "--env", "dev", "--keep-secrets")
        assert code == 0, out
        assert project.serving() == "v1"
        assert served_secrets(project)["DB_PASSWORD"]["sha256"] == digest(second)
        assert columns(fresh_pg_url) == {"id", "name", "email"}  # migrations kept

        def rollbacks() -> list[dict[str, Any]] | None:
            found = [
                e for e in audit_entries(served, ann_tok, "dev", "rollback") if e["outcome"] == "ok"
            ]
            return found if len(found) == 2 else None

        keep, undone = wait_for(rollbacks, what="the audit entries of both rollbacks")
        assert (undone["data"]["migrations"], undone["data"]["keep_secrets"]) == ("down", False)
        assert (keep["data"]["migrations"], keep["data"]["keep_secrets"]) == ("keep", True)
        assert {e["data"]["via"]["token"] for e in (keep, undone)} == {dan_id}


PRODUCTION = """
[environments.production]
approvals = 1

[environments.production.services.web]
port = {port}
"""


def test_approvals_of_a_release_before_any_deploy_and_their_withdrawal(project: Project) -> None:
    project.configure(extra=PRODUCTION.format(port=free_port()))
    project.release("v1")
    project.release("v2")
    _, ann_tok = token(project, "ann", "admin")
    amy_id, amy_tok = token(project, "amy", "approver", "production")
    _, ivy_tok = token(project, "ivy", "approver", "production")
    _, dan_tok = token(project, "dan", "deployer", "production")
    _, dan_approver_tok = token(project, "dan", "approver", "production")
    _, vic_tok = token(project, "vic", "viewer")
    with serve(project) as served:
        amy, dan = served.client(amy_tok), served.client(dan_tok)
        deploys = "/api/v1/environments/production/deployments"
        v1 = "/api/v1/environments/production/releases/v1/approvals"
        approve = {"decision": "approve", "comment": "dashboards fine"}

        # Refused: a viewer and a deployer (403, audited), a rejection without a comment or a
        # bad body (422), an unknown release or environment (404), nothing to withdraw (409).
        assert served.client(vic_tok).post(v1, json=approve).status_code == 403
        assert dan.post(v1, json=approve).status_code == 403
        assert dan.delete(f"{v1}/approve").status_code == 403
        r = amy.post(v1, json={"decision": "reject"})
        assert r.status_code == 422 and "comment" in r.json()["error"], r.text
        assert amy.post(v1, json={"decision": "maybe"}).status_code == 422
        assert amy.delete(f"{v1}/maybe").status_code == 422
        r = amy.post("/api/v1/environments/production/releases/v9/approvals", json=approve)
        assert r.status_code == 404 and "v9" in r.json()["error"], r.text
        assert amy.get("/api/v1/environments/nowhere/releases/v1/approvals").status_code == 404
        r = amy.delete(f"{v1}/approve")
        assert r.status_code == 409 and "no standing approval by amy" in r.json()["error"]

        # Approved before anyone asked, then withdrawn: the gate blocks again.
        r = amy.post(v1, json=approve)
        assert r.status_code == 201, r.text
        assert [(a["actor"], a["decision"]) for a in r.json()["approvals"]] == [("amy", "approve")]
        assert amy.get(v1).json()["approvals"][0]["withdrawn_at"] is None
        r = amy.delete(f"{v1}/approve")
        assert r.status_code == 200, r.text
        assert [a["actor"] for a in r.json()["withdrawn"]] == ["amy"]
        r = dan.post(deploys, json={"version": "v1"})
        assert r.status_code == 202 and r.json()["status"] == "waiting_for_approval", r.text
        waiting = r.json()["request_id"]
        # dan, an approver too, asked for it: no address lets him approve his own deploy.
        r = served.client(dan_approver_tok).post(v1, json=approve)
        assert r.status_code == 403 and "cannot approve" in r.json()["error"], r.text

        # The waiting deploy's approval withdrawn through its own address, then given again
        # through the CLI elsewhere (it finds the waiting deploy); dan's deploy then starts.
        assert amy.post(f"/api/v1/deployments/{waiting}/approvals", json=approve).status_code == 201
        r = amy.delete(f"/api/v1/deployments/{waiting}/approvals/approve")
        assert r.status_code == 200 and len(r.json()["withdrawn"]) == 1, r.text
        assert not next(g for g in r.json()["gates"] if g["gate"] == "approvals")["met"]
        with elsewhere(served, amy_tok) as remote:
            proc = remote.run("approve", "v1", "--env", "production", "--comment", "ok now")
            assert proc.returncode == 0, proc.stderr
        r = dan.post(deploys, json={"version": "v1"})
        assert r.status_code == 202 and r.json()["status"] == "started", r.text
        dep = r.json()["deployment_id"]
        wait_for(
            lambda: dan.get(f"/api/v1/deployments/{dep}").json()["outcome"] == "succeeded",
            what="v1 live in production",
        )

        # v2: approved from the CLI before any deploy, withdrawn from it, approved again: the
        # deployer's deploy passes the approvals gate at once.
        with elsewhere(served, amy_tok) as remote:
            code, out = remote.json("approve", "v2", "--env", "production")
            assert code == 0 and out["approvals"][-1]["actor"] == "amy", out
            code, out = remote.json("approve", "v2", "--env", "production", "--withdraw")
            assert code == 0 and [a["actor"] for a in out["withdrawn"]] == ["amy"], out
            proc = remote.run("approve", "v2", "--env", "production", "--withdraw")
            assert proc.returncode == 1 and "no standing approval by amy" in proc.stderr
            r = dan.post(deploys, json={"version": "v2"})
            assert r.json()["status"] == "waiting_for_approval", r.text
            # A rejection, by amy; ivy may not withdraw it, an admin may.
            proc = remote.run("reject", "v2", "--env", "production", "--comment", "no")
            assert proc.returncode == 0, proc.stderr
        assert served.client(vic_tok).get("/api/v1/approvals").json()["waiting"] == []
        v2 = "/api/v1/environments/production/releases/v2/approvals"
        r = served.client(ivy_tok).delete(f"{v2}/reject")
        assert r.status_code == 409, r.text
        with elsewhere(served, ann_tok) as admin:
            proc = admin.run("reject", "v2", "--env", "production", "--withdraw")
            assert proc.returncode == 0, proc.stderr
            assert "withdrawn: amy's rejection of v2 for production" in proc.stdout
        assert amy.post(v2, json=approve).status_code == 201
        r = dan.post(deploys, json={"version": "v2"})
        assert r.status_code == 202 and r.json()["status"] == "started", r.text

        entries = audit_entries(served, ann_tok, "production", "approve.withdraw")
        assert [(e["actor"], e["outcome"]) for e in reversed(entries)] == [
            ("dan", "refused"),  # a deployer
            ("amy", "refused"),  # nothing stood yet
            ("amy", "ok"),
            ("amy", "ok"),
            ("amy", "ok"),
            ("amy", "refused"),
        ]
        assert entries[-1]["data"]["via"]["status"] == 403
        via = entries[-2]["data"]["via"]
        assert (via["token"], via["role"], via["source"]) == (amy_id, "approver", "127.0.0.1")
        rejected = audit_entries(served, ann_tok, "production", "reject.withdraw")
        assert [(e["actor"], e["outcome"], e["detail"]) for e in reversed(rejected)] == [
            ("ivy", "refused", "nothing to withdraw"),
            ("ann", "ok", "amy's reject"),
        ]
        refused = {
            (e["actor"], e["action"])
            for e in audit_entries(served, ann_tok, "production", "approve")
            if e["outcome"] == "refused"
        }
        assert refused == {("vic", "approve"), ("dan", "approve")}  # the POSTs, dan's own
