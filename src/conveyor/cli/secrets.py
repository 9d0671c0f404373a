"""`conveyor secrets`: set, read, list, rotate, import, export and remove secrets; doctor.

These act on the state database directly, not through the agent (as `lock` does): secrets must
be settable before the first deploy and readable while no agent runs. A value comes in on stdin
(a prompt without echo on a terminal), from a file, or generated: never from the command line.
Only `get` and `export` print values. Every write and read is in the audit log, without values.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from conveyor.cli import secrets_scan
from conveyor.cli.common import Command, EnvReq, JsonOpt, Project, acting_user, app, project, when
from conveyor.cli.output import clean, console, emit_json, fail, json_mode

if TYPE_CHECKING:
    from conveyor.config import Config, ResolvedEnvironment
    from conveyor.secrets.local import LocalSecrets
    from conveyor.secrets.resolve import Resolver
    from conveyor.store.db import Store

secrets_app = typer.Typer(
    help="Secrets: kept encrypted per environment, resolved through providers with fallback, "
    "given to services when they start; `scan` finds plaintext ones in the project. See "
    "docs/secrets.md.\n\n"
    "Example:\n\n    conveyor secrets set DATABASE_URL --env production < db-url.txt",
    no_args_is_help=True,
)
app.add_typer(secrets_app, name="secrets")
secrets_scan.register(secrets_app)  # `conveyor secrets scan` (cli/secrets_scan.py)

NameArg = Annotated[
    str, typer.Argument(metavar="NAME", help="The secret's name, e.g. DATABASE_URL.")
]
FromFile = Annotated[
    Path | None,
    typer.Option("--from-file", metavar="FILE", help="Read the value from this file (as it is)."),
]
Generate = Annotated[
    int | None,
    typer.Option(
        "--generate",
        metavar="N",
        help="Generate a random value of N bytes (URL-safe base64); it is not printed.",
    ),
]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]
# An environment whose secrets need a reason to read and may not be exported.
PROTECTED_NAME = "production"


@dataclass
class Session:
    """What a secrets command works with: the project, its configuration, the store."""

    proj: Project
    cfg: Config
    env: ResolvedEnvironment
    store: Store
    who: str
    resolver: Resolver

    @property
    def local(self) -> LocalSecrets:
        return self.resolver.local


@contextmanager
def opened(env: str) -> Iterator[Session]:
    """The session of a command on `env`; a SecretError is its one-line failure (exit 1)."""
    from conveyor.secrets.base import SecretError
    from conveyor.secrets.resolve import Resolver

    proj = project()
    cfg = proj.config()
    resolved = proj.environment(cfg, env)
    who = acting_user(proj)
    store = proj.store()
    prompt = _getpass if sys.stdin.isatty() and not json_mode() else None
    resolver = Resolver(
        store, cfg.app.name, resolved.secrets, proj.paths.home, who, prompt, proj.dir
    )
    try:
        yield Session(proj, cfg, resolved, store, who, resolver)
    except SecretError as exc:
        fail(str(exc), 1)
    finally:
        store.close()


def _getpass(prompt: str) -> str:
    import getpass

    return getpass.getpass(prompt)


def protected(env: ResolvedEnvironment) -> str | None:
    """Why reading `env`'s secrets needs a reason (and exporting them is refused), or None."""
    if env.name == PROTECTED_NAME:
        return f"{env.name} is production"
    if env.gates.approvals > 0:
        return f"{env.name} needs approvals to deploy"
    return None


def _check_name(name: str) -> str:
    from conveyor.config.secrets import check_secret_name

    try:
        return check_secret_name(name)
    except ValueError as exc:
        fail(str(exc))


