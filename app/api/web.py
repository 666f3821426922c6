"""The storefront demo, the operator dashboard and the metrics endpoints.

Mounted by `app.api.app.create_app` (`routes += web_routes()`), next to `MetricsMiddleware`.

| method | path                                  | auth | what                                   |
|--------|---------------------------------------|------|----------------------------------------|
| GET    | /                                     | -    | the storefront demo page               |
| GET    | /dashboard                            | -    | live charts of the metrics             |
| GET    | /static/...                           | -    | the pages' JS/CSS (StaticFiles)        |
| GET    | /v1/demo/config                       | -    | what the storefront needs: the PUBLIC  |
|        |                                       |      | write key, shoppers, categories, APIs  |
| POST   | /v1/demo/token {"user_id"}            | -    | a shopper token for a DEMO shopper (the|
|        |                                       |      | demo server plays the retailer backend)|
| GET    | /v1/browse?category=&min_price=       | -    | catalog listing without a query        |
|        |   &max_price=&in_stock=&sort=&k=&offset |      | (FT.SEARCH on the index alias)         |
| GET    | /metrics                              | *    | Prometheus text (all workers' totals)  |
| GET    | /v1/stats?window_s=60                 | *    | JSON: totals, recent rates, quantiles  |
| GET    | /v1/stats/series?minutes=60&step_s=60 | *    | per-step series for the dashboard      |

(*) public unless `RETAIL_METRICS_PUBLIC=false`; then the admin key (`Authorization: Bearer`).
They hold aggregates only: route templates, counts, latencies, variant names; no user data.

The storefront gets the public write key (the one a browser SDK carries, not a secret) from
`/v1/demo/config`; the admin key is never sent to a page. `RETAIL_DEMO_PAGE=false` turns the
demo page and its config endpoint off.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from starlette.config import Config
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from app.api import deps
from app.api.openapi import (
    ANY_OBJECT,
    ERROR,
    Operation,
    Param,
    arr,
    integer,
    number,
    obj,
    operation,
    string,
)
from app.core import tokens
from app.core.errors import ValidationError
from app.core.events import ID_RE
from app.core.taxonomy import CATEGORIES
from app.ingest.aggregates import ingest_status
from app.obs.middleware import MetricsMiddleware
from app.obs.registry import DEFAULT, MetricsConfig, Registry, load_metrics_config
from app.obs.series import MetricKeys
from app.obs.views import local_totals, read_totals, render_prometheus, series_json, stats_json
from app.recs.worker import LIST_READER

STATIC_DIR = Path(__file__).resolve().parent / "static"
PROM_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
NO_CACHE = {"cache-control": "no-cache"}
# Real customers of the Online Retail sample (the replay's user ids), among the most active.
DEFAULT_SHOPPERS = (
    ("c17850", "United Kingdom, 35 orders"),
    ("c14911", "EIRE, 169 orders"),
    ("c12748", "United Kingdom, 150 orders"),
    ("c17841", "United Kingdom, 122 orders"),
    ("c13089", "United Kingdom, 98 orders"),
    ("c15311", "United Kingdom, 91 orders"),
)
SORTS = {
    "popular": ("popularity", "DESC"),
    "price_asc": ("price", "ASC"),
    "price_desc": ("price", "DESC"),
    "newest": ("created_ms", "DESC"),
}
DEMO_TOKEN_TTL_S = 3600
MAX_BROWSE_K = 60
MAX_OFFSET = 1000


@dataclass(frozen=True)
class WebConfig:
    demo_page: bool = True  # RETAIL_DEMO_PAGE
    demo_write_key: str | None = None  # RETAIL_DEMO_WRITE_KEY: which write key the page gets
    shoppers: tuple[tuple[str, str], ...] = DEFAULT_SHOPPERS  # RETAIL_DEMO_SHOPPERS


def load_web_config(env_file: str | Path | None = ".env") -> WebConfig:
    config = Config(env_file if env_file and Path(env_file).exists() else None)
    raw = config("RETAIL_DEMO_SHOPPERS", cast=str, default="")
    shoppers: tuple[tuple[str, str], ...] = DEFAULT_SHOPPERS
    if raw.strip():
        parsed = []
        for part in raw.split(","):
            ident, _, label = part.strip().partition("=")
            if not ID_RE.match(ident) or ident.startswith("anon:"):
                raise ValueError(f"RETAIL_DEMO_SHOPPERS: bad user id {ident!r}")
            parsed.append((ident, label.strip()))
        shoppers = tuple(parsed)
    return WebConfig(
        demo_page=config("RETAIL_DEMO_PAGE", cast=bool, default=True),
        demo_write_key=config("RETAIL_DEMO_WRITE_KEY", cast=str, default=None) or None,
        shoppers=shoppers,
    )


def _mounted(request: Request, path: str) -> bool:
    return any(getattr(r, "path", None) == path for r in request.app.routes)


def _metrics_of(request: Request) -> tuple[Registry, MetricsConfig, Any]:
    """The app's MetricsMiddleware registry/config (set at start-up), else the defaults."""
    mw = getattr(request.app.state, "metrics", None)
    prefix = deps.state(request)["settings"].engine.key_prefix
    if isinstance(mw, MetricsMiddleware) and mw.config is not None:
        return mw.registry, mw.config, mw.flusher
    return DEFAULT, load_metrics_config(key_prefix=prefix), None


