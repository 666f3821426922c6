"""Key and field names of the metrics in Redis: one hash tag `{m}` for every series and the
totals hash, so TS.MRANGE, the flush pipeline and compaction rules stay in one slot."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis

from app.obs.registry import TAG, Labels, SeriesId

# -- key and field names ------------------------------------------------------------------------


def _key_safe(value: str) -> str:
    return value.replace("{", "<").replace("}", ">")


@dataclass(frozen=True)
class MetricKeys:
    prefix: str = "rt:"

    def base(self) -> str:
        return f"{self.prefix}m:{TAG}:"

    def series(self, sid: SeriesId, stat: str | None = None) -> str:
        name, labels = sid
        parts = [*name.split("."), *(_key_safe(v) for _, v in labels)]
        if stat:
            parts.append(stat)
        return self.base() + ":".join(parts)

    @property
    def totals(self) -> str:
        return self.base() + "totals"


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
