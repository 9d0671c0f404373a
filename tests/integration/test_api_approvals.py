"""Approvals through the API: a deploy refused only for missing approvals waits in the inbox and
on the dashboard; its requester cannot approve it; another approver's approval (on the event
stream too) lets the deploy through; a rejection needs a comment."""

from __future__ import annotations

from typing import Any

import pytest
from apikit import Events, serve, token

from conftest import Project, wait_for
from conveyor.runtimes.local import free_port

PRODUCTION = """
[environments.production]
approvals = 1

[environments.production.services.web]
port = {port}
"""


@pytest.mark.both_databases
def test_waiting_deploy_self_approval_refused_then_approved(project: Project) -> None:
    project.configure(extra=PRODUCTION.format(port=free_port()))
    project.release("v1")
    _, admin_tok = token(project, "ann", "admin")
    _, dan_tok = token(project, "dan", "deployer", "production")
    _, dan_approver_tok = token(project, "dan", "approver", "production")  # not his own deploy
    _, amy_tok = token(project, "amy", "approver", "production")
    _, vic_tok = token(project, "vic", "viewer")
    with serve(project) as served:
        dan, amy = served.client(dan_tok), served.client(amy_tok)
        key = {"Idempotency-Key": "ci-prod-v1"}
        url = "/api/v1/environments/production/deployments"
        r = dan.post(url, json={"version": "v1"}, headers=key)
        assert r.status_code == 202, r.text
        waiting = r.json()
        assert waiting["status"] == "waiting_for_approval" and waiting["deployment_id"] is None
        ref = waiting["request_id"]
        assert [g["gate"] for g in waiting["gates"] if not g["met"]] == ["approvals"]
        assert project.db("SELECT id FROM deployments") == []  # nothing started

        viewer = served.client(vic_tok)
        board = viewer.get("/api/v1/dashboard").json()
        prod = next(e for e in board["environments"] if e["name"] == "production")
        assert prod["attention"]["waiting_for_approval"] and prod["needs_attention"]
        inbox = viewer.get("/api/v1/approvals").json()["waiting"]
        assert [(w["id"], w["version"], w["requested_by"]) for w in inbox] == [(ref, "v1", "dan")]
        assert viewer.get(f"/api/v1/deployments/{ref}").json()["state"] == "waiting"

        # The viewer may not approve; the requester may not approve his own deploy.
        approve = {"decision": "approve", "comment": "looks good"}
        assert viewer.post(f"/api/v1/deployments/{ref}/approvals", json=approve).status_code == 403
        dan_approver = served.client(dan_approver_tok)
        r = dan_approver.post(f"/api/v1/deployments/{ref}/approvals", json=approve)
        assert r.status_code == 403 and "cannot approve" in r.json()["error"]
        r = amy.post(f"/api/v1/deployments/{ref}/approvals", json={"decision": "reject"})
        assert r.status_code == 422 and "comment" in r.json()["error"]

        stream = Events(served, admin_tok, "/api/v1/events?environment=production")
        assert stream.comments.get(timeout=30) == ": keep-alive"  # connected, and listening
        r = amy.post(f"/api/v1/deployments/{ref}/approvals", json=approve)
        assert r.status_code == 201, r.text
        assert [(a["actor"], a["decision"]) for a in r.json()["approvals"]] == [("amy", "approve")]
        assert r.json()["gates"][0]["met"] is True
        got = stream.until(lambda m: m["event"] == "approval")
        assert got[-1]["data"]["actor"] == "amy" and got[-1]["data"]["version"] == "v1"
        stream.close()

        # The same job retried with the same key: now it starts (a wait is not remembered).
        r = dan.post(url, json={"version": "v1"}, headers=key)
        assert r.status_code == 202 and r.json()["status"] == "started", r.text
        dep = r.json()["deployment_id"]
        wait_for(
            lambda: dan.get(f"/api/v1/deployments/{dep}").json()["outcome"] == "succeeded",
            what="v1 live in production",
        )
        assert viewer.get("/api/v1/approvals").json()["waiting"] == []
        assert viewer.get(f"/api/v1/deployments/{ref}").json()["deployment_id"] == dep

        admin = served.client(admin_tok)

        def audited() -> tuple[list[dict[str, Any]], set[tuple[str, str, str]]] | None:
            entries = admin.get("/api/v1/audit", params={"environment": "production"}).json()
            found = {(e["actor"], e["action"], e["outcome"]) for e in entries["entries"]}
            # The agent writes its entry once the deploy's answer is out.
            return (entries["entries"], found) if ("dan", "deploy", "ok") in found else None

        listed, found = wait_for(audited, what="the audit entry of the deploy")
        assert ("dan", "approve", "refused") in found  # the self-approval
        assert ("vic", "approve", "refused") in found  # the viewer
        assert ("amy", "approve", "ok") in found
        assert ("dan", "deploy", "refused") in found  # the first try, by the agent's gates
        export = admin.get("/api/v1/audit/export", params={"environment": "production"})
        assert export.headers["content-type"].startswith("application/x-ndjson")
        lines = export.text.splitlines()
        assert len(lines) == len(listed)
        assert served.client(dan_tok).get("/api/v1/audit/export").status_code == 403
