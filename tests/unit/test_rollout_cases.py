"""The rollout machine, case by case: every decision it makes, in words and actions.

Each file in rollout_cases/ is one scenario: the services, the options and the events the engine
would feed. Its `transcript` is what the machine must answer: after each event, the state people
see (phase, weight, step, waiting, reason, the health and analysis tallies) and every action with
its exact text. One runner plays them all, as pyinfra's operation specs do.

A new case gets its transcript from the machine with `python tests/unit/test_rollout_cases.py
--write` (it rewrites the transcripts of every case): read the diff of the transcripts before
committing it, since it is what the machine is now held to.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from conveyor.core import rollout as r

CASES = Path(__file__).parent / "rollout_cases"
EVENTS: dict[str, type[Any]] = {
    cls.__name__: cls
    for cls in (
        r.Probe,
        r.Crash,
        r.Tick,
        r.Switched,
        r.SwitchFailed,
        r.WeightsSet,
        r.Drained,
        r.SwitchedBack,
        r.HookDone,
        r.Measured,
        r.Promote,
        r.Abort,
    )
}


def plans(case: dict[str, Any]) -> tuple[r.ServicePlan, ...]:
    return tuple(r.ServicePlan(**p) for p in case["plans"])


def options(case: dict[str, Any]) -> r.Options:
    raw = dict(case.get("options", {}))
    raw["steps"] = tuple(r.Step(**s) for s in raw.get("steps", ()))
    raw["checks"] = tuple(r.CheckPlan(**c) for c in raw.get("checks", ()))
    return r.Options(**raw)


def describe(state: r.Rollout) -> str:
    services = ", ".join(
        f"{s.plan.name}:{s.status}/{s.passes}/{s.failures}/{s.last_detail!r}"
        for s in state.services
    )
    checks = ", ".join(
        f"{c.plan.name}:{c.failures}/{'conclusive' if c.conclusive else '-'}/{c.last!r}"
        for c in state.checks
    )
    return (
        f"{state.phase} since={state.phase_started_at:g} weight={state.weight} "
        f"step={state.step_index} analyzing={state.analyzing} waiting={state.waiting!r} "
        f"reason={state.reason!r} services=[{services}] checks=[{checks}]"
    )


def play(case: dict[str, Any]) -> list[str]:
    state, actions = r.begin(plans(case), case.get("now", 0.0), options(case))
    lines = [f"begin -> {describe(state)}", *(f"  {a!r}" for a in actions)]
    for name, *args in case["events"]:
        event = EVENTS[name](*args)
        state, actions = r.step(state, event)
        lines.append(f"{event!r} -> {describe(state)}")
        lines.extend(f"  {a!r}" for a in actions)
    return lines


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


@pytest.mark.parametrize("path", sorted(CASES.glob("*.json")), ids=lambda p: p.stem)
def test_case(path: Path) -> None:
    case = load(path)
    assert play(case) == case["transcript"]


def test_there_are_cases() -> None:
    assert len(list(CASES.glob("*.json"))) >= 10


def dump(case: dict[str, Any]) -> str:
    """JSON with one event, plan or transcript line per line: diffs read like the transcript."""

    def one(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False)

    def block(key: str, items: list[Any]) -> str:
        inner = ",\n".join(f"  {one(item)}" for item in items)
        return f"{one(key)}: [\n{inner}\n ]" if items else f"{one(key)}: []"

    parts = [f"{one('about')}: {one(case['about'])}", block("plans", case["plans"])]
    parts.append(f"{one('options')}: {one(case.get('options', {}))}")
    parts += [block("events", case["events"]), block("transcript", case["transcript"])]
    return "{\n " + ",\n ".join(parts) + "\n}\n"


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    for path in sorted(CASES.glob("*.json")):
        case = load(path)
        case["transcript"] = play(case)
        path.write_text(dump(case))
        print(f"wrote {path}")
