"""The access decision (conveyor.core.access): a table of role x action x environment, tokens
narrower than their owner, an owner who loses a binding, and the property that a token never
allows more than its owner's bindings (nor more than it was issued for)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conveyor.core.access import (
    ACTIONS,
    Binding,
    Principal,
    Role,
    Scope,
    decide,
    effective_roles,
    permissions,
)

DEPLOYING = {"deploy", "promote", "abort", "rollback", "retry", "lock"}
# What each role allows, written out (not derived from ACTIONS: a change there must show here).
ALLOWS: dict[Role, set[str]] = {
    Role.viewer: {"read"},
    Role.deployer: {"read", *DEPLOYING},
    Role.approver: {"read", "approve", "reject"},
    Role.admin: set(ACTIONS),
}


def person(*bindings: tuple[Role, str | None], name: str = "alice") -> Principal:
    return Principal(name, tuple(Binding(name, r, e) for r, e in bindings), None, via="session")


def token(owner: Principal, role: Role, env: str | None) -> Principal:
    return Principal(owner.subject, owner.bindings, Scope(role, env), token_id="t" * 16)


def allowed(who: Principal, env: str | None) -> set[str]:
    return {action for action, ok in permissions(who, env).items() if ok}


@pytest.mark.parametrize("role", list(Role))
def test_each_role_on_one_environment_allows_its_actions_there_and_nothing_elsewhere(
    role: Role,
) -> None:
    who = person((role, "staging"))
    assert allowed(who, "staging") == ALLOWS[role]
    assert allowed(who, "production") == set()
    assert allowed(who, None) == set()  # across environments needs a binding on all of them


@pytest.mark.parametrize("role", list(Role))
def test_a_binding_on_every_environment_allows_everywhere(role: Role) -> None:
    who = person((role, None))
    for env in ("dev", "staging", "production", None):
        assert allowed(who, env) == ALLOWS[role]


def test_roles_add_up_and_the_allowing_role_is_named_for_the_audit_log() -> None:
    who = person((Role.deployer, "staging"), (Role.approver, "staging"), (Role.viewer, None))
    assert allowed(who, "staging") == ALLOWS[Role.deployer] | ALLOWS[Role.approver]
    assert allowed(who, "production") == {"read"}
    assert decide(who, "approve", "staging").role is Role.approver
    assert decide(who, "read", "staging").role is Role.viewer  # the least role that allows it
    assert decide(person((Role.admin, None)), "deploy", "dev").role is Role.deployer


def test_a_refusal_says_which_role_is_needed_and_who_lacks_it() -> None:
    refused = decide(person((Role.viewer, None), name="bob"), "deploy", "production")
    assert not refused.allowed and refused.role is None
    assert refused.reason == "deploy needs the deployer role on production; bob does not hold it"
    only_admin = decide(person((Role.deployer, None)), "environment.update", "dev")
    assert only_admin.reason.startswith("environment.update needs the admin role on dev")
    with pytest.raises(ValueError, match="unknown action 'fly'"):
        decide(person(), "fly", "dev")


def test_a_token_is_narrower_than_its_owner() -> None:
    admin = person((Role.admin, None))
    ci = token(admin, Role.deployer, "staging")
    assert allowed(ci, "staging") == ALLOWS[Role.deployer]
    assert allowed(ci, "production") == set()
    refused = decide(ci, "approve", "staging")
    assert "this token is limited to deployer on staging" in refused.reason
    reader = token(admin, Role.viewer, None)
    for env in ("dev", "production", None):
        assert allowed(reader, env) == {"read"}
    assert allowed(token(admin, Role.admin, None), "production") == set(ACTIONS)


def test_a_token_above_its_owner_allows_nothing_and_a_lost_binding_disarms_it() -> None:
    owner = person((Role.deployer, "staging"))
    assert allowed(token(owner, Role.admin, None), "staging") == set()
    assert allowed(token(owner, Role.deployer, None), "staging") == ALLOWS[Role.deployer]
    assert allowed(token(owner, Role.deployer, None), "production") == set()
    # The owner's deployer binding is taken back: the same token, read again, allows nothing.
    after = token(person(), Role.deployer, "staging")
    assert allowed(after, "staging") == set()
    assert effective_roles(after, "staging") == frozenset()


ENVS = st.sampled_from(["dev", "staging", "production", None])
ROLES = st.sampled_from(list(Role))
BINDINGS = st.lists(st.tuples(ROLES, ENVS), max_size=5)


@given(BINDINGS, ROLES, ENVS, ENVS, st.sampled_from(sorted(ACTIONS)))
def test_a_token_never_allows_more_than_its_owner_nor_its_scope(
    bindings: list[tuple[Role, str | None]],
    scope_role: Role,
    scope_env: str | None,
    env: str | None,
    action: str,
) -> None:
    owner = person(*bindings)
    tok = token(owner, scope_role, scope_env)
    if decide(tok, action, env).allowed:
        assert decide(owner, action, env).allowed
        assert action in ALLOWS[scope_role]
        assert scope_env is None or scope_env == env
        assert scope_role in effective_roles(owner, env)
