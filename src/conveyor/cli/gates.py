"""`conveyor gates`, `check record|run`, `approve`, `reject`: the path between environments."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import typer

from conveyor.cli.common import Command, EnvReq, JsonOpt, Project, app, project
from conveyor.cli.output import clean, console, emit_json, fail

if TYPE_CHECKING:
    from conveyor.config import Config
    from conveyor.store.db import ReleaseRecord, Store

check_app = typer.Typer(
    help="Record and run the named checks a release must pass before it is promoted.\n\n"
    "Example:\n\n    conveyor check record tests --release v7 --passed --url https://ci/run/42",
    no_args_is_help=True,
)
app.add_typer(check_app, name="check")

VersionArg = Annotated[
    str, typer.Argument(metavar="VERSION", help="A release created with `conveyor release create`.")
]
ReleaseOpt = Annotated[
    str, typer.Option("--release", "-r", help="The release the result is for (required).")
]


def _release(store: Store, cfg: Config, version: str) -> ReleaseRecord:
    rec = store.get_release(cfg.app.name, version)
    if rec is None:
        store.close()
        fail(f"unknown release {version!r} (see `conveyor releases`)")
    return rec


def _open(env: str | None, version: str) -> tuple[Project, Config, Store, ReleaseRecord]:
    proj = project()
    cfg = proj.checked(env) if env is not None else proj.config()
    store = proj.store()
    return proj, cfg, store, _release(store, cfg, version)


def who(proj: Project) -> str:
    """Who runs this command (conveyor.identity); a name that cannot be recorded is exit 2."""
    from conveyor.identity import IdentityError, current_user

    try:
        return current_user(proj.dir)
    except IdentityError as exc:
        fail(str(exc))


def _now() -> datetime:
    return datetime.now(UTC)


def _audited(
    store: Store,
    cfg: Config,
    user: str,
    action: str,
    env: str | None,
    target: str,
    outcome: str,
    detail: str = "",
    data: dict[str, Any] | None = None,
) -> None:
    """The audit log's entry for a check, an approval or a rejection (docs/locks-and-audit.md)."""
    from conveyor.store import audit

    audit.record(
        store,
        at=_now(),
        actor=user,
        action=action,
        app=cfg.app.name,
        environment=env,
        target=target,
        outcome=outcome,
        detail=detail,
        data=data or {},
    )


# --- gates ------------------------------------------------------------------------------------


@app.command(cls=Command)
def gates(version: VersionArg, env: EnvReq, json_out: JsonOpt = False) -> None:
    """Show every gate between a release and an environment, met or not, and what would meet
    the others. Exit 0 when the release may be deployed there now, 1 when not.

    Example:

        conveyor gates v7 --env production
    """
    from conveyor.promotion import evaluate

    proj, cfg, store, rec = _open(env, version)
    try:
        decision = evaluate(cfg, store, rec, env, who(proj), _now())
    finally:
        store.close()
    code = 0 if decision.allowed else 1
    if json_out:
        emit_json(decision.to_json())
        raise typer.Exit(code)
    from rich.text import Text

    if not decision.results:
        console.print(f"{env} has no gates: {version} may be deployed there", markup=False)
        raise typer.Exit(0)
    unmet = len(decision.unmet)
    head = (
        f"{version} may go to {env} now"
        if decision.allowed
        else f"{version} may not go to {env} yet: {unmet} of {len(decision.results)} gates unmet"
    )
    console.print(head, markup=False)
    for result in decision.results:
        mark = ("✓", "green") if result.met else ("✗", "red")
        console.print(Text.assemble("  ", mark, " ", clean(result.line())), soft_wrap=True)
        if result.remedy:
            console.print(Text.assemble("      → ", clean(result.remedy)), soft_wrap=True)
    raise typer.Exit(code)


# --- checks -----------------------------------------------------------------------------------


def _check_name(cfg: Config, name: str) -> None:
    """A check conveyor.toml knows: under [checks] or in some environment's `checks`."""
    from conveyor.config.errors import did_you_mean

    known = set(cfg.checks) | {c for e in cfg.environments.values() for c in e.checks}
    if name not in known:
        hint = did_you_mean(name, known)
        if hint:
            fail(f"unknown check {name!r} (did you mean {hint!r}?)")
        listed = ", ".join(sorted(known)) or "none"
        fail(
            f"unknown check {name!r} (known: {listed}): name it in an environment's checks or "
            f"add [checks.{name}] to conveyor.toml"
        )


