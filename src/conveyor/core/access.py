"""Who may do what, where: roles, bindings and the decision (pure: no I/O, no clock).

Policy:
- Four roles. `viewer` reads everything but secrets; `deployer` also deploys, promotes,
  aborts, rolls back, retries and locks; `approver` also approves and rejects; `admin` may do
  everything, including managing other people's tokens and changing an environment.
- A binding gives one role to one subject (a user name) on one environment, or on every
  environment (`environment=None`). The config's `[access] admins` are admin bindings on every
  environment.
- A token carries one role, on one environment or on all. It grants that role only where its
  owner holds it *now*: the owner's bindings are read again on every request, so revoking a
  person's role disarms their tokens at once, and a token can never exceed its owner.
- Approving is never the deployer's own: that rule lives with the gates (core/gates.py), which
  judge the release; this module only says whether the role allows the verb.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    viewer = "viewer"
    deployer = "deployer"
    approver = "approver"
    admin = "admin"


# The verbs an API request or a dashboard button can ask for, with the roles that allow each.
READ = "read"
ACTIONS: dict[str, frozenset[Role]] = {
    READ: frozenset(Role),
    "deploy": frozenset({Role.deployer, Role.admin}),
    "promote": frozenset({Role.deployer, Role.admin}),
    "abort": frozenset({Role.deployer, Role.admin}),
    "rollback": frozenset({Role.deployer, Role.admin}),
    "retry": frozenset({Role.deployer, Role.admin}),
    "lock": frozenset({Role.deployer, Role.admin}),
    "approve": frozenset({Role.approver, Role.admin}),
    "reject": frozenset({Role.approver, Role.admin}),
    "environment.update": frozenset({Role.admin}),
    "tokens.manage": frozenset({Role.admin}),  # other people's tokens; one's own needs READ
    "audit.export": frozenset({Role.admin}),
}


@dataclass(frozen=True)
class Binding:
    subject: str
    role: Role
    environment: str | None  # None: every environment


@dataclass(frozen=True)
class Scope:
    """What a token (or a browser session) was issued for: one role, one environment or all."""

    role: Role
    environment: str | None


@dataclass(frozen=True)
class Principal:
    """Who a request acts for, as the server found them on this request."""

    subject: str
    bindings: tuple[Binding, ...]  # the subject's current bindings (read on this request)
    scope: Scope | None  # None: not narrowed (local access, or a session with every binding)
    token_id: str | None = None  # the token's public id, for the audit log; None for a session
    via: str = "token"  # "token", "session" or "local"


@dataclass(frozen=True)
class Decision:
    allowed: bool
    role: Role | None  # the role the request acts in when allowed (for the audit log)
    reason: str  # why not, in a sentence that says what would allow it; "" when allowed


def roles_on(bindings: tuple[Binding, ...], environment: str | None) -> frozenset[Role]:
    """The roles these bindings give on `environment` (None: the roles held on every one)."""
    return frozenset(
        b.role for b in bindings if b.environment is None or b.environment == environment
    )


def effective_roles(principal: Principal, environment: str | None) -> frozenset[Role]:
    """The roles a request may act in on `environment`: the owner's, narrowed by the token."""
    held = roles_on(principal.bindings, environment)
    if Role.admin in held:
        held = frozenset(Role)  # an admin holds every role
    scope = principal.scope
    if scope is None:
        return held
    if scope.environment is not None and scope.environment != environment:
        return frozenset()
    if scope.role not in held:
        return frozenset()
    if scope.role is Role.admin:
        return frozenset(Role)
    return frozenset({scope.role, Role.viewer})


def decide(principal: Principal, action: str, environment: str | None) -> Decision:
    """Whether `principal` may do `action` on `environment` (None: across environments)."""
    allowing = ACTIONS.get(action)
    if allowing is None:
        raise ValueError(f"unknown action {action!r}")
    roles = effective_roles(principal, environment)
    usable = sorted(roles & allowing, key=_rank)
    if usable:
        return Decision(True, usable[0], "")
    where = f"on {environment}" if environment is not None else "on every environment"
    others: list[Role] = sorted(allowing - {Role.admin}, key=_rank)
    needed = " or ".join(others) or "admin"
    if principal.scope is not None and roles_on(principal.bindings, environment) & allowing:
        reason = (
            f"this token is limited to {principal.scope.role} "
            f"{'on ' + principal.scope.environment if principal.scope.environment else ''}"
        ).rstrip()
        return Decision(False, None, f"{action} needs the {needed} role {where}; {reason}")
    return Decision(
        False,
        None,
        f"{action} needs the {needed} role {where}; {principal.subject} does not hold it",
    )


def permissions(principal: Principal, environment: str | None) -> dict[str, bool]:
    """Every action and whether it is allowed: what `GET /me/permissions` answers and what the
    dashboard uses to show only the buttons a viewer may press."""
    return {action: decide(principal, action, environment).allowed for action in ACTIONS}


def _rank(role: Role) -> int:
    return list(Role).index(role)
