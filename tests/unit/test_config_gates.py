"""Gates in conveyor.toml: what each environment resolves to (errors: config_cases/invalid/gates_*)."""

from __future__ import annotations

from pathlib import Path

from conveyor.config import Config, GatesConfig, load_config

BASE = """
[app]
name = "shop"
{app_extra}
[services.web]
command = "serve {{port}}"
port = 8080
"""


def load(tmp_path: Path, body: str, app_extra: str = "") -> Config:
    path = tmp_path / "conveyor.toml"
    path.write_text(BASE.format(app_extra=app_extra) + body)
    return load_config(path)


def test_the_issue_example_resolves(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        """
[checks.tests]
command = "pytest -q"
[access]
admins = ["alice"]
[environments.dev]
[environments.staging]
after = "dev"
checks = ["tests"]
[environments.production]
after = "staging"
soak = "30m"
approvals = 2
approvers = ["release-manager", "sre-oncall", "team-lead"]
freeze = ["Fri 16:00 - Mon 08:00", "2026-12-24 - 2026-12-27"]
require_tag = true
""",
    )
    assert cfg.environment("dev").gates == GatesConfig()
    assert cfg.environment("staging").gates == GatesConfig(after="dev", checks=["tests"])
    assert cfg.environment("production").gates == GatesConfig(
        after="staging",
        soak=1800.0,
        approvals=2,
        approvers=["release-manager", "sre-oncall", "team-lead"],
        freeze=["Fri 16:00 - Mon 08:00", "2026-12-24 - 2026-12-27"],
        require_tag=True,
    )
    assert cfg.checks["tests"].command == "pytest -q"
    assert cfg.checks["tests"].timeout == 1800.0
    assert cfg.access.admins == ["alice"]


def test_approvers_alone_need_one_approval(tmp_path: Path) -> None:
    cfg = load(tmp_path, '[environments.production]\napprovers = ["ann", "bob"]\n')
    assert cfg.environment("production").gates.approvals == 1


def test_time_zone_from_app_or_environment(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        '[environments.eu]\n[environments.us]\ntimezone = "America/New_York"\n',
        app_extra='timezone = "Europe/Paris"',
    )
    assert cfg.environment("eu").gates.timezone == "Europe/Paris"
    assert cfg.environment("us").gates.timezone == "America/New_York"