def _check_metrics_access(request: Request, cfg: MetricsConfig) -> None:
    if not cfg.public:
        deps.require_admin_key(request)


# -- pages --------------------------------------------------------------------------------------


def _catalog_importable() -> bool:
    try:
        import app.api.catalog  # noqa: F401
    except ImportError:
        return False
    return True


DEMO_PAGE_OFF = {"error": "not_found", "detail": "the demo page is off"}


class DemoPages:
    """The page handlers, over one `WebConfig` (read once when the routes are built)."""

    def __init__(self, config: WebConfig) -> None:
        self.cfg = config
        self.catalog_available = _catalog_importable()

    @operation(
        Operation(
            "The storefront demo page",
            "pages",
            content_type="text/html",
            responses={200: ("HTML", None), 404: ("the demo page is off", ERROR)},
        )
    )
    async def storefront(self, request: Request) -> Response:
        if not self.cfg.demo_page:
            return JSONResponse(DEMO_PAGE_OFF, 404)
        return FileResponse(STATIC_DIR / "index.html", headers=NO_CACHE)

    @operation(
        Operation(
            "The live metrics dashboard",
            "pages",
            content_type="text/html",
            responses={200: ("HTML", None)},
        )
    )
    async def dashboard(self, request: Request) -> Response:
        return FileResponse(STATIC_DIR / "dashboard.html", headers=NO_CACHE)

    @operation(
        Operation(
            "The demo page's configuration (public write key, shoppers)",
            "pages",
            responses={200: ("config", ANY_OBJECT), 404: ("the demo page is off", ERROR)},
        )
    )
    async def demo_config(self, request: Request) -> Response:
        if not self.cfg.demo_page:
            return JSONResponse(DEMO_PAGE_OFF, 404)
        settings = deps.state(request)["settings"]
        keys = sorted(settings.write_keys)
        write_key = (
            self.cfg.demo_write_key if self.cfg.demo_write_key in settings.write_keys else None
        )
        write_key = write_key or (keys[0] if keys else None)
        return JSONResponse({
            # The PUBLIC write key (like an analytics SDK's): identifies the source; never the
            # admin key, which no page ever receives.
            "write_key": write_key,
            "shoppers": [{"user_id": u, "label": label} for u, label in self.cfg.shoppers],
            "categories": list(CATEGORIES),
            "apis": {
                "events": True,
                "browse": self.catalog_available,
                "search": _mounted(request, "/v1/search"),
                "items": _mounted(request, "/v1/items/{item_id}"),
                "similar": _mounted(request, "/v1/items/{item_id}/similar"),
                "recommendations": _mounted(request, "/v1/recommendations/{user_id}"),
                "trending": _mounted(request, "/v1/trending"),
            },
        })  # fmt: skip

    @operation(
        Operation(
            "A shopper token for a demo shopper (the demo server plays the retailer backend)",
            "pages",
            request=obj({"user_id": string("one of the demo shoppers")}, required=["user_id"]),
            responses={
                200: ("the token", obj({"user_id": string(), "token": string(),
                                        "expires_at": integer()})),
                404: ("the demo page is off", ERROR),
                422: ("not a demo shopper", ERROR),
                503: ("RETAIL_IDENTITY_SECRET is not set", ERROR),
            },
        )
    )  # fmt: skip
    async def demo_token(self, request: Request) -> Response:
        """The demo server as the retailer's backend: a token for a demo shopper (its 'login'
        is picking a shopper in the page). Real shops mint tokens for their logged-in user."""
        if not self.cfg.demo_page:
            return JSONResponse(DEMO_PAGE_OFF, 404)
        secret = deps.state(request)["settings"].identity_secret
        if secret is None:
            return JSONResponse({"error": "unavailable", "detail": "shopper tokens need "
                                 "RETAIL_IDENTITY_SECRET"}, 503)  # fmt: skip
        body = await deps.read_json(request)
        user = body.get("user_id") if isinstance(body, dict) else None
        if not any(user == shopper for shopper, _ in self.cfg.shoppers):
            raise ValidationError("user_id", "must be one of the demo shoppers")
        token = tokens.mint(str(secret), str(user), ttl_s=DEMO_TOKEN_TTL_S)
        expires = int(token.split(".")[1])
        return JSONResponse({"user_id": user, "token": token, "expires_at": expires})


