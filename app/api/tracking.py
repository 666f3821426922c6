"""Segment's HTTP Tracking API (RudderStack speaks the same): `/v1/batch`, `/v1/track`,
`/v1/identify`, `/v1/page`, `/v1/screen`, `/v1/alias`, `/v1/group`.

Status codes follow what the SDKs do with them: they retry 5xx and 429 and drop other 4xx. So a
batch answers 200 as soon as it is readable and authorised, with per-message rejections in the
body (logged and counted), and never fails whole because of one bad message; a Redis outage is
503 and the SDK's retry is safe (messageId is the idempotency key). Error bodies carry `code`
and `message`, the fields the SDKs read.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import redis
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from app.api import auth, deps
from app.api.openapi import (
    ANY_OBJECT,
    ERROR,
    Operation,
    arr,
    integer,
    obj,
    operation,
    string,
)
from app.core.errors import (
    AuthError,
    ForbiddenError,
    RateLimitedError,
    RedisSetupError,
    TooLargeError,
    ValidationError,
)
from app.ingest import users
from app.ingest.segment import (
    MAX_BATCH_BYTES,
    MAX_MESSAGE_BYTES,
    MESSAGE_TYPES,
    Action,
    load_tracking_config,
    translate,
)
from app.ingest.tracking import Outcome, TrackingSink
from app.obs import registry as metrics

log = logging.getLogger("retail.tracking")
Endpoint = Callable[[Request], Awaitable[Response]]

# -- schemas (OpenAPI) ---------------------------------------------------------------------------

_TIME = string("ISO 8601 time (or epoch ms)")
_ID = {"type": ["string", "null"], "maxLength": 64}
MESSAGE = obj(
    {
        "type": string(enum=list(MESSAGE_TYPES)),
        "messageId": string("idempotency key", minLength=1, maxLength=128),
        "userId": _ID,
        "anonymousId": _ID,
        "previousId": _ID,
        "groupId": {"type": ["string", "null"]},
        "event": string("track: the event name (e-commerce spec v2 names are mapped)"),
        "name": string("page / screen name"),
        "properties": ANY_OBJECT,
        "traits": ANY_OBJECT,
        "context": obj(description="only context.sessionId is read; nothing else is stored"),
        "timestamp": _TIME,
        "originalTimestamp": _TIME,
        "sentAt": _TIME,
        "integrations": ANY_OBJECT,
    },
    required=["messageId"],
    description=f"one Segment / RudderStack message (at most {MAX_MESSAGE_BYTES} bytes); "
    "userId or anonymousId is required",
)
BATCH = obj(
    {"batch": arr(MESSAGE), "sentAt": _TIME, "writeKey": string(), "context": ANY_OBJECT},
    required=["batch"],
    description=f"at most {MAX_BATCH_BYTES} bytes uncompressed (Content-Encoding: gzip accepted)",
)
REJECTION = obj({"index": integer(), "messageId": {"type": ["string", "null"]},
                 "field": string(), "reason": string()})  # fmt: skip
BATCH_REPLY = obj(
    {"success": {"const": True}, "accepted": integer(), "duplicate": integer(),
     "rejected": integer(), "errors": arr(REJECTION)},
    required=["success"],
)  # fmt: skip
SINGLE_REPLY = obj(
    {"success": {"const": True}, "status": string(enum=["accepted", "duplicate"]),
     "effect": string("what it did: event:<type>, identify, merge or stored")},
    required=["success"],
)  # fmt: skip
TRACKING_ERROR = obj(
    {"success": {"const": False}, "code": string(), "message": string(), **ERROR["properties"]},
    required=["success", "code", "message"],
)  # fmt: skip
_ERRORS: dict[int, tuple[str, Any]] = {
    400: ("unreadable body or an invalid message (the SDKs do not retry it)", TRACKING_ERROR),
    403: (
        "a message naming a user without its shopper token (client key; not retried)",
        TRACKING_ERROR,
    ),
    429: ("rate limited: retry after Retry-After", TRACKING_ERROR),
    413: ("body over the size limit", TRACKING_ERROR),
    503: ("Redis unavailable: retry (messageId makes it safe)", TRACKING_ERROR),
}


def tracking_error(
    status: int, code: str, message: str, retry_after_s: float | None = None
) -> Response:
    headers = {"retry-after": str(max(1, math.ceil(retry_after_s)))} if retry_after_s else None
    return JSONResponse(
        {"success": False, "code": code, "message": message, "error": code, "detail": message},
        status_code=status,
        headers=headers,
    )


def _sink(request: Request) -> TrackingSink:
    cached = getattr(request.app.state, "tracking_sink", None)
    if isinstance(cached, TrackingSink):
        return cached
    st = deps.state(request)
    sink = TrackingSink(st["redis"], st["settings"].engine, st["ingestor"], load_tracking_config())
    request.app.state.tracking_sink = sink
    return sink


async def _read(request: Request, max_bytes: int) -> tuple[Any, int]:
    """Body -> (JSON, uncompressed size); size and syntax errors as SDK-readable responses."""
    try:
        raw = await deps.read_body(request, max_bytes)
    except TooLargeError as exc:
        raise _Reply(tracking_error(413, "too_large", exc.message)) from None
    except ValidationError as exc:
        raise _Reply(tracking_error(400, "invalid", f"{exc.field}: {exc.message}")) from None
    try:  # bounded nesting and numbers (a plain json.loads fails with a 5xx on 100k `[`)
        return deps.parse_json(raw, deps.state(request)["settings"].limits), len(raw)
    except ValidationError as exc:
        raise _Reply(tracking_error(400, "invalid", f"{exc.field}: {exc.message}")) from None


class _Reply(Exception):
    """A finished response carried out of a helper (auth, body) to the endpoint."""

    def __init__(self, response: Response) -> None:
        self.response = response


def _authorise(request: Request, body: Any) -> auth.Caller:
    """The caller's key kind (app/api/auth.py decides per message what it may send)."""
    key = body.get("writeKey") if isinstance(body, Mapping) else None
    try:
        return deps.require_write_key(request, key)
    except AuthError as exc:
        raise _Reply(tracking_error(401, "unauthorized", str(exc))) from None
    except RateLimitedError as exc:
        raise _Reply(tracking_error(429, "rate_limited", str(exc), exc.retry_after_s)) from None


