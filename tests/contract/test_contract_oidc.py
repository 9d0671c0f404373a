"""Contract tests of the OIDC login (conveyor.auth.oidc_routes): no identity provider runs here,
so a small one on 127.0.0.1 stands in (oidc_standin.py: discovery, authorize, token with
client_secret_basic and PKCE S256, JWKS, RS256 ID tokens). The API runs for real (uvicorn on a
free port, the application `conveyor serve` runs, with the OIDC router mounted) and a browser's
redirects are followed by hand with httpx, cookies kept as a browser keeps them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
import uvicorn
from oidc_standin import CLIENT_ID, CLIENT_SECRET, StandIn, oidc_standin

from conveyor.api.app import create_app
from conveyor.api.state import Settings
from conveyor.auth import oidc_routes
from conveyor.ports import free_port
from conveyor.store import access as stored
from conveyor.store import audit
from conveyor.store.db import Store

pytestmark = pytest.mark.contract

CONFIG = """\
[app]
name = "shop"

[services.web]
command = "python app.py --port {{port}}"
port = {port}

[environments.dev]
[environments.dev.secrets]
providers = ["env"]

[environments.staging]

[access.oidc]
issuer = "{issuer}"
client_id = "{client_id}"
client_secret_secret = "OIDC_CLIENT_SECRET"
secret_environment = "dev"
groups = {{ "team-deploy" = "deployer:staging", "ops" = "admin", "readers" = "viewer" }}
"""


@dataclass
class Api:
    url: str
    home: Path

    def store(self) -> Store:
        return Store.open(f"sqlite:///{self.home / 'state.db'}")


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with oidc_standin() as provider:
        yield provider


@pytest.fixture
def api(standin: StandIn, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Api]:
    for key in ("CONVEYOR_HOME", "CONVEYOR_DATABASE_URL", "CONVEYOR_USER"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("OIDC_CLIENT_SECRET", CLIENT_SECRET)  # the `env` secret provider's
    (tmp_path / "conveyor.toml").write_text(
        CONFIG.format(port=free_port(), issuer=standin.url, client_id=CLIENT_ID)
    )
    app = create_app(Settings(project_dir=tmp_path))
    app.include_router(oidc_routes.router)
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the API did not start"
        time.sleep(0.02)
    try:
        yield Api(f"http://127.0.0.1:{port}", tmp_path / ".conveyor")
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def login(api: Api, browser: httpx.Client, next_path: str = "/") -> httpx.Response:
    """What a browser does: the login, the provider, the callback. The callback's answer."""
    start = browser.get(f"{api.url}/auth/oidc/login", params={"next": next_path})
    assert start.status_code == 303, start.text
    at_provider = browser.get(start.headers["location"])
    if at_provider.status_code != 302:
        return at_provider
    return browser.get(at_provider.headers["location"])


def refusal(answer: httpx.Response) -> str:
    """The reason a refused login sends the browser back to the login page with."""
    assert answer.status_code == 303, answer.text
    location = urlsplit(answer.headers["location"])
    assert location.path == "/login"
    return parse_qs(location.query)["error"][0]


def test_contract_oidc_login_with_pkce_starts_a_session_with_the_groups_roles(
    api: Api, standin: StandIn
) -> None:
    standin.user, standin.groups = "alice", ["team-deploy", "readers", "unmapped"]
    with httpx.Client(timeout=30) as browser:
        done = login(api, browser, "/deployments/7")
        assert done.status_code == 200, done.text
        assert "url=/deployments/7" in done.text  # onwards, from this site (SameSite=Strict)
        cookie = done.headers["set-cookie"]
        assert "conveyor_session=cvy_" in cookie and "HttpOnly" in cookie
        assert "SameSite=strict" in cookie or "samesite=strict" in cookie.lower()
        me = browser.get(f"{api.url}/api/v1/me").json()
        perms = browser.get(
            f"{api.url}/api/v1/me/permissions", params={"environment": "staging"}
        ).json()["permissions"]
        dev = browser.get(f"{api.url}/api/v1/me/permissions", params={"environment": "dev"}).json()[
            "permissions"
        ]
    assert (me["subject"], me["via"], me["scope"]) == ("alice", "session", None)
    assert perms["deploy"] and perms["read"] and not perms["approve"]
    assert dev["read"] and not dev["deploy"]
    # What the provider saw: PKCE with S256, a state and a nonce; the exchange passed its checks
    # (client secret, redirect_uri, verifier against the challenge).
    [asked] = standin.authorized
    assert asked["code_challenge_method"] == "S256" and len(asked["code_challenge"]) == 43
    assert asked["state"] and asked["nonce"] and asked["scope"] == "openid profile email"
    assert asked["redirect_uri"] == f"{api.url}/auth/oidc/callback"
    assert standin.exchanged == ["ok"]
    store = api.store()
    try:
        bindings = {(b.role, b.environment, b.created_by) for b in stored.list_bindings(store)}
        assert bindings == {
            ("deployer", "staging", "oidc:team-deploy"),
            ("viewer", None, "oidc:readers"),
        }
        actions = [(e.action, e.actor, e.outcome) for e in audit.entries(store, app="shop")]
        assert ("login", "alice", "ok") in actions
        assert actions.count(("access.grant", "oidc", "ok")) == 2
        logged = repr(audit.entries(store))
        assert CLIENT_SECRET not in logged and "cvy_" not in logged
    finally:
        store.close()


