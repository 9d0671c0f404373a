"""The pure parts of the OIDC login (conveyor.auth.oidc): PKCE, the authorization URL, the ID
token's checks, groups to bindings, logins under way; and `[access.oidc]` in conveyor.toml."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from conveyor.auth import oidc
from conveyor.config import ConfigError, load_config
from conveyor.core.access import Role

KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
SETTINGS = oidc.OidcSettings(
    issuer="https://idp.example",
    client_id="conveyor",
    client_secret="hunter2-client",
    groups={"team-deploy": "deployer:staging", "ops": "admin", "qa": "viewer:staging"},
)
NOW = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwks(key: rsa.RSAPrivateKey = KEY, kid: str = "k1") -> dict[str, Any]:
    n = key.public_key().public_numbers()
    return {
        "keys": [
            {
                "kty": "RSA",
                "kid": kid,
                "use": "sig",
                "n": _b64(n.n.to_bytes(256, "big")),
                "e": _b64(n.e.to_bytes(3, "big")),
            }
        ]
    }


def _jwt(alg: str = "RS256", kid: str = "k1", key: rsa.RSAPrivateKey = KEY, **over: Any) -> str:
    claims = {
        "iss": "https://idp.example",
        "aud": "conveyor",
        "sub": "u1",
        "nonce": "n1",
        "iat": int(NOW.timestamp()),
        "exp": int(NOW.timestamp()) + 300,
        "preferred_username": "alice",
        "groups": ["team-deploy"],
    } | over
    claims = {k: v for k, v in claims.items() if v is not None}
    head = _b64(json.dumps({"alg": alg, "kid": kid}).encode())
    body = _b64(json.dumps(claims).encode())
    sig = key.sign(f"{head}.{body}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{head}.{body}.{_b64(sig)}"


def test_pkce_s256_is_rfc_7636s_example() -> None:
    # RFC 7636, appendix B.
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert oidc.challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    made = oidc.new_verifier()
    assert 43 <= len(made) <= 128 and made != oidc.new_verifier()


def test_the_authorization_url_asks_for_a_code_with_pkce_state_and_nonce() -> None:
    provider = oidc.Provider(
        "https://idp.example",
        "https://idp.example/auth?tenant=1",
        "https://idp.example/token",
        "https://idp.example/jwks",
    )
    pending = oidc.begin("/", NOW)
    url = oidc.authorization_url(
        provider, SETTINGS, "https://cd.example/auth/oidc/callback", pending
    )
    parts = urlsplit(url)
    q = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert parts.path == "/auth" and q["tenant"] == "1"
    assert q["response_type"] == "code" and q["client_id"] == "conveyor"
    assert q["code_challenge"] == oidc.challenge(pending.verifier)
    assert q["code_challenge_method"] == "S256"
    assert (q["state"], q["nonce"]) == (pending.state, pending.nonce)
    assert pending.verifier not in url and "hunter2" not in url
    assert "hunter2" not in repr(SETTINGS)


def test_a_good_id_token_gives_its_claims() -> None:
    claims = oidc.verify_id_token(_jwt(), _jwks(), SETTINGS, "n1", NOW)
    assert claims["preferred_username"] == "alice"
    # Several audiences are fine when conveyor is the authorized party.
    token = _jwt(aud=["conveyor", "other"], azp="conveyor")
    assert oidc.verify_id_token(token, _jwks(), SETTINGS, "n1", NOW)["azp"] == "conveyor"


@pytest.mark.parametrize(
    ("token", "says"),
    [
        (_jwt(alg="HS256"), "signed with 'HS256'"),
        (_jwt(kid="k2"), "no RSA key 'k2'"),
        (_jwt(key=rsa.generate_private_key(public_exponent=65537, key_size=2048)), "signature"),
        (_jwt(iss="https://other.example"), "issuer 'https://other.example'"),
        (_jwt(aud="someone"), "not for client 'conveyor'"),
        (_jwt(aud=["conveyor", "other"], azp="other"), "another authorized party"),
        (_jwt(exp=int(NOW.timestamp()) - 61), "expired"),
        (_jwt(exp=None), "expired"),
        (_jwt(iat=int(NOW.timestamp()) + 3600), "in the future"),
        (_jwt(nonce="other"), "nonce"),
        (_jwt(nonce=None), "nonce"),
        ("not-a-jwt", "not a JWT"),
        ("a.b.c", "not a JWT"),
    ],
)
def test_a_bad_id_token_is_refused_saying_why(token: str, says: str) -> None:
    with pytest.raises(oidc.OidcError, match=says):
        oidc.verify_id_token(token, _jwks(), SETTINGS, "n1", NOW)


def test_a_signature_of_another_payload_is_refused() -> None:
    head, _, sig = _jwt().split(".")
    forged = _b64(
        json.dumps(
            {
                "iss": "https://idp.example",
                "aud": "conveyor",
                "nonce": "n1",
                "exp": time.time() + 300,
                "groups": ["ops"],
            }
        ).encode()
    )
    with pytest.raises(oidc.OidcError, match="signature"):
        oidc.verify_id_token(f"{head}.{forged}.{sig}", _jwks(), SETTINGS, "n1", NOW)


def test_groups_give_bindings_and_the_name_comes_from_the_username_claim() -> None:
    who = oidc.identity(
        {"preferred_username": "alice", "groups": ["qa", "team-deploy", "x"]}, SETTINGS
    )
    assert who.subject == "alice" and who.groups == ("qa", "team-deploy", "x")
    assert who.bindings == {
        (Role.viewer, "staging"): "qa",
        (Role.deployer, "staging"): "team-deploy",
    }
    assert oidc.identity({"email": "bob@example.com"}, SETTINGS).subject == "bob@example.com"
    assert oidc.identity({"sub": "u9", "groups": "ops"}, SETTINGS).bindings == {
        (Role.admin, None): "ops"
    }
    with pytest.raises(oidc.OidcError, match="names no user"):
        oidc.identity({"groups": []}, SETTINGS)
    with pytest.raises(oidc.OidcError, match="not a list of names"):
        oidc.identity({"sub": "u1", "groups": [1, 2]}, SETTINGS)


def test_a_pending_login_is_taken_once_and_forgotten_after_ten_minutes() -> None:
    logins = oidc.PendingLogins()
    first, second = oidc.begin("/a", NOW), oidc.begin("/b", NOW + timedelta(minutes=5))
    logins.put(first)
    logins.put(second)
    assert logins.take(first.state, NOW + timedelta(minutes=1)) == first
    assert logins.take(first.state, NOW + timedelta(minutes=1)) is None
    assert logins.take(second.state, NOW + timedelta(minutes=16)) is None
    for _ in range(oidc.MAX_PENDING + 5):
        logins.put(oidc.begin("/", NOW))
    assert len(logins._by_state) == oidc.MAX_PENDING


BASE = """\
[app]
name = "shop"

