"""Typed wrappers of the catalog Functions (lua/50_catalog.lua), each with a pure `*_args()`.

Same conventions as `app/redis/calls.py`: a builder returns `(keys, argv)` without touching the
network, so it is unit-testable and can be queued in a pipeline; Function errors come back as
the typed errors of `app/core/errors.py`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import redis

from app.catalog.index import CatalogConfig, CatalogKeys, ProductRecord
from app.core.errors import ValidationError
from app.redis.calls import fcall, fcall_ro

Args = tuple[list[str], list[Any]]
SOURCES: Final = ("manual", "automation", "feed")


class _Remove:
    """Marker: remove a guard bound (`floor=REMOVE`)."""

    def __repr__(self) -> str:
        return "REMOVE"


REMOVE: Final = _Remove()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _num(value: float) -> str:
    return repr(float(value))


# -- catalog_upsert ---------------------------------------------------------------------------


def catalog_upsert_args(
    cfg: CatalogConfig, ckeys: CatalogKeys, rec: ProductRecord, content_json: str, digest: str
) -> Args:
    created = rec.created_ms if rec.created_ms is not None else 0
    return ckeys.item_keys(rec.item_id), [
        content_json, digest, _num(rec.price), rec.stock, rec.stock_mode, created,
        _num(cfg.max_change_pct), cfg.price_window_ms, cfg.price_retention_ms,
    ]  # fmt: skip


@dataclass(frozen=True)
class UpsertResult:
    status: str  # created | updated | unchanged
    price_status: str  # '' | ok | refused:<reason>


def parse_upsert(reply: Sequence[Any]) -> UpsertResult:
    return UpsertResult(_text(reply[0]), _text(reply[1]))


# -- catalog_update ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PriceStockChange:
    """One PATCH: every field optional. `floor`/`ceiling`: a number, REMOVE, or None
    (unchanged). `locked`: True/False, or None (unchanged). Guard settings need 'manual'."""

    source: str = "manual"
    price: float | None = None
    stock: int | None = None
    stock_delta: int | None = None
    floor: float | _Remove | None = None
    ceiling: float | _Remove | None = None
    locked: bool | None = None
    lock_reason: str = ""

    def is_empty(self) -> bool:
        return all(
            v is None
            for v in (self.price, self.stock, self.stock_delta, self.floor, self.ceiling,
                      self.locked)
        )  # fmt: skip


def _bound(value: float | _Remove | None) -> str:
    if value is None:
        return ""
    if isinstance(value, _Remove):
        return "-"
    return _num(value)


def catalog_update_args(
    cfg: CatalogConfig, ckeys: CatalogKeys, item_id: str, change: PriceStockChange
) -> Args:
    lock = "" if change.locked is None else ("1" if change.locked else "0")
    return ckeys.item_keys(item_id), [
        change.source,
        "" if change.price is None else _num(change.price),
        "" if change.stock is None else change.stock,
        "" if change.stock_delta is None else change.stock_delta,
        _bound(change.floor), _bound(change.ceiling), lock, change.lock_reason,
        _num(cfg.max_change_pct), cfg.price_window_ms, cfg.price_retention_ms,
    ]  # fmt: skip


@dataclass(frozen=True)
class UpdateResult:
    status: str  # ok | refused | not_found
    reason: str  # '' | locked | below_floor | above_ceiling | velocity | insufficient_stock
    detail: str
    price: float | None
    stock: int
    floor: float | None
    ceiling: float | None
    locked: bool

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"status": self.status}
        if self.reason:
            body["reason"] = self.reason
        if self.detail:
            body["detail"] = self.detail
        body.update(
            price=self.price, stock=self.stock, in_stock=self.stock > 0,
            guard={"floor": self.floor, "ceiling": self.ceiling, "locked": self.locked},
        )  # fmt: skip
        return body


def _opt_float(value: Any) -> float | None:
    s = _text(value)
    return float(s) if s else None


def parse_update(reply: Sequence[Any]) -> UpdateResult:
    return UpdateResult(
        status=_text(reply[0]),
        reason=_text(reply[1]),
        detail=_text(reply[2]),
        price=_opt_float(reply[3]),
        stock=int(reply[4]),
        floor=_opt_float(reply[5]),
        ceiling=_opt_float(reply[6]),
        locked=int(reply[7]) == 1,
    )


def catalog_update(
    client: redis.Redis,
    cfg: CatalogConfig,
    ckeys: CatalogKeys,
    item_id: str,
    change: PriceStockChange,
) -> UpdateResult:
    return parse_update(
        fcall(client, "catalog_update", catalog_update_args(cfg, ckeys, item_id, change))
    )


MAX_LOCK_REASON = 200


def parse_change(body: Any) -> PriceStockChange:
    """A PATCH body -> PriceStockChange, or ValidationError(field, message).

    {"price": 2.95, "stock": 10 | "stock_delta": -1, "floor": 1.5 | null, "ceiling": 5 | null,
     "locked": true, "lock_reason": "...", "source": "manual" | "automation"}
    """
    if not isinstance(body, dict) or not body:
        raise ValidationError("body", "must be a non-empty JSON object")
    allowed = {"price", "stock", "stock_delta", "floor", "ceiling", "locked", "lock_reason",
               "source"}  # fmt: skip
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ValidationError(unknown[0], f"unknown field (allowed: {', '.join(sorted(allowed))})")
    source = body.get("source", "manual")
    if source not in ("manual", "automation"):
        raise ValidationError("source", "must be 'manual' or 'automation'")

    def price_like(name: str, *, nullable: bool) -> float | _Remove | None:
        if name not in body:
            return None
        value = body[name]
        if value is None and nullable:
            return REMOVE
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValidationError(name, "must be a number" + (" or null" if nullable else ""))
        if not math.isfinite(value) or not 0 < value <= 1_000_000:
            raise ValidationError(name, "must be > 0 and <= 1000000")
        return float(value)

    def integer(name: str, lo: int, hi: int) -> int | None:
        if name not in body:
            return None
        value = body[name]
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise ValidationError(name, f"must be an integer between {lo} and {hi}")
        return value

    price = price_like("price", nullable=False)
    locked = body.get("locked")
    if locked is not None and not isinstance(locked, bool):
        raise ValidationError("locked", "must be true or false")
    reason = body.get("lock_reason", "")
    if not isinstance(reason, str) or len(reason) > MAX_LOCK_REASON:
        raise ValidationError("lock_reason", f"must be a string of <= {MAX_LOCK_REASON} chars")
    change = PriceStockChange(
        source=source,
        price=price if isinstance(price, float) else None,
        stock=integer("stock", 0, 1_000_000_000),
        stock_delta=integer("stock_delta", -1_000_000_000, 1_000_000_000),
        floor=price_like("floor", nullable=True),
        ceiling=price_like("ceiling", nullable=True),
        locked=locked,
        lock_reason=reason,
    )
    if change.stock is not None and change.stock_delta is not None:
        raise ValidationError("stock_delta", "give stock or stock_delta, not both")
    if source != "manual" and (change.floor, change.ceiling, change.locked) != (None, None, None):
        raise ValidationError("source", "floor, ceiling and locked can only be set by manual")
    if change.is_empty():
        raise ValidationError("body", "nothing to change")
    return change


# -- catalog_item -----------------------------------------------------------------------------


def catalog_item_args(ckeys: CatalogKeys, item_id: str, history_n: int) -> Args:
    return ckeys.item_keys(item_id), [history_n]


@dataclass(frozen=True)
class ItemView:
    doc: dict[str, Any]  # the product document without its vectors
    floor: float | None
    ceiling: float | None
    locked: bool
    lock_reason: str
    price_history: list[tuple[int, float]]  # (ts ms, price), newest first


def parse_item(reply: Sequence[Any]) -> ItemView | None:
    raw = _text(reply[0])
    if not raw:
        return None
    doc = json.loads(raw)
    doc.pop("vec", None)
    rest = reply[5:]
    return ItemView(
        doc=doc,
        floor=_opt_float(reply[1]),
        ceiling=_opt_float(reply[2]),
        locked=int(reply[3]) == 1,
        lock_reason=_text(reply[4]),
        price_history=[(int(rest[i]), float(_text(rest[i + 1]))) for i in range(0, len(rest), 2)],
    )


def catalog_item(
    client: redis.Redis, ckeys: CatalogKeys, item_id: str, history_n: int = 20
) -> ItemView | None:
    return parse_item(
        fcall_ro(client, "catalog_item", catalog_item_args(ckeys, item_id, history_n))
    )
