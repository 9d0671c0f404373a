"""The audit hash chain (pure): an edit, a deletion and a reordering are each found, and named."""

from __future__ import annotations

from typing import Any

import pytest

from conveyor.core.audit import GENESIS, entry_hash, verify


def _chain(n: int) -> list[dict[str, Any]]:
    entries: list[dict[str, Any]] = []
    prev = GENESIS
    for i in range(1, n + 1):
        entry: dict[str, Any] = {
            "id": i * 2,  # ids may skip numbers: only the hashes decide
            "at": f"2026-11-30T09:00:{i:02d}+00:00",
            "actor": "alice",
            "action": "deploy",
            "app": "shop",
            "environment": "dev",
            "target": f"v{i}",
            "outcome": "ok",
            "detail": "",
            "data": {"deployment": i},
            "prev_hash": prev,
        }
        entry["hash"] = prev = entry_hash(prev, entry)
        entries.append(entry)
    return entries


def test_an_untouched_chain_holds() -> None:
    assert verify(_chain(5)) == (5, None)
    assert verify([]) == (0, None)


@pytest.mark.parametrize("field", ["at", "actor", "action", "target", "outcome", "detail", "data"])
def test_an_edit_is_found_at_the_edited_entry(field: str) -> None:
    entries = _chain(5)
    entries[2][field] = {"deployment": 99} if field == "data" else "forged"
    count, broken = verify(entries)
    assert count == 3 and broken is not None
    assert broken.id == 6 and "edited" in broken.reason


def test_an_edit_with_its_hash_recomputed_is_found_at_the_next_entry() -> None:
    entries = _chain(5)
    entries[2]["outcome"] = "refused"
    entries[2]["hash"] = entry_hash(entries[2]["prev_hash"], entries[2])
    broken = verify(entries)[1]
    assert broken is not None and broken.id == 8 and "(#6)" in broken.reason


@pytest.mark.parametrize("index", [0, 2, 4])
def test_a_deletion_is_found_at_the_entry_after_it(index: int) -> None:
    entries = _chain(6)
    del entries[index]
    broken = verify(entries)[1]
    assert broken is not None and broken.id == (index + 2) * 2
    assert "deleted" in broken.reason


def test_a_reordering_is_found_at_the_first_moved_entry() -> None:
    entries = _chain(5)
    entries[1], entries[3] = entries[3], entries[1]
    broken = verify(entries)[1]
    assert broken is not None and broken.id == 8  # the entry now in second place


def test_moving_content_between_positions_is_an_edit() -> None:
    entries = _chain(3)
    # Row 4 keeps its id but gets row 6's content and hashes: the id is part of the hash.
    moved = {**entries[2], "id": 4, "prev_hash": entries[1]["prev_hash"]}
    entries[1] = moved
    broken = verify(entries)[1]
    assert broken is not None and broken.id == 4
