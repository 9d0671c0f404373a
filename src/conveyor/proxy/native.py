"""The proxy's hot path compiled with mypyc: the same source, about a fifth less CPU per request.

Policy:
- Only the modules a request runs through are compiled (`MODULES`); their Python source stays
  the one truth, and the proxy runs it interpreted whenever no build matches it.
- A build is kept under `native_root()` in a directory named by `build_key()`: the SHA-256 of
  those sources, the interpreter's ABI tag and the platform. A source edited since the build,
  or another Python, gives another key, so a stale build is never loaded: there is nothing to
  invalidate.
- `conveyor proxy compile` (and the README's two commands, after they install) builds it. It
  needs a C compiler, Python's headers and mypy; without them it says what is missing and the
  proxy runs interpreted.
- Each proxy process (the keeper and every worker, `python -m conveyor.proxy`) calls
  `activate()` before it imports any of `MODULES`. A build that fails to import is dropped and
  the reason kept in `STATE`, for `conveyor proxy status`; the proxy then runs interpreted.
- `CONVEYOR_PROXY_NATIVE=0` turns it off; `CONVEYOR_NATIVE_DIR` moves the builds.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

# Leaves first: a module's imports among them are compiled with it.
MODULES = ("flow", "responses", "model", "upstream", "exchange", "state", "downstream")
PACKAGE = "conveyor.proxy"
_SOURCE_DIR = Path(__file__).resolve().parent
# Building takes about 15 s on one core; a hung compiler must not hang `conveyor proxy compile`.
BUILD_TIMEOUT = 600.0


class BuildError(Exception):
    """The hot path could not be compiled; the message says what is missing or what failed."""


@dataclass
class NativeState:
    """What this process runs: `compiled` with the build's directory, or why not."""

    compiled: bool = False
    path: str = ""
    reason: str = "not activated"

    def label(self) -> str:
        return "compiled" if self.compiled else "interpreted"


STATE = NativeState()


def native_root() -> Path:
    given = os.environ.get("CONVEYOR_NATIVE_DIR")
    return Path(given) if given else Path(sys.prefix) / "share" / "conveyor-native"


def build_key(source_dir: Path | None = None) -> str:
    source_dir = source_dir or _SOURCE_DIR
    digest = hashlib.sha256()
    digest.update(f"{sys.implementation.cache_tag} {sysconfig.get_platform()}\n".encode())
    for name in MODULES:
        digest.update(name.encode() + b"\0")
        digest.update((source_dir / f"{name}.py").read_bytes())
    return digest.hexdigest()[:24]


def build_dir(source_dir: Path | None = None) -> Path:
    return native_root() / build_key(source_dir)


def activate() -> NativeState:
    """Load the build of these exact sources, if there is one (module doc). Call before any of
    `MODULES` is imported; idempotent."""
    if STATE.compiled:
        return STATE
    if os.environ.get("CONVEYOR_PROXY_NATIVE", "1") == "0":
        STATE.reason = "CONVEYOR_PROXY_NATIVE=0"
        return STATE
    loaded = [m for m in MODULES if f"{PACKAGE}.{m}" in sys.modules]
    if loaded:
        STATE.reason = f"activated too late: {', '.join(loaded)} already imported"
        return STATE
    try:
        where = build_dir()
        built = (where / "manifest.json").is_file()
    except OSError as exc:
        # Sources installed as bytecode only, or a build directory we may not read: run what
        # is there rather than fail to start.
        STATE.reason = f"cannot read the sources to find their build: {exc}"
        return STATE
    if not built:
        STATE.reason = f"no build for these sources in {native_root()} (`conveyor proxy compile`)"
        return STATE
    package = importlib.import_module(PACKAGE)
    inner = str(where / "conveyor" / "proxy")
    sys.path.insert(0, str(where))
    package.__path__.insert(0, inner)
    try:
        for name in MODULES:
            module = importlib.import_module(f"{PACKAGE}.{name}")
            if not str(module.__file__).startswith(inner):
                raise ImportError(f"{name} came from {module.__file__}")
    except Exception as exc:  # any failure means: run the source
        sys.path.remove(str(where))
        package.__path__.remove(inner)
        for name in MODULES:
            sys.modules.pop(f"{PACKAGE}.{name}", None)
        STATE.reason = f"the build in {where} did not load ({exc}); running interpreted"
        return STATE
    STATE.compiled = True
    STATE.path = str(where)
    STATE.reason = ""
    return STATE


