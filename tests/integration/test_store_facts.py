"""Promotion facts (conveyor.store.facts) on SQLite and on the real PostgreSQL server."""

from __future__ import annotations

from datetime import timedelta

import pytest
from test_store import T0  # the fixtures (store, url: both backends) are in tests/conftest.py

from conveyor.store import Store
from conveyor.store.facts import FactStore


def test_check_results_round_trip(store: Store) -> None:
    facts = FactStore(store)
    first = facts.record_check("shop", "v7", "tests", False, "ci", T0, "https://ci/1")
    facts.record_check("shop", "v7", "tests", True, "ann", T0 + timedelta(minutes=1))
    facts.record_check("shop", "v6", "tests", True, "ann", T0)
    facts.record_check("other", "v7", "tests", True, "ann", T0)
    found = facts.checks("shop", "v7")
    assert [(c.passed, c.actor, c.url) for c in found] == [
        (False, "ci", "https://ci/1"),
        (True, "ann", None),
    ]
    assert found[0] == first and found[0].at == T0


def test_approvals_rejections_and_withdrawals(store: Store) -> None:
    facts = FactStore(store)
    later = T0 + timedelta(minutes=5)
    facts.decide("shop", "v7", "production", "ann", "approve", T0, "looks good")
    facts.decide("shop", "v7", "production", "bob", "reject", T0, "breaks checkout")
    facts.decide("shop", "v7", "production", "cat", "reject", T0, "slow")
    facts.decide("shop", "v7", "staging", "bob", "reject", T0, "elsewhere")
    with pytest.raises(ValueError, match="invalid decision"):
        facts.decide("shop", "v7", "production", "ann", "maybe", T0)

    mine = facts.withdraw("shop", "v7", "production", "reject", "bob", later, of=["bob"])
    assert [(r.actor, r.withdrawn_by, r.withdrawn_at) for r in mine] == [("bob", "bob", later)]
    assert facts.withdraw("shop", "v7", "production", "reject", "bob", later, of=["bob"]) == []
    everyone = facts.withdraw("shop", "v7", "production", "reject", "admin", later)
    assert [r.actor for r in everyone] == ["cat"]

    rows = facts.approvals("shop", "production")
    assert [(r.actor, r.decision, r.withdrawn, r.comment) for r in rows] == [
        ("ann", "approve", False, "looks good"),
        ("bob", "reject", True, "breaks checkout"),
        ("cat", "reject", True, "slow"),
    ]
    assert [r.actor for r in facts.approvals("shop", "staging")] == ["bob"]


def test_release_tags(store: Store) -> None:
    facts = FactStore(store)
    facts.add_tags("shop", "v7", ["v7.0.0", "stable", "v7.0.0"])
    facts.add_tags("shop", "v7", ["stable"])  # recording again changes nothing
    assert facts.tags("shop", "v7") == ("stable", "v7.0.0")
    assert facts.tags("shop", "v8") == ()
