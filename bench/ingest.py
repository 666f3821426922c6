"""Ingestion benchmark: events/s through `Ingestor.ingest`, and the server cost of the Functions
against the same Redis commands sent without Lua.

Run from the repo root: `.venv/bin/python -m bench.ingest [--events N] [--quick]`.
With REDIS_URL unset an embedded Redis Stack (AOF everysec, as in production) is started in a
temporary folder; with REDIS_URL set that server is used under a unique key prefix (its
commandstats are reset, so use a server nothing else is using).

Workload (deterministic, `--seed`): `--users` shoppers (20% anonymous) with Zipf(0.8) activity,
`--items` items in 40 categories with Zipf(1.0) popularity and log-normal prices. Event mix:
view 70%, click 10%, search 8%, add_to_cart 7%, purchase 3% (1-3 lines), remove_from_cart 2%;
clicks/carts/purchases mostly pick an item the shopper viewed or carted before. Timestamps
increase over the last two hours (new session after 30 min idle), event ids are unique.

Phases (each on fresh keys under its own sub-prefix; on the embedded server automatic AOF
rewrites are turned off and the AOF is rewritten between phases instead, so a rewrite's fork and
copy-on-write never land in one phase only by chance; appends and fsync stay on):
  A. `Ingestor.ingest` over pre-parsed `Event`s in batches of `--batch`: events/s, p50/p99 ms
     per call; server usec from INFO commandstats (CONFIG RESETSTAT first): the Function figure
     is `cmdstat_fcall` usec only (commands a Function runs are ALSO counted under their own
     names on Redis 7.4, so those entries are printed as a breakdown, never added to it; what
     remains of the fcall usec is the Lua work itself, shown as "Lua + call glue").
  A2. The same events from `--threads` (2) threads of this process, batches in parallel:
     events/s when Python's work overlaps the server's (2 cores here).
  B. The same events as dicts, `parse_event` inside the timed loop (events/s with validation).
  C. Raw baseline on the first `--sample` events of A (same batches, same initial state): a
     Python mirror (`RawMirror`) of lua/10_ingest_user.lua and lua/20_ingest_aggregates.lua. It
     takes the very (KEYS, ARGV) that `app.redis.calls` builds, computes in Python what the Lua
     computes (dedup outcome from the ZADD replies, session document, co-occurrence pairs,
     per-key sums) and sends the same commands with the same arguments from pipelines:
     - per ingest_user call: TIME; per user: JSON.GET <session> $; ZADD <dedup> NX <now> <id>
       per event; per accepted item event with a weight, ZINCRBY <aff> for 'cat:<c>' and for
       'price:<band>'; JSON.SET <session> $ <doc> + EXPIRE; BF.INSERT <seen> CAPACITY .. ERROR
       .. NONSCALING ITEMS .. + EXPIRE; EXPIRE <aff>; ZREMRANGEBYSCORE <dedup>; ZCARD <dedup>
       (+ ZREMRANGEBYRANK beyond the cap); PEXPIRE <dedup>.
     - per ingest_aggregates call: GET <wm> (+ SET when it advances); XADD <log> MAXLEN ~ ..
       type user data per event; per Top-K hour bucket EXISTS (+ TOPK.RESERVE), TOPK.INCRBY
       with the summed counts, EXPIRE; per CMS key EXISTS (+ CMS.INITBYDIM), CMS.INCRBY; per
       item series EXISTS (+ EXISTS, TS.CREATE x2, TS.CREATERULE), TS.ADD .. ON_DUPLICATE SUM
       per minute (oldest first), EXPIRE on both series; ZINCRBY per pair direction; per
       co-occurrence key ZCARD (+ ZREMRANGEBYRANK beyond co_cap) and EXPIRE.
     - plus the same client-side UNLINK of stale trend buckets as `Ingestor` (not counted).
     Replies the Lua branches on (JSON.GET, ZADD, GET, EXISTS, ZCARD) come back in a first
     pipeline, the writes go in a second. The per-command call counts of A's sample and of C
     are compared and printed ("command parity"); `--verify` (on in --quick) also replays the
     sample through the Functions on fresh keys and compares sessions, affinities,
     co-occurrence sets and the log length with the mirror's.
     raw_us_per_event = sum of commandstats usec over those commands / events;
     ratio = raw_us_per_event / fcall usec per event over the same events in A.
     Commandstats usec covers command execution only: the per-command protocol parsing and
     reply writing that the Functions save are not in the raw figure, so the server main-thread
     CPU per event (INFO cpu) of both is printed as well, with its own ratio.

`--lua-dir DIR` loads another copy of the Functions sources (to measure a Lua change; the
mirror still mirrors the repo's Lua). `--profile` adds a cProfile run of phase A.
The last line printed is one JSON object (see the end of `run`).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import pstats
import random
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import redis

from app.catalog.search import price_band  # (mirror of the Lua price bands)
from app.core.events import Event, parse_event
from app.core.keys import Keys
from app.core.settings import EngineConfig
from app.core.units import MINUTE_MS
from app.ingest.ingestor import Ingestor
from app.redis import calls
from bench._common import (
    HOUSEKEEPING,
    commandstats,
    emit_json,
    percentile,
    redis_target,
    server_cpu_s,
    settle_aof,
)
from bench._session_mirror import (
    HOT_PATH,
    ITEM_EVENTS,
    MAINT_EVERY_MS,
    MAPS,
    TTL_EVERY_MS,
    SessionState,
    decode_hot,
    needs,
)

ROOT = Path(__file__).resolve().parent.parent

TYPE_MIX = (
    ("view", 0.70), ("click", 0.10), ("search", 0.08), ("add_to_cart", 0.07),
    ("purchase", 0.03), ("remove_from_cart", 0.02),
)  # fmt: skip
N_CATEGORIES = 40
SESSION_GAP_MS = 30 * 60 * 1000
SPAN_MS = 2 * 3_600_000
WORDS = (
    "red", "blue", "white", "black", "green", "mug", "candle", "lantern", "heart", "bag", "tin",
    "box", "cake", "stand", "jar", "vintage", "retro", "paper", "garden", "party", "set", "glass",
    "metal", "wooden", "christmas", "doormat", "clock",
)  # fmt: skip


# -- workload --------------------------------------------------------------------------------


def _zipf_weights(n: int, s: float) -> list[float]:
    return [1.0 / (rank**s) for rank in range(1, n + 1)]


def generate(n_events: int, n_users: int, n_items: int, seed: int) -> list[dict[str, Any]]:
    """Raw event dicts as a client would POST them, ts increasing up to ~now."""
    rng = random.Random(seed)
    run = f"{seed:x}{int(time.time()):x}"
    cats = [f"cat{c:02d}" for c in range(N_CATEGORIES)]
    items = []
    by_cat: dict[str, list[int]] = defaultdict(list)
    for i in range(n_items):
        cat = cats[min(int(rng.paretovariate(1.2)) - 1, N_CATEGORIES - 1)]
        price = round(min(max(rng.lognormvariate(1.6, 0.9), 0.19), 500.0), 2)
        items.append((f"SKU{i:05d}", cat, price))
        by_cat[cat].append(i)
    item_w = _zipf_weights(n_items, 1.0)
    users = []
    for u in range(n_users):
        if rng.random() < 0.2:
            users.append(("anonymous_id", f"a{u:06d}x{run}"))
        else:
            users.append(("user_id", f"u{u:06d}"))
    rng.shuffle(users)
    user_w = _zipf_weights(n_users, 0.8)
    queries = [" ".join(rng.sample(WORDS, rng.randint(1, 3))) for _ in range(500)]
    query_w = _zipf_weights(len(queries), 1.0)
    types = [t for t, _ in TYPE_MIX]
    type_w = [w for _, w in TYPE_MIX]

    picked_users = rng.choices(range(n_users), weights=user_w, k=n_events)
    picked_types = rng.choices(types, weights=type_w, k=n_events)
    popular = rng.choices(range(n_items), weights=item_w, k=n_events)
    state: dict[int, dict[str, Any]] = {}
    start = int(time.time() * 1000) - SPAN_MS - 1000
    out: list[dict[str, Any]] = []
    for n in range(n_events):
        u = picked_users[n]
        ts = start + n * SPAN_MS // n_events
        st = state.get(u)
        if st is None:
            fav = rng.sample(cats[:12], 2)
            st = state[u] = {"fav": fav, "last": ts, "sess": 0, "viewed": [], "cart": []}
        if ts - st["last"] > SESSION_GAP_MS:
            st["sess"] += 1
            st["viewed"].clear()
        st["last"] = ts
        id_field, uid = users[u]
        ev: dict[str, Any] = {
            "event_id": f"{run}-{n}",
            "type": picked_types[n],
            id_field: uid,
            "session_id": f"{uid}-s{st['sess']}",
            "ts": ts,
        }
        etype = ev["type"]
        if etype == "search":
            q = rng.choices(queries, weights=query_w)[0]
            ev["props"] = {"query": q, "surface": "search_box"}
            out.append(ev)
            continue
        if etype == "remove_from_cart" and not st["cart"]:
            etype = ev["type"] = "view"
        if etype == "view":
            if rng.random() < 0.6:
                idx = rng.choice(by_cat[rng.choice(st["fav"])] or [popular[n]])
            else:
                idx = popular[n]
            st["viewed"].append(idx)
            del st["viewed"][:-20]
        elif etype == "remove_from_cart":
            idx = st["cart"].pop(rng.randrange(len(st["cart"])))
        elif st["viewed"] and rng.random() < 0.8:
            idx = rng.choice(st["viewed"])
        else:
            idx = popular[n]
        if etype == "purchase":
            lines = list(dict.fromkeys([*st["cart"][:2], idx]))[: rng.randint(1, 3)]
            st["cart"] = [x for x in st["cart"] if x not in lines]
            ev["items"] = [
                {"item_id": items[i][0], "qty": rng.randint(1, 3), "price": items[i][2],
                 "category": items[i][1]}
                for i in lines
            ]  # fmt: skip
            ev["props"] = {"surface": "checkout"}
        else:
            if etype == "add_to_cart":
                st["cart"].append(idx)
            ev["item_id"] = items[idx][0]
            ev["qty"] = 1
            ev["props"] = {"price": items[idx][2], "category": items[idx][1]}
        out.append(ev)
    return out


# -- raw baseline: the Functions' command sequence from pipelines ---------------------------


def _lua_num(x: float) -> str:
    """Lua's tostring() of a number (%.14g)."""
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else format(x, ".14g")


