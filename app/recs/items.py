"""The recommender's in-process product attribute cache (category, price, stock, popularity,
creation time).

Product documents live in item slots (`p:{<item>}`), and a Function can read one slot only, so
`recommend` receives each candidate's attributes in ARGV from this cache instead of reading the
documents itself. The cache holds a compact tuple per product (~150 B: 100k products ~15 MB):

- a full load at start (SCAN of `p:{*}` + pipelined JSON.GET of the few fields needed), then
  every `full_reload_s` (catches deletions);
- in between, every `refresh()` asks the search index for documents whose `updated_ms` moved
  (`FT.SEARCH <alias> @updated_ms:[<newest seen> +inf]`): a price or stock change made through
  `catalog_update` reaches the recommender within one refresh interval (1 s in the app).
  Without a search index only the periodic full load (`full_reload_s`) sees changes.

Guard flags: a product is flagged (e.g. `age`) when its category or one of its tags is listed in
`RecConfig.restricted_categories` / `restricted_tags`; `recommend` drops flagged items unless
the shopper has the trait the flag requires (`RecConfig.guards`).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import redis

from app.catalog.index import CatalogKeys, is_missing_index, json_reply, redis_cmd, scan_docs

FIELDS = (
    "$.category", "$.price", "$.in_stock", "$.popularity", "$.title", "$.tags", "$.created_ms",
)  # fmt: skip
PAGE = 1000


class ItemAttr(NamedTuple):
    """A tuple of atomic values: CPython's cyclic GC stops tracking such tuples, so a cache of
    100k products adds nothing to the full collections' pauses."""

    category: str
    price: float
    in_stock: bool
    popularity: float
    title: str
    flags: tuple[str, ...] = ()
    created_ms: int = 0  # when the product was created (0: unknown, never a new arrival)


def _first(got: Mapping[str, Any], path: str, default: Any) -> Any:
    values = got.get(path)
    if isinstance(values, list) and values:
        return values[0]
    return default


def new_arrival(created_ms: int, now_ms: int, window_ms: int, half_life_ms: int) -> float:
    """A product's new-arrival value: 2^(-age / half_life_ms) when it was created within
    `window_ms` before `now_ms`, else 0 (also for one created after `now_ms`: it did not exist
    yet, and for an unknown creation time)."""
    age = now_ms - created_ms
    if created_ms <= 0 or age < 0 or age > window_ms:
        return 0.0
    return float(2.0 ** (-age / half_life_ms))


def _float(value: Any) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return 0.0
    return f if math.isfinite(f) else 0.0


