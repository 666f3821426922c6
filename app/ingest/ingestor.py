"""Event ingestion, log first: validated events -> `ingest_partition` calls per partition.

Shoppers are hashed into partitions (app/core/keys.py). Per partition, Function calls of
bounded work (`ack_work_per_call`: so that none holds Redis much longer than ~1 ms), each
atomically, drop duplicates, apply each new event to its shopper's state (session, cart,
recent items, affinities, seen filter, online user features) and append it to the
partition's log. All calls of a batch go out in one pipeline round trip. When `ingest`
returns, every event reported `accepted` is in its log and its shopper's state, and a batch
retried after a crash completes what was missing: nothing is applied twice, nothing is lost.
There is no second phase: aggregates (trending, sketches, item series, co-occurrence, item
features, popularity, experiment attribution) are derived from the logs by the aggregate
workers (app/ingest/aggregates.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import redis

from app.core.batching import budget_runs
from app.core.errors import from_redis_error
from app.core.events import Event, Line
from app.core.settings import EngineConfig
from app.redis import calls

STATUS = {"A": "accepted", "D": "duplicate"}
CategoryLookup = Callable[[str], str | None]


class AckFeatures(Protocol):
    """The shopper feature work of the acknowledged calls (app/features/online.py). Each
    event is routed once per batch (`route`); the budget and the sections use that."""

    def route(self, event: Event) -> Any:
        """The event's feature routing (opaque here), given back to `states` and `section`."""

    def section(self, routed: Sequence[Any]) -> calls.Args | None:
        """One call's feature section: the routing of its events, in the call's input order
        -> (keys, argv), or None (app/features/online.py `ack_feature_section`)."""

    def states(self, routed: Any) -> Iterable[Hashable]:
        """The feature states an event writes besides its shopper's own (user x category
        pairs): each costs `ack_state_work` in a call's budget."""


# Told the accepted events of each batch (e.g. metrics); adds no Redis call.
Observer = Callable[[Sequence[Event]], object]


@dataclass(frozen=True)
class IngestReport:
    statuses: list[str]  # "accepted" / "duplicate", aligned with the input events
    accepted: int
    duplicates: int
    logged: int


class Ingestor:
    def __init__(
        self,
        client: redis.Redis,
        cfg: EngineConfig,
        *,
        category_of: CategoryLookup | None = None,
        ack_features: AckFeatures | None = None,
        observers: Sequence[Observer] = (),
    ) -> None:
        self.client = client
        self.cfg = cfg
        self.keys = cfg.keys()
        self.category_of = category_of
        self.ack_features = ack_features
        self.observers = list(observers)

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

    def partition_calls(self, events: Sequence[Event]) -> list[tuple[list[int], calls.Args]]:
        """The `ingest_partition` calls, each with the input positions of its events (in the
        call's order). Per partition, shoppers' events are packed into calls of at most
        `cfg.ack_work_per_call` work (one unit per line of an event, at least one per event:
        each line updates the session, affinities, pairs and features; `cfg.ack_shopper_work`
        per shopper; `cfg.ack_state_work` per user x category feature state); a shopper with more
        continues in the next call of its partition (calls run in order: dedup, state and log
        see the same sequence as one big call would). Pure: no network."""
        by_part: dict[int, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
        for i, ev in enumerate(events):
            by_part[self.keys.partition(ev.identity)][ev.identity].append(i)
        features = self.ack_features
        routed = [features.route(ev) for ev in events] if features is not None else []
        extras = None if features is None else (lambda i: features.states(routed[i]))
        out: list[tuple[list[int], calls.Args]] = []
        for partition in sorted(by_part):
            users = by_part[partition].values()
            runs = budget_runs(
                users, self.cfg.ack_work_per_call, group_cost=self.cfg.ack_shopper_work,
                extras=extras, extra_cost=self.cfg.ack_state_work,
                item_cost=lambda i: max(1, len(events[i].lines)),
            )  # fmt: skip
            for run in runs:
                groups = [[events[i] for i in idx] for idx in run]
                order = [i for idx in run for i in idx]
                section = None
                if features is not None:
                    section = features.section([routed[i] for i in order])
                args = calls.ingest_partition_args(self.cfg, self.keys, partition, groups, section)
                out.append((order, args))
        return out

    def ingest(self, events: Sequence[Event]) -> IngestReport:
        if not events:
            return IngestReport([], 0, 0, 0)
        events = [self._with_categories(ev) for ev in events]
        planned = self.partition_calls(events)
        pipe = self.client.pipeline(transaction=False)
        for _order, args in planned:
            calls.fcall(pipe, "ingest_partition", args)
        replies = self._execute(pipe)

        statuses: list[str] = [""] * len(events)
        accepted: list[Event] = []
        logged = 0
        for (order, _args), reply in zip(planned, replies, strict=True):
            result = calls.parse_ingest_partition(reply)
            logged += result.logged
            for i, code in zip(order, result.statuses, strict=True):
                statuses[i] = STATUS[code]
                if code == "A":
                    accepted.append(events[i])
        for observe in self.observers:
            observe(accepted)
        n_acc = len(accepted)
        return IngestReport(statuses, n_acc, len(events) - n_acc, logged)

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
