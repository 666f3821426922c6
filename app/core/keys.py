"""Every key name the engine uses, built in one place (Lua never builds key names).

Layout 2 (log-first, partitioned; docs/keys.md):

- Shoppers are hashed into `partitions` partitions (crc32 of the identity). Every key of a
  shopper and the partition's event log share the partition's hash tag `{p<n>.<k>}`
  (`spread_tag`: even over a cluster's masters): `u:{p17.41}:<user>:session`,
  `log:{p17.41}`. One acknowledged Function call per partition.
- Global aggregates are split `agg_shards` ways by item hash (tag `{a<n>.<k>}`): trending Top-K,
  Count-Min Sketch, the per-item series, co-occurrence and item features of an item live in
  its shard: `g:{a3.7}:trend:view:<hour>`, `i:{a3.7}:<item>:ts:view`. No slot holds all of them.
- What stays global (`{g}`: the recommender's model pointers and real-time popularity,
  experiment definitions) is small and written by workers or the trainer, not per event.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass

from app.core.tags import spread_tag
from app.core.units import HOUR_MS

LAYOUT_VERSION = 2
DEFAULT_PARTITIONS = 64
DEFAULT_AGG_SHARDS = 24  # an exact split over 2, 3, 4, 6, 8 or 12 masters (docs/cluster.md)
TRACKING_PARTS = 6  # the tracking log's parts: 2 per master on three


def tag(value: str) -> str:
    # A '{' or '}' inside an id would change which part Redis hashes: ids are validated
    # against that (app/core/events.py), this is the last line of defence.
    if "{" in value or "}" in value:
        raise ValueError(f"ids must not contain braces: {value!r}")
    return "{" + value + "}"


def _plain(value: str) -> str:
    """An id written outside the hash tag: it must not open one of its own."""
    if "{" in value or "}" in value:
        raise ValueError(f"ids must not contain braces: {value!r}")
    return value


def bucket_of(value: str, n: int) -> int:
    """Stable bucket of an id (crc32, the same in every process and language)."""
    return zlib.crc32(value.encode()) % n


@dataclass(frozen=True)
class Keys:
    prefix: str = "rt:"
    partitions: int = DEFAULT_PARTITIONS
    agg_shards: int = DEFAULT_AGG_SHARDS

    # -- partitions (shoppers and their logs) ---------------------------------------------
    def partition(self, identity: str) -> int:
        return bucket_of(identity, self.partitions)

    def partition_tag(self, partition: int) -> str:
        """`p<n>.<k>`: spread evenly over a cluster's masters (app/core/tags.py)."""
        return spread_tag("p", partition, self.partitions)

    def log_of(self, partition: int) -> str:
        """STREAM: the partition's event log (written by `ingest_partition` only)."""
        return f"{self.prefix}log:{{{self.partition_tag(partition)}}}"

    @property
    def logs(self) -> list[str]:
        return [self.log_of(p) for p in range(self.partitions)]

    def part(self, partition: int, part: str) -> str:
        """A partition-level key (e.g. `applied`: the watermarks of partition-slot workers)."""
        return f"{self.prefix}part:{{{self.partition_tag(partition)}}}:{part}"

    # -- users ---------------------------------------------------------------
    def user(self, user: str, part: str) -> str:
        return (
            f"{self.prefix}u:{{{self.partition_tag(self.partition(user))}}}:{_plain(user)}:{part}"
        )

    def user_group(self, user: str) -> list[str]:
        """The four keys `ingest_partition` takes per user, in its KEYS order."""
        return [self.user(user, p) for p in ("session", "dedup", "aff", "seen")]

    def user_profile_keys(self, user: str) -> list[str]:
        return [self.user(user, p) for p in ("session", "aff", "seen", "profile")]

    def user_all(self, user: str) -> list[str]:
        return [self.user(user, p) for p in ("session", "dedup", "aff", "seen", "profile")]

    # -- aggregate shards (split by item hash) ------------------------------------
    def shard(self, member: str) -> int:
        """The aggregate shard of an item (or of a normalised search query)."""
        return bucket_of(member, self.agg_shards)

    def shard_tag(self, shard: int) -> str:
        """`a<n>.<k>`: spread evenly over a cluster's masters (app/core/tags.py)."""
        return spread_tag("a", shard, self.agg_shards)

    def agg(self, shard: int, part: str) -> str:
        return f"{self.prefix}g:{{{self.shard_tag(shard)}}}:{part}"

    def applied(self, shard: int) -> str:
        """HASH `<kind>:<partition>` -> last applied log id: the shard's exactly-once marks."""
        return self.agg(shard, "applied")

    def watermark(self, shard: int) -> str:
        return self.agg(shard, "wm")

    @property
    def watermarks(self) -> list[str]:
        return [self.watermark(s) for s in range(self.agg_shards)]

    def trend(self, shard: int, event_type: str, ts_ms: int) -> str:
        return self.agg(shard, f"trend:{event_type}:{hour_start(ts_ms)}")

    def cms(self, shard: int, event_type: str) -> str:
        return self.agg(shard, f"cms:{event_type}")

    def item_agg(self, item: str, part: str) -> str:
        """An item's aggregate key, in the item's shard."""
        return f"{self.prefix}i:{{{self.shard_tag(self.shard(item))}}}:{_plain(item)}:{part}"

    def item_series(self, item: str, event_type: str) -> tuple[str, str]:
        raw = self.item_agg(item, f"ts:{event_type}")
        return raw, raw + ":1h"

    def co(self, item: str, kind: str) -> str:
        return self.item_agg(item, f"co:{kind}")

    # -- global (small, written by workers / trainer) --------------------------------
    def glob(self, part: str) -> str:
        return f"{self.prefix}g:{{g}}:{part}"

    # -- tracking API (Segment / RudderStack messages with no engine event) ---
    def tracking_log(self, message_id: str) -> str:
        """STREAM part of the tracking log holding this message (`TRACKING_PARTS` parts by
        messageId hash, spread over a cluster's masters: pages arrive per page view)."""
        return self.tracking_logs[bucket_of(message_id, TRACKING_PARTS)]

    @property
    def tracking_logs(self) -> list[str]:
        return [
            f"{self.prefix}g:{{{spread_tag('t', i, TRACKING_PARTS)}}}:tracking"
            for i in range(TRACKING_PARTS)
        ]

    def tracking_seen(self, message_id: str) -> str:
        """A handled messageId (dedup of identify/alias/page/...); hashed: ids may hold braces."""
        digest = hashlib.sha1(message_id.encode()).hexdigest()[:20]
        return f"{self.prefix}trk:{{{digest}}}"

    # -- items (catalog, model neighbours: the item's own tag) -------------------------
    def item(self, item: str, part: str) -> str:
        return f"{self.prefix}i:{tag(item)}:{part}"

    # -- deployment ------------------------------------------------------------------
    @property
    def layout(self) -> str:
        """HASH: layout version, partitions, shards (written when a deployment is created)."""
        return f"{self.prefix}meta:{{meta}}:layout"

    @property
    def agg_status(self) -> str:
        """HASH: each aggregate worker's published freshness (p50/p99 ms, time), 1 day TTL."""
        return f"{self.prefix}meta:{{meta}}:agg"

    def old_layout_keys(self) -> list[str]:
        """Keys only a layout-1 deployment (one `{g}` log, per-user tags) ever wrote."""
        return [self.glob("log"), self.glob("wm")]


def hour_start(ts_ms: int) -> int:
    return ts_ms - ts_ms % HOUR_MS