class RawMirror:
    """Sends the commands `ingest_user` + `ingest_aggregates` would run, without Lua."""

    def __init__(self, client: redis.Redis, cfg: EngineConfig) -> None:
        self.client = client
        self.cfg = cfg
        self.keys = Keys(cfg.key_prefix)
        self.weights = dict(cfg.weights)
        self.splitter = Ingestor(client, cfg)  # same per-call user split as the real path
        # Config fields come first in both ARGV layouts: count them from empty calls.
        self.user_header = len(calls.ingest_user_args(cfg, self.keys, [])[1]) - 1
        self.agg_header = len(calls.ingest_aggregates_args(cfg, self.keys, [], [])[1]) - 2

    def ingest(self, events: Sequence[Event]) -> int:
        by_user: dict[str, list[int]] = defaultdict(list)
        for i, ev in enumerate(events):
            by_user[ev.identity].append(i)
        call_users = self.splitter._user_calls(by_user, events)
        accepted: list[Event] = []
        pairs: list[tuple[str, str, str, float]] = []
        for users in call_users:
            groups = [[events[i] for i in by_user[u]] for u in users]
            keys, argv = calls.ingest_user_args(self.cfg, self.keys, groups)
            accepted_groups, call_pairs = self._user_call(keys, argv, groups)
            accepted += accepted_groups
            pairs += call_pairs
        if accepted:
            accepted.sort(key=lambda ev: ev.ts)  # as Ingestor.ingest does
            keys, argv = calls.ingest_aggregates_args(self.cfg, self.keys, accepted, pairs)
            old_wm, new_wm = self._aggregates_call(keys, argv)
            # Same client-side clean-up as the real path (UNLINK, outside the Functions).
            self.splitter._drop_stale_trend_buckets(old_wm, new_wm)
        return len(accepted)

    def _trim_over_cap(self, zcard_at: list[tuple[int, str]], replies: list[Any], cap: int) -> None:
        """ZREMRANGEBYRANK the sorted sets whose ZCARD (at those reply positions) exceeds `cap`,
        as the Lua does after its ZCARD."""
        over = [key for at, key in zcard_at if int(replies[at]) > cap]
        if over:
            pipe = self.client.pipeline(transaction=False)
            for key in over:
                pipe.execute_command("ZREMRANGEBYRANK", key, 0, -(cap + 1))
            pipe.execute()

    # ingest_user ----------------------------------------------------------------------------
    def _user_call(
        self, keys: list[str], argv: list[Any], groups: list[list[Event]]
    ) -> tuple[list[Event], list[tuple[str, str, str, float]]]:
        cfg = self.cfg
        # The events are read back from ARGV as the Lua does (checks the layout we mirror).
        pos = self.user_header  # ARGV index of n_groups (0-based), config fields before it
        assert int(argv[pos]) == len(groups) and len(keys) == 4 * len(groups)
        pos += 1
        parsed: list[list[dict[str, Any]]] = []
        for _g in groups:
            n_events = int(argv[pos])
            pos += 1
            evs = []
            for _ in range(n_events):
                ev = {
                    "id": argv[pos], "type": argv[pos + 1], "session_id": argv[pos + 2],
                    "ts": int(argv[pos + 3]), "query": argv[pos + 4], "items": [],
                }  # fmt: skip
                n_items = int(argv[pos + 5])
                pos += 6
                for _i in range(n_items):
                    ev["items"].append(
                        {"item": argv[pos], "qty": float(argv[pos + 1]),
                         "price": float(argv[pos + 2]), "category": argv[pos + 3]}
                    )  # fmt: skip
                    pos += 4
                evs.append(ev)
            parsed.append(evs)
        now = int(time.time() * 1000)

        # Round 1: what the Lua reads first (TIME, the hot projections, the dedup ZADDs).
        reads = self.client.pipeline(transaction=False)
        reads.execute_command("TIME")
        reads.execute_command("JSON.MGET", *[keys[4 * g] for g in range(len(parsed))], HOT_PATH)
        for g, evs in enumerate(parsed):
            for ev in evs:
                reads.execute_command("ZADD", keys[4 * g + 1], "NX", now, ev["id"])
        replies = reads.execute()
        hots = replies[1]
        r = 2
        accepted_by_group: list[list[dict[str, Any]]] = []
        accepted_events: list[Event] = []
        for g, evs in enumerate(parsed):
            accepted = []
            for i, ev in enumerate(evs):
                if replies[r] == 1:
                    accepted.append(ev)
                    accepted_events.append(groups[g][i])
                r += 1
            accepted.sort(key=lambda e: e["ts"])
            accepted_by_group.append(accepted)

        # Round 2: cart / full maps where the events need them (as session_state does).
        states: list[SessionState | None] = []
        reads = self.client.pipeline(transaction=False)
        wanted: list[tuple[SessionState, str]] = []
        for g, accepted in enumerate(accepted_by_group):
            if not accepted:
                states.append(None)
                continue
            hot = decode_hot(hots[g])
            st = SessionState(hot, now, accepted[0]["ts"])
            states.append(st)
            if hot is not None:
                need_cart, need_maps = needs(hot, accepted)
                paths = (["$.cart"] if need_cart else []) + (
                    [f"$.{n}" for n in MAPS] if need_maps else []
                )
                st.maps_known = need_maps
                for path in paths:
                    reads.execute_command("JSON.GET", keys[4 * g], path)
                    wanted.append((st, path))
        for (st, path), raw in zip(wanted, reads.execute() if wanted else [], strict=True):
            found = json.loads(raw) if raw else []
            value = found[0] if found else {}
            if path == "$.cart":
                st.cart = value
            else:
                st.known[path[2:]] = value

        out_pairs: list[tuple[str, str, str, float]] = []
        caps = (cfg.recent_cap, cfg.recent_cap, cfg.searches_cap)
        per_group: list[dict[str, Any]] = []
        trim_reads: list[tuple[SessionState, str]] = []
        for g, accepted in enumerate(accepted_by_group):
            st = states[g]
            dirty = False
            seen_items: list[str] = []
            aff_inc: dict[str, float] = {}
            for ev in accepted:
                assert st is not None
                pairs_out: list[tuple[str, str, str]] = []
                skip = False
                if st.new_doc and st.sid == "" and not dirty:
                    st.sid, st.started_ts, st.last_ts = ev["session_id"], ev["ts"], ev["ts"]
                elif st.sid != ev["session_id"] and ev["session_id"] != "":
                    if ev["ts"] >= st.last_ts:
                        st.rollover(ev["session_id"], ev["ts"])
                    else:
                        skip = True
                if not skip:
                    st.apply_event(ev, cfg, pairs_out)
                    dirty = True
                out_pairs += [(a, b, k, 1.0) for a, b, k in pairs_out]
                w = self.weights.get(ev["type"], 0)
                for it in ev["items"]:
                    if ev["type"] in ITEM_EVENTS:
                        seen_items.append(it["item"])
                    if w != 0:
                        inc = w * 2 ** ((ev["ts"] - cfg.aff_epoch_ms) / cfg.aff_half_life_ms)
                        members = ["cat:" + it["category"]] if it["category"] else []
                        band = price_band(it["price"])
                        if band is not None:
                            members.append("price:" + band)
                        for m in members:
                            aff_inc[m] = aff_inc.get(m, 0.0) + inc
            if dirty:
                assert st is not None
                for i, name in enumerate(MAPS):
                    if st.added[i] >= caps[i] and not st.maps_known:
                        trim_reads.append((st, name))
            per_group.append({"dirty": dirty, "seen": seen_items, "aff": aff_inc})

        # Round 3: full maps for the amortised trims (the Lua reads them before its write).
        if trim_reads:
            pipe = self.client.pipeline(transaction=False)
            for g_st, name in trim_reads:
                idx = states.index(g_st)
                pipe.execute_command("JSON.GET", keys[4 * idx], f"$.{name}")
            for (g_st, name), raw in zip(trim_reads, pipe.execute(), strict=True):
                g_st.known[name] = (json.loads(raw) or [{}])[0] if raw else {}

        writes = self.client.pipeline(transaction=False)
        zcard_at: list[tuple[int, str]] = []
        for g, accepted in enumerate(accepted_by_group):
            session, dedup, aff, seen = keys[4 * g : 4 * g + 4]
            st, info = states[g], per_group[g]
            maint = st is not None and st.maint
            flags = st.ttl_set if st is not None else ""
            fresh: set[str] = set()
            for m, inc in info["aff"].items():
                writes.execute_command("ZINCRBY", aff, _lua_num(inc), m)
            if info["aff"] and (maint or "a" not in flags):
                writes.execute_command("EXPIRE", aff, cfg.user_ttl_s)
                fresh.add("a")
            if info["seen"]:
                writes.execute_command(
                    "BF.INSERT", seen, "CAPACITY", cfg.bloom_capacity, "ERROR", cfg.bloom_error,
                    "NONSCALING", "ITEMS", *info["seen"],
                )  # fmt: skip
                if maint or "s" not in flags:
                    writes.execute_command("EXPIRE", seen, cfg.user_ttl_s)
                    fresh.add("s")
            if accepted:
                zcard_at.append((len(writes.command_stack), dedup))
                writes.execute_command("ZCARD", dedup)
                if maint or "d" not in flags:
                    writes.execute_command(
                        "ZREMRANGEBYSCORE", dedup, "-inf", f"({now - cfg.dedup_window_ms}"
                    )
                    writes.execute_command("PEXPIRE", dedup, cfg.dedup_window_ms + MAINT_EVERY_MS)
                    fresh.add("d")
            if info["dirty"]:
                assert st is not None
                for i, name in enumerate(MAPS):
                    if st.added[i] >= caps[i]:
                        st.trim_map(name, caps[i])
                        st.added[i] = 0
                if maint:
                    st.maint_ts, st.maint_n, st.ttl_set = now, 0, ""
                st.maint_n += len(accepted)
                for flag in ("a", "d", "s"):
                    if flag in fresh and flag not in st.ttl_set:
                        st.ttl_set += flag
                refresh_ttl = st.reset or maint or now - st.ttl_ts >= TTL_EVERY_MS
                if refresh_ttl:
                    st.ttl_ts, st.ttl_refreshed = now, True
                writes.execute_command(
                    "JSON.SET" if st.reset else "JSON.MERGE", session, "$", st.to_json()
                )
                if refresh_ttl:
                    writes.execute_command("EXPIRE", session, cfg.session_ttl_s)
        wreplies = writes.execute()
        self._trim_over_cap(zcard_at, wreplies, cfg.dedup_cap)
        return accepted_events, out_pairs

    # ingest_aggregates ---------------------------------------------------------------------
    def _aggregates_call(self, keys: list[str], argv: list[Any]) -> tuple[int, int]:
        cfg = self.cfg
        trend_window = int(argv[self.agg_header - 1])

        def key(idx: Any) -> str | None:
            return keys[int(idx) - 1] if int(idx) else None

        n_events = int(argv[self.agg_header])
        pos = self.agg_header + 1
        events = []
        for _ in range(n_events):
            ev = {
                "id": argv[pos], "type": argv[pos + 1], "user": argv[pos + 2],
                "ts": int(argv[pos + 3]), "payload": argv[pos + 4], "log": key(argv[pos + 5]),
                "wm": key(argv[pos + 6]), "items": [],
            }  # fmt: skip
            n_items = int(argv[pos + 7])
            pos += 8
            for _ in range(n_items):
                ev["items"].append(
                    {"item": argv[pos], "qty": float(argv[pos + 1]), "trend": key(argv[pos + 2]),
                     "cms": key(argv[pos + 3]), "ts": key(argv[pos + 4]),
                     "ts_hour": key(argv[pos + 5])}
                )  # fmt: skip
                pos += 6
            events.append(ev)
        n_pairs = int(argv[pos])
        pos += 1
        co_pairs = [
            (key(argv[pos + 3 * p]), argv[pos + 3 * p + 1], argv[pos + 3 * p + 2])
            for p in range(n_pairs)
        ]

        # The watermark is read first: it decides which events still count as trending.
        wm_key = next((ev["wm"] for ev in events if ev["wm"]), None)
        old_wm = new_wm = 0
        if wm_key is not None:
            old_wm = new_wm = int(self.client.execute_command("GET", wm_key) or 0)
            new_wm = max([new_wm] + [ev["ts"] for ev in events if ev["wm"]])

        trend: dict[str, dict[str, float]] = {}
        cms: dict[str, dict[str, float]] = {}
        series: dict[str, dict[int, float]] = {}
        hour_of: dict[str, str | None] = {}
        logs: list[list[Any]] = []
        for ev in events:
            if ev["log"]:
                logs.append(
                    ["XADD", ev["log"], "MAXLEN", "~", cfg.log_maxlen, "*", "type", ev["type"],
                     "user", ev["user"], "data", ev["payload"]]
                )  # fmt: skip
            trending_now = ev["ts"] >= new_wm - trend_window
            for it in ev["items"]:
                units = max(1, math.floor(it["qty"])) if ev["type"] == "purchase" else 1
                if it["trend"] and trending_now:
                    b = trend.setdefault(it["trend"], {})
                    b[it["item"]] = b.get(it["item"], 0) + units
                if it["cms"]:
                    b = cms.setdefault(it["cms"], {})
                    b[it["item"]] = b.get(it["item"], 0) + units
                if it["ts"]:
                    minute = ev["ts"] - ev["ts"] % MINUTE_MS
                    s = series.setdefault(it["ts"], {})
                    s[minute] = s.get(minute, 0) + units
                    hour_of[it["ts"]] = it["ts_hour"]

        reads = self.client.pipeline(transaction=False)
        for k in (*trend, *cms):
            reads.execute_command("EXISTS", k)
        exists = dict(zip((*trend, *cms), reads.execute(), strict=True))

        w = self.client.pipeline(transaction=False)
        for cmd in logs:
            w.execute_command(*cmd)
        if wm_key is not None and new_wm > old_wm:
            w.execute_command("SET", wm_key, new_wm)
        for k, members in trend.items():
            if not exists[k]:
                w.execute_command("TOPK.RESERVE", k, cfg.topk, 1000, 5, 0.925)
            flat = [x for m, n in members.items() for x in (m, _lua_num(n))]
            w.execute_command("TOPK.INCRBY", k, *flat)
            w.execute_command("EXPIRE", k, cfg.trend_ttl_s)
        for k, members in cms.items():
            if not exists[k]:
                w.execute_command("CMS.INITBYDIM", k, cfg.cms_width, 5)
            flat = [x for m, n in members.items() for x in (m, _lua_num(n))]
            w.execute_command("CMS.INCRBY", k, *flat)
        madd: list[Any] = []
        refs: list[tuple[str, int]] = []
        for k, minutes in series.items():
            for minute, n in sorted(minutes.items()):
                madd += [k, minute, _lua_num(n)]
                refs.append((k, minute))
        madd_at = len(w.command_stack)
        if madd:
            w.execute_command("TS.MADD", *madd)
        co_keys: dict[str, None] = {}
        for k, other, weight in co_pairs:
            w.execute_command("ZINCRBY", k, weight, other)
            co_keys[k] = None
        zcard_at = []
        for k in co_keys:
            zcard_at.append((len(w.command_stack), k))
            w.execute_command("ZCARD", k)
            w.execute_command("EXPIRE", k, cfg.item_ttl_s)
        wr = w.execute(raise_on_error=False)
        missing: dict[str, list[int]] = {}
        if madd:
            for (k, minute), r in zip(refs, wr[madd_at], strict=True):
                if isinstance(r, redis.ResponseError) and "not a TSDB key" in str(r):
                    missing.setdefault(k, []).append(minute)
        if missing:
            ex = self.client.pipeline(transaction=False)
            for k in missing:
                ex.execute_command("EXISTS", k)
            ex.execute()
            hours = [hour_of[k] for k in missing if hour_of[k]]
            hx = self.client.pipeline(transaction=False)
            for h in hours:
                hx.execute_command("EXISTS", h)
            hour_exists = dict(zip(hours, hx.execute(), strict=True))
            c = self.client.pipeline(transaction=False)
            for k, minutes_missing in missing.items():
                hour = hour_of[k]
                c.execute_command(
                    "TS.CREATE", k, "RETENTION", cfg.raw_retention_ms, "CHUNK_SIZE", 256,
                    "DUPLICATE_POLICY", "SUM",
                )  # fmt: skip
                if hour:
                    if not hour_exists[hour]:
                        c.execute_command(
                            "TS.CREATE", hour, "RETENTION", cfg.hour_retention_ms,
                            "CHUNK_SIZE", 256, "DUPLICATE_POLICY", "SUM",
                        )  # fmt: skip
                    c.execute_command("TS.CREATERULE", k, hour, "AGGREGATION", "sum", 3600000)
                for minute in minutes_missing:
                    c.execute_command("TS.ADD", k, minute, _lua_num(series[k][minute]))
            c.execute()
        self._trim_over_cap(zcard_at, wr, cfg.co_cap)
        return old_wm, new_wm