def _count(actions: Sequence[Action | None], types: Sequence[str], outcomes: Sequence[Outcome],
           request: Request) -> None:  # fmt: skip
    experiments = deps.state(request)["engine"].experiments
    for action, mtype, outcome in zip(actions, types, outcomes, strict=True):
        metrics.record("tracking.messages", type=mtype, status=outcome.status)
        variant = action.impression_variant if action is not None else ""
        # Only labels of known experiments: a client cannot mint metric series.
        if variant and outcome.status == "accepted" and experiments.resolve(variant) is not None:
            metrics.record("tracking.impressions", variant=variant)


async def _apply(
    request: Request,
    who: auth.Caller,
    messages: Sequence[Any],
    sent_at: Any,
    default_type: str | None,
    body_bytes: int,
) -> tuple[list[Action | None], list[Outcome], list[dict[str, Any]]]:
    received = int(time.time() * 1000)
    tcfg = _sink(request).cfg
    actions: list[Action | None] = []
    errors: list[dict[str, Any]] = []
    problems = auth.authorize_write(request, who, list(messages))
    for i, (msg, problem) in enumerate(zip(messages, problems, strict=True)):
        if problem is not None:  # never applied; the SDKs do not retry a 4xx
            actions.append(None)
            mid = msg.get("messageId") if isinstance(msg, Mapping) else None
            errors.append({"index": i, "messageId": mid if isinstance(mid, str) else None,
                           "field": "context.shopper_token", "reason": problem,
                           "error": "forbidden"})  # fmt: skip
            continue
        try:
            actions.append(translate(msg, received_ms=received, batch_sent_at=sent_at,
                                     default_type=default_type, cfg=tcfg,
                                     small_body=body_bytes <= MAX_MESSAGE_BYTES))  # fmt: skip
        except ValidationError as exc:
            actions.append(None)
            mid = msg.get("messageId") if isinstance(msg, Mapping) else None
            mid = mid if isinstance(mid, str) else None
            errors.append({"index": i, "messageId": mid, "field": exc.field,
                           "reason": exc.message})  # fmt: skip
            log.warning("tracking: rejected message %s (%r): %s: %s", i, mid, exc.field,
                        exc.message)  # fmt: skip
    valid = [a for a in actions if a is not None]
    try:
        if valid:
            deps.redis_available(request)  # the breaker: fail fast while Redis hangs
        applied = iter(await deps.blocking(_sink(request).apply, valid))
    except (redis.RedisError, RedisSetupError) as exc:
        # Retryable for the SDKs; messageId dedup makes the retry safe.
        raise _Reply(tracking_error(503, "unavailable", f"Redis: {exc}", 1.0)) from exc
    reasons = {e["index"]: e["reason"] for e in errors}
    outcomes = [next(applied) if a is not None else Outcome("rejected", reasons[i])
                for i, a in enumerate(actions)]  # fmt: skip
    for i, (action, outcome) in enumerate(zip(actions, outcomes, strict=True)):
        if action is not None and outcome.status == "rejected":
            errors.append({"index": i, "messageId": action.message_id, "field": "message",
                           "reason": outcome.reason})  # fmt: skip
            log.warning("tracking: message %s refused: %s", action.message_id, outcome.reason)
    types = [m.get("type", default_type) if isinstance(m, Mapping) else None for m in messages]
    _count(actions, [t if t in MESSAGE_TYPES else "invalid" for t in types], outcomes, request)
    return actions, outcomes, sorted(errors, key=lambda e: e["index"])


