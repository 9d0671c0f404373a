"""The audit log's hash chain (pure): each entry carries the SHA-256 of the one before it.

An entry's hash covers its position (id), its fields and the previous entry's hash. Editing an
entry changes its hash; deleting one leaves the next pointing at a hash nobody has; moving one
puts it where its recorded predecessor is not. `verify` walks the entries in order and names
the first one where the chain does not hold. Ids may skip numbers (a database can burn one on a
rolled-back insert): only the hashes decide.

What it cannot show: entries cut off at the end, or a chain recomputed whole by someone who can
write the database. Copy `conveyor audit --json` elsewhere to keep the end of the chain.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

GENESIS = "0" * 64  # the "previous hash" of the first entry
# What an entry's hash covers, besides the previous hash.
FIELDS = (
    "id",
    "at",
    "actor",
    "action",
    "app",
    "environment",
    "target",
    "outcome",
    "detail",
    "data",
)


def entry_hash(prev_hash: str, entry: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of `prev_hash` and the entry's FIELDS, as canonical JSON (`at` as ISO text)."""
    fields = {name: entry[name] for name in FIELDS}
    canonical = json.dumps(
        {"prev": prev_hash, **fields}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Break:
    """The first entry where the chain does not hold, and why."""

    id: int
    reason: str


def verify(entries: Iterable[Mapping[str, Any]]) -> tuple[int, Break | None]:
    """(entries checked, the first break or None). Each entry has FIELDS, prev_hash and hash,
    in the order they were appended (by id)."""
    expected_prev = GENESIS
    count = 0
    previous_id: int | None = None
    for entry in entries:
        count += 1
        ident = int(entry["id"])
        if entry["prev_hash"] != expected_prev:
            before = f"#{previous_id}" if previous_id is not None else "the start of the log"
            return count, Break(
                ident,
                f"the entry recorded before it is not the one found before it ({before}): an "
                "entry between them was deleted, or entries were edited or reordered",
            )
        if entry_hash(entry["prev_hash"], entry) != entry["hash"]:
            return count, Break(ident, "its content does not match its hash: it was edited")
        expected_prev = str(entry["hash"])
        previous_id = ident
    return count, None
