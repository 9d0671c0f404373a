"""The secrets keys of conveyor.toml resolved per environment (errors: config_cases/invalid)."""

from __future__ import annotations

from pathlib import Path

from conveyor.config import load_config
from conveyor.secrets.resolve import required_names

CONFIG = """\
[app]
name = "shop"

[services.web]
command = "serve {port}"
port = 8080
secrets = ["DATABASE_URL", "STRIPE_KEY"]
env = { LOG_LEVEL = "info" }

[services.jobs]
kind = "worker"
command = "work"
secrets = ["DATABASE_URL", "QUEUE_TOKEN"]
as_file = true

[secrets]
providers = ["local", "env"]
timeout = "2s"
dotenv = ".env.local"

[[notifications]]
url_secret = "SLACK_WEBHOOK_URL"

[[notifications]]
url = "https://ops.example.com/conveyor"

[environments.dev]
secrets = { providers = ["dotenv", "local"] }

[environments.production.secrets]
providers = ["aws", "local"]
aws = { region = "eu-west-1", prefix = "shop/production/" }
command = "op read op://shop/{name}/password"
"""


def test_each_environment_gets_its_own_settings(tmp_path: Path) -> None:
    path = tmp_path / "conveyor.toml"
    path.write_text(CONFIG)
    config = load_config(path)
    dev, production = config.environment("dev"), config.environment("production")
    assert dev.secrets.providers == ("dotenv", "local")
    assert dev.secrets.dotenv == tmp_path / ".env.local"
    assert dev.secrets.timeout == 2.0 and dev.secrets.aws is None
    assert production.secrets.providers == ("aws", "local")
    assert production.secrets.aws is not None
    assert (production.secrets.aws.region, production.secrets.aws.prefix) == (
        "eu-west-1",
        "shop/production/",
    )
    assert production.secrets.command == "op read op://shop/{name}/password"
    assert production.services["jobs"].as_file and not production.services["web"].as_file
    assert required_names(production) == [
        "DATABASE_URL",
        "STRIPE_KEY",
        "QUEUE_TOKEN",
        "SLACK_WEBHOOK_URL",
    ]
    assert config.notifications[0].url == "" and config.notifications[1].url_secret is None


def test_without_a_secrets_table_the_local_store_answers(tmp_path: Path) -> None:
    path = tmp_path / "conveyor.toml"
    path.write_text('[app]\nname = "shop"\n[services.web]\ncommand = "serve {port}"\nport = 80\n')
    env = load_config(path).environment("dev")
    assert (env.secrets.providers, env.secrets.timeout) == (("local",), 5.0)
    assert required_names(env) == []
