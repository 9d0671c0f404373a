"""Markers: which process groups are known, the project's id (plain values)."""

from __future__ import annotations

from pathlib import Path

from conveyor import markers


def group(pgid: int, leader_start: int) -> markers.Marked:
    return markers.Marked(pgid, leader_start, (pgid,), "shop", "dev", "web", "blue", "v1", "x")


def test_a_group_is_known_by_its_id_and_its_leaders_start_time() -> None:
    found = [group(10, 500), group(20, 600), group(30, 0), group(40, 0)]
    known = [
        {"pid": 10, "pgid": 10, "proc_start": 500},  # the same process
        {"pid": 20, "pgid": 20, "proc_start": 999},  # pid 20 reused by a stranger since
        {"pid": 30, "pgid": 30, "proc_start": 700},  # leader gone, its group lives on
        {"garbage": True},
    ]
    assert [m.pgid for m in markers.unknown(found, known)] == [20, 40]


def test_the_project_id_is_the_home_hashed(tmp_path: Path) -> None:
    a, b = markers.project_id(tmp_path / "a"), markers.project_id(tmp_path / "b")
    assert a != b and len(a) == 16 and str(tmp_path) not in a
    start = markers.for_start(a)
    assert start[markers.PROJECT_ID] == a
    assert start[markers.INSTANCE_ID] != markers.for_start(a)[markers.INSTANCE_ID]
