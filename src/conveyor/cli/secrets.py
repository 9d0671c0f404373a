"""`conveyor secrets`: the secrets of a project."""

from __future__ import annotations

import typer

from conveyor.cli import secrets_scan
from conveyor.cli.common import app

secrets_app = typer.Typer(
    help="Secrets: find plaintext ones in the project.\n\nExample:\n\n    conveyor secrets scan .",
    no_args_is_help=True,
)
app.add_typer(secrets_app, name="secrets")
secrets_scan.register(secrets_app)