class ItemCatalog:
    """Thread-safe attribute cache for one key prefix (see the module docstring)."""

    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        *,
        restricted_categories: Mapping[str, str] | None = None,
        restricted_tags: Mapping[str, str] | None = None,
        full_reload_s: float = 600.0,
    ) -> None:
        self.client = client
        self.ckeys = CatalogKeys(prefix)
        self.restricted_categories = dict(restricted_categories or {})
        self.restricted_tags = {t.lower(): f for t, f in (restricted_tags or {}).items()}
        self.full_reload_s = full_reload_s
        self._items: dict[str, ItemAttr] = {}
        self._log_pop_max = 0.0
        self._watermark = 0
        self._loaded_at = 0.0
        self._lock = threading.Lock()

    # -- reads --------------------------------------------------------------------------------
    def get(self, item: str) -> ItemAttr | None:
        return self._items.get(item)

    def __len__(self) -> int:
        return len(self._items)

    @property
    def loaded(self) -> bool:
        return self._loaded_at > 0

    def popularity(self, attr: ItemAttr) -> float:
        """0..1: log(1 + popularity) relative to the catalog's most popular product."""
        if self._log_pop_max <= 0:
            return 0.0
        return min(1.0, math.log1p(max(attr.popularity, 0.0)) / self._log_pop_max)

    def most_popular(self, n: int) -> list[tuple[str, float]]:
        """The catalog's own popularity ranking (in stock only): the last-resort fallback."""
        items = [(i, a.popularity) for i, a in self._items.items() if a.in_stock]
        items.sort(key=lambda x: (-x[1], x[0]))
        return items[:n]

    # -- loading ------------------------------------------------------------------------------
    def _attr(self, got: Mapping[str, Any]) -> ItemAttr:
        category = str(_first(got, "$.category", "") or "")
        tags = _first(got, "$.tags", []) or []
        flags = set()
        if category in self.restricted_categories:
            flags.add(self.restricted_categories[category])
        if isinstance(tags, list):
            for tag in tags:
                flag = self.restricted_tags.get(str(tag).lower())
                if flag:
                    flags.add(flag)
        return ItemAttr(
            category=category,
            price=_float(_first(got, "$.price", 0.0)),
            in_stock=_first(got, "$.in_stock", True) is not False,
            popularity=_float(_first(got, "$.popularity", 0.0)),
            title=str(_first(got, "$.title", "") or ""),
            flags=tuple(sorted(flags)),
            created_ms=int(_float(_first(got, "$.created_ms", 0))),
        )

    def _fetch(self, items: Iterable[str]) -> dict[str, ItemAttr | None]:
        items = list(items)
        pipe = self.client.pipeline(transaction=False)
        for item in items:
            redis_cmd(pipe, "JSON.GET", self.ckeys.doc(item), *FIELDS)
        out: dict[str, ItemAttr | None] = {}
        for item, raw in zip(items, pipe.execute(), strict=True):
            out[item] = None if raw is None else self._attr(json_reply(raw))
        return out

    def _install(self, items: dict[str, ItemAttr], *, replace: bool) -> None:
        with self._lock:
            merged = items if replace else {**self._items, **items}
            top = max((a.popularity for a in merged.values()), default=0.0)
            self._items = merged
            self._log_pop_max = math.log1p(max(top, 0.0))

    def full_load(self) -> int:
        """Read every product document of the prefix; returns the number of products."""
        started_ms = int(time.time() * 1000)
        items: dict[str, ItemAttr] = {}
        batch: list[str] = []
        for key in scan_docs(self.client, self.ckeys):
            batch.append(self.ckeys.item_of(key))
            if len(batch) >= PAGE:
                items.update({i: a for i, a in self._fetch(batch).items() if a is not None})
                batch = []
        if batch:
            items.update({i: a for i, a in self._fetch(batch).items() if a is not None})
        self._install(items, replace=True)
        # Documents updated while we scanned are picked up by the next incremental refresh.
        self._watermark = max(self._watermark, started_ms - 5_000)
        self._loaded_at = time.monotonic()
        return len(items)

    def _changed_since(self, watermark: int) -> list[tuple[str, int]] | None:
        """(item, updated_ms) of documents updated at or after `watermark`; None: no index."""
        out: list[tuple[str, int]] = []
        offset = 0
        while True:
            try:
                reply = redis_cmd(
                    self.client, "FT.SEARCH", self.ckeys.alias,
                    f"@updated_ms:[{watermark} +inf]", "RETURN", 2, "item_id", "updated_ms",
                    "SORTBY", "updated_ms", "ASC", "LIMIT", offset, PAGE, "DIALECT", 2,
                )  # fmt: skip
            except redis.ResponseError as exc:
                if is_missing_index(exc):
                    return None
                raise
            page = _search_rows(reply)
            for values in page:
                if "item_id" in values:
                    out.append((values["item_id"], int(_float(values.get("updated_ms", 0)))))
            if len(page) < PAGE:
                return out
            offset += PAGE

    def refresh(self) -> int:
        """Incremental refresh (or a full load when due); returns the products (re)read."""
        if not self.loaded or time.monotonic() - self._loaded_at > self.full_reload_s:
            return self.full_load()
        changed = self._changed_since(self._watermark)
        if not changed:  # None: no search index, so only the periodic full load sees changes
            return 0
        got = self._fetch(item for item, _ in changed)
        self._install({i: a for i, a in got.items() if a is not None}, replace=False)
        gone = [i for i, a in got.items() if a is None]
        if gone:
            with self._lock:
                self._items = {i: a for i, a in self._items.items() if i not in gone}
        self._watermark = max(ts for _, ts in changed)
        return len(changed)


def _search_rows(reply: Any) -> list[dict[str, str]]:
    """The returned fields of each FT.SEARCH result: RESP3 map or RESP2 flat list."""
    rows: list[dict[str, str]] = []
    if isinstance(reply, dict):
        results: Any = reply.get(b"results") or reply.get("results") or []
        for r in results:
            attrs = r.get(b"extra_attributes", r.get("extra_attributes", {})) or {}
            rows.append({_s(k): _s(v) for k, v in attrs.items()})
    elif isinstance(reply, list):
        for fields in reply[2::2]:
            rows.append({_s(fields[j]): _s(fields[j + 1]) for j in range(0, len(fields) - 1, 2)})
    return rows


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
