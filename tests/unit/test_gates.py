"""The promotion decision (conveyor.core.gates): plain values in, a decision out; the clock injected."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conveyor.core.gates import (
    ApprovalFact,
    CheckFact,
    DateWindow,
    DeploymentFact,
    Facts,
    Override,
    ReleaseFact,
    Rules,
    WeeklyWindow,
    check_order,
    decide,
    freeze_in_force,
    parse_freeze,
)

# A Monday.
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
PARIS = ZoneInfo("Europe/Paris")


def release(version: str = "v7", at: datetime = T0, **kw: object) -> ReleaseFact:
    return ReleaseFact(version, at, **kw)  # type: ignore[arg-type]


def dep(
    id: int,
    env: str,
    version: str,
    outcome: str = "succeeded",
    at: datetime = T0,
    kind: str = "deploy",
) -> DeploymentFact:
    return DeploymentFact(id, env, version, kind, outcome, at, at + timedelta(seconds=30))


def approval(
    actor: str,
    version: str = "v7",
    env: str = "production",
    at: datetime = T0,
    decision: str = "approve",
    withdrawn: bool = False,
) -> ApprovalFact:
    return ApprovalFact(version, env, actor, decision, at, withdrawn=withdrawn)


def facts(**kw: object) -> Facts:
    base: dict[str, object] = {
        "release": release(),
        "created": {"v6": T0 - timedelta(days=1), "v7": T0, "v8": T0 + timedelta(days=1)},
    }
    base.update(kw)
    return Facts(**base)  # type: ignore[arg-type]


def lines(decision: object) -> list[str]:
    return [f"{r.line()} — {r.remedy}" for r in decision.unmet]  # type: ignore[attr-defined]


# --- no gates, and each gate refusing, then passing once met -----------------------------------


def test_no_gates_allows_anything() -> None:
    decision = decide("dev", Rules(), facts(), "ann", T0)
    assert decision.allowed and decision.results == ()


def test_after_refuses_until_the_release_succeeded_there() -> None:
    rules = Rules(after="staging")
    refused = decide("production", rules, facts(), "ann", T0)
    assert lines(refused) == [
        "staging: v7 has not succeeded there — deploy it with `conveyor deploy v7 --env staging`"
    ]
    failed = facts(deployments=(dep(1, "staging", "v7", "failed"),))
    assert not decide("production", rules, failed, "ann", T0).allowed
    other_env = facts(deployments=(dep(1, "dev", "v7"),))
    assert not decide("production", rules, other_env, "ann", T0).allowed
    done = facts(deployments=(dep(1, "staging", "v7", "failed"), dep(2, "staging", "v7")))
    decision = decide("production", rules, done, "ann", T0)
    assert decision.allowed
    assert decision.results[0].detail == "v7 live there (deployment #2)"


def test_after_refuses_a_release_rolled_back_or_replaced_by_an_older_one() -> None:
    rules = Rules(after="staging")
    rolled = facts(deployments=(dep(1, "staging", "v7", "rolled_back"),))
    assert lines(decide("production", rules, rolled, "ann", T0))[0].startswith(
        "staging: v7 was rolled back there (deployment #1)"
    )
    older = facts(deployments=(dep(1, "staging", "v7"), dep(2, "staging", "v6")))
    assert "replaced there by the older v6" in lines(decide("production", rules, older, "a", T0))[0]
    newer = facts(deployments=(dep(1, "staging", "v7"), dep(2, "staging", "v8")))
    assert decide("production", rules, newer, "ann", T0).allowed
    # A stop takes v7 down without replacing it: it still succeeded there.
    stopped = facts(deployments=(dep(1, "staging", "v7"), dep(2, "staging", "v7", kind="stop")))
    assert decide("production", rules, stopped, "ann", T0).allowed


def test_soak_counts_from_going_live_and_says_how_long_is_left() -> None:
    rules = Rules(after="staging", soak=1800.0)
    live = facts(deployments=(dep(1, "staging", "v7", at=T0),))
    went_live = T0 + timedelta(seconds=30)
    early = decide("production", rules, live, "ann", went_live + timedelta(minutes=12))
    assert lines(early) == [
        "soak: v7 has been live in staging for 12m of 30m — wait 18m (until 2026-11-30 12:30 UTC)"
    ]
    # The edge: one second short, then exactly the soak.
    short = went_live + timedelta(seconds=1799)
    assert not decide("production", rules, live, "ann", short).allowed
    assert decide("production", rules, live, "ann", went_live + timedelta(minutes=30)).allowed


def test_soak_is_not_met_by_a_release_replaced_too_early() -> None:
    rules = Rules(after="staging", soak=1800.0)
    replaced = facts(
        deployments=(
            dep(1, "staging", "v7", at=T0),
            dep(2, "staging", "v8", at=T0 + timedelta(minutes=10)),
        )
    )
    decision = decide("production", rules, replaced, "ann", T0 + timedelta(hours=5))
    assert lines(decision) == [
        "soak: v7 was live in staging for 10m of 30m before v8 replaced it — deploy it to "
        "staging again and let it run 30m"
    ]
    never = decide("production", rules, facts(), "ann", T0)
    assert [r.gate for r in never.unmet] == ["after", "soak"]


def test_checks_need_a_passing_last_result_for_this_release() -> None:
    rules = Rules(checks=("tests", "e2e"))
    none = decide("staging", rules, facts(), "ann", T0)
    assert lines(none)[0] == (
        "check tests: no result for v7 — run `conveyor check run tests --release v7`, or record "
        "CI's with `conveyor check record tests --release v7 --passed`"
    )
    results = (
        CheckFact("tests", "v7", True, T0, "ci"),
        CheckFact("e2e", "v7", True, T0, "ci"),
        CheckFact("e2e", "v7", False, T0 + timedelta(minutes=1), "ci", "https://ci/42"),
        CheckFact("tests", "v6", False, T0 + timedelta(minutes=2), "ci"),
    )
    failed = decide("staging", rules, facts(checks=results), "ann", T0)
    assert [r.line() for r in failed.unmet] == ["check e2e: failed for v7 by ci (https://ci/42)"]
    fixed = (*results, CheckFact("e2e", "v7", True, T0 + timedelta(minutes=3)))
    assert decide("staging", rules, facts(checks=fixed), "ann", T0).allowed


def test_approvals_four_eyes_the_issue_sentence() -> None:
    rules = Rules(approvals=2, approvers=("release-manager", "sre-oncall", "team-lead"))
    given_ = (approval("sre-oncall"), approval("team-lead"))
    decision = decide("production", rules, facts(approvals=given_), "team-lead", T0)
    assert [r.line() for r in decision.unmet] == [
        "approvals: 1 of 2 — sre-oncall approved; team-lead asked for this deploy and cannot "
        "approve it"
    ]
    assert decision.unmet[0].remedy == (
        "1 more approval from release-manager: `conveyor approve v7 --env production` "
        "(not by whoever deploys)"
    )
    # Someone else deploys: both count.
    assert decide("production", rules, facts(approvals=given_), "release-manager", T0).allowed


def test_approvals_allow_list_distinct_people_and_withdrawals() -> None:
    rules = Rules(approvals=2, approvers=("ann", "bob"))
    outsider = (approval("ann"), approval("mallory"))
    decision = decide("production", rules, facts(approvals=outsider), "zed", T0)
    assert decision.unmet[0].detail == (
        "1 of 2 — ann approved; mallory approved but is not one of the approvers"
    )
    twice = (approval("ann"), approval("ann", at=T0 + timedelta(minutes=1)))
    assert not decide("production", rules, facts(approvals=twice), "zed", T0).allowed
    withdrawn = (approval("ann"), approval("bob", withdrawn=True))
    assert not decide("production", rules, facts(approvals=withdrawn), "zed", T0).allowed
    both = (approval("ann"), approval("bob"))
    assert decide("production", rules, facts(approvals=both), "zed", T0).allowed
    # Without an allow-list anyone but the deployer counts.
    anyone = Rules(approvals=2)
    assert decide("production", anyone, facts(approvals=outsider), "zed", T0).allowed


def test_approvals_are_for_one_release_and_one_environment() -> None:
    rules = Rules(approvals=1)
    elsewhere = (approval("ann", env="staging"), approval("bob", version="v6"))
    assert not decide("production", rules, facts(approvals=elsewhere), "zed", T0).allowed


def test_an_approval_is_void_once_the_release_went_live_there() -> None:
    rules = Rules(approvals=1)
    used = facts(
        approvals=(approval("ann"),),
        deployments=(dep(1, "production", "v7", at=T0 + timedelta(minutes=5)),),
    )
    assert not decide("production", rules, used, "zed", T0 + timedelta(hours=1)).allowed
    # A deploy that failed before going live does not use it up.
    failed = facts(
        approvals=(approval("ann"),),
        deployments=(dep(1, "production", "v7", "failed", at=T0 + timedelta(minutes=5)),),
    )
    assert decide("production", rules, failed, "zed", T0 + timedelta(hours=1)).allowed
    # An approval given after that deployment counts again.
    again = facts(
        approvals=(approval("ann"), approval("bob", at=T0 + timedelta(hours=1))),
        deployments=used.deployments,
    )
    assert decide("production", rules, again, "zed", T0 + timedelta(hours=2)).allowed


def test_an_approval_is_void_once_a_newer_release_is_approved() -> None:
    rules = Rules(approvals=1)
    later = T0 + timedelta(minutes=5)
    superseded = facts(approvals=(approval("ann"), approval("bob", version="v8", at=later)))
    decision = decide("production", rules, superseded, "zed", later)
    assert decision.unmet[0].detail == "0 of 1"
    # An older release approved later does not void it.
    older = facts(approvals=(approval("ann"), approval("bob", version="v6", at=later)))
    assert decide("production", rules, older, "zed", later).allowed


def test_a_rejection_blocks_until_withdrawn() -> None:
    rejected = approval("bob", decision="reject")
    with_comment = ApprovalFact("v7", "production", "bob", "reject", T0, "breaks checkout")
    decision = decide("production", Rules(), facts(approvals=(with_comment,)), "ann", T0)
    assert lines(decision) == [
        "rejected: bob rejected v7 for production: breaks checkout — it blocks until bob (or "
        "an admin) withdraws it with `conveyor reject v7 --env production --withdraw`"
    ]
    approved = (rejected, approval("cat"))
    assert not decide("production", Rules(approvals=1), facts(approvals=approved), "a", T0).allowed
    withdrawn = (approval("bob", decision="reject", withdrawn=True),)
    assert decide("production", Rules(), facts(approvals=withdrawn), "ann", T0).allowed


def test_require_tag() -> None:
    rules = Rules(require_tag=True)
    untagged = facts(release=release(commit="0123456789abcdef"))
    assert lines(decide("production", rules, untagged, "ann", T0)) == [
        "tag: no git tag pointed at 0123456789ab when v7 was created — tag the commit "
        "(`git tag <name> 0123456789ab`) and create a new release from it"
    ]
    no_git = facts(release=release())
    assert "not created from a git commit" in lines(decide("p", rules, no_git, "ann", T0))[0]
    tagged = facts(release=release(commit="0123456789abcdef", tags=("v7.0.0",)))
    assert decide("production", rules, tagged, "ann", T0).results[0].detail == (
        "v7 is tagged v7.0.0"
    )


# --- freeze windows, at their edges ------------------------------------------------------------


def at(text: str, tz: ZoneInfo | None = None) -> datetime:
    """A wall time in `tz` (UTC by default), as an aware datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=tz or UTC)


