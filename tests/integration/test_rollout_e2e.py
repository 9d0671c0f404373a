"""Analysis, automatic rollback, canary, hooks and notifications, end to end through the CLI."""

from __future__ import annotations

import contextlib
import http.client
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import PID, Project, alive, proc, switched_back_by_itself, unavailable, wait_for
from conveyor.loadgen import LoadGenerator
from conveyor.runtimes.local import free_port

ERROR_RATE = """bake = "6s"
[[rollout.analysis]]
metric = "error_rate"
max = 0.01
interval = "200ms"
window = "2s"
min_requests = 20
failure_limit = 2
"""

LATENCY = """bake = "6s"
[[rollout.analysis]]
metric = "latency_p99_ms"
max = 200
interval = "300ms"
window = "3s"
min_requests = 10
failure_limit = 2
"""


def load(project: Project, connections: int = 4) -> LoadGenerator:
    gen = LoadGenerator("127.0.0.1", project.port, connections=connections, max_seconds=90)
    return gen.start()


def background_deploy(project: Project, version: str) -> tuple[threading.Thread, dict[str, Any]]:
    box: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: box.update(res=project.deploy(version)), daemon=True)
    thread.start()
    return thread, box


def deployment(project: Project) -> dict[str, Any] | None:
    code, status = project.json("status", "--env", "dev")
    assert code == 0, status
    return status.get("deployment")  # type: ignore[no-any-return]


def reach(project: Project, phase: str) -> dict[str, Any]:
    """Wait until the deployment in progress is in `phase` (the state a test acts on)."""
    return wait_for(  # type: ignore[no-any-return]
        lambda: (d := deployment(project)) and d["phase"] == phase and d,
        what=f"the deployment to reach {phase}",
    )


def health_script(project: Project, version: str) -> Path:
    """The file the demo app of `version` reads its /healthz answers from, while it exists."""
    return project.dir / f"{version}.health"


def set_health(script: Path, statuses: str) -> None:
    """Flip the app's health from outside: all at once, so the app never reads half a file."""
    tmp = script.with_suffix(".tmp")
    tmp.write_text(statuses)
    os.replace(tmp, script)


def pid_of(project: Project, version: str) -> int:
    rows = project.db(
        f"SELECT {PID} FROM instances WHERE version = '{version}' AND service = 'web'"
    )
    assert len(rows) == 1 and rows[0][0], rows
    return int(rows[0][0])


def health_answers(project: Project, version: str) -> dict[str, int]:
    """How the app of `version` answered its health checks so far, by HTTP status."""
    where = f"FROM instances WHERE version = '{version}'"
    port = project.db(f"SELECT json_extract(handle, '$.endpoints[0].port') {where}")[0][0]
    return json.loads(project.get("/version", port=port)[1])["health"]  # type: ignore[no-any-return]


def test_a_release_with_too_many_errors_is_rolled_back_automatically(project: Project) -> None:
    project.configure(rollout=ERROR_RATE)
    project.release("v1")
    project.release("v2", error_rate=0.2)
    assert project.deploy("v1")[0] == 0
    gen = load(project)
    try:
        wait_for(lambda: gen.snapshot()[0] > 50, what="traffic")
        code, out = project.deploy("v2")
        assert code == 1, out
        assert out["outcome"] == "rolled_back"
        assert out["reason"].startswith("analysis failed: error_rate: ")
        assert "> 1%" in out["reason"]
        failed = [m for m in out["measurements"] if m["verdict"] == "fail"]
        assert failed and failed[0]["value"] > 0.01
        wait_for(lambda: project.serving() == "v1", what="v1 serving")
    finally:
        gen.stop()
    assert project.db("SELECT version, role FROM instances") == [("v1", "active")]
    code, hist = project.history("dev")
    assert hist[0]["outcome"] == "rolled_back" and "error_rate" in hist[0]["reason"]
    assert any(m["verdict"] == "fail" for m in hist[0]["measurements"])
    assert hist[0]["strategy"] == "bluegreen"
    assert hist[0]["trigger"]["check"] == "error_rate" and hist[0]["trigger"]["value"] > 0.01
    code, status = project.json("status", "--env", "dev")
    last = status["last_deployment"]
    assert (last["version"], last["outcome"]) == ("v2", "rolled_back")
    text = project.cli("status", "--env", "dev").stdout
    assert "last deployment" in text and "rolled_back" in text
    events = [e["state"] for e in hist[0]["events"]]
    assert "measurement" in events and "switched_back" in events


