"""Python mirror of the session logic of lua/10_ingest_user.lua, for bench/ingest.py's raw
baseline: the same reads (hot projection, cart, full maps), the same decisions and the same
document or merge patch, computed in Python instead of Lua. Keep it in step with the Lua (the
bench's parity and state checks fail otherwise)."""

from __future__ import annotations

import json
from typing import Any

ITEM_EVENTS = frozenset({"view", "click", "add_to_cart", "purchase"})
CART_EVENTS = frozenset({"add_to_cart", "remove_from_cart", "purchase"})
COVIEW_EVENTS = frozenset({"view", "click", "add_to_cart"})
TYPE_ORDER = ("view", "click", "add_to_cart", "remove_from_cart", "purchase", "search")
MAINT_EVERY_MS = 600_000
MAINT_EVENTS = 256
TTL_EVERY_MS = 60_000
HOT_PATH = "$['session_id','last_ts','counters','head','bhead','m']"
MAPS = ("recent", "purchased", "searches")


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def decode_hot(raw: Any) -> dict[str, Any] | None:
    if not raw:
        return None
    try:
        v = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(v, list) or len(v) != 6 or not isinstance(v[5], dict) or "seq" not in v[5]:
        return None
    m = v[5]
    return {
        "sid": v[0], "last_ts": v[1], "counters": v[2], "head": v[3], "bhead": v[4],
        "seq": m["seq"], "added": [m["ra"], m["pa"], m["sa"]], "maint_ts": m["maint_ts"],
        "maint_n": m["maint_n"], "ttl_ts": m["ttl_ts"], "ttl_set": m["ttl_set"],
    }  # fmt: skip


def newest(entries: dict[str, list[Any]], size: float) -> list[list[Any]]:
    rows = [[item, e[0], e[-1]] for item, e in entries.items()]
    rows.sort(key=lambda r: (r[1], r[2]), reverse=True)
    return rows[: int(size)] if size != float("inf") else rows


def needs(hot: dict[str, Any], accepted: list[dict[str, Any]]) -> tuple[bool, bool]:
    """(cart, maps): what the events need read beyond the hot projection."""
    need_cart = need_maps = False
    for ev in accepted:
        if ev["type"] in CART_EVENTS:
            need_cart = True
        if ev["session_id"] != "" and ev["session_id"] != hot["sid"] and ev["ts"] >= hot["last_ts"]:
            need_cart = True
        elif ev["ts"] < hot["last_ts"]:
            need_maps = True
    return need_cart, need_maps


