"""The API's contract as an OpenAPI 3.1 document, built from the route table and the
`@operation(...)` description each handler carries next to its code.

A route without a description cannot slip through: `document()` raises for it, and
tests/test_openapi.py checks every (path, method) of the live app is in the document. Schemas are
JSON Schema (2020-12, which OpenAPI 3.1 uses as is), written with the small helpers below.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.routing import BaseRoute, Mount, Route

Schema = dict[str, Any]
F = TypeVar("F", bound=Callable[..., Any])
ATTR = "__openapi_operations__"
AUTH_SCHEMES = ("write_key", "shopper", "admin")
# Starlette's converters ({id:path}) are not part of an OpenAPI path template.
_CONVERTER = re.compile(r"{([^}:]+):[^}]+}")

# -- schema helpers ------------------------------------------------------------------------------


def obj(
    props: Mapping[str, Schema] | None = None,
    *,
    required: Sequence[str] = (),
    extra: bool | Schema = True,
    description: str | None = None,
) -> Schema:
    s: Schema = {"type": "object", "properties": dict(props or {})}
    if required:
        s["required"] = list(required)
    if extra is not True:
        s["additionalProperties"] = extra
    if description:
        s["description"] = description
    return s


def arr(items: Schema, *, max_items: int | None = None, min_items: int | None = None) -> Schema:
    s: Schema = {"type": "array", "items": items}
    if max_items is not None:
        s["maxItems"] = max_items
    if min_items is not None:
        s["minItems"] = min_items
    return s


def string(description: str | None = None, **kw: Any) -> Schema:
    return {"type": "string", **({"description": description} if description else {}), **kw}


def integer(description: str | None = None, **kw: Any) -> Schema:
    return {"type": "integer", **({"description": description} if description else {}), **kw}


def number(description: str | None = None, **kw: Any) -> Schema:
    return {"type": "number", **({"description": description} if description else {}), **kw}


BOOL: Schema = {"type": "boolean"}
ANY_OBJECT: Schema = {"type": "object"}
ID: Schema = string(
    "1-64 characters of letters, digits or . _ @ + = -", pattern=r"^[A-Za-z0-9._@+=-]{1,64}$"
)
IDENTITY: Schema = string(
    "a user id, or 'anon:' + an anonymous id (1-64 characters of letters, digits or . _ @ + = -)",
    pattern=r"^(anon:)?[A-Za-z0-9._@+=-]{1,64}$",
)
ERROR: Schema = obj(
    {"error": string("machine-readable kind: invalid, unauthorized, not_found, unavailable, ..."),
     "field": string("the offending field (validation errors)"),
     "detail": string("what is wrong and how to fix it")},
    required=["error"],
)  # fmt: skip


# -- operations ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    name: str
    where: str = "query"  # query | path | header
    schema: Schema = field(default_factory=lambda: string())
    description: str = ""
    required: bool = False

    def as_json(self) -> Schema:
        out: Schema = {
            "name": self.name,
            "in": self.where,
            "required": self.required or self.where == "path",
            "schema": self.schema,
        }
        if self.description:
            out["description"] = self.description
        return out


@dataclass(frozen=True)
class Operation:
    summary: str
    tag: str
    # None | "write_key" (client/server/admin key; a user id needs its shopper token with a
    # client key) | "shopper" (server/admin key or the shopper's token) | "admin"
    auth: str | None = None
    params: tuple[Param, ...] = ()
    request: Schema | None = None
    # status -> (description, JSON schema, or None for a non-JSON body)
    responses: Mapping[int, tuple[str, Schema | None]] = field(default_factory=dict)
    content_type: str = "application/json"  # of the 2xx body
    description: str = ""


def operation(op: Operation, *, method: str = "*") -> Callable[[F], F]:
    """Attach `op` to a handler; `method` picks one of a multi-method handler's methods."""
    if op.auth is not None and op.auth not in AUTH_SCHEMES:
        raise ValueError(f"unknown auth scheme {op.auth!r}")

    def attach(fn: F) -> F:
        ops: dict[str, Operation] = dict(getattr(fn, ATTR, {}))
        ops[method.upper()] = op
        setattr(fn, ATTR, ops)
        return fn

    return attach


def operation_of(endpoint: Any, method: str) -> Operation | None:
    ops: Mapping[str, Operation] = getattr(endpoint, ATTR, {})
    return ops.get(method) or ops.get("*")


# -- the document --------------------------------------------------------------------------------


