"""What every route module shares: the lifespan state, the thread-pool hop for blocking Redis
calls, authentication, body parsing and query parameters.

Routes import these public names; nothing here imports a routes module, so the API has no
import circle.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypedDict, TypeVar, cast

import redis
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from app.api import auth
from app.catalog.search import int_param as parse_int_param
from app.core.errors import TooLargeError, ValidationError
from app.core.events import ID_RULE, IDENTITY_RE
from app.core.keys import Keys
from app.core.settings import Limits, Settings
from app.engine import Engine
from app.ingest.ingestor import Ingestor
from app.redis import library as functions
from app.redis.health import RedisHealth

T = TypeVar("T")
# Recommendation reads run on their own threads (a bulkhead): writes waiting on a hung Redis
# hold the shared thread pool (40 threads) and would otherwise queue every read behind them.
READ_THREADS = 16
_read_pool = ThreadPoolExecutor(READ_THREADS, thread_name_prefix="recs-read")


class AppState(TypedDict):
    settings: Settings
    redis: redis.Redis  # the engine's server or cluster
    catalog_redis: redis.Redis  # products and their index (the search node on a cluster)
    engine: Engine
    ingestor: Ingestor
    library: functions.Library
    keys: Keys


def state(request: Request) -> AppState:
    # Starlette copies the lifespan's yielded mapping into each request's state.
    return cast(AppState, request.state._state)


async def blocking(fn: Callable[..., T], *args: Any) -> T:
    return await run_in_threadpool(fn, *args)


async def blocking_read(fn: Callable[..., T], *args: Any) -> T:
    """Like `blocking`, on the recommendation reads' own pool."""
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_read_pool, functools.partial(fn, *args))


# -- auth, limits and body helpers ---------------------------------------------------------------


def require_write_key(request: Request, body_key: Any = None) -> auth.Caller:
    """A client, server or admin key (app/api/auth.py decides per message what it may send);
    `body_key`: a `writeKey` field of the body (analytics.js's beacon cannot set headers)."""
    return auth.require_writer(request, body_key)


def require_admin_key(request: Request) -> auth.Caller:
    """The operators' secret key (Authorization: Bearer ...); repeated failures slow down."""
    return auth.require_admin(request)


def redis_available(request: Request) -> None:
    """503 at once (Retry-After) while the health probe sees Redis hung or down, instead of
    waiting a socket timeout per request."""
    health = getattr(request.app.state, "redis_health", None)
    if isinstance(health, RedisHealth):
        health.check()


async def read_body(request: Request, max_bytes: int | None = None) -> bytes:
    """The body, read while streaming: 413 as soon as it passes the limit (a declared
    Content-Length over the limit is refused before reading anything). Gunzipped when
    `Content-Encoding: gzip` (the SDKs compress batches), at most the limit uncompressed too:
    the decompression stops there, so a small gzip bomb cannot expand in memory."""
    limit = max_bytes or state(request)["settings"].limits.body_bytes
    body = getattr(request.state, "raw_body", None)  # a handler may read it twice
    if not isinstance(body, bytes):
        body = await _stream_body(request, limit)
        request.state.raw_body = body
    elif len(body) > limit:
        raise TooLargeError("body", f"must be at most {limit} bytes")
    return _decoded(request, body, limit)


async def _stream_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared[:20]) > limit):
        raise TooLargeError("body", f"must be at most {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLargeError("body", f"must be at most {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _decoded(request: Request, body: bytes, limit: int) -> bytes:
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding != "gzip":
        raise ValidationError("content-encoding", "must be gzip or identity")
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        raw = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise ValidationError("body", f"is not valid gzip: {exc}") from exc
    if len(raw) > limit or inflater.unconsumed_tail:
        raise TooLargeError("body", f"must be at most {limit} bytes uncompressed")
    return raw


async def read_json(request: Request, max_bytes: int | None = None) -> Any:
    limits = state(request)["settings"].limits
    return parse_json(await read_body(request, max_bytes or limits.body_bytes), limits)


def parse_json(body: bytes, limits: Limits | None = None) -> Any:
    """json.loads with bounded numbers (digits), no NaN/Infinity, and bounded nesting: what
    every route parsing a body uses (a plain json.loads fails with a 5xx on 100k nested `[`)."""
    limits = limits or Limits()

    def whole(text: str) -> int:
        if len(text.lstrip("-")) > limits.number_digits:
            raise ValidationError(
                "body", f"integers must have at most {limits.number_digits} digits"
            )
        return int(text)

    def fraction(text: str) -> float:
        value = float(text) if len(text) <= 2 * limits.number_digits else math.inf
        if not math.isfinite(value):
            raise ValidationError("body", "numbers must be finite, at most 40 characters")
        return value

    def constant(text: str) -> Any:
        raise ValidationError("body", f"{text} is not valid JSON")

    try:
        value = json.loads(body, parse_int=whole, parse_float=fraction, parse_constant=constant)
    except RecursionError:
        raise ValidationError("body", f"is nested deeper than {limits.json_depth} levels") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValidationError("body", f"is not valid JSON: {exc}") from exc
    if _depth(value) > limits.json_depth:
        raise ValidationError("body", f"is nested deeper than {limits.json_depth} levels")
    return value


def _depth(value: Any) -> int:
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            deepest = max(deepest, depth)
            stack.extend((v, depth + 1) for v in node)
    return deepest


def int_param(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    return parse_int_param(request.query_params, name, default, lo, hi)


def identity_param(request: Request) -> str:
    identity = request.path_params["user_id"]
    if not IDENTITY_RE.match(identity):
        raise ValidationError("user_id", ID_RULE)
    return str(identity)
