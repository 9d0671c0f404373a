#!/usr/bin/env python3
"""The README's two commands: `python3 dev.py demo` and `python3 dev.py test`.

Each creates `.venv` (with conveyor and its test tools) when it is missing, using nothing but the
Python that runs this file (3.11 or newer).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PY = VENV / "bin" / "python"
STAMP = VENV / ".conveyor-installed"


def ensure_venv() -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - this file may run on an older python3
        sys.exit(f"conveyor needs Python 3.11 or newer (this is {sys.version.split()[0]})")
    if not PY.exists():
        print(f"creating {VENV}", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    # Reinstall when pyproject.toml changed since the last install.
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if STAMP.exists() and STAMP.read_text() == digest:
        return
    quiet = ["-q"] if os.environ.get("CI") != "true" else []
    subprocess.run([str(PY), "-m", "pip", "install", *quiet, "--upgrade", "pip"], check=True)
    subprocess.run([str(PY), "-m", "pip", "install", *quiet, "-e", f"{ROOT}[test]"], check=True)
    STAMP.write_text(digest)


def compile_proxy() -> None:
    """The proxy's compiled hot path (docs/proxy.md); built again only after its sources change.
    Without a C compiler the proxy runs interpreted: said, not fatal."""
    if run(str(VENV / "bin" / "conveyor"), "proxy", "compile") != 0:
        print("the proxy will run interpreted (see the line above)", flush=True)


def run(*cmd: str) -> int:
    print("+", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT)


def main() -> int:
    what = sys.argv[1] if len(sys.argv) > 1 else "help"
    if what not in ("demo", "test", "lint"):
        print(__doc__)
        return 2
    ensure_venv()
    compile_proxy()
    bin_ = VENV / "bin"
    if what == "demo":
        return run(str(bin_ / "conveyor"), "demo", *sys.argv[2:])
    lint = (
        run(str(bin_ / "ruff"), "check", "src", "tests", "benchmarks", "examples", "dev.py")
        or run(
            str(bin_ / "ruff"),
            "format",
            "--check",
            "src",
            "tests",
            "benchmarks",
            "examples",
            "dev.py",
        )
        or run(str(bin_ / "mypy"))
    )
    if what == "lint" or lint:
        return lint
    workers = os.environ.get("CONVEYOR_TEST_WORKERS", "4")
    return run(str(PY), "-m", "pytest", "-n", workers, "--dist", "loadgroup", *sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
