"""Shopper tokens: proof, minted by the retailer's backend, that a caller acts for one shopper.

Like Intercom's `user_hash` (identity verification), plus an expiry. The format, so any
backend language can mint one with its standard library:

    token   = "v1." + expiry + "." + signature
    expiry  = Unix time in seconds (decimal digits), when the token stops being valid
    message = "v1\\n" + user_id + "\\n" + expiry          (UTF-8)
    signature = base64url( HMAC-SHA256(RETAIL_IDENTITY_SECRET, message) ), without '=' padding

For example, in Node: `crypto.createHmac('sha256', secret).update(`v1\\n${id}\\n${exp}`)
.digest('base64url')`. The token names no user: it only verifies against the user id the
request is about, so a token for one shopper never opens another shopper's data.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

VERSION = "v1"
DEFAULT_TTL_S = 3600
MAX_TTL_S = 30 * 86_400  # a token further in the future than this is refused as malformed
MAX_TOKEN_LEN = 128


class TokenError(ValueError):
    """The token is missing, malformed, expired, or signed for another user or secret."""


def _signature(secret: str, user_id: str, expiry: int) -> str:
    message = f"{VERSION}\n{user_id}\n{expiry}".encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def mint(secret: str, user_id: str, *, ttl_s: int = DEFAULT_TTL_S, now: float | None = None) -> str:
    """A token for `user_id` valid `ttl_s` seconds (what the retailer's backend does)."""
    if not secret:
        raise ValueError("an identity secret is needed to mint shopper tokens")
    if not 1 <= ttl_s <= MAX_TTL_S:
        raise ValueError(f"ttl_s must be between 1 and {MAX_TTL_S}")
    expiry = int(now if now is not None else time.time()) + ttl_s
    return f"{VERSION}.{expiry}.{_signature(secret, user_id, expiry)}"


def verify(secret: str, user_id: str, token: str, *, now: float | None = None) -> None:
    """Raise TokenError unless `token` was minted with `secret` for `user_id` and is unexpired."""
    if not token or len(token) > MAX_TOKEN_LEN or not token.isascii():
        raise TokenError("malformed shopper token")
    version, _, rest = token.partition(".")
    expiry_text, _, signature = rest.partition(".")
    if version != VERSION or not expiry_text.isdigit() or len(expiry_text) > 12 or not signature:
        raise TokenError("malformed shopper token")
    expiry = int(expiry_text)
    current = now if now is not None else time.time()
    if expiry > current + MAX_TTL_S:
        raise TokenError("shopper token expiry is too far in the future")
    if not hmac.compare_digest(signature, _signature(secret, user_id, expiry)):
        raise TokenError("shopper token does not match this user")
    if expiry <= current:
        raise TokenError("shopper token has expired")
