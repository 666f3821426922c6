"""HTTP routes of recommendations and experiments, and their wiring into the app.

`install_recommendations(app)` (called by `app.api.app.create_app`) adds the routes, starts one
`Recommender` per app inside the app's lifespan (its own Redis client with short timeouts, a
background refresh thread), sharing the engine's experiment store (`app/engine.py` wires the
ingestion hook).

| method | path                        | auth  | what                                          |
|--------|-----------------------------|-------|-----------------------------------------------|
| GET    | /v1/recommendations/{user}  | -     | a list; with age, tier, variant and source    |
|        |   ?surface=&item=&k=&category=&min_price=&max_price=                                |
|        |   &as_of=<ms> (admin): computed at that time, uncached (replays, backtests)         |
| GET    | /v1/recommender             | admin | model version, caches, serving counters       |
| GET    | /v1/experiments             | admin | every experiment definition                   |
| PUT    | /v1/experiments/{id}        | admin | create or replace a definition                |
| GET    | /v1/experiments/{id}?hours= | admin | per-variant counts and rates, hourly series   |
| DELETE | /v1/experiments/{id}        | admin | remove the definition and its metrics         |
"""

from __future__ import annotations

import contextlib
import gc
import sys
import time
import weakref
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any, cast

import redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from app.api import auth, deps
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
from app.catalog.index import load_catalog_config
from app.catalog.search import Filters, ProductSearch
from app.catalog.vectorizers import get_vectorizer
from app.core.errors import RedisSetupError, ValidationError
from app.core.events import ID_RE, ID_RULE, IDENTITY_RE, MAX_FUTURE_MS, MIN_TS_MS
from app.core.settings import EngineConfig, Settings
from app.core.taxonomy import SLUG_RE
from app.recs import model as rec_model
from app.recs.candidates import ContentKnn
from app.recs.config import WEIGHT_NAMES, load_rec_config
from app.recs.experiments import ExperimentStore, parse_experiment
from app.recs.keys import SURFACES
from app.recs.lists import RecFilters, RecRequest
from app.recs.recommender import Recommender, timeout_client

SWITCH_INTERVAL_S = 0.001  # see the lifespan

MAX_K = 50
MAX_PRICE = 1_000_000.0


def build_recommender(settings: Settings) -> Recommender:
    engine = settings.engine
    cfg = load_rec_config(key_prefix=engine.key_prefix)
    assert settings.redis_url is not None  # checked by the caller
    client = timeout_client(settings.redis_url, cfg.budget_ms / 1000)
    return Recommender(client, engine, cfg, catalog_client=catalog_timeout_client(
        settings, client, cfg.budget_ms / 1000))  # fmt: skip


def catalog_timeout_client(
    settings: Settings, client: redis.Redis, timeout_s: float
) -> redis.Redis:
    """The recommender's catalog reads: the search node when CATALOG_REDIS_URL is set."""
    if settings.catalog_redis_url is None:
        return client
    return timeout_client(settings.catalog_redis_url, timeout_s)


