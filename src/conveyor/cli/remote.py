"""The CLI against a remote conveyor: `--server URL` (or CONVEYOR_SERVER) sends deploy, rollback,
promote, abort, status, history, approve, reject (and their --withdraw) and audit through its HTTP
API instead of a local agent. The token comes from CONVEYOR_TOKEN or from the file named by CONVEYOR_TOKEN_FILE
(mode 0600): never from the command line, where any user could read it in the process list.

`request()` answers like the agent's socket does (progress events, then a result dict), so the
commands print and exit exactly as they do locally. A deploy's progress is the server's event
stream for that deployment.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import stat
import threading
from pathlib import Path
from typing import Any

from conveyor.cli.output import fail

SERVER_VAR = "CONVEYOR_SERVER"
TOKEN_VAR = "CONVEYOR_TOKEN"
TOKEN_FILE_VAR = "CONVEYOR_TOKEN_FILE"
# The events that end a deployment (conveyor.core.rollout's outcomes).
ENDS = frozenset({"succeeded", "failed", "rolled_back", "aborted"})


def server() -> str | None:
    """The remote conveyor's URL, when one is set."""
    url = os.environ.get(SERVER_VAR, "").strip()
    return url or None


def token() -> str:
    """The API token: CONVEYOR_TOKEN, else the first line of CONVEYOR_TOKEN_FILE (which only
    its owner may read). Missing or unreadable: exit 2, saying how to give it."""
    value = os.environ.get(TOKEN_VAR, "").strip()
    if value:
        return value
    name = os.environ.get(TOKEN_FILE_VAR, "").strip()
    if not name:
        fail(
            f"--server needs a token: set {TOKEN_VAR}, or {TOKEN_FILE_VAR} to a file of mode "
            "0600 holding it (`conveyor tokens create` on the server makes one)"
        )
    path = Path(name).expanduser()
    try:
        mode = path.stat().st_mode
        text = path.read_text().strip()
    except OSError as exc:
        fail(f"cannot read {TOKEN_FILE_VAR} {path}: {exc.strerror or exc}")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        fail(f"{TOKEN_FILE_VAR} {path} is readable by others: `chmod 600 {path}`")
    if not text:
        fail(f"{TOKEN_FILE_VAR} {path} is empty")
    return text.splitlines()[0].strip()