def _missing_tools() -> list[str]:
    missing = []
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        missing.append(f"a C compiler ({cc}: apt-get install gcc)")
    include = sysconfig.get_paths()["include"]
    if not (Path(include) / "Python.h").is_file():
        missing.append(f"Python's headers ({include}/Python.h: apt-get install python3-dev)")
    for module, hint in (("mypyc", "mypy"), ("setuptools", "setuptools")):
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(f"{hint} (pip install 'conveyor-deploy[native]')")
    return missing


def compile_hot_path(force: bool = False) -> tuple[Path, bool]:
    """Build the hot path for the current sources; (its directory, whether it was built now).

    Built in a temporary directory beside the final one and renamed into place, so a process
    activating meanwhile sees either no build or a whole one.
    """
    source_dir = _SOURCE_DIR
    try:
        final = build_dir(source_dir)
    except OSError as exc:
        raise BuildError(f"cannot read the sources to compile: {exc}") from exc
    if (final / "manifest.json").is_file() and not force:
        return final, False
    missing = _missing_tools()
    if missing:
        raise BuildError("cannot compile the proxy's hot path: missing " + "; ".join(missing))
    root = native_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".build-", dir=root))
    except OSError as exc:
        raise BuildError(f"cannot write builds in {root}: {exc} (set CONVEYOR_NATIVE_DIR)") from exc
    try:
        return _build(source_dir, work, final, force), True
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _build(source_dir: Path, work: Path, final: Path, force: bool) -> Path:
    # mypyc type-checks what it compiles, so it needs the whole package beside the modules.
    tree = work / "src"
    shutil.copytree(
        source_dir.parent, tree / "conveyor", ignore=shutil.ignore_patterns("__pycache__", "*.so")
    )
    files = [f"conveyor/proxy/{name}.py" for name in MODULES]
    started = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "mypyc", *files],
            cwd=tree,
            capture_output=True,
            text=True,
            timeout=BUILD_TIMEOUT,
            env={**os.environ, "MYPYPATH": str(tree)},
        )
    except subprocess.TimeoutExpired as exc:
        raise BuildError(f"mypyc did not finish within {BUILD_TIMEOUT:g}s") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise BuildError(f"mypyc failed (exit {done.returncode}):\n{tail}")
    staged = work / "out"
    (staged / "conveyor" / "proxy").mkdir(parents=True)
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    for lib in tree.glob(f"*__mypyc{suffix}"):
        shutil.copy2(lib, staged / lib.name)
    for name in MODULES:
        ext = tree / "conveyor" / "proxy" / f"{name}{suffix}"
        if not ext.is_file():
            raise BuildError(f"mypyc produced no {ext.name}")
        shutil.copy2(ext, staged / "conveyor" / "proxy" / ext.name)
    import mypy.version

    manifest = {
        "key": final.name,
        "modules": list(MODULES),
        "python": sys.version.split()[0],
        "mypy": mypy.version.__version__,
        "built_at": time.time(),
        "seconds": round(time.monotonic() - started, 1),
    }
    (staged / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if force and final.exists():
        # The old build aside first (running workers keep their mapped copy). Without --force a
        # build that appeared meanwhile (a concurrent compile) is kept: it is the same.
        final.rename(work / "old")
    try:
        staged.rename(final)
    except OSError:
        if not (final / "manifest.json").is_file():  # not a concurrent build that won the race
            raise
    return final
