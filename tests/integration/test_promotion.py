"""Promotion through the real CLI and agent: every gate refusing, then passing once met;
approvals with four eyes and an allow-list; checks recorded and run in the release; a freeze and
its override; a release modified on disk refused. A refused deploy changes nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from conftest import Project
from conveyor.runtimes.local import free_port


def envs(body: str) -> str:
    """Environments after dev, each on its own public port."""
    out = []
    for block in body.strip().split("\n\n"):
        name = block.splitlines()[0].strip("[]").split(".")[1]
        out.append(f"{block}\n[environments.{name}.services.web]\nport = {free_port()}\n")
    return "\n".join(out)


def as_user(project: Project, user: str, *args: str) -> tuple[int, Any]:
    project.env["CONVEYOR_USER"] = user
    return project.json(*args)


def deployments(project: Project, env: str) -> list[tuple[Any, ...]]:
    return project.db(f"SELECT version, outcome FROM deployments WHERE environment = '{env}'")


def test_gates_refuse_then_pass_checks_and_four_eyes(project: Project) -> None:
    extra = """
[checks.tests]
command = "test -f app.py && test -z \\"$OPERATOR_SECRET\\" && echo ran-in-the-release"
"""
    project.configure(
        extra=extra
        + envs(
            """
[environments.staging]
after = "dev"
checks = ["tests"]

[environments.production]
after = "staging"
approvals = 1
approvers = ["ann", "bob"]
"""
        )
    )
    project.release("v1")
    project.env["OPERATOR_SECRET"] = "not for checks"

    code, out = as_user(project, "ann", "gates", "v1", "--env", "staging")
    assert code == 1 and out["allowed"] is False
    assert [(g["label"], g["met"]) for g in out["gates"]] == [
        ("dev", False),
        ("check tests", False),
    ]

    code, out = as_user(project, "ann", "deploy", "v1", "--env", "staging")
    assert code == 1
    assert (
        "dev: v1 has not succeeded there — deploy it with `conveyor deploy v1 --env dev`"
        in (out["error"])
    )
    assert "check tests: no result for v1" in out["error"]
    assert deployments(project, "staging") == []  # refused before anything started

    assert project.deploy("v1")[0] == 0
    code, out = as_user(project, "ci", "check", "record", "tests", "--release", "v1", "--failed")
    assert code == 0 and out["passed"] is False and out["actor"] == "ci"
    code, out = as_user(project, "ann", "deploy", "v1", "--env", "staging")
    assert code == 1 and "check tests: failed for v1 by ci" in out["error"]

    ran = project.cli("check", "run", "tests", "--release", "v1")
    assert ran.returncode == 0, ran.stderr
    assert "ran-in-the-release" in ran.stdout  # its output, shown as it came
    assert "check tests passed for v1" in ran.stdout
    assert as_user(project, "ann", "deploy", "v1", "--env", "staging")[0] == 0

    # production: one approval from ann or bob, never from whoever deploys.
    code, out = as_user(project, "ann", "deploy", "v1", "--env", "production")
    assert code == 1 and "approvals: 0 of 1" in out["error"]
    code, out = as_user(project, "carl", "approve", "v1", "--env", "production")
    assert code == 1 and "carl is not one of production's approvers (ann, bob)" in out["error"]
    code, out = as_user(project, "ann", "approve", "v1", "--env", "production")
    assert code == 0 and out["actor"] == "ann"
    code, out = as_user(project, "ann", "deploy", "v1", "--env", "production")
    assert code == 1
    assert "approvals: 0 of 1 — ann asked for this deploy and cannot approve it" in out["error"]
    assert deployments(project, "production") == []

    code, out = as_user(project, "bob", "reject", "v1", "--env", "production", "--comment", "no")
    assert code == 0
    code, out = as_user(project, "bob", "deploy", "v1", "--env", "production")
    assert code == 1 and "rejected: bob rejected v1 for production: no" in out["error"]
    code, out = as_user(project, "bob", "reject", "v1", "--env", "production", "--withdraw")
    assert code == 0 and out["withdrawn"][0]["actor"] == "bob"

    code, out = as_user(project, "bob", "deploy", "v1", "--env", "production")
    assert code == 0, out
    # The approval went with that deployment.
    code, out = as_user(project, "bob", "gates", "v1", "--env", "production")
    assert code == 1
    assert [g["detail"] for g in out["gates"] if g["gate"] == "approvals"] == ["0 of 1"]


def test_a_freeze_is_overridden_by_an_admin_only_and_recorded(project: Project) -> None:
    today = datetime.now(UTC).date()
    window = f"{today - timedelta(days=1)} - {today + timedelta(days=1)}"
    project.configure(
        extra='[access]\nadmins = ["alice"]\n'
        + envs(f'[environments.production]\nfreeze = ["{window}"]')
    )
    project.release("v1")
    code, out = as_user(project, "bob", "deploy", "v1", "--env", "production")
    assert code == 1 and f'freeze: "{window}" is in force until' in out["error"]
    refused = project.cli("deploy", "v1", "--env", "production", "--override-freeze")
    assert refused.returncode == 2 and "--reason" in refused.stderr
    code, out = as_user(
        project, "bob", "deploy", "v1", "--env", "production", "--override-freeze", "--reason", "x"
    )
    assert code == 1 and "bob may not override it" in out["error"]
    assert deployments(project, "production") == []

    code, out = as_user(
        project,
        "alice",
        "deploy",
        "v1",
        "--env",
        "production",
        "--override-freeze",
        "--reason",
        "hotfix",
    )
    assert code == 0, out
    events = project.db(
        "SELECT state, reason, data FROM deployment_events WHERE state = 'freeze_overridden'"
    )
    assert len(events) == 1
    assert "overridden by alice: hotfix" in events[0][1]


def test_a_release_modified_on_disk_is_refused(project: Project) -> None:
    project.configure(extra=envs("[environments.staging]"))
    project.release("v1")
    assert project.deploy("v1")[0] == 0
    [(digest,)] = project.db("SELECT digest FROM releases WHERE version = 'v1'")
    tree = project.home / "releases" / "trees" / digest
    (tree / "app.py").write_text((tree / "app.py").read_text() + "\n# tampered\n")
    code, out = project.json("deploy", "v1", "--env", "staging")
    assert code == 1
    assert "release v1 was modified on disk and is refused" in out["error"]
    assert deployments(project, "staging") == []