# -- phases ---------------------------------------------------------------------------------


def batches(seq: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]


def stats_delta(
    after: dict[str, dict[str, float]], before: dict[str, dict[str, float]] | None = None
) -> dict[str, dict[str, float]]:
    before = before or {}
    out = {}
    for name, v in after.items():
        b = before.get(name, {"calls": 0.0, "usec": 0.0})
        calls_, usec = v["calls"] - b["calls"], v["usec"] - b["usec"]
        if calls_ > 0 and name not in HOUSEKEEPING:
            out[name] = {"calls": calls_, "usec": usec}
    return out


def print_breakdown(title: str, stats: dict[str, dict[str, float]], n_events: int) -> None:
    fcall = stats.get("fcall", {"usec": 0.0})["usec"]
    inner = {k: v for k, v in stats.items() if k not in ("fcall", "fcall_ro")}
    inner_usec = sum(v["usec"] for v in inner.values())
    print(f"  {title}: per-command server time ({n_events} events)")
    print(f"    {'command':<22}{'calls':>10}{'usec':>12}{'us/call':>9}{'us/event':>10}{'share':>8}")
    base = fcall or inner_usec
    for name, v in sorted(inner.items(), key=lambda kv: -kv[1]["usec"]):
        print(
            f"    {name:<22}{int(v['calls']):>10}{int(v['usec']):>12}"
            f"{v['usec'] / v['calls']:>9.2f}{v['usec'] / n_events:>10.3f}"
            f"{100 * v['usec'] / base:>7.1f}%"
        )
    if fcall:
        lua = fcall - inner_usec
        print(
            f"    {'(Lua + call glue)':<22}{'':>10}{int(lua):>12}{'':>9}{lua / n_events:>10.3f}"
            f"{100 * lua / fcall:>7.1f}%"
        )
        print(
            f"    {'= fcall':<22}{int(stats['fcall']['calls']):>10}{int(fcall):>12}{'':>9}"
            f"{fcall / n_events:>10.3f}"
        )
    else:
        print(
            f"    {'= total':<22}{'':>10}{int(inner_usec):>12}{'':>9}{inner_usec / n_events:>10.3f}"
        )


