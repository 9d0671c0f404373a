"""Docker's timestamped log lines become the records `conveyor logs` reads."""

from __future__ import annotations

from pathlib import Path

from conveyor.runtimes import docker_logs
from conveyor.runtimes.logfile import read, tail_lines


def test_chunks_become_one_record_per_line_whatever_their_cut() -> None:
    chunks = [
        b"2026-12-06T01:00:00.1Z one\n2026-12-06T01:00:0",
        b"0.2Z two\n2026-12-06T01:00:01Z x",
    ]
    recs = list(docker_logs.records("stderr", docker_logs._lines(chunks)))
    lines = read(r.decode().rstrip("\n") for r in recs)
    assert [(line.time, line.stream, line.text) for line in lines] == [
        ("2026-12-06T01:00:00.1Z", "stderr", "one"),
        ("2026-12-06T01:00:00.2Z", "stderr", "two"),
        ("2026-12-06T01:00:01Z", "stderr", "x"),
    ]


def test_an_adopted_workload_resumes_after_the_last_record(tmp_path: Path) -> None:
    log = tmp_path / "dev" / "web" / "blue.log"
    assert docker_logs.last_time(log) is None
    docker_logs.header(log, "--- start ---")
    recs = docker_logs.records("stdout", [b"1970-01-01T00:00:05.5Z later"])
    log.open("ab").write(b"".join(recs))
    assert docker_logs.last_time(log) == 5.5
    assert tail_lines(log, 1)[0].text == "later"