def test_a_release_that_is_slower_at_p99_is_rolled_back(project: Project) -> None:
    project.configure(rollout=LATENCY)
    project.release("v1")
    project.release("v2", latency_ms=300)
    assert project.deploy("v1")[0] == 0
    gen = load(project, connections=8)
    try:
        wait_for(lambda: gen.snapshot()[0] > 50, what="traffic")
        code, out = project.deploy("v2")
    finally:
        gen.stop()
    assert code == 1, out
    assert out["outcome"] == "rolled_back"
    assert "latency_p99_ms" in out["reason"] and "> 200" in out["reason"]
    assert project.serving() == "v1"


def test_failing_health_checks_during_the_bake_roll_back(project: Project) -> None:
    project.configure(rollout='bake = "120s"\non_inconclusive = "wait"')
    script = health_script(project, "v2")
    project.release("v1")
    project.release("v2", health_script=str(script))
    assert project.deploy("v1")[0] == 0
    thread, box = background_deploy(project, "v2")
    reach(project, "baking")
    set_health(script, "503")
    thread.join(240)
    code, out = box["res"]
    assert code == 1, out
    assert out["outcome"] == "rolled_back"
    assert "web (green) failed 3 health checks in a row (last: HTTP 503)" in out["reason"]
    assert project.serving() == "v1"


def test_failing_during_the_standby_window_switches_back_by_itself(project: Project) -> None:
    project.configure(rollout='bake = "500ms"\non_inconclusive = "pass"')
    script = health_script(project, "v2")
    project.release("v1")
    project.release("v2", health_script=str(script))
    assert project.deploy("v1")[0] == 0
    code, out = project.deploy("v2")
    assert code == 0, out  # healthy through the bake
    assert project.serving() == "v2"
    set_health(script, "503")
    hist = switched_back_by_itself(project)
    assert "during the standby window" in hist[1]["reason"]
    assert "automatic rollback" in hist[0]["reason"]


def test_inconclusive_analysis_follows_on_inconclusive(project: Project) -> None:
    rollout = ERROR_RATE.replace('bake = "6s"', 'bake = "1s"\non_inconclusive = "fail"')
    project.configure(rollout=rollout)
    text = (project.dir / "conveyor.toml").read_text()
    project.release("v1")
    project.release("v2")
    assert project.deploy("v1")[0] == 0
    code, out = project.deploy("v2")  # no traffic at all
    assert code == 1 and out["outcome"] == "rolled_back", out
    assert "analysis inconclusive: error_rate" in out["reason"]
    assert project.serving() == "v1"

    # With `wait`, the deployment waits for data and says so, until someone promotes it.
    (project.dir / "conveyor.toml").write_text(text.replace('"fail"', '"wait"'))
    project.release("v3")
    thread, box = background_deploy(project, "v3")
    dep = wait_for(
        lambda: (d := deployment(project)) and "waiting for traffic" in d["waiting"] and d,
        what="waiting on inconclusive analysis",
    )
    assert dep["phase"] == "baking"
    assert any(m["verdict"] == "inconclusive" for m in dep["measurements"])
    promote = project.cli("promote", "--env", "dev")
    assert promote.returncode == 0, promote.stderr
    thread.join(240)
    assert box["res"][0] == 0 and box["res"][1]["outcome"] == "succeeded"
    assert project.serving() == "v3"


CANARY = """strategy = "canary"
bake = "0s"
steps = [{ weight = 30, pause = "manual" }, { weight = 100 }]
"""


def fresh_requests(port: int, n: int) -> dict[str, int]:
    seen: dict[str, int] = {}
    for _ in range(n):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
        version = resp.getheader("X-Demo-Version") or ""
        seen[version] = seen.get(version, 0) + 1
        conn.close()
    return seen


