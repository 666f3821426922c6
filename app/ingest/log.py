"""The partition logs: reading them merged, their length, and the consumer groups' lag.

Each shopper partition has one log Stream (`log:{p<n>}`), appended by `ingest_partition` in
the same atomic call that applies the event to the shopper's state. Entry fields: `type`,
`user`, `data` (the event's JSON, `Event.payload`), and `pairs` (the co-occurrence pairs the
event produced: `a b kind weight` joined by `;`). An entry id's milliseconds are the server
time of the acknowledgement (freshness is measured from it).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from app.core.keys import Keys

Pair = tuple[str, str, str, float]


def id_tuple(entry_id: bytes | str) -> tuple[int, int]:
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = raw.partition("-")
    return int(ms), int(seq or 0)


def parse_pairs(raw: bytes | str | None) -> list[Pair]:
    if not raw:
        return []
    value = raw.decode() if isinstance(raw, bytes) else raw
    out: list[Pair] = []
    for part in value.split(";"):
        a, b, kind, weight = part.split(" ")
        out.append((a, b, kind, float(weight)))
    return out


def _partition_entries(
    client: redis.Redis, stream: str, start: str, end: str, page: int
) -> Iterator[tuple[tuple[int, int], bytes, Mapping[bytes, bytes]]]:
    cursor = start
    while True:
        entries: Any = client.xrange(stream, min=cursor, max=end, count=page)
        for entry_id, fields in entries:
            yield id_tuple(entry_id), entry_id, fields or {}
        if len(entries) < page:
            return
        last = entries[-1][0]
        cursor = "(" + (last.decode() if isinstance(last, bytes) else str(last))


def merged_log(
    client: redis.Redis, keys: Keys, *, start: str = "-", end: str = "+", page: int = 5000
) -> Iterator[tuple[int, bytes, Mapping[bytes, bytes]]]:
    """(partition, entry id, fields) of every partition log, oldest acknowledgement first."""
    streams = [
        ((order, p, eid, f) for order, eid, f in _partition_entries(client, s, start, end, page))
        for p, s in enumerate(keys.logs)
    ]
    for _order, p, entry_id, fields in heapq.merge(*streams, key=lambda row: row[0]):
        yield p, entry_id, fields


def log_length(client: redis.Redis, keys: Keys) -> int:
    """Entries held by all partition logs (one XLEN per partition, pipelined)."""
    pipe = client.pipeline(transaction=False)
    for stream in keys.logs:
        pipe.xlen(stream)
    return sum(int(n) for n in pipe.execute())


@dataclass(frozen=True)
class GroupLag:
    group: str
    max_lag: int  # entries not yet delivered to the group, worst partition
    total_lag: int
    pending: int  # delivered, not yet acknowledged
    partitions: int  # partitions where the group exists


def group_lag(client: redis.Redis, keys: Keys, group: str) -> GroupLag:
    """How far a consumer group trails the logs (XINFO GROUPS `lag`: Redis >= 7.0)."""
    pipe = client.pipeline(transaction=False)
    for stream in keys.logs:
        pipe.execute_command("XINFO", "GROUPS", stream)  # type: ignore[no-untyped-call]
    max_lag = total = pending = present = 0
    for reply in pipe.execute(raise_on_error=False):
        if isinstance(reply, Exception):
            continue  # no log yet in this partition
        for info in reply:
            row = _info(info)
            if row.get("name") != group:
                continue
            present += 1
            lag = int(row.get("lag") or 0)
            max_lag, total = max(max_lag, lag), total + lag
            pending += int(row.get("pending") or 0)
    return GroupLag(group, max_lag, total, pending, present)


def _info(info: Any) -> dict[str, Any]:
    items: Iterable[tuple[Any, Any]] = (
        info.items() if isinstance(info, dict) else zip(info[::2], info[1::2], strict=True)
    )
    out: dict[str, Any] = {}
    for k, v in items:
        key = k.decode() if isinstance(k, bytes) else str(k)
        out[key] = v.decode() if isinstance(v, bytes) else v
    return out
