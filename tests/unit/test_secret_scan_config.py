"""scan_config_values: literal credentials in a loaded conveyor.toml, named by file, line and key
(what `conveyor deploy` refuses). Planted values are made at run time, as in test_secret_scan."""

from __future__ import annotations

import random
import string
from pathlib import Path

from conveyor.config import load_config
from conveyor.secrets.scan import scan_config_values
from conveyor.secrets.scan_files import check_config

_rng = random.Random(7)


def rand(n: int) -> str:
    return "".join(_rng.choice(string.ascii_letters + string.digits) for _ in range(n))


CONFIG = """\
[app]
name = "shop"

[services.web]
command = "python3 app.py --port {{port}}"
port = 8080
env = {{ LOG_LEVEL = "info", STRIPE_KEY = "{stripe}" }}

[services.worker]
kind = "worker"
command = "python3 worker.py"

[services.worker.env]
QUEUE = "default"
DATABASE_URL = "postgres://shop:{password}@db.internal/shop"

[[notifications]]
url = "https://example.org/hooks/deploys"

[[notifications]]
url = "{webhook}"
events = ["failed"]

[environments.dev]

[environments.production.services.web.env]
SESSION_SECRET = "{session}"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "conveyor.toml"
    path.write_text(text)
    return path


def planted(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    values = {
        "stripe": "sk" + "_live_" + rand(24),
        "password": rand(20),
        "webhook": "https://hooks."
        + "slack.com/services/T"
        + rand(8).upper()
        + "/B"
        + rand(8).upper()
        + "/"
        + rand(24),
        "session": rand(40),
    }
    return write(tmp_path, CONFIG.format(**values)), values


def test_literal_credentials_are_found_with_file_line_and_key(tmp_path: Path) -> None:
    path, values = planted(tmp_path)
    config = load_config(path)
    found = scan_config_values(config, path.read_text())
    assert [(f.key, f.line, f.rule) for f in found] == [
        ("services.web.env.STRIPE_KEY", 7, "stripe-key"),
        ("services.worker.env.DATABASE_URL", 15, "url-credentials"),
        ("notifications.1.url", 21, "slack-webhook"),
        ("environments.production.services.web.env.SESSION_SECRET", 27, "assigned-secret"),
    ]
    assert {f.file for f in found} == {str(path)}
    shown = "\n".join(str(f) for f in found)
    for value in values.values():
        assert value not in shown
    assert f"{path}:7: stripe-key (services.web.env.STRIPE_KEY): " in shown


def test_check_config_reads_the_lines_itself(tmp_path: Path) -> None:
    path, _ = planted(tmp_path)
    config = load_config(path)
    assert check_config(config) == scan_config_values(config, path.read_text())


def test_without_the_text_findings_name_the_key(tmp_path: Path) -> None:
    path, _ = planted(tmp_path)
    found = scan_config_values(load_config(path))
    assert len(found) == 4 and {f.line for f in found} == {None}
    assert found[0].where == str(path)


def test_an_allow_comment_in_the_file_is_honoured(tmp_path: Path) -> None:
    path, _ = planted(tmp_path)
    text = path.read_text().replace(
        '[[notifications]]\nurl = "https://hooks',
        "[[notifications]]\n# conveyor:allow-secret because a channel for tests only\n"
        'url = "https://hooks',
    )
    write(tmp_path, text)
    found = scan_config_values(load_config(path), text)
    assert "notifications.1.url" not in {f.key for f in found}
    assert len(found) == 3


def test_a_clean_configuration_has_no_findings(tmp_path: Path) -> None:
    text = CONFIG.format(
        stripe="${STRIPE_KEY}",
        password="${DB_PASSWORD}",
        webhook="https://example.org/hooks/other",
        session="<set with conveyor secrets set>",
    )
    path = write(tmp_path, text)
    assert scan_config_values(load_config(path), text) == []


def test_the_example_app_has_no_findings() -> None:
    root = Path(__file__).resolve().parents[2]
    config = load_config(root / "examples" / "demoapp" / "conveyor.toml")
    assert check_config(config) == []
