"""The README's configuration example and its error example are what the code really does."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from conveyor.config import ConfigError, load_config

README = Path(__file__).resolve().parents[2] / "README.md"


def example() -> str:
    return re.findall(r"```toml\n(.*?)```", README.read_text(), re.S)[0]


def test_the_readme_example_loads(tmp_path: Path) -> None:
    path = tmp_path / "conveyor.toml"
    path.write_text(example())
    config = load_config(path)
    assert set(config.environments) == {"dev", "staging"}
    assert config.environment("staging").services["web"].port == 18080


def test_the_readme_error_example_is_the_real_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    Path("conveyor.toml").write_text(
        example().replace('interval = "1s"\ntimeout', 'interval = "fast"\ntimeout')
    )
    with pytest.raises(ConfigError) as err:
        load_config(Path("conveyor.toml"))
    assert str(err.value) in README.read_text()