def route_methods(routes: Iterable[BaseRoute]) -> list[tuple[str, str, Any]]:
    """(OpenAPI path, method, endpoint) of every HTTP route; mounts (static files) skipped."""
    found = []
    for route in routes:
        if isinstance(route, Mount) or not isinstance(route, Route):
            continue
        path = _CONVERTER.sub(r"{\1}", route.path)
        for method in sorted(route.methods or {"GET"}):
            if method != "HEAD":
                found.append((path, method, route.endpoint))
    return found


_STATUS_TEXT = {
    401: "missing or wrong credentials",
    403: "no proof for this shopper: a server key or the shopper's token is needed",
    404: "not found",
    413: "body too large",
    422: "invalid input: names the field and the fix",
    429: "rate limited: retry later",
    503: "Redis unavailable: retry later",
}


def _responses(op: Operation) -> dict[str, Any]:
    out: dict[str, Any] = {}
    codes = dict(op.responses)
    if op.auth:
        codes.setdefault(401, (_STATUS_TEXT[401], ERROR))
        codes.setdefault(429, (_STATUS_TEXT[429], ERROR))
    if op.auth in ("write_key", "shopper"):
        codes.setdefault(403, (_STATUS_TEXT[403], ERROR))
    if op.request is not None:
        codes.setdefault(413, (_STATUS_TEXT[413], ERROR))
    codes.setdefault(503, (_STATUS_TEXT[503], ERROR))
    for code, (text, schema) in sorted(codes.items()):
        entry: dict[str, Any] = {"description": text}
        if schema is not None:
            ctype = op.content_type if 200 <= code < 300 else "application/json"
            entry["content"] = {ctype: {"schema": schema}}
        elif 200 <= code < 300 and op.content_type != "application/json":
            entry["content"] = {op.content_type: {"schema": string()}}
        out[str(code)] = entry
    return out


def _security(auth: str | None) -> list[dict[str, list[str]]]:
    if auth == "write_key":  # either scheme works (alternatives)
        return [{"writeKeyBasic": []}, {"writeKeyHeader": []}]
    if auth == "shopper":
        return [{"shopperToken": []}, {"serverBearer": []}, {"adminBearer": []}]
    if auth == "admin":
        return [{"adminBearer": []}]
    return []


def document(routes: Iterable[BaseRoute], *, version: str, title: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    missing = []
    for path, method, endpoint in route_methods(routes):
        op = operation_of(endpoint, method)
        if op is None:
            missing.append(f"{method} {path}")
            continue
        entry: dict[str, Any] = {
            "summary": op.summary,
            "operationId": f"{method.lower()}_{re.sub(r'[^A-Za-z0-9]+', '_', path).strip('_')}",
            "tags": [op.tag],
            "responses": _responses(op),
            "security": _security(op.auth),
        }
        if op.description:
            entry["description"] = op.description
        params = [p.as_json() for p in op.params]
        declared = {p.name for p in op.params if p.where == "path"}
        params += [
            Param(name, "path", ID if name.endswith("_id") else string()).as_json()
            for name in re.findall(r"{([^}]+)}", path)
            if name not in declared
        ]
        if params:
            entry["parameters"] = params
        if op.request is not None:
            entry["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": op.request}},
            }
        paths.setdefault(path, {})[method.lower()] = entry
    if missing:
        raise LookupError(f"routes without an @operation description: {', '.join(missing)}")
    return {
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": version,
            "description": "Real-time retail personalization inside Redis. Event ingestion "
            "speaks Segment's / RudderStack's HTTP Tracking API (/v1/batch, /v1/track, ...).",
        },
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {
                "writeKeyBasic": {
                    "type": "http",
                    "scheme": "basic",
                    "description": "Segment/RudderStack SDK style: the write key as the user "
                    "name, an empty password. A client key (public) needs the shopper's token "
                    "in each message naming a user id; a server key (secret) does not "
                    "(docs/security.md).",
                },
                "writeKeyHeader": {"type": "apiKey", "in": "header", "name": "X-Write-Key"},
                "shopperToken": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Shopper-Token",
                    "description": "The shopper's token, minted by the retailer's backend: "
                    "v1.<expiry>.<base64url HMAC-SHA256 of 'v1\\n<user id>\\n<expiry>'> "
                    "(docs/security.md).",
                },
                "serverBearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Authorization: Bearer <a RETAIL_SERVER_KEYS key> (secret).",
                },
                "adminBearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Authorization: Bearer <RETAIL_ADMIN_KEY> (secret).",
                },
            },
            "schemas": {"Error": ERROR},
        },
    }
