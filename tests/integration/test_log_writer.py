"""The log writer of local processes against real pipes and processes (runtimes/logshim.py):
each line stamped with its time and stream, long and unfinished lines, an app that outlives
the agent that started it, and what a log writer killed with -9 means for its app."""

from __future__ import annotations

import calendar
import json
import os
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

from conftest import Project, wait_for
from conveyor.procs import read_proc_stat
from conveyor.runtimes import LocalRuntime, Workload, logfile, logshim

PY = shlex.quote(sys.executable)


def workload(tmp_path: Path, command: str) -> Workload:
    return Workload(
        app="shop",
        environment="dev",
        service="web",
        color="blue",
        version="v1",
        artifact=str(tmp_path),
        command=command,
        port=None,
        env={"PATH": os.environ["PATH"]},
        options={},
    )


def lines_of(log: Path) -> list[logfile.LogLine]:
    return logfile.read(log.read_text().split("\n")[:-1])


def test_the_writer_stamps_lines_joins_nothing_and_ends_with_its_pipes(tmp_path: Path) -> None:
    log = tmp_path / "blue.log"
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        out, err, writer = logshim.start(log_fd, str(log))
    finally:
        os.close(log_fd)
    long = b"z" * (logshim.LIMIT * 2 + 3)
    before = time.time()
    try:
        os.write(out, b"first\n")
        os.write(err, b"an error\n")
        os.write(out, long + b"\n")
        os.write(err, b"no newline at the end")
    finally:
        os.close(out)
        os.close(err)
    assert writer.wait(timeout=20) == 0  # both pipes closed: it ends by itself
    lines = lines_of(log)
    # Each stream in its order (the writer reads whichever pipe has data first).
    assert [line.text for line in lines if line.stream == "stdout"] == ["first", long.decode()]
    assert [line.text for line in lines if line.stream == "stderr"] == [
        "an error",
        "no newline at the end",
    ]
    assert len(lines) == 4
    for line in lines:
        assert line.time is not None and not line.partial
        stamp = calendar.timegm(time.strptime(line.time[:19], "%Y-%m-%dT%H:%M:%S"))
        assert before - 1 <= stamp <= time.time() + 1
    # Three records for the long line, in the file.
    assert log.read_text().count(" stdout P ") == 2


def test_a_process_writes_both_streams_with_times_through_the_runtime(tmp_path: Path) -> None:
    runtime = LocalRuntime(tmp_path / "logs")
    command = "sh -c 'echo out one; echo err one >&2; printf \"\\033[31mred\\033[0m\\n\"'"
    handle = runtime.start_sync(workload(tmp_path, command))
    log = runtime.log_path("dev", "web", "blue")
    wait_for(lambda: not runtime.alive(handle), what="the process to exit")
    wait_for(lambda: len(lines_of(log)) == 4, what="its lines in the log")
    lines = lines_of(log)
    assert lines[0].stream == "conveyor" and lines[0].text.startswith("--- ")
    assert " start web blue v1 port=- ---" in lines[0].text
    assert sorted((line.stream, line.text) for line in lines[1:]) == [
        ("stderr", "err one"),
        ("stdout", "\x1b[31mred\x1b[0m"),
        ("stdout", "out one"),
    ]
    assert all(line.time for line in lines)
    # What the engine quotes as "last output": the app's text, without times.
    assert set(runtime.tail(handle, 3)) == {"out one", "err one", "\x1b[31mred\x1b[0m"}


AGENT = """
import sys, time
from pathlib import Path
from conveyor.runtimes import LocalRuntime, Workload
runtime = LocalRuntime(Path(sys.argv[1]))
handle = runtime.start_sync(Workload(app="shop", environment="dev", service="web", color="blue",
    version="v1", artifact=sys.argv[2], command=sys.argv[3], port=None,
    env={"PATH": "/usr/bin:/bin"}, options={}))
print(handle.ref["pid"], flush=True)
time.sleep(600)
"""

TICKER = textwrap.dedent(
    """
    import itertools, sys, time
    for n in itertools.count():
        print(f"tick {n}", flush=True)
        print(f"tock {n}", file=sys.stderr, flush=True)
        time.sleep(0.05)
    """
)


def test_the_app_and_its_log_outlive_the_agent_that_started_them(tmp_path: Path) -> None:
    (tmp_path / "ticker.py").write_text(TICKER)
    logs = tmp_path / "logs"
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT, str(logs), str(tmp_path), f"{PY} ticker.py"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert agent.stdout is not None
    pid = int(agent.stdout.readline())
    try:
        log = logs / "dev" / "web" / "blue.log"
        wait_for(lambda: len(lines_of(log)) > 3, what="the first ticks")
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=20)
        seen = len(lines_of(log))
        # The agent is gone; the app goes on, and so does its log, stamped per stream.
        wait_for(lambda: len(lines_of(log)) > seen + 10, what="ticks after the agent died")
        assert read_proc_stat(pid) is not None
        streams = {line.stream for line in lines_of(log)[seen:]}
        assert streams == {"stdout", "stderr"}
    finally:
        agent.kill()
        agent.wait(timeout=20)
        os.kill(pid, signal.SIGKILL)


