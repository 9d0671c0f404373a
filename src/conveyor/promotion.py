"""Promotion: the gates of an environment decided from what the state store recorded.

The decision itself is pure (conveyor.core.gates); this module gathers its inputs (the rules from
conveyor.toml, the facts from the store, who asks) and is what the agent calls before a deploy
and what `conveyor gates` shows. See docs/promotion.md.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

from conveyor.config import Config, GatesConfig
from conveyor.core.gates import (
    ApprovalFact,
    CheckFact,
    Decision,
    DeploymentFact,
    Facts,
    Override,
    ReleaseFact,
    Rules,
    decide,
    parse_freeze,
)
from conveyor.engine.journal import Journal
from conveyor.engine.outcome import Emit
from conveyor.store.db import ReleaseRecord, Store
from conveyor.store.facts import ApprovalRecord, FactStore

# How much history a decision reads per environment: enough to find a release's last success.
HISTORY = 500


def zone(name: str) -> tzinfo:
    if name == "UTC":
        return UTC
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


def rules(cfg: Config, gates: GatesConfig) -> Rules:
    return Rules(
        after=gates.after,
        checks=tuple(gates.checks),
        soak=gates.soak,
        approvals=gates.approvals,
        approvers=tuple(gates.approvers),
        freeze=tuple(parse_freeze(w) for w in gates.freeze),
        tz=zone(gates.timezone),
        timezone=gates.timezone,
        require_tag=gates.require_tag,
        admins=tuple(cfg.access.admins),
    )


def facts(store: Store, release: ReleaseRecord, env: str, gates: GatesConfig) -> Facts:
    """What the store knows that the gates of `env` are decided from, for `release`."""
    app, version = release.app, release.version
    known = FactStore(store)
    envs = [env] + ([gates.after] if gates.after else [])
    deployments = tuple(
        DeploymentFact(
            d.id, d.environment, d.version, d.kind, d.outcome, d.started_at, d.finished_at
        )
        for name in envs
        for d in store.list_deployments(app, name, limit=HISTORY)
    )
    return Facts(
        release=ReleaseFact(version, release.created_at, release.commit, known.tags(app, version)),
        created={r.version: r.created_at for r in store.list_releases(app)},
        deployments=deployments,
        checks=tuple(
            CheckFact(c.name, c.version, c.passed, c.at, c.actor, c.url)
            for c in known.checks(app, version)
        ),
        approvals=tuple(
            ApprovalFact(
                a.version, a.environment, a.actor, a.decision, a.at, a.comment, a.withdrawn
            )
            for a in known.approvals(app, env)
        ),
    )


def evaluate(
    cfg: Config,
    store: Store,
    release: ReleaseRecord,
    env: str,
    requester: str,
    now: datetime,
    override: Override | None = None,
) -> Decision:
    gates = cfg.environment(env).gates
    return decide(
        env, rules(cfg, gates), facts(store, release, env, gates), requester, now, override
    )


def admit(
    cfg: Config,
    store: Store,
    home: Path,
    request: dict[str, Any],
    now: datetime,
    journal: Journal,
    emit: Emit,
) -> tuple[dict[str, Any] | None, Emit]:
    """Whether the agent may run a deploy request: (its refusal, or None) and the emit to use.

    Refused (exit 1, nothing changed): an unmet gate, or a release whose archive or files no
    longer have its digest. An unknown release or environment is left to the engine to report.
    A freeze override that let the deploy through is recorded on the deployment it starts.
    """
    from conveyor.releases import ReleaseError, ReleaseStore

    env, version = str(request["env"]), str(request["version"])
    release = store.get_release(cfg.app.name, version)
    if env not in cfg.environments or release is None:
        return None, emit
    requester = str(request.get("user") or "unknown")
    override = None
    if request.get("override_freeze"):
        override = Override(requester, str(request.get("reason") or ""))
    decision = evaluate(cfg, store, release, env, requester, now, override)
    if not decision.allowed:
        return {
            "ok": False,
            "exit": 1,
            "error": decision.refusal(),
            "data": decision.to_json(),
        }, emit
    try:
        ReleaseStore(home, store, cfg.app.name).verify(release)
    except ReleaseError as exc:
        return {"ok": False, "exit": 1, "error": str(exc), "data": {"version": version}}, emit
    freeze = next((r for r in decision.results if r.gate == "freeze"), None)
    if override is None or freeze is None or "overridden by" not in freeze.detail:
        return None, emit

    def noting(event: dict[str, Any]) -> None:
        emit(event)
        if event.get("step") == "started" and isinstance(event.get("deployment"), int):
            data = {"by": requester, "reason": override.reason}
            journal.record(event["deployment"], "freeze_overridden", freeze.detail, data, emit)

    return None, noting


class ApprovalRefused(Exception):
    """An approval or rejection that is not recorded (the refusal is in the audit log)."""


def record_decision(
    cfg: Config,
    store: Store,
    version: str,
    env: str,
    user: str,
    decision: str,
    comment: str,
    now: datetime,
    *,
    requested_by: str | None = None,
    via: dict[str, Any] | None = None,
) -> ApprovalRecord:
    """Approve or reject `version` for `env` as `user`: what `conveyor approve|reject` and the
    API's approvals endpoint both do, audited either way.

    Refused (ApprovalRefused): an approval by someone not among the environment's approvers, and
    an approval by `requested_by` (whoever asked for the deployment being approved: the gates
    would not count it, so it is refused outright rather than recorded as if it helped).
    `via` adds the API's facts (token id, role, source address) to the audit entry.
    """
    from conveyor.store import audit

    gates = cfg.environment(env).gates
    data = {"via": via} if via else {}

    def audited(outcome: str, detail: str) -> None:
        audit.record(
            store,
            at=now,
            actor=user,
            action=decision,
            app=cfg.app.name,
            environment=env,
            target=version,
            outcome=outcome,
            detail=detail,
            data=data,
        )

    if decision == "approve" and gates.approvers and user not in gates.approvers:
        audited("refused", "not an approver")
        raise ApprovalRefused(
            f"{user} is not one of {env}'s approvers ({', '.join(gates.approvers)}); "
            "set CONVEYOR_USER if conveyor got your name wrong"
        )
    if decision == "approve" and requested_by is not None and requested_by == user:
        audited("refused", "self-approval")
        raise ApprovalRefused(
            f"{user} asked for this deployment and cannot approve it: another approver must"
        )
    recorded = FactStore(store).decide(cfg.app.name, version, env, user, decision, now, comment)
    audited("ok", comment)
    return recorded


def withdraw_decision(
    cfg: Config,
    store: Store,
    version: str,
    env: str,
    user: str,
    decision: str,
    now: datetime,
    *,
    anyone: bool,
    via: dict[str, Any] | None = None,
) -> list[ApprovalRecord]:
    """Withdraw the standing `decision`s ("approve" or "reject") of `version` for `env`: the
    user's own, or everyone's when `anyone` (an admin: a rejecter who left must not block a
    release for ever). What `conveyor approve|reject --withdraw` and the API's DELETE of an
    approval both do, audited either way (`<decision>.withdraw`, refused when nothing stood);
    `via` adds the API's facts. The ones withdrawn, none when nothing stood."""
    from conveyor.store import audit

    of = None if anyone else [user]
    ended = FactStore(store).withdraw(cfg.app.name, version, env, decision, user, now, of)
    audit.record(
        store,
        at=now,
        actor=user,
        action=f"{decision}.withdraw",
        app=cfg.app.name,
        environment=env,
        target=version,
        outcome="ok" if ended else "refused",
        detail=", ".join(f"{r.actor}'s {decision}" for r in ended) or "nothing to withdraw",
        data={"via": via} if via else {},
    )
    return ended