def test_canary_splits_by_weight_sticks_and_promotes(project: Project) -> None:
    project.configure(rollout=CANARY)
    project.release("v1")
    project.release("v2")
    assert project.deploy("v1")[0] == 0
    thread, box = background_deploy(project, "v2")
    dep = wait_for(
        lambda: (d := deployment(project)) and "manual pause" in d["waiting"] and d,
        what="the manual pause at 30%",
    )
    assert dep["strategy"] == "canary" and dep["weight"] == 30 and dep["step"] == 1
    seen = fresh_requests(project.port, 400)
    assert 80 <= seen.get("v2", 0) <= 160, seen  # 30% ± 10 points (4 standard deviations)

    # A client that got the canary keeps it (cookie), one that got stable keeps stable.
    for version in ("v2", "v1"):
        cookie = ""
        for _ in range(50):
            conn = http.client.HTTPConnection("127.0.0.1", project.port, timeout=5)
            conn.request("GET", "/")
            resp = conn.getresponse()
            resp.read()
            if resp.getheader("X-Demo-Version") == version:
                cookie = (resp.getheader("Set-Cookie") or "").split(";")[0]
                break
        assert cookie.startswith("conveyor_canary="), cookie
        for _ in range(30):
            conn = http.client.HTTPConnection("127.0.0.1", project.port, timeout=5)
            conn.request("GET", "/", headers={"Cookie": cookie})
            resp = conn.getresponse()
            resp.read()
            assert resp.getheader("X-Demo-Version") == version

    assert project.cli("promote", "--env", "dev").returncode == 0
    thread.join(240)
    assert box["res"][0] == 0, box
    assert fresh_requests(project.port, 50) == {"v2": 50}


def test_canary_abort_sends_everything_back_to_stable(project: Project) -> None:
    project.configure(rollout=CANARY)
    project.release("v1")
    project.release("v2")
    assert project.deploy("v1")[0] == 0
    thread, box = background_deploy(project, "v2")
    wait_for(
        lambda: (d := deployment(project)) and d["weight"] == 30 and d,
        what="the canary at 30%",
    )
    proc = project.cli("abort", "--env", "dev", "--reason", "checkout looks off")
    assert proc.returncode == 0, proc.stderr
    thread.join(240)
    code, out = box["res"]
    assert code == 1 and out["outcome"] == "aborted"
    assert "checkout looks off" in out["reason"]
    assert fresh_requests(project.port, 30) == {"v1": 30}
    assert project.db("SELECT version, role FROM instances") == [("v1", "active")]
    assert project.cli("promote", "--env", "dev").returncode == 1  # nothing in progress


def test_a_failing_smoke_test_stops_the_deploy_before_any_traffic(project: Project) -> None:
    (project.dir / "smoke.py").write_text(
        "import os, sys, urllib.request\n"
        "body = urllib.request.urlopen(os.environ['CONVEYOR_URL'] + '/').read().decode()\n"
        "print('smoke saw', body.strip(), 'for', os.environ['CONVEYOR_VERSION'])\n"
        "sys.exit(0 if 'v2' in body else 3)\n"
    )
    project.configure(extra="")
    text = (project.dir / "conveyor.toml").read_text()
    text += f'\n[hooks]\nsmoke = "{sys.executable} smoke.py"\n'
    (project.dir / "conveyor.toml").write_text(text)
    project.release("v1")  # smoke passes only for v2... and v1 is a first deploy: it runs too
    code, out = project.deploy("v1")
    assert code == 1 and out["reason"].startswith("smoke test failed: exited with code 3"), out
    assert project.db("SELECT count(*) FROM instances") == [(0,)]
    with pytest.raises(OSError):
        project.get()  # nothing was ever routed
    project.release("v2")
    code, out = project.deploy("v2")
    assert code == 0, out
    log = (project.home / "logs" / "dev" / "deployments" / f"{out['deployment']}.log").read_text()
    assert "[smoke] smoke saw hello from v2 for v2" in log


class Receiver(http.server.BaseHTTPRequestHandler):
    bodies: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.bodies.append(json.loads(body))  # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[int, list[dict[str, Any]]]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    server.bodies = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], server.bodies  # type: ignore[attr-defined]
    finally:
        server.shutdown()


def test_webhooks_see_every_event_once(
    project: Project, receiver: tuple[int, list[dict[str, Any]]]
) -> None:
    port, bodies = receiver
    project.configure(rollout='bake = "0s"')
    text = (project.dir / "conveyor.toml").read_text()
    text += f'\n[[notifications]]\nurl = "http://127.0.0.1:{port}/hook"\n'
    (project.dir / "conveyor.toml").write_text(text)
    project.release("v1")
    project.release("v2")
    project.release("bad", healthy=False)
    assert project.deploy("v1")[0] == 0
    assert project.deploy("v2")[0] == 0
    code, out = project.json("deploy", "bad", "--env", "dev")
    assert code == 1
    wait_for(lambda: len(bodies) >= 8, what="all notifications")
    seen = [(b["version"], b["event"]) for b in bodies]
    assert seen == [
        ("v1", "started"),
        ("v1", "switched"),
        ("v1", "succeeded"),
        ("v2", "started"),
        ("v2", "switched"),
        ("v2", "succeeded"),
        ("bad", "started"),
        ("bad", "failed"),
    ]
    assert bodies[4]["previous_version"] == "v1" and bodies[4]["app"] == "shop"
    assert bodies[7]["deployment"] == out["deployment"] and "not healthy" in bodies[7]["reason"]