def test_contract_oidc_groups_are_read_again_at_each_login(api: Api, standin: StandIn) -> None:
    standin.groups = ["ops"]
    with httpx.Client(timeout=30) as browser:
        assert login(api, browser).status_code == 200
    standin.groups = ["readers"]
    with httpx.Client(timeout=30) as browser:
        assert login(api, browser).status_code == 200
        perms = browser.get(
            f"{api.url}/api/v1/me/permissions", params={"environment": "staging"}
        ).json()["permissions"]
    assert perms["read"] and not perms["deploy"] and not perms["environment.update"]
    store = api.store()
    try:
        assert [(b.role, b.environment) for b in stored.list_bindings(store, "alice")] == [
            ("viewer", None)
        ]
    finally:
        store.close()


@pytest.mark.parametrize(
    ("tamper", "says"),
    [
        ("nonce", "nonce is not this login's"),
        ("audience", "not for client 'conveyor'"),
        ("issuer", "issuer 'https://evil.example'"),
        ("signature", "signature does not verify"),
        ("expired", "ID token has expired"),
    ],
)
def test_contract_oidc_a_bad_id_token_is_refused_and_audited(
    api: Api, standin: StandIn, tamper: str, says: str
) -> None:
    standin.groups, standin.tamper = ["ops"], tamper
    with httpx.Client(timeout=30) as browser:
        assert says in refusal(login(api, browser))
        assert "conveyor_session" not in browser.cookies
        assert browser.get(f"{api.url}/api/v1/me").status_code == 401
    store = api.store()
    try:
        [refused] = audit.entries(store, app="shop", action="login")
        assert refused.outcome == "refused" and says in refused.detail
        assert stored.list_bindings(store) == [] and stored.list_tokens(store) == []
    finally:
        store.close()


def test_contract_oidc_refuses_a_callback_this_browser_did_not_start_or_a_replay(
    api: Api, standin: StandIn
) -> None:
    standin.groups = ["ops"]
    with httpx.Client(timeout=30) as victim, httpx.Client(timeout=30) as attacker:
        # The attacker starts a login and gets a code, then makes the victim's browser open it.
        start = attacker.get(f"{api.url}/auth/oidc/login")
        callback = attacker.get(start.headers["location"]).headers["location"]
        assert "not started in this browser" in refusal(victim.get(callback))
        assert "conveyor_session" not in victim.cookies
        # The attacker's own browser may finish it once; the same callback again is refused.
        assert attacker.get(callback).status_code == 200
        attacker.cookies.set("conveyor_oidc_state", parse_qs(urlsplit(callback).query)["state"][0])
        assert "used already" in refusal(attacker.get(callback))


def test_contract_oidc_a_user_whose_groups_give_no_role_is_refused(
    api: Api, standin: StandIn
) -> None:
    standin.user, standin.groups = "mallory", ["unmapped"]
    with httpx.Client(timeout=30) as browser:
        done = login(api, browser)
        assert done.status_code == 303
        assert (
            "mallory holds no role"
            in parse_qs(urlsplit(done.headers["location"]).query)["error"][0]
        )
    store = api.store()
    try:
        [refused] = audit.entries(store, app="shop", action="login")
        assert (refused.actor, refused.outcome) == ("mallory", "refused")
    finally:
        store.close()


def test_contract_oidc_login_without_configuration_is_404(api: Api, standin: StandIn) -> None:
    text = (api.home.parent / "conveyor.toml").read_text()
    (api.home.parent / "conveyor.toml").write_text(text.split("[access.oidc]")[0])
    with httpx.Client(timeout=30) as browser:
        answer = browser.get(f"{api.url}/auth/oidc/login")
    assert answer.status_code == 404 and "[access.oidc]" in answer.json()["error"]
