"""The event stream's delivery cursor over ids that may commit out of order (pure: no I/O).

On PostgreSQL an id comes from a sequence when the row is inserted, but transactions commit in
any order: id 10 may become visible after id 11. A reader that moved its cursor to 11 would never
send 10. `Cursor` does what event-store projections do: ids above the highest seen that are not
there yet are *gaps*, remembered with the time they were first seen missing; the delivery cursor
stays below the first gap; each poll reads the gaps again; a gap that fills is delivered in its
place, and one still empty after `wait` seconds is given up (a rolled-back transaction leaves a
permanent hole).

Guarantees, whatever the commit order and the poll timing:
- every id is delivered at most once, and ids are delivered in strictly increasing order;
- an id whose row commits within `wait` seconds of the id being taken is delivered (a gap is
  first seen missing after the id was taken, and is given up only `wait` after that);
- a gap is given up at the first poll at least `wait` after it was first seen missing.

Gaps are kept as ranges (lo, hi): a sequence that jumps by a million costs one range, not a
million ids. With `wait` 0 (SQLite, where writers are serialized) nothing is ever waited for.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass, field

MAX_GAPS = 1000  # ranges waited for at once; past it the oldest are given up early


@dataclass
class Gap:
    lo: int
    hi: int
    since: float  # when first seen missing (a monotonic clock)


@dataclass(frozen=True)
class Advance:
    deliver: list[int]  # ids now deliverable, in increasing order
    cursor: int  # every id up to it was delivered or given up
    expired: list[tuple[int, int]]  # gaps given up in this step (inclusive ranges)


@dataclass
class Cursor:
    delivered: int  # the delivery cursor
    wait: float  # how long a gap is waited for (seconds)
    high: int = -1  # the highest id seen (starts at `delivered`)
    gaps: list[Gap] = field(
        default_factory=list
    )  # sorted by lo, disjoint, within (delivered, high]
    held: list[int] = field(default_factory=list)  # seen above the first gap, not delivered yet

    def __post_init__(self) -> None:
        if self.high < self.delivered:
            self.high = self.delivered

    def ranges(self) -> list[tuple[int, int]]:
        """The gaps to read again (inclusive ranges), besides the ids above `high`."""
        return [(g.lo, g.hi) for g in self.gaps]

    def advance(self, seen: Iterable[int], now: float) -> Advance:
        """Take what one poll read (ids above `high`, ascending, possibly cut at a limit, and the
        ids found in the gaps) at time `now`: what may be delivered now, in order."""
        for i in sorted(set(seen)):
            if i > self.high:
                if i > self.high + 1:
                    self.gaps.append(Gap(self.high + 1, i - 1, now))
                self.held.append(i)  # ascending: the list stays sorted
                self.high = i
            elif i > self.delivered and self._fill(i):
                bisect.insort(self.held, i)
        expired = [(g.lo, g.hi) for g in self.gaps if now - g.since >= self.wait]
        self.gaps = [g for g in self.gaps if now - g.since < self.wait]
        if len(self.gaps) > MAX_GAPS:
            oldest = sorted(self.gaps, key=lambda g: g.since)[: len(self.gaps) - MAX_GAPS]
            expired += [(g.lo, g.hi) for g in oldest]
            self.gaps = [g for g in self.gaps if g not in oldest]
        self.delivered = self.gaps[0].lo - 1 if self.gaps else self.high
        cut = bisect.bisect_right(self.held, self.delivered)
        deliver, self.held = self.held[:cut], self.held[cut:]
        return Advance(deliver, self.delivered, sorted(expired))

    def _fill(self, i: int) -> bool:
        """Take `i` out of the gap that holds it; False if no gap holds it (already known)."""
        at = bisect.bisect_right([g.lo for g in self.gaps], i) - 1
        if at < 0 or self.gaps[at].hi < i:
            return False
        g = self.gaps.pop(at)
        parts = [Gap(lo, hi, g.since) for lo, hi in ((g.lo, i - 1), (i + 1, g.hi)) if lo <= hi]
        self.gaps[at:at] = parts
        return True
