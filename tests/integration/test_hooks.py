"""run_hook with real shell commands: output, exit codes, timeouts, process groups, env, cwd."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import tracemalloc
from pathlib import Path

import pytest

from conftest import unavailable
from conveyor.config.models import HookConfig
from conveyor.engine.hooks import TAIL_LINES, HookResult, run_hook
from conveyor.runtimes.local import read_proc_stat

BASE_ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def run(
    tmp_path: Path,
    command: str,
    *,
    timeout: float = 30.0,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    name: str = "smoke",
) -> HookResult:
    hook = HookConfig(command=command, timeout=timeout)
    log = tmp_path / "logs" / "deploy.log"
    return asyncio.run(run_hook(name, hook, cwd or tmp_path, env or BASE_ENV, log))


def log_lines(tmp_path: Path) -> list[str]:
    return (tmp_path / "logs" / "deploy.log").read_text().splitlines()


def gone(child: tuple[int, int]) -> bool:
    # The reparented process may linger as a zombie until init reaps it: it is dead all the same.
    # A live process with that pid but another start time is a newcomer that reused the pid
    # (pid_max is 32768 here, and the test suite starts many processes).
    pid, start = child
    stat = read_proc_stat(pid)
    return stat is None or stat.state == "Z" or stat.start != start


def wait_until_gone(child: tuple[int, int], timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not gone(child):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def read_pid(path: Path, timeout: float = 60.0) -> tuple[int, int]:
    """The (pid, start time) a hook wrote for its background child."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text() if path.exists() else ""
        if text.endswith("\n"):
            pid, start = text.split()
            return int(pid), int(start)
        time.sleep(0.02)
    raise AssertionError(f"{path} never got a pid")


def test_success_captures_stdout_and_stderr_in_log_and_tail(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "deploy.log").write_text("earlier line\n")
    result = run(tmp_path, "echo hello; echo oops >&2; printf 'no newline'", name="smoke")
    assert result.ok
    assert result.exit_code == 0
    assert result.detail == "exited with code 0"
    assert result.name == "smoke"
    assert result.output == ["hello", "oops", "no newline"]
    assert 0 <= result.duration < 30
    # Appended, never truncated: the deployment log has the engine's lines too.
    assert log_lines(tmp_path) == [
        "earlier line",
        "[smoke] hello",
        "[smoke] oops",
        "[smoke] no newline",
    ]


def test_non_zero_exit_fails_with_its_code(tmp_path: Path) -> None:
    result = run(tmp_path, "echo checking; exit 3", name="pre_deploy")
    assert not result.ok
    assert result.exit_code == 3
    assert result.detail == "exited with code 3"
    assert result.output == ["checking"]
    assert log_lines(tmp_path) == ["[pre_deploy] checking"]


def test_killed_by_signal(tmp_path: Path) -> None:
    result = run(tmp_path, "kill -TERM $$")
    assert not result.ok
    assert result.exit_code is None
    assert result.detail == "killed by SIGTERM"


def test_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    command = "sleep 100 & echo $! $(cut -d' ' -f22 /proc/$!/stat) > child.pid; echo started; sleep 100; wait"
    begun = time.monotonic()
    result = run(tmp_path, command, timeout=0.5)
    assert not result.ok
    assert result.exit_code is None
    assert result.detail == "timed out after 0.5s"
    assert result.output == ["started"]
    # Bounded: the command alone would run for 100s. (How fast is not a test's business.)
    assert time.monotonic() - begun < 30
    assert wait_until_gone(read_pid(tmp_path / "child.pid"))


def test_timeout_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path: Path) -> None:
    # An ignored signal stays ignored in children, so both the shell and the sleep survive SIGTERM.
    command = "trap '' TERM; sleep 100 & echo $! $(cut -d' ' -f22 /proc/$!/stat) > child.pid; sleep 100; wait"
    result = run(tmp_path, command, timeout=0.3)
    assert result.detail == "timed out after 0.3s"
    assert not result.ok
    assert wait_until_gone(read_pid(tmp_path / "child.pid"))


def test_background_leftovers_are_stopped_when_the_shell_exits(tmp_path: Path) -> None:
    result = run(
        tmp_path,
        "sleep 100 & echo $! $(cut -d' ' -f22 /proc/$!/stat) > child.pid; echo done",
        timeout=30,
    )
    assert result.ok
    assert result.output == ["done"]
    assert wait_until_gone(read_pid(tmp_path / "child.pid"))


def test_cancelling_the_hook_kills_its_group(tmp_path: Path) -> None:
    hook = HookConfig(
        command="sleep 100 & echo $! $(cut -d' ' -f22 /proc/$!/stat) > child.pid; sleep 100; wait",
        timeout=60,
    )

    async def scenario() -> None:
        task = asyncio.create_task(run_hook("smoke", hook, tmp_path, BASE_ENV, tmp_path / "x.log"))
        deadline = time.monotonic() + 60
        while not (tmp_path / "child.pid").exists() or not (
            (tmp_path / "child.pid").read_text().endswith("\n")
        ):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    assert wait_until_gone(read_pid(tmp_path / "child.pid"))


