"""Memory per user and per item after replaying the real Online Retail purchases.

Run from the repo root: `.venv/bin/python -m bench.memory [--limit N]`. Replays the sample
data (embedded Redis Stack unless REDIS_URL is set) and reports MEMORY USAGE summed per key
family, divided by the number of users / items / events that own them, plus used_memory.
Last line: one JSON object.
"""

from __future__ import annotations

import argparse
import re
import time
from collections import defaultdict
from dataclasses import replace

from app.core.settings import EngineConfig
from bench._common import ROOT, emit_json, redis_target
from loaders import replay

FAMILY = re.compile(r"^(?P<kind>[uig]):\{(?P<id>[^}]*)\}:(?P<part>[a-z_]+(?::[a-z_]+)*)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--limit", type=int, default=None, help="replay only the first N events")
    args = parser.parse_args()
    path = ROOT / "data" / "online-retail" / "online-retail-2010-12_2011-09.csv.gz"
    with redis_target("memory") as target, target.client() as client:
        cfg = replace(EngineConfig(), key_prefix=target.prefix)
        before = int(client.info("memory")["used_memory"])
        t0 = time.monotonic()
        report = replay.replay(client, cfg, path, limit=args.limit, progress=False)
        print(f"replayed {report.sent:,} events in {time.monotonic() - t0:.1f} s")
        used = int(client.info("memory")["used_memory"]) - before

        bytes_by: dict[str, int] = defaultdict(int)
        owners: dict[str, set[str]] = defaultdict(set)
        for raw in client.scan_iter(match=target.prefix + "*", count=2000):
            key = raw.decode()
            rest = key[len(target.prefix) :]
            m = FAMILY.match(rest)
            family = f"{m['kind']}:{m['part']}" if m else rest.split(":")[0]
            family = re.sub(r":\d{10,}$", ":<hour>", family)
            family = re.sub(r"^(g:trend:[a-z_]+):.*", r"\1:<hour>", family)
            bytes_by[family] += int(client.memory_usage(key, samples=0) or 0)
            owners[m["kind"] if m else "other"].add(m["id"] if m else key)
        users = len(owners["u"]) or 1
        items = len(owners["i"]) or 1
        print(f"{'key family':<26}{'bytes':>14}{'per owner':>12}")
        for family, n in sorted(bytes_by.items(), key=lambda kv: -kv[1]):
            per = users if family.startswith("u:") else items if family.startswith("i:") else 1
            print(f"{family:<26}{n:>14,}{n / per:>12,.0f}")
        per_user = sum(v for k, v in bytes_by.items() if k.startswith("u:")) / users
        per_item = sum(v for k, v in bytes_by.items() if k.startswith("i:")) / items
        global_bytes = sum(v for k, v in bytes_by.items() if k.startswith("g:"))
        print(f"users {users:,}: {per_user:,.0f} B each; items {items:,}: {per_item:,.0f} B each; "
              f"global aggregates {global_bytes:,} B; used_memory delta {used:,} B")  # fmt: skip
        emit_json({
            "bench": "memory", "events": report.sent, "users": users, "items": items,
            "bytes_per_user": round(per_user), "bytes_per_item": round(per_item),
            "global_bytes": global_bytes, "used_memory_delta": used,
            "bytes_per_event_overall": round(used / max(report.sent, 1)),
        })  # fmt: skip


if __name__ == "__main__":
    main()
