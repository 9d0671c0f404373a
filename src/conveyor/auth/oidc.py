"""OpenID Connect login (authorization code + PKCE): the parts that decide, and the three calls
to the provider.

Pure: the PKCE verifier and its S256 challenge, the state and nonce, the authorization URL, the
ID token's checks (RS256 signature against the provider's JWKS, issuer, audience, expiry,
nonce) and the mapping of its groups claim to bindings (`[access.oidc] groups`). The calls
(discovery, JWKS, the token endpoint) use the standard library over HTTPS (plain HTTP only to
127.0.0.1, for tests), with a timeout; conveyor.auth.oidc_routes drives them.

A provider's answer is never logged: it holds the ID token and maybe an access token.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicNumbers

from conveyor.core.access import Binding, Role

TIMEOUT = 10.0  # seconds for each call to the provider
LEEWAY = timedelta(seconds=60)  # clock skew allowed on exp / iat
PENDING_LIFETIME = timedelta(minutes=10)  # from /login to /callback
MAX_PENDING = 1000


class OidcError(Exception):
    """A login that cannot go on; the message says why, without a token or secret in it."""


@dataclass(frozen=True)
class OidcSettings:
    """`[access.oidc]` of conveyor.toml, with the client secret resolved (None: public client)."""

    issuer: str
    client_id: str
    client_secret: str | None
    groups: Mapping[str, str]  # group -> "role" or "role:environment"
    groups_claim: str = "groups"
    username_claim: str = "preferred_username"
    scopes: tuple[str, ...] = ("openid", "profile", "email")

    def __repr__(self) -> str:  # never print the client secret by accident
        return f"OidcSettings(issuer={self.issuer!r}, client_id={self.client_id!r})"


@dataclass(frozen=True)
class Provider:
    """What the discovery document says (only what a login needs)."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str


@dataclass(frozen=True)
class Pending:
    """A login between /login and /callback, kept by the server under its state."""

    state: str
    nonce: str
    verifier: str
    next_path: str
    created_at: datetime


@dataclass(frozen=True)
class Identity:
    subject: str  # the user name conveyor records (username claim, else email, else sub)
    groups: tuple[str, ...]
    bindings: dict[tuple[Role, str | None], str]  # (role, environment) -> the group giving it


# --- PKCE, state, nonce -------------------------------------------------------------------------


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_verifier() -> str:
    """A PKCE code verifier: 64 characters of [A-Za-z0-9_-] (RFC 7636 allows 43 to 128)."""
    return secrets.token_urlsafe(48)


def challenge(verifier: str) -> str:
    """The S256 code challenge of `verifier`: base64url(SHA-256(verifier)), no padding."""
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def new_state() -> str:
    return secrets.token_urlsafe(32)


def new_nonce() -> str:
    return secrets.token_urlsafe(32)


def begin(next_path: str, now: datetime) -> Pending:
    return Pending(new_state(), new_nonce(), new_verifier(), next_path, now)


def authorization_url(
    provider: Provider, settings: OidcSettings, redirect_uri: str, pending: Pending
) -> str:
    query = urllib.parse.urlencode(
        {
            "response_type": "code",
            "client_id": settings.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(settings.scopes),
            "state": pending.state,
            "nonce": pending.nonce,
            "code_challenge": challenge(pending.verifier),
            "code_challenge_method": "S256",
        }
    )
    sep = "&" if "?" in provider.authorization_endpoint else "?"
    return f"{provider.authorization_endpoint}{sep}{query}"


class PendingLogins:
    """Logins under way, by state: taken once, forgotten after PENDING_LIFETIME, at most
    MAX_PENDING (the oldest go first). One server process holds them; not thread-safe by
    itself (the routes hold a lock)."""

    def __init__(self) -> None:
        self._by_state: dict[str, Pending] = {}

    def put(self, pending: Pending) -> None:
        self._by_state[pending.state] = pending
        while len(self._by_state) > MAX_PENDING:
            del self._by_state[next(iter(self._by_state))]

    def take(self, state: str, now: datetime) -> Pending | None:
        for key in [k for k, p in self._by_state.items() if now - p.created_at > PENDING_LIFETIME]:
            del self._by_state[key]
        return self._by_state.pop(state, None)


