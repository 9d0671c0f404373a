"""The resolver: providers in order, failures reported and skipped, pinned versions, the
break-glass cache and one audit entry per call. Real providers, SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from conveyor.config.secrets import SecretsSettings
from conveyor.secrets.base import SecretError
from conveyor.secrets.keys import ENV_KEY, ENV_PASSPHRASE
from conveyor.secrets.resolve import Resolver
from conveyor.store import audit
from conveyor.store.db import Store

LOCAL_VALUE = "postgres://shop:local-pw@127.0.0.1/shop"
ENV_VALUE = "sk_env_abcdef0123456789"
COMMAND_VALUE = "xoxb-from-the-command-0123456789"


@pytest.fixture(autouse=True)
def keys_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv(ENV_KEY, raising=False)
    monkeypatch.delenv(ENV_PASSPHRASE, raising=False)


def _command(tmp_path: Path, body: str) -> str:
    script = tmp_path / f"cli{abs(hash(body))}.py"
    script.write_text(body)
    return f"{sys.executable} {script} {{name}}"


SERVES = (
    "import sys\n"
    "name = sys.argv[1]\n"
    f"print({COMMAND_VALUE!r}) if name == 'SLACK_WEBHOOK_URL' else None\n"
)
HANGS = "import time\ntime.sleep(60)\n"
FAILS = "import sys\nprint('auth: session expired', file=sys.stderr)\nsys.exit(1)\n"


def resolver(store: Store, tmp_path: Path, **settings: object) -> Resolver:
    return Resolver(
        store, "shop", SecretsSettings.model_construct(**settings), tmp_path / "home", "deployer"
    )


def test_the_first_provider_that_has_a_name_wins(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("STRIPE_KEY", ENV_VALUE)
    monkeypatch.setenv("DATABASE_URL", "from the environment, shadowed")
    r = resolver(
        store,
        tmp_path,
        providers=("local", "env", "command"),
        command=_command(tmp_path, SERVES),
        timeout=30.0,
    )
    r.local.write("production", {"DATABASE_URL": LOCAL_VALUE}, "alice")
    names = ["DATABASE_URL", "STRIPE_KEY", "SLACK_WEBHOOK_URL"]
    found = asyncio.run(r.resolve("production", names))
    assert {n: (v.value, v.provider, v.version) for n, v in found.items()} == {
        "DATABASE_URL": (LOCAL_VALUE, "local", "1"),
        "STRIPE_KEY": (ENV_VALUE, "env", "current"),
        "SLACK_WEBHOOK_URL": (COMMAND_VALUE, "command", "current"),
    }
    assert found.notes == []
    assert [(a.name, a.provider, a.outcome) for a in found.attempts if a.name == "STRIPE_KEY"] == [
        ("STRIPE_KEY", "local", "missing"),
        ("STRIPE_KEY", "env", "found"),
    ]
    # The command's value is cached, encrypted, for a break-glass read; the others are not.
    cached = r.local.cached("production", "SLACK_WEBHOOK_URL")
    assert cached is not None and cached[1] == COMMAND_VALUE and cached[0].provider == "command"
    assert r.local.cached("production", "STRIPE_KEY") is None

    [entry] = audit.entries(store, app="shop", action="secrets.resolve")
    assert (entry.actor, entry.environment, entry.outcome, entry.detail) == (
        "deployer",
        "production",
        "ok",
        "deploy",
    )
    assert entry.data["secrets"] == {
        "DATABASE_URL": {"provider": "local", "version": "1"},
        "SLACK_WEBHOOK_URL": {"provider": "command", "version": "current"},
        "STRIPE_KEY": {"provider": "env", "version": "current"},
    }
    everything = repr([e.to_json() for e in audit.entries(store)])
    for value in (LOCAL_VALUE, ENV_VALUE, COMMAND_VALUE):
        assert value not in everything


def test_a_provider_that_fails_is_reported_and_the_next_one_asked(
    store: Store, tmp_path: Path
) -> None:
    for body, why in ((HANGS, "timed out after 1.5s"), (FAILS, "session expired")):
        r = resolver(
            store,
            tmp_path,
            providers=("command", "local"),
            command=_command(tmp_path, body),
            timeout=1.5,
        )
        r.local.write("production", {"STRIPE_KEY": LOCAL_VALUE}, "alice")
        found = asyncio.run(r.resolve("production", ["STRIPE_KEY"]))
        assert found["STRIPE_KEY"].provider == "local"
        [note] = found.notes
        assert note.startswith("STRIPE_KEY: command failed (") and why in note, note


def test_a_name_nobody_has_names_every_provider_and_why(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STRIPE_KEY", raising=False)
    r = resolver(
        store,
        tmp_path,
        providers=("local", "env", "command"),
        command=_command(tmp_path, HANGS),
        timeout=1.0,
    )
    with pytest.raises(SecretError) as caught:
        asyncio.run(r.resolve("production", ["STRIPE_KEY"], purpose="deploy of v2"))
    message = str(caught.value)
    assert "STRIPE_KEY for production: local: not found; env: not found; command: " in message
    assert "timed out after 1s (killed)" in message
    # A provider failed: maybe it has the name, so the hint is doctor, not `secrets set`.
    assert "`conveyor secrets doctor --env production`" in message
    assert "secrets set" not in message
    [entry] = audit.entries(store, app="shop", action="secrets.resolve")
    assert entry.outcome == "failed" and entry.data["missing"] == ["STRIPE_KEY"]
    assert entry.data["failed_providers"] == ["command"]
    assert entry.detail == "deploy of v2"


def test_a_pinned_version_is_asked_of_its_provider_only(store: Store, tmp_path: Path) -> None:
    r = resolver(store, tmp_path, providers=("local",), timeout=5.0)
    r.local.write("production", {"STRIPE_KEY": "v1-value"}, "alice")
    r.local.write("production", {"STRIPE_KEY": "v2-value"}, "alice", action="rotate")
    current = asyncio.run(r.resolve("production", ["STRIPE_KEY"]))
    assert current.versions() == {"STRIPE_KEY": ("local", "2")}
    old = asyncio.run(
        r.resolve("production", ["STRIPE_KEY"], pinned={"STRIPE_KEY": ("local", "1")})
    )
    assert (old["STRIPE_KEY"].value, old["STRIPE_KEY"].version) == ("v1-value", "1")
    with pytest.raises(SecretError, match="local: no version 7"):
        asyncio.run(r.resolve("production", ["STRIPE_KEY"], pinned={"STRIPE_KEY": ("local", "7")}))


def test_a_value_that_does_not_decrypt_is_a_failure_not_garbage(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    r = resolver(store, tmp_path, providers=("local", "env"), timeout=5.0)
    r.local.write("production", {"STRIPE_KEY": LOCAL_VALUE}, "alice")
    from sqlalchemy import text

    with store.writing() as session:
        session.execute(text("UPDATE secret_versions SET ciphertext = :c"), {"c": b"\0" * 40})
    monkeypatch.setenv("STRIPE_KEY", ENV_VALUE)
    found = asyncio.run(r.resolve("production", ["STRIPE_KEY"]))
    assert found["STRIPE_KEY"].provider == "env"
    [note] = found.notes
    assert "local failed (secret STRIPE_KEY version 1 of production: the stored value" in note


def test_no_names_no_providers_asked(store: Store, tmp_path: Path) -> None:
    r = resolver(store, tmp_path, providers=("aws",), timeout=5.0)
    assert asyncio.run(r.resolve("production", [])) == {}