def install_recommendations(app: Starlette) -> None:
    """Routes + a Recommender started and stopped with the app + the ingestion hook.
    Idempotent: a second call on the same app changes nothing."""
    if getattr(app.state, "recommendations_installed", False):
        return
    app.state.recommendations_installed = True
    if not any(getattr(r, "path", None) == "/v1/recommendations/{user_id}" for r in app.routes):
        app.router.routes.extend(recs_routes())
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(a: Starlette) -> AsyncIterator[Any]:
        async with inner(a) as state:
            state = cast(dict[str, Any], state)
            settings = state["settings"]
            prefix = settings.engine.key_prefix
            cfg = getattr(a.state, "rec_config", None) or load_rec_config(key_prefix=prefix)
            cfg = replace(cfg, key_prefix=prefix)
            client = timeout_client(settings.redis_url, cfg.budget_ms / 1000)
            catalog = catalog_timeout_client(settings, client, cfg.budget_ms / 1000)
            engine = state.get("engine")
            experiments = engine.experiments if engine is not None else None
            rec = Recommender(client, settings.engine, cfg, experiments=experiments,
                              catalog_client=catalog,
                              content_knn=search_knn(catalog, settings.engine))  # fmt: skip
            rec.health = getattr(a.state, "redis_health", None)
            if getattr(a.state, "rec_background", True):
                await deps.blocking(rec.start)
            else:
                await deps.blocking(rec.refresh)
            await deps.blocking(rec.warm_up)  # the first shopper's request is not a cold one
            # Move what exists now (libraries, caches) out of the cyclic GC's reach: its full
            # collections otherwise scan ~70k library objects and pause requests 20-40 ms.
            gc.freeze()
            # A request thread waiting for the GIL (background refresh, metrics flush) waits
            # up to the switch interval: 1 ms instead of CPython's 5 ms trims the inline p99.
            sys.setswitchinterval(SWITCH_INTERVAL_S)
            try:
                yield {**state, "recommender": rec}
            finally:
                await deps.blocking(rec.close)
                rec.client.close()
                if catalog is not client:
                    catalog.close()

    app.router.lifespan_context = lifespan


def search_knn(client: redis.Redis, engine: EngineConfig) -> ContentKnn:
    """Vector neighbours from the product search index (for items the model does not know)."""
    cfg = replace(load_catalog_config(), key_prefix=engine.key_prefix)
    search = ProductSearch(client, cfg, get_vectorizer(cfg.vectorizer), engine)

    def knn(item: str, k: int) -> list[tuple[str, float]]:
        found = search.similar(item, Filters(in_stock=None), k)
        return [] if found is None else [(h.item_id, h.score) for h in found.hits]

    return knn


def recommender(request: Request) -> Recommender:
    """The app's Recommender (lifespan state); created on first use when not installed."""
    rec = getattr(request.state, "recommender", None)
    if isinstance(rec, Recommender):
        return rec
    rec = getattr(request.app.state, "recommender", None)
    if not isinstance(rec, Recommender):
        settings = deps.state(request)["settings"]
        if not settings.redis_url:
            raise RedisSetupError("REDIS_URL is not set")
        rec = build_recommender(settings)
        rec.start()
        weakref.finalize(request.app, rec.close)
        request.app.state.recommender = rec
    return rec


# -- request parsing (pure) ------------------------------------------------------------------


def _price(params: Mapping[str, str], name: str) -> float:
    raw = params.get(name)
    if raw is None or raw == "":
        return 0.0
    try:
        value = float(raw)
    except ValueError:
        raise ValidationError(name, "must be a number") from None
    if not 0 <= value <= MAX_PRICE:
        raise ValidationError(name, f"must be between 0 and {MAX_PRICE:.0f}")
    return value


def parse_rec_request(user: str, params: Mapping[str, str]) -> RecRequest:
    if not IDENTITY_RE.match(user):
        raise ValidationError("user_id", ID_RULE)
    surface = params.get("surface") or "home"
    if surface not in SURFACES:
        raise ValidationError("surface", f"must be one of {', '.join(SURFACES)}")
    item = params.get("item") or None
    if item is not None and not ID_RE.match(item):
        raise ValidationError("item", ID_RULE)
    if surface == "product" and item is None:
        raise ValidationError("item", "is required on the product surface")
    raw_k = params.get("k") or "10"
    try:
        k = int(raw_k)
    except ValueError:
        raise ValidationError("k", "must be an integer") from None
    if not 1 <= k <= MAX_K:
        raise ValidationError("k", f"must be between 1 and {MAX_K}")
    cats: tuple[str, ...] = ()
    if params.get("category"):
        cats = tuple(dict.fromkeys(c.strip() for c in params["category"].split(",") if c.strip()))
        if not cats or len(cats) > 20 or any(not SLUG_RE.match(c) for c in cats):
            raise ValidationError("category", "must be 1-20 comma-separated slugs (a-z 0-9 _ -)")
    lo, hi = _price(params, "min_price"), _price(params, "max_price")
    if lo and hi and lo > hi:
        raise ValidationError("min_price", "must not be above max_price")
    return RecRequest(user, surface, item, k, RecFilters(cats, lo, hi), _as_of(params))