# --- groups -> bindings ---------------------------------------------------------------------


def parse_binding(value: str) -> tuple[Role, str | None]:
    """ "deployer:staging" -> (deployer, "staging"); "admin" -> (admin, None: every environment)."""
    role, _, env = value.partition(":")
    return Role(role), (env or None)


def bindings_for(
    groups: Iterable[str], mapping: Mapping[str, str]
) -> dict[tuple[Role, str | None], str]:
    """The bindings the groups give, each with the (first, by name) group that gives it."""
    found: dict[tuple[Role, str | None], str] = {}
    for group in sorted(set(groups)):
        if group in mapping:
            found.setdefault(parse_binding(mapping[group]), group)
    return found


def as_bindings(subject: str, found: Mapping[tuple[Role, str | None], str]) -> tuple[Binding, ...]:
    return tuple(Binding(subject, role, env) for role, env in found)


def identity(claims: Mapping[str, Any], settings: OidcSettings) -> Identity:
    """Who the verified claims name, and the bindings their groups give."""
    subject = next(
        (
            str(claims[key]).strip()
            for key in (settings.username_claim, "email", "sub")
            if isinstance(claims.get(key), str) and str(claims[key]).strip()
        ),
        None,
    )
    if subject is None:
        raise OidcError("the ID token names no user (no username, email or sub claim)")
    raw = claims.get(settings.groups_claim, [])
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(g, str) for g in raw):
        raise OidcError(f"the ID token's {settings.groups_claim} claim is not a list of names")
    groups = tuple(raw)
    return Identity(subject, groups, bindings_for(groups, settings.groups))


# --- the ID token -------------------------------------------------------------------------------


def _rsa_key(jwk: Mapping[str, Any]) -> Any:
    n = int.from_bytes(_unb64url(str(jwk["n"])), "big")
    e = int.from_bytes(_unb64url(str(jwk["e"])), "big")
    return RSAPublicNumbers(e, n).public_key()


def verify_id_token(
    id_token: str,
    jwks: Mapping[str, Any],
    settings: OidcSettings,
    nonce: str,
    now: datetime,
) -> dict[str, Any]:
    """The ID token's claims, once its RS256 signature (a key of `jwks`), issuer, audience,
    expiry, issue time and nonce are right; OidcError saying which is not."""
    try:
        head_b64, body_b64, sig_b64 = id_token.split(".")
        header = json.loads(_unb64url(head_b64))
        claims = json.loads(_unb64url(body_b64))
        signature = _unb64url(sig_b64)
    except ValueError:
        raise OidcError("the ID token is not a JWT (three base64url parts of JSON)") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise OidcError("the ID token is not a JWT (its parts are not JSON objects)")
    if header.get("alg") != "RS256":
        raise OidcError(f"the ID token is signed with {header.get('alg')!r}; conveyor takes RS256")
    keys = [
        k
        for k in jwks.get("keys", [])
        if isinstance(k, dict)
        and k.get("kty") == "RSA"
        and k.get("use", "sig") == "sig"
        and ("kid" not in header or k.get("kid") == header["kid"])
    ]
    if not keys:
        raise OidcError(f"no RSA key {header.get('kid')!r} in the provider's JWKS")
    signed = f"{head_b64}.{body_b64}".encode("ascii")
    for jwk in keys:
        try:
            _rsa_key(jwk).verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
            break
        except (InvalidSignature, KeyError, ValueError):
            continue
    else:
        raise OidcError("the ID token's signature does not verify with the provider's keys")
    if claims.get("iss") != settings.issuer:
        raise OidcError(f"the ID token's issuer {claims.get('iss')!r} is not {settings.issuer!r}")
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if settings.client_id not in audiences:
        raise OidcError(f"the ID token is not for client {settings.client_id!r}")
    if len(audiences) > 1 and claims.get("azp") != settings.client_id:
        raise OidcError("the ID token has several audiences and another authorized party")
    stamp = now.timestamp()
    exp, iat = claims.get("exp"), claims.get("iat")
    if not isinstance(exp, int | float) or exp <= stamp - LEEWAY.total_seconds():
        raise OidcError("the ID token has expired")
    if isinstance(iat, int | float) and iat > stamp + LEEWAY.total_seconds():
        raise OidcError("the ID token was issued in the future (check the clocks)")
    if not isinstance(claims.get("nonce"), str) or not secrets.compare_digest(
        str(claims["nonce"]), nonce
    ):
        raise OidcError("the ID token's nonce is not this login's (a replayed token?)")
    return claims