def run(args: argparse.Namespace) -> dict[str, Any]:
    t_gen = time.perf_counter()
    dicts = generate(args.events, args.users, args.items, args.seed)
    t_parse = time.perf_counter()
    events = [parse_event(d) for d in dicts]
    t_done = time.perf_counter()
    n = len(events)
    n_users = len({ev.identity for ev in events})
    mix: dict[str, int] = defaultdict(int)
    for ev in events:
        mix[ev.type] += 1
    print(
        f"workload: {n} events, {n_users} distinct users, {args.items} items, batch {args.batch}, "
        f"users_per_call {args.users_per_call}; generated in {t_parse - t_gen:.1f}s, "
        f"parse_event {n / (t_done - t_parse):,.0f} events/s"
    )
    print("  mix: " + ", ".join(f"{t} {100 * c / n:.1f}%" for t, c in sorted(mix.items())))
    sample = min(args.sample, n)
    sample -= sample % args.batch if sample >= args.batch else 0
    sample = max(sample, min(args.batch, n))

    with redis_target("ingest", args.lua_dir) as target:
        client = target.client()
        info = client.info("server")
        print(
            f"server: Redis {info['redis_version']} at {target.url} "
            f"({'embedded, AOF everysec' if target.embedded else 'REDIS_URL'})"
        )

        def engine(sub: str) -> EngineConfig:
            return replace(
                EngineConfig(),
                key_prefix=f"{target.prefix}{sub}:",
                users_per_call=args.users_per_call,
            )

        # Warm-up on its own prefix (connection, Lua JIT-less VM, allocator).
        warm = Ingestor(client, engine("warm"))
        for b in batches(events[: min(n, 2 * args.batch)], args.batch):
            warm.ingest(b)

        # Phase A ------------------------------------------------------------------------
        if target.embedded:
            settle_aof(client)
        ing = Ingestor(client, engine("a"))
        chunks = batches(events, args.batch)
        lat: list[float] = []
        per_event_us: list[float] = []
        accepted = 0
        client.config_resetstat()
        cpu0 = server_cpu_s(client)
        sample_stats: dict[str, dict[str, float]] | None = None
        cpu_sample = 0.0
        done = 0
        paused = 0.0
        t0 = time.perf_counter()
        for chunk in chunks:
            s = time.perf_counter()
            rep = ing.ingest(chunk)
            e = time.perf_counter()
            lat.append(e - s)
            per_event_us.append((e - s) * 1e6 / len(chunk))
            accepted += rep.accepted
            done += len(chunk)
            if sample_stats is None and done >= sample:
                p = time.perf_counter()
                sample_stats = stats_delta(commandstats(client))
                cpu_sample = server_cpu_s(client) - cpu0
                paused += time.perf_counter() - p
        wall = time.perf_counter() - t0 - paused
        cpu_a = server_cpu_s(client) - cpu0
        stats_a = stats_delta(commandstats(client))
        assert accepted == n, f"expected every event accepted, got {accepted}/{n}"
        eps = n / wall
        fn_us = stats_a["fcall"]["usec"] / n
        print(
            f"A  ingest (pre-parsed): {eps:,.0f} events/s; per call p50 "
            f"{1e3 * percentile(lat, 50):.2f} ms, p99 {1e3 * percentile(lat, 99):.2f} ms; "
            f"per event p50 {percentile(per_event_us, 50):.1f} us, "
            f"p99 {percentile(per_event_us, 99):.1f} us"
        )
        print(
            f"   server: fcall {fn_us:.2f} us/event ({int(stats_a['fcall']['calls'])} FCALLs); "
            f"main-thread CPU {1e6 * cpu_a / n:.2f} us/event"
        )
        print_breakdown("A (all events)", stats_a, n)

        # Phase A2 -----------------------------------------------------------------------
        # The same events from `--threads` threads of this one process (each call on its own
        # pooled connection): Python builds and parses one call while Redis runs another, which
        # a single synchronous client cannot do. Batches of one shopper may land out of order;
        # ingestion is made for that (late events, exactly-once dedup).
        eps_t = 0.0
        if args.threads > 1:
            if target.embedded:
                settle_aof(client)
            ing_t = Ingestor(target.client(), engine("a2"))
            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.threads) as pool:
                acc_t = sum(r.accepted for r in pool.map(ing_t.ingest, batches(events, args.batch)))
            eps_t = n / (time.perf_counter() - t0)
            assert acc_t == n, f"expected every event accepted, got {acc_t}/{n}"
            print(f"A2 ingest (pre-parsed), {args.threads} client threads: {eps_t:,.0f} events/s")

        # Phase B ------------------------------------------------------------------------
        if target.embedded:
            settle_aof(client)
        ing_b = Ingestor(client, engine("b"))
        t0 = time.perf_counter()
        for chunk in batches(dicts, args.batch):
            ing_b.ingest([parse_event(d) for d in chunk])
        wall_b = time.perf_counter() - t0
        eps_b = n / wall_b
        print(f"B  parse_event + ingest: {eps_b:,.0f} events/s")

        # Phase C ------------------------------------------------------------------------
        assert sample_stats is not None
        if target.embedded:
            settle_aof(client)
        mirror = RawMirror(client, engine("c"))
        client.config_resetstat()
        cpu0 = server_cpu_s(client)
        t0 = time.perf_counter()
        raw_acc = sum(mirror.ingest(chunk) for chunk in batches(events[:sample], args.batch))
        wall_c = time.perf_counter() - t0
        cpu_c = server_cpu_s(client) - cpu0
        stats_c = stats_delta(commandstats(client))
        assert raw_acc == sample, f"mirror accepted {raw_acc}/{sample}"
        stats_c.pop("info", None)
        raw_us = sum(v["usec"] for v in stats_c.values()) / sample
        fn_us_sample = sample_stats["fcall"]["usec"] / sample
        ratio = raw_us / fn_us_sample
        print(
            f"C  raw commands, first {sample} events: {raw_us:.2f} us/event "
            f"(client {sample / wall_c:,.0f} events/s; main-thread CPU "
            f"{1e6 * cpu_c / sample:.2f} us/event) vs fcall {fn_us_sample:.2f} us/event "
            f"on the same events -> ratio {ratio:.3f}"
        )
        print(
            f"   server main-thread CPU on those events (commands + protocol + AOF feed): "
            f"Functions {1e6 * cpu_sample / sample:.2f} us/event, raw {1e6 * cpu_c / sample:.2f} "
            f"us/event (ratio {cpu_c / cpu_sample:.3f})"
        )
        print_breakdown("C (raw)", stats_c, sample)
        mismatch = []
        for name in sorted(set(stats_c) | set(sample_stats)):
            if name in ("fcall", "fcall_ro"):
                continue
            a = int(sample_stats.get(name, {"calls": 0})["calls"])
            c = int(stats_c.get(name, {"calls": 0})["calls"])
            if a != c:
                mismatch.append(f"{name} fn={a} raw={c}")
        print(
            "   command parity (calls, Functions vs raw): "
            + ("identical" if not mismatch else "; ".join(mismatch))
        )

        if args.verify:
            verify_state(client, engine("v"), engine("c"), events[:sample], args.batch)
        if args.profile:
            profile_phase(client, engine("p"), events, args)

        client.close()

    return {
        "bench": "ingest",
        "events_per_s": round(eps),
        "events_per_s_threads": round(eps_t),
        "threads": args.threads,
        "events_per_s_with_validation": round(eps_b),
        "server_us_per_event": round(fn_us, 3),
        "raw_us_per_event": round(raw_us, 3),
        "ratio": round(ratio, 3),
        "p50_ms": round(1e3 * percentile(lat, 50), 3),
        "p99_ms": round(1e3 * percentile(lat, 99), 3),
        "events": n,
        "users": n_users,
        "items": args.items,
    }