def _as_of(params: Mapping[str, str]) -> int:
    """`as_of` (ms since the epoch): compute as if the clock said so; 0 when absent."""
    raw = params.get("as_of")
    if raw is None or raw == "":
        return 0
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError("as_of", "must be an integer (ms since the epoch)") from None
    if not MIN_TS_MS <= value <= int(time.time() * 1000) + MAX_FUTURE_MS:
        raise ValidationError("as_of", "must be ms since the epoch, after 2000 and not ahead")
    return value


# -- endpoints ----------------------------------------------------------------------------------


@operation(Operation("Ranked recommendations for a shopper (never empty for a valid request)",
    "recommendations", auth="shopper", params=(
        Param("user_id", "path", IDENTITY),
        Param("surface", schema=string(enum=["home", "product", "cart"], default="home")),
        Param("item", schema=ID, description="the anchor item (product surface)"),
        Param("k", schema=integer(minimum=1, maximum=50, default=10)),
        Param("category", description="comma-separated categories to keep"),
        Param("min_price", schema=number(minimum=0)), Param("max_price", schema=number(minimum=0)),
    ), responses={200: ("ranked items", obj({
        "user_id": string(), "surface": string(), "rec_id": string(), "variant": string(),
        "items": arr(obj({"item_id": string(), "score": number(), "reason": string()}))})),
        422: ("invalid parameter", ERROR)}))  # fmt: skip
async def get_recommendations(request: Request) -> Response:
    req = parse_rec_request(request.path_params["user_id"], request.query_params)
    auth.authorize_read(request, req.user)
    rec = recommender(request)
    if req.now_ms:
        # An explicit clock replays history (backtests): admin only, computed, never cached.
        deps.require_admin_key(request)
        resp = await deps.blocking_read(rec.at_time, req)
        return JSONResponse({**rec.as_json(resp), "as_of_ms": req.now_ms})
    # Own pool: writes stuck on a hung Redis never queue a recommendation behind them.
    resp = await deps.blocking_read(rec.serve, req)
    return JSONResponse(rec.as_json(resp))


@operation(
    Operation(
        "Model version and serving counters",
        "recommendations",
        auth="admin",
        responses={200: ("recommender state", obj({"model": ANY_OBJECT, "counters": ANY_OBJECT}))},
    )
)
async def get_recommender(request: Request) -> Response:
    deps.require_admin_key(request)
    rec = recommender(request)
    info = await deps.blocking(rec_model.model_info, deps.state(request)["redis"], rec.keys)
    return JSONResponse({
        "model": info, "serving_model": rec.model, "catalog_items": len(rec.catalog),
        "lru_lists": len(rec.lru), "popular_snapshot": len(rec.snapshot),
        "trending": len(rec.trending), "breaker_open": rec.breaker.open,
        "counters": rec.stats(), "exposures_dropped": rec.experiments.dropped_exposures,
    })  # fmt: skip


def _exp_id(request: Request) -> str:
    exp_id = str(request.path_params["exp_id"])
    if not ID_RE.match(exp_id):
        raise ValidationError("id", ID_RULE)
    return exp_id


def _not_found(exp_id: str) -> Response:
    return JSONResponse({"error": "not_found", "detail": f"no experiment {exp_id}"}, 404)


@operation(
    Operation(
        "All experiments",
        "experiments",
        auth="admin",
        responses={200: ("experiments", obj({"experiments": arr(ANY_OBJECT)}))},
    )
)
async def list_experiments(request: Request) -> Response:
    deps.require_admin_key(request)
    store = _store(request)
    await deps.blocking(store.refresh)
    return JSONResponse({"experiments": [e.as_json() for e in store.all()]})


