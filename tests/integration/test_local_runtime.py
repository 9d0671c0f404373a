"""LocalRuntime against real processes: start, health, stop, process groups, adoption."""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import os
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conveyor.health import probe_http
from conveyor.runtimes import (
    Handle,
    LocalRuntime,
    RuntimeStartError,
    Workload,
    free_port,
    local,
    logfile,
    read_proc_stat,
    tail,
)

DEMOAPP = Path(__file__).resolve().parents[2] / "examples" / "demoapp"
PY = shlex.quote(sys.executable)


def wait_until(condition: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        time.sleep(0.02)


def wait_healthy(port: int, timeout: float = 15.0) -> None:
    def healthy() -> bool:
        ok, _ = asyncio.run(probe_http("127.0.0.1", port, "/healthz", 1.0))
        return ok

    wait_until(healthy, timeout, f"/healthz on port {port}")


def gone(pid: int) -> bool:
    """No such process, or only a zombie nobody has reaped yet."""
    stat = read_proc_stat(pid)
    return stat is None or stat.state in ("Z", "X")


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="cv", dir="/tmp"))
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


@pytest.fixture
def runtime(workdir: Path) -> Iterator[LocalRuntime]:
    rt = LocalRuntime(workdir / "logs")
    started: list[Handle] = []
    original = rt.start_sync

    def tracking_start(w: Workload) -> Handle:
        h = original(w)
        started.append(h)
        return h

    rt.start_sync = tracking_start  # type: ignore[method-assign]
    yield rt
    # Never leave processes behind, whatever a test did.
    for h in started:
        rt.stop_sync(h, 0)


def make_spec(
    workdir: Path,
    command: str,
    *,
    cwd: Path = DEMOAPP,
    env: dict[str, str] | None = None,
    port: int | None = None,
    color: str = "blue",
) -> Workload:
    full_env = {"PATH": os.environ["PATH"]}
    full_env.update(env or {})
    return Workload(
        app="demo",
        environment="test",
        service="web",
        color=color,
        version="v1",
        artifact=str(cwd),
        command=command,
        port=port,
        env=full_env,
    )


def demo_spec(workdir: Path, port: int, **env: str) -> Workload:
    return make_spec(workdir, f"{PY} app.py --port {{port}}", env=env, port=port)


def pid(h: Handle) -> int:
    return int(h.ref["pid"])


def log_of(h: Handle) -> Path:
    return Path(str(h.ref["log"]))


def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_demo_app_lifecycle(runtime: LocalRuntime, workdir: Path) -> None:
    port = free_port()
    inst = runtime.start_sync(demo_spec(workdir, port, DEMO_VERSION="v7"))

    assert inst.runtime == "local"
    assert inst.ref["pgid"] == pid(inst)
    assert inst.endpoints == (local.Endpoint("127.0.0.1", port),)
    stat = read_proc_stat(pid(inst))
    assert stat is not None and stat.start == inst.ref["proc_start"] and stat.pgrp == pid(inst)
    # Its own session: the sid (field 6) is its own pid.
    fields = Path(f"/proc/{pid(inst)}/stat").read_text().rsplit(")", 1)[1].split()
    assert int(fields[3]) == pid(inst)
    assert runtime.alive(inst)
    assert asyncio.run(runtime.state(inst)) == local.RunState(True, "running")

    wait_healthy(port)
    status, headers, body = get(port, "/")
    assert status == 200
    assert body == b"hello from v7\n"
    assert headers["X-Demo-Version"] == "v7"

    asyncio.run(runtime.stop(inst, grace=10))
    assert not runtime.alive(inst)
    assert asyncio.run(runtime.state(inst)) == local.RunState(False, "exited with code 0")
    log = runtime.tail(inst, 1000)  # the app's text, once its log writer has written it all
    assert log[0].startswith("--- ")
    assert " start web blue v1 port=" + str(port) + " ---" in log[0]
    assert any("got SIGTERM" in line for line in log)


def test_stop_kills_the_whole_process_group(runtime: LocalRuntime, workdir: Path) -> None:
    port = free_port()
    pidfile = workdir / "child.pid"
    inner = f"sleep 1000 & echo $! > {pidfile}; exec {PY} app.py --port {port}"
    inst = runtime.start_sync(make_spec(workdir, f"sh -c {shlex.quote(inner)}", port=port))
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip() != "", what="child pid")
    child = int(pidfile.read_text())
    child_stat = read_proc_stat(child)
    assert child_stat is not None and child_stat.pgrp == inst.ref["pgid"]
    wait_healthy(port)

    asyncio.run(runtime.stop(inst, grace=10))
    assert runtime.exit_detail(inst) == "exited with code 0"
    wait_until(lambda: gone(child), 5, "the grandchild to die")


