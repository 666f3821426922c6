"""The storefront HTTP API (Starlette, served by hypercorn).

Redis calls are blocking (redis-py's sync client, shared connection pool), so handlers hand
them to the thread pool; request parsing and validation stay on the event loop.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import redis
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api import auth, deps
from app.api.catalog import catalog_routes
from app.api.contract import contract_routes
from app.api.deps import AppState
from app.api.features import feature_routes
from app.api.openapi import (
    ANY_OBJECT,
    ERROR,
    ID,
    IDENTITY,
    Operation,
    Param,
    arr,
    integer,
    number,
    obj,
    operation,
    string,
)
from app.api.recs import install_recommendations
from app.api.tracking import tracking_routes
from app.api.web import web_routes
from app.catalog.facts import catalog_prices, event_items, unknown_items, with_catalog_prices
from app.catalog.index import CatalogKeys
from app.core.errors import (
    AuthError,
    BadArgumentError,
    EngineError,
    ForbiddenError,
    RateLimitedError,
    RedisOutOfMemoryError,
    RedisPermissionError,
    RedisSetupError,
    TooLargeError,
    ValidationError,
    from_redis_error,
)
from app.core.events import EVENT_TYPES, parse_event
from app.core.logs import configure_logging
from app.core.settings import Settings, load_settings
from app.engine import build_engine
from app.ingest.aggregates import ingest_status
from app.ingest.sessions import session_view
from app.obs.middleware import MetricsMiddleware, RequestContextMiddleware
from app.obs.registry import DEFAULT as DEFAULT_REGISTRY
from app.recs.worker import LIST_READER
from app.redis import calls
from app.redis import embedded as redis_stack
from app.redis import library as functions
from app.redis.connect import catalog_connection, connect, is_cluster
from app.redis.health import RedisHealth
from app.redis.replication import wait_replicated

log = logging.getLogger("retail.app")
MAX_BATCH = 1000
RETRY_AFTER_S = 1.0
OOM_RETRY_AFTER_S = 30.0
T = TypeVar("T")


# -- request and response schemas (OpenAPI: app/api/openapi.py) -----------------------------------

LINE = obj({"item_id": ID, "qty": integer(minimum=1, maximum=100_000), "price": number(minimum=0),
            "category": string(maxLength=64)}, required=["item_id"])  # fmt: skip
EVENT = obj(
    {"event_id": string(minLength=1, maxLength=128), "type": string(enum=list(EVENT_TYPES)),
     "user_id": ID, "anonymous_id": ID, "session_id": string(maxLength=128), "item_id": ID,
     "qty": integer(minimum=1, maximum=100_000), "ts": integer("event time, ms since the epoch"),
     "items": arr(LINE, max_items=200), "props": ANY_OBJECT},
    required=["event_id", "type"],
    description="user_id or anonymous_id is required; item_id for item events, items for a "
    "purchase, props.query for a search",
)  # fmt: skip
EVENTS_REPLY = obj({
    "accepted": integer(), "duplicate": integer(), "rejected": integer(),
    "results": arr(obj({"event_id": {"type": ["string", "null"]},
                        "status": string(enum=["accepted", "duplicate", "rejected"]),
                        "field": string(), "reason": string()})),
    "replicated": {"type": "boolean", "description": "with RETAIL_ACK_REPLICAS: on the replicas"},
})  # fmt: skip
NOT_REPLICATED = obj({**EVENTS_REPLY["properties"], "error": string(enum=["not_replicated"]),
                      "lagging": arr(string()), "detail": string()})  # fmt: skip
PROFILE = obj({
    "user_id": string(), "traits": ANY_OBJECT, "merged_anonymous_ids": arr(string()),
    "affinities": arr(obj({"attribute": string(), "score": number()})),
    "seen_items_estimate": integer(), "session": {"type": ["object", "null"]},
})  # fmt: skip


# -- endpoints ------------------------------------------------------------------------------------


@operation(Operation("Server, modules and Functions library status", "ops", responses={
    200: ("ok", obj({"status": string(enum=["ok"]), "library_version": string(),
                     "expected_library_version": string(),
                     "cluster_primaries": arr(obj({"node": string(),
                                                   "library_version": string()})),
                     "catalog_library_version": string()}, required=["status"])),
    503: ("unreachable, a module missing, or a stale library", ERROR),
}))  # fmt: skip
async def health(request: Request) -> Response:
    st = deps.state(request)

    def check() -> dict[str, Any]:
        info = redis_stack.probe(st["redis"])
        live = functions.loaded_version(st["redis"])
        body = {**info, "library_version": live,
                "expected_library_version": st["library"].version}  # fmt: skip
        if is_cluster(st["redis"]):
            nodes = functions.node_versions(st["redis"])
            body["cluster_primaries"] = [{"node": n, "library_version": v}
                                         for n, v in nodes.items()]  # fmt: skip
        if st["catalog_redis"] is not st["redis"]:
            redis_stack.probe(st["catalog_redis"])
            catalog_live = functions.loaded_version(st["catalog_redis"])
            body["catalog_library_version"] = catalog_live
        ingest = ingest_status(st["redis"], st["settings"].engine, [LIST_READER])
        lists = ingest.other_lags[LIST_READER.group]
        body["ingest"] = {
            "freshness_p50_ms": ingest.freshness_p50_ms,
            "freshness_p99_ms": ingest.freshness_p99_ms,
            "log_lag_max": ingest.lag.max_lag, "log_lag_total": ingest.lag.total_lag,
            "log_lag_limit": ingest.lag_limit, "alerts": ingest.alerts,
            "list_workers_lag_max": lists.max_lag if lists.partitions else None,
        }  # fmt: skip
        return body

    try:
        body = await deps.blocking(check)
    except (RedisSetupError, redis.RedisError) as exc:
        return JSONResponse({"status": "unavailable", "error": str(exc)}, status_code=503)
    # ok only when every primary and the catalog node run this code's library
    expected = body["expected_library_version"]
    ok = body["library_version"] == expected and body.get("catalog_library_version",
                                                          expected) == expected  # fmt: skip
    body["status"] = "ok" if ok else "stale_library"
    return JSONResponse(body, status_code=200 if ok else 503)


@operation(Operation(
    "Ingest events in the engine's own schema", "events", auth="write_key",
    request={"oneOf": [EVENT, arr(EVENT, min_items=1, max_items=MAX_BATCH),
                       obj({"events": arr(EVENT, min_items=1, max_items=MAX_BATCH)},
                           required=["events"])]},
    responses={200: ("per-event status", EVENTS_REPLY), 422: ("a single invalid event", ERROR),
               413: ("body over 1 MB (uncompressed; Content-Encoding: gzip accepted)", ERROR),
               503: ("RETAIL_ACK_REPLICAS: not on the replicas in time; a retry is safe",
                     NOT_REPLICATED)},
))  # fmt: skip
async def post_events(request: Request) -> Response:
    """One event object, a list, or {"events": [...]}: per-event accepted/duplicate/rejected.
    A message the key may not send (app/api/auth.py) is rejected alone, never applied."""
    who = deps.require_write_key(request)
    body = await deps.read_json(request)
    single = isinstance(body, dict) and "events" not in body
    raw_events = [body] if single else body.get("events") if isinstance(body, dict) else body
    if not isinstance(raw_events, list) or not raw_events:
        raise ValidationError("events", "must be a non-empty list of event objects")
    if len(raw_events) > MAX_BATCH:
        raise ValidationError("events", f"at most {MAX_BATCH} events per request")

    results: list[dict[str, Any]] = [{} for _ in raw_events]
    valid = []
    positions = []
    problems = auth.authorize_write(request, who, raw_events)
    for i, (raw, problem) in enumerate(zip(raw_events, problems, strict=True)):
        event_id = raw.get("event_id") if isinstance(raw, dict) else None
        if problem is not None:
            if single:
                raise ForbiddenError(problem)
            results[i] = {"event_id": event_id, "status": "rejected", "error": "forbidden",
                          "field": "context.shopper_token", "reason": problem}  # fmt: skip
            continue
        try:
            valid.append(parse_event(raw))
            positions.append(i)
        except ValidationError as exc:
            if single:
                raise
            results[i] = {"event_id": event_id, "status": "rejected", "field": exc.field,
                          "reason": exc.message}  # fmt: skip
    if valid:
        deps.redis_available(request)
        st = deps.state(request)
        prices = await deps.blocking(
            catalog_prices, st["redis"], CatalogKeys(st["keys"].prefix), event_items(valid)
        )
        valid = [with_catalog_prices(ev, prices) for ev in valid]
        report = await deps.blocking(st["ingestor"].ingest, valid)
        unknown_accepted = 0
        for pos, ev, status in zip(positions, valid, report.statuses, strict=True):
            results[pos] = {"event_id": ev.event_id, "status": status}
            missing = unknown_items(ev, prices)
            if missing:  # accepted all the same: catalog feeds lag behind the storefront
                results[pos] |= {"warning": "unknown_item", "unknown_items": missing[:10]}
                unknown_accepted += status == "accepted"
        if unknown_accepted:
            mw = getattr(request.app.state, "metrics", None)  # the app's MetricsMiddleware
            registry = mw.registry if isinstance(mw, MetricsMiddleware) else DEFAULT_REGISTRY
            registry.inc("events.unknown_item", unknown_accepted)
    counts = {
        s: sum(1 for r in results if r["status"] == s)
        for s in ("accepted", "duplicate", "rejected")
    }
    st = deps.state(request)
    if st["settings"].ack_replicas and valid:
        return await replicated_reply(st, {**counts, "results": results})
    return JSONResponse({**counts, "results": results})


async def replicated_reply(st: deps.AppState, body: dict[str, Any]) -> Response:
    """RETAIL_ACK_REPLICAS: 200 once every primary's replicas hold the batch; else 503 with the
    per-event results (a retry is safe: the events already written answer `duplicate`)."""
    cfg = st["settings"]
    done = await deps.blocking(
        lambda: wait_replicated(st["redis"], cfg.engine.key_prefix,
                                replicas=cfg.ack_replicas, timeout_ms=cfg.ack_timeout_ms)
    )  # fmt: skip
    if done.ok:
        return JSONResponse({**body, "replicated": True})
    return JSONResponse(
        {**body, "error": "not_replicated", "replicated": False, "lagging": list(done.lagging),
         "detail": f"not on {cfg.ack_replicas} replica(s) within {cfg.ack_timeout_ms} ms: retry"},
        status_code=503,
    )  # fmt: skip


@operation(Operation("A shopper's live session document", "users", auth="shopper",
    params=(Param("user_id", "path", IDENTITY),),
    responses={200: ("the session", obj({"user_id": string(), "session": ANY_OBJECT})),
               404: ("no live session", ERROR), 422: ("invalid user id", ERROR)}))  # fmt: skip
async def get_session(request: Request) -> Response:
    st = deps.state(request)
    identity = deps.identity_param(request)
    auth.authorize_read(request, identity)
    deps.redis_available(request)
    doc = await deps.blocking(st["redis"].json().get, st["keys"].user(identity, "session"))
    if doc is None:
        return JSONResponse(
            {"error": "not_found", "detail": f"no live session for {identity}"}, 404
        )
    assert isinstance(doc, dict)  # the session key holds a JSON object
    view = session_view(doc, st["settings"].engine)
    return JSONResponse({"user_id": identity, "session": view})


@operation(Operation("A shopper's traits, affinities, seen estimate and session", "users",
    auth="shopper", params=(Param("user_id", "path", IDENTITY),
                          Param("top", schema=integer(minimum=1, maximum=200, default=20))),
    responses={200: ("the profile", PROFILE), 404: ("no state for the user", ERROR),
               422: ("invalid parameter", ERROR)}))  # fmt: skip
async def get_profile(request: Request) -> Response:
    st = deps.state(request)
    identity = deps.identity_param(request)
    auth.authorize_read(request, identity)
    top = deps.int_param(request, "top", 20, 1, 200)
    deps.redis_available(request)

    prof = await deps.blocking(
        calls.user_profile, st["redis"], st["settings"].engine, st["keys"], identity, top
    )
    if prof.session is None and prof.profile is None and not prof.affinities:
        return JSONResponse({"error": "not_found", "detail": f"no state for {identity}"}, 404)
    return JSONResponse({
        "user_id": identity,
        "traits": (prof.profile or {}).get("traits", {}),
        "merged_anonymous_ids": (prof.profile or {}).get("merged", []),
        "affinities": [{"attribute": a, "score": round(s, 6)} for a, s in prof.affinities],
        "seen_items_estimate": prof.seen_estimate,
        "session": session_view(prof.session, st["settings"].engine) if prof.session else None,
    })  # fmt: skip


@operation(Operation("Trending items now (hourly Top-K, 2 h half-life)", "recommendations",
    params=(Param("type", schema=string(enum=["view", "click", "add_to_cart", "purchase",
                                              "search"], default="view")),
            Param("k", schema=integer(minimum=1, maximum=100, default=10))),
    responses={200: ("trending items", obj({
        "type": string(), "as_of_ms": {"type": ["integer", "null"]},
        "items": arr(obj({"item_id": string(), "score": number(), "count": integer()}))})),
        422: ("invalid parameter", ERROR)}))  # fmt: skip
async def get_trending(request: Request) -> Response:
    st = deps.state(request)
    event_type = request.query_params.get("type", "view")
    if event_type not in EVENT_TYPES or event_type == "remove_from_cart":
        raise ValidationError("type", "must be one of view, click, add_to_cart, purchase, search")
    k = deps.int_param(request, "k", 10, 1, 100)
    deps.redis_available(request)
    watermark, items = await deps.blocking(
        calls.trending, st["redis"], st["settings"].engine, st["keys"], event_type, k
    )
    # Titles from the recommender's in-process catalog copy (no extra Redis round trip).
    rec = getattr(request.state, "recommender", None)
    catalog = getattr(rec, "catalog", None)
    hits = []
    for it in items:
        attr = catalog.get(it.item_id) if catalog is not None else None
        hits.append({"item_id": it.item_id, "title": attr.title if attr else None,
                     "score": round(it.score, 4), "count": it.count})  # fmt: skip
    return JSONResponse({"type": event_type, "as_of_ms": watermark, "items": hits})


# -- errors -----------------------------------------------------------------------------------


def _error(error: str, detail: str, status: int, retry_after_s: float | None = None) -> Response:
    headers = {"retry-after": str(max(1, math.ceil(retry_after_s)))} if retry_after_s else None
    return JSONResponse({"error": error, "detail": detail}, status, headers=headers)


async def engine_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, TooLargeError):
        return JSONResponse({"error": "too_large", "field": exc.field, "detail": exc.message}, 413)
    if isinstance(exc, ValidationError):
        return JSONResponse({"error": "invalid", "field": exc.field, "detail": exc.message}, 422)
    if isinstance(exc, BadArgumentError):  # a Function refused input Python let through
        log.warning("a Function refused input the API accepted: %s", exc)
        return _error("invalid", str(exc), 422)
    if isinstance(exc, AuthError):
        return _error("unauthorized", str(exc), 401)
    if isinstance(exc, ForbiddenError):
        return _error("forbidden", str(exc), 403)
    if isinstance(exc, RateLimitedError):
        return _error("rate_limited", str(exc), 429, exc.retry_after_s)
    if isinstance(exc, RedisOutOfMemoryError):
        log.error("ALERT Redis is out of memory (maxmemory, noeviction): writes are refused")
        auth_metric(request, "redis.oom")
        detail = "Redis is full (maxmemory reached): this write was refused, nothing was evicted"
        return _error("redis_out_of_memory", detail, 503, OOM_RETRY_AFTER_S)
    if isinstance(exc, RedisPermissionError):
        log.error("%s", exc)
        detail = "the app's Redis user may not do this: see docs/security.md (ACL users)"
        return _error("redis_permission", detail, 500)
    if isinstance(exc, RedisSetupError):
        return _error("unavailable", str(exc), 503, RETRY_AFTER_S)
    log.exception("engine error", exc_info=exc)
    return _error("engine_error", str(exc), 500)


async def http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own errors (unknown route 404, wrong method 405) as JSON like the others."""
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    detail = exc.detail
    if exc.status_code == 404:
        detail = f"no route {request.method} {request.url.path}"
    elif exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    return JSONResponse({"error": code, "detail": detail}, exc.status_code, headers=exc.headers)