WEEKEND = Rules(freeze=(parse_freeze("Fri 16:00 - Mon 08:00"),))


@pytest.mark.parametrize(
    ("when", "frozen"),
    [
        ("2026-12-04 15:59:59", False),  # Friday, a second before
        ("2026-12-04 16:00:00", True),  # the start is inside
        ("2026-12-06 12:00:00", True),  # Sunday
        ("2026-12-07 07:59:59", True),  # Monday, a second before the end
        ("2026-12-07 08:00:00", False),  # the end is outside
        ("2026-12-02 12:00:00", False),  # Wednesday
    ],
)
def test_weekly_freeze_edges(when: str, frozen: bool) -> None:
    decision = decide("production", WEEKEND, facts(), "ann", at(when))
    assert decision.allowed is not frozen


def test_freeze_says_until_when_and_how_to_override() -> None:
    decision = decide("production", WEEKEND, facts(), "ann", at("2026-12-05 10:00"))
    assert lines(decision) == [
        'freeze: "Fri 16:00 - Mon 08:00" is in force until 2026-12-07 08:00 UTC — wait until '
        'then, or an admin deploys with --override-freeze --reason "..."'
    ]


def test_freeze_override_by_an_admin_only() -> None:
    rules = Rules(freeze=WEEKEND.freeze, admins=("alice",))
    sunday = at("2026-12-06 10:00")
    by_admin = decide("production", rules, facts(), "alice", sunday, Override("alice", "hotfix"))
    assert by_admin.allowed
    assert by_admin.results[0].detail.endswith("overridden by alice: hotfix")
    by_other = decide("production", rules, facts(), "bob", sunday, Override("bob", "hotfix"))
    assert lines(by_other) == [
        'freeze: "Fri 16:00 - Mon 08:00" is in force until 2026-12-07 08:00 UTC; bob may not '
        "override it — wait until then, or ask an admin (alice) to deploy with --override-freeze"
    ]