def _value(name: str, env: str, from_file: Path | None, generate: int | None) -> str:
    """The new value: generated, read from a file, or from stdin (a prompt without echo)."""
    if from_file is not None and generate is not None:
        fail("--from-file and --generate are alternatives: give one")
    if generate is not None:
        if not 16 <= generate <= 1024:
            fail(f"--generate takes a number of random bytes from 16 to 1024 (got {generate})")
        import secrets

        return secrets.token_urlsafe(generate)
    if from_file is not None:
        try:
            value = from_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            fail(f"cannot read {from_file}: {exc}")
    elif sys.stdin.isatty():
        value = _getpass(f"Value of {name} for {env} (not shown): ")
        if _getpass("Again, to confirm: ") != value:
            fail("the two values differ: nothing was changed")
    else:
        value = sys.stdin.read()
        # `echo value |` and a here-string add one newline that is not part of the value.
        value = value.removesuffix("\n").removesuffix("\r")
    if not value:
        fail(f"the value of {name} is empty: nothing was changed")
    return value


def _written(s: Session, verb: str, records: list[Any], json_out: bool) -> None:
    if json_out:
        emit_json({"exit": 0, "environment": s.env.name, "secrets": [r.to_json() for r in records]})
        return
    for rec in records:
        console.print(
            f"[green]✓[/] {verb} {rec.name} for {s.env.name}: version {rec.version}",
            highlight=False,
        )


@secrets_app.command("set", cls=Command)
def set_secret(
    name: NameArg,
    env: EnvReq,
    from_file: FromFile = None,
    generate: Generate = None,
    json_out: JsonOpt = False,
) -> None:
    """Store a secret (a new version if it exists). The value comes from stdin, typed without
    echo on a terminal, from --from-file, or --generate: never from the command line.

    Example:

        conveyor secrets set DATABASE_URL --env production < db-url.txt
    """
    _check_name(name)
    value = _value(name, env, from_file, generate)
    with opened(env) as s:
        records = s.local.write(env, {name: value}, s.who, action="set")
    _written(s, "set", records, json_out)


@secrets_app.command("rotate", cls=Command)
def rotate(
    name: NameArg,
    env: EnvReq,
    from_file: FromFile = None,
    generate: Generate = None,
    json_out: JsonOpt = False,
) -> None:
    """Replace an existing secret with a new version (stdin, --from-file or --generate).
    Services get it at their next deploy: `conveyor deploy` the same version again.

    Example:

        conveyor secrets rotate SESSION_KEY --env production --generate 32
    """
    _check_name(name)
    with opened(env) as s:
        current = s.local.rows.get(s.env.app, env, name)
        if current is None or current.removed:
            fail(f"no secret {name} in {env} to rotate: `conveyor secrets set {name} --env {env}`")
        value = _value(name, env, from_file, generate)
        records = s.local.write(env, {name: value}, s.who, action="rotate")
    _written(s, "rotated", records, json_out)


@secrets_app.command("get", cls=Command)
def get(
    name: NameArg,
    env: EnvReq,
    version: Annotated[
        int | None, typer.Option("--version", help="This version of the local store.")
    ] = None,
    reason: Annotated[
        str, typer.Option("--reason", help="Why (recorded; required in production).")
    ] = "",
    break_glass: Annotated[
        bool,
        typer.Option(
            "--break-glass",
            help="[access] admins: read the last cached copy when the provider is down "
            "(notifies the webhooks).",
        ),
    ] = False,
    json_out: JsonOpt = False,
) -> None:
    """Print a secret's value, as the environment's providers resolve it. Recorded in the
    audit log (who, when, which version — not the value).

    Example:

        conveyor secrets get STRIPE_KEY --env production --reason "debugging payment webhooks"
    """
    _check_name(name)
    if break_glass and version is not None:
        fail("--break-glass reads the current value: leave out --version")
    with opened(env) as s:
        why = protected(s.env)
        if (why or break_glass) and not reason.strip():
            needs = "a break-glass read" if break_glass else f"reading a secret ({why})"
            fail(f"{needs} needs --reason: say why, it goes into the audit log")
        s.resolver.audit_action = "secret.get"
        pinned = {name: ("local", str(version))} if version is not None else None
        if break_glass:
            from conveyor.secrets import breakglass

            done = _run(
                breakglass.read(s.resolver, s.env, s.cfg.access.admins, name, reason.strip())
            )
            _notes([f"break-glass read of {name}: {done.how}"])
            _notes(
                [f"webhook {o}: {'notified' if ok else 'NOT notified'}" for o, ok in done.notified]
            )
            value = done.value
        else:
            found = _run(s.resolver.resolve(env, [name], pinned, purpose=_purpose(reason)))
            _notes(found.notes)
            value = found[name]
    if json_out:
        emit_json(
            {
                "exit": 0,
                "name": name,
                "environment": env,
                "provider": value.provider,
                "version": value.version,
                "value": value.value,
            }
        )
        return
    sys.stdout.write(value.value + "\n")


