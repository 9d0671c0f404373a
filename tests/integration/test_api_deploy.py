"""Deploying through the API with a real server, agent and proxy: 202 as soon as the agent names
the deployment, Idempotency-Key, 409 while one is active, the canary's weights (desired and
actual), promote, the live event stream with its replay and keep-alives, keyset pages."""

from __future__ import annotations

from typing import Any

import pytest
from apikit import Events, serve, token

from conftest import Project, wait_for

CANARY = """strategy = "canary"
bake = "0s"
steps = [{ weight = 30, pause = "manual" }, { weight = 100 }]
"""


@pytest.mark.both_databases
def test_deploy_idempotency_conflict_events_and_promote(project: Project) -> None:
    project.configure(rollout=CANARY)
    project.release("v1")
    project.release("v2")
    _, admin_tok = token(project, "ann", "admin")
    _, dan_tok = token(project, "dan", "deployer", "dev")
    with serve(project) as served:
        dan = served.client(dan_tok)
        stream = Events(served, admin_tok)
        assert stream.status == 200
        # The keep-alive comment arrives while nothing happens (every 0.3 s in this test).
        assert stream.comments.get(timeout=30) == ": keep-alive"

        first = {"version": "v1", "reason": "first"}
        key = {"Idempotency-Key": "deploy-v1-once"}
        r = dan.post("/api/v1/environments/dev/deployments", json=first, headers=key)
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "started"
        one = r.json()["deployment_id"]
        # The same key and body: the same answer, and no second deployment.
        again = dan.post("/api/v1/environments/dev/deployments", json=first, headers=key)
        assert (again.status_code, again.json()) == (202, r.json())
        other = dan.post(
            "/api/v1/environments/dev/deployments", json={"version": "v2"}, headers=key
        )
        assert other.status_code == 422 and "another request" in other.json()["error"]

        def outcome(dep: int) -> str:
            return str(dan.get(f"/api/v1/deployments/{dep}").json()["outcome"])

        wait_for(lambda: outcome(one) == "succeeded", what="v1 live")
        assert project.serving() == "v1"
        assert len(project.db("SELECT id FROM deployments")) == 1

        r = dan.post("/api/v1/environments/dev/deployments", json={"version": "v2"})
        assert r.status_code == 202, r.text
        two = r.json()["deployment_id"]

        def paused() -> dict[str, Any] | None:
            d = dan.get(f"/api/v1/deployments/{two}").json()
            traffic = d["traffic"]
            # The rollout's state moves first, the router's table right after it.
            actual = sorted((traffic["actual"].get("web") or {}).values())
            return (
                d
                if traffic["desired"] == 30 and traffic["waiting"] and actual == [30, 70]
                else None
            )

        detail = wait_for(paused, what="the canary paused at 30%, the router at 30/70")
        assert "manual pause" in detail["traffic"]["waiting"]
        assert detail["analysis"]["checks"][0]["metric"] == "error_rate"
        assert any(s["state"] == "step" for s in detail["steps"])

        # One deployment at a time: a second one is refused while v2 waits (and audited).
        r = dan.post("/api/v1/environments/dev/deployments", json={"version": "v1"})
        assert r.status_code == 409 and f"#{two}" in r.json()["error"]
        audit = served.client(admin_tok).get(
            "/api/v1/audit", params={"actor": "dan", "action": "deploy"}
        )
        refused = [e for e in audit.json()["entries"] if e["outcome"] == "refused"]
        assert refused and refused[0]["data"]["via"]["source"] == "127.0.0.1"

        # The step to 30% came on the stream as a traffic event of this deployment.
        seen = stream.until(lambda m: m["event"] == "traffic" and m["data"]["deployment"] == two)
        assert seen[-1]["data"]["state"] == "step" and "30%" in seen[-1]["data"]["reason"]
        assert int(seen[-1]["id"]) == seen[-1]["data"]["id"]

        r = dan.post(f"/api/v1/deployments/{two}/promote", json={"full": True})
        assert r.status_code == 200, r.text
        rest = stream.until(
            lambda m: m["data"].get("state") == "succeeded" and m["data"]["deployment"] == two
        )
        assert rest[-1]["event"] == "deployment"
        assert outcome(two) == "succeeded" and project.serving() == "v2"
        ids = [int(m["id"]) for m in seen + rest]
        assert ids == sorted(ids)

        # Reconnecting with Last-Event-ID gets what came after it, in order, nothing before.
        replay = Events(served, admin_tok, last=str(ids[0]))
        got = replay.until(lambda m: int(m["id"]) == ids[-1])
        assert [int(m["id"]) for m in got] == [i for i in range(ids[0] + 1, ids[-1] + 1)]
        replay.close()
        # The same as a query parameter (a browser's new EventSource cannot set the header).
        by_query = Events(served, admin_tok, path=f"/api/v1/events?last_event_id={ids[0]}")
        got = by_query.until(lambda m: int(m["id"]) == ids[-1])
        assert [int(m["id"]) for m in got] == [i for i in range(ids[0] + 1, ids[-1] + 1)]
        by_query.close()
        # A stream filtered on another environment gets nothing of dev's.
        stream.close()

        # Keyset pages, newest first.
        page = dan.get("/api/v1/environments/dev/deployments", params={"limit": 1}).json()
        assert [d["id"] for d in page["deployments"]] == [two]
        rest_page = dan.get(
            "/api/v1/environments/dev/deployments",
            params={"limit": 1, "cursor": page["next_cursor"]},
        ).json()
        assert [d["id"] for d in rest_page["deployments"]] == [one]
        assert rest_page["next_cursor"] is None

        # Roll back what is live now (v2): back to v1; the old deployment cannot be rolled back.
        assert dan.post(f"/api/v1/deployments/{one}/rollback").status_code == 409
        r = dan.post(f"/api/v1/deployments/{two}/rollback")
        assert r.status_code == 202, r.text
        wait_for(lambda: project.serving() == "v1", what="the rollback to v1")
        board = dan.get("/api/v1/dashboard").json()
        assert board["services"][0]["release"] == "v1"

        # Retry v2's deployment (a new one of the same release), then abort it at its pause.
        r = dan.post(f"/api/v1/deployments/{two}/retry")
        assert r.status_code == 202 and r.json()["version"] == "v2", r.text
        three = r.json()["deployment_id"]
        assert three > two
        wait_for(
            lambda: dan.get("/api/v1/dashboard").json()["environments"][0]["attention"]["paused"],
            what="the overview showing the retried canary paused",
        )
        assert dan.get(f"/api/v1/deployments/{three}").json()["traffic"]["desired"] == 30
        r = dan.post(f"/api/v1/deployments/{three}/abort", json={"reason": "checkout looks off"})
        assert r.status_code == 200, r.text
        wait_for(lambda: outcome(three) == "aborted", what="the abort")
        assert project.serving() == "v1"
        assert dan.post(f"/api/v1/deployments/{three}/abort").status_code == 409  # it is over