def test_date_freeze_includes_its_last_day() -> None:
    rules = Rules(freeze=(parse_freeze("2026-12-24 - 2026-12-27"),))
    assert decide("p", rules, facts(), "a", at("2026-12-23 23:59:59")).allowed
    assert not decide("p", rules, facts(), "a", at("2026-12-24 00:00")).allowed
    assert not decide("p", rules, facts(), "a", at("2026-12-27 23:59:59")).allowed
    assert decide("p", rules, facts(), "a", at("2026-12-28 00:00")).allowed


def test_date_freeze_with_times() -> None:
    window = parse_freeze("2026-12-24 18:00 - 2026-12-27 08:00")
    assert isinstance(window, DateWindow)
    rules = Rules(freeze=(window,))
    assert decide("p", rules, facts(), "a", at("2026-12-24 17:59")).allowed
    assert not decide("p", rules, facts(), "a", at("2026-12-24 18:00")).allowed
    assert decide("p", rules, facts(), "a", at("2026-12-27 08:00")).allowed


def test_freeze_is_read_in_the_configured_time_zone() -> None:
    rules = Rules(freeze=WEEKEND.freeze, tz=PARIS, timezone="Europe/Paris")
    # 15:30 UTC on a Friday in winter is 16:30 in Paris: frozen there, not in UTC.
    friday = at("2026-12-04 15:30")
    assert not decide("p", rules, facts(), "a", friday).allowed
    assert decide("p", WEEKEND, facts(), "a", friday).allowed
    assert decide("p", rules, facts(), "a", at("2026-12-04 14:59")).allowed
    ends = freeze_in_force(rules.freeze, friday, PARIS)
    assert ends is not None and ends[1] == at("2026-12-07 08:00", PARIS)
    assert (
        "until 2026-12-07 08:00 Europe/Paris" in lines(decide("p", rules, facts(), "a", friday))[0]
    )


