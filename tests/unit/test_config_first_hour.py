"""Configuration messages a new user met in their first hour (issue 9)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from conveyor.config import (
    AgentConfig,
    ConfigError,
    NotificationConfig,
    ProxyConfig,
    load_config,
)

MINIMAL = '[app]\nname = "shop"\n[services.web]\ncommand = "serve {port}"\nport = 8080\n'
DOCS = Path(__file__).parents[2] / "docs" / "configuration.md"


def load(tmp_path: Path, text: str) -> None:
    path = tmp_path / "conveyor.toml"
    path.write_text(text)
    load_config(path)


@pytest.mark.parametrize(
    ("value", "what"),
    [
        ("true", "a boolean"),
        ("[1]", "an array"),
        ("{ s = 1 }", "a table"),
        ("07:32:00", "a date or time"),
    ],
)
def test_a_duration_of_the_wrong_type_is_named_in_tomls_words(
    tmp_path: Path, value: str, what: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, MINIMAL + f"[rollout]\nbake = {value}\n")
    assert caught.value.key == "rollout.bake"
    assert caught.value.message == f'expected a duration such as "60s", got {what}'
    assert "True" not in str(caught.value)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_an_empty_file_is_one_message_pointing_at_init(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert caught.value.more == ()
    assert str(caught.value).endswith(
        "conveyor.toml is empty: it needs at least [app] name and one [services.NAME] "
        "(`conveyor init` writes a commented one)"
    )


def _documented_keys(section: str) -> list[str]:
    """The keys in the table under the `## `[section]`` heading of docs/configuration.md."""
    text = DOCS.read_text()
    start = text.index(f"## `[{section}]`")
    end = text.find("\n## ", start + 1)
    return re.findall(r"^\| `(\w+)` \|", text[start:end], re.MULTILINE)


@pytest.mark.parametrize(
    ("section", "model"),
    [("proxy", ProxyConfig), ("[notifications]", NotificationConfig), ("agent", AgentConfig)],
)
def test_the_docs_list_every_key_under_its_own_section(
    section: str, model: type[BaseModel]
) -> None:
    assert sorted(_documented_keys(section)) == sorted(model.model_fields)
