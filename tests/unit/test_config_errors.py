"""Every file in config_cases/invalid/ is a broken conveyor.toml whose header says what error
loading it must give:

    # expect-line: 7            (or "none" when the error has no line)
    # expect-key: services.web.port
    # expect-message: a fragment of the message
    # expect-env: prod          (optional: load succeeds, Config.environment("prod") fails)
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conveyor.config import ConfigError, load_config

CASES = Path(__file__).parent / "config_cases" / "invalid"


def _expectations(path: Path) -> dict[str, str]:
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if not line.startswith("# expect-"):
            break
        name, _, value = line.removeprefix("# expect-").partition(":")
        found[name] = value.strip()
    return found


@pytest.mark.parametrize("case", sorted(CASES.glob("*.toml")), ids=lambda p: p.stem)
def test_invalid_config(case: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expect = _expectations(case)
    assert {"line", "key", "message"} <= expect.keys(), f"{case.name} lacks its expectations"
    with pytest.raises(ConfigError) as caught:
        config = load_config(case)
        if "env" in expect:
            config.environment(expect["env"])
    error = caught.value
    line = None if expect["line"] == "none" else int(expect["line"])
    assert (error.file, error.line, error.key) == (case, line, expect["key"]), str(error)
    assert expect["message"] in error.message, str(error)

    # The rendered form names the file relative to the working directory when it can.
    monkeypatch.chdir(CASES.parent)
    where = f"invalid/{case.name}" + (f":{line}" if line is not None else "")
    assert str(error).splitlines()[0] == f"{where}: {expect['key']}: {error.message}"


def test_cases_exist() -> None:
    assert len(list(CASES.glob("*.toml"))) >= 14


def test_error_outside_cwd_shows_the_path_as_given(tmp_path: Path) -> None:
    error = ConfigError(Path("/nonexistent-dir/conveyor.toml"), 3, "app.name", "bad")
    assert str(error) == "/nonexistent-dir/conveyor.toml:3: app.name: bad"


def test_all_errors_are_reported_first_by_line(tmp_path: Path) -> None:
    path = tmp_path / "conveyor.toml"
    path.write_text(
        "[app]\n"
        'name = "shop"\n'
        "[services.web]\n"
        'command = "serve {port}"\n'
        "port = 70000\n"
        "[services.web.health]\n"
        "healthy_threshold = 0\n"
        "[services.jobs]\n"
        'kind = "worker"\n'
        'command = "work"\n'
        "port = 1\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    error = caught.value
    lines = [(e.line, e.key) for e in (error, *error.more)]
    assert lines == [
        (5, "services.web.port"),
        (7, "services.web.health.healthy_threshold"),
        (11, "services.jobs.port"),
    ]
    assert len(str(error).splitlines()) == 3


def test_misspelt_key_is_not_also_reported_missing(tmp_path: Path) -> None:
    path = tmp_path / "conveyor.toml"
    path.write_text('[app]\nname = "shop"\n[services.web]\ncomand = "serve {port}"\nport = 1\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.more == ()
    assert caught.value.key == "services.web.comand"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "conveyor.toml")
    assert caught.value.message == "file not found"
    assert caught.value.file == tmp_path / "conveyor.toml"


def test_unreadable_encoding(tmp_path: Path) -> None:
    path = tmp_path / "conveyor.toml"
    path.write_bytes(b'[app]\nname = "\xff"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "cannot read" in caught.value.message


def test_relative_path_in_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "conveyor.toml"
    path.write_text("[app]\nname = 1\n")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith(f"sub{os.sep}conveyor.toml:2: app.name: ")