def test_stop_sweeps_group_members_that_ignore_sigterm(
    runtime: LocalRuntime, workdir: Path
) -> None:
    pidfile = workdir / "child.pid"
    # The helper ignores SIGTERM; the leader exits on it. The helper must not survive stop().
    inner = (
        f"sh -c \"trap '' TERM; exec sleep 1000\" & echo $! > {pidfile}; "
        f"exec {PY} -c 'import time; print(\"up\", flush=True); time.sleep(1000)'"
    )
    inst = runtime.start_sync(make_spec(workdir, f"sh -c {shlex.quote(inner)}"))
    wait_until(lambda: "up" in log_of(inst).read_text(), what="leader to start")
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip() != "", what="child pid")
    child = int(pidfile.read_text())
    # The trap must be in place before we signal, or the test proves nothing.
    wait_until(
        lambda: "sleep" in Path(f"/proc/{child}/cmdline").read_bytes().decode(),
        what="helper to exec sleep",
    )

    asyncio.run(runtime.stop(inst, grace=10))
    assert runtime.exit_detail(inst) == "killed by SIGTERM"
    wait_until(lambda: gone(child), 5, "the SIGTERM-ignoring helper to die")


def test_sigkill_after_grace_when_sigterm_is_ignored(runtime: LocalRuntime, workdir: Path) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ignoring TERM', flush=True); time.sleep(1000)"
    )
    inst = runtime.start_sync(make_spec(workdir, f"{PY} -c {shlex.quote(code)}"))
    wait_until(lambda: "ignoring TERM" in log_of(inst).read_text(), what="handler installed")

    started = time.monotonic()
    asyncio.run(runtime.stop(inst, grace=0.5))
    elapsed = time.monotonic() - started
    assert elapsed >= 0.5
    assert elapsed < 30  # bounded: the process ignores SIGTERM and sleeps 1000s
    assert not runtime.alive(inst)
    assert runtime.exit_detail(inst) == "killed by SIGKILL"


def test_stop_does_not_block_the_event_loop(runtime: LocalRuntime, workdir: Path) -> None:
    code = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ignoring TERM', flush=True); time.sleep(1000)"
    )
    inst = runtime.start_sync(make_spec(workdir, f"{PY} -c {shlex.quote(code)}"))
    wait_until(lambda: "ignoring TERM" in log_of(inst).read_text(), what="handler installed")

    async def scenario() -> int:
        ticks = 0
        stopping = asyncio.create_task(runtime.stop(inst, grace=0.6))
        while not stopping.done():
            ticks += 1
            await asyncio.sleep(0.01)
        await stopping
        return ticks

    # A blocking stop() would let the ticker run once or twice at most.
    assert asyncio.run(scenario()) > 10
    assert runtime.exit_detail(inst) == "killed by SIGKILL"


def test_exit_code_and_alive_after_exit(runtime: LocalRuntime, workdir: Path) -> None:
    inst = runtime.start_sync(make_spec(workdir, f"{PY} -c 'raise SystemExit(3)'"))
    wait_until(lambda: not runtime.alive(inst), what="exit")
    assert runtime.exit_detail(inst) == "exited with code 3"
    # alive() reaped the zombie: no process with this identity is left.
    stat = read_proc_stat(pid(inst))
    assert stat is None or stat.start != inst.ref["proc_start"]


def test_command_not_found_exits_127(runtime: LocalRuntime, workdir: Path) -> None:
    inst = runtime.start_sync(make_spec(workdir, "no-such-program-here --port 1"))
    wait_until(lambda: not runtime.alive(inst), what="exit")
    assert runtime.exit_detail(inst) == "exited with code 127"
    assert any("not found" in line for line in runtime.tail(inst, 20))


def test_unspawnable_command_raises(runtime: LocalRuntime, workdir: Path) -> None:
    spec = make_spec(workdir, "true", cwd=workdir / "missing")
    with pytest.raises(RuntimeStartError, match="missing"):
        runtime.start_sync(spec)
    with pytest.raises(RuntimeStartError, match="null"):
        runtime.start_sync(make_spec(workdir, "true", env={"BAD": "a\x00b"}))
    blocker = workdir / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(RuntimeStartError, match="cannot open log"):
        LocalRuntime(blocker).start_sync(make_spec(workdir, "true"))
    with pytest.raises(RuntimeStartError, match="no command"):
        runtime.start_sync(dataclasses.replace(make_spec(workdir, "true"), command=None))


