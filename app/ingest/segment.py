"""Segment / RudderStack messages -> the engine's own actions (pure: no I/O).

One message (`track`, `identify`, `page`, `screen`, `alias`, `group`) becomes one `Action`:
an engine `Event` (validated by `parse_event`, so every rule of the engine's schema holds), an
identify / alias merge, or "store only" (kept in the tracking log and counted; no effect on
the shopper's state). The e-commerce spec v2 mapping is the `TRACK_EVENTS` table below, and the
README's "Send events from Segment / RudderStack" section documents it.

Timestamps follow Segment's clock-skew correction: the event time is
`receivedAt - (sentAt - timestamp)`, so a device whose clock is off by an hour still lands
its events at the right server time (the offset between its own two readings is what counts).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.config import Config

from app.core.errors import ValidationError
from app.core.events import ID_RE, Event, parse_event
from app.ingest.users import validate_traits

MESSAGE_TYPES = ("track", "identify", "page", "screen", "alias", "group")
MAX_MESSAGE_BYTES = 32 * 1024  # Segment's per-message limit
MAX_BATCH_BYTES = 500 * 1024  # Segment's per-request limit (uncompressed)
MESSAGE_ID_MAX = 128

# Segment e-commerce spec v2 event name -> engine event type (None: stored and counted only).
TRACK_EVENTS: dict[str, str | None] = {
    "Product Viewed": "view",
    "Product Clicked": "click",
    "Product Added": "add_to_cart",
    "Product Removed": "remove_from_cart",
    "Order Completed": "purchase",
    "Products Searched": "search",
    # Interest without a cart: weighted like a click.
    "Product Added to Wishlist": "click",
    # Impressions: the engine records exposures itself when it serves a list; a client-side
    # impression is counted per experiment variant (`tracking.impressions`) and stored.
    "Product List Viewed": None,
    "Product List Filtered": None,
    "Cart Viewed": None,  # the live session already holds the cart
    "Checkout Started": None,
    "Checkout Step Viewed": None,
    "Checkout Step Completed": None,
    "Payment Info Entered": None,
    "Order Updated": None,
    "Order Refunded": None,
    "Order Cancelled": None,
    "Promotion Viewed": None,
    "Promotion Clicked": None,
    "Product Removed from Wishlist": None,
    "Product Shared": None,
    "Product Reviewed": None,
    "Coupon Entered": None,
    "Coupon Applied": None,
}
IMPRESSION_EVENTS = frozenset({"Product List Viewed"})
# Properties copied into the engine event's props (others stay in the sender's own tools).
PROP_FIELDS = ("category", "price", "surface", "rec_id", "variant", "currency", "revenue",
               "order_id", "list_id")  # fmt: skip
# Engine field -> the Segment field it came from, for rejection messages.
_FIELD_NAMES = {
    "event_id": "messageId",
    "user_id": "userId",
    "anonymous_id": "anonymousId",
    "session_id": "context.sessionId",
    "ts": "timestamp",
    "qty": "properties.quantity",
    "props.query": "properties.query",
    "props.price": "properties.price",
    "props": "properties",
}


@dataclass(frozen=True)
class TrackingConfig:
    product_id_field: str = "product_id"  # or "sku" (RETAIL_SEGMENT_PRODUCT_ID)
    log_maxlen: int = 50_000  # tracking log entries kept (approximate): ~500 B each
    seen_ttl_s: int = 24 * 3600  # messageIds of non-event messages remembered (dedup)


def load_tracking_config(env_file: str | Path | None = ".env") -> TrackingConfig:
    config = Config(env_file if env_file and Path(env_file).exists() else None)
    product_field = config("RETAIL_SEGMENT_PRODUCT_ID", cast=str, default="product_id")
    if product_field not in ("product_id", "sku"):
        raise ValueError("RETAIL_SEGMENT_PRODUCT_ID must be product_id or sku")
    return TrackingConfig(
        product_id_field=product_field,
        log_maxlen=config("RETAIL_TRACKING_LOG_MAXLEN", cast=int, default=50_000),
    )


@dataclass(frozen=True)
class Identify:
    user_id: str
    anonymous_id: str | None
    traits: dict[str, Any]
    dropped_traits: tuple[str, ...] = ()


@dataclass(frozen=True)
class Action:
    """What one message does. Exactly one of `event` / `identify` is set, or neither (store)."""

    message_id: str
    type: str  # the message type: track, identify, ...
    name: str  # the track event name, page name, ... ("" when none)
    ts: int
    event: Event | None = None
    identify: Identify | None = None
    impression_variant: str = ""  # Product List Viewed with props.variant
    stored: Mapping[str, Any] = field(default_factory=dict)  # the tracking log entry

    @property
    def effect(self) -> str:
        if self.event is not None:
            return f"event:{self.event.type}"
        if self.identify is not None:
            return "merge" if self.identify.anonymous_id else "identify"
        return "stored"


# -- timestamps ------------------------------------------------------------------------------------


def parse_time(value: Any, name: str) -> int | None:
    """ISO 8601 (what the SDKs send) or epoch milliseconds -> ms; None when absent."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValidationError(name, "must be an ISO 8601 time or epoch milliseconds")
        return int(value)
    if not isinstance(value, str) or len(value) > 64:
        raise ValidationError(name, "must be an ISO 8601 time (e.g. 2024-05-01T12:00:00.000Z)")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError as exc:
        raise ValidationError(name, f"is not an ISO 8601 time: {value!r}") from exc
    if parsed.tzinfo is None:  # Segment reads a zone-less time as UTC
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def event_time(msg: Mapping[str, Any], batch_sent_at: Any, received_ms: int) -> int:
    """Segment's rule: receivedAt - (sentAt - timestamp); without sentAt the timestamp as sent;
    without a timestamp the receive time."""
    ts = parse_time(msg.get("timestamp"), "timestamp")
    if ts is None:  # RudderStack's name for the device's reading
        ts = parse_time(msg.get("originalTimestamp"), "originalTimestamp")
    if ts is None:
        return received_ms
    sent = parse_time(msg.get("sentAt", batch_sent_at), "sentAt")
    return ts if sent is None else received_ms - (sent - ts)