def _purpose(reason: str) -> str:
    return f"get: {reason.strip()}" if reason.strip() else "get"


def _run(coro: Any) -> Any:
    import asyncio

    return asyncio.run(coro)


def _notes(notes: list[str]) -> None:
    for note in notes:
        if not json_mode():
            print(f"note: {clean(note)}", file=sys.stderr)


@secrets_app.command("list", cls=Command)
def list_secrets(env: EnvReq, json_out: JsonOpt = False) -> None:
    """List the secrets of the local store for an environment: names, versions, who changed
    them and when. Never values.

    Example:

        conveyor secrets list --env production --json
    """
    with opened(env) as s:
        found = s.local.rows.latest(s.env.app, env)
    if json_out:
        emit_json({"exit": 0, "environment": env, "secrets": [r.to_json() for r in found]})
        return
    if not found:
        console.print(f"no secrets stored for {env}", markup=False)
        return
    width = max(len(r.name) for r in found)
    for rec in found:
        state = "removed" if rec.removed else f"version {rec.version}"
        console.print(
            f"{rec.name:<{width}}  {state:<12} {rec.action} by {clean(rec.created_by)} "
            f"{when(rec.created_at)}",
            markup=False,
        )


@secrets_app.command("history", cls=Command)
def history(name: NameArg, env: EnvReq, json_out: JsonOpt = False) -> None:
    """Every version of a secret: when, by whom, how (set, rotate, import, rm). Never values.

    Example:

        conveyor secrets history STRIPE_KEY --env production
    """
    _check_name(name)
    with opened(env) as s:
        found = s.local.rows.history(s.env.app, env, name)
    if not found:
        fail(f"no secret {name} in {env}", 1)
    if json_out:
        emit_json({"exit": 0, "environment": env, "versions": [r.to_json() for r in found]})
        return
    for rec in found:
        console.print(
            f"version {rec.version}  {rec.action:<7} by {clean(rec.created_by)} "
            f"{when(rec.created_at)}",
            markup=False,
        )


