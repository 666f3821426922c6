"""Who may write and read what: key kinds, shopper tokens, rate limits (docs/security.md).

Key kinds, each sent as `X-Write-Key: <key>`, `Authorization: Bearer <key>` or HTTP Basic with
the key as user name (what the Segment/RudderStack SDKs send):

- client keys (`RETAIL_WRITE_KEYS`): public, shipped in browsers and apps. Events, identify and
  alias naming a user id need that user's shopper token (app/core/tokens.py) in the message
  (`context.shopper_token`) or the `X-Shopper-Token` header; anonymous ids must be random
  bearer ids (>= 16 characters, >= 6 distinct) and are valid only for themselves.
- server keys (`RETAIL_SERVER_KEYS`): secret, for backends, server SDKs and loaders: anything.
- the admin key (`RETAIL_ADMIN_KEY`): operators; anything, plus the admin endpoints.

Reads about a shopper (recommendations, session, profile, personalised search) need a server
or admin key, or that shopper's token (`X-Shopper-Token`). `RETAIL_IDENTITY_VERIFICATION=false`
turns the token checks off, on a loopback-bound server only (local experiments).

Rate limits are token buckets in this process (no Redis round trip on the hot path, and they
keep working while Redis is down); with several workers each holds its own buckets.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request

from app.core import tokens
from app.core.errors import AuthError, ForbiddenError, RateLimitedError
from app.core.events import ANON_PREFIX, ID_RE
from app.core.settings import Limits, Settings

TOKEN_HEADER = "x-shopper-token"
MIN_ANON_LEN = 16
MIN_ANON_DISTINCT = 6
MAX_TRACKED = 100_000  # buckets and failure records kept per process (LRU)
MAX_LOCKOUT_S = 60.0
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Caller:
    kind: str  # "admin" | "server" | "client" | "none"
    key: str = ""

    @property
    def trusted(self) -> bool:
        """Server and admin keys may act for any shopper."""
        return self.kind in ("admin", "server")


# -- limits ---------------------------------------------------------------------------------------


class TokenBuckets:
    """`rate` requests/s with bursts of `burst`, per key; the least recent keys are forgotten."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    def take(self, key: str, now: float | None = None) -> float:
        """0 when allowed (one token taken), else the seconds until a token is there."""
        if self.rate <= 0:
            return 0.0
        t = time.monotonic() if now is None else now
        with self._lock:
            tokens_left, at = self._buckets.pop(key, (self.burst, t))
            tokens_left = min(self.burst, tokens_left + (t - at) * self.rate)
            wait = 0.0 if tokens_left >= 1 else (1 - tokens_left) / self.rate
            self._buckets[key] = (tokens_left - 1 if wait == 0 else tokens_left, t)
            while len(self._buckets) > MAX_TRACKED:
                self._buckets.popitem(last=False)
        return wait


class FailureLock:
    """After `threshold` wrong secret keys from one address, that address waits `base_s`,
    doubling per further failure (capped): guessing the admin key becomes slow."""

    def __init__(self, threshold: int, base_s: float) -> None:
        self.threshold = threshold
        self.base_s = base_s
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._lock = threading.Lock()

    def check(self, address: str) -> None:
        with self._lock:
            _, until = self._failures.get(address, (0, 0.0))
        wait = until - time.monotonic()
        if wait > 0:
            raise RateLimitedError("too many failed keys from this address", wait)

    def failed(self, address: str) -> None:
        with self._lock:
            count, _ = self._failures.pop(address, (0, 0.0))
            count += 1
            until = 0.0
            if count >= self.threshold:
                until = time.monotonic() + min(
                    MAX_LOCKOUT_S, self.base_s * 2 ** (count - self.threshold)
                )
            self._failures[address] = (count, until)
            while len(self._failures) > MAX_TRACKED:
                self._failures.popitem(last=False)

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._failures.pop(address, None)


