"""HTTP routes of the catalog: hybrid search, items, similar items, live price and stock.

Mounted by `app.api.app.create_app` (`routes += catalog_routes()`). Request parsing and
validation run on the event loop; Redis calls go to the thread pool like the other handlers.

| method | path                          | auth  | what                                           |
|--------|-------------------------------|-------|------------------------------------------------|
| GET    | /v1/search?q=&category=&min_price=&max_price=&in_stock=&k=&user= | - | hybrid search |
| GET    | /v1/items/{id}                | -     | product, guard settings, recent price history  |
| PATCH  | /v1/items/{id}                | admin | price / stock / guard change (409 if refused)  |
| GET    | /v1/items/{id}/similar?category=&min_price=&max_price=&in_stock=&k= | - | nearest items |
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from app.api import auth, deps
from app.api.openapi import (
    ANY_OBJECT,
    BOOL,
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
from app.catalog import calls as catalog_calls
from app.catalog.index import CatalogConfig, load_catalog_config
from app.catalog.search import (
    CATEGORY_SHARE,
    TRAIT_BAND_SHARE,
    ProductSearch,
    SearchResult,
    parse_search,
    parse_similar,
)
from app.catalog.vectorizers import get_vectorizer
from app.core.errors import ValidationError
from app.core.events import ID_RE, ID_RULE

HIT = obj({"item_id": string(), "score": number()})
SEARCH_REPLY = obj({"hits": arr(HIT), "took_ms": number(), "index": string(),
                    "vectorizer": string(), "personalized": BOOL,
                    "personal_signals": arr(string("affinities, or trait:price_band=<band>"))},
                   required=["hits"])  # fmt: skip


def catalog_config(request: Request) -> CatalogConfig:
    """`app.state.catalog_config` when set (tests), else the environment; the key prefix
    always follows the app's engine settings."""
    st = deps.state(request)
    cfg = getattr(request.app.state, "catalog_config", None)
    if not isinstance(cfg, CatalogConfig):
        cfg = load_catalog_config()
        request.app.state.catalog_config = cfg
    return replace(cfg, key_prefix=st["settings"].engine.key_prefix)


def product_search(request: Request) -> ProductSearch:
    """One ProductSearch per app (created on first use; it holds no connection of its own)."""
    search = getattr(request.app.state, "product_search", None)
    if not isinstance(search, ProductSearch):
        st = deps.state(request)
        cfg = catalog_config(request)
        search = ProductSearch(
            st["catalog_redis"], cfg, get_vectorizer(cfg.vectorizer), st["settings"].engine
        )
        request.app.state.product_search = search
    return search


def _item_id(request: Request) -> str:
    item = request.path_params["item_id"]
    if not ID_RE.match(item):
        raise ValidationError("item_id", ID_RULE)
    return str(item)


def _not_found(item: str) -> Response:
    return JSONResponse({"error": "not_found", "detail": f"no product {item}"}, 404)


def _result_json(result: SearchResult) -> dict[str, Any]:
    return {
        "index": result.meta.index,
        "vectorizer": result.meta.vectorizer,
        "took_ms": round(result.took_ms, 3),
        "hits": [h.as_json() for h in result.hits],
    }


@operation(Operation("Hybrid product search (BM25 + vector + filters)", "catalog", params=(
    Param("q", description="the query text"),
    Param("category", description="comma-separated categories"),
    Param("min_price", schema=number(minimum=0)), Param("max_price", schema=number(minimum=0)),
    Param("in_stock", schema=string(enum=["true", "false", "1", "0"])),
    Param("k", schema=integer(minimum=1, maximum=100, default=10)),
    Param("user", schema=IDENTITY, description="re-rank by this shopper's affinities (needs "
          "a server/admin key or the shopper's X-Shopper-Token)"),
), responses={200: ("ranked hits", SEARCH_REPLY), 422: ("invalid parameter", ERROR)}))  # fmt: skip
async def search_products(request: Request) -> Response:
    req = parse_search(request.query_params)
    if req.user is not None:
        auth.authorize_read(request, req.user)  # personalised: the shopper's affinities
    deps.redis_available(request)
    search = product_search(request)
    result = await deps.blocking(search.search, req)
    cfg = search.cfg
    body = {
        "q": req.q,
        "words": list(req.words),
        "filters": req.filters.as_json(),
        "k": req.k,
        "user": req.user,
        "personalized": result.personalized,
        "personal_signals": result.signals,
        "fallback": result.fallback,
        "scoring": {
            "hybrid": f"{cfg.alpha:g} * vector + {1 - cfg.alpha:g} * text",
            "vector": "max(0, 1 - cosine_distance)",
            "text": f"bm25 / (bm25 + {cfg.text_saturation:g} * {len(req.words)})",
            "candidates": "documents passing the filters with one of the words (or their "
            "singular/plural); none: nearest vectors among those passing the filters",
            "score": "hybrid"
            if req.user is None
            else f"hybrid + {cfg.affinity_weight:g} * affinity",
            "affinity": f"{CATEGORY_SHARE:g} * category + {1 - CATEGORY_SHARE:g} * price band "
            f"(the band from live affinities, {TRAIT_BAND_SHARE:g} of it from a price_band trait)",
        },
        **_result_json(result),
    }
    return JSONResponse(body)