async def redis_error(request: Request, exc: Exception) -> Response:
    """A truthful status per Redis failure: 503 (with Retry-After) only when Redis cannot
    serve now; a refused command is our bug or our configuration (500)."""
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError | redis.BusyLoadingError):
        health = getattr(request.app.state, "redis_health", None)
        if isinstance(health, RedisHealth) and not isinstance(exc, redis.BusyLoadingError):
            health.trip(f"{type(exc).__name__}: {exc}")
        return _error("unavailable", f"Redis: {exc}", 503, RETRY_AFTER_S)
    if isinstance(exc, redis.ReadOnlyError):
        return _error("unavailable", f"Redis is a read-only replica now: {exc}", 503, RETRY_AFTER_S)
    if isinstance(exc, redis.ResponseError):
        return await engine_error(request, from_redis_error(exc))
    log.error("Redis error: %r", exc)
    return _error("redis_error", "Redis refused the command", 500)


def auth_metric(request: Request, name: str) -> None:
    mw = getattr(request.app.state, "metrics", None)
    registry = getattr(mw, "registry", None)
    if registry is not None:
        registry.inc(name)


# -- app --------------------------------------------------------------------------------------


def engine_lifespan(
    cfg: Settings,
) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager[AppState]]:
    """The app's lifespan: connect (data and search node), check the Functions on every
    primary, assemble the engine, start its workers; yield the typed state; close it all."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[AppState]:
        if not cfg.redis_url:
            raise RedisSetupError(
                "REDIS_URL is not set: use `python -m app.cli serve` (starts the embedded "
                "Redis Stack) or point REDIS_URL at a Redis Stack / Redis 8 server"
            )
        client = connect(
            cfg.redis_url, health_check_interval=30, socket_timeout=cfg.redis_timeout_s,
            socket_connect_timeout=cfg.redis_timeout_s,
        )  # fmt: skip
        catalog_client = catalog_connection(cfg, client)
        health = RedisHealth(cfg.redis_url)
        app.state.redis_health = health
        stack = contextlib.ExitStack()
        try:
            redis_stack.probe(client)
            if catalog_client is not client:
                redis_stack.probe(catalog_client)
            library = functions.ensure_everywhere(client, catalog_client, load_if_stale=True)
            # A test or embedding app may set `app.state.rec_config` before start-up.
            engine = build_engine(
                client, cfg.engine, rec_config=getattr(app.state, "rec_config", None)
            )
            health.start()
            # The aggregate workers run in this process unless RETAIL_AGG_WORKERS=0 (then
            # `python -m app.cli workers` runs them elsewhere).
            threads = engine.start_workers(cfg.agg_workers) if cfg.agg_workers > 0 else None
            stack.callback(lambda: threads.stop() if threads is not None else None)
            yield AppState(
                settings=cfg,
                redis=client,
                catalog_redis=catalog_client,
                engine=engine,
                ingestor=engine.ingestor,
                library=library,
                keys=engine.keys,
            )
        finally:
            stack.close()
            health.close()
            client.close()
            if catalog_client is not client:
                catalog_client.close()

    return lifespan


def create_app(settings: Settings | None = None) -> Starlette:
    cfg = settings or load_settings()
    auth.check_verification_setting(cfg)
    routes: list[BaseRoute] = [
        Route("/health", health),
        Route("/v1/events", post_events, methods=["POST"]),
        Route("/v1/users/{user_id}/session", get_session),
        Route("/v1/users/{user_id}/profile", get_profile),
        Route("/v1/trending", get_trending),
        *catalog_routes(),
        *feature_routes(),
        *web_routes(),
        *tracking_routes(),
    ]
    app = Starlette(
        routes=routes,
        lifespan=engine_lifespan(cfg),
        middleware=[
            Middleware(RequestContextMiddleware, json_logs=cfg.log_json),
            Middleware(MetricsMiddleware),  # inside: sees the request id, times the app
            Middleware(AddressLimitMiddleware),
        ],
        exception_handlers={
            EngineError: engine_error,
            redis.RedisError: redis_error,
            HTTPException: http_error,
        },
    )
    install_recommendations(app)  # its routes, a Recommender per app (lifespan), ingestion hook
    app.state.guard = auth.Guard(cfg.limits)
    app.router.routes.extend(contract_routes())
    return app


class AddressLimitMiddleware:
    """429 (Retry-After) for a client address over its rate, on every /v1 route, before any
    body is read."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            guard = getattr(scope["app"].state, "guard", None)
            client = scope.get("client")
            if isinstance(guard, auth.Guard):
                wait = guard.per_address.take(client[0] if client else "unknown")
                if wait:
                    guard.count_rejection("rate_address")
                    response = _error("rate_limited", "too many requests from this address",
                                      429, wait)  # fmt: skip
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def app_factory() -> Starlette:
    """Entry point for hypercorn: `hypercorn 'app.api.app:app_factory()'`."""
    settings = load_settings()
    configure_logging(json_lines=settings.log_json)
    return create_app(settings)
