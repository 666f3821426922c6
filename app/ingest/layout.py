"""The deployment's key layout: recorded when a deployment is created, checked on every start.

Layout 2 (log-first, partitioned: docs/keys.md) hashes shoppers into `partitions` partitions
and aggregates into `agg_shards` shards; both are fixed for the life of the data (changing them
would move keys). A data folder written by layout 1 (one `{g}` log, two-phase ingestion) or
with other counts is refused with the command that rebuilds it.
"""

from __future__ import annotations

import redis

from app.core.errors import DataLayoutError
from app.core.keys import LAYOUT_VERSION
from app.core.settings import EngineConfig
from app.redis.calls import text

REBUILD = (
    "rebuild it: stop the app, delete the data folder (RETAIL_DATA_DIR, default var/) or run "
    "`python -m app.cli reset --yes` on this prefix, then reload with `make demo` or "
    "`python -m loaders.replay` (events are replayed into the new layout)"
)


def ensure_layout(client: redis.Redis, cfg: EngineConfig) -> dict[str, int]:
    """Record the layout on first use; raise DataLayoutError when the data disagrees."""
    keys = cfg.keys()
    want = {"version": LAYOUT_VERSION, "partitions": cfg.partitions, "agg_shards": cfg.agg_shards}
    raw = client.hgetall(keys.layout)
    if not raw:
        if client.exists(*keys.old_layout_keys()):
            raise DataLayoutError(
                f"the data under prefix {cfg.key_prefix!r} was made by an older key layout "
                f"(layout 1: one global log, two-phase ingestion); {REBUILD}"
            )
        client.hsetnx(keys.layout, "version", LAYOUT_VERSION)
        client.hsetnx(keys.layout, "partitions", cfg.partitions)
        client.hsetnx(keys.layout, "agg_shards", cfg.agg_shards)
        raw = client.hgetall(keys.layout)
    have = {text(k): int(v) for k, v in raw.items()}
    if have.get("version") != LAYOUT_VERSION:
        raise DataLayoutError(
            f"the data under prefix {cfg.key_prefix!r} has key layout {have.get('version')}, "
            f"this engine writes layout {LAYOUT_VERSION}; {REBUILD}"
        )
    for name, env in (("partitions", "RETAIL_PARTITIONS"), ("agg_shards", "RETAIL_AGG_SHARDS")):
        if have.get(name) != want[name]:
            raise DataLayoutError(
                f"the deployment under prefix {cfg.key_prefix!r} was created with {name}="
                f"{have.get(name)}, the settings say {want[name]}: set {env}={have.get(name)} "
                f"(it is fixed when a deployment is created), or {REBUILD}"
            )
    return have


def reset_prefix(client: redis.Redis, prefix: str) -> int:
    """Delete every key under `prefix` (SCAN + UNLINK): the start of a rebuild."""
    n = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=f"{prefix}*", count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            n += int(client.unlink(*batch))
            batch = []
    if batch:
        n += int(client.unlink(*batch))
    return n
