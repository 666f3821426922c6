"""Key and field names of the metrics in Redis, split in `PARTS` parts by process.

Each process writes its series and its totals under one part's hash tag (`{m<i>.<k>}`, from
`spread_tag`: the parts sit evenly over a cluster's masters), chosen by its host name and pid,
so its flush pipeline and its compaction rules stay in one slot and no master carries every
process's metrics. Processes that draw the same part share its keys (counter series add up:
DUPLICATE_POLICY SUM). Readers merge the parts (views.py). The number of parts is fixed, so a
dead process leaves no new keys behind: its part's series empty by RETENTION and its totals
hash keeps counting for the processes that share the part (or expires by its TTL)."""

from __future__ import annotations

import os
import socket
import zlib
from dataclasses import dataclass
from typing import Any

import redis

from app.core.tags import spread_tag
from app.obs.registry import Labels, SeriesId

PARTS = 12  # metric parts: 4 per master on three, so a few processes seldom share a master

# -- key and field names ------------------------------------------------------------------------


def _key_safe(value: str) -> str:
    return value.replace("{", "<").replace("}", ">")


def process_part(parts: int = PARTS) -> int:
    """This process's part: a hash of host name and pid (read at each call: a forked worker
    gets its own)."""
    return zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) % parts


@dataclass(frozen=True)
class MetricKeys:
    prefix: str = "rt:"
    part: int | None = None  # None: this process's part

    @property
    def current_part(self) -> int:
        return process_part() if self.part is None else self.part

    def tag(self, part: int | None = None) -> str:
        return "{" + spread_tag("m", self.current_part if part is None else part, PARTS) + "}"

    def base(self) -> str:
        return f"{self.prefix}m:{self.tag()}:"

    def series(self, sid: SeriesId, stat: str | None = None) -> str:
        name, labels = sid
        parts = [*name.split("."), *(_key_safe(v) for _, v in labels)]
        if stat:
            parts.append(stat)
        return self.base() + ":".join(parts)

    @property
    def totals(self) -> str:
        """This process's part of the totals."""
        return self.base() + "totals"

    def all_totals(self) -> list[str]:
        """Every part's totals hash (what a reader sums)."""
        return [f"{self.prefix}m:{self.tag(i)}:totals" for i in range(PARTS)]


def field_of(name: str, labels: Labels, extra: str = "") -> str:
    """Totals hash field: `name|k=v|k=v[|extra]` (values never contain `|` or `=`)."""
    parts = [name, *(f"{k}={v}" for k, v in labels)]
    if extra:
        parts.append(extra)
    return "|".join(parts)


def parse_field(raw: str) -> tuple[str, dict[str, str], str]:
    name, *rest = raw.split("|")
    labels: dict[str, str] = {}
    extra = ""
    for part in rest:
        if "=" in part:
            k, v = part.split("=", 1)
            labels[k] = v
        else:
            extra = part
    return name, labels, extra


def cmd(target: redis.Redis | redis.client.Pipeline, *args: Any) -> Any:
    return target.execute_command(*args)  # type: ignore[no-untyped-call]