class SessionState:
    def __init__(self, hot: dict[str, Any] | None, now: int, first_ts: int) -> None:
        self.cart: dict[str, dict[str, Any]] = {}
        self.cart_dirty: set[str] = set()
        self.reset = False
        self.new_doc = hot is None
        if hot is not None:
            self.__dict__.update(hot)
            self.started_ts: int | None = None
            self.known: dict[str, dict[str, list[Any]]] = {n: {} for n in MAPS}
            self.changes: dict[str, dict[str, list[Any]]] = {n: {} for n in MAPS}
            self.deleted: dict[str, set[str]] = {n: set() for n in MAPS}
            self.maps_known = False
            self.counters_changed: set[str] = set()
            self.heads_changed = False
            self.added0, self.ttl_set0 = list(self.added), self.ttl_set
            self.maint = now - self.maint_ts >= MAINT_EVERY_MS or self.maint_n >= MAINT_EVENTS
        else:
            self.start_session("", first_ts)
            self.maps_known = True
            self.maint_ts, self.maint_n, self.ttl_ts, self.ttl_set = now, 0, now, ""
            self.added0, self.ttl_set0 = [0, 0, 0], ""
            self.maint = True
        self.ttl_refreshed = False

    def start_session(self, sid: str, ts: int) -> None:
        self.reset = True
        self.sid, self.started_ts, self.last_ts = sid, ts, ts
        self.counters: dict[str, int] = {}
        self.head: list[list[Any]] = []
        self.bhead: list[list[Any]] = []
        self.seq, self.added = 0, [0, 0, 0]
        self.known = {n: {} for n in MAPS}
        self.changes = {n: {} for n in MAPS}
        self.deleted = {n: set() for n in MAPS}
        self.counters_changed = set()
        self.heads_changed = True

    def rollover(self, sid: str, ts: int) -> None:
        cart = self.cart
        self.start_session(sid, ts)
        self.cart = cart
        self.maps_known = True
        self.maint = True
        self.cart_dirty |= set(cart)

    def current_map(self, name: str) -> dict[str, list[Any]]:
        out = {k: e for k, e in self.known[name].items() if k not in self.deleted[name]}
        out.update(self.changes[name])
        return out

    def put_entry(self, name: str, key: str, entry: list[Any], late: bool) -> bool:
        if late:
            cur = self.changes[name].get(key)
            if cur is None and key not in self.deleted[name]:
                cur = self.known[name].get(key)
            if cur is not None and cur[0] >= entry[0]:
                return False
        self.changes[name][key] = entry
        self.deleted[name].discard(key)
        return True

    @staticmethod
    def head_front(head: list[list[Any]], item: str, ts: int, size: int) -> None:
        head[:] = [row for row in head if row[0] != item]
        head.insert(0, [item, ts])
        del head[size:]

    @staticmethod
    def collect_pairs(out: list[tuple[str, str, str]], head: list[list[Any]], item: str, ts: int,
                      kind: str, window: int, limit: int) -> None:  # fmt: skip
        n = 0
        for row in head:
            if n >= limit:
                break
            if row[0] != item and abs(row[1] - ts) <= window:
                out.append((row[0], item, kind))
                n += 1

    def trim_cart(self, cap: int) -> None:
        while len(self.cart) > cap:
            oldest = min(self.cart, key=lambda item: (self.cart[item]["ts"], item))
            del self.cart[oldest]
            self.cart_dirty.add(oldest)

    def apply_event(self, ev: dict[str, Any], cfg: Any, pairs_out: list[Any]) -> None:
        etype, ts = ev["type"], ev["ts"]
        self.counters[etype] = self.counters.get(etype, 0) + 1
        self.counters_changed.add(etype)
        late = ts < self.last_ts
        self.last_ts = max(self.last_ts, ts)
        if etype == "search":
            if ev["query"] and self.put_entry("searches", ev["query"], [ts, self.seq + 1], late):
                self.seq += 1
                self.added[2] += 1
            return
        head_size = cfg.co_recent_n + 1
        for it in ev["items"]:
            item = it["item"]
            if etype in COVIEW_EVENTS:
                self.collect_pairs(pairs_out, self.head, item, ts, "v", cfg.co_window_ms,
                                   cfg.co_recent_n)  # fmt: skip
            elif etype == "purchase":
                self.collect_pairs(pairs_out, self.bhead, item, ts, "b", cfg.co_window_ms,
                                   cfg.co_recent_n)  # fmt: skip
            if etype == "add_to_cart":
                line = self.cart.get(item) or {"qty": 0, "price": it["price"], "ts": ts}
                line["qty"] += max(it["qty"], 1)
                if ts >= line["ts"]:
                    line["price"], line["ts"] = it["price"], ts
                self.cart[item] = line
                self.cart_dirty.add(item)
                self.trim_cart(cfg.cart_cap)
            elif etype == "remove_from_cart":
                line = self.cart.get(item)
                if line is not None:
                    line["qty"] -= max(it["qty"], 1)
                    if line["qty"] <= 0:
                        del self.cart[item]
                    self.cart_dirty.add(item)
            elif etype == "purchase":
                if item in self.cart:
                    del self.cart[item]
                    self.cart_dirty.add(item)
                if self.put_entry("purchased", item, [ts, self.seq + 1], late):
                    self.seq += 1
                    self.added[1] += 1
                    if late:
                        rows = newest(self.current_map("purchased"), head_size)
                        self.bhead = [r[:2] for r in rows]
                    else:
                        self.head_front(self.bhead, item, ts, head_size)
                    self.heads_changed = True
            if etype in ITEM_EVENTS and self.put_entry(
                "recent", item, [ts, etype, self.seq + 1], late
            ):
                self.seq += 1
                self.added[0] += 1
                if late:
                    self.head = [r[:2] for r in newest(self.current_map("recent"), head_size)]
                else:
                    self.head_front(self.head, item, ts, head_size)
                self.heads_changed = True

    def trim_map(self, name: str, cap: int) -> None:
        for row in newest(self.current_map(name), float("inf"))[cap:]:
            self.changes[name].pop(row[0], None)
            if row[0] in self.known[name]:
                self.deleted[name].add(row[0])

    def to_json(self) -> str:
        """The whole document (new session) or the merge patch (only what changed), as the Lua
        writes it."""
        doc: dict[str, Any] = {}
        if self.reset:
            doc["session_id"], doc["started_ts"] = self.sid, self.started_ts
        doc["last_ts"] = self.last_ts
        if self.reset:
            doc["counters"] = dict(self.counters)
        else:
            doc["counters"] = {t: self.counters[t] for t in self.counters_changed}
        for name in MAPS:
            if self.reset or self.changes[name] or self.deleted[name]:
                part: dict[str, Any] = dict(self.changes[name])
                part.update({k: None for k in self.deleted[name]})
                doc[name] = part
        if self.reset:
            doc["cart"] = self.cart
        elif self.cart_dirty:
            doc["cart"] = {i: self.cart.get(i) for i in self.cart_dirty}
        if self.heads_changed:
            doc["head"], doc["bhead"] = self.head, self.bhead
        m: dict[str, Any] = {"seq": self.seq, "maint_n": self.maint_n}
        for i, field in enumerate(("ra", "pa", "sa")):
            if self.reset or self.added[i] != self.added0[i]:
                m[field] = self.added[i]
        if self.reset or self.maint:
            m["maint_ts"], m["ttl_set"] = self.maint_ts, self.ttl_set
        if self.reset or self.ttl_refreshed:
            m["ttl_ts"] = self.ttl_ts
        if self.ttl_set != self.ttl_set0:
            m["ttl_set"] = self.ttl_set
        doc["m"] = m
        return _dumps(doc)