def _marked_alive(mark: str) -> list[int]:
    """Live (not zombie) processes whose environment carries `mark`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            environ = (Path("/proc") / entry / "environ").read_bytes()
        except OSError:
            continue
        if mark.encode() in environ.split(b"\0"):
            stat = read_proc_stat(int(entry))
            if stat is not None and stat.state != "Z":
                found.append(int(entry))
    return found


def test_cancelling_while_the_hook_starts_kills_what_it_started(tmp_path: Path) -> None:
    # The shell runs before asyncio has connected its pipes: a cancellation in between must
    # still take down the group, including what the shell already started in the background.
    mark = f"CV_HOOK_MARK={os.getpid()}-{time.monotonic_ns()}"
    env = {**BASE_ENV, mark.split("=")[0]: mark.split("=")[1]}
    hook = HookConfig(command="sleep 100 & sleep 100 & wait", timeout=60)

    async def scenario(turns: int) -> None:
        task = asyncio.create_task(run_hook("smoke", hook, tmp_path, env, tmp_path / "x.log"))
        for _ in range(turns):  # where the cancellation lands: each turn of the loop once
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    for turns in range(8):
        asyncio.run(scenario(turns))
    deadline = time.monotonic() + 60
    while _marked_alive(mark):
        assert time.monotonic() < deadline, f"left running: {_marked_alive(mark)}"
        time.sleep(0.02)


def test_env_is_exactly_what_the_caller_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CV_HOOK_TEST_LEAK", "from-the-agent")
    env = {
        **BASE_ENV,
        "CONVEYOR_URL": "http://127.0.0.1:8080",
        "CONVEYOR_VERSION": "v42",
        "CONVEYOR_ENV": "staging",
        "API_TOKEN": "s3cr3t-value",
    }
    command = (
        'echo "$CONVEYOR_URL $CONVEYOR_VERSION $CONVEYOR_ENV"; echo "leak=${CV_HOOK_TEST_LEAK-}"'
    )
    result = run(tmp_path, command, env=env)
    assert result.ok
    assert result.output == ["http://127.0.0.1:8080 v42 staging", "leak="]
    # The environment itself is never written anywhere by run_hook.
    assert "s3cr3t-value" not in (tmp_path / "logs" / "deploy.log").read_text()


def test_cwd_is_respected(tmp_path: Path) -> None:
    tree = tmp_path / "release tree"
    tree.mkdir()
    (tree / "marker.txt").write_text("here\n")
    result = run(tmp_path, "pwd; cat marker.txt", cwd=tree)
    assert result.ok
    assert result.output == [str(tree), "here"]


def test_huge_output_is_streamed_and_the_tail_is_right(tmp_path: Path) -> None:
    count = 100_000
    payload = "x" * 90
    script = f"import sys\nfor i in range(1, {count + 1}):\n    sys.stdout.write(f'{{i}} {payload}\\n')\n"
    (tmp_path / "talk.py").write_text(script)
    tracemalloc.start()
    try:
        result = run(tmp_path, f"{sys.executable} talk.py", name="big")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.ok
    assert result.output == [f"{i} {payload}" for i in range(count - TAIL_LINES + 1, count + 1)]
    # ~10 MB went through; holding it (or the log) in memory would show here.
    assert peak < 3_000_000
    with open(tmp_path / "logs" / "deploy.log") as f:
        lines = 0
        last = ""
        for line in f:
            lines += 1
            last = line
    assert lines == count
    assert last == f"[big] {count} {payload}\n"


def test_a_line_without_newlines_is_cut_into_bounded_pieces(tmp_path: Path) -> None:
    result = run(tmp_path, "head -c 200000 /dev/zero | tr '\\0' a")
    assert result.ok
    assert [len(line) for line in result.output] == [65536, 65536, 65536, 200000 - 3 * 65536]


def test_missing_cwd_is_a_start_failure(tmp_path: Path) -> None:
    result = run(tmp_path, "true", cwd=tmp_path / "nope")
    assert not result.ok
    assert result.exit_code is None
    assert result.detail.startswith("could not start: ")
    assert result.output == []


def test_nul_byte_in_env_is_a_start_failure_that_hides_the_value(tmp_path: Path) -> None:
    result = run(tmp_path, "true", env={**BASE_ENV, "TOKEN": "abc\x00secret"})
    assert not result.ok
    assert result.detail == "could not start: command or environment contains a NUL byte"
    assert "secret" not in result.detail


def test_unwritable_log_is_reported(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    hook = HookConfig(command="true")
    result = asyncio.run(run_hook("smoke", hook, tmp_path, BASE_ENV, tmp_path / "file" / "d.log"))
    assert not result.ok
    assert result.detail.startswith("cannot write log ")


def test_timeout_and_leftovers_under_uvloop(tmp_path: Path) -> None:
    # The agent runs on uvloop, whose subprocess transport differs from asyncio's.
    try:
        import uvloop
    except ImportError:
        unavailable("uvloop is not installed")
    log = tmp_path / "deploy.log"
    hook = HookConfig(
        command="sleep 100 & echo $! $(cut -d' ' -f22 /proc/$!/stat) > a.pid; sleep 100; wait",
        timeout=0.5,
    )
    timed_out = uvloop.run(run_hook("smoke", hook, tmp_path, BASE_ENV, log))
    assert timed_out.detail == "timed out after 0.5s"
    assert wait_until_gone(read_pid(tmp_path / "a.pid"))
    hook = HookConfig(
        command="sleep 100 & echo $! $(cut -d' ' -f22 /proc/$!/stat) > b.pid; echo done", timeout=30
    )
    finished = uvloop.run(run_hook("smoke", hook, tmp_path, BASE_ENV, log))
    assert (finished.ok, finished.output) == (True, ["done"])
    assert wait_until_gone(read_pid(tmp_path / "b.pid"))
