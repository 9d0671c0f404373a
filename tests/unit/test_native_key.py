"""native.py without a compiler: which build a process may load, and why it runs interpreted."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from conveyor.proxy import native


def copy_sources(tmp_path: Path) -> Path:
    here = Path(native.__file__).parent
    for name in native.MODULES:
        shutil.copy2(here / f"{name}.py", tmp_path / f"{name}.py")
    return tmp_path


def test_the_key_names_the_exact_sources(tmp_path: Path) -> None:
    sources = copy_sources(tmp_path)
    key = native.build_key(sources)
    assert key == native.build_key(sources) == native.build_key()
    # One byte more in any compiled module: another key, so a stale build is never loaded.
    for name in native.MODULES:
        path = sources / f"{name}.py"
        text = path.read_bytes()
        path.write_bytes(text + b"\n")
        assert native.build_key(sources) != key, name
        path.write_bytes(text)
    assert native.build_key(sources) == key


def test_the_builds_live_under_the_directory_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_NATIVE_DIR", str(tmp_path))
    assert native.build_dir() == tmp_path / native.build_key()
    monkeypatch.delenv("CONVEYOR_NATIVE_DIR")
    assert native.native_root().name == "conveyor-native"


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> native.NativeState:
    """A process state of its own, builds under tmp_path, the switch not set."""
    fresh = native.NativeState()
    monkeypatch.setattr(native, "STATE", fresh)
    monkeypatch.setenv("CONVEYOR_NATIVE_DIR", str(tmp_path))
    monkeypatch.delenv("CONVEYOR_PROXY_NATIVE", raising=False)
    return fresh


def test_activation_says_why_it_runs_interpreted(
    state: native.NativeState, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVEYOR_PROXY_NATIVE", "0")
    assert native.activate().reason == "CONVEYOR_PROXY_NATIVE=0"
    monkeypatch.setenv("CONVEYOR_PROXY_NATIVE", "1")
    import conveyor.proxy.downstream  # noqa: F401 - as the test process has: too late to swap

    reason = native.activate().reason
    assert reason.startswith("activated too late: ") and "downstream" in reason
    assert not state.compiled and state.label() == "interpreted"


def test_without_a_build_it_names_the_command(
    state: native.NativeState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As in a fresh proxy process: none of the compiled modules imported yet.
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "fresh.py").write_text("")
    monkeypatch.setattr(native, "MODULES", ("fresh",))
    monkeypatch.setattr(native, "_SOURCE_DIR", tmp_path / "src")
    assert native.activate().reason == (
        f"no build for these sources in {tmp_path} (`conveyor proxy compile`)"
    )
    assert not state.compiled


def test_a_build_without_its_tools_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native.shutil, "which", lambda _: None)
    monkeypatch.setattr(native, "build_dir", lambda source_dir=None: Path("/nonexistent/x"))
    with pytest.raises(native.BuildError, match=r"missing a C compiler \(.*apt-get install gcc\)"):
        native.compile_hot_path()


def test_unreadable_sources_mean_interpreted_not_a_crash(
    state: native.NativeState, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(native, "MODULES", ("gone",))
    monkeypatch.setattr(native, "_SOURCE_DIR", tmp_path)  # no gone.py: installed as bytecode
    assert native.activate().reason.startswith("cannot read the sources to find their build: ")
    assert not state.compiled
    with pytest.raises(native.BuildError, match="cannot read the sources to compile: "):
        native.compile_hot_path()
