"""The agent's record of its runs (agent.json) and the line a command prints when it had to
start the agent (issue 7)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from conveyor.agent import runs


def test_a_record_without_stopped_at_is_a_crash_last_seen_at_its_mtime(tmp_path: Path) -> None:
    runs.write(tmp_path, {"pid": 41, "started_at": 1000.0})
    os.utime(tmp_path / "agent.json", (2000.0, 2000.0))
    ended = runs.how_it_ended(runs.read(tmp_path))
    assert ended == {"pid": 41, "started_at": 1000.0, "ended": "crashed", "at": 2000.0}


def test_a_clean_stop_is_recorded_as_such(tmp_path: Path) -> None:
    runs.write(tmp_path, {"pid": 41, "started_at": 1000.0, "stopped_at": 1500.0})
    ended = runs.how_it_ended(runs.read(tmp_path))
    assert ended is not None and ended["ended"] == "stopped" and ended["at"] == 1500.0


def test_no_record_or_a_garbled_one_is_no_previous_run(tmp_path: Path) -> None:
    assert runs.how_it_ended(runs.read(tmp_path)) is None
    (tmp_path / "agent.json").write_text("{not json")
    assert runs.read(tmp_path) is None
    (tmp_path / "agent.json").write_text(json.dumps([1, 2]))
    assert runs.read(tmp_path) is None


def test_touch_moves_last_seen(tmp_path: Path) -> None:
    runs.write(tmp_path, {"pid": 1})
    os.utime(tmp_path / "agent.json", (1.0, 1.0))
    runs.touch(tmp_path)
    assert (runs.read(tmp_path) or {})["last_seen"] > 1.0
    runs.touch(tmp_path / "missing")  # never raises


def test_the_line_names_the_last_sighting_and_each_interrupted_deployment() -> None:
    seen = time.mktime((2026, 1, 2, 21, 22, 49, 0, 0, -1))
    facts = {
        "previous": {"ended": "crashed", "at": seen},
        "interrupted": [
            {"deployment": 2, "result": "ended on v1 (all traffic on v1)"},
        ],
    }
    assert runs.started_text(facts) == (
        "the agent was not running (last seen 2026-01-02 21:22:49); started it — "
        "deployment #2 was interrupted and ended on v1 (all traffic on v1)"
    )
    stopped = {"previous": {"ended": "stopped", "at": time.time()}, "interrupted": []}
    assert runs.started_text(stopped).startswith("the agent was not running (stopped at ")
    assert runs.started_text(stopped).endswith("); started it")
    first = runs.started_text({"previous": None})
    assert first == "the agent was not running (never ran here before); started it"
