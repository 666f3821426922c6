"""What every route module shares: the lifespan state, the thread-pool hop for blocking Redis
calls, authentication, body parsing and query parameters.

Routes import these public names; nothing here imports a routes module, so the API has no
import circle.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import zlib
from collections.abc import Callable
from typing import Any, TypedDict, TypeVar, cast

import redis
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from app.catalog.search import int_param as parse_int_param
from app.core.errors import AuthError, TooLargeError, ValidationError
from app.core.events import ID_RE
from app.core.keys import Keys
from app.core.settings import Settings
from app.engine import Engine
from app.ingest.ingestor import Ingestor
from app.redis import library as functions

MAX_BODY_BYTES = 1_000_000
T = TypeVar("T")


class AppState(TypedDict):
    settings: Settings
    redis: redis.Redis
    engine: Engine
    ingestor: Ingestor
    library: functions.Library
    keys: Keys


def state(request: Request) -> AppState:
    # Starlette copies the lifespan's yielded mapping into each request's state.
    return cast(AppState, request.state._state)


async def blocking(fn: Callable[..., T], *args: Any) -> T:
    return await run_in_threadpool(fn, *args)


# -- auth and body helpers ---------------------------------------------------------------------


def write_key_of(request: Request, body_key: Any = None) -> str:
    """The write key as the SDKs send it: `X-Write-Key`, or HTTP Basic with the key as the user
    name and an empty password (Segment / RudderStack), or a `writeKey` field in the body
    (analytics.js's beacon transport cannot set headers). "" when none."""
    header = request.headers.get("x-write-key")
    if header:
        return header
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic" and credentials:
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise AuthError("malformed HTTP Basic credentials") from None
        return decoded.partition(":")[0]
    return body_key if isinstance(body_key, str) else ""


def require_write_key(request: Request, body_key: Any = None) -> None:
    """Public write key (as analytics SDKs use): identifies the source, not a secret."""
    given = write_key_of(request, body_key)
    allowed = state(request)["settings"].write_keys
    if not allowed:
        raise AuthError("event ingestion is disabled: set RETAIL_WRITE_KEYS")
    if not any(hmac.compare_digest(given, key) for key in allowed):
        raise AuthError(
            "missing or unknown write key (HTTP Basic user name with an empty password, "
            "or X-Write-Key)"
        )


def require_admin_key(request: Request) -> None:
    """Secret API key for server-to-server and admin endpoints (Authorization: Bearer ...)."""
    secret = state(request)["settings"].admin_key
    if secret is None:
        raise AuthError("this endpoint needs RETAIL_ADMIN_KEY to be configured")
    given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given, str(secret)):
        raise AuthError("missing or wrong API key (Authorization: Bearer <RETAIL_ADMIN_KEY>)")


async def read_body(request: Request, max_bytes: int = MAX_BODY_BYTES) -> bytes:
    """The request body, gunzipped when `Content-Encoding: gzip`; at most `max_bytes` either
    way (the decompression stops there, so a small gzip bomb cannot expand in memory)."""
    body = await request.body()
    if len(body) > max_bytes:
        raise TooLargeError("body", f"must be at most {max_bytes} bytes")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding != "gzip":
        raise ValidationError("content-encoding", "must be gzip or identity")
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        raw = inflater.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise ValidationError("body", f"is not valid gzip: {exc}") from exc
    if len(raw) > max_bytes or inflater.unconsumed_tail:
        raise TooLargeError("body", f"must be at most {max_bytes} bytes uncompressed")
    return raw


async def read_json(request: Request, max_bytes: int = MAX_BODY_BYTES) -> Any:
    body = await read_body(request, max_bytes)
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValidationError("body", f"is not valid JSON: {exc}") from exc


def int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    return parse_int_param(request.query_params, name, default, lo, hi)


def identity_param(request: Request) -> str:
    identity = request.path_params["user_id"]
    if not ID_RE.match(identity):
        raise ValidationError("user_id", "must be 1-64 characters of letters, digits or ._:@/+=-")
    return str(identity)