@secrets_app.command("import", cls=Command)
def import_file(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="A dotenv file (NAME=value).")],
    env: EnvReq,
    json_out: JsonOpt = False,
) -> None:
    """Store every NAME=value of a dotenv file in one step (all or nothing); a value equal to
    the current one adds no version.

    Example:

        conveyor secrets import .env.local --env dev
    """
    from conveyor.config.secrets import check_secret_name
    from conveyor.core.dotenv import DotenvError, parse

    try:
        entries = parse(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {file}: {exc}")
    except DotenvError as exc:
        fail(f"{file}:{exc.line}: {exc}")
    values: dict[str, str] = {}
    for entry in entries:
        try:
            check_secret_name(entry.name)
        except ValueError as exc:
            fail(f"{file}:{entry.line}: {exc}")
        values[entry.name] = entry.value
    if not values:
        fail(f"{file} holds no NAME=value line: nothing was imported")
    with opened(env) as s:
        changed = {}
        for name, value in values.items():
            current = s.local.read(env, name)
            if current is None or current[1] != value:
                changed[name] = value
        records = s.local.write(env, changed, s.who, action="import") if changed else []
    same = len(values) - len(changed)
    if json_out:
        emit_json(
            {
                "exit": 0,
                "environment": env,
                "secrets": [r.to_json() for r in records],
                "unchanged": sorted(set(values) - set(changed)),
            }
        )
        return
    _written(s, "imported", records, False)
    if same:
        console.print(f"{same} unchanged (no new version)", markup=False)


@secrets_app.command("export", cls=Command)
def export(
    env: EnvReq,
    fmt: Annotated[str, typer.Option("--format", help="Only dotenv.")] = "dotenv",
) -> None:
    """Print the local store's secrets of a development environment as a dotenv file, for a
    shell or an IDE. Refused for production and for environments that need approvals.

    Example:

        conveyor secrets export --env dev --format dotenv > .env.local
    """
    from conveyor.core.dotenv import format_entry
    from conveyor.store import audit

    if fmt != "dotenv":
        fail(f"unknown --format {fmt!r}: only dotenv")
    with opened(env) as s:
        why = protected(s.env)
        if why:
            fail(
                f"refusing to export the secrets of {env}: {why}; read one at a time with "
                f"`conveyor secrets get NAME --env {env} --reason ...`"
            )
        lines, versions = [], {}
        for rec in s.local.rows.latest(s.env.app, env):
            found = None if rec.removed else s.local.read(env, rec.name, rec.version)
            if found is not None:
                lines.append(format_entry(rec.name, found[1]))
                versions[rec.name] = rec.version
        audit.record(
            s.store,
            at=s.resolver.clock(),
            actor=s.who,
            action="secret.export",
            app=s.env.app,
            environment=env,
            target=", ".join(versions),
            outcome="ok",
            detail="dotenv",
            data={"versions": versions},
        )
    sys.stdout.write("".join(line + "\n" for line in lines))


@secrets_app.command("rm", cls=Command)
def rm(name: NameArg, env: EnvReq, yes: YesOpt = False, json_out: JsonOpt = False) -> None:
    """Remove a secret: a tombstone version (its history stays, `set` brings it back).
    Services keep the value they started with until their next deploy.

    Example:

        conveyor secrets rm OLD_API_KEY --env production --yes
    """
    _check_name(name)
    with opened(env) as s:
        current = s.local.rows.get(s.env.app, env, name)
        if current is None or current.removed:
            fail(f"no secret {name} in {env}")
        if not yes:
            if not sys.stdin.isatty() or json_mode():
                fail(f"removing {name} from {env} needs --yes")
            typer.confirm(f"Remove {name} from {env}? Its history is kept", abort=True)
        records = s.local.write(env, {name: None}, s.who, action="rm")
    _written(s, "removed", records, json_out)


@secrets_app.command("doctor", cls=Command)
def doctor(env: EnvReq, json_out: JsonOpt = False) -> None:
    """Check every secret the environment needs (services' secrets, webhooks' url_secret):
    which provider answers it, which version, how fast, and what failed. Exit 1 when one
    cannot be resolved. Values are fetched (and audited) but never printed.

    Example:

        conveyor secrets doctor --env production
    """
    from conveyor.secrets.resolve import required_names

    with opened(env) as s:
        names = required_names(s.env)
        s.resolver.audit_action = "secret.doctor"
        found = _run(s.resolver.check(env, names, purpose="doctor"))
    missing = found.missing(names)
    code = 1 if missing else 0
    if json_out:
        emit_json(
            {
                "exit": code,
                "environment": env,
                "providers": list(s.env.secrets.providers),
                "secrets": [
                    {
                        "name": name,
                        "resolved": name in found,
                        "provider": found[name].provider if name in found else None,
                        "version": found[name].version if name in found else None,
                        "attempts": [a.to_json() for a in found.attempts if a.name == name],
                    }
                    for name in names
                ],
            }
        )
        raise typer.Exit(code)
    console.print(
        f"{env}: {len(names)} secrets needed, providers: {', '.join(s.env.secrets.providers)}",
        markup=False,
    )
    for name in names:
        tried = [a for a in found.attempts if a.name == name]
        failed = "; ".join(f"{a.provider}: {a.detail}" for a in tried if a.outcome != "found")
        if name in found:
            answer = tried[-1]
            line = f"✓ {name}: {answer.provider} {answer.detail} ({answer.seconds * 1000:.0f} ms)"
            if failed:
                line += f" — before it: {failed}"
        else:
            line = f"✗ {name}: {failed}"
        console.print(clean(line), markup=False, soft_wrap=True)
    raise typer.Exit(code)