PROMETHEUS = Path("/usr/bin/prometheus")
PROM_CONFIG = """global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: conveyor
    static_configs:
      - targets: ["127.0.0.1:{port}"]
"""
PROM_CHECK = """bake = "20s"
[[rollout.analysis]]
metric = "prometheus"
url = "http://127.0.0.1:{prom}"
query = 'sum(rate(conveyor_proxy_responses_total{{version="{{version}}",code="5xx"}}[5s])) / sum(rate(conveyor_proxy_requests_total{{version="{{version}}"}}[5s]))'
max = 0.01
interval = "1s"
failure_limit = 2
"""


@pytest.fixture
def prometheus_for_agent() -> Iterator[tuple[int, int]]:
    if not PROMETHEUS.exists():
        unavailable(f"{PROMETHEUS} is missing (apt-get install prometheus)")
    workdir = Path(tempfile.mkdtemp(prefix="cvprom", dir="/tmp"))
    admin, prom = free_port(), free_port()
    (workdir / "prometheus.yml").write_text(PROM_CONFIG.format(port=admin))
    with open(workdir / "prometheus.log", "ab") as log:
        proc = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{prom}",
                "--log.level=warn",
            ],
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    try:
        yield admin, prom
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(15)
                break
        shutil.rmtree(workdir, ignore_errors=True)


def test_a_prometheus_check_against_a_real_prometheus_rolls_back(
    project: Project, prometheus_for_agent: tuple[int, int]
) -> None:
    admin, prom = prometheus_for_agent
    project.configure(rollout=PROM_CHECK.format(prom=prom))
    text = (project.dir / "conveyor.toml").read_text()
    (project.dir / "conveyor.toml").write_text(text + f"\n[agent]\nadmin_port = {admin}\n")
    project.release("v1")
    project.release("v2", error_rate=0.25)
    assert project.deploy("v1")[0] == 0
    gen = load(project)
    try:
        wait_for(lambda: gen.snapshot()[0] > 50, what="traffic")
        code, out = project.deploy("v2")
    finally:
        gen.stop()
    assert code == 1, out
    assert out["outcome"] == "rolled_back"
    assert out["reason"].startswith("analysis failed: prometheus")
    failed = [m for m in out["measurements"] if m["verdict"] == "fail"]
    assert failed and 0.1 < failed[0]["value"] < 0.4, failed
    assert project.serving() == "v1"


def test_manual_gate_serves_the_new_version_on_a_preview_port_until_promoted(
    project: Project,
) -> None:
    preview = free_port()
    project.configure(rollout='bake = "0s"\nauto_promote = false')
    text = (project.dir / "conveyor.toml").read_text()
    text = text.replace('stop_timeout = "3s"', f'stop_timeout = "3s"\npreview_port = {preview}')
    (project.dir / "conveyor.toml").write_text(text)
    project.release("v1")
    project.release("v2")
    assert project.deploy("v1")[0] == 0  # a first deployment has nothing to compare: no gate
    thread, box = background_deploy(project, "v2")
    dep = wait_for(
        lambda: (d := deployment(project)) and d["phase"] == "awaiting_promotion" and d,
        what="the manual gate",
    )
    assert dep["previews"] == {"web": f"http://127.0.0.1:{preview}"}
    assert project.get(port=preview)[2] == "v2"
    assert project.serving() == "v1"
    assert project.cli("promote", "--env", "dev").returncode == 0
    thread.join(240)
    assert box["res"][0] == 0, box
    assert project.serving() == "v2"
    with pytest.raises(OSError):
        project.get(port=preview)  # the preview listener is gone


