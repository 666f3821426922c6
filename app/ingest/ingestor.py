"""Event ingestion: validated events -> per-slot Function calls, pipelined.

Phase 1 (`ingest_user`, user slots) deduplicates and updates each shopper's live state and
returns which events were new plus their co-occurrence pairs. Phase 2 (`ingest_aggregates`)
applies only the new events to the log, trending, counters and co-occurrence. Each phase is
one pipeline round trip. On a standalone server one call carries many users (no cross-slot
rule there); a cluster client (`cluster=True`) keeps every call within one slot.

Crash window: if this process dies between the two phases, that batch's aggregates are
missing (its user state and dedup are written); a retry reports the events as duplicates.
Aggregates are trending/popularity signals, so we accept that window rather than pay a
second dedup set per aggregate slot; see docs/keys.md.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import redis
from redis.crc import key_slot

from app.core.errors import from_redis_error
from app.core.events import Event, Line
from app.core.keys import Keys, hour_start
from app.core.settings import EngineConfig
from app.core.units import HOUR_MS
from app.redis import calls
from app.redis.slots import call_groups

STATUS = {"A": "accepted", "D": "duplicate"}
TRENDING_TYPES = ("view", "click", "add_to_cart", "purchase", "search")
MAX_BUCKETS_DROPPED = 240
CategoryLookup = Callable[[str], str | None]
# A phase-2 extension (e.g. the feature store): given the accepted events (time order),
# the Function calls to add to the aggregates pipeline, as (function name, (keys, argv)).
Phase2Hook = Callable[[Sequence[Event]], list[tuple[str, calls.Args]]]


@dataclass(frozen=True)
class IngestReport:
    statuses: list[str]  # "accepted" / "duplicate", aligned with the input events
    accepted: int
    duplicates: int
    pairs: int


class Ingestor:
    def __init__(
        self,
        client: redis.Redis,
        cfg: EngineConfig,
        *,
        category_of: CategoryLookup | None = None,
        cluster: bool = False,
        phase2_hooks: Sequence[Phase2Hook] = (),
    ) -> None:
        self.client = client
        self.cfg = cfg
        self.keys = Keys(cfg.key_prefix)
        self.category_of = category_of
        self.cluster = cluster
        self.phase2_hooks = list(phase2_hooks)

    def _with_categories(self, ev: Event) -> Event:
        if self.category_of is None or not ev.lines or all(ln.category for ln in ev.lines):
            return ev
        lines = tuple(
            ln
            if ln.category
            else Line(ln.item_id, ln.qty, ln.price, self.category_of(ln.item_id) or "")
            for ln in ev.lines
        )
        return replace(ev, lines=lines)

    def _user_calls(
        self, by_user: dict[str, list[int]], events: Sequence[Event]
    ) -> list[list[str]]:
        """Lists of users, one list per `ingest_user` call."""
        return call_groups(
            list(by_user), lambda user: self.keys.user(user, "session"),
            cluster=self.cluster, per_call=self.cfg.users_per_call,
        )  # fmt: skip

    def ingest(self, events: Sequence[Event]) -> IngestReport:
        if not events:
            return IngestReport([], 0, 0, 0)
        events = [self._with_categories(ev) for ev in events]
        by_user: dict[str, list[int]] = defaultdict(list)
        for i, ev in enumerate(events):
            by_user[ev.identity].append(i)
        call_users = self._user_calls(by_user, events)

        pipe = self.client.pipeline(transaction=False)
        for users in call_users:
            groups = [[events[i] for i in by_user[u]] for u in users]
            calls.fcall(pipe, "ingest_user", calls.ingest_user_args(self.cfg, self.keys, groups))
        replies = self._execute(pipe)

        statuses: list[str] = [""] * len(events)
        accepted: list[Event] = []
        pairs: list[tuple[str, str, str, float]] = []
        for users, reply in zip(call_users, replies, strict=True):
            result = calls.parse_ingest_user(reply)
            pos = 0
            for user in users:
                for i in by_user[user]:
                    code = result.statuses[pos]
                    statuses[i] = STATUS[code]
                    if code == "A":
                        accepted.append(events[i])
                    pos += 1
            pairs += result.pairs

        if accepted:
            # Time order, so per-item series receive their samples oldest first.
            accepted.sort(key=lambda ev: ev.ts)
            self._aggregates(accepted, pairs)
        n_acc = len(accepted)
        return IngestReport(statuses, n_acc, len(events) - n_acc, len(pairs))

    def _aggregates(self, accepted: list[Event], pairs: list[tuple[str, str, str, float]]) -> None:
        pipe = self.client.pipeline(transaction=False)
        if not self.cluster:
            args = calls.ingest_aggregates_args(self.cfg, self.keys, accepted, pairs)
            calls.fcall(pipe, "ingest_aggregates", args)
        else:
            calls.fcall(
                pipe,
                "ingest_aggregates",
                calls.ingest_aggregates_args(
                    self.cfg, self.keys, accepted, [], include_item=lambda _i: False
                ),
            )
            slots: dict[int, set[str]] = defaultdict(set)
            items = {ln.item_id for ev in accepted for ln in ev.lines}
            items |= {x for a, b, _, _ in pairs for x in (a, b)}
            for item in items:
                slots[key_slot(self.keys.item(item, "x").encode())].add(item)
            for members in slots.values():
                args = calls.ingest_aggregates_args(
                    self.cfg, self.keys, accepted, pairs,
                    include_global=False, include_item=members.__contains__,
                )  # fmt: skip
                calls.fcall(pipe, "ingest_aggregates", args)
        for hook in self.phase2_hooks:
            for name, args in hook(accepted):
                calls.fcall(pipe, name, args)
        replies = self._execute(pipe)
        old_wm, new_wm = int(calls.text(replies[0][4])), int(calls.text(replies[0][5]))
        self._drop_stale_trend_buckets(old_wm, new_wm)

    def _drop_stale_trend_buckets(self, old_wm: int, new_wm: int) -> None:
        """UNLINK hour buckets that the advancing watermark pushed out of the trending window.

        They would expire anyway (trend_ttl_s), but a replay of months of history would keep
        thousands of them alive until then. Big jumps (a replay, then live traffic) leave the
        skipped buckets to their TTL instead of issuing thousands of deletes.
        """
        window = self.cfg.trend_window_h * HOUR_MS
        first, last = hour_start(max(old_wm, 1) - window), hour_start(new_wm - window)
        if old_wm == 0 or last <= first or (last - first) // HOUR_MS > MAX_BUCKETS_DROPPED:
            return
        stale = [
            self.keys.glob(f"trend:{etype}:{hour}")
            for hour in range(first, last, HOUR_MS)
            for etype in TRENDING_TYPES
        ]
        self.client.unlink(*stale)

    @staticmethod
    def _execute(pipe: redis.client.Pipeline) -> list[Any]:
        try:
            replies: list[Any] = pipe.execute(raise_on_error=False)
        except redis.ResponseError as exc:
            raise from_redis_error(exc) from exc
        for reply in replies:
            if isinstance(reply, redis.ResponseError):
                raise from_redis_error(reply)
        return replies
