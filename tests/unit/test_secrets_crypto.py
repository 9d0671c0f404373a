"""AES-256-GCM with the slot bound in: a round trip, and every way a stored value can go wrong
detected as a SecretError that names the secret."""

from __future__ import annotations

import os

import pytest

from conveyor.secrets.base import SecretError, SecretValue
from conveyor.secrets.crypto import key_check, same_key, seal, slot, unseal

KEY = os.urandom(32)
HERE = slot("shop", "production", "STRIPE_KEY", 3)
WHAT = "secret STRIPE_KEY version 3 of production"


def test_a_value_comes_back_as_it_went_in() -> None:
    for value in ("sk_live_abc", "", "ünïcødé\nwith lines\n", "x" * 100_000):
        nonce, ciphertext = seal(KEY, value, HERE)
        assert unseal(KEY, nonce, ciphertext, HERE, WHAT) == value
        assert value.encode() not in ciphertext or not value


def test_every_write_gets_a_fresh_nonce() -> None:
    first, second = seal(KEY, "same", HERE), seal(KEY, "same", HERE)
    assert len(first[0]) == 12 and first[0] != second[0] and first[1] != second[1]


def test_a_tampered_value_is_detected_and_named() -> None:
    nonce, ciphertext = seal(KEY, "sk_live_abc", HERE)
    for index in (0, len(ciphertext) // 2, len(ciphertext) - 1):
        flipped = bytearray(ciphertext)
        flipped[index] ^= 0x01
        with pytest.raises(SecretError, match=r"STRIPE_KEY version 3 of production.*altered"):
            unseal(KEY, nonce, bytes(flipped), HERE, WHAT)
    with pytest.raises(SecretError, match="altered"):
        unseal(KEY, bytes(12), ciphertext, HERE, WHAT)


def test_a_truncated_value_is_detected() -> None:
    nonce, ciphertext = seal(KEY, "sk_live_abc", HERE)
    with pytest.raises(SecretError, match=r"STRIPE_KEY.*truncated"):
        unseal(KEY, nonce, ciphertext[:10], HERE, WHAT)
    with pytest.raises(SecretError, match=r"STRIPE_KEY.*truncated"):
        unseal(KEY, nonce[:8], ciphertext, HERE, WHAT)
    with pytest.raises(SecretError, match="fails authentication"):
        unseal(KEY, nonce, ciphertext[:-1], HERE, WHAT)


def test_a_wrong_key_is_detected() -> None:
    nonce, ciphertext = seal(KEY, "sk_live_abc", HERE)
    with pytest.raises(SecretError, match="STRIPE_KEY"):
        unseal(os.urandom(32), nonce, ciphertext, HERE, WHAT)
    assert same_key(KEY, key_check(KEY))
    assert not same_key(os.urandom(32), key_check(KEY))
    assert KEY.hex() not in key_check(KEY)


@pytest.mark.parametrize(
    "elsewhere",
    [
        slot("shop", "production", "OTHER_KEY", 3),
        slot("shop", "staging", "STRIPE_KEY", 3),
        slot("shop", "production", "STRIPE_KEY", 2),
        slot("blog", "production", "STRIPE_KEY", 3),
        slot("shop", "production", "STRIPE_KEY", 3, kind="cache"),
    ],
    ids=["name", "environment", "version", "app", "kind"],
)
def test_a_value_moved_to_another_slot_is_detected(elsewhere: bytes) -> None:
    nonce, ciphertext = seal(KEY, "sk_live_abc", HERE)
    with pytest.raises(SecretError, match="copied from another secret"):
        unseal(KEY, nonce, ciphertext, elsewhere, WHAT)


def test_slots_do_not_collide_by_concatenation() -> None:
    assert slot("a", "bc", "D", 1) != slot("ab", "c", "D", 1)
    assert slot("shop", "dev", "A", 1) != slot("shop", "dev", "A", 11)


def test_a_secret_value_never_shows_in_its_repr_or_str() -> None:
    value = SecretValue("STRIPE_KEY", "sk_live_abc", "3", "local")
    assert "sk_live_abc" not in repr(value) and "sk_live_abc" not in str(value)
    assert str(value) == "[secret:STRIPE_KEY]"
