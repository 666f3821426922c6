"""Shopper tokens (app/core/tokens.py): the documented format, expiry, binding to one user."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from app.core import tokens

SECRET = "s3cret-identity"
NOW = 1_800_000_000


def test_the_documented_format_can_be_minted_by_hand() -> None:
    # What another language's backend does, straight from the module docstring.
    expiry = NOW + 600
    digest = hmac.new(SECRET.encode(), f"v1\nc17850\n{expiry}".encode(), hashlib.sha256).digest()
    by_hand = f"v1.{expiry}." + base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert tokens.mint(SECRET, "c17850", ttl_s=600, now=NOW) == by_hand
    tokens.verify(SECRET, "c17850", by_hand, now=NOW)


@pytest.mark.parametrize(
    ("user", "secret", "now", "why"),
    [
        ("c99999", SECRET, NOW, "does not match"),  # another shopper's token
        ("c17850", "other-secret", NOW, "does not match"),  # another deployment's
        ("c17850", SECRET, NOW + 601, "expired"),
    ],
)
def test_a_token_opens_one_user_under_one_secret_until_it_expires(
    user: str, secret: str, now: int, why: str
) -> None:
    token = tokens.mint(SECRET, "c17850", ttl_s=600, now=NOW)
    with pytest.raises(tokens.TokenError, match=why):
        tokens.verify(secret, user, token, now=now)


@pytest.mark.parametrize(
    "token",
    ["", "v1", "v1..sig", "v2.1800000600.abc", "v1.12ab.abc", "v1.1800000600.", "v1.1800000600.é",
     "x" * 200, f"v1.{NOW + 40 * 86_400}.abc"],
)  # fmt: skip
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(tokens.TokenError):
        tokens.verify(SECRET, "c17850", token, now=NOW)


def test_a_tampered_expiry_breaks_the_signature() -> None:
    token = tokens.mint(SECRET, "c17850", ttl_s=60, now=NOW)
    _, expiry, sig = token.split(".")
    with pytest.raises(tokens.TokenError, match="does not match"):
        tokens.verify(SECRET, "c17850", f"v1.{int(expiry) + 86_400}.{sig}", now=NOW)