class Remote:
    def __init__(self, url: str) -> None:
        import httpx

        self.url = url.rstrip("/")
        self._token = token()
        self.http = httpx.Client(
            base_url=f"{self.url}/api/v1",
            headers={"Authorization": f"Bearer {self._token}"},
            timeout=120.0,
        )

    def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any]:
        """(status, JSON body) of one request; the server unreachable: exit 1."""
        import httpx

        try:
            resp = self.http.request(method, path, **kw)
        except httpx.HTTPError as exc:
            fail(f"cannot reach the conveyor server {self.url}: {exc}", 1)
        try:
            body = resp.json()
        except ValueError:
            body = {"error": resp.text.strip() or resp.reason_phrase}
        if resp.status_code == 401:
            fail(f"the server refused the token: {body.get('error')}", 1)
        return resp.status_code, body

    def get(self, path: str, **params: Any) -> Any:
        status, body = self.call("GET", path, params=params)
        if status != 200:
            fail(str(body.get("error") or body), 2 if status in (404, 422) else 1)
        return body

    # --- what the agent's socket answers ------------------------------------------------------

    def request(self, req: dict[str, Any], on_progress: Any) -> dict[str, Any]:
        op, env = str(req["op"]), str(req["env"])
        if op == "deploy":
            return self._deploy(env, req, on_progress)
        if op == "rollback":
            return self._rollback(env, req, on_progress)
        if op in ("promote", "abort"):
            return self._act(op, env, req)
        if op == "status":
            live = self.get(f"/environments/{env}").get("live")
            if live is None:
                return _refused(f"the server could not reach its agent for {env}", 1)
            return {"ok": True, "exit": 0, "data": live}
        if op == "history":
            page = self.get(f"/environments/{env}/deployments", limit=int(req["limit"]))
            return {"ok": True, "exit": 0, "data": page}
        return _refused(f"{op} is not available with --server", 2)

    def _deploy(self, env: str, req: dict[str, Any], on_progress: Any) -> dict[str, Any]:
        body = {"version": req["version"], "force": bool(req.get("force"))}
        if req.get("reason"):
            body["reason"] = req["reason"]
        if req.get("override_freeze"):
            body["override_freeze"] = True
        # Listening before asking: no event of the new deployment can come before the stream.
        with Follow(self, env) as follow:
            status, answer = self.call("POST", f"/environments/{env}/deployments", json=body)
            if status != 202:
                return _answer_refused(status, answer)
            if answer.get("status") == "waiting_for_approval":
                return _refused(
                    f"{req['version']} waits for approval in {env} (request "
                    f"{answer['request_id']}): once an approver approved it (`conveyor approve "
                    f"{req['version']} --env {env}`), deploy it again",
                    1,
                )
            dep = int(answer["deployment_id"])
            on_progress(
                {
                    "step": "started",
                    "deployment": dep,
                    "message": f"deploying {req['version']} to {env} (deployment #{dep}) "
                    f"on {self.url}",
                }
            )
            follow.until_end(dep, on_progress)
        return self._ended(dep)

    def _ended(self, dep: int) -> dict[str, Any]:
        detail = self.get(f"/deployments/{dep}")
        ok = detail["outcome"] == "succeeded"
        data = {
            key: detail.get(key)
            for key in ("environment", "version", "previous_version", "outcome", "reason", "kind")
        }
        data["deployment"] = dep
        return {
            "ok": ok,
            "exit": 0 if ok else 1,
            "data": data,
            "error": None if ok else data["reason"],
        }

    def _latest(self, env: str) -> dict[str, Any] | None:
        page = self.get(f"/environments/{env}/deployments", limit=1)
        return page["deployments"][0] if page["deployments"] else None

    def _act(self, op: str, env: str, req: dict[str, Any]) -> dict[str, Any]:
        latest = self._latest(env)
        if latest is None or latest["outcome"] != "in_progress":
            return _refused(f"no deployment is in progress in {env}: nothing to {op}", 1)
        body = {"full": bool(req.get("full"))} if op == "promote" else {"reason": req["reason"]}
        status, answer = self.call("POST", f"/deployments/{latest['id']}/{op}", json=body)
        if status != 200:
            return _answer_refused(status, answer)
        return {"ok": True, "exit": 0, "data": answer.get("data") or {}}

    def _rollback(self, env: str, req: dict[str, Any], on_progress: Any) -> dict[str, Any]:
        detail = self.get(f"/environments/{env}")
        live = [
            i["deployment_id"]
            for s in detail["services"]
            for i in s["instances"]
            if i["role"] == "active" and i["deployment_id"] is not None
        ]
        if not live:
            return _refused(f"nothing runs in {env}: nothing to roll back", 1)
        body = {
            "keep_secrets": bool(req.get("keep_secrets")),
            "migrations": str(req.get("migrations") or "keep"),
            "force": bool(req.get("force")),
        }
        with Follow(self, env) as follow:
            status, answer = self.call("POST", f"/deployments/{max(live)}/rollback", json=body)
            if status != 202:
                return _answer_refused(status, answer)
            if answer.get("deployment_id") is None:
                return _refused("the server did not say which deployment rolled back", 1)
            dep = int(answer["deployment_id"])
            if answer.get("status") == "started":
                follow.until_end(dep, on_progress)
        return self._rolled_back(env, dep, body["migrations"] == "down")

    def _rolled_back(self, env: str, dep: int, down: bool) -> dict[str, Any]:
        """The rollback's result as the agent answered it: its audit entry, written once the
        request ended (after the migrations' Down sections, which run once the deployment
        itself has ended), with what it undid from the deployment's events. Should the entry
        not come (within an hour with Down sections, a minute without), the deployment's
        outcome, saying so."""
        import time

        deadline = time.monotonic() + (3600.0 if down else 60.0)
        ended = self._ended(dep)
        while True:
            page = self.get("/audit", environment=env, action="rollback", limit=20)
            entry = next(
                (e for e in page["entries"] if (e.get("data") or {}).get("deployment") == dep),
                None,
            )
            if entry is not None:
                break
            if time.monotonic() > deadline:
                ended["data"]["reason"] += (
                    f"; the agent's answer is not in the audit log yet (`conveyor --server "
                    f"{self.url} audit --env {env}` shows it once written)"
                )
                return ended
            time.sleep(0.5)  # the request is still running (its Down sections, most likely)
        ended = self._ended(dep)
        code = int(entry["data"].get("exit") or 0)
        data = {**ended["data"], "reason": entry["detail"]}
        undone = [
            e for e in self.get(f"/deployments/{dep}")["events"] if e["state"] == "migrated_down"
        ]
        if undone and "migrations" in (undone[-1].get("data") or {}):
            data["migrations_down"] = undone[-1]["data"]["migrations"]
        return {
            "ok": code == 0,
            "exit": code,
            "data": data,
            "error": None if code == 0 else entry["detail"],
        }

    # --- approvals and the audit log ------------------------------------------------------------

    def decide(self, version: str, env: str, decision: str, comment: str) -> dict[str, Any]:
        """Approve or reject `version` for `env`: the deploy waiting for it when there is one
        (its requester may not approve it), else the release itself, as `conveyor approve`
        does locally. Returns the server's answer (the approvals as they stand)."""
        ref = next(
            (
                w["id"]
                for w in self.get("/approvals")["waiting"]
                if w["environment"] == env and w["version"] == version
            ),
            None,
        )
        path = (
            f"/deployments/{ref}/approvals"
            if ref is not None
            else f"/environments/{env}/releases/{version}/approvals"
        )
        status, answer = self.call("POST", path, json={"decision": decision, "comment": comment})
        if status != 201:
            fail(str(answer.get("error") or answer), 2 if status in (404, 422) else 1)
        return dict(answer)

    def withdraw(self, version: str, env: str, decision: str) -> dict[str, Any]:
        """Withdraw one's own approval or rejection of `version` for `env` (an admin token:
        everyone's). Nothing to withdraw: exit 1, as locally."""
        status, answer = self.call(
            "DELETE", f"/environments/{env}/releases/{version}/approvals/{decision}"
        )
        if status != 200:
            fail(str(answer.get("error") or answer), 2 if status in (404, 422) else 1)
        return dict(answer)