def verify_state(
    client: redis.Redis, fn_cfg: EngineConfig, raw_cfg: EngineConfig, events: list[Event],
    batch: int,
) -> None:  # fmt: skip
    """Replay the sample through the Functions on fresh keys and compare with the raw state."""
    ing = Ingestor(client, fn_cfg)
    for chunk in batches(events, batch):
        ing.ingest(chunk)
    fk, rk = Keys(fn_cfg.key_prefix), Keys(raw_cfg.key_prefix)
    users = sorted({ev.identity for ev in events})
    items = sorted({ln.item_id for ev in events for ln in ev.lines})
    diffs: list[str] = []

    def zset(key: str) -> list[tuple[bytes, float]]:
        return [(m, round(sc, 6)) for m, sc in client.zrange(key, 0, -1, withscores=True)]

    def zset_rel(key: str) -> dict[bytes, float]:
        return dict(client.zrange(key, 0, -1, withscores=True))

    for u in users:
        a, b = client.json().get(fk.user(u, "session")), client.json().get(rk.user(u, "session"))
        # m.maint_ts / m.ttl_ts are each side's own clock readings: compare the rest.
        for doc in (a, b):
            if doc and "m" in doc:
                doc["m"].pop("maint_ts", None)
                doc["m"].pop("ttl_ts", None)
        if a != b:
            diffs.append(f"session {u}")
        fa, ra = zset_rel(fk.user(u, "aff")), zset_rel(rk.user(u, "aff"))
        if fa.keys() != ra.keys() or any(abs(fa[m] - ra[m]) > 1e-9 * abs(fa[m]) for m in fa):
            diffs.append(f"aff {u}")
    for it in items:
        for kind in ("v", "b"):
            if zset(fk.co(it, kind)) != zset(rk.co(it, kind)):
                diffs.append(f"co:{kind} {it}")
    if client.xlen(fk.log) != client.xlen(rk.log):
        diffs.append("log length")
    print(
        f"   state check (Functions vs raw on the sample): {len(users)} sessions + affinities, "
        f"{len(items)} items' co-occurrence, log length: "
        + ("identical" if not diffs else f"{len(diffs)} differ, e.g. {', '.join(diffs[:5])}")
    )


