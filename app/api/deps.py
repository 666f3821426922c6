"""What every route module shares: the lifespan state, the thread-pool hop for blocking Redis
calls, authentication, body parsing and query parameters.

Routes import these public names; nothing here imports a routes module, so the API has no
import circle.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from typing import Any, TypedDict, TypeVar, cast

import redis
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from app.catalog.search import int_param as parse_int_param
from app.core.errors import AuthError, ValidationError
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


# -- auth and body helpers ---------------------------------------------------------------------


def require_write_key(request: Request) -> None:
    """Public write key (as analytics SDKs use): identifies the source, not a secret."""
    given = request.headers.get("x-write-key", "")
    allowed = state(request)["settings"].write_keys
    if not allowed:
        raise AuthError("event ingestion is disabled: set RETAIL_WRITE_KEYS")
    if not any(hmac.compare_digest(given, key) for key in allowed):
        raise AuthError("missing or unknown X-Write-Key")


def require_admin_key(request: Request) -> None:
    """Secret API key for server-to-server and admin endpoints (Authorization: Bearer ...)."""
    secret = state(request)["settings"].admin_key
    if secret is None:
        raise AuthError("this endpoint needs RETAIL_ADMIN_KEY to be configured")
    given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given, str(secret)):
        raise AuthError("missing or wrong API key (Authorization: Bearer <RETAIL_ADMIN_KEY>)")


async def read_json(request: Request) -> Any:
    body = await request.body()
    if len(body) > MAX_BODY_BYTES:
        raise ValidationError("body", f"must be at most {MAX_BODY_BYTES} bytes")
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
