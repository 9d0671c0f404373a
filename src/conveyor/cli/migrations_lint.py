"""`conveyor migrations lint`: blue/green safety of SQL migrations, with no database and no
conveyor.toml needed (CI and pre-commit run it on a bare checkout). See docs/migrations.md, Lint.

Exit codes: 0 no error-level finding (warnings do not fail), 1 an error-level finding remains,
2 a path cannot be read, the lint is not installed, or the conveyor.toml found is unreadable.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from conveyor.cli.common import CONFIG_NAME, Command, JsonOpt, app
from conveyor.cli.output import clean, console, emit_json, fail

if TYPE_CHECKING:
    from conveyor.migrations.lint import LintReport

migrations_app = typer.Typer(
    help="Check the app's SQL migrations before they run.\n\n"
    "Example:\n\n    conveyor migrations lint migrations/",
    no_args_is_help=True,
)
app.add_typer(migrations_app, name="migrations")


# The paths are the command's extra arguments, not a typed list[Path] argument: a list would
# take typer's pydantic coercion (see cli/coercion.py), which every other option is spared.
@migrations_app.command(
    "lint",
    cls=Command,
    options_metavar="[OPTIONS] [PATH]...",
    context_settings={"allow_extra_args": True},
)
def lint(
    ctx: typer.Context,
    rules: Annotated[bool, typer.Option("--rules", help="List the rules and exit.")] = False,
    json_out: JsonOpt = False,
) -> None:
    """Find migrations that would lock a busy table or break the release still running during a
    blue/green switch: each finding names the rule, file:line, what locks or breaks, and the
    safe alternative. A finding is allowed in the file with
    `-- conveyor:allow RULE because <reason>` on the line above the statement.

    PATH: files or directories (.sql, recursively). Default: [migrations] dir of the nearest
    conveyor.toml, else ./migrations.

    Exit 1 when an error-level finding remains, 0 otherwise; 2 when a path cannot be read.

    Example:

        conveyor migrations lint migrations/ --json
    """
    from conveyor.core.lint.catalogue import RULES

    if rules:
        if json_out:
            emit_json({"rules": [vars(r) for r in RULES.values()]})
        else:
            for r in RULES.values():
                console.print(f"{r.id:34} {r.severity:8} {r.summary}", markup=False)
        return
    from conveyor.migrations.lint import (
        INSTALL_HINT,
        LintPathError,
        available,
        collect,
        lint_files,
    )

    if not available():
        fail(f"the migrations lint needs pglast (GPL-3.0-or-later): {INSTALL_HINT}")
    targets = [Path(arg) for arg in ctx.args] or [_default_dir()]
    try:
        items = collect(targets)
    except LintPathError as exc:
        fail(str(exc))
    report = lint_files(items)
    if json_out:
        emit_json(report.as_dict())
    else:
        _print(report)
    raise typer.Exit(report.exit_code)


def _default_dir() -> Path:
    """[migrations] dir of the nearest conveyor.toml (read as plain TOML: the rest of the
    configuration need not be valid for a lint), or ./migrations without one."""
    start = Path(os.environ.get("CONVEYOR_PROJECT", ".")).resolve()
    directory = start if start.is_dir() else start.parent
    for candidate in (directory, *directory.parents):
        config = candidate / CONFIG_NAME
        if config.is_file():
            try:
                data = tomllib.loads(config.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
                fail(f"{config}: {exc}")
            section = data.get("migrations", {})
            value = section.get("dir", "migrations") if isinstance(section, dict) else None
            if not isinstance(value, str) or not value:
                fail(f"{config}: [migrations] dir must be a directory name (got {value!r})")
            return candidate / value
    return Path("migrations")


def _print(report: LintReport) -> None:
    from rich.text import Text

    for f in report.findings:
        colour = "bold red" if f.severity == "error" else "yellow"
        console.print(
            Text.assemble(
                (f"{clean(f.path)}:{f.line}: ", "bold"),
                (f.severity, colour),
                f" {f.rule}\n",
                (f"  {clean(f.statement)}\n" if f.statement else "", "dim"),
                f"  {clean(f.message)}\n",
                ("  instead: ", "green"),
                clean(f.fix),
            ),
            soft_wrap=True,
        )
    for a in report.allowed:
        console.print(
            f"{clean(a.path)}:{a.line}: allowed {a.rule} ({a.scope}, line {a.comment_line}): "
            f"{clean(a.reason)}",
            markup=False,
            soft_wrap=True,
        )
    files = len(report.files)
    summary = (
        f"{files} file{'s' * (files != 1)}, {len(report.errors)} error(s), "
        f"{len(report.warnings)} warning(s), {len(report.allowed)} allowed"
    )
    mark = "[red]✗[/]" if report.exit_code else "[green]✓[/]"
    console.print(f"{mark} {summary}")
