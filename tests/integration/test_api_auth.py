"""The API's access control through a real `conveyor serve`: each role against each action,
a token narrowed to one environment, expired, revoked and disarmed tokens, the browser session
with its CSRF token, the audit entries of refusals, and the OpenAPI document."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from apikit import Events, serve, store_of, token
from openapi_spec_validator import validate

from conftest import Project, wait_for
from conveyor.auth.service import AuditContext, create_token, ungrant
from conveyor.core.access import Role
from conveyor.runtimes.local import free_port

STAGING = """
[environments.staging]

[environments.staging.services.web]
port = {port}
"""


def refused_entries(admin: httpx.Client, **query: str) -> list[dict[str, Any]]:
    page = admin.get("/api/v1/audit", params={"limit": "200", **query})
    assert page.status_code == 200, page.text
    return [e for e in page.json()["entries"] if e["outcome"] == "refused"]


def test_roles_environments_and_tokens(project: Project) -> None:
    project.configure(extra=STAGING.format(port=free_port()))
    project.release("v1")
    _, admin_tok = token(project, "ann", "admin")
    _, viewer_tok = token(project, "vic", "viewer")
    dep_id, deployer_tok = token(project, "dan", "deployer", "staging")
    _, approver_tok = token(project, "amy", "approver")
    with serve(project) as served:
        admin, viewer = served.client(admin_tok), served.client(viewer_tok)
        deployer, approver = served.client(deployer_tok), served.client(approver_tok)

        # Everyone may read what their role covers.
        for c in (admin, viewer, approver):
            assert c.get("/api/v1/dashboard").status_code == 200
            assert c.get("/api/v1/environments/dev").status_code == 200
        releases = viewer.get("/api/v1/releases").json()
        assert [r["version"] for r in releases] == ["v1"] and releases[0]["live_in"] == []
        v1 = viewer.get("/api/v1/releases/v1").json()
        assert v1["digest"].startswith("sha256-") and v1["approvals"] == []
        assert viewer.get("/api/v1/releases/v9").status_code == 404
        perms = deployer.get("/api/v1/me/permissions", params={"environment": "staging"}).json()
        assert perms["permissions"]["deploy"] and not perms["permissions"]["approve"]
        perms = deployer.get("/api/v1/me/permissions", params={"environment": "dev"}).json()
        assert not any(perms["permissions"].values())
        # The staging-only token sees staging, not dev.
        assert [e["name"] for e in deployer.get("/api/v1/environments").json()] == ["staging"]
        body = deployer.get("/api/v1/environments/dev")
        assert body.status_code == 403 and "read" in body.json()["error"]

        # A viewer deploys nothing; the refusal says which role would.
        r = viewer.post("/api/v1/environments/staging/deployments", json={"version": "v1"})
        assert r.status_code == 403
        assert r.json()["error"] == (
            "deploy needs the deployer role on staging; vic does not hold it"
        )
        # An approver approves, but does not deploy.
        r = approver.post("/api/v1/environments/staging/deployments", json={"version": "v1"})
        assert r.status_code == 403
        # The deployer's staging token deploys to staging, not to dev.
        r = deployer.post("/api/v1/environments/dev/deployments", json={"version": "v1"})
        assert r.status_code == 403
        r = deployer.post("/api/v1/environments/staging/deployments", json={"version": "v1"})
        assert r.status_code == 202, r.text
        started = r.json()["deployment_id"]
        assert deployer.get(f"/api/v1/deployments/{started}").status_code == 200
        # Only an admin changes an environment (here: its lock).
        lock = {"locked": True, "reason": "maintenance"}
        assert deployer.patch("/api/v1/environments/staging", json=lock).status_code == 403
        r = admin.patch("/api/v1/environments/dev", json=lock)
        assert r.status_code == 200 and r.json()["lock"]["holder"] == "ann"
        r = admin.post("/api/v1/environments/dev/deployments", json={"version": "v1"})
        assert r.status_code == 409 and "locked" in r.json()["error"]
        assert admin.patch("/api/v1/environments/dev", json={"locked": False}).status_code == 200

        # A token never gives more than the credentials making it.
        r = viewer.post("/api/v1/tokens", json={"role": "deployer"})
        assert r.status_code == 403
        r = viewer.post("/api/v1/tokens", json={"role": "viewer", "description": "ci"})
        assert r.status_code == 201 and r.json()["token"].startswith("cvy_")
        made = r.json()["record"]["id"]
        assert [t["id"] for t in viewer.get("/api/v1/tokens").json()["tokens"]].count(made) == 1
        assert viewer.get("/api/v1/tokens", params={"all": "true"}).status_code == 403
        assert len(admin.get("/api/v1/tokens", params={"all": "true"}).json()["tokens"]) >= 5
        # Nobody revokes someone else's token but an admin.
        assert viewer.delete(f"/api/v1/tokens/{dep_id}").status_code == 403

        # Every refusal is in the audit log: actor, token, source, why.
        refused = refused_entries(admin, actor="vic")
        deploy = next(e for e in refused if e["action"] == "deploy")
        assert deploy["environment"] == "staging"
        assert deploy["data"]["via"]["source"] == "127.0.0.1"
        assert deploy["data"]["via"]["token"] is not None
        assert deploy["detail"].startswith("deploy needs the deployer role")

        # And the deploy that ran names the API facts in the agent's own entry (written when
        # the deploy ends).
        def deployed() -> list[dict[str, Any]]:
            ran = admin.get("/api/v1/audit", params={"actor": "dan", "action": "deploy"}).json()
            return [e for e in ran["entries"] if e["outcome"] == "ok"]

        ok = wait_for(deployed, what="the audit entry of dan's deploy")
        assert ok[0]["data"]["via"]["role"] == "deployer"
        assert ok[0]["data"]["via"]["token"] == dep_id


def test_bad_expired_revoked_and_disarmed_tokens_are_refused(project: Project) -> None:
    project.configure()
    _, admin_tok = token(project, "ann", "admin")
    _, dan_tok = token(project, "dan", "deployer")
    # A token that expired an hour ago (made two days back, for one day).
    store = store_of(project)
    try:
        rec, old_tok = create_token(
            store,
            "dan",
            Role.deployer,
            None,
            timedelta(days=1),
            "old",
            "dan",
            datetime.now(UTC) - timedelta(days=2),
            [],
            local=True,
            ctx=AuditContext("shop"),
        )
    finally:
        store.close()
    with serve(project) as served:
        anonymous = served.client()
        r = anonymous.get("/api/v1/me")
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert "no credentials" in r.json()["error"]
        assert served.client("cvy_nope").get("/api/v1/me").status_code == 401
        forged = dan_tok[:-4] + ("AAAA" if not dan_tok.endswith("AAAA") else "BBBB")
        r = served.client(forged).get("/api/v1/me")
        assert r.status_code == 401 and "wrong secret" in r.json()["error"]
        r = served.client(old_tok).get("/api/v1/me")
        assert r.status_code == 401 and "expired" in r.json()["error"]

        dan = served.client(dan_tok)
        assert dan.get("/api/v1/me").json()["subject"] == "dan"
        # The owner's role taken back: the token is refused at once (its own role is gone).
        store = store_of(project)
        try:
            ungrant(
                store,
                "dan",
                Role.deployer,
                None,
                "ann",
                datetime.now(UTC),
                ctx=AuditContext("shop"),
            )
        finally:
            store.close()
        r = dan.post("/api/v1/environments/dev/deployments", json={"version": "v1"})
        assert r.status_code == 403 and "this token is limited" not in r.json()["error"]
        # Revoked by its owner: unknown from then on, and its open event stream ends.
        stream = Events(served, dan_tok)
        assert stream.status == 200
        assert stream.comments.get(timeout=30) == ": keep-alive"
        mine = dan.get("/api/v1/me").json()["token_id"]
        assert dan.delete(f"/api/v1/tokens/{mine}").status_code == 200
        r = dan.get("/api/v1/me")
        assert r.status_code == 401 and "revoked" in r.json()["error"]
        stream.thread.join(timeout=30)
        assert not stream.thread.is_alive()
        stream.close()

        admin = served.client(admin_tok)
        refused = refused_entries(admin, action="authenticate")
        assert {e["actor"] for e in refused} == {"anonymous"}
        assert any(e["data"]["via"]["token"] == rec.id for e in refused)  # the expired one's id
        assert all("secret" not in str(e["data"]).lower() for e in refused)


def test_browser_session_needs_the_csrf_token_to_write(project: Project) -> None:
    project.configure()
    _, admin_tok = token(project, "ann", "admin")
    with serve(project) as served:
        browser = served.client(follow_redirects=False)
        r = browser.post("/login", data={"token": "cvy_wrong_x"})
        assert r.status_code == 303 and r.headers["location"].startswith("/login?error=")
        r = browser.post("/login", data={"token": admin_tok})
        assert r.status_code == 303 and r.headers["location"] == "/"
        cookie = r.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "secure" not in cookie
        me = browser.get("/api/v1/me").json()
        assert me["via"] == "session" and len(me["csrf"]) == 64
        lock = {"locked": True, "reason": "from the browser"}
        r = browser.patch("/api/v1/environments/dev", json=lock)
        assert r.status_code == 403 and "X-CSRF-Token" in r.json()["error"]
        r = browser.patch(
            "/api/v1/environments/dev", json=lock, headers={"X-CSRF-Token": me["csrf"]}
        )
        assert r.status_code == 200, r.text
        r = browser.post("/logout")
        assert r.status_code == 303
        assert browser.get("/api/v1/me").status_code == 401
        # The token posted to the form was an API token: it still works where it is used.
        admin = served.client(admin_tok)
        assert admin.get("/api/v1/me").status_code == 200
        entries = admin.get("/api/v1/audit", params={"actor": "ann"}).json()["entries"]
        actions = [(e["action"], e["outcome"]) for e in reversed(entries)]
        assert actions[-4:] == [
            ("login", "ok"),
            ("csrf", "refused"),
            ("lock", "ok"),
            ("logout", "ok"),
        ]


def test_openapi_document_is_valid_and_lists_every_endpoint(project: Project) -> None:
    project.configure()
    with serve(project) as served:
        doc = served.client().get("/api/v1/openapi.json").json()
    validate(doc)
    paths = set(doc["paths"])
    for path in (
        "/api/v1/me",
        "/api/v1/me/permissions",
        "/api/v1/dashboard",
        "/api/v1/environments",
        "/api/v1/environments/{env}",
        "/api/v1/releases",
        "/api/v1/releases/{version}",
        "/api/v1/environments/{env}/deployments",
        "/api/v1/deployments/{ref}",
        "/api/v1/deployments/{ref}/promote",
        "/api/v1/deployments/{ref}/abort",
        "/api/v1/deployments/{ref}/rollback",
        "/api/v1/deployments/{ref}/retry",
        "/api/v1/deployments/{ref}/approvals",
        "/api/v1/approvals",
        "/api/v1/audit",
        "/api/v1/audit/export",
        "/api/v1/tokens",
        "/api/v1/tokens/{token_id}",
        "/api/v1/events",
    ):
        assert path in paths, path
    assert set(doc["paths"]["/api/v1/environments/{env}"]) == {"get", "patch"}
    dashboard = doc["paths"]["/api/v1/dashboard"]["get"]["responses"]["200"]
    assert dashboard["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Dashboard"
    }