def profile_phase(
    client: redis.Redis, cfg: EngineConfig, events: list[Event], args: argparse.Namespace
) -> None:
    ing = Ingestor(client, cfg)
    prof = cProfile.Profile()
    chunks = batches(events, args.batch)
    prof.enable()
    for chunk in chunks:
        ing.ingest(chunk)
    prof.disable()
    buf = io.StringIO()
    st = pstats.Stats(prof, stream=buf)
    st.sort_stats("tottime").print_stats(25)
    st.sort_stats("cumulative").print_stats(30)
    print("P  cProfile of phase A (client side):")
    print(buf.getvalue())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=100_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=4_000)
    ap.add_argument("--batch", type=int, default=1_000)
    ap.add_argument("--threads", type=int, default=2, help="client threads of phase A2 (1: skip)")
    ap.add_argument("--sample", type=int, default=40_000, help="events replayed raw (phase C)")
    ap.add_argument("--users-per-call", type=int, default=EngineConfig().users_per_call)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--lua-dir", type=Path, help="load these Functions sources instead of lua/")
    ap.add_argument("--quick", action="store_true", help="CI smoke: a few thousand events")
    ap.add_argument("--profile", action="store_true", help="add a cProfile run of phase A")
    ap.add_argument(
        "--verify", action="store_true", help="compare Functions and raw state (on in --quick)"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.events, args.users, args.sample, args.verify = 4_000, 2_000, 2_000, True
    result = run(args)
    emit_json(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
