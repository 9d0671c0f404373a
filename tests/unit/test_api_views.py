"""The API's read models (conveyor.api.views) on a real SQLite state store: the overview's
needs-attention flags, keyset pages of deployments and of the audit log."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from conveyor.api import views
from conveyor.config import Config, load_config
from conveyor.store import audit
from conveyor.store import requests as waiting_requests
from conveyor.store.db import InstanceRecord, Store

CONFIG = """
[app]
name = "shop"

[services.web]
command = "python app.py --port {port}"
port = 18080

[services.jobs]
kind = "worker"
command = "python worker.py"

[environments.dev]
[environments.staging]
[environments.production]
[environments.qa]
"""

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def setup(tmp_path: Path) -> tuple[Store, Config]:
    (tmp_path / "conveyor.toml").write_text(CONFIG)
    return Store.open(f"sqlite:///{tmp_path}/state.db"), load_config(tmp_path / "conveyor.toml")


def live(store: Store, env: str, version: str, dep: int) -> None:
    for service in ("web", "jobs"):
        store.upsert_instance(
            InstanceRecord(
                "shop",
                env,
                service,
                "blue",
                version,
                "sha256:0",
                "active",
                "local",
                {},
                NOW,
                None,
                dep,
            )
        )


def test_overview_flags_each_kind_of_attention(tmp_path: Path) -> None:
    store, cfg = setup(tmp_path)
    try:
        # dev: v1 live, then v2 paused at a canary step.
        one = store.create_deployment("shop", "dev", "v1", "deploy", None, NOW)
        store.finish_deployment(one, "succeeded", "live", NOW)
        live(store, "dev", "v1", one)
        two = store.create_deployment("shop", "dev", "v2", "deploy", "v1", NOW)
        store.add_event(two, "step", "step 1/2: 30% of traffic", {}, NOW)
        store.add_event(two, "paused", "manual pause: conveyor promote", {}, NOW)
        # staging: the newest deployment failed its analysis and rolled back.
        three = store.create_deployment("shop", "staging", "v2", "deploy", "v1", NOW)
        store.finish_deployment(three, "rolled_back", "error rate 12% > 1%", NOW)
        # production: a deploy waiting for approval; qa: a crash loop.
        waiting_requests.add(store, "shop", "production", "v2", "dan", None, "", NOW)
        four = store.create_deployment("shop", "qa", "v1", "crash_loop", None, NOW)
        store.add_event(four, "crash_loop", "web exited 5 times in 1m", {}, NOW)

        board = views.dashboard(store, cfg)
        flags = {e["name"]: e["attention"] for e in board["environments"]}
        raised = {env: sorted(k for k, v in f.items() if v) for env, f in flags.items()}
        assert raised == {
            "dev": ["paused"],
            "staging": ["rolled_back"],
            "production": ["waiting_for_approval"],
            "qa": ["degraded"],
        }
        cells = {(r["environment"], r["service"]): r for r in board["services"]}
        assert len(cells) == 8
        assert cells[("dev", "web")]["state"] == "deploying"
        assert cells[("dev", "web")]["release"] == "v1"
        assert cells[("dev", "jobs")]["since"] == NOW.isoformat()
        assert cells[("production", "web")]["state"] == "not deployed"
        assert [w["version"] for w in board["waiting"]] == ["v2"]
    finally:
        store.close()


def test_keyset_pages_of_deployments_and_audit_entries(tmp_path: Path) -> None:
    store, _ = setup(tmp_path)
    try:
        ids = [
            store.create_deployment("shop", "dev", f"v{n}", "deploy", None, NOW) for n in range(7)
        ]
        store.create_deployment("shop", "staging", "v0", "deploy", None, NOW)
        seen: list[int] = []
        cursor = None
        while True:
            page = views.deployments_page(store, "shop", "dev", cursor, 3)
            seen += [d["id"] for d in page["deployments"]]
            if page["next_cursor"] is None:
                break
            cursor = int(page["next_cursor"])
        assert seen == sorted(ids, reverse=True)

        for n in range(5):
            audit.record(
                store,
                at=NOW + timedelta(minutes=n),
                actor="ann" if n % 2 else "bob",
                action="deploy",
                app="shop",
                environment="dev",
                target=f"v{n}",
                outcome="ok",
            )
        first = views.audit_page(store, actor="bob", limit=2)
        assert [e["target"] for e in first["entries"]] == ["v4", "v2"]
        rest = views.audit_page(store, actor="bob", limit=2, cursor=int(first["next_cursor"]))
        assert [e["target"] for e in rest["entries"]] == ["v0"] and rest["next_cursor"] is None
        since = views.audit_page(store, since=NOW + timedelta(minutes=3))
        assert [e["target"] for e in since["entries"]] == ["v4", "v3"]
        exported = [e["target"] for batch in views.audit_batches(store, batch=2) for e in batch]
        assert exported == ["v0", "v1", "v2", "v3", "v4"]
    finally:
        store.close()