def test_adjoining_windows_are_one_freeze() -> None:
    windows = (parse_freeze("Fri 16:00 - Sat 00:00"), parse_freeze("Sat 00:00 - Mon 08:00"))
    found = freeze_in_force(windows, at("2026-12-04 17:00"), UTC)
    assert found is not None and found[1] == at("2026-12-07 08:00")
    whole_week = (parse_freeze("Mon 00:00 - Thu 00:00"), parse_freeze("Thu 00:00 - Mon 00:00"))
    assert freeze_in_force(whole_week, at("2026-12-02 10:00"), UTC) is not None


def test_freeze_parsing() -> None:
    window = parse_freeze("  friday 16:00 - MON 8:00 ")
    assert window == WeeklyWindow("friday 16:00 - MON 8:00", 4 * 1440 + 960, 480)
    with pytest.raises(ValueError, match="starts when it ends"):
        parse_freeze("Mon 08:00 - Mon 08:00")
    with pytest.raises(ValueError, match="invalid freeze window"):
        parse_freeze("Fri 16:00-Mon 08:00")
    with pytest.raises(ValueError, match="a freeze window is a string"):
        parse_freeze(None)
    with pytest.raises(ValueError, match="must be timezone-aware"):
        freeze_in_force([window], datetime(2026, 1, 1), UTC)


