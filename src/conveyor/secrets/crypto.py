"""Where a secret is encrypted and decrypted: AES-256-GCM with the slot bound in.

Each write gets a fresh random 96-bit nonce. The associated data names the slot the value was
written for (app, environment, name, version, and for a cached copy the provider), so a
ciphertext copied to another row fails authentication exactly as a tampered or truncated one
does. A failure is a SecretError that names the secret, never garbage.

The key check value (an HMAC of a fixed label under the key) is stored once per app, so that a
wrong key is reported as such before any secret is tried.
"""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from conveyor.secrets.base import SecretError

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_CHECK_LABEL = b"conveyor master key check v1"


def slot(app: str, environment: str, name: str, version: str | int, kind: str = "value") -> bytes:
    """The associated data of one slot: each part length-prefixed, so no two slots collide."""
    parts = [b"conveyor-secret-v1", kind.encode(), app.encode(), environment.encode()]
    parts += [name.encode(), str(version).encode()]
    return b"".join(len(p).to_bytes(4, "big") + p for p in parts)


def seal(key: bytes, value: str, associated: bytes) -> tuple[bytes, bytes]:
    """(nonce, ciphertext with its tag) of `value` under `key`."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce, AESGCM(key).encrypt(nonce, value.encode("utf-8"), associated)


def unseal(key: bytes, nonce: bytes, ciphertext: bytes, associated: bytes, what: str) -> str:
    """The value sealed for this slot; SecretError naming `what` when it cannot be had."""
    if len(nonce) != NONCE_BYTES or len(ciphertext) < TAG_BYTES:
        raise SecretError(f"{what}: the stored value is truncated (the store was damaged)")
    try:
        plain = AESGCM(key).decrypt(nonce, ciphertext, associated)
    except InvalidTag:
        raise SecretError(
            f"{what}: the stored value fails authentication: it was altered, truncated, or "
            "copied from another secret, environment or version (or written under another key)"
        ) from None
    try:
        return plain.decode("utf-8")
    except UnicodeDecodeError:  # authenticated, so written so: not ours to guess
        raise SecretError(f"{what}: the stored value is not UTF-8 text") from None


def key_check(key: bytes) -> str:
    """What identifies `key` without revealing it: stored beside the data, compared on use."""
    return hmac.new(key, _CHECK_LABEL, hashlib.sha256).hexdigest()


def same_key(key: bytes, check: str) -> bool:
    return hmac.compare_digest(key_check(key), check)