def web_routes(config: WebConfig | None = None) -> list[BaseRoute]:
    pages = DemoPages(config or load_web_config())
    return [
        Route("/", pages.storefront, methods=["GET"]),
        Route("/v1/demo/token", pages.demo_token, methods=["POST"]),
        Route("/dashboard", pages.dashboard, methods=["GET"]),
        Route("/v1/demo/config", pages.demo_config),
        Route("/v1/browse", browse),
        Route("/metrics", prometheus),
        Route("/v1/stats", stats),
        Route("/v1/stats/series", stats_series),
        Mount("/static", app=StaticFiles(directory=STATIC_DIR), name="static"),
    ]


# -- catalog listing ------------------------------------------------------------------------------


@operation(Operation("Products without a query, filtered and sorted", "catalog", params=(
    Param("category"), Param("min_price", schema=number(minimum=0)),
    Param("max_price", schema=number(minimum=0)),
    Param("in_stock", schema=string(enum=["true", "false", "1", "0"])),
    Param("sort", schema=string(enum=list(SORTS))),
    Param("k", schema=integer(minimum=1, maximum=MAX_BROWSE_K, default=24)),
    Param("offset", schema=integer(minimum=0, maximum=MAX_OFFSET, default=0)),
), responses={200: ("products", obj({"hits": arr(ANY_OBJECT), "took_ms": number()})),
              422: ("invalid parameter", ERROR)}))  # fmt: skip
async def browse(request: Request) -> Response:
    """Products without a query, filtered inside RediSearch, sorted by a sortable field."""
    try:
        from redisvl.query import FilterQuery

        from app.api.catalog import product_search
        from app.catalog.search import RETURN_FIELDS, filter_expression, hit_from, parse_filters
    except ImportError as exc:  # the catalog is not part of this build
        return JSONResponse({"error": "unavailable", "detail": f"catalog: {exc}"}, 503)
    filters = parse_filters(request.query_params)
    sort = request.query_params.get("sort") or "popular"
    if sort not in SORTS:
        raise ValidationError("sort", f"must be one of {', '.join(SORTS)}")
    k = deps.int_param(request, "k", 24, 1, MAX_BROWSE_K)
    offset = deps.int_param(request, "offset", 0, 0, MAX_OFFSET)
    search = product_search(request)

    def run() -> list[dict[str, Any]]:
        search.meta()  # a clear 503 when there is no index
        expr = filter_expression(filters, search.price_median())
        query = FilterQuery(
            filter_expression=expr if expr is not None else "*",
            return_fields=list(RETURN_FIELDS), num_results=k, sort_by=SORTS[sort],
        ).paging(offset, k)  # fmt: skip
        return [hit_from(row).as_json() for row in search.index.query(query)]

    t0 = time.perf_counter()
    hits = await deps.blocking(run)
    return JSONResponse({
        "filters": filters.as_json(), "sort": sort, "k": k, "offset": offset,
        "took_ms": round((time.perf_counter() - t0) * 1000, 3), "hits": hits,
    })  # fmt: skip


# -- metrics -------------------------------------------------------------------------------------


@operation(Operation("Metrics in the Prometheus text format", "ops", content_type="text/plain",
    responses={200: ("Prometheus exposition text", None)}))  # fmt: skip
