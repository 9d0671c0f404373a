"""The dashboard end to end: real headless Chromium, the real server on 127.0.0.1, a real agent
and real canary deploys of the demo app.

One project and one server for the module (starting them is the slow part); each test signs in
its own fresh browser as the user it needs:
- ann: admin (the first admin; she deploys),
- bob: approver on every environment,
- vic: viewer.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browserkit import attribute, binaries, chromium, click, present, text_of, type_into, wait

from conftest import Project, temp_project, wait_for
from conveyor.runtimes.local import free_port

CANARY = """strategy = "canary"
bake = "0s"
steps = [{ weight = 30, pause = "manual" }, { weight = 60, pause = "manual" }, { weight = 100 }]
"""
STAGING = """
[environments.staging]
approvals = 1
[environments.staging.services.web]
port = {port}
"""
SERVER = Path(__file__).with_name("dashboard_server.py")


class Dashboard:
    """The project, its server, and a token per user."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.tokens: dict[str, str] = {}
        self.proc: subprocess.Popen[bytes] | None = None

    def token(self, user: str, role: str) -> str:
        """A token of `user` with `role` (granted first), made by ann on the machine itself."""
        if user != "ann":
            grant = self.project.cli("access", "grant", user, role)
            assert grant.returncode == 0, grant.stderr
        made = self.project.cli("tokens", "create", "--role", role, "--user", user, "--json")
        assert made.returncode == 0, made.stderr
        self.tokens[user] = json.loads(made.stdout)["token"]
        return self.tokens[user]

    def start(self) -> None:
        log = (self.project.dir / "serve.log").open("wb")
        pythonpath = os.pathsep.join(
            filter(None, [str(SERVER.parent), os.environ.get("PYTHONPATH")])
        )
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER), str(self.port)],
            env={**self.project.env, "PYTHONPATH": pythonpath},
            cwd=self.project.dir,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_for(lambda: self._get("/__test/streams") is not None, 60, "the server to answer")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def _get(self, path: str) -> Any:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError((self.project.dir / "serve.log").read_text()[-3000:])
        with contextlib.suppress(OSError):
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
            try:
                conn.request("GET", path)
                resp = conn.getresponse()
                return json.loads(resp.read()) if resp.status == 200 else None
            finally:
                conn.close()
        return None

    def open_streams(self) -> int:
        return int(self._get("/__test/streams")["open"])

    def sign_in(self, driver: Any, user: str, then: str = "/") -> None:
        """Through the login page, as a person does: paste the token, submit; then open `then`."""
        from selenium.webdriver.common.by import By

        driver.get(f"{self.url}{then}")
        wait(driver, lambda d: "/login" in d.current_url, "the redirect to the login page")
        field = driver.find_element(By.ID, "token")
        field.send_keys(self.tokens[user])
        field.submit()
        wait(driver, lambda d: "/login" not in d.current_url, f"{user} to be signed in")
        if not driver.current_url.endswith(then):
            driver.get(f"{self.url}{then}")
        wait(driver, lambda d: user in text_of(d, "header .who"), f"the page for {user}")


@pytest.fixture(scope="module")
def dash() -> Iterator[Dashboard]:
    binaries()  # no Chromium: skip (fail under CI) before setting anything up
    with temp_project() as project:
        project.configure(rollout=CANARY, extra=STAGING.format(port=free_port()))
        project.release("v1")
        project.release("v2")
        project.env["CONVEYOR_USER"] = "ann"  # the CLI acts as ann, the first admin
        board = Dashboard(project)
        board.token("ann", "admin")
        board.token("bob", "approver")
        board.token("vic", "viewer")
        code, out = project.deploy("v1")
        assert code == 0, out
        board.start()
        try:
            yield board
        finally:
            board.stop()


def status(project: Project) -> dict[str, Any] | None:
    code, out = project.json("status", "--env", "dev")
    assert code == 0, out
    return out.get("deployment")  # type: ignore[no-any-return]


def background(project: Project, *args: str) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.update(res=project.json(*args)), daemon=True)
    thread.start()
    return thread, box


