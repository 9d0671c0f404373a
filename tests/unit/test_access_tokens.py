"""Token strings (conveyor.auth.tokens) and token lifetimes (conveyor.auth.service.parse_expiry)."""

from __future__ import annotations

import hashlib
import re
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from conveyor.auth import tokens
from conveyor.auth.service import parse_expiry

SECRETS = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-",
    min_size=43,
    max_size=64,
)


def test_a_new_token_is_cvy_id_secret_and_its_parts_parse_back() -> None:
    token_id, secret, whole = tokens.new_token()
    assert re.fullmatch(r"cvy_[a-z0-9]{16}_[A-Za-z0-9_-]{43}", whole)
    assert "_" not in token_id and len(token_id) >= 12
    assert len(secret) >= 43  # 32 random bytes, base64url
    parsed = tokens.parse(whole)
    assert (parsed.id, parsed.secret) == (token_id, secret)
    assert secret not in repr(parsed)


def test_tokens_do_not_repeat() -> None:
    made = [tokens.new_token() for _ in range(500)]
    assert len({t[0] for t in made}) == 500 and len({t[1] for t in made}) == 500


@given(SECRETS)
def test_a_secret_with_underscores_still_parses(secret: str) -> None:
    token_id = tokens.new_id()
    assert tokens.parse(tokens.format_token(token_id, secret)) == tokens.ParsedToken(
        token_id, secret
    )


@pytest.mark.parametrize(
    ("given_token", "says"),
    [
        ("Bearer abc", "starts with cvy_"),
        ("cvx_abcdefghijkl_" + "s" * 43, "starts with cvy_"),
        ("cvy_short_" + "s" * 43, "its id is not valid"),
        ("cvy_ABCDEFGHIJKL_" + "s" * 43, "its id is not valid"),
        ("cvy_abcdefghijkl_" + "s" * 20, "not the shape conveyor makes"),
        ("cvy_abcdefghijkl_" + "s" * 42 + "!", "not the shape conveyor makes"),
        ("cvy_abcdefghijkl", "not the shape conveyor makes"),
    ],
)
def test_malformed_tokens_say_what_is_wrong_without_repeating_them(
    given_token: str, says: str
) -> None:
    with pytest.raises(tokens.MalformedToken) as exc:
        tokens.parse(given_token)
    assert says in str(exc.value)
    assert "s" * 20 not in str(exc.value)


def test_only_a_digest_is_kept_and_it_is_compared_in_full() -> None:
    _, secret, _ = tokens.new_token()
    stored = tokens.digest(secret)
    assert stored == hashlib.sha256(secret.encode()).hexdigest() and secret not in stored
    assert tokens.matches(secret, stored)
    assert not tokens.matches(secret[:-1] + ("x" if secret[-1] != "x" else "y"), stored)
    assert not tokens.matches(secret, stored[:-1])


@pytest.mark.parametrize(
    ("text", "lifetime"),
    [
        ("90d", timedelta(days=90)),
        ("12h", timedelta(hours=12)),
        ("2w", timedelta(weeks=2)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("30m", timedelta(minutes=30)),
        (" NEVER ", None),
    ],
)
def test_expiry(text: str, lifetime: timedelta | None) -> None:
    assert parse_expiry(text) == lifetime


@pytest.mark.parametrize("text", ["", "soon", "90", "0d", "-1d", "12h1d", "1y"])
def test_bad_expiry_says_what_is_accepted(text: str) -> None:
    with pytest.raises(ValueError, match="invalid expiry"):
        parse_expiry(text)