async def prometheus(request: Request) -> Response:
    registry, cfg, flusher = _metrics_of(request)
    _check_metrics_access(request, cfg)
    client = deps.state(request)["redis"]

    def build() -> str:
        try:
            totals = read_totals(client, MetricKeys(cfg.key_prefix))
        except redis.RedisError:
            totals = local_totals(registry)
        gauges: dict[str, float] = {
            "retail_metrics_source_redis": 1.0 if totals.source == "redis" else 0.0,
            "retail_metrics_series_dropped": float(registry.dropped),
        }
        try:
            ingest = ingest_status(client, deps.state(request)["settings"].engine, [LIST_READER])
            gauges["retail_ingest_log_lag_max"] = float(ingest.lag.max_lag)
            gauges["retail_ingest_log_lag_total"] = float(ingest.lag.total_lag)
            lists = ingest.other_lags[LIST_READER.group]
            if lists.partitions:  # a list worker runs (its group exists)
                gauges["retail_recs_worker_log_lag_max"] = float(lists.max_lag)
            if ingest.freshness_p50_ms is not None and ingest.freshness_p99_ms is not None:
                gauges["retail_ingest_freshness_p50_ms"] = ingest.freshness_p50_ms
                gauges["retail_ingest_freshness_p99_ms"] = ingest.freshness_p99_ms
        except redis.RedisError:
            pass
        if flusher is not None:
            gauges["retail_metrics_flush_failures"] = float(flusher.failures)
            if flusher.last_flush_ms:
                gauges["retail_metrics_last_flush_timestamp_seconds"] = flusher.last_flush_ms / 1000
        return render_prometheus(totals, gauges)

    body = await deps.blocking(build)
    return PlainTextResponse(body, media_type=PROM_CONTENT_TYPE)


@operation(Operation("The metrics as JSON", "ops",
    params=(Param("window_s", schema=integer(minimum=10, maximum=7200, default=60)),),
    responses={200: ("stats", ANY_OBJECT), 422: ("invalid parameter", ERROR)}))  # fmt: skip
async def stats(request: Request) -> Response:
    registry, cfg, flusher = _metrics_of(request)
    _check_metrics_access(request, cfg)
    window = deps.int_param(request, "window_s", 60, 10, 7200)
    client = deps.state(request)["redis"]
    body = await deps.blocking(lambda: stats_json(client, registry, cfg, window_s=window))
    try:
        ingest = await deps.blocking(
            ingest_status, client, deps.state(request)["settings"].engine, [LIST_READER]
        )
        body["ingest"] = {
            "freshness_p50_ms": ingest.freshness_p50_ms,
            "freshness_p99_ms": ingest.freshness_p99_ms,
            "log_lag_max": ingest.lag.max_lag,
            "alerts": ingest.alerts,
        }
    except redis.RedisError as exc:
        body["ingest"] = {"error": str(exc)}
    if flusher is not None:
        body["flusher"] = {
            "last_flush_ms": flusher.last_flush_ms,
            "flushes": flusher.flushes,
            "failures": flusher.failures,
            "last_error": flusher.last_error,
        }
    return JSONResponse(body)


@operation(Operation("Metric time series for the dashboard", "ops", params=(
    Param("minutes", schema=integer(minimum=1, maximum=7 * 24 * 60, default=60)),
    Param("step_s", schema=integer(minimum=5, maximum=86_400, default=60))),
    responses={200: ("series", ANY_OBJECT), 422: ("invalid parameter", ERROR)}))  # fmt: skip
async def stats_series(request: Request) -> Response:
    _registry, cfg, _flusher = _metrics_of(request)
    _check_metrics_access(request, cfg)
    minutes = deps.int_param(request, "minutes", 60, 1, 7 * 24 * 60)
    step_s = deps.int_param(request, "step_s", 60, 5, 86_400)
    if minutes * 60 // step_s > 2000:
        raise ValidationError("step_s", "too small for the window: at most 2000 points")
    if minutes * 60_000 > cfg.raw_retention_ms and step_s % 60:
        raise ValidationError("step_s", "must be a multiple of 60 for windows beyond 2 hours")
    client = deps.state(request)["redis"]
    body = await deps.blocking(lambda: series_json(client, cfg, minutes=minutes, step_s=step_s))
    return JSONResponse(body)