def _check_json(rec: Any) -> dict[str, Any]:
    return {
        "check": rec.name,
        "version": rec.version,
        "passed": rec.passed,
        "url": rec.url,
        "actor": rec.actor,
        "at": rec.at.isoformat(),
    }


@check_app.command("record", cls=Command)
def check_record(
    name: Annotated[str, typer.Argument(metavar="NAME", help="The check, e.g. tests.")],
    release: ReleaseOpt,
    passed: Annotated[bool, typer.Option("--passed", help="It passed.")] = False,
    failed: Annotated[bool, typer.Option("--failed", help="It failed.")] = False,
    url: Annotated[str, typer.Option(help="Where the run can be seen (CI).")] = "",
    json_out: JsonOpt = False,
) -> None:
    """Record a check's result for a release (from CI, for example).

    Example:

        conveyor check record tests --release v7 --passed --url https://ci.example.com/run/42
    """
    from conveyor.store.facts import FactStore

    if passed == failed:
        fail("say how the check went: --passed or --failed (one of them)")
    proj, cfg, store, rec = _open(None, release)
    try:
        _check_name(cfg, name)
        result = FactStore(store).record_check(
            cfg.app.name, rec.version, name, passed, who(proj), _now(), url or None
        )
        _audited(
            store,
            cfg,
            result.actor,
            "check.record",
            None,
            rec.version,
            "ok",
            f"check {name} {'passed' if passed else 'failed'}",
            {"check": name, "passed": passed, "url": url},
        )
    finally:
        store.close()
    if json_out:
        emit_json(_check_json(result))
        return
    word = "passed" if passed else "failed"
    console.print(f"recorded: check {name} {word} for {rec.version}", markup=False)


@check_app.command("run", cls=Command)
def check_run(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="A check with [checks.NAME] command.")
    ],
    release: ReleaseOpt,
    json_out: JsonOpt = False,
) -> None:
    """Run a check's command in the release's files, show its output as it comes, and record
    whether it passed (exit code 0). Exit 0 when it passed, 1 when not.

    Example:

        conveyor check run tests --release v7
    """
    from conveyor.checks import run_check
    from conveyor.releases import ReleaseError, ReleaseStore
    from conveyor.store.facts import FactStore

    proj, cfg, store, rec = _open(None, release)
    try:
        _check_name(cfg, name)
        check = cfg.checks.get(name)
        if check is None or check.command is None:
            fail(
                f'check {name!r} has no command: add [checks.{name}] command = "..." to '
                f"conveyor.toml, or record CI's result with `conveyor check record {name} "
                f"--release {release} --passed`"
            )
        releases = ReleaseStore(proj.paths.home, store, cfg.app.name)
        try:
            releases.verify(rec)
            tree = releases.tree(rec)
        except ReleaseError as exc:
            fail(str(exc), 1)
        if not json_out:
            console.print(f"running check {name} for {rec.version}: {check.command}", markup=False)
        ran = run_check(name, check.command, check.timeout, tree, rec.version, json_out)
        result = FactStore(store).record_check(
            cfg.app.name, rec.version, name, ran.passed, who(proj), _now()
        )
        _audited(
            store,
            cfg,
            result.actor,
            "check.run",
            None,
            rec.version,
            "ok",
            f"check {name} {'passed' if ran.passed else 'failed'}: {ran.detail}",
            {"check": name, "passed": ran.passed, "seconds": round(ran.seconds, 1)},
        )
    finally:
        store.close()
    if json_out:
        emit_json({**_check_json(result), "detail": ran.detail, "seconds": ran.seconds})
    else:
        mark = "[green]✓[/]" if ran.passed else "[red]✗[/]"
        word = "passed" if ran.passed else "failed"
        console.print(
            f"{mark} check {name} {word} for {rec.version} ({ran.detail}, {ran.seconds:.1f}s): "
            "recorded"
        )
    raise typer.Exit(0 if ran.passed else 1)


# --- approvals --------------------------------------------------------------------------------


def _approval_json(rec: Any) -> dict[str, Any]:
    return {
        "version": rec.version,
        "environment": rec.environment,
        "decision": rec.decision,
        "actor": rec.actor,
        "comment": rec.comment,
        "at": rec.at.isoformat(),
        "withdrawn_at": rec.withdrawn_at.isoformat() if rec.withdrawn_at else None,
        "withdrawn_by": rec.withdrawn_by,
    }