def _store(request: Request) -> ExperimentStore:
    st = deps.state(request)
    rec = recommender(request)
    # Admin calls use the app's regular client (no short serving timeout).
    return ExperimentStore(st["redis"], rec.keys, rec.experiments.cfg)


async def put_experiment(request: Request) -> Response:
    deps.require_admin_key(request)
    exp_id = _exp_id(request)
    body = await deps.read_json(request)
    store = _store(request)
    existing = await deps.blocking(store.get, exp_id)
    exp = parse_experiment(exp_id, body, WEIGHT_NAMES, now_ms=int(time.time() * 1000),
                           existing=existing)  # fmt: skip
    models = await deps.blocking(rec_model.model_info, store.client, store.keys)
    for v in exp.variants:
        if v.model and v.model not in models["versions"]:
            raise ValidationError(f"variants.{v.name}.model", f"no model version {v.model}")
    await deps.blocking(store.put, exp)
    await deps.blocking(recommender(request).experiments.refresh)
    return JSONResponse(
        {"created": existing is None, "experiment": exp.as_json()},
        status_code=201 if existing is None else 200,
    )


async def get_experiment(request: Request) -> Response:
    deps.require_admin_key(request)
    exp_id = _exp_id(request)
    hours = deps.int_param(request, "hours", 24, 1, 24 * 90)
    store = _store(request)
    exp = await deps.blocking(store.get, exp_id)
    if exp is None:
        return _not_found(exp_id)
    await deps.blocking(recommender(request).experiments.flush)
    report = await deps.blocking(lambda: store.report(exp, hours=hours))
    return JSONResponse(report)


async def delete_experiment(request: Request) -> Response:
    deps.require_admin_key(request)
    exp_id = _exp_id(request)
    store = _store(request)
    if not await deps.blocking(store.delete, exp_id):
        return _not_found(exp_id)
    await deps.blocking(recommender(request).experiments.refresh)
    return JSONResponse({"deleted": exp_id})


@operation(
    Operation(
        "An experiment's per-variant report",
        "experiments",
        auth="admin",
        params=(
            Param("exp_id", "path", ID),
            Param("hours", schema=integer(minimum=1, maximum=24 * 90, default=24)),
        ),
        responses={200: ("report", ANY_OBJECT), 404: ("no such experiment", ERROR)},
    ),
    method="GET",
)
@operation(
    Operation(
        "Create or replace an experiment",
        "experiments",
        auth="admin",
        params=(Param("exp_id", "path", ID),),
        request=obj(
            {
                "variants": arr(
                    obj(
                        {
                            "name": string(),
                            "weight": number(minimum=0),
                            "model": string(),
                            "weights": ANY_OBJECT,
                        }
                    ),
                    min_items=1,
                )
            },
            required=["variants"],
        ),
        responses={
            200: ("replaced", ANY_OBJECT),
            201: ("created", ANY_OBJECT),
            422: ("invalid experiment", ERROR),
        },
    ),
    method="PUT",
)
@operation(Operation("Delete an experiment", "experiments", auth="admin",
    params=(Param("exp_id", "path", ID),),
    responses={200: ("deleted", obj({"deleted": string()})),
               404: ("no such experiment", ERROR)}), method="DELETE")  # fmt: skip
async def experiment(request: Request) -> Response:
    if request.method == "PUT":
        return await put_experiment(request)
    if request.method == "DELETE":
        return await delete_experiment(request)
    return await get_experiment(request)


def recs_routes() -> list[BaseRoute]:
    return [
        Route("/v1/recommendations/{user_id}", get_recommendations),
        Route("/v1/recommender", get_recommender),
        Route("/v1/experiments", list_experiments),
        Route("/v1/experiments/{exp_id}", experiment, methods=["GET", "PUT", "DELETE"]),
    ]