def test_pid_reuse_mismatch_is_not_alive_and_not_killed(
    runtime: LocalRuntime, workdir: Path
) -> None:
    inst = runtime.start_sync(make_spec(workdir, "sleep 1000"))
    impostor = dataclasses.replace(
        inst, ref={**inst.ref, "proc_start": int(inst.ref["proc_start"]) + 1}
    )
    stranger = LocalRuntime(workdir)

    assert runtime.alive(inst)
    assert not runtime.alive(impostor)
    assert not stranger.alive(impostor)
    assert stranger.alive(inst)  # adopted by pid + proc_start
    assert asyncio.run(stranger.adopt(inst)) == inst
    assert asyncio.run(stranger.adopt(impostor)) is None
    assert asyncio.run(stranger.adopt(dataclasses.replace(inst, runtime="docker"))) is None
    assert runtime.exit_detail(impostor) == "not running"

    # A record whose identity does not match must never get the real process killed.
    asyncio.run(runtime.stop(impostor, grace=1))
    stranger.stop_sync(impostor, grace=1)
    assert runtime.alive(inst)

    runtime.stop_sync(inst, grace=5)
    assert runtime.exit_detail(inst) == "killed by SIGTERM"


def test_adopt_process_started_by_another_python_process(workdir: Path) -> None:
    port = free_port()
    spec = demo_spec(workdir, port)
    # A separate Python process starts the app and exits, like an agent that went away; all
    # that is left of it is the handle, as the store keeps it (JSON).
    starter = """
import json, sys
from pathlib import Path
from conveyor.runtimes import LocalRuntime, Workload
w = Workload(**json.loads(sys.argv[1]))
print(json.dumps(LocalRuntime(Path(sys.argv[2])).start_sync(w).to_json()))
"""
    fields = dataclasses.asdict(spec)
    out = subprocess.run(
        [sys.executable, "-c", starter, json.dumps(fields), str(workdir / "logs")],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    runtime = LocalRuntime(workdir / "logs")
    recorded = Handle.from_json(json.loads(out.stdout))
    inst = asyncio.run(runtime.adopt(recorded))
    assert inst is not None
    try:
        assert runtime.alive(inst)
        assert runtime.exit_detail(inst) == "running"
        stat = Path(f"/proc/{pid(inst)}/stat").read_text().rsplit(")", 1)[1].split()
        assert int(stat[1]) != os.getpid()  # not our child: reparented when the starter exited
        wait_healthy(port)
        assert get(port, "/")[2] == b"hello from v1\n"

        asyncio.run(runtime.stop(inst, grace=10))
        assert not runtime.alive(inst)
        assert runtime.exit_detail(inst) == "not running"
        assert "got SIGTERM" in log_of(inst).read_text()
    finally:
        runtime.stop_sync(inst, 0)


def test_environment_is_exactly_the_spec(
    runtime: LocalRuntime, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_TEST_LEAK", "should-not-pass")
    # env(1), not python: python would add LC_CTYPE itself (PEP 538 locale coercion).
    spec = make_spec(workdir, "env", env={"PORT": "4321", "GREETING": "hi there"})
    inst = runtime.start_sync(spec)
    wait_until(lambda: not runtime.alive(inst), what="exit")
    assert runtime.exit_detail(inst) == "exited with code 0"
    lines = runtime.tail(inst, 1000)[1:]  # after the header
    env = dict(line.split("=", 1) for line in lines)
    assert env["PORT"] == "4321"
    assert env["GREETING"] == "hi there"
    assert "CONVEYOR_TEST_LEAK" not in env
    # /bin/sh itself exports PWD; nothing else is added.
    assert set(env) - {"PWD"} == set(spec.env)


def test_shell_expansion_in_command(runtime: LocalRuntime, workdir: Path) -> None:
    inst = runtime.start_sync(make_spec(workdir, "echo port is $PORT", env={"PORT": "5555"}))
    wait_until(lambda: not runtime.alive(inst), what="exit")
    assert runtime.tail(inst, 1) == ["port is 5555"]


def test_log_is_appended_and_tailed(runtime: LocalRuntime, workdir: Path) -> None:
    spec = make_spec(workdir, "sh -c 'for i in 1 2 3 4 5; do echo line $i; echo err $i >&2; done'")
    for _ in range(2):
        inst = runtime.start_sync(spec)
        wait_until(lambda inst=inst: not runtime.alive(inst), what="exit")  # type: ignore[misc]
        runtime.tail(inst, 1)  # its log writer has written everything
    lines = runtime.tail(inst, 1000)
    assert sum(1 for line in lines if line.startswith("--- ")) == 2
    assert lines.count("line 5") == 2 and lines.count("err 5") == 2
    # Each line with its time and stream.
    records = logfile.tail_lines(log_of(inst), 1000)
    assert {r.stream for r in records if r.text.startswith("line ")} == {"stdout"}
    assert {r.stream for r in records if r.text.startswith("err ")} == {"stderr"}
    assert {r.stream for r in records if r.text.startswith("--- ")} == {"conveyor"}
    assert all(r.time is not None for r in records)
    assert tail(log_of(inst), 3) == lines[-3:]
    assert runtime.tail(inst, 3) == lines[-3:]
    assert tail(log_of(inst), 1000) == lines
    assert tail(log_of(inst), 0) == []


def test_tail_reads_only_the_end_of_large_files(tmp_path: Path) -> None:
    log = tmp_path / "big.log"
    with log.open("w") as f:
        for i in range(300_000):
            f.write(f"line {i} {'x' * (i % 50)}\n")
        f.write("last line without newline")
    expected = log.read_text().splitlines()[-20:]
    assert tail(log) == expected
    assert tail(log, 5) == expected[-5:]
    assert tail(tmp_path / "missing.log") == []


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    assert 0 < port < 65536
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_only_recent_exit_statuses_are_kept(
    runtime: LocalRuntime, workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "KEEP_FINISHED", 2)
    first = runtime.start_sync(make_spec(workdir, "sh -c 'exit 4'"))
    wait_until(lambda: not runtime.alive(first), what="exit")
    assert runtime.exit_detail(first) == "exited with code 4"
    for _ in range(3):
        inst = runtime.start_sync(make_spec(workdir, "true"))
        wait_until(lambda inst=inst: not runtime.alive(inst), what="exit")  # type: ignore[misc]
    # The oldest handle was dropped: it is now known only through /proc, like an adopted one.
    assert runtime.exit_detail(first) == "not running"
    assert runtime.exit_detail(inst) == "exited with code 0"


def test_free_ports_come_from_below_the_ephemeral_range() -> None:
    from conveyor.runtimes.local import PRIVATE_PORTS_LOW, _ephemeral_low

    low = _ephemeral_low()
    ports = {free_port() for _ in range(20)}
    assert all(PRIVATE_PORTS_LOW <= p < low for p in ports), ports
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # really free


def test_port_zero_is_chosen_by_the_runtime_and_substituted(
    runtime: LocalRuntime, workdir: Path
) -> None:
    inst = runtime.start_sync(demo_spec(workdir, 0))
    endpoint = inst.endpoint
    assert endpoint is not None and endpoint.host == "127.0.0.1" and endpoint.port > 0
    wait_healthy(endpoint.port)
    assert get(endpoint.port, "/")[0] == 200
    assert f"port={endpoint.port} ---" in log_of(inst).read_text().splitlines()[0]


def test_a_taken_port_is_replaced_by_a_free_one(runtime: LocalRuntime, workdir: Path) -> None:
    # A restart asks for the color's old port; if someone took it meanwhile, the color gets a
    # fresh port (and the route follows the handle's endpoint).
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        inst = runtime.start_sync(demo_spec(workdir, taken))
    assert inst.endpoint is not None and inst.endpoint.port != taken
    wait_healthy(inst.endpoint.port)


def test_workers_get_no_port_and_no_endpoint(runtime: LocalRuntime, workdir: Path) -> None:
    inst = runtime.start_sync(make_spec(workdir, "sh -c 'echo PORT=${PORT:-none}'"))
    wait_until(lambda: not runtime.alive(inst), what="exit")
    assert inst.endpoints == () and inst.endpoint is None
    assert runtime.tail(inst, 1) == ["PORT=none"]


def test_logs_reads_and_follows_the_output(runtime: LocalRuntime, workdir: Path) -> None:
    go = workdir / "go"
    command = f"sh -c 'echo first; while [ ! -e {go} ]; do sleep 0.05; done; echo second'"
    inst = runtime.start_sync(make_spec(workdir, command))
    wait_until(lambda: "first" in log_of(inst).read_text(), what="first line")

    async def read_all() -> bytes:
        return b"".join([chunk async for chunk in runtime.logs(inst, follow=False)])

    assert b"first\n" in asyncio.run(read_all()) and b"second" not in asyncio.run(read_all())

    async def follow_until_second() -> bytes:
        seen = b""
        async for chunk in runtime.logs(inst, follow=True):
            seen += chunk
            if b"first" in seen and not go.exists():
                go.write_text("")
            if b"second" in seen:
                return seen
        raise AssertionError("logs(follow=True) ended")

    assert asyncio.run(asyncio.wait_for(follow_until_second(), 30)).endswith(b"second\n")
    missing = dataclasses.replace(inst, ref={**inst.ref, "log": str(workdir / "none.log")})

    async def none() -> list[bytes]:
        return [chunk async for chunk in runtime.logs(missing, follow=True)]

    assert asyncio.run(none()) == []


def test_handle_json_round_trip() -> None:
    h = Handle("local", {"pid": 1, "pgid": 1, "proc_start": 5, "log": "/x"}, (), 12.5)
    assert Handle.from_json(json.loads(json.dumps(h.to_json()))) == h
    assert h.summary == "pid 1"