# -- endpoints -----------------------------------------------------------------------------------


BATCH_OP = Operation(
    "Segment / RudderStack batch of messages (what the server SDKs send)",
    "tracking",
    auth="write_key",
    request=BATCH,
    responses={
        200: ("per-message outcome; invalid messages are listed, not retried", BATCH_REPLY),
        **_ERRORS,
    },
)


async def post_batch(request: Request) -> Response:
    try:
        body, size = await _read(request, MAX_BATCH_BYTES)
        who = _authorise(request, body)
        batch = body.get("batch") if isinstance(body, Mapping) else None
        if not isinstance(batch, list):
            return tracking_error(400, "invalid", 'body must be {"batch": [messages...]}')
        _actions, outcomes, errors = await _apply(request, who, batch, body.get("sentAt"), None,
                                                  size)  # fmt: skip
    except _Reply as reply:
        return reply.response
    counts = {s: sum(1 for o in outcomes if o.status == s)
              for s in ("accepted", "duplicate", "rejected")}  # fmt: skip
    return JSONResponse({"success": True, **counts, "errors": errors})


async def _single(request: Request, mtype: str) -> Response:
    try:
        body, size = await _read(request, MAX_MESSAGE_BYTES)
        who = _authorise(request, body)
        if not isinstance(body, Mapping):
            return tracking_error(400, "invalid", "body must be one message object")
        actions, outcomes, errors = await _apply(request, who, [body], body.get("sentAt"), mtype,
                                                 size)  # fmt: skip
    except _Reply as reply:
        return reply.response
    if errors and errors[0].get("error") == "forbidden":
        return tracking_error(403, "forbidden", errors[0]["reason"])
    if errors:
        return tracking_error(400, "invalid", f"{errors[0]['field']}: {errors[0]['reason']}")
    action = actions[0]
    assert action is not None
    return JSONResponse({"success": True, "status": outcomes[0].status, "effect": action.effect})


def _single_endpoint(mtype: str) -> Endpoint:
    async def endpoint(request: Request) -> Response:
        return await _single(request, mtype)

    endpoint.__name__ = f"post_{mtype}"
    return endpoint


# Browsers: analytics.js posts `text/plain` with the write key in the body (no preflight), or
# sends a preflight for an Authorization header. The write key is public (it names a source,
# like Segment's), so any origin may send; no cookies are read.
CORS_HEADERS = {
    "access-control-allow-origin": "*",
    "access-control-allow-methods": "POST, OPTIONS",
    "access-control-allow-headers": "authorization, content-type, content-encoding, x-write-key",
    "access-control-max-age": "86400",
}
PREFLIGHT = Operation("CORS preflight (browsers)", "tracking",
                      responses={204: ("allowed: POST from any origin", None)})  # fmt: skip


