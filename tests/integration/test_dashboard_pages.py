"""The dashboard's pages over the real application and a real project database, without a
browser (the browser tests are test_dashboard_browser.py): who is sent to the login page, what a
refused page says, which buttons each role gets, escaping, the audit filters, the tokens page."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from apikit import store_of, token
from fastapi.testclient import TestClient

from conftest import Project, temp_project
from conveyor.api.app import create_app
from conveyor.api.state import Settings
from conveyor.store import audit
from conveyor.store.db import ReleaseRecord

HOSTILE = '<script>alert("x")</script>'


@pytest.fixture(scope="module")
def site() -> Iterator[tuple[Project, TestClient, dict[str, str]]]:
    """A project with two environments, two deployments written by the store (no agent: these
    pages only read), and a token per role."""
    with temp_project() as project:
        project.configure(extra='[environments.staging]\nafter = "dev"\n')
        store = store_of(project)
        now = datetime.now(UTC)
        for version in ("v1", "v2"):
            store.add_release(ReleaseRecord("shop", version, None, f"sha256:{version}", 1, now))
        first = store.create_deployment("shop", "dev", "v1", "deploy", None, now)
        store.finish_deployment(first, "succeeded", "all services live", now)
        second = store.create_deployment("shop", "dev", "v2", "deploy", "v1", now, reason=HOSTILE)
        store.finish_deployment(second, "failed", HOSTILE, now)
        audit.record(
            store,
            at=now,
            actor="ann",
            action="deploy",
            app="shop",
            environment="dev",
            target="v2",
            outcome="ok",
            detail=HOSTILE,
            data={},
        )
        store.close()
        tokens = {
            "admin": token(project, "ann", "admin")[1],
            "deployer": token(project, "dee", "deployer", "dev")[1],
            "viewer": token(project, "vic", "viewer")[1],
        }
        app = create_app(Settings(project_dir=project.dir))
        with TestClient(app, base_url="http://127.0.0.1") as client:
            yield project, client, tokens


def get(site: Any, path: str, role: str | None) -> Any:
    _, client, tokens = site
    headers = {"Authorization": f"Bearer {tokens[role]}"} if role else {}
    return client.get(path, headers=headers, follow_redirects=False)


def test_without_credentials_every_page_sends_to_the_login_page(site: Any) -> None:
    for path in ("/", "/deployments/1", "/approvals", "/environments/dev", "/audit", "/tokens"):
        resp = get(site, path, None)
        assert resp.status_code == 303, path
        assert resp.headers["location"].startswith("/login?next="), path
    login = get(site, "/login?next=//evil.example/&error=token%20expired", None)
    assert login.status_code == 200
    assert 'name="next" value="/"' in login.text  # no open redirect
    assert "token expired" in login.text
    assert 'action="/login"' in login.text
    # Logging in goes on to the page asked for, never off this server.
    _, client, tokens = site
    for target, lands in (
        ("/approvals", "/approvals"),
        ("//evil.example/", "/"),
        ("https://x/", "/"),
    ):
        resp = client.post(
            "/login", data={"token": tokens["viewer"], "next": target}, follow_redirects=False
        )
        assert (resp.status_code, resp.headers["location"]) == (303, lands), target
        client.cookies.clear()


def test_buttons_follow_the_role(site: Any) -> None:
    admin = get(site, "/deployments/2", "admin").text
    assert 'data-action="retry"' in admin
    deployer = get(site, "/deployments/2", "deployer").text
    assert 'data-action="retry"' in deployer
    viewer = get(site, "/deployments/2", "viewer").text
    assert "data-action" not in viewer
    assert 'id="no-actions"' in viewer and "retry needs the deployer role on dev" in viewer
    # The environment page's deploy form and roll-back buttons: deployers only.
    assert 'id="deploy-form"' in get(site, "/environments/dev", "deployer").text
    assert 'id="deploy-form"' not in get(site, "/environments/dev", "viewer").text


def test_a_page_the_role_does_not_reach_says_which_role_is_needed(site: Any) -> None:
    resp = get(site, "/environments/staging", "deployer")  # the token is for dev only
    assert resp.status_code == 403
    assert "read needs the" in resp.text and "staging" in resp.text
    assert "conveyor access grant dee" in resp.text


def test_everything_shown_is_escaped(site: Any) -> None:
    for path in ("/deployments/2", "/environments/dev", "/audit"):
        body = get(site, path, "admin").text
        assert HOSTILE not in body, path
        assert "&lt;script&gt;" in body, path


def test_the_overview_lists_environments_and_the_needs_attention_filter(site: Any) -> None:
    body = get(site, "/", "viewer").text
    assert re.search(r'<th scope="col"><a href="/environments/dev">dev</a></th>', body)
    assert 'data-service="web"' in body
    assert 'data-events="/api/v1/events"' in body  # live
    quiet = get(site, "/?attention=1", "viewer").text
    assert "Nothing needs attention." in quiet


def test_audit_filters_and_export_link(site: Any) -> None:
    body = get(site, "/audit?actor=ann&action=deploy", "admin").text
    assert "<td>ann</td><td>deploy</td>" in body
    assert 'href="/api/v1/audit/export?actor=ann&amp;action=deploy"' in body
    assert "/api/v1/audit/export" not in get(site, "/audit", "viewer").text  # admins export
    bad = get(site, "/audit?since=yesterday", "admin")
    assert bad.status_code == 200 and "is not an ISO time" in bad.text


def test_the_tokens_page_lists_only_ones_own(site: Any) -> None:
    body = get(site, "/tokens", "viewer").text
    assert body.count("<tr data-token=") == 1
    assert "cvy_" not in body  # never a secret
    assert 'hx-post="/api/v1/tokens"' in body