# -- helpers ---------------------------------------------------------------------------------------


def _opt_id(msg: Mapping[str, Any], name: str) -> str | None:
    value = msg.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not ID_RE.match(value):
        raise ValidationError(name, "must be 1-64 characters of letters, digits or ._:@/+=-")
    return value


def _check_user(user_id: str, name: str) -> None:
    if user_id.startswith("anon:"):  # the engine's own prefix for anonymous identities
        raise ValidationError(name, "must not start with 'anon:'")


def _object(msg: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = msg.get(name)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ValidationError(name, "must be an object")
    return value


def _renamed(exc: ValidationError, product_field: str) -> ValidationError:
    name = exc.field
    if name == "item_id":
        name = f"properties.{product_field}"
    elif name.startswith("items"):
        name = "properties.products" + name.removeprefix("items").replace(
            ".item_id", f".{product_field}"
        ).replace(".qty", ".quantity")
    else:
        name = _FIELD_NAMES.get(name, name)
    return ValidationError(name, exc.message)


def flat_traits(traits: Mapping[str, Any]) -> tuple[dict[str, Any], tuple[str, ...]]:
    """Scalars kept; one level of objects flattened (`address.city`); lists and deeper
    objects dropped (named in the reply), since profile traits are flat values."""
    kept: dict[str, Any] = {}
    dropped: list[str] = []
    for name, value in traits.items():
        if isinstance(value, Mapping):
            for sub, inner in value.items():
                if inner is None or isinstance(inner, str | int | float | bool):
                    kept[f"{name}.{sub}"] = inner
                else:
                    dropped.append(f"{name}.{sub}")
        elif value is None or isinstance(value, str | int | float | bool):
            kept[str(name)] = value
        else:
            dropped.append(str(name))
    return kept, tuple(dropped)


def _stored(msg: Mapping[str, Any], mtype: str, name: str, ts: int) -> dict[str, Any]:
    """The tracking log entry: ids, name, time and properties/traits. `context` (page, user
    agent, ip, device) is never stored."""
    entry: dict[str, Any] = {"type": mtype, "messageId": msg.get("messageId"), "ts": ts}
    for key in ("userId", "anonymousId", "previousId", "groupId", "category"):
        if msg.get(key) not in (None, ""):
            entry[key] = msg[key]
    if name:
        entry["name"] = name
    for key in ("properties", "traits"):
        if isinstance(msg.get(key), Mapping) and msg[key]:
            entry[key] = msg[key]
    return entry


# -- translation -----------------------------------------------------------------------------------


def translate(
    msg: Any,
    *,
    received_ms: int,
    batch_sent_at: Any = None,
    default_type: str | None = None,
    cfg: TrackingConfig = TrackingConfig(),
    small_body: bool = False,
) -> Action:
    """One Segment message -> its Action, or ValidationError naming the Segment field.
    `small_body`: the whole request was at most 32 KB, so no message can be over the limit
    (skips re-encoding each message to measure it)."""
    if not isinstance(msg, Mapping):
        raise ValidationError("message", "must be a JSON object")
    if not small_body:
        size = len(json.dumps(msg, separators=(",", ":"), default=str).encode())
        if size > MAX_MESSAGE_BYTES:
            raise ValidationError("message", f"is {size} bytes: at most 32 KB")
    mtype = msg.get("type", default_type)
    if default_type is not None and mtype != default_type:
        raise ValidationError("type", f"must be {default_type!r} on this endpoint")
    if mtype not in MESSAGE_TYPES:
        raise ValidationError("type", f"must be one of {', '.join(MESSAGE_TYPES)}")
    message_id = msg.get("messageId")
    if not isinstance(message_id, str) or not 1 <= len(message_id) <= MESSAGE_ID_MAX:
        raise ValidationError("messageId", f"must be a string of 1-{MESSAGE_ID_MAX} characters")
    user_id = _opt_id(msg, "userId")
    anonymous_id = _opt_id(msg, "anonymousId")
    if user_id is None and anonymous_id is None:
        raise ValidationError("userId", "userId or anonymousId is required")
    ts = event_time(msg, batch_sent_at, received_ms)
    name = msg.get("event") if mtype == "track" else msg.get("name")
    if mtype == "track" and (not isinstance(name, str) or not name.strip()):
        raise ValidationError("event", "a track call needs the event name")
    name = name.strip() if isinstance(name, str) else ""
    base = {"message_id": message_id, "type": mtype, "name": name, "ts": ts}

    if mtype == "identify":
        # RudderStack's SDKs send identify traits in context.traits; Segment's at the top.
        context_traits = _object(_object(msg, "context"), "traits")
        traits, dropped = flat_traits({**context_traits, **_object(msg, "traits")})
        if user_id is None:  # traits of an anonymous visitor: nothing to attach them to
            return Action(**base, stored=_stored(msg, mtype, name, ts))
        _check_user(user_id, "userId")
        traits = validate_traits(traits)
        return Action(**base, identify=Identify(user_id, anonymous_id, traits, dropped))
    if mtype == "alias":
        previous = _opt_id(msg, "previousId")
        if previous is None or user_id is None:
            raise ValidationError("previousId", "an alias needs previousId and userId")
        _check_user(user_id, "userId")
        return Action(**base, identify=Identify(user_id, previous, {}))
    if mtype != "track":
        return Action(**base, stored=_stored(msg, mtype, name, ts))  # page, screen, group

    props = _object(msg, "properties")
    etype = TRACK_EVENTS.get(name)
    if etype is None:
        variant = props.get("variant") if name in IMPRESSION_EVENTS else None
        return Action(**base, impression_variant=variant if isinstance(variant, str) else "",
                      stored=_stored(msg, mtype, name, ts))  # fmt: skip
    raw = _engine_event(msg, props, etype, message_id, user_id, anonymous_id, ts, cfg)
    try:
        event = parse_event(raw, now_ms=received_ms)
    except ValidationError as exc:
        raise _renamed(exc, cfg.product_id_field) from None
    return Action(**base, event=event)


def _product_id(obj: Mapping[str, Any], cfg: TrackingConfig) -> Any:
    other = "sku" if cfg.product_id_field == "product_id" else "product_id"
    value = obj.get(cfg.product_id_field)
    return value if value not in (None, "") else obj.get(other)


def _engine_event(
    msg: Mapping[str, Any],
    props: Mapping[str, Any],
    etype: str,
    message_id: str,
    user_id: str | None,
    anonymous_id: str | None,
    ts: int,
    cfg: TrackingConfig,
) -> dict[str, Any]:
    context = _object(msg, "context")
    session = context.get("sessionId", props.get("session_id", ""))
    raw: dict[str, Any] = {
        "event_id": message_id,
        "type": etype,
        "user_id": user_id,
        "anonymous_id": anonymous_id,
        "session_id": str(session) if isinstance(session, int | str) else session,
        "ts": ts,
        "props": {k: props[k] for k in PROP_FIELDS if props.get(k) is not None},
    }
    if etype == "purchase":
        products = props.get("products")
        if not isinstance(products, list) or not products:
            raise ValidationError("properties.products", "Order Completed needs products[]")
        raw["items"] = [_line(p, cfg) for p in products]
    elif etype == "search":
        raw["props"]["query"] = props.get("query", "")
    else:
        raw["item_id"] = _product_id(props, cfg)
        if props.get("quantity") is not None:
            raw["qty"] = props["quantity"]
    return raw


def _line(product: Any, cfg: TrackingConfig) -> Any:
    if not isinstance(product, Mapping):
        return product  # parse_event names it
    line = {"item_id": _product_id(product, cfg), "qty": product.get("quantity", 1),
            "price": product.get("price", 0.0)}  # fmt: skip
    if isinstance(product.get("category"), str):
        line["category"] = product["category"]
    return line
