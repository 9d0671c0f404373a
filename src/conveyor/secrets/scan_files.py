"""Which files `conveyor secrets scan` reads, and reading them (the rules are in scan.py).

In a git work tree: the files git tracks or would add (`git ls-files --cached --others
--exclude-standard`), so an ignored `.env.local` (where a developer's secrets belong) is not
read, while a `.env` that is tracked, or about to be, is. Elsewhere: every file below the path
but version-control, virtualenv and cache directories. Binary files and files over 2 MiB are
passed over: secrets are written by people, in text.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from conveyor.config.models import Config
from conveyor.secrets.scan import Finding, scan_config_values, scan_text, skipped

MAX_BYTES = 2 * 1024 * 1024
_SKIPPED_DIRS = {
    ".git",
    ".hg",
    ".svn",
    ".venv",
    "venv",
    "node_modules",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    ".tox",
    ".nox",
    ".hypothesis",
    ".conveyor",
    "dist",
    "build",
}


@dataclass
class ScanResult:
    findings: list[Finding] = field(default_factory=list)
    # Paths that could not be read, with why: the scan is incomplete (exit 2).
    errors: list[str] = field(default_factory=list)
    files: int = 0


def scan_path(path: Path) -> ScanResult:
    """Scan a file, or the files of a directory (see the module's docstring for which)."""
    result = ScanResult()
    if not path.exists():
        result.errors.append(f"{path}: no such file or directory")
        return result
    for file in _files(path, result) if path.is_dir() else [path]:
        shown = _shown(file, path)
        if skipped(shown):
            continue
        text = _read(file, shown, result)
        if text is not None:
            result.files += 1
            result.findings.extend(scan_text(shown, text))
    return result


def check_config(config: Config) -> list[Finding]:
    """scan_config_values with lines: reads the file the configuration was loaded from."""
    try:
        text: str | None = config.source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        text = None  # findings then name the key without its line
    return scan_config_values(config, text)


def _shown(file: Path, given: Path) -> str:
    """As the user would name it: below the path they gave, as they gave it."""
    if file == given:
        return str(given)
    try:
        return str(given / file.relative_to(given))
    except ValueError:
        return str(file)


def _read(file: Path, shown: str, result: ScanResult) -> str | None:
    try:
        info = file.stat()
        if not stat.S_ISREG(info.st_mode):
            # Named directly (a walk lists regular files only): a FIFO would block the scan.
            result.errors.append(f"{shown}: cannot read: not a regular file")
            return None
        if info.st_size > MAX_BYTES:
            return None
        data = file.read_bytes()
    except OSError as exc:
        result.errors.append(f"{shown}: cannot read: {exc.strerror or exc}")
        return None
    if b"\0" in data[:8192]:
        return None  # binary
    return data.decode("utf-8", errors="replace")


def _files(root: Path, result: ScanResult) -> Iterator[Path]:
    listed = _git_files(root)
    if listed is not None:
        yield from listed
        return
    for directory, dirs, files in os.walk(root, onerror=lambda exc: _walk_error(exc, result)):
        dirs[:] = sorted(d for d in dirs if d not in _SKIPPED_DIRS)
        for name in sorted(files):
            file = Path(directory, name)
            if file.is_file() and not file.is_symlink():
                yield file


def _walk_error(exc: OSError, result: ScanResult) -> None:
    result.errors.append(f"{exc.filename}: cannot read: {exc.strerror or exc}")


def _git_files(root: Path) -> list[Path] | None:
    """The files git tracks or would add below `root`; None outside a git work tree."""
    try:
        done = subprocess.run(
            [
                "git",
                "-C",
                str(root),
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ],
            capture_output=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return None
    names = sorted({name for name in done.stdout.decode(errors="replace").split("\0") if name})
    # Deleted but not yet committed files are still listed: only what is there can be read.
    return [
        root / name for name in names if (root / name).is_file() and not (root / name).is_symlink()
    ]
