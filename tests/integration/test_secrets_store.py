"""The local secret store on SQLite and PostgreSQL: versions, the master key and its check,
and every way a stored value can be damaged, found and named."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest
from sqlalchemy import text

from conveyor.secrets.base import SecretError
from conveyor.secrets.keys import ENV_KEY, ENV_PASSPHRASE, key_file
from conveyor.secrets.local import LocalSecrets
from conveyor.store import audit
from conveyor.store.db import Store

VALUE = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"  # conveyor:allow-secret because a made-up value the test plants


@pytest.fixture(autouse=True)
def keys_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Key files under this test's own directory, and no key from the environment."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv(ENV_KEY, raising=False)
    monkeypatch.delenv(ENV_PASSPHRASE, raising=False)
    return tmp_path / "config"


def local(store: Store, tmp_path: Path, app: str = "shop") -> LocalSecrets:
    return LocalSecrets(store, app, tmp_path / "home", project_dir=tmp_path / "project")


def _sql(store: Store, sql: str, **params: object) -> None:
    with store.writing() as session:
        session.execute(text(sql), params)


def test_versions_are_kept_and_numbered(store: Store, tmp_path: Path) -> None:
    secrets = local(store, tmp_path)
    assert secrets.read("production", "STRIPE_KEY") is None
    [first] = secrets.write("production", {"STRIPE_KEY": VALUE}, "alice")
    [second] = secrets.write("production", {"STRIPE_KEY": "rotated"}, "bob", action="rotate")
    assert (first.version, second.version) == (1, 2)
    rec, value = secrets.read("production", "STRIPE_KEY") or (None, None)
    assert rec is not None and (rec.version, rec.created_by, value) == (2, "bob", "rotated")
    assert secrets.read("production", "STRIPE_KEY", 1)[1] == VALUE  # type: ignore[index]
    assert secrets.read("staging", "STRIPE_KEY") is None  # environments are apart

    [gone] = secrets.write("production", {"STRIPE_KEY": None}, "carol", action="rm")
    assert gone.version == 3 and gone.removed and gone.nonce is None
    assert secrets.read("production", "STRIPE_KEY") is None
    assert secrets.read("production", "STRIPE_KEY", 2)[1] == "rotated"  # type: ignore[index]
    history = secrets.rows.history("shop", "production", "STRIPE_KEY")
    assert [(r.version, r.action, r.removed) for r in history] == [
        (1, "set", False),
        (2, "rotate", False),
        (3, "rm", True),
    ]
    [again] = secrets.write("production", {"STRIPE_KEY": "back"}, "alice")
    assert again.version == 4
    latest = secrets.rows.latest("shop", "production")
    assert [(r.name, r.version) for r in latest] == [("STRIPE_KEY", 4)]


def test_every_write_is_audited_without_its_value(store: Store, tmp_path: Path) -> None:
    secrets = local(store, tmp_path)
    secrets.write("production", {"A": VALUE, "B": VALUE + "b"}, "alice", action="import")
    secrets.write("production", {"A": None}, "bob", action="rm", detail="leaked")
    entries = audit.entries(store, app="shop")
    assert [(e.action, e.actor, e.target, e.data) for e in entries] == [
        ("secret.import", "alice", "A, B", {"versions": {"A": 1, "B": 1}}),
        ("secret.rm", "bob", "A", {"versions": {"A": 2}}),
    ]
    dumped = repr([e.to_json() for e in entries])
    assert VALUE not in dumped
    assert audit.check(store)[1] is None


def test_the_key_file_is_made_once_outside_the_project(
    store: Store, tmp_path: Path, keys_here: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secrets = local(store, tmp_path)
    secrets.write("dev", {"A": VALUE}, "alice")
    path = key_file(tmp_path / "home")
    assert path.parent == keys_here / "conveyor" / "keys"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert str(path) in capsys.readouterr().err
    # Another process (a new LocalSecrets) finds the same key and says nothing.
    assert local(store, tmp_path).read("dev", "A")[1] == VALUE  # type: ignore[index]
    assert capsys.readouterr().err == ""
    # Nothing in the database is the key.
    key = base64.b64decode(path.read_text())
    with store.reading() as session:
        rows = session.execute(text('SELECT kind, salt, "check" FROM secret_keyring')).all()
    assert [(kind, salt) for kind, salt, _ in rows] == [("key", None)]
    assert key.hex() not in repr(rows) and base64.b64encode(key).decode() not in repr(rows)


def test_a_key_file_others_can_read_is_refused(store: Store, tmp_path: Path) -> None:
    local(store, tmp_path).write("dev", {"A": VALUE}, "alice")
    path = key_file(tmp_path / "home")
    path.chmod(0o644)
    with pytest.raises(SecretError, match=r"can be read by others.*chmod 600"):
        local(store, tmp_path).read("dev", "A")


def test_a_lost_key_is_not_replaced_by_a_new_one(store: Store, tmp_path: Path) -> None:
    local(store, tmp_path).write("dev", {"A": VALUE}, "alice")
    key_file(tmp_path / "home").unlink()
    with pytest.raises(SecretError, match="no master key for the secrets of shop"):
        local(store, tmp_path).read("dev", "A")
    assert not key_file(tmp_path / "home").exists()


def test_a_wrong_master_key_is_said_so_up_front(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_KEY, base64.b64encode(os.urandom(32)).decode())
    local(store, tmp_path).write("dev", {"A": VALUE}, "alice")
    monkeypatch.setenv(ENV_KEY, base64.b64encode(os.urandom(32)).decode())
    with pytest.raises(SecretError, match=r"wrong master key.*CONVEYOR_MASTER_KEY"):
        local(store, tmp_path).read("dev", "A")
    with pytest.raises(SecretError, match="wrong master key"):
        local(store, tmp_path).write("dev", {"B": VALUE}, "alice")
    monkeypatch.setenv(ENV_KEY, "c2hvcnQ=")
    with pytest.raises(SecretError, match="must hold 32 random bytes in base64"):
        local(store, tmp_path).read("dev", "A")


def test_a_passphrase_goes_through_argon2id(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_PASSPHRASE, "correct horse battery staple")
    local(store, tmp_path).write("dev", {"A": VALUE}, "alice")
    assert not key_file(tmp_path / "home").exists()
    ring = local(store, tmp_path).rows.keyring("shop")
    assert ring is not None and ring.kind == "passphrase" and ring.salt
    assert local(store, tmp_path).read("dev", "A")[1] == VALUE  # type: ignore[index]
    monkeypatch.setenv(ENV_PASSPHRASE, "wrong horse")
    with pytest.raises(SecretError, match=r"wrong master key.*CONVEYOR_MASTER_PASSPHRASE"):
        local(store, tmp_path).read("dev", "A")
    # Without it, and no terminal to ask on: say what to set.
    monkeypatch.delenv(ENV_PASSPHRASE)
    with pytest.raises(SecretError, match="under a passphrase: set CONVEYOR_MASTER_PASSPHRASE"):
        local(store, tmp_path).read("dev", "A")
    typed = LocalSecrets(
        store, "shop", tmp_path / "home", prompt=lambda _: "correct horse battery staple"
    )
    assert typed.read("dev", "A")[1] == VALUE  # type: ignore[index]


def test_a_tampered_value_is_named(store: Store, tmp_path: Path) -> None:
    secrets = local(store, tmp_path)
    secrets.write("production", {"STRIPE_KEY": VALUE}, "alice")
    with store.reading() as session:
        [(ciphertext,)] = session.execute(text("SELECT ciphertext FROM secret_versions")).all()
    flipped = bytes([ciphertext[0] ^ 1]) + bytes(ciphertext[1:])
    _sql(store, "UPDATE secret_versions SET ciphertext = :c", c=flipped)
    with pytest.raises(SecretError, match=r"secret STRIPE_KEY version 1 of production.*altered"):
        secrets.read("production", "STRIPE_KEY")


def test_a_truncated_value_is_named(store: Store, tmp_path: Path) -> None:
    secrets = local(store, tmp_path)
    secrets.write("production", {"STRIPE_KEY": VALUE}, "alice")
    with store.reading() as session:
        [(ciphertext,)] = session.execute(text("SELECT ciphertext FROM secret_versions")).all()
    _sql(store, "UPDATE secret_versions SET ciphertext = :c", c=bytes(ciphertext[:8]))
    with pytest.raises(SecretError, match=r"STRIPE_KEY version 1 of production.*truncated"):
        secrets.read("production", "STRIPE_KEY")
    _sql(store, "UPDATE secret_versions SET ciphertext = :c", c=bytes(ciphertext[:-4]))
    with pytest.raises(SecretError, match=r"STRIPE_KEY version 1 of production.*fails auth"):
        secrets.read("production", "STRIPE_KEY")


@pytest.mark.parametrize(
    ("env", "name", "version"),
    [("production", "OTHER", 1), ("staging", "STRIPE_KEY", 1), ("production", "STRIPE_KEY", 2)],
    ids=["name", "environment", "version"],
)
def test_a_value_moved_to_another_slot_is_detected(
    store: Store, tmp_path: Path, env: str, name: str, version: int
) -> None:
    secrets = local(store, tmp_path)
    secrets.write("production", {"STRIPE_KEY": VALUE}, "alice")
    secrets.write(env, {name: "harmless"}, "mallory")
    if version == 2:
        secrets.write(env, {name: "harmless"}, "mallory")
    with store.reading() as session:
        [(nonce, ciphertext)] = session.execute(
            text(
                "SELECT nonce, ciphertext FROM secret_versions "
                "WHERE environment = 'production' AND name = 'STRIPE_KEY' AND version = 1"
            )
        ).all()
    _sql(
        store,
        "UPDATE secret_versions SET nonce = :n, ciphertext = :c "
        "WHERE environment = :e AND name = :name AND version = :v",
        n=bytes(nonce),
        c=bytes(ciphertext),
        e=env,
        name=name,
        v=version,
    )
    with pytest.raises(SecretError, match=f"secret {name} version {version} of {env}.*copied"):
        secrets.read(env, name, version)


def test_a_value_moved_to_another_app_is_detected(store: Store, tmp_path: Path) -> None:
    shop = local(store, tmp_path, "shop")
    shop.write("dev", {"A": VALUE}, "alice")
    blog = LocalSecrets(store, "blog", tmp_path / "home")  # same project: same key file
    blog.write("dev", {"A": "harmless"}, "mallory")
    with store.reading() as session:
        [(nonce, ciphertext)] = session.execute(
            text("SELECT nonce, ciphertext FROM secret_versions WHERE app = 'shop'")
        ).all()
    _sql(
        store,
        "UPDATE secret_versions SET nonce = :n, ciphertext = :c WHERE app = 'blog'",
        n=bytes(nonce),
        c=bytes(ciphertext),
    )
    with pytest.raises(SecretError, match="copied"):
        blog.read("dev", "A")


def test_names_resolved_together_ask_for_the_passphrase_once(store: Store, tmp_path: Path) -> None:
    import asyncio

    from conveyor.config.secrets import SecretsSettings
    from conveyor.secrets.resolve import Resolver

    os.environ[ENV_PASSPHRASE] = "correct horse battery staple"
    try:
        local(store, tmp_path).write("dev", {"A": "a", "B": "b", "C": "c"}, "alice")
    finally:
        del os.environ[ENV_PASSPHRASE]
    asked: list[str] = []

    def prompt(text: str) -> str:
        asked.append(text)
        return "correct horse battery staple"

    settings = SecretsSettings.model_construct(providers=("local",), timeout=30.0)
    resolver = Resolver(store, "shop", settings, tmp_path / "home", "alice", prompt=prompt)
    found = asyncio.run(resolver.resolve("dev", ["A", "B", "C"]))
    assert {name: v.value for name, v in found.items()} == {"A": "a", "B": "b", "C": "c"}
    assert len(asked) == 1