# --- the calls to the provider --------------------------------------------------------------


def _check_url(url: str, what: str) -> None:
    parts = urllib.parse.urlsplit(url)
    loopback = parts.hostname in ("127.0.0.1", "localhost", "::1")
    if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
        raise OidcError(f"the provider's {what} {url!r} is not https")


def _json(request: urllib.request.Request, what: str) -> dict[str, Any]:
    _check_url(request.full_url, what)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            data = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        detail = ""
        try:
            body = json.loads(exc.read())
            if isinstance(body, dict) and isinstance(body.get("error"), str):
                detail = f": {body['error']}"  # the OAuth error code only, never a token
        except ValueError:
            pass
        raise OidcError(f"the provider's {what} answered {exc.code}{detail}") from None
    except (OSError, ValueError) as exc:
        raise OidcError(f"the provider's {what} could not be read: {exc}") from None
    if not isinstance(data, dict):
        raise OidcError(f"the provider's {what} is not a JSON object")
    return data


def discover(issuer: str) -> Provider:
    """The provider's endpoints, from `<issuer>/.well-known/openid-configuration`."""
    url = f"{issuer.rstrip('/')}/.well-known/openid-configuration"
    doc = _json(urllib.request.Request(url), "discovery document")
    if doc.get("issuer") != issuer:
        raise OidcError(
            f"the discovery document names issuer {doc.get('issuer')!r}, not {issuer!r}"
        )
    try:
        provider = Provider(
            issuer=issuer,
            authorization_endpoint=str(doc["authorization_endpoint"]),
            token_endpoint=str(doc["token_endpoint"]),
            jwks_uri=str(doc["jwks_uri"]),
        )
    except KeyError as exc:
        raise OidcError(f"the discovery document has no {exc.args[0]}") from None
    methods = doc.get("code_challenge_methods_supported")
    if isinstance(methods, list) and "S256" not in methods:
        raise OidcError("the provider does not support PKCE with S256")
    return provider


def fetch_jwks(provider: Provider) -> dict[str, Any]:
    return _json(urllib.request.Request(provider.jwks_uri), "JWKS")


def exchange_code(
    provider: Provider, settings: OidcSettings, code: str, verifier: str, redirect_uri: str
) -> str:
    """Trade the authorization code (and the PKCE verifier) for the ID token."""
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "client_id": settings.client_id,
        "code_verifier": verifier,
    }
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
    if settings.client_secret is not None:  # client_secret_basic (RFC 6749 2.3.1)
        pair = f"{urllib.parse.quote(settings.client_id, safe='')}:" + urllib.parse.quote(
            settings.client_secret, safe=""
        )
        headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
    request = urllib.request.Request(
        provider.token_endpoint,
        data=urllib.parse.urlencode(form).encode(),
        headers=headers,
        method="POST",
    )
    answer = _json(request, "token endpoint")
    id_token = answer.get("id_token")
    if not isinstance(id_token, str):
        raise OidcError("the token endpoint gave no id_token (is the openid scope asked for?)")
    return id_token
