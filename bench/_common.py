"""Shared helpers for the benchmarks in bench/ (each script prints one JSON object last).

- `redis_target()`: an embedded Redis Stack in a temporary folder (Functions loaded) when
  REDIS_URL is unset, else REDIS_URL (Functions loaded when stale) with a unique key prefix
  whose keys are deleted at the end.
- `percentile()`: linear-interpolation percentile of a list of numbers.
- `commandstats()` / `server_cpu_s()`: INFO commandstats and INFO cpu, parsed.
- `emit_json()`: the machine-readable last line.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from app.redis import embedded as redis_stack
from app.redis import library as functions
from app.redis.connect import connect, is_cluster, primaries

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Target:
    url: str
    embedded: bool
    prefix: str  # unique namespace of this run; scripts add sub-prefixes below it

    def client(self) -> redis.Redis:
        return connect(self.url)  # REDIS_URL=redis+cluster://... gives a cluster client


@contextlib.contextmanager
def redis_target(name: str, lua_dir: Path | None = None) -> Iterator[Target]:
    """Yield a server to benchmark against; clean up whatever this run created.

    `lua_dir` loads another copy of the Functions sources (to measure a Lua change); by
    default the repo's lua/ is loaded on the embedded server, or on REDIS_URL when stale.
    """
    prefix = f"bench:{name}:{uuid.uuid4().hex[:8]}:"
    url = os.environ.get("REDIS_URL")
    library = functions.build_library(lua_dir) if lua_dir else None
    if url:
        with connect(url) as client:
            if library is not None:
                functions.load(client, library)
            else:
                functions.ensure_current(client, load_if_stale=True)
        try:
            yield Target(url, False, prefix)
        finally:
            with connect(url) as client:
                for node in primaries(client):
                    delete_prefix(node, prefix, one_by_one=is_cluster(client))
        return
    server = redis_stack.temporary().start()
    try:
        with redis.Redis.from_url(server.url) as client:
            functions.load(client, library)
        yield Target(server.url, True, prefix)
    finally:
        server.stop()
        shutil.rmtree(server.data_dir.parent, ignore_errors=True)


def delete_prefix(client: redis.Redis, prefix: str, *, one_by_one: bool = False) -> int:
    """UNLINK every key under `prefix` on this server; `one_by_one` on a cluster node (a
    multi-key command must stay in one slot even on one node)."""
    n = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=prefix + "*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            n += _unlink(client, batch, one_by_one)
            batch.clear()
    if batch:
        n += _unlink(client, batch, one_by_one)
    return n


def _unlink(client: redis.Redis, keys: list[bytes], one_by_one: bool) -> int:
    if not one_by_one:
        return int(client.unlink(*keys))
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.unlink(key)
    return sum(int(r) for r in pipe.execute())


def percentile(values: Sequence[float], p: float) -> float:
    """p in [0, 100]; linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    xs = sorted(values)
    k = (len(xs) - 1) * p / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def commandstats(client: redis.Redis) -> dict[str, dict[str, float]]:
    """{command: {"calls": n, "usec": n}} from INFO commandstats ("cmdstat_" stripped).

    Commands run inside a Function/script are counted under their own name as well as inside
    the FCALL's usec (checked on Redis 7.4), so never add FCALL and the inner entries.
    """
    raw: dict[str, Any] = client.info("commandstats")
    out: dict[str, dict[str, float]] = {}
    for key, value in raw.items():
        name = key.removeprefix("cmdstat_")
        out[name] = {"calls": float(value["calls"]), "usec": float(value["usec"])}
    return out


# Bench bookkeeping commands, left out of any per-event figure.
HOUSEKEEPING = frozenset({"info", "config|resetstat", "ping", "scan", "unlink", "function|load"})


def server_cpu_s(client: redis.Redis) -> float:
    """Main-thread user+sys CPU seconds of the server (falls back to the whole process)."""
    info: dict[str, Any] = client.info("cpu")
    if "used_cpu_user_main_thread" in info:
        return float(info["used_cpu_user_main_thread"]) + float(info["used_cpu_sys_main_thread"])
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def settle_aof(client: redis.Redis, timeout: float = 60.0) -> None:
    """Rewrite the AOF now and wait, with automatic rewrites off (embedded server only), so no
    rewrite (fork + copy-on-write) lands in a measured phase by chance: phases stay comparable
    within and across runs. The AOF itself (appends, fsync every second) stays on."""
    if client.info("persistence").get("aof_enabled") != 1:
        return
    client.config_set("auto-aof-rewrite-percentage", 0)
    with contextlib.suppress(redis.ResponseError):  # "already in progress" is fine
        client.bgrewriteaof()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = client.info("persistence")
        if not info.get("aof_rewrite_in_progress") and not info.get("aof_rewrite_scheduled"):
            return
        time.sleep(0.05)


def emit_json(obj: dict[str, Any]) -> None:
    sys.stdout.flush()
    print(json.dumps(obj, separators=(", ", ": ")), flush=True)