HOOK = """import json, os, sys
with open(os.path.join(sys.argv[1], "calls.jsonl"), "a") as f:
    f.write(json.dumps({k: os.environ.get(k) for k in (
        "CONVEYOR_HOOK", "CONVEYOR_VERSION", "CONVEYOR_ENV", "CONVEYOR_URL", "CONVEYOR_PREVIOUS_VERSION",
        "OPERATOR_TOKEN",
    )}) + "\\n")
# argv: the directory to record calls in, then optionally a hook name and the code it exits with
sys.exit(int(sys.argv[3]) if sys.argv[2:] and sys.argv[2] == os.environ["CONVEYOR_HOOK"] else 0)
"""


def hook_config(project: Project, hooks: tuple[str, ...], fail: str = "") -> None:
    (project.dir / "hook.py").write_text(HOOK)
    text = (project.dir / "conveyor.toml").read_text()
    args = f"{project.dir} {fail}".strip()
    text += "\n[hooks]\n" + "".join(f'{h} = "{sys.executable} hook.py {args}"\n' for h in hooks)
    (project.dir / "conveyor.toml").write_text(text)


def calls(project: Project) -> list[dict[str, str]]:
    path = project.dir / "calls.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_hooks_run_in_order_with_the_release_environment(project: Project) -> None:
    # Exported by whoever started the agent: must not reach hooks or services.
    project.env["OPERATOR_TOKEN"] = "do-not-leak"
    project.configure(rollout='bake = "1s"\non_inconclusive = "pass"')
    hook_config(project, ("pre_deploy", "smoke", "post_switch", "post_deploy", "on_rollback"))
    project.release("v1")
    project.release("v2")
    script = health_script(project, "v3")
    project.release("v3", health_script=str(script))
    assert project.deploy("v1")[0] == 0
    assert project.deploy("v2")[0] == 0
    seen = [(c["CONVEYOR_HOOK"], c["CONVEYOR_VERSION"]) for c in calls(project)]
    assert seen[-4:] == [
        ("pre_deploy", "v2"),
        ("smoke", "v2"),
        ("post_switch", "v2"),
        ("post_deploy", "v2"),
    ]
    smoke = [c for c in calls(project) if c["CONVEYOR_HOOK"] == "smoke"][-1]
    assert smoke["CONVEYOR_ENV"] == "dev" and smoke["CONVEYOR_PREVIOUS_VERSION"] == "v1"
    assert all(c["OPERATOR_TOKEN"] is None for c in calls(project))
    assert smoke["CONVEYOR_URL"].startswith("http://127.0.0.1:")
    assert not smoke["CONVEYOR_URL"].endswith(
        f":{project.port}"
    )  # the new color, not the public port

    # A long bake, and v3's health checks fail once it has begun.
    text = (project.dir / "conveyor.toml").read_text()
    (project.dir / "conveyor.toml").write_text(
        text.replace('bake = "1s"\non_inconclusive = "pass"', 'bake = "120s"')
    )
    thread, box = background_deploy(project, "v3")
    reach(project, "baking")
    set_health(script, "503")
    thread.join(240)
    code, out = box["res"]
    assert code == 1 and out["outcome"] == "rolled_back", out
    assert [c["CONVEYOR_HOOK"] for c in calls(project)][-4:] == [
        "pre_deploy",
        "smoke",
        "post_switch",
        "on_rollback",
    ]


def test_a_failing_pre_deploy_hook_starts_nothing(project: Project) -> None:
    project.configure()
    hook_config(project, ("pre_deploy",), fail="pre_deploy 4")
    project.release("v1")
    code, out = project.deploy("v1")
    assert code == 1 and out["outcome"] == "failed"
    assert out["reason"] == "pre_deploy hook failed: exited with code 4"
    assert project.db("SELECT count(*) FROM instances") == [(0,)]