class Guard:
    """The app's limits: per write key, per client address, and failed keys per address."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.per_key = TokenBuckets(limits.per_write_key_rps, limits.per_write_key_burst)
        self.per_address = TokenBuckets(limits.per_address_rps, limits.per_address_burst)
        self.failures = FailureLock(limits.auth_failures, limits.auth_lockout_s)
        self.rejected: dict[str, int] = {}
        self._lock = threading.Lock()

    def count_rejection(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] = self.rejected.get(reason, 0) + 1


def guard(request: Request) -> Guard:
    """The app's Guard (created on first use from the settings)."""
    found = getattr(request.app.state, "guard", None)
    if not isinstance(found, Guard):
        found = Guard(_settings(request).limits)
        request.app.state.guard = found
    return found


def client_address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


# -- credentials ----------------------------------------------------------------------------------


def _settings(request: Request) -> Settings:
    st = request.state._state  # the lifespan state (see app.api.deps.state)
    settings = st["settings"]
    assert isinstance(settings, Settings)
    return settings


def _ascii(value: str, what: str) -> str:
    if not value.isascii() or not value.isprintable():
        raise AuthError(f"{what} must be printable ASCII")
    return value


def presented_key(request: Request, body_key: Any = None) -> str | None:
    """The key the request carries: `Authorization: Bearer <key>` or HTTP Basic (key as user
    name, what the Segment SDKs send), else X-Write-Key. A malformed Authorization header is a
    401, never ignored."""
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = _ascii(header, "Authorization").partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        if scheme.lower() == "basic" and value.strip():
            try:
                decoded = base64.b64decode(value.strip(), validate=True).decode("ascii")
            except (binascii.Error, UnicodeDecodeError):
                raise AuthError("Authorization: Basic needs base64 of '<write key>:'") from None
            return _ascii(decoded.partition(":")[0], "the Basic user name")
        raise AuthError("Authorization must be 'Bearer <key>' or 'Basic <base64 key:>'")
    write_key = request.headers.get("x-write-key")
    if write_key:
        return _ascii(write_key, "X-Write-Key")
    return _ascii(body_key, "writeKey") if isinstance(body_key, str) and body_key else None


def _matches(given: str, candidates: frozenset[str]) -> bool:
    # Every candidate is compared (constant time per key; the key set is not leaked by timing).
    found = False
    for key in candidates:
        found |= hmac.compare_digest(given.encode(), key.encode())
    return found


def caller(request: Request, body_key: Any = None) -> Caller:
    """Who is calling: the kind of the presented key; no key is `none`; an unknown key is 401
    (and counts towards the address's failed-key lockout)."""
    given = presented_key(request, body_key)
    if given is None:
        return Caller("none")
    settings = _settings(request)
    g = guard(request)
    address = client_address(request)
    g.failures.check(address)
    admin = settings.admin_key
    if admin is not None and hmac.compare_digest(given.encode(), str(admin).encode()):
        g.failures.succeeded(address)
        return Caller("admin", given)
    if _matches(given, settings.server_keys):
        g.failures.succeeded(address)
        return Caller("server", given)
    if _matches(given, settings.write_keys):
        return Caller("client", given)
    g.failures.failed(address)
    _rejected(request, "unknown_key")
    raise AuthError("unknown key (X-Write-Key, or Authorization: Bearer <key>)")


def require_admin(request: Request) -> Caller:
    settings = _settings(request)
    if settings.admin_key is None:
        raise AuthError("this endpoint needs RETAIL_ADMIN_KEY to be configured")
    who = caller(request)
    if who.kind != "admin":  # (an unknown key was counted as a failed guess by `caller`)
        raise AuthError("missing or wrong API key (Authorization: Bearer <RETAIL_ADMIN_KEY>)")
    return who


def require_writer(request: Request, body_key: Any = None) -> Caller:
    """A client, server or admin key (`body_key`: a `writeKey` in the body, the last resort);
    rate limited per key."""
    settings = _settings(request)
    if not (settings.write_keys or settings.server_keys or settings.admin_key):
        raise AuthError("writes are disabled: set RETAIL_WRITE_KEYS or RETAIL_SERVER_KEYS")
    who = caller(request, body_key)
    if who.kind == "none":
        raise AuthError("missing write key (X-Write-Key, or Authorization: Bearer/Basic)")
    wait = guard(request).per_key.take(who.key)
    if wait:
        _rejected(request, "rate_key")
        raise RateLimitedError("too many requests for this write key", wait)
    return who


# -- shoppers -------------------------------------------------------------------------------------


