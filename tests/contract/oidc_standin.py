"""A small OpenID Connect provider on 127.0.0.1, standing in for a real one (Keycloak, Dex,
Okta...) in the contract tests of conveyor.auth.oidc_routes.

It serves what the OpenID Connect Core and Discovery specifications and RFC 7636 (PKCE) ask of a
provider for the authorization code flow: the discovery document, `/authorize` (which "logs in"
the user the test chose and sends the browser back with a code), `/token` (client_secret_basic,
the code bound to its redirect_uri, the S256 code challenge checked against the verifier; the
code used once) and `/jwks` (the RSA public key); ID tokens are RS256 JWTs signed with
`cryptography`. `tamper` makes it misbehave in one chosen way, for the refusals.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

CLIENT_ID = "conveyor"
CLIENT_SECRET = "s3cret-client-value-Zq8"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _int(n: int) -> str:
    return b64url(n.to_bytes((n.bit_length() + 7) // 8, "big"))


def sign_jwt(key: rsa.RSAPrivateKey, kid: str, claims: dict[str, Any], alg: str = "RS256") -> str:
    head = b64url(json.dumps({"alg": alg, "typ": "JWT", "kid": kid}).encode())
    body = b64url(json.dumps(claims).encode())
    signed = f"{head}.{body}".encode()
    return f"{head}.{body}.{b64url(key.sign(signed, padding.PKCS1v15(), hashes.SHA256()))}"


def jwk(key: rsa.RSAPrivateKey, kid: str) -> dict[str, str]:
    numbers = key.public_key().public_numbers()
    return {
        "kty": "RSA",
        "use": "sig",
        "alg": "RS256",
        "kid": kid,
        "n": _int(numbers.n),
        "e": _int(numbers.e),
    }


@dataclass
class StandIn:
    url: str = ""
    key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    kid: str = "key-1"
    # Who /authorize logs in, with which groups.
    user: str = "alice"
    groups: list[str] = field(default_factory=list)
    # None, or one of: "nonce", "audience", "issuer", "signature", "expired" (in the ID token).
    tamper: str | None = None
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    # What the provider saw: the authorize requests' parameters, the token requests' results.
    authorized: list[dict[str, str]] = field(default_factory=list)
    exchanged: list[str] = field(default_factory=list)  # "ok" or the OAuth error

    def id_token(self, grant: dict[str, Any]) -> str:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.url,
            "sub": f"id-{self.user}",
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "nonce": grant["nonce"],
            "preferred_username": self.user,
            "groups": list(self.groups),
        }
        key = self.key
        if self.tamper == "nonce":
            claims["nonce"] = "another-login"
        elif self.tamper == "audience":
            claims["aud"] = "someone-else"
        elif self.tamper == "issuer":
            claims["iss"] = "https://evil.example"
        elif self.tamper == "expired":
            claims["exp"] = now - 3600
        elif self.tamper == "signature":
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return sign_jwt(key, self.kid, claims)


def _handler(standin: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _json(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            if parts.path == "/.well-known/openid-configuration":
                self._json(
                    200,
                    {
                        "issuer": standin.url,
                        "authorization_endpoint": f"{standin.url}/authorize",
                        "token_endpoint": f"{standin.url}/token",
                        "jwks_uri": f"{standin.url}/jwks",
                        "response_types_supported": ["code"],
                        "subject_types_supported": ["public"],
                        "id_token_signing_alg_values_supported": ["RS256"],
                        "code_challenge_methods_supported": ["S256"],
                        "token_endpoint_auth_methods_supported": ["client_secret_basic"],
                    },
                )
            elif parts.path == "/jwks":
                self._json(200, {"keys": [jwk(standin.key, standin.kid)]})
            elif parts.path == "/authorize":
                q = {k: v[0] for k, v in parse_qs(parts.query).items()}
                standin.authorized.append(q)
                if q.get("client_id") != CLIENT_ID or q.get("response_type") != "code":
                    self._json(400, {"error": "unauthorized_client"})
                    return
                code = secrets.token_urlsafe(16)
                standin.codes[code] = {
                    "redirect_uri": q["redirect_uri"],
                    "challenge": q.get("code_challenge"),
                    "method": q.get("code_challenge_method"),
                    "nonce": q.get("nonce"),
                }
                back = urlencode({"code": code, "state": q.get("state", "")})
                self.send_response(302)
                self.send_header("Location", f"{q['redirect_uri']}?{back}")
                self.end_headers()
            else:
                self._json(404, {"error": "not_found"})

        def do_POST(self) -> None:
            if urlsplit(self.path).path != "/token":
                self._json(404, {"error": "not_found"})
                return
            length = int(self.headers.get("Content-Length", "0"))
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            error = self._check(form)
            standin.exchanged.append(error or "ok")
            if error:
                self._json(400 if error != "invalid_client" else 401, {"error": error})
                return
            grant = standin.codes.pop(form["code"])
            self._json(
                200,
                {
                    "access_token": secrets.token_urlsafe(16),
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "id_token": standin.id_token(grant),
                },
            )

        def _check(self, form: dict[str, str]) -> str | None:
            basic = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
            if self.headers.get("Authorization") != f"Basic {basic}":
                return "invalid_client"
            if form.get("grant_type") != "authorization_code":
                return "unsupported_grant_type"
            grant = standin.codes.get(form.get("code", ""))
            if grant is None or grant["redirect_uri"] != form.get("redirect_uri"):
                return "invalid_grant"
            verifier = form.get("code_verifier", "")
            digest = b64url(hashlib.sha256(verifier.encode()).digest())
            if grant["method"] != "S256" or digest != grant["challenge"]:
                return "invalid_grant"
            return None

    return Handler


@contextmanager
def oidc_standin() -> Iterator[StandIn]:
    standin = StandIn()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(standin))
    standin.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield standin
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)