def _withdraw(version: str, env: str, decision: str, json_out: bool) -> None:
    from conveyor.cli.remote import server
    from conveyor.promotion import withdraw_decision

    url = server()
    if url is not None:
        _withdraw_remotely(url, version, env, decision, json_out)
        return

    proj, cfg, store, rec = _open(env, version)
    user = who(proj)
    # Admins may withdraw anyone's: a rejecter who left must not block a release for ever.
    anyone = user in cfg.access.admins
    try:
        ended = withdraw_decision(
            cfg, store, rec.version, env, user, decision, _now(), anyone=anyone
        )
    finally:
        store.close()
    what = "approval" if decision == "approve" else "rejection"
    if not ended:
        whose = "" if anyone else f" by {user}"
        fail(f"no standing {what}{whose} of {version} for {env} to withdraw", 1)
    if json_out:
        emit_json({"withdrawn": [_approval_json(r) for r in ended]})
        return
    for r in ended:
        console.print(f"withdrawn: {r.actor}'s {what} of {version} for {env}", markup=False)


def _withdraw_remotely(url: str, version: str, env: str, decision: str, json_out: bool) -> None:
    from conveyor.cli.remote import Remote

    answer = Remote(url).withdraw(version, env, decision)
    if json_out:
        emit_json(answer)
        return
    what = "approval" if decision == "approve" else "rejection"
    for r in answer["withdrawn"]:
        console.print(
            f"withdrawn: {r['actor']}'s {what} of {version} for {env} on {url}", markup=False
        )


def _decide_remotely(
    url: str, version: str, env: str, decision: str, comment: str, json_out: bool
) -> None:
    from conveyor.cli.remote import Remote

    answer = Remote(url).decide(version, env, decision, comment)
    if json_out:
        emit_json(answer)
        return
    mine = answer["approvals"][-1] if answer.get("approvals") else {}
    who_ = mine.get("actor", "you")
    done = "approved" if decision == "approve" else "rejected"
    console.print(f"{who_} {done} {version} for {env} on {url}", markup=False)


def _decide(version: str, env: str, decision: str, comment: str, json_out: bool) -> None:
    from conveyor.cli.remote import server
    from conveyor.promotion import ApprovalRefused, record_decision

    url = server()
    if url is not None:
        _decide_remotely(url, version, env, decision, comment, json_out)
        return

    proj, cfg, store, rec = _open(env, version)
    user = who(proj)
    gates = cfg.environment(env).gates
    try:
        recorded = record_decision(cfg, store, rec.version, env, user, decision, comment, _now())
    except ApprovalRefused as exc:
        fail(str(exc), 1)
    finally:
        store.close()
    if json_out:
        emit_json(_approval_json(recorded))
        return
    if decision == "approve":
        note = "" if gates.approvals else f" ({env} needs no approvals)"
        console.print(f"{user} approved {version} for {env}{note}", markup=False)
    else:
        console.print(
            f"{user} rejected {version} for {env}: it cannot be deployed there until the "
            f"rejection is withdrawn (`conveyor reject {version} --env {env} --withdraw`)",
            markup=False,
            soft_wrap=True,
        )


WithdrawOpt = Annotated[
    bool, typer.Option("--withdraw", help="Withdraw your own (an admin: everyone's).")
]


@app.command(cls=Command)
def approve(
    version: VersionArg,
    env: EnvReq,
    comment: Annotated[str, typer.Option(help="Why, for the record.")] = "",
    withdraw: WithdrawOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Approve a release for an environment. Whoever deploys it cannot count as an approver;
    the approval is void once the release went live there or a newer release is approved.

    Example:

        conveyor approve v7 --env production --comment "checked the dashboards"
    """
    if withdraw:
        _withdraw(version, env, "approve", json_out)
    else:
        _decide(version, env, "approve", comment, json_out)


@app.command(cls=Command)
def reject(
    version: VersionArg,
    env: EnvReq,
    comment: Annotated[str, typer.Option(help="Why (required to reject).")] = "",
    withdraw: WithdrawOpt = False,
    json_out: JsonOpt = False,
) -> None:
    """Reject a release for an environment: it cannot be deployed there until the rejection
    is withdrawn (`--withdraw`, by whoever rejected it or an admin).

    Example:

        conveyor reject v7 --env production --comment "breaks checkout on Safari"
    """
    if withdraw:
        _withdraw(version, env, "reject", json_out)
        return
    if not comment.strip():
        fail('say why: --comment "..." (the rejection blocks others until withdrawn)')
    _decide(version, env, "reject", comment, json_out)