@pytest.mark.parametrize(
    ("rollout", "where", "behaviour"),
    [
        ('bake = "0s"', "starting", {"healthy": False}),
        ('bake = "60s"\non_inconclusive = "wait"', "baking", {}),
        (CANARY, "step", {}),
    ],
    ids=["before-traffic", "during-bake", "canary-step"],
)
def test_a_deployment_interrupted_by_an_agent_crash_ends_on_the_old_version(
    project: Project, rollout: str, where: str, behaviour: dict[str, Any]
) -> None:
    project.configure(rollout=rollout, start_timeout="60s")
    project.release("v1")
    project.release("v2", **behaviour)
    assert project.deploy("v1")[0] == 0
    thread, _box = background_deploy(project, "v2")
    wait_for(
        lambda: (d := deployment(project)) and d["phase"] == where and d,
        what=f"the deployment to reach {where}",
    )
    new_pid = project.db(f"SELECT {PID} FROM instances WHERE version = 'v2'")[0][0]
    new = proc(new_pid)
    os.kill(project.pid("agent") or 0, signal.SIGKILL)
    thread.join(240)
    assert project.cli("agent", "start").returncode == 0
    wait_for(lambda: not alive(new), what="the interrupted version to stop")
    assert fresh_requests(project.port, 20) == {"v1": 20}
    code, hist = project.history("dev")
    assert code == 0
    v2 = next(d for d in hist if d["version"] == "v2")
    assert v2["outcome"] == "aborted"
    assert v2["reason"] == "interrupted: the agent stopped during the deployment"


# --- the rules that decide a rollback, each once end to end (unit level: test_rollout_rules.py) ---


@pytest.mark.parametrize(
    ("rollout", "phase"),
    [('bake = "120s"\non_inconclusive = "wait"', "baking"), (CANARY, "step")],
    ids=["during-bake", "canary-step"],
)
def test_a_new_version_that_crashes_after_the_switch_is_rolled_back(
    project: Project, rollout: str, phase: str
) -> None:
    project.configure(rollout=rollout)
    project.release("v1")
    project.release("v2")
    assert project.deploy("v1")[0] == 0
    thread, box = background_deploy(project, "v2")
    reach(project, phase)
    os.kill(pid_of(project, "v2"), signal.SIGKILL)
    thread.join(240)
    code, out = box["res"]
    assert code == 1 and out["outcome"] == "rolled_back", out
    assert out["reason"].startswith("web (green) crashed: killed by SIGKILL"), out["reason"]
    assert fresh_requests(project.port, 20) == {"v1": 20}
    assert project.db("SELECT version, role FROM instances") == [("v1", "active")]


def test_a_new_version_that_crashes_during_the_standby_window_is_switched_back(
    project: Project,
) -> None:
    project.configure(rollout='bake = "0s"')
    project.release("v1")
    project.release("v2")
    assert project.deploy("v1")[0] == 0
    assert project.deploy("v2")[0] == 0
    assert project.serving() == "v2"
    os.kill(pid_of(project, "v2"), signal.SIGKILL)

    hist = switched_back_by_itself(project)
    assert "web v2 (green) exited during the standby window" in hist[1]["reason"]


def test_a_passing_health_check_ends_a_streak_of_failed_ones(project: Project) -> None:
    project.configure(rollout='bake = "120s"\non_inconclusive = "wait"')  # unhealthy_threshold 3
    script = health_script(project, "v2")
    project.release("v1")
    project.release("v2", health_script=str(script))
    assert project.deploy("v1")[0] == 0
    thread, box = background_deploy(project, "v2")
    reach(project, "baking")
    set_health(script, "503 503 200")  # never three failures in a row, but six within two rounds

    def six_failures_or_the_end() -> bool:
        try:
            return "res" in box or health_answers(project, "v2").get("503", 0) >= 6
        except OSError:
            return "res" in box  # v2 was stopped: the deployment is over

    wait_for(six_failures_or_the_end, what="six failed health checks during the bake")
    assert "res" not in box, box["res"]
    assert project.cli("promote", "--env", "dev").returncode == 0  # ends the bake
    thread.join(240)
    assert box["res"][0] == 0 and box["res"][1]["outcome"] == "succeeded", box["res"]
    script.unlink()


CHECK_SCRIPT = """import json, os, sys
calls = os.path.join(sys.argv[1], "checks.jsonl")
n = sum(1 for _ in open(calls)) if os.path.exists(calls) else 0
with open(calls, "a") as f:
    f.write(json.dumps({k: os.environ.get(k) for k in ("OPERATOR_TOKEN", "PATH")}) + "\\n")
sys.exit(1 if n % 3 < 2 else 0)  # fail, fail, pass, over and over
"""


