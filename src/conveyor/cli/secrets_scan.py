"""`conveyor secrets scan [PATH]`: likely plaintext secrets in a project (rules: secrets/scan.py).

Needs no conveyor.toml and no agent: it runs in pre-commit hooks and CI on any checkout.
Exit 1 with findings, 0 when clean, 2 when a path cannot be read (the scan is incomplete).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from conveyor.cli.common import Command, JsonOpt
from conveyor.cli.output import clean, console, emit_json, stderr

ALLOW_HINT = "allow one in place with a comment `conveyor:allow-secret because <reason>`"


def scan(
    path: Annotated[
        Path | None,
        typer.Argument(
            metavar="PATH",
            help="A file or directory (default: this directory).",
            show_default=False,
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Find likely plaintext secrets: private keys, cloud keys, tokens with well-known prefixes,
    passwords in URLs, high-entropy values assigned to *_KEY, *_SECRET, *_TOKEN, PASSWORD.

    In a git checkout it reads the files git tracks or would add (an ignored .env.local is
    not read). Prints file:line, the rule and the line with the value masked. Exit 1 with
    findings, 0 when clean, 2 when a path cannot be read.

    Example:

        conveyor secrets scan . --json
    """
    from conveyor.secrets.scan_files import scan_path

    target = path if path is not None else Path(".")
    with _spinner(f"scanning {target}", json_out):
        result = scan_path(target)
    code = 2 if result.errors else 1 if result.findings else 0
    if json_out:
        emit_json(
            {
                "exit": code,
                "files": result.files,
                "findings": [finding.to_json() for finding in result.findings],
                "errors": result.errors,
            }
        )
        raise typer.Exit(code)
    for finding in result.findings:
        console.print(clean(str(finding)), markup=False, highlight=False, soft_wrap=True)
    for error in result.errors:
        stderr.print(f"error: {clean(error)}", markup=False, soft_wrap=True)
    files = f"{result.files} file{'s' if result.files != 1 else ''}"
    if result.findings:
        count = len(result.findings)
        stderr.print(
            f"{count} likely secret{'s' if count != 1 else ''} in {files} scanned: move "
            f"{'them' if count != 1 else 'it'} to `conveyor secrets set NAME --env ENV`, or "
            f"{ALLOW_HINT}",
            markup=False,
            soft_wrap=True,
        )
    elif not result.errors:
        console.print(f"no likely secrets in {files}", markup=False)
    raise typer.Exit(code)


@contextmanager
def _spinner(message: str, json_out: bool) -> Iterator[None]:
    """A spinner on stderr while scanning, on a terminal only (a large tree takes seconds)."""
    console = stderr.get()
    if json_out or not console.is_terminal:
        yield
        return
    with console.status(clean(message)):
        yield


def register(group: typer.Typer) -> None:
    """Attach `scan` to the `conveyor secrets` group."""
    group.command("scan", cls=Command)(scan)
