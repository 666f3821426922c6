"""The recommender's share of the aggregate workers (`AggregateWorker(hooks=[RecBlockHook])`).

For the blocks of a worker step (log entries, so every acknowledged event counts once) it
adds `apply_blocks` calls:
- `rec_track` per block (the partition's slot): each shopper's long-term item history
  `u:{p<n>}:<user>:hist` (the 'hist' anchors of `recommend`);
- one `rec_hot` call for all blocks (global slot): real-time popularity `g:{g}:rec:hot`
  (cluster: split by item hash into `hot_shards` parts `g:{g<i>}:rec:hot`, one call per
  part, merged on read);
- `exp_track` per experiment and block: clicks, carts, purchases and revenue attributed to the
  experiment variant named in the event's `props.variant` (app/recs/experiments.py).

A hook must never break the workers: an error while building the calls is logged and the
step goes on without them.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from app.core.settings import EngineConfig
from app.ingest.aggregates import LogBlock
from app.recs import calls as rec_calls
from app.recs.config import RecConfig
from app.recs.experiments import ExperimentStore
from app.recs.keys import RecKeys, hot_shard_of
from app.redis.calls import Block, BlockCall

log = logging.getLogger("retail.recs.ingest")
TRACKED = frozenset({"view", "click", "add_to_cart", "purchase"})
TRACK_HEADER = 5  # rec_track's leading ARGV (lua/60_recommend.lua)
HOT_HEADER = 4
EXP_HEADER = 4
MAX_UNKNOWN_LABELS = 1000


class RecBlockHook:
    def __init__(
        self,
        engine: EngineConfig,
        cfg: RecConfig | None = None,
        experiments: ExperimentStore | None = None,
        *,
        cluster: bool = False,
    ) -> None:
        self.engine = engine
        self.cluster = cluster
        self.cfg = cfg or RecConfig(key_prefix=engine.key_prefix)
        self.keys = RecKeys(engine.key_prefix, engine.partitions, engine.agg_shards)
        self.experiments = experiments
        self._refreshed_for: set[str] = set()

    def track_call(self, block: LogBlock) -> BlockCall | None:
        by_user: dict[str, list[tuple[str, str, int]]] = defaultdict(list)
        for ev in block.events:
            if ev.type in TRACKED:
                for ln in ev.lines:
                    by_user[ev.identity].append((ln.item_id, ev.type, ev.ts))
        if not by_user:
            return None
        c = self.cfg
        keys, argv = rec_calls.rec_track_args(
            self.keys, list(by_user.items()), epoch_ms=self.engine.aff_epoch_ms,
            half_life_ms=c.hist_half_life_ms, cap=c.hist_cap, ttl_s=self.engine.user_ttl_s,
            weights=dict(c.hist_weights),
        )  # fmt: skip
        b = Block(block.partition, block.first_id, block.last_id, [(0, argv[TRACK_HEADER:])])
        applied = self.keys.part(block.partition, "applied")
        return BlockCall(applied, "rec_track", argv[:TRACK_HEADER], keys, [b])

    def hot_calls(self, blocks: Sequence[LogBlock]) -> list[BlockCall]:
        weights = dict(self.cfg.hot_weights)
        c = self.cfg
        n = c.hot_shards if self.cluster else 1
        hot_keys = self.keys.hot_shards(n)
        cap = c.hot_cap if n == 1 else max(1, -(-2 * c.hot_cap // n))
        per_part: dict[int, list[Block]] = defaultdict(list)
        header: list[Any] = []
        for block in blocks:
            parts: dict[int, list[tuple[str, float, int]]] = defaultdict(list)
            for ev in block.events:
                if weights.get(ev.type, 0.0) > 0:
                    for ln in ev.lines:
                        parts[hot_shard_of(ln.item_id, n)].append(
                            (ln.item_id, weights[ev.type], ev.ts)
                        )
            for i, entries in parts.items():
                _keys, argv = rec_calls.rec_hot_args(
                    self.keys, entries, epoch_ms=self.engine.aff_epoch_ms,
                    half_life_ms=c.hot_half_life_ms, cap=cap, ttl_s=self.engine.user_ttl_s,
                    key=hot_keys[i],
                )  # fmt: skip
                header = argv[:HOT_HEADER]
                per_part[i].append(Block(block.partition, block.first_id, block.last_id,
                                         [(0, argv[HOT_HEADER:])]))  # fmt: skip
        # The exactly-once marks live next to each part (same hash tag).
        out: list[BlockCall] = []
        for i, part_blocks in sorted(per_part.items()):
            applied = hot_keys[i].removesuffix(":rec:hot") + ":applied"
            out.append(BlockCall(applied, "rec_hot", header, [hot_keys[i]], part_blocks))
        return out

    def experiment_calls(self, block: LogBlock) -> list[BlockCall]:
        if self.experiments is None:
            return []
        self.experiments.maybe_refresh()
        labels = {ev.props.get("variant") for ev in block.events}
        unknown = {
            v for v in labels
            if isinstance(v, str) and v and self.experiments.resolve(v) is None
            and v not in self._refreshed_for
        }  # fmt: skip
        if unknown:
            # A variant of an experiment created after our last refresh (the workers run
            # apart from the API that created it): reload now, once per unknown label.
            if len(self._refreshed_for) > MAX_UNKNOWN_LABELS:
                self._refreshed_for.clear()
            self._refreshed_for |= unknown
            self.experiments.refresh()
        out: list[BlockCall] = []
        for exp_id, (keys, argv) in self.experiments.attribution_by_experiment(block.events):
            n_incr = int(argv[EXP_HEADER])
            incr_end = EXP_HEADER + 1 + 4 * n_incr
            n_log = int(argv[incr_end])
            lists = [(n_incr, argv[EXP_HEADER + 1 : incr_end]), (n_log, argv[incr_end + 1 :])]
            b = Block(block.partition, block.first_id, block.last_id, lists)
            applied = self.keys.exp(exp_id, "applied")
            out.append(BlockCall(applied, "exp_track", argv[:EXP_HEADER], keys, [b]))
        return out

    def __call__(self, blocks: Sequence[LogBlock]) -> list[BlockCall]:
        out: list[BlockCall] = []
        try:
            for block in blocks:
                track = self.track_call(block)
                if track is not None:
                    out.append(track)
            out += self.hot_calls(blocks)
        except (ValueError, TypeError) as exc:
            log.error("rec_track / rec_hot calls skipped for this step: %s", exc)
        try:
            for block in blocks:
                out += self.experiment_calls(block)
        except (ValueError, TypeError) as exc:
            log.error("experiment attribution skipped for this step: %s", exc)
        return out