def _route(path: str, endpoint: Endpoint, op: Operation) -> Route:
    """POST `endpoint` (+ the CORS header on every answer) and OPTIONS (preflight)."""

    async def with_cors(request: Request) -> Response:
        if request.method == "OPTIONS":
            return Response(status_code=204, headers=CORS_HEADERS)
        response = await endpoint(request)
        response.headers["access-control-allow-origin"] = "*"
        return response

    with_cors.__name__ = endpoint.__name__
    operation(PREFLIGHT, method="OPTIONS")(with_cors)
    operation(op, method="POST")(with_cors)
    return Route(path, with_cors, methods=["POST", "OPTIONS"])


# A body with none of these is the engine's original identify form.
SEGMENT_FIELDS = frozenset({"userId", "anonymousId", "messageId", "type"})
LEGACY_IDENTIFY = obj(
    {"user_id": string(), "anonymous_id": string(), "traits": ANY_OBJECT}, required=["user_id"]
)
LEGACY_IDENTIFY_REPLY = obj({"user_id": string(), "status": string(), "merged_items": integer()})


IDENTIFY_OP = Operation(
    "Identify: traits into the profile; with anonymousId, merge it into the user",
    "tracking",
    auth="write_key",
    request={"oneOf": [MESSAGE, LEGACY_IDENTIFY]},
    description="A Segment identify message, or the engine's original form "
    '{"user_id", "anonymous_id"?, "traits"?} (answered in its original shape).',
    responses={200: ("handled", {"oneOf": [SINGLE_REPLY, LEGACY_IDENTIFY_REPLY]}), **_ERRORS},
)


async def post_identify(request: Request) -> Response:
    try:
        body, _size = await _read(request, MAX_MESSAGE_BYTES)  # Starlette keeps it for _single
    except _Reply as reply:
        return reply.response
    if isinstance(body, Mapping) and not SEGMENT_FIELDS.intersection(body):
        who = deps.require_write_key(request)
        user_id, anon, traits = users.parse_identify(body)
        (problem,) = auth.authorize_write(request, who, [body])
        if problem is not None:
            raise ForbiddenError(problem)
        deps.redis_available(request)
        st = deps.state(request)
        result = await deps.blocking(
            users.identify, st["redis"], st["settings"].engine, user_id, anon, traits
        )
        return JSONResponse({"user_id": result.user_id, "status": result.status,
                             "merged_items": result.merged_items})  # fmt: skip
    return await _single(request, "identify")


SINGLE = {
    "track": "Track one event (e-commerce spec v2 names become engine events)",
    "page": "A page view (stored in the tracking log and counted)",
    "screen": "A mobile screen view (stored and counted)",
    "alias": "Alias previousId to userId: merges the earlier identity",
    "group": "Group membership (stored and counted)",
}


def _single_op(summary: str) -> Operation:
    return Operation(summary, "tracking", auth="write_key", request=MESSAGE,
                     responses={200: ("handled", SINGLE_REPLY), **_ERRORS})  # fmt: skip


def tracking_routes() -> list[BaseRoute]:
    """Segment's paths, plus the one-letter ones analytics.js (analytics-next) posts to when
    its API host points here: /v1/t, /v1/i, /v1/p, /v1/s, /v1/a, /v1/g and /v1/b (batching)."""
    routes: list[BaseRoute] = []
    for path in ("/v1/batch", "/v1/b"):
        routes.append(_route(path, post_batch, BATCH_OP))
    for path in ("/v1/identify", "/v1/i"):
        routes.append(_route(path, post_identify, IDENTIFY_OP))
    for mtype, summary in SINGLE.items():
        for path in (f"/v1/{mtype}", f"/v1/{mtype[0]}"):
            routes.append(_route(path, _single_endpoint(mtype), _single_op(summary)))
    return routes
