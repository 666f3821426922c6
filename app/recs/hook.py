"""The recommender's ingestion hook (`Ingestor(..., phase2_hooks=[RecIngestHook(...)])`).

For the accepted events of a batch (so duplicates never count twice) it adds to the phase-2
pipeline:
- `rec_track` calls: each shopper's long-term item history `u:{<user>}:hist` (the 'hist'
  anchors of `recommend`); standalone: up to `users_per_call` users per call, cluster: one
  call per user slot;
- one `rec_hot` call (global slot): real-time popularity `g:{g}:rec:hot`, forward-decayed;
- `exp_track` calls: clicks, carts, purchases and revenue attributed to the experiment variant
  named in the event's `props.variant` (app/recs/experiments.py).

A hook must never break ingestion: any error while building the calls is logged and the batch
goes on without them.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

from app.core.events import Event
from app.core.settings import EngineConfig
from app.recs import calls as rec_calls
from app.recs.experiments import ExperimentStore
from app.recs.keys import RecKeys
from app.recs.recommender import RecConfig
from app.redis.slots import call_groups

log = logging.getLogger("retail.recs.ingest")
TRACKED = frozenset({"view", "click", "add_to_cart", "purchase"})


class RecIngestHook:
    def __init__(
        self,
        engine: EngineConfig,
        cfg: RecConfig | None = None,
        experiments: ExperimentStore | None = None,
        *,
        cluster: bool = False,
    ) -> None:
        self.engine = engine
        self.cfg = cfg or RecConfig(key_prefix=engine.key_prefix)
        self.keys = RecKeys(engine.key_prefix)
        self.experiments = experiments
        self.cluster = cluster

    def track_calls(self, events: Sequence[Event]) -> list[tuple[str, rec_calls.Args]]:
        by_user: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
        for ev in events:
            if ev.type in TRACKED:
                for ln in ev.lines:
                    by_user[ev.identity].append((ln.item_id, ev.type, ev.ts))
        if not by_user:
            return []
        chunks = call_groups(
            list(by_user), self.keys.hist, cluster=self.cluster,
            per_call=self.engine.users_per_call,
        )  # fmt: skip
        c = self.cfg
        return [
            (
                "rec_track",
                rec_calls.rec_track_args(
                    self.keys,
                    [(u, by_user[u]) for u in chunk],
                    epoch_ms=self.engine.aff_epoch_ms,
                    half_life_ms=c.hist_half_life_ms,
                    cap=c.hist_cap,
                    ttl_s=self.engine.user_ttl_s,
                    weights=dict(c.hist_weights),
                ),
            )
            for chunk in chunks
        ]

    def hot_calls(self, events: Sequence[Event]) -> list[tuple[str, rec_calls.Args]]:
        weights = dict(self.cfg.hot_weights)
        entries = [
            (ln.item_id, weights[ev.type], ev.ts)
            for ev in events
            if weights.get(ev.type, 0.0) > 0
            for ln in ev.lines
        ]
        if not entries:
            return []
        c = self.cfg
        args = rec_calls.rec_hot_args(
            self.keys, entries, epoch_ms=self.engine.aff_epoch_ms,
            half_life_ms=c.hot_half_life_ms, cap=c.hot_cap, ttl_s=self.engine.user_ttl_s,
        )  # fmt: skip
        return [("rec_hot", args)]

    def __call__(self, events: Sequence[Event]) -> list[tuple[str, rec_calls.Args]]:
        out: list[tuple[str, rec_calls.Args]] = []
        try:
            out += self.track_calls(events)
            out += self.hot_calls(events)
        except (ValueError, TypeError) as exc:
            log.error("rec_track calls skipped for this batch: %s", exc)
        if self.experiments is not None:
            try:
                self.experiments.maybe_refresh()
                out += self.experiments.attribution_calls(events)
            except (ValueError, TypeError) as exc:
                log.error("experiment attribution skipped for this batch: %s", exc)
        return out
