"""HTTP routes of the feature store (`app.api.app.create_app` mounts `feature_routes()`).

| method | path                              | auth  | what                                      |
|--------|-----------------------------------|-------|-------------------------------------------|
| GET    | /v1/features                      | -     | the definitions (no user data)            |
| GET    | /v1/features/{entity_type}/{id}   | admin | ?names=a,b&as_of=now|latest|<ms>          |
| POST   | /v1/features/{entity_type}        | admin | {"ids": [...], "names"?: [...], "as_of"?} |

Feature values are user data (activity, spend, affinities): reading them needs the secret
admin key (`Authorization: Bearer <RETAIL_ADMIN_KEY>`), like the profile endpoints. Entity
types: user, item, user_category (id "<user>~<category>"). `as_of` defaults to now (server
time); values are as of the start of the bucket holding as_of (docs/features.md).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from app.api import deps
from app.api.openapi import (
    ANY_OBJECT,
    ERROR,
    ID,
    Operation,
    Param,
    arr,
    integer,
    obj,
    operation,
    string,
)
from app.core.errors import ValidationError
from app.features import online
from app.features import spec as features
from app.features.online import FeatureRow
from app.features.spec import FeatureSet
from app.redis.connect import is_cluster

ROW = obj({"id": string(), "as_of_ms": integer(), "features": ANY_OBJECT})

MAX_BATCH_IDS = 500


def feature_set(request: Request) -> FeatureSet:
    """`app.state.feature_set` when set (tests), else features/features.yaml ($RETAIL_FEATURES)."""
    fs = getattr(request.app.state, "feature_set", None)
    if not isinstance(fs, FeatureSet):
        fs = features.default_feature_set()
        request.app.state.feature_set = fs
    return fs


def _names(raw: Any) -> list[str] | None:
    if raw is None or raw == "":
        return None
    if isinstance(raw, str):
        raw = raw.split(",")
    if not isinstance(raw, list) or not all(isinstance(n, str) and n.strip() for n in raw):
        raise ValidationError("names", "must be feature names (a list, or a,b,c in the query)")
    return [n.strip() for n in raw]


def _row_json(row: FeatureRow) -> dict[str, Any]:
    return {"id": row.entity_id, "as_of_ms": row.as_of_ms, "features": row.values}


@operation(
    Operation(
        "The feature definitions (names, entities, windows)",
        "features",
        responses={200: ("definitions", obj({"version": string(), "features": arr(ANY_OBJECT)}))},
    )
)
async def list_features(request: Request) -> Response:
    fs = feature_set(request)
    return JSONResponse({"version": fs.version, "features": fs.describe()})


@operation(Operation("Feature values of one entity (point-in-time with as_of)", "features",
    auth="admin", params=(Param("entity_type", "path", string(enum=["user", "item"])),
                          Param("entity_id", "path", ID),
                          Param("names", description="comma-separated feature names"),
                          Param("as_of", schema=integer("ms since the epoch"))),
    responses={200: ("values", ROW), 404: ("unknown entity type", ERROR),
               422: ("invalid parameter", ERROR)}))  # fmt: skip
async def get_entity_features(request: Request) -> Response:
    deps.require_admin_key(request)
    st = deps.state(request)
    fs = feature_set(request)
    entity = request.path_params["entity_type"]
    entity_id = features.check_entity_id(entity, request.path_params["entity_id"])
    names = features.resolve_names(fs, entity, _names(request.query_params.get("names")))
    as_of = online.parse_as_of(request.query_params.get("as_of"))
    (row,) = await deps.blocking(
        lambda: online.get_features(st["redis"], fs, st["keys"], entity, [entity_id], names,
                                    as_of, cluster=is_cluster(st["redis"]))
    )  # fmt: skip
    return JSONResponse({"entity_type": entity, **_row_json(row), "version": fs.version})


@operation(Operation("Feature values of up to 500 entities", "features", auth="admin",
    params=(Param("entity_type", "path", string(enum=["user", "item"])),),
    request=obj({"ids": arr(ID, min_items=1, max_items=500), "names": arr(string()),
                 "as_of": integer("ms since the epoch")}, required=["ids"]),
    responses={200: ("rows", obj({"entity_type": string(), "version": string(),
                                  "rows": arr(ROW)})),
               422: ("invalid input", ERROR)}))  # fmt: skip
async def post_entity_features(request: Request) -> Response:
    deps.require_admin_key(request)
    st = deps.state(request)
    fs = feature_set(request)
    entity = request.path_params["entity_type"]
    body = await deps.read_json(request)
    if not isinstance(body, dict):
        raise ValidationError("body", 'must be {"ids": [...], "names"?: [...], "as_of"?: ...}')
    ids = body.get("ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
        raise ValidationError("ids", "must be a non-empty list of entity ids")
    if len(ids) > MAX_BATCH_IDS:
        raise ValidationError("ids", f"at most {MAX_BATCH_IDS} ids per request")
    for entity_id in ids:
        features.check_entity_id(entity, entity_id)
    names = features.resolve_names(fs, entity, _names(body.get("names")))
    as_of = online.parse_as_of(body.get("as_of"))
    rows = await deps.blocking(
        lambda: online.get_features(st["redis"], fs, st["keys"], entity, ids, names, as_of,
                                    cluster=is_cluster(st["redis"]))
    )  # fmt: skip
    return JSONResponse(
        {"entity_type": entity, "version": fs.version, "rows": [_row_json(r) for r in rows]}
    )


def feature_routes() -> list[BaseRoute]:
    return [
        Route("/v1/features", list_features),
        Route("/v1/features/{entity_type}", post_entity_features, methods=["POST"]),
        Route("/v1/features/{entity_type}/{entity_id:path}", get_entity_features),
    ]