def test_a_passing_measurement_ends_a_streak_of_failed_ones(project: Project) -> None:
    # Exported by whoever started the agent: an analysis command must not see it.
    project.env["OPERATOR_TOKEN"] = "do-not-leak"
    (project.dir / "check.py").write_text(CHECK_SCRIPT)
    project.configure(
        rollout=f'''bake = "120s"
on_inconclusive = "wait"
[[rollout.analysis]]
metric = "command"
command = "{sys.executable} {project.dir}/check.py {project.dir}"
interval = "100ms"
timeout = "60s"
failure_limit = 3
'''
    )
    project.release("v1")
    project.release("v2")
    assert project.deploy("v1")[0] == 0  # a first deployment has no analysis
    thread, box = background_deploy(project, "v2")
    calls = project.dir / "checks.jsonl"

    def eight_measurements_or_the_end() -> bool:
        return "res" in box or (calls.exists() and len(calls.read_text().splitlines()) >= 8)

    wait_for(eight_measurements_or_the_end, what="eight measurements during the bake")
    assert "res" not in box, box["res"]  # six of them failed, never three in a row
    assert project.cli("promote", "--env", "dev").returncode == 0
    thread.join(240)
    assert box["res"][0] == 0 and box["res"][1]["outcome"] == "succeeded", box["res"]
    seen = [json.loads(line) for line in calls.read_text().splitlines()]
    assert all(c["OPERATOR_TOKEN"] is None and c["PATH"] for c in seen), seen


HANGING_HOOK = """import os, sys, time
here = sys.argv[1]
open(os.path.join(here, "hook.started"), "w").close()
while not os.path.exists(os.path.join(here, "hook.release")):  # until the test lets it go
    time.sleep(0.05)
open(os.path.join(here, "hook.finished"), "w").close()
"""


def test_a_hanging_post_switch_hook_does_not_delay_a_rollback(project: Project) -> None:
    project.configure(rollout='bake = "120s"\non_inconclusive = "wait"')
    script = health_script(project, "v2")
    project.release("v1")
    project.release("v2", health_script=str(script))
    assert project.deploy("v1")[0] == 0
    (project.dir / "hang.py").write_text(HANGING_HOOK)
    text = (project.dir / "conveyor.toml").read_text()
    command = f"{sys.executable} {project.dir}/hang.py {project.dir}"
    text += f'\n[hooks]\npost_switch = {{ command = "{command}", timeout = "600s" }}\n'
    (project.dir / "conveyor.toml").write_text(text)
    thread, box = background_deploy(project, "v2")
    wait_for(lambda: (project.dir / "hook.started").exists(), what="the post_switch hook")
    reach(project, "baking")
    set_health(script, "503")

    # Switched back while the hook still hangs: the decision did not wait for it.
    # The switch back moves traffic first and writes the history after: wait on the history.
    def decided() -> dict[str, Any] | None:
        code, hist = project.history("dev")
        assert code == 0, hist
        return hist[0] if hist[0]["outcome"] != "in_progress" else None

    last = wait_for(decided, what="the switch back in the history")
    assert project.serving() == "v1"
    assert (last["version"], last["outcome"]) == ("v2", "rolled_back"), last
    assert not (project.dir / "hook.finished").exists()
    (project.dir / "hook.release").touch()
    thread.join(240)
    assert box["res"][1]["outcome"] == "rolled_back", box["res"]
    assert (project.dir / "hook.finished").exists()  # it was let finish, not killed


class Silent(http.server.BaseHTTPRequestHandler):
    """A webhook receiver that reads the request and never answers (until the test ends)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.server.calls.append(self.path)  # type: ignore[attr-defined]
        self.server.done.wait(300)  # type: ignore[attr-defined]

    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_hanging_webhook_receiver_delays_a_deploy_by_its_bound_at_most(project: Project) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Silent)
    server.calls = []  # type: ignore[attr-defined]
    server.done = threading.Event()  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        project.configure()
        text = (project.dir / "conveyor.toml").read_text()
        url = f"http://127.0.0.1:{server.server_address[1]}/hook"
        text += f'\n[[notifications]]\nurl = "{url}"\ntimeout = "600s"\nretries = 0\n'
        (project.dir / "conveyor.toml").write_text(text)
        project.release("v1")
        started = time.monotonic()
        code, out = project.deploy("v1")
        took = time.monotonic() - started
        assert code == 0 and out["outcome"] == "succeeded", out
        assert server.calls == ["/hook"]  # delivery began and hangs: the rest wait behind it
        # The stated bound is 5s of draining the notification queue after the deployment ended.
        # Without it the deploy would wait out the 600s timeout; the margin is for a loaded
        # machine (starting the app and the CLI), not a measurement.
        assert took < 120, took
    finally:
        server.done.set()  # type: ignore[attr-defined]
        server.shutdown()
