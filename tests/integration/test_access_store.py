"""Access control in the state database (tokens, bindings, idempotency keys) and the service over
it (authenticate, create/revoke tokens, grant/ungrant, the first admin). On SQLite and PostgreSQL.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from conveyor.auth import service, tokens
from conveyor.auth.service import AccessError, AuditContext, Unauthenticated
from conveyor.core.access import Role, decide
from conveyor.store import access as stored
from conveyor.store import audit
from conveyor.store.access import IdempotencyRecord
from conveyor.store.db import Store

T0 = datetime(2026, 12, 6, 9, 0, 0, tzinfo=UTC)
CTX = AuditContext(app="shop")


def _token(store: Store, owner: str, role: Role, env: str | None, **kw: object) -> str:
    args: dict[str, object] = {
        "expires_in": service.DEFAULT_EXPIRY,
        "description": "ci",
        "created_by": owner,
        "now": T0,
        "admins": (),
        "local": True,
        "ctx": CTX,
    } | kw
    _, whole = service.create_token(store, owner, role, env, **args)  # type: ignore[arg-type]
    return whole


def test_token_rows_round_trip_touch_and_revoke(store: Store) -> None:
    rec = stored.TokenRecord(
        id="abcdefghijkl0123",
        owner="alice",
        role=Role.deployer,
        environment="staging",
        digest=tokens.digest("s" * 43),
        description="ci",
        created_at=T0,
        created_by="alice",
        expires_at=T0 + timedelta(days=90),
    )
    stored.add_token(store, rec)
    assert stored.get_token(store, rec.id) == rec
    assert stored.get_token(store, "nosuchtoken0") is None
    assert stored.list_tokens(store, "bob") == []
    assert stored.list_tokens(store) == [rec]
    # The first use is recorded; another within a minute is not; one a minute later is.
    assert stored.touch_token(store, rec.id, T0, "127.0.0.1")
    assert not stored.touch_token(store, rec.id, T0 + timedelta(seconds=59), "10.0.0.9")
    assert stored.get_token(store, rec.id).last_used_from == "127.0.0.1"  # type: ignore[union-attr]
    assert stored.touch_token(store, rec.id, T0 + timedelta(seconds=60), "10.0.0.9")
    assert stored.revoke_token(store, rec.id, "bob", T0)
    assert not stored.revoke_token(store, rec.id, "bob", T0)  # already
    assert not stored.revoke_token(store, "nosuchtoken0", "bob", T0)
    after = stored.get_token(store, rec.id)
    assert after is not None and after.revoked_by == "bob" and after.revoked_at == T0
    assert "digest" not in after.to_json()


def test_bindings_are_unique_also_on_every_environment(store: Store) -> None:
    first, added = stored.add_binding(store, "alice", Role.deployer, None, by="root", at=T0)
    assert added
    again, added = stored.add_binding(store, "alice", Role.deployer, None, by="root", at=T0)
    assert not added and again == first
    stored.add_binding(store, "alice", Role.deployer, "staging", by="root", at=T0)
    stored.add_binding(store, "bob", Role.viewer, "staging", by="root", at=T0)
    assert [(b.subject, b.role, b.environment) for b in stored.list_bindings(store)] == [
        ("alice", Role.deployer, None),
        ("alice", Role.deployer, "staging"),
        ("bob", Role.viewer, "staging"),
    ]
    assert not stored.any_admin(store)
    gone = stored.remove_binding(store, "alice", Role.deployer, None)
    assert gone == first
    assert stored.remove_binding(store, "alice", Role.deployer, None) is None
    assert [b.environment for b in stored.list_bindings(store, "alice")] == ["staging"]


def test_the_first_admin_is_made_once(store: Store) -> None:
    made = stored.add_first_admin(store, "alice", at=T0)
    assert made is not None and made.role is Role.admin and made.environment is None
    assert stored.add_first_admin(store, "bob", at=T0) is None
    assert stored.any_admin(store)


def test_idempotency_keys_keep_the_first_answer(store: Store) -> None:
    rec = IdempotencyRecord("alice", "k1", "staging", "h1", 7, {"id": 7}, T0)
    assert stored.get_idempotent(store, "alice", "k1") is None
    assert stored.put_idempotent(store, rec) == rec
    other = IdempotencyRecord("alice", "k1", "staging", "h2", 8, {"id": 8}, T0)
    assert stored.put_idempotent(store, other) == rec
    assert stored.get_idempotent(store, "alice", "k1") == rec
    assert stored.get_idempotent(store, "bob", "k1") is None  # keys are per actor


def test_authenticate_says_why_not_without_the_secret(store: Store) -> None:
    whole = _token(store, "alice", Role.admin, None)
    parsed = tokens.parse(whole)

    def refused(token: str | None, now: datetime = T0) -> str:
        with pytest.raises(Unauthenticated) as exc:
            service.authenticate(store, (), token, now, "127.0.0.1")
        assert parsed.secret not in exc.value.reason
        return exc.value.reason

    assert "no token" in refused(None)
    assert "no token" in refused("  ")
    assert "malformed" in refused("Bearer xyz")
    assert "malformed" in refused(f"cvy_{parsed.id}_short")
    assert "unknown token" in refused(tokens.format_token("x" * 16, parsed.secret))
    wrong = parsed.secret[:-1] + ("A" if parsed.secret[-1] != "A" else "B")
    assert "wrong secret" in refused(tokens.format_token(parsed.id, wrong))
    assert "expired" in refused(whole, T0 + timedelta(days=90))
    who = service.authenticate(store, (), whole, T0 + timedelta(days=1), "10.1.2.3")
    assert (who.subject, who.token_id, who.via) == ("alice", parsed.id, "token")
    assert who.scope is not None and who.scope.role is Role.admin
    used = stored.get_token(store, parsed.id)
    assert used is not None and used.last_used_from == "10.1.2.3"
    service.revoke_token(store, parsed.id, "alice", T0, ctx=CTX)
    assert "revoked by alice" in refused(whole)


def test_a_token_is_disarmed_when_its_owner_loses_the_role(store: Store) -> None:
    _token(store, "root", Role.admin, None)  # the bootstrap: root becomes admin
    service.grant(store, "ci", Role.deployer, "staging", "root", T0, ctx=CTX)
    whole = _token(store, "ci", Role.deployer, "staging", created_by="root", local=False)
    who = service.authenticate(store, (), whole, T0)
    assert decide(who, "deploy", "staging").allowed
    assert not decide(who, "deploy", "production").allowed
    assert not decide(who, "approve", "staging").allowed
    service.ungrant(store, "ci", Role.deployer, "staging", "root", T0, ctx=CTX)
    again = service.authenticate(store, (), whole, T0)  # still a valid token...
    assert not decide(again, "deploy", "staging").allowed  # ...that allows nothing
    assert not decide(again, "read", "staging").allowed


def test_a_token_never_exceeds_its_owner_and_the_bootstrap_happens_once(store: Store) -> None:
    # Not local, or not admin, or not for oneself: no bootstrap.
    with pytest.raises(AccessError, match="conveyor access grant alice admin"):
        _token(store, "alice", Role.admin, None, local=False)
    with pytest.raises(AccessError, match="does not hold the deployer role on staging"):
        _token(store, "alice", Role.deployer, "staging")
    with pytest.raises(AccessError):
        _token(store, "alice", Role.admin, None, created_by="bob")
    _token(store, "alice", Role.admin, "dev")  # the bootstrap: admin on all, then the token
    assert [(b.role, b.environment) for b in stored.list_bindings(store, "alice")] == [
        (Role.admin, None)
    ]
    with pytest.raises(AccessError, match="does not hold the admin role"):
        _token(store, "bob", Role.admin, None)  # the bootstrap is over
    # A configured admin holds every role, and so no bootstrap happens while there is one.
    _token(store, "carol", Role.approver, "production", admins=("carol",))
    actions = [e.action for e in audit.entries(store, app="shop")]
    assert actions == ["access.grant", "token.create", "token.create"]


def test_ungrant_of_a_binding_that_is_not_there_says_what_is(store: Store) -> None:
    service.grant(store, "bob", Role.viewer, "staging", "root", T0, ctx=CTX)
    with pytest.raises(AccessError, match="they hold: viewer on staging"):
        service.ungrant(store, "bob", Role.viewer, None, "root", T0, ctx=CTX)


def test_the_secret_is_nowhere_in_the_database(store: Store) -> None:
    whole = _token(store, "alice", Role.admin, None, description="deploy bot")
    secret = tokens.parse(whole).secret
    service.authenticate(store, (), whole, T0, "127.0.0.1")
    service.revoke_token(store, tokens.parse(whole).id, "alice", T0, ctx=CTX)
    dump: list[str] = []
    with store.reading() as session:
        for table in ("api_tokens", "role_bindings", "audit_log"):
            dump.extend(repr(row) for row in session.execute(text(f"SELECT * FROM {table}")))
    joined = "\n".join(dump)
    assert tokens.parse(whole).id in joined
    assert secret not in joined
    assert tokens.digest(secret) in joined  # the digest is stored (api_tokens) ...
    with store.reading() as session:
        logged = "\n".join(repr(r) for r in session.execute(text("SELECT * FROM audit_log")))
    assert tokens.digest(secret) not in logged  # ... and never logged


def test_a_session_carries_every_role_its_owner_holds_now(store: Store) -> None:
    with pytest.raises(AccessError, match="bob holds no role on any environment"):
        service.start_session(store, "bob", (), T0, how="oidc", ctx=CTX)
    service.grant(store, "bob", Role.deployer, "staging", "root", T0, ctx=CTX)
    service.grant(store, "bob", Role.approver, "production", "root", T0, ctx=CTX)
    rec, whole = service.start_session(store, "bob", (), T0, how="oidc", ctx=CTX)
    assert rec.kind == "session" and rec.expires_at == T0 + service.SESSION_LIFETIME
    who = service.authenticate(store, (), whole, T0)
    assert (who.via, who.scope, who.token_id) == ("session", None, rec.id)
    assert decide(who, "deploy", "staging").allowed and decide(who, "approve", "production").allowed
    assert not decide(who, "deploy", "production").allowed
    service.ungrant(store, "bob", Role.deployer, "staging", "root", T0, ctx=CTX)
    assert not decide(service.authenticate(store, (), whole, T0), "deploy", "staging").allowed
    assert "expired" in _refusal(store, whole, T0 + service.SESSION_LIFETIME)
    assert audit.entries(store, app="shop", action="login")[0].target == rec.id


def _refusal(store: Store, token: str, now: datetime) -> str:
    with pytest.raises(Unauthenticated) as exc:
        service.authenticate(store, (), token, now)
    return exc.value.reason


def test_bindings_from_a_source_are_replaced_and_hand_made_ones_kept(store: Store) -> None:
    def entry(action: str, b: stored.BindingRecord) -> dict[str, object]:
        return {
            "at": T0,
            "actor": "oidc",
            "action": action,
            "app": "shop",
            "environment": b.environment,
            "target": b.subject,
            "outcome": "ok",
        }

    service.grant(store, "bob", Role.viewer, None, "root", T0, ctx=CTX)  # by hand
    want = {(Role.deployer, "staging"): "team-deploy", (Role.viewer, None): "everyone"}
    added, removed = stored.replace_bindings(store, "bob", "oidc", want, at=T0, entry=entry)
    assert [(b.role, b.environment, b.created_by) for b in added] == [
        (Role.deployer, "staging", "oidc:team-deploy")
    ]  # viewer everywhere was held already (by hand)
    assert removed == []
    added, removed = stored.replace_bindings(
        store, "bob", "oidc", {(Role.approver, None): "release-managers"}, at=T0, entry=entry
    )
    assert [(b.role, b.environment) for b in added] == [(Role.approver, None)]
    assert [(b.role, b.environment) for b in removed] == [(Role.deployer, "staging")]
    assert [(b.role, b.environment) for b in stored.list_bindings(store, "bob")] == [
        (Role.viewer, None),
        (Role.approver, None),
    ]
    actions = [e.action for e in audit.entries(store, app="shop", actor="oidc")]
    assert actions == ["access.grant", "access.revoke", "access.grant"]


def test_racing_first_admins_and_idempotency_keys_have_one_winner(url: str) -> None:
    """Eight threads, each with its own connection pool, at once: one first admin, one
    remembered answer (the others get it back), on SQLite and PostgreSQL alike."""
    Store.open(url).close()  # the schema, before the race
    stores = [Store.open(url) for _ in range(8)]
    barrier = threading.Barrier(len(stores))

    def first_admin(i: int) -> bool:
        barrier.wait(timeout=30)
        return stored.add_first_admin(stores[i], f"user{i}", at=T0) is not None

    def remember(i: int) -> IdempotencyRecord:
        barrier.wait(timeout=30)
        rec = IdempotencyRecord("ci", "key-1", "staging", f"h{i}", i, {"id": i}, T0)
        return stored.put_idempotent(stores[i], rec)

    try:
        with ThreadPoolExecutor(len(stores)) as pool:
            made = list(pool.map(first_admin, range(len(stores))))
            kept = list(pool.map(remember, range(len(stores))))
        assert made.count(True) == 1
        assert [b.role for b in stored.list_bindings(stores[0])] == [Role.admin]
        assert len({k.request_hash for k in kept}) == 1
        assert stored.get_idempotent(stores[0], "ci", "key-1") == kept[0]
    finally:
        for s in stores:
            s.close()