def anonymous_id_problem(anonymous_id: str) -> str | None:
    """Why an anonymous id is not acceptable as a bearer id from a client (None: it is)."""
    if len(anonymous_id) < MIN_ANON_LEN or len(set(anonymous_id)) < MIN_ANON_DISTINCT:
        return (
            f"anonymous ids from client keys must be random: at least {MIN_ANON_LEN} "
            f"characters with {MIN_ANON_DISTINCT} distinct (e.g. a UUID)"
        )
    return None


def verifying(request: Request) -> bool:
    return _settings(request).verify_identity


def identity_problem(request: Request, who: Caller, identity: str, token: str | None) -> str | None:
    """Why `who` (with `token`) may not act for `identity` (a user id or 'anon:<id>'); None
    when it may."""
    if who.trusted or not verifying(request):
        return None
    if identity.startswith(ANON_PREFIX):
        return anonymous_id_problem(identity.removeprefix(ANON_PREFIX))
    secret = _settings(request).identity_secret
    if secret is None:
        return "shopper tokens are not configured (RETAIL_IDENTITY_SECRET): use a server key"
    if not token:
        return (
            f"{identity}'s shopper token (X-Shopper-Token, or context.shopper_token in a "
            "message) or a server key is required"
        )
    try:
        tokens.verify(str(secret), identity, token)
    except tokens.TokenError as exc:
        return str(exc)
    return None


def authorize_read(request: Request, identity: str) -> Caller:
    """Reads about one shopper: a server/admin key, or that shopper's token (403 otherwise)."""
    who = caller(request)
    token = request.headers.get(TOKEN_HEADER)
    problem = identity_problem(request, who, identity, token)
    if problem is not None:
        _rejected(request, "read")
        raise ForbiddenError(problem)
    return who


def message_token(message: Mapping[str, Any], request: Request) -> str | None:
    """A message's shopper token: `context.shopper_token` (or `shopperToken`), else the
    request's X-Shopper-Token header."""
    context = message.get("context")
    if isinstance(context, Mapping):
        for name in ("shopper_token", "shopperToken"):
            value = context.get(name)
            if isinstance(value, str):
                return value
    return request.headers.get(TOKEN_HEADER)


def message_identities(message: Mapping[str, Any]) -> list[str]:
    """The shoppers a message acts for: its user id and/or 'anon:<anonymous id>' (snake or
    camel case, and an alias's previous id). Malformed ids are left to the message's own
    validation."""
    found = []
    # An alias's previous id is treated as an anonymous (bearer) id: from a client key it must
    # be random; a known user's id can only be aliased by a backend (server key).
    for names, prefix in (
        (("user_id", "userId"), ""),
        (("anonymous_id", "anonymousId"), "anon:"),
        (("previous_id", "previousId"), "anon:"),
    ):
        for name in names:
            value = message.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                value = str(value)  # events accept numeric ids (app/core/events.py)
            if isinstance(value, str) and ID_RE.match(value):
                found.append(prefix + value)
                break
    return found


def authorize_write(request: Request, who: Caller, messages: list[Any]) -> list[str | None]:
    """Per message: None when `who` may send it, else why not (each rejection is counted).
    The user id needs its token; an anonymous id must be a random bearer id."""
    out: list[str | None] = []
    for message in messages:
        problem = None
        if isinstance(message, Mapping):
            token = message_token(message, request)
            for identity in message_identities(message):
                problem = identity_problem(request, who, identity, token)
                if problem is not None:
                    break
        if problem is not None:
            _rejected(request, "write")
        out.append(problem)
    return out


def check_verification_setting(settings: Settings) -> None:
    """Turning verification off is for a loopback-bound server only."""
    if not settings.verify_identity and settings.host not in LOOPBACK:
        raise ValueError(
            "RETAIL_IDENTITY_VERIFICATION=false is for local experiments: the server must bind "
            f"to 127.0.0.1 (RETAIL_HOST is {settings.host})"
        )


def _rejected(request: Request, reason: str) -> None:
    guard(request).count_rejection(reason)
    mw = getattr(request.app.state, "metrics", None)
    registry = getattr(mw, "registry", None)
    if registry is not None:
        registry.inc("auth.rejected", reason=reason)
