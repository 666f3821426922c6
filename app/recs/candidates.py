"""Candidate gathering's parts: reading neighbour lists (RESP2 twin, per-node pipelines on a
cluster), the candidate pool, history anchor weights, the rising-items signal."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import redis
from redis.crc import key_slot

from app.recs import calls as rec_calls
from app.recs.calls import RecContext
from app.redis.connect import is_cluster, resp2_cluster_twin


def hist_anchor_weight(ctx: RecContext, item: str, floor: float) -> float:
    """A history item's anchor weight before the weight 'hist': its interest relative to the
    strongest, raised to `floor` (REC.anchor_weights applies the same rule)."""
    w = ctx.hist_weight.get(item, 0.0)
    return max(w, floor) if w > 0 else 0.0


def rising_items(
    recent: Sequence[tuple[str, float]], usual: Mapping[str, float], n: int
) -> list[tuple[str, float]]:
    """The `n` items of `recent` (item, recent popularity) selling most above their usual
    rate, normalised to 0..1, best first. Within these items, an item's expected recent
    popularity is its share of their `usual` (long-run) popularity times their recent total;
    the value is the excess, recent x (1 - 1 / lift). Items at or below their usual rate are
    left out; an item without a usual rate counts all its recent popularity."""
    total_recent = sum(v for _, v in recent if v > 0)
    total_usual = sum(usual.get(item, 0.0) for item, _ in recent)
    excess: list[tuple[str, float]] = []
    for item, v in recent:
        share = usual.get(item, 0.0) / total_usual if total_usual > 0 else 0.0
        extra = v - total_recent * share
        if v > 0 and extra > 0:
            excess.append((item, extra))
    return normalised(sorted(excess, key=lambda x: (-x[1], x[0]))[:n])


@dataclass
class ModelLists:
    popular: list[tuple[str, float]]
    categories: dict[str, list[tuple[str, float]]]


def pairs(raw: Any) -> list[tuple[str, float]]:
    """A raw ZRANGE ... WITHSCORES reply as (member, score): RESP2 flat [m, s, m, s, ...] or
    RESP3 [[m, s], ...]."""
    if not raw:
        return []
    if isinstance(raw[0], bytes):  # RESP2, the common case: ~7,000 members per inline request
        return [(m.decode(), float(s)) for m, s in flat_pairs(raw)]
    return [(rec_calls.text(m), float(s)) for m, s in flat_pairs(raw)]


def flat_pairs(raw: Any) -> Any:
    """(member, score) pairs of a raw ZRANGE ... WITHSCORES reply, members left raw."""
    if not raw or isinstance(raw[0], list | tuple):
        return raw or ()
    it = iter(raw)
    return zip(it, it, strict=True)


def resp2_twin(client: redis.Redis, **overrides: Any) -> redis.Redis:
    """A client with the same connection settings speaking RESP2 (flat replies), or with
    `overrides` (e.g. `protocol`, `socket_timeout`; standalone only); for a cluster client, a
    cluster twin (redis-py speaks RESP3 by default, also on a cluster)."""
    if is_cluster(client):
        return resp2_cluster_twin(client)
    # redis-py adds internal RESP3-only settings (maintenance notifications, their originals)
    # to the pool's kwargs; the twin takes the connection settings only.
    internal = ("maint_notifications", "orig_", "himport_registry")
    kwargs = {
        k: v
        for k, v in client.connection_pool.connection_kwargs.items()
        if not k.startswith(internal)
    }
    kwargs["protocol"] = 2
    kwargs.update(overrides)
    pool = redis.ConnectionPool(
        connection_class=client.connection_pool.connection_class,
        max_connections=client.connection_pool.max_connections,
        **kwargs,
    )
    return redis.Redis(connection_pool=pool)


def by_node_pipelines(client: redis.Redis, specs: Sequence[tuple[str, int]]) -> list[Any]:
    """`read_lists` on a cluster: one plain pipeline per node, each key's node taken from
    redis-py's own slot map. redis-py's cluster pipeline works out every command's node from its
    arguments in Python (~9 ms for the ~145 reads of an inline request, profiled); the slot of
    a key alone is a fraction of that."""
    cluster = cast(Any, client)
    groups: dict[str, tuple[Any, list[int]]] = {}
    for i, (key, _n) in enumerate(specs):
        node = cluster.nodes_manager.get_node_from_slot(key_slot(key.encode()))
        groups.setdefault(node.name, (node, []))[1].append(i)
    out: list[Any] = [None] * len(specs)
    for node, members in groups.values():
        pipe = cluster.get_redis_connection(node).pipeline(transaction=False)
        for i in members:
            key, n = specs[i]
            pipe.execute_command("ZRANGE", key, 0, n - 1, "REV", "WITHSCORES")
        for i, reply in zip(members, pipe.execute(), strict=True):
            out[i] = reply
    return out


def normalised(pairs: Sequence[tuple[Any, Any]]) -> list[tuple[str, float]]:
    out = [(rec_calls.text(m), float(s)) for m, s in pairs]
    top = max((s for _, s in out), default=0.0)
    return [(m, s / top) for m, s in out] if top > 0 else []


@dataclass
class CandidatePool:
    """Candidates found so far: item -> {(source, anchor index): value} (the strongest value
    of each pair) and the estimated score term of each, which ranks the candidates sent."""

    anchors: list[str]  # anchor index i refers to anchors[i - 1]; 0 = global
    found: dict[str, dict[tuple[str, int], float]] = field(default_factory=dict)
    est: dict[str, dict[tuple[str, int], float]] = field(default_factory=dict)
    _index: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._index = {a: i for i, a in enumerate(self.anchors, start=1)}

    def anchor_index(self, item: str) -> int:
        """The index of an anchor, appending it when new (history anchors join as found)."""
        i = self._index.get(item)
        if i is None:
            self.anchors.append(item)
            i = self._index[item] = len(self.anchors)
        return i

    def put(self, item: str, src: str, anchor: int, value: float, term: float) -> None:
        if value <= 0:
            return
        d = self.found.setdefault(item, {})
        if value > d.get((src, anchor), 0.0):
            d[(src, anchor)] = value
            self.est.setdefault(item, {})[(src, anchor)] = term


ContentKnn = Callable[[str, int], list[tuple[str, float]]]
