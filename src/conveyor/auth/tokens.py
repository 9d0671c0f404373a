"""API token strings: `cvy_<id>_<secret>`.

The id is public (listings, the audit log, `tokens revoke ID`); the secret is 32 random bytes
(secrets.token_urlsafe) shown once and stored only as its SHA-256 digest. A presented secret is
compared with the stored digest in constant time (hmac.compare_digest). The id never holds '_',
so a token splits unambiguously even though a secret may.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from dataclasses import dataclass

PREFIX = "cvy"
ID_LENGTH = 16
SECRET_BYTES = 32
_ID_ALPHABET = string.ascii_lowercase + string.digits
_ID_RE = re.compile(r"[a-z0-9]{12,32}")
# token_urlsafe(32) gives 43 characters of [A-Za-z0-9_-]; anything shorter was not made here.
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{43,128}")


class MalformedToken(ValueError):
    """Not a conveyor token; the message never repeats what was given (it may be a secret)."""


@dataclass(frozen=True)
class ParsedToken:
    id: str
    secret: str

    def __repr__(self) -> str:  # never print the secret by accident
        return f"ParsedToken(id={self.id!r}, secret=<hidden>)"


def new_id() -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(ID_LENGTH))


def new_token() -> tuple[str, str, str]:
    """A fresh token: (id, secret, the whole `cvy_<id>_<secret>` string)."""
    token_id, secret = new_id(), secrets.token_urlsafe(SECRET_BYTES)
    return token_id, secret, format_token(token_id, secret)


def format_token(token_id: str, secret: str) -> str:
    return f"{PREFIX}_{token_id}_{secret}"


def parse(token: str) -> ParsedToken:
    """Split a presented token; MalformedToken saying what is wrong with its shape."""
    prefix, _, rest = token.strip().partition("_")
    if prefix != PREFIX:
        raise MalformedToken(f"a conveyor token starts with {PREFIX}_")
    token_id, _, secret = rest.partition("_")
    if not _ID_RE.fullmatch(token_id):
        raise MalformedToken(f"a conveyor token is {PREFIX}_<id>_<secret>, and its id is not valid")
    if not _SECRET_RE.fullmatch(secret):
        raise MalformedToken(f"the secret of token {token_id} is not the shape conveyor makes")
    return ParsedToken(token_id, secret)


def digest(secret: str) -> str:
    """What is stored of a secret: its SHA-256, hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def matches(secret: str, stored_digest: str) -> bool:
    """Whether `secret` is the one whose digest is stored, in constant time."""
    return hmac.compare_digest(digest(secret), stored_digest)