[services.web]
command = "python app.py"
port = 18080

[environments.staging]

[access.oidc]
issuer = "https://idp.example/"
client_id = "conveyor"
"""


def test_access_oidc_in_conveyor_toml(tmp_path: Path) -> None:
    path = tmp_path / "conveyor.toml"
    path.write_text(BASE + 'groups = { "team-deploy" = "deployer:staging", "ops" = "admin" }\n')
    conf = load_config(path).access.oidc
    assert conf is not None and conf.issuer == "https://idp.example"  # no trailing slash
    assert conf.groups == {"team-deploy": "deployer:staging", "ops": "admin"}


@pytest.mark.parametrize(
    ("extra", "key", "says"),
    [
        ('groups = { "a" = "boss" }\n', "access.oidc.groups.a", "invalid binding 'boss'"),
        ('groups = { "a" = "deployer:prod" }\n', "access.oidc.groups.a", "'prod', which is not"),
        ('client_secret_secret = "OIDC"\n', "access.oidc.secret_environment", "needs secret_env"),
        (
            'client_secret_secret = "OIDC"\nsecret_environment = "prod"\n',
            "access.oidc.secret_environment",
            "'prod' is not declared",
        ),
    ],
)
def test_access_oidc_errors_name_the_key(tmp_path: Path, extra: str, key: str, says: str) -> None:
    path = tmp_path / "conveyor.toml"
    path.write_text(BASE + extra)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert key in str(err.value) and says in str(err.value)


def test_the_issuer_must_be_https_except_on_loopback(tmp_path: Path) -> None:
    path = tmp_path / "conveyor.toml"
    path.write_text(BASE.replace("https://idp.example/", "http://idp.example"))
    with pytest.raises(ConfigError, match="must be an https:// URL"):
        load_config(path)
    path.write_text(BASE.replace("https://idp.example/", "http://127.0.0.1:8080"))
    assert load_config(path).access.oidc is not None
