"""The agent's backup rotation, on a temp directory."""

from __future__ import annotations

import os
from pathlib import Path

from conveyor.agent import backups


def test_the_agent_keeps_its_newest_backups_and_leaves_others_alone(tmp_path: Path) -> None:
    folder = tmp_path / "backups"
    assert backups.due(folder, 3600.0, now=1000.0)  # none yet
    assert not backups.due(folder, 0.0, now=1000.0)  # 0 turns them off
    folder.mkdir()
    names = [f"daily-2026010{d}T000000Z.db" for d in range(1, 10)]
    for i, name in enumerate(names):
        (folder / name).write_bytes(b"x")
        os.utime(folder / name, (1000.0 + i, 1000.0 + i))
    (folder / "state-20250101T000000Z.db").write_bytes(b"by hand")
    (folder / "daily-20270101T000000Z.db.part").write_bytes(b"half")
    assert not backups.due(folder, 3600.0, now=1008.0 + 3599)
    assert backups.due(folder, 3600.0, now=1008.0 + 3600)
    gone = backups.prune(folder, 7)
    assert [p.name for p in gone] == names[:2]
    left = sorted(p.name for p in folder.iterdir())
    assert left == sorted(
        [*names[2:], "state-20250101T000000Z.db", "daily-20270101T000000Z.db.part"]
    )