def _refused(error: str, code: int) -> dict[str, Any]:
    return {"ok": False, "exit": code, "error": error, "data": {}}


def _answer_refused(status: int, answer: dict[str, Any]) -> dict[str, Any]:
    result = _refused(str(answer.get("error") or answer), 2 if status in (404, 422) else 1)
    if answer.get("lock"):
        result["lock"] = answer["lock"]
    return result


class Follow:
    """The server's event stream of one environment, read in a thread into a queue."""

    def __init__(self, remote: Remote, env: str) -> None:
        self.remote = remote
        self.env = env
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self._stop = threading.Event()
        self._open = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def __enter__(self) -> Follow:
        self._thread.start()
        self._open.wait(30)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    def _read(self) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {self.remote._token}"}
        try:
            with (
                httpx.Client(base_url=self.remote.url, headers=headers, timeout=None) as client,
                client.stream("GET", "/api/v1/events", params={"environment": self.env}) as resp,
            ):
                self._open.set()
                data = ""
                for line in resp.iter_lines():
                    if self._stop.is_set():
                        return
                    if line.startswith("data: "):
                        data = line[6:]
                    elif line == "" and data:
                        with contextlib.suppress(ValueError):
                            self.events.put(json.loads(data))
                        data = ""
        except httpx.HTTPError:
            pass  # until_end falls back on asking for the deployment
        finally:
            self._open.set()

    def until_end(self, dep: int, on_progress: Any) -> None:
        """Feed the deployment's events to `on_progress` until it ends (its outcome is also
        checked every 2 s, should the stream break)."""
        while True:
            try:
                event = self.events.get(timeout=2.0)
            except queue.Empty:
                if self.remote.get(f"/deployments/{dep}")["outcome"] != "in_progress":
                    return
                continue
            if event.get("deployment") != dep:
                continue
            state = str(event.get("state") or "")
            on_progress({"step": state, "message": event.get("reason") or state})
            if state in ENDS:
                return