def weight(driver: Any, which: str) -> str:
    return attribute(driver, f".traffic[data-which={which}]", "data-new-weight")


def test_a_canary_rollout_is_seen_live_and_promoted_from_the_page(dash: Dashboard) -> None:
    project = dash.project
    thread, box = background(project, "deploy", "v2", "--env", "dev")
    dep = wait_for(
        lambda: (d := status(project)) and "manual pause" in d["waiting"] and d,
        what="the canary's manual pause at 30%",
    )
    with chromium() as driver:
        dash.sign_in(driver, "ann", then=f"/deployments/{dep['id']}")
        wait(driver, lambda d: weight(d, "desired") == "30", "the traffic bar at 30%")
        # A marker the page keeps only as long as it is not reloaded.
        driver.execute_script("window.conveyorTestMarker = 'same page'")
        wait(
            driver,
            lambda d: d.execute_script("return document.body.dataset.live") == "open",
            "the event stream to be open",
        )

        # The engine moves traffic (promoted from the CLI): the bar follows without a reload.
        assert project.cli("promote", "--env", "dev").returncode == 0
        wait(driver, lambda d: weight(d, "desired") == "60", "the traffic bar at 60%")
        wait(driver, lambda d: weight(d, "actual") == "60", "the actual weight at 60%")
        assert driver.execute_script("return window.conveyorTestMarker") == "same page"

        # Promoted from the page: the button asks first, then the rollout ends at 100%.
        click(driver, "button[data-action=promote]")
        confirm(driver)
        wait(driver, lambda d: text_of(d, "#outcome") == "succeeded", "the deployment to succeed")
        assert weight(driver, "desired") == "100"
        assert driver.execute_script("return window.conveyorTestMarker") == "same page"
    thread.join(120)
    assert box["res"][0] == 0, box


