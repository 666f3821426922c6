"""Cost of one feature write: server time of a `features_ingest` call on one shopper's packed
state, by state size and events per call (what sets `ack_work_per_call`).

Run from the repo root: `.venv/bin/python -m bench.feature_writes [--quick] [--lua-dir DIR]`.
A shopper gets a history (one event every 20 minutes: views, clicks, carts, purchases), then
`--calls` calls of 1, 2, 4 and 16 new views each update its user state (the user entity
only); the figure is INFO commandstats usec of FCALL per call. `--lua-dir` measures another
copy of the Functions (e.g. the previous commit's lua/, extracted with `git archive`) on the
same state, written by the current code. The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from app.core.events import Event, parse_event
from app.core.settings import EngineConfig
from app.features.online import features_ingest_args, ingest_calls
from app.features.spec import load_feature_set, route
from app.redis import calls
from app.redis import library as functions
from bench._common import commandstats, emit_json, redis_target

T0 = 1_300_000_000_000
STEP_MS = 1_200_000  # one history event every 20 minutes
TYPES = ("view", "view", "view", "click", "add_to_cart", "purchase")
PER_CALL = (1, 2, 4, 16)


def event(i: int, ts: int, etype: str) -> Event:
    body: dict[str, Any] = {"event_id": f"e{i}", "type": etype, "user_id": "c1", "ts": ts,
                            "session_id": "s1"}  # fmt: skip
    if etype == "purchase":
        body["items"] = [{"item_id": f"I{i % 50}", "qty": 2, "price": 1.5,
                          "category": f"C{i % 5}"}]  # fmt: skip
    else:
        body["item_id"] = f"I{i % 50}"
    return parse_event(body, now_ms=2 * T0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--history", type=int, nargs="+", default=[30, 100],
                        help="history events before the measured calls (state size)")  # fmt: skip
    parser.add_argument("--calls", type=int, default=200, help="calls per figure")
    parser.add_argument("--quick", action="store_true", help="30 calls per figure (CI)")
    parser.add_argument("--lua-dir", type=Path, default=None, help="another copy of lua/")
    args = parser.parse_args()
    if args.quick:
        args.calls = 30
    fs = load_feature_set()
    out: dict[str, Any] = {"bench": "feature_writes", "lua_dir": str(args.lua_dir or "lua")}
    with redis_target("feature_writes") as target, target.client() as client:
        for n_hist in args.history:
            cfg = replace(EngineConfig(), key_prefix=f"{target.prefix}h{n_hist}:")
            keys = cfg.keys()
            history = [event(i, T0 + i * STEP_MS, TYPES[i % 6]) for i in range(n_hist)]
            for name, call_args in ingest_calls(fs, keys, history, work_per_call=10_000):
                calls.fcall(client, name, call_args)
            size = int(client.memory_usage(keys.user("c1", "fs"), samples=0) or 0)
            if args.lua_dir is not None:
                functions.load(client, functions.build_library(args.lua_dir))
            t = history[-1].ts
            print(f"user state {size:,} B after {n_hist} events:")
            for n in PER_CALL:
                client.config_resetstat()
                for r in range(args.calls):
                    views = [event(10_000 + r * n + j, t + (r * n + j) * 1000, "view")
                             for j in range(n)]  # fmt: skip
                    groups = [(ref, ts) for ref, ts in route(fs, views).items()
                              if ref[0] == "user"]  # fmt: skip
                    calls.fcall(client, "features_ingest", features_ingest_args(fs, keys, groups))
                t += args.calls * n * 1000
                us = commandstats(client).get("fcall", {}).get("usec", 0) / args.calls
                print(f"  {n:>2} view(s) per call: {us:6.0f} us per call")
                out[f"us_per_call_{n}_events_{size}_b"] = round(us)
            if args.lua_dir is not None:
                functions.load(client)  # the current code writes the next history
    emit_json(out)


if __name__ == "__main__":
    main()