@given(
    start=st.integers(0, 7 * 1440 - 1),
    length=st.integers(1, 7 * 1440 - 1),
    probe=st.integers(0, 7 * 1440 * 60 - 1),
)
def test_weekly_window_holds_exactly_its_minutes(start: int, length: int, probe: int) -> None:
    """In force iff the probe's minute of the week lies in [start, start+length) (wrapping), and
    then it ends at start+length: the first moment no longer frozen."""
    end = (start + length) % (7 * 1440)
    day = lambda m: ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")[m // 1440]  # noqa: E731
    text = f"{day(start)} {start % 1440 // 60}:{start % 60:02} - {day(end)} {end % 1440 // 60}:{end % 60:02}"
    window = parse_freeze(text)
    monday = datetime(2026, 11, 30, tzinfo=UTC)
    now = monday + timedelta(seconds=probe)
    minute = probe // 60
    inside = (minute - start) % (7 * 1440) < length
    found = freeze_in_force([window], now, UTC)
    assert (found is not None) is inside
    if found is not None:
        ends = found[1]
        assert now < ends <= now + timedelta(minutes=length)
        assert freeze_in_force([window], ends, UTC) is None
        assert freeze_in_force([window], ends - timedelta(seconds=1), UTC) is not None


# --- properties of the decision ----------------------------------------------------------------

people = st.sampled_from(["ann", "bob", "cat", "dan"])
approvals_st = st.lists(
    st.builds(
        approval,
        people,
        version=st.sampled_from(["v6", "v7", "v8"]),
        env=st.sampled_from(["production", "staging"]),
        at=st.integers(0, 100).map(lambda m: T0 + timedelta(minutes=m)),
        decision=st.sampled_from(["approve", "approve", "reject"]),
        withdrawn=st.booleans(),
    ),
    max_size=8,
)


@given(approvals_st, people, st.integers(1, 3))
def test_the_deployer_never_counts(given_: list[ApprovalFact], requester: str, need: int) -> None:
    """Four eyes: the deployer's own approvals of this release here, removed, change nothing.

    (Their approval of a newer release is a fact about that release: it voids this one's.)
    """
    rules = Rules(approvals=need)
    now = T0 + timedelta(hours=3)
    with_own = decide("production", rules, facts(approvals=tuple(given_)), requester, now)
    own = ("v7", "production", "approve")
    others = tuple(
        a for a in given_ if a.actor != requester or (a.version, a.environment, a.decision) != own
    )
    without = decide("production", rules, facts(approvals=others), requester, now)
    assert with_own.allowed == without.allowed


@given(approvals_st, people, st.integers(0, 3))
def test_allowed_means_every_gate_met_and_no_live_rejection(
    given_: list[ApprovalFact], requester: str, need: int
) -> None:
    rules = Rules(approvals=need)
    decision = decide("production", rules, facts(approvals=tuple(given_)), requester, T0)
    assert decision.allowed == all(r.met for r in decision.results)
    assert decision.allowed == (len(decision.unmet) == 0)
    live_rejection = any(
        a.decision == "reject"
        and not a.withdrawn
        and a.version == "v7"
        and a.environment == "production"
        for a in given_
    )
    if live_rejection:
        assert not decision.allowed
    for r in decision.unmet:
        assert r.remedy, r  # every unmet gate says what would meet it


def test_check_order_finds_loops_only_through_the_environment() -> None:
    assert check_order([("a", "b"), ("b", "a"), ("c", "a"), ("d", None)]) == ["a", "b"]
    assert check_order([("a", "b"), ("b", "c"), ("c", "b")]) == ["b", "c"]


def test_decision_json_and_refusal() -> None:
    decision = decide("production", Rules(after="staging", approvals=1), facts(), "ann", T0)
    data = decision.to_json()
    assert data["allowed"] is False
    assert [g["gate"] for g in data["gates"]] == ["after", "approvals"]
    assert decision.refusal().splitlines()[0] == "v7 may not go to production yet:"
    with pytest.raises(ValueError, match="aware"):
        decide("production", Rules(), facts(), "ann", datetime(2026, 1, 1))