def forced_post(driver: Any, path: str, body: dict[str, Any]) -> tuple[int, str]:
    """The request a button would make (session cookie, CSRF token), made by hand in the page."""
    status, text = driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const headers = JSON.parse(document.body.getAttribute("hx-headers") || "{}");
        headers["Content-Type"] = "application/json";
        fetch(arguments[0], {method: "POST", headers: headers, body: JSON.stringify(arguments[1])})
          .then(r => r.text().then(t => done([r.status, t])));
        """,
        path,
        body,
    )
    return int(status), str(text)


def confirm(driver: Any) -> None:
    """Accept the confirmation every action asks for."""
    wait(driver, _accept_alert, "the confirmation dialog")


def _accept_alert(driver: Any) -> bool:
    from selenium.common.exceptions import NoAlertPresentException

    try:
        driver.switch_to.alert.accept()
    except NoAlertPresentException:
        return False
    return True


def test_a_viewer_sees_no_buttons_and_a_forced_post_is_refused_and_audited(
    dash: Dashboard,
) -> None:
    project = dash.project
    dep_id = project.db("SELECT max(id) FROM deployments WHERE environment = 'dev'")[0][0]
    with chromium() as driver:
        dash.sign_in(driver, "vic", then=f"/deployments/{dep_id}")
        wait(driver, lambda d: present(d, "#no-actions"), "the page without actions")
        assert not present(driver, "[data-action]")
        assert "vic" in text_of(driver, "header .who")
        # Forced: the same request a button would make, with the session's CSRF token.
        status, text = forced_post(driver, f"/api/v1/deployments/{dep_id}/rollback", {})
        assert status == 403, text
        assert "deployer" in json.loads(text)["error"], text
    refused = project.db(
        "SELECT actor, action, outcome FROM audit_log WHERE actor = 'vic' AND outcome = 'refused'"
    )
    assert refused and refused[-1][0] == "vic", refused


def test_the_event_stream_is_closed_while_the_tab_is_hidden(dash: Dashboard) -> None:
    with chromium() as driver:
        dash.sign_in(driver, "vic", then="/")
        wait(driver, lambda d: dash.open_streams() == 1, "the overview's stream to open")
        page = driver.current_window_handle
        driver.switch_to.new_window("tab")  # the overview's tab is hidden now
        wait(driver, lambda d: dash.open_streams() == 0, "the server to see the stream closed")
        driver.switch_to.window(page)  # visible again: the stream reopens
        wait(driver, lambda d: dash.open_streams() == 1, "the stream to reopen")
        assert driver.execute_script("return document.visibilityState") == "visible"


def test_an_approver_approves_a_waiting_deploy_and_the_deployers_own_approval_is_refused(
    dash: Dashboard,
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    project = dash.project
    with chromium() as ann, chromium() as bob:
        # ann asks for v2 in staging: approvals are missing, so it waits in the inbox.
        dash.sign_in(ann, "ann", then="/environments/staging")
        Select(ann.find_element(By.ID, "deploy-version")).select_by_visible_text("v2")
        click(ann, "#deploy-form button[type=submit]")
        confirm(ann)
        wait(ann, lambda d: "waiting for approval" in text_of(d, "#flash"), "the deploy to wait")
        ref = text_of(ann, "#flash").split("(")[1].rstrip(")")
        assert ref.startswith("r"), ref

        # Her own approval: no button for her, and the API refuses it when forced.
        ann.get(f"{dash.url}/approvals")
        wait(ann, lambda d: present(d, f"tr[data-request={ref}]"), "the request in the inbox")
        row = f"tr[data-request={ref}]"
        assert "you asked for this deploy" in text_of(ann, f"{row} .why-not")
        assert not present(ann, f"{row} button[value=approve]")
        status, text = forced_post(
            ann, f"/api/v1/deployments/{ref}/approvals", {"decision": "approve"}
        )
        assert status == 403, text

        # bob approves with a comment; ann's inbox (left open) shows it met, live.
        dash.sign_in(bob, "bob", then="/approvals")
        type_into(bob, f"{row} input[name=comment]", "looks good")
        click(bob, f"{row} button[value=approve]")
        confirm(bob)
        met = f"{row} li[data-gate=approvals][data-met=true]"
        wait(bob, lambda d: present(d, met), "bob's page to show the approval met")
        wait(ann, lambda d: present(d, met), "ann's page to show it live")
        assert "looks good" in text_of(ann, f"{row} .approvals")

        # Now deployable: ann deploys it from the inbox.
        click(ann, f"{row} button[data-action=deploy]")
        confirm(ann)
        wait(ann, lambda d: "started" in text_of(d, "#flash"), "the deploy to start")
    started = wait_for(
        lambda: project.db("SELECT version FROM deployments WHERE environment = 'staging'"),
        what="the staging deployment",
    )
    assert started == [("v2",)]
    decided = project.db(
        "SELECT actor, decision, comment FROM approvals WHERE environment = 'staging'"
    )
    assert decided == [("bob", "approve", "looks good")], decided


def test_a_token_made_in_the_page_shows_its_secret_once_and_can_be_revoked(
    dash: Dashboard,
) -> None:
    with chromium() as driver:
        dash.sign_in(driver, "vic", then="/tokens")
        before = driver.execute_script("return document.querySelectorAll('tr[data-token]').length")
        type_into(driver, "form[data-action='tokens.create'] input[name=description]", "laptop")
        click(driver, "form[data-action='tokens.create'] button[type=submit]")
        wait(driver, lambda d: text_of(d, "#new-secret code").startswith("cvy_"), "the secret")
        secret = text_of(driver, "#new-secret code")
        wait(
            driver,
            lambda d: (
                d.execute_script("return document.querySelectorAll('tr[data-token]').length")
                == before + 1
            ),
            "the new token in the list",
        )
        token_id = secret.split("_")[1]
        row = f"tr[data-token='{token_id}']"
        assert "laptop" in text_of(driver, row)
        driver.refresh()  # shown once: never again, not even to its owner
        wait(driver, lambda d: present(d, row), "the list after a reload")
        assert secret not in driver.page_source
        click(driver, f"{row} button[data-action='tokens.revoke']")
        confirm(driver)
        wait(driver, lambda d: "revoked" in text_of(d, row), "the token revoked")
    stored = dash.project.db(f"SELECT revoked_by FROM api_tokens WHERE id = '{token_id}'")
    assert stored == [("vic",)], stored
