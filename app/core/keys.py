"""Every key name the engine uses, built in one place (Lua never builds key names).

One hash tag per entity keeps each Function call in one cluster slot:
user keys `u:{<user>}:...`, item keys `i:{<item>}:...`, global aggregates `g:{g}:...`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from app.core.units import HOUR_MS


def tag(value: str) -> str:
    # A '{' or '}' inside an id would change which part Redis hashes: ids are validated
    # against that (app/core/events.py), this is the last line of defence.
    if "{" in value or "}" in value:
        raise ValueError(f"ids must not contain braces: {value!r}")
    return "{" + value + "}"


@dataclass(frozen=True)
class Keys:
    prefix: str = "rt:"

    # -- users ---------------------------------------------------------------
    def user(self, user: str, part: str) -> str:
        return f"{self.prefix}u:{tag(user)}:{part}"

    def user_group(self, user: str) -> list[str]:
        """The four keys `ingest_user` takes per user, in its KEYS order."""
        return [self.user(user, p) for p in ("session", "dedup", "aff", "seen")]

    def user_profile_keys(self, user: str) -> list[str]:
        return [self.user(user, p) for p in ("session", "aff", "seen", "profile")]

    def user_all(self, user: str) -> list[str]:
        return [self.user(user, p) for p in ("session", "dedup", "aff", "seen", "profile")]

    # -- global aggregates (one slot) ----------------------------------------
    def glob(self, part: str) -> str:
        return f"{self.prefix}g:{{g}}:{part}"

    @property
    def log(self) -> str:
        return self.glob("log")

    @property
    def watermark(self) -> str:
        return self.glob("wm")

    def trend(self, event_type: str, ts_ms: int) -> str:
        return self.glob(f"trend:{event_type}:{hour_start(ts_ms)}")

    def cms(self, event_type: str) -> str:
        return self.glob(f"cms:{event_type}")

    # -- tracking API (Segment / RudderStack messages with no engine event) ---
    @property
    def tracking_log(self) -> str:
        return self.glob("tracking")

    def tracking_seen(self, message_id: str) -> str:
        """A handled messageId (dedup of identify/alias/page/...); hashed: ids may hold braces."""
        digest = hashlib.sha1(message_id.encode()).hexdigest()[:20]
        return f"{self.prefix}trk:{{{digest}}}"

    # -- items ---------------------------------------------------------------
    def item(self, item: str, part: str) -> str:
        return f"{self.prefix}i:{tag(item)}:{part}"

    def item_series(self, item: str, event_type: str) -> tuple[str, str]:
        raw = self.item(item, f"ts:{event_type}")
        return raw, raw + ":1h"

    def co(self, item: str, kind: str) -> str:
        return self.item(item, f"co:{kind}")


def hour_start(ts_ms: int) -> int:
    return ts_ms - ts_ms % HOUR_MS