def writer_of(log: Path) -> int:
    """The pid of the log writer appending to `log` (it names the log in its arguments)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(arg.endswith(b"logshim.py") for arg in args) and str(log).encode() in args:
            return int(entry.name)
    raise AssertionError(f"no log writer for {log}")


def test_a_log_writer_killed_with_9_ends_its_apps_output_and_the_app_sees_it(
    tmp_path: Path,
) -> None:
    (tmp_path / "ticker.py").write_text(TICKER)
    runtime = LocalRuntime(tmp_path / "logs")
    handle = runtime.start_sync(workload(tmp_path, f"{PY} ticker.py"))
    log = runtime.log_path("dev", "web", "blue")
    try:
        wait_for(lambda: len(lines_of(log)) > 3, what="the first ticks")
        os.kill(writer_of(log), signal.SIGKILL)
        # The next print fails (EPIPE; Python raises BrokenPipeError): this app ends, and the
        # supervisor would restart the color with a new log writer (docs/internals.md).
        wait_for(lambda: not runtime.alive(handle), what="the app to end")
        assert runtime.exit_detail(handle) != "running"
    finally:
        runtime.stop_sync(handle, grace=5)


def test_logs_shows_the_apps_lines_and_json_gives_each_its_time_and_stream(
    project: Project,
) -> None:
    project.configure(worker=True)
    project.release("v1")
    assert project.deploy("v1")[0] == 0
    wait_for(
        lambda: "heartbeat 2" in project.cli("logs", "jobs", "--env", "dev").stdout,
        what="the worker's heartbeats",
    )

    plain = project.cli("logs", "jobs", "--env", "dev", "-n", "3").stdout.splitlines()
    assert len(plain) == 3 and all(line.startswith("worker ") for line in plain), plain

    shown = project.cli("logs", "jobs", "--env", "dev", "-n", "3", "--json")
    assert shown.returncode == 0, shown.stderr
    records = [json.loads(line) for line in shown.stdout.splitlines()]
    assert len(records) == 3  # (the heartbeats go on meanwhile: not the same ones)
    assert all(r["line"].startswith("worker v1 heartbeat ") for r in records)
    assert {(r["service"], r["color"], r["stream"]) for r in records} == {
        ("jobs", "blue", "stdout")
    }
    times = [r["time"] for r in records]
    assert times == sorted(times) and all(t.endswith("Z") and "T" in t for t in times)

    # The demo web app says where it listens on stderr; the start line is conveyor's own.
    shown = project.cli("logs", "web", "--env", "dev", "-n", "50", "--json")
    records = [json.loads(line) for line in shown.stdout.splitlines()]
    assert records[0]["stream"] == "conveyor" and "start web blue v1" in records[0]["line"]
    listening = [r for r in records if "listening on" in r["line"]]
    assert listening and all(r["stream"] == "stderr" and r["time"] for r in listening)


def test_secret_values_never_reach_the_log_nor_the_writers_argv_or_environment(
    tmp_path: Path,
) -> None:
    secret = "s3cr3t-" + os.urandom(24).hex()
    log = tmp_path / "blue.log"
    log_fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        out, err, writer = logshim.start(log_fd, str(log), {"API_KEY": secret})
    finally:
        os.close(log_fd)
    try:
        shown = (Path(f"/proc/{writer.pid}/cmdline").read_bytes(),)
        shown += (Path(f"/proc/{writer.pid}/environ").read_bytes(),)
        assert not any(secret.encode() in part for part in shown)
        os.write(out, f"key={secret}\n".encode())
        os.write(err, f"{secret} on stderr\n".encode())
        # A line longer than the limit whose cut would fall inside the value.
        filler = b"y" * (logshim.LIMIT - 10)
        os.write(out, filler + secret.encode() + b" end\n")
        os.write(out, f"last words {secret}".encode())  # no newline: written at close
    finally:
        os.close(out)
        os.close(err)
    assert writer.wait(timeout=20) == 0
    content = log.read_bytes()
    assert secret.encode() not in content
    # Not even in pieces: no cut leaves part of the value on either side.
    assert secret[:20].encode() not in content and secret[-20:].encode() not in content
    texts = [line.text for line in lines_of(log)]
    assert "key=[secret:API_KEY]" in texts
    assert "[secret:API_KEY] on stderr" in texts
    assert (filler.decode() + "[secret:API_KEY] end") in texts
    assert "last words [secret:API_KEY]" in texts


def test_a_service_printing_its_secret_is_logged_redacted(tmp_path: Path) -> None:
    secret = "tok_" + os.urandom(20).hex()
    runtime = LocalRuntime(tmp_path / "logs")
    w = replace(
        workload(tmp_path, 'sh -c \'echo "token is $API_TOKEN"; echo "$API_TOKEN" >&2\''),
        env={"PATH": os.environ["PATH"], "API_TOKEN": secret},
        secrets={"API_TOKEN": secret},
    )
    h = runtime.start_sync(w)
    log = Path(str(h.ref["log"]))
    wait_for(lambda: len([x for x in lines_of(log) if x.stream != "conveyor"]) >= 2, 10)
    runtime.stop_sync(h, 1.0)
    assert secret not in log.read_text()
    assert "token is [secret:API_TOKEN]" in runtime.tail(h, 5)
    assert secret not in repr(w)