@operation(
    Operation(
        "A product, its price guard and recent price history",
        "catalog",
        params=(Param("item_id", "path", ID),),
        responses={
            200: (
                "the product",
                obj({"item": ANY_OBJECT, "guard": ANY_OBJECT, "price_history": arr(ANY_OBJECT)}),
            ),
            404: ("no such product", ERROR),
        },
    ),
    method="GET",
)
@operation(Operation("Change price / stock / guard behind guardrails", "catalog", auth="admin",
    params=(Param("item_id", "path", ID),),
    request=obj({"price": number(minimum=0), "stock": integer(minimum=0),
                 "stock_delta": integer(), "floor": {"type": ["number", "null"]},
                 "ceiling": {"type": ["number", "null"]}, "locked": BOOL,
                 "lock_reason": string(), "source": string(enum=["manual", "automation"])},
                extra=False),
    responses={200: ("applied", obj({"item_id": string(), "status": string()})),
               404: ("no such product", ERROR), 409: ("refused by a guardrail", ANY_OBJECT),
               422: ("invalid change", ERROR)}), method="PATCH")  # fmt: skip
async def item(request: Request) -> Response:
    if request.method == "PATCH":
        return await patch_item(request)
    return await get_item(request)


async def get_item(request: Request) -> Response:
    item_id = _item_id(request)
    search = product_search(request)
    view = await deps.blocking(
        catalog_calls.catalog_item, search.client, search.ckeys, item_id, search.cfg.history_n
    )
    if view is None:
        return _not_found(item_id)
    return JSONResponse({
        "item": view.doc,
        "guard": {"floor": view.floor, "ceiling": view.ceiling, "locked": view.locked,
                  "lock_reason": view.lock_reason},
        "price_history": [{"ts": ts, "price": p} for ts, p in view.price_history],
    })  # fmt: skip


async def patch_item(request: Request) -> Response:
    deps.require_admin_key(request)
    item_id = _item_id(request)
    change = catalog_calls.parse_change(await deps.read_json(request))
    search = product_search(request)
    result = await deps.blocking(
        catalog_calls.catalog_update, search.client, search.cfg, search.ckeys, item_id, change
    )
    if result.status == "not_found":
        return _not_found(item_id)
    status = 200 if result.status == "ok" else 409
    return JSONResponse({"item_id": item_id, **result.as_json()}, status_code=status)


@operation(Operation("Nearest products to one item, filters inside the query", "catalog",
    params=(Param("item_id", "path", ID),
            Param("max_price", schema=number(minimum=0)),
            Param("in_stock", schema=string(enum=["true", "false", "1", "0"])),
            Param("k", schema=integer(minimum=1, maximum=100, default=10))),
    responses={200: ("similar products", SEARCH_REPLY), 404: ("no such product", ERROR),
               422: ("invalid parameter", ERROR)}))  # fmt: skip
async def similar_items(request: Request) -> Response:
    item_id = _item_id(request)
    filters, k = parse_similar(request.query_params)
    search = product_search(request)
    result = await deps.blocking(search.similar, item_id, filters, k)
    if result is None:
        return _not_found(item_id)
    return JSONResponse(
        {"item_id": item_id, "filters": filters.as_json(), "k": k, **_result_json(result)}
    )


def catalog_routes() -> list[BaseRoute]:
    return [
        Route("/v1/search", search_products),
        Route("/v1/items/{item_id}", item, methods=["GET", "PATCH"]),
        Route("/v1/items/{item_id}/similar", similar_items),
    ]
