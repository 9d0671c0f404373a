"""`conveyor schema config`: what editors check conveyor.toml with agrees with the loader."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from conveyor.schemas import config_schema

DOCS = Path(__file__).parents[2] / "docs"
SCHEMA = config_schema()


def examples() -> list[str]:
    found = []
    for page in ("configuration.md", "promotion.md"):
        text = (DOCS / page).read_text()
        found += re.findall(r"^```toml\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    return found


def complete(example: str) -> dict[str, Any]:
    prefix = "" if "[app]" in example else '[app]\nname = "shop"\n'
    if "[services.web]" not in example:
        prefix += '[services.web]\ncommand = "serve {port}"\nport = 8080\n'
    return tomllib.loads(prefix + example)


@pytest.mark.parametrize("index", range(len(examples())))
def test_every_documented_example_is_valid_for_editors(index: int) -> None:
    jsonschema.validate(complete(examples()[index]), SCHEMA)


@pytest.mark.parametrize(
    "broken",
    [
        '[services.web]\ncommand = "serve {port}"\nport = "8080"\n',  # a string port
        '[services.web]\ncommand = "serve {port}"\nport = 8080\ncomand = "x"\n',  # unknown key
        '[services.web]\ncommand = "serve {port}"\nport = 8080\n[rollout]\nbake = true\n',
        '[services.web]\ncommand = "serve {port}"\nport = 8080\n[environments.p]\nsoak = []\n',
    ],
)
def test_what_the_loader_refuses_by_type_the_schema_refuses_too(broken: str) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(tomllib.loads('[app]\nname = "shop"\n' + broken), SCHEMA)


def test_durations_and_hook_shorthands_are_what_is_written() -> None:
    data = complete(
        '[rollout]\nbake = "1m30s"\nstandby = 600\n[hooks]\nsmoke = "python3 smoke.py"\n'
        'post_deploy = { command = "notify", timeout = "5s" }\n'
    )
    jsonschema.validate(data, SCHEMA)
    assert "source" not in SCHEMA["properties"]
