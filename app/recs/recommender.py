"""Real-time recommendations: candidate gathering, the `recommend` Function, serving tiers.

Split across slots (docs/recommendations.md, "Cluster split"):

1. `rec_context` (user slot, FCALL_RO): the session's recent and cart items, the strongest
   history items and affinity categories, the interaction count (tier) and the session's
   newest event time (cache freshness). Pipelined with the cached list's GET: one round trip.
2. Item slots (one pipeline of ZRANGEs over a RESP2 connection; a cluster client splits it
   per slot): the model's neighbour lists (`i:{a}:nn:<model>`), content neighbours
   (`i:{a}:cn:<model>`) and real-time co-occurrence (`i:{a}:co:b|v`) of each anchor (context
   item, cart, recent, history), and the similar shoppers' recent items (`u:{p}:hist`). Global
   lists (trending, model popularity, category tops) and product attributes come from
   in-process caches (refreshed every second; trending and real-time popularity every 5 s).
3. `recommend` (user slot, FCALL_RO): candidates with their attributes in ARGV; scoring with
   session context, filters, diversity, reasons.

Serving (`Recommender.serve`) never raises for a valid request and never answers empty while
anything is known: fresh cached list -> inline computation (within `budget_ms`) -> the user's
last-known-good list (Redis copy, else the in-process LRU) -> the popularity snapshot (kept in
process, so it works while Redis is unreachable). Every fallback is counted.
"""

from __future__ import annotations

import contextlib
import copy
import heapq
import json
import logging
import threading
import time
import uuid
from collections import Counter, OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from operator import itemgetter
from typing import Any

import redis

from app.core.errors import EngineError
from app.core.settings import EngineConfig
from app.recs import calls as rec_calls
from app.recs.calls import Candidate, RecContext, RecItem, RecParams, RecReply
from app.recs.candidates import (
    CandidatePool,
    ContentKnn,
    ModelLists,
    by_node_pipelines,
    flat_pairs,
    hist_anchor_weight,
    normalised,
    pairs,
    resp2_twin,
    rising_items,
)
from app.recs.config import DEFAULT_WEIGHTS, RecConfig
from app.recs.experiments import DEFAULT, Assignment, ExperimentStore
from app.recs.items import ItemCatalog, new_arrival
from app.recs.keys import CACHED_SURFACES, NAME_RE, RecKeys
from app.recs.lists import RecList, RecRequest, RecResponse
from app.recs.resilience import LRU, Breaker, BudgetExceeded
from app.redis import calls
from app.redis.connect import connect, is_cluster
from app.redis.health import RedisHealth

log = logging.getLogger("retail.recommend")


REASONS = {
    "viewed": "because you viewed {anchor}",
    "carted": "because you added {anchor} to your cart",
    "bought": "because you bought {anchor}",
    "in_cart": "goes well with {anchor} in your cart",
    "context": "often bought with {anchor}",
    "history": "because you liked {anchor}",
    "similar": "similar to {anchor}",
    "rebuy": "buy it again",
    "peers": "bought lately by shoppers like you",
    "category": "popular in {category}",
    "trending": "trending in {category}",
    "new": "new in {category}",
    "popular": "popular right now",
}
KNN_TTL_S = 600.0
PATIENT_TIMEOUT_S = 10.0  # socket timeout of `at_time`'s clients (backtests, no budget)
TIER_NAMES = {"cold": "cold_start", "content": "content_based", "collab": "collaborative"}


# -- the recommender -----------------------------------------------------------------------------


class Recommender:
    """Candidate gathering + the `recommend` Function + serving tiers. Thread-safe.

    `client` should carry a socket timeout of about `budget_ms` (see `timeout_client`), so a
    slow or stopped Redis turns into a fallback instead of a hung request.
    """

    def __init__(
        self,
        client: redis.Redis,
        engine: EngineConfig,
        cfg: RecConfig | None = None,
        *,
        catalog: ItemCatalog | None = None,
        catalog_client: redis.Redis | None = None,
        experiments: ExperimentStore | None = None,
        content_knn: ContentKnn | None = None,
    ) -> None:
        """`catalog_client`: where products live (the search node on a cluster); default
        `client`."""
        self.client = client
        self._lists_client = resp2_twin(client)
        self.engine = engine
        self.cfg = cfg or RecConfig(key_prefix=engine.key_prefix)
        self.keys = RecKeys(engine.key_prefix, engine.partitions, engine.agg_shards)
        self.catalog = catalog or ItemCatalog(
            catalog_client or client, engine.key_prefix,
            restricted_categories=self.cfg.restricted_categories,
            restricted_tags=self.cfg.restricted_tags,
        )  # fmt: skip
        self.experiments = experiments or ExperimentStore(client, self.keys)
        self.content_knn = content_knn
        self.lru = LRU(self.cfg.lru_size)
        self.breaker = Breaker(self.cfg.breaker_open_s)
        # The app's probe-fed breaker (app/redis/health.py): a hung Redis is skipped at once.
        self.health: RedisHealth | None = None
        self.model: str | None = None
        self._model_lists: dict[str, ModelLists] = {}
        self.trending: list[tuple[str, float]] = []
        self.hot: list[tuple[str, float]] = []  # real-time popularity (rec_hot), normalised
        self._popular_cache: tuple[tuple[str | None, int], list[tuple[str, float]]] | None = None
        self._rising_cache: tuple[int, list[tuple[str, float]]] | None = None
        self.snapshot: list[tuple[str, float, str]] = []  # (item, score, reason)
        self._knn_cache: OrderedDict[str, tuple[float, list[tuple[str, float]]]] = OrderedDict()
        self._stats: Counter[str] = Counter()
        self._unflushed: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error_log = 0.0
        self._patient_view: Recommender | None = None
        # Called with every candidate pool and the candidates sent (evaluation: the ceiling
        # analysis of bench/evaluate.py measures how often the targets are in the pool).
        self.pool_observer: Callable[[CandidatePool, Sequence[Candidate]], None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """A first refresh now (best effort), then a daemon thread every `refresh_s`."""
        self.refresh()
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="recs-refresh", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        lists_at = time.monotonic()
        while not self._stop.wait(self.cfg.refresh_s):
            lists_due = time.monotonic() - lists_at >= self.cfg.lists_refresh_s
            if lists_due:
                lists_at = time.monotonic()
            self.refresh(lists=lists_due)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with contextlib.suppress(redis.RedisError, EngineError):
            self.experiments.flush()
        with contextlib.suppress(redis.RedisError):
            self._flush_stats()
        if self._lists_client is not self.client:
            self._lists_client.close()
        view, self._patient_view = self._patient_view, None
        if view is not None and view.client is not self.client:
            view.client.close()
            view._lists_client.close()

    # -- counters -----------------------------------------------------------------------------
    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._stats[name] += n
            self._unflushed[name] += n

    def stats(self) -> dict[str, int]:
        with self._lock:
            return dict(self._stats)

    def _flush_stats(self) -> None:
        with self._lock:
            pending, self._unflushed = self._unflushed, Counter()
        if not pending:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for name, n in pending.items():
                pipe.hincrby(self.keys.rec_stats, name, n)
            pipe.execute()
        except redis.RedisError:
            with self._lock:
                self._unflushed.update(pending)
            raise

    # -- background refresh -------------------------------------------------------------------
    def refresh(self, lists: bool = True) -> None:
        """One maintenance pass (`lists`: trending and real-time popularity too); every step
        is best effort (Redis may be down)."""
        steps: list[tuple[str, Callable[[], Any]]] = [("model", self.refresh_model)]
        if lists:
            steps += [("trending", self.refresh_trending), ("hot", self.refresh_hot)]
        steps += [
            ("catalog", self.catalog.refresh),
            ("experiments", self.experiments.refresh),
            ("exposures", self.experiments.flush),
            ("stats", self._flush_stats),
        ]
        for name, step in steps:
            if self.breaker.open:
                break
            try:
                step()
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self.breaker.trip()
                self._log_error(f"refresh {name}: {exc}")
            except (redis.RedisError, EngineError, ValueError) as exc:
                self._log_error(f"refresh {name}: {exc}")
        self._rebuild_snapshot()

    def _log_error(self, msg: str) -> None:
        now = time.monotonic()
        if now - self._last_error_log > 10:
            self._last_error_log = now
            log.warning("%s", msg)

    def refresh_model(self) -> None:
        raw = self.client.get(self.keys.model_pointer)
        version = rec_calls.text(raw) if raw is not None else None
        if version is not None and not NAME_RE.match(version):
            raise ValueError(f"bad model version in {self.keys.model_pointer}: {version!r}")
        self.model = version
        if version is not None and version not in self._model_lists:
            self.model_lists(version)

    def model_lists(self, version: str) -> ModelLists:
        """Popularity and category tops of one model version (cached per version)."""
        cached = self._model_lists.get(version)
        if cached is not None:
            return cached
        meta_raw = self.client.hget(self.keys.models, version)
        meta = json.loads(meta_raw) if meta_raw else {}
        cats = [c for c in meta.get("categories", []) if NAME_RE.match(c)]
        pipe = self.client.pipeline(transaction=False)
        pipe.zrevrange(self.keys.popular(version), 0, self.cfg.snapshot_size - 1, withscores=True)
        for c in cats:
            pipe.zrevrange(self.keys.category_top(version, c), 0, self.cfg.n_category - 1,
                           withscores=True)  # fmt: skip
        replies = pipe.execute()
        lists = ModelLists(
            normalised(replies[0]),
            {c: normalised(r) for c, r in zip(cats, replies[1:], strict=True) if r},
        )
        with self._lock:
            self._model_lists[version] = lists
            while len(self._model_lists) > 4:
                self._model_lists.pop(next(iter(self._model_lists)))
        return lists

    def refresh_trending(self) -> None:
        scores: dict[str, float] = {}
        for etype, weight in self.cfg.trending_types:
            _, items = calls.trending(
                self.client, self.engine, self.keys, etype, self.cfg.n_trending
            )
            top = max((it.score for it in items), default=0.0)
            for it in items:
                if top > 0:
                    scores[it.item_id] = scores.get(it.item_id, 0.0) + weight * it.score / top
        ranked = sorted(scores.items(), key=lambda x: (-x[1], x[0]))[: self.cfg.n_trending]
        self.trending = normalised(ranked)

    def refresh_hot(self) -> None:
        n = max(self.cfg.n_popular, self.cfg.snapshot_size)
        parts = self.keys.hot_shards(self.cfg.hot_shards if is_cluster(self.client) else 1)
        pipe = self.client.pipeline(transaction=False)
        for key in parts:
            pipe.zrevrange(key, 0, n - 1, withscores=True)
        merged = [pair for raw in pipe.execute() for pair in pairs(raw)]
        merged.sort(key=lambda p: -p[1])
        self.hot = normalised(merged[:n])

    def popular(self, model: str | None) -> list[tuple[str, float]]:
        """'pop' candidates: real-time popularity, next to the model's (weighted by
        `model_popularity_share`); the stronger value of an item counts. Cached until the
        next refresh of either list."""
        key = (model, id(self.hot))
        cached = self._popular_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        scores = dict(self.hot)
        lists = self.model_lists(model) if model else None
        share = self.cfg.model_popularity_share
        for item, s in lists.popular if lists else []:
            if share * s > scores.get(item, 0.0):
                scores[item] = share * s
        ranked = sorted(scores.items(), key=lambda x: (-x[1], x[0]))
        self._popular_cache = (key, ranked)
        return ranked

    def rising(self) -> list[tuple[str, float]]:
        """'rise' candidates: items selling above their usual rate lately, best first.

        Among the items of `hot` (recent popularity, 14-day half-life), an item's lift is its
        share of their recent popularity over its share of their long-run popularity (the
        catalog's `popularity`: purchase lines); its value is the recent popularity in excess
        of the usual, hot x (1 - 1 / lift), normalised to 0..1. A perennial best seller
        scores ~0, a seasonal or newly adopted item high. Cached until `hot` is re-read."""
        key = id(self.hot)
        cached = self._rising_cache
        if cached is not None and cached[0] == key:
            return cached[1]
        usual = {}
        for item, _ in self.hot:
            attr = self.catalog.get(item)
            usual[item] = attr.popularity if attr is not None else 0.0
        ranked = rising_items(self.hot, usual, self.cfg.n_rising)
        self._rising_cache = (key, ranked)
        return ranked

    def _rebuild_snapshot(self) -> None:
        """Popularity snapshot for fallbacks: trending now + the model's popularity, else the
        catalog's own popularity. Kept in process: it serves while Redis is unreachable."""
        scores: dict[str, tuple[float, str]] = {}
        lists = self._model_lists.get(self.model) if self.model else None
        share = self.cfg.model_popularity_share
        for item, s in lists.popular if lists else []:
            scores[item] = (share * s, "popular")
        for item, s in self.hot:
            scores[item] = (max(s, scores.get(item, (0.0, ""))[0]), "popular")
        for item, s in self.trending:
            prev = scores.get(item, (0.0, "popular"))[0]
            scores[item] = (prev + 1.5 * s, "trending")
        if not scores:
            for item, pop in self.catalog.most_popular(self.cfg.snapshot_size):
                scores[item] = (pop, "popular")
        ranked = sorted(scores.items(), key=lambda x: (-x[1][0], x[0]))
        snap = [(i, s, r) for i, (s, r) in ranked[: self.cfg.snapshot_size]]
        if snap:
            self.snapshot = snap

    # -- computation ----------------------------------------------------------------------------
    def context_args(self, user: str, model: str | None = None) -> rec_calls.Args:
        c = self.cfg
        return rec_calls.rec_context_args(self.keys, user, c.n_recent, c.n_hist, c.n_cats,
                                          model=model, n_peers=c.n_peers)  # fmt: skip

    def peer_scores(
        self, ctx: RecContext, histories: Mapping[str, Any], now_ms: int
    ) -> list[tuple[str, float]]:
        """User-kNN: sum over the user's peers p of similarity(p) x recent interest of p in
        the item, normalised to 0..1, best first.

        A peer's `hist` score is forward-decayed (`hist_half_life_ms`); its value now is
        score x 2^(-(now - epoch) / half-life). Capped at one purchase's weight, so an item a
        peer bought once last week counts (nearly) fully and ten purchases a year ago do not
        outweigh it: recency, not volume (chosen on the validation split).

        `histories`: raw ZRANGE replies per peer. Hot path (~100 peers x 30 items): members
        stay raw as keys and only the winners are decoded."""
        c = self.cfg
        unit = max((w for _, w in c.hist_weights), default=1.0)
        scale = 2.0 ** (-(now_ms - self.engine.aff_epoch_ms) / c.hist_half_life_ms) / unit
        scores: dict[Any, float] = {}
        get = scores.get
        for peer, sim in ctx.peers.items():
            for member, score in flat_pairs(histories.get(peer)):
                v = float(score) * scale
                scores[member] = get(member, 0.0) + sim * (v if v < 1.0 else 1.0)
        best = heapq.nlargest(c.n_peer_candidates, scores.items(), key=itemgetter(1))
        return normalised(sorted(best, key=lambda x: (-x[1], x[0])))

    def read_lists(self, specs: Sequence[tuple[str, int]]) -> list[Any]:
        """The top entries of many sorted sets, in `specs` order: one pipeline of raw
        `ZRANGE key 0 n-1 REV WITHSCORES` (a cluster client splits it per slot) on the RESP2
        twin of the client. RESP3 answers each (member, score) as its own list; ~170 lists x
        30-50 entries per inline request made the garbage collector stall some requests for
        50+ ms (p99), while the flat RESP2 reply kept p99 under 10 ms (measured side by side;
        a Lua Function packing the lists into strings cost the server twice the CPU). Raw
        replies: see `pairs` and `flat_pairs`."""
        if not specs:
            return []
        if is_cluster(self._lists_client):
            with contextlib.suppress(redis.ResponseError):  # MOVED mid-reshard: the slow path
                return by_node_pipelines(self._lists_client, specs)
        pipe = self._lists_client.pipeline(transaction=False)
        for key, n in specs:
            pipe.execute_command("ZRANGE", key, 0, n - 1, "REV", "WITHSCORES")  # type: ignore[no-untyped-call]
        return list(pipe.execute())

    def anchors(self, ctx: RecContext, req: RecRequest) -> tuple[list[str], list[str]]:
        """(session anchors, history-only anchors). Session anchors (the product page's item,
        cart lines, recent items) get their weight in the Function from the live session; the
        history-only ones are aggregated here (see `candidates`)."""
        session: list[str] = []
        for group in (
            [req.item] if req.surface == "product" and req.item else [],
            ctx.cart[: self.cfg.n_cart],
            ctx.recent[: self.cfg.n_recent],
        ):
            for item in group:
                if item not in session:
                    session.append(item)
        seen = set(session)
        hist = [h for h in ctx.hist[: self.cfg.n_hist] if h not in seen]
        return session, hist[: max(0, self.cfg.max_anchors - len(session))]

    def _knn(self, item: str) -> list[tuple[str, float]] | None:
        """Vector neighbours of an item the model has no content list for (a product added
        after training): `content_knn` (the search index's KNN), kept 10 minutes in process,
        failures included (no index: no retry on every request)."""
        if self.content_knn is None:
            return None
        now = time.monotonic()
        with self._lock:
            cached = self._knn_cache.get(item)
        if cached is not None and now - cached[0] < KNN_TTL_S:
            return cached[1]
        found: list[tuple[str, float]] = []
        try:
            found = self.content_knn(item, self.cfg.neighbours)
        except (redis.RedisError, EngineError) as exc:
            self._log_error(f"content KNN for {item}: {exc}")
        with self._lock:
            self._knn_cache[item] = (now, found)
            self._knn_cache.move_to_end(item)
            while len(self._knn_cache) > 20_000:
                self._knn_cache.popitem(last=False)
        return found

    def candidates(
        self,
        ctx: RecContext,
        req: RecRequest,
        model: str | None,
        weights: Mapping[str, float],
        repurchase: bool,
        deadline: float | None,
    ) -> tuple[list[str], list[Candidate]]:
        """Anchors and candidates (with attributes) for `recommend`, in six steps: read the
        anchors' lists and the peers' histories (one round trip); the session anchors'
        sources; the history anchors' sums; the global sources (category tops, popularity,
        trending, similar shoppers); the new-arrival boost; the best `max_candidates` by
        estimated score."""
        session, hist = self.anchors(ctx, req)
        lists, histories = self._read_anchor_lists(ctx, session, hist, model, deadline)
        pool = CandidatePool(list(session))
        self._add_session_sources(pool, ctx, session, lists, model, weights, repurchase)
        self._add_history_sources(pool, ctx, session, hist, lists, model, weights, repurchase)
        now_ms = req.now_ms or int(time.time() * 1000)
        self._add_global_sources(pool, ctx, model, weights, histories, now_ms)
        self._add_new_arrival_boost(pool, weights, now_ms)
        ranked = self._ranked_candidates(pool)
        if self.pool_observer is not None:
            self.pool_observer(pool, ranked)
        return pool.anchors, ranked

    def _read_anchor_lists(
        self,
        ctx: RecContext,
        session: Sequence[str],
        hist: Sequence[str],
        model: str | None,
        deadline: float | None,
    ) -> tuple[dict[str, dict[str, list[tuple[str, float]]]], dict[str, Any]]:
        """(anchor -> list kind -> (item, score), peer -> raw history), one pipeline.

        Session anchors read every list (`neighbours` entries each): model (`nn`) and content
        (`cn`) neighbours, co-bought (`cob`) and co-viewed (`cov`); history anchors only the
        kinds in `hist_lists` (`hist_neighbours` each). Then the model's peers' histories."""
        c = self.cfg
        session_set = set(session)
        specs: list[tuple[str, int]] = []  # (sorted set, entries), in reply order
        plan: list[tuple[str, str]] = []  # (anchor, list kind) of the first len(plan) specs
        for a in [*session, *hist]:
            in_session = a in session_set
            keys: list[tuple[str, str]] = []
            if model:
                keys += [("nn", self.keys.nn(a, model)), ("cn", self.keys.cn(a, model))]
            keys.append(("cob", self.keys.co(a, "b")))
            if in_session:
                keys.append(("cov", self.keys.co(a, "v")))
            else:
                keys = [(kind, zkey) for kind, zkey in keys if kind in c.hist_lists]
            size = c.neighbours if in_session else c.hist_neighbours
            for kind, zkey in keys:
                specs.append((zkey, size))
                plan.append((a, kind))
        peers = list(ctx.peers) if model else []
        for p in peers:  # the peers' strongest recent items (their slots: same round trip)
            specs.append((self.keys.hist(p), c.peer_items))
        replies = self.read_lists(specs)
        if deadline is not None and time.perf_counter() > deadline:
            raise BudgetExceeded("budget spent gathering neighbours")
        lists: dict[str, dict[str, list[tuple[str, float]]]] = {}
        for (a, kind), raw in zip(plan, replies[: len(plan)], strict=True):
            lists.setdefault(a, {})[kind] = pairs(raw)
        return lists, dict(zip(peers, replies[len(plan) :], strict=True))

    def _sources_of(
        self,
        a: str,
        lists: Mapping[str, Mapping[str, list[tuple[str, float]]]],
        model: str | None,
        in_session: bool,
    ) -> list[tuple[str, list[tuple[str, float]]]]:
        """The (source, [(item, value)]) lists of one anchor: nn, ct, co."""
        c = self.cfg
        got = lists.get(a, {})
        out: list[tuple[str, list[tuple[str, float]]]] = []
        if model:
            out.append(("nn", got.get("nn", [])))
        # content neighbours where they were read (history anchors skip them unless
        # hist_lists names them); the on-demand KNN stands in for a missing model list
        if "cn" in got or in_session:
            out.append(("ct", got.get("cn") or (self._knn(a) or [])))
        co: dict[str, float] = {}
        for item, cnt in got.get("cob", []):
            co[item] = cnt / (cnt + c.co_shrink)
        for item, cnt in got.get("cov", []):
            v = c.co_view_share * cnt / (cnt + c.co_shrink)
            if v > co.get(item, 0.0):
                co[item] = v
        out.append(("co", list(co.items())))
        return out

    def _add_session_sources(
        self,
        pool: CandidatePool,
        ctx: RecContext,
        session: Sequence[str],
        lists: Mapping[str, Mapping[str, list[tuple[str, float]]]],
        model: str | None,
        weights: Mapping[str, float],
        repurchase: bool,
    ) -> None:
        """Session anchors are sent one by one: the Function weighs each by the live session
        (recency, cart line, product page)."""
        for i, a in enumerate(session, start=1):
            for src, found_pairs in self._sources_of(a, lists, model, in_session=True):
                w = weights.get(src, 0.0)
                for item, v in found_pairs:
                    v = min(v, 1.0)
                    pool.put(item, src, i, v, w * v)
            if repurchase and (a in ctx.hist_weight or a in ctx.recent):
                pool.put(a, "rb", i, 1.0, weights.get("rb", 0.0))

    def _add_history_sources(
        self,
        pool: CandidatePool,
        ctx: RecContext,
        session: Sequence[str],
        hist: Sequence[str],
        lists: Mapping[str, Mapping[str, list[tuple[str, float]]]],
        model: str | None,
        weights: Mapping[str, float],
        repurchase: bool,
    ) -> None:
        """History-only anchors, pre-summed per candidate and source, exactly: for anchors h
        with history weight w_h (0..1, from rec_context) and similarity v_h, the Function must
        add W * hist * sum_h(w_h * v_h); we send that sum divided by w_t under the strongest
        contributor t, and the Function multiplies by its anchor weight hist * w_t. Same
        score, one source instead of dozens per candidate, and the reason still names a real
        item ("because you bought <t>")."""
        sums: dict[tuple[str, str], float] = {}
        floor = weights.get("hist_floor", 0.0)
        top: dict[tuple[str, str], tuple[float, str]] = {}
        session_set = set(session)
        for h in hist:
            hw = hist_anchor_weight(ctx, h, floor)
            if hw < 1e-6:
                continue
            for src, found_pairs in self._sources_of(h, lists, model, h in session_set):
                for item, v in found_pairs:
                    if v <= 0:
                        continue
                    part = hw * min(v, 1.0)
                    key = (item, src)
                    sums[key] = sums.get(key, 0.0) + part
                    if part > top.get(key, (0.0, ""))[0]:
                        top[key] = (part, h)
            if repurchase:
                key = (h, "rb")
                sums[key] = hw
                top[key] = (hw, h)
        hist_w = weights.get("hist", 0.0)
        for (item, src), total in sums.items():
            t = top[(item, src)][1]
            pool.put(item, src, pool.anchor_index(t), total / hist_anchor_weight(ctx, t, floor),
                     weights.get(src, 0.0) * hist_w * total)  # fmt: skip

    def _add_global_sources(
        self,
        pool: CandidatePool,
        ctx: RecContext,
        model: str | None,
        weights: Mapping[str, float],
        histories: Mapping[str, Any],
        now_ms: int,
    ) -> None:
        """Sources tied to no anchor: the tops of the shopper's categories (the Function
        weighs them by the category's affinity), popularity, trending, similar shoppers."""
        c = self.cfg
        lists = self.model_lists(model) if model else None
        if lists is not None:
            for cat in ctx.categories[: c.n_cats]:
                for item, s in lists.categories.get(cat, [])[: c.n_category]:
                    pool.put(item, "cat", 0, s, weights.get("cat", 0.0) * s)
        for item, s in self.popular(model)[: c.n_popular]:
            pool.put(item, "pop", 0, s, weights.get("pop", 0.0) * s)
        for item, s in self.trending[: c.n_trending]:
            pool.put(item, "tr", 0, s, weights.get("tr", 0.0) * s)
        if weights.get("rise", 0.0) > 0:
            for item, s in self.rising():
                pool.put(item, "rise", 0, s, weights["rise"] * s)
        if histories:
            for item, s in self.peer_scores(ctx, histories, now_ms):
                pool.put(item, "uk", 0, s, weights.get("uk", 0.0) * s)

    def _add_new_arrival_boost(
        self, pool: CandidatePool, weights: Mapping[str, float], now_ms: int
    ) -> None:
        """A boost, not a source of its own: only candidates another source found get it (as
        candidates of their own, new products crowd out better-supported items; see
        docs/recommendations.md). Bounded by the candidates found, not by the catalog."""
        c = self.cfg
        w_new = weights.get("new", 0.0)
        if w_new <= 0:
            return
        since = now_ms - c.new_window_ms
        for item in list(pool.found):
            attr = self.catalog.get(item)
            if attr is not None and attr.created_ms >= since:
                v = new_arrival(attr.created_ms, now_ms, c.new_window_ms, c.new_half_life_ms)
                pool.put(item, "new", 0, v, w_new * v)

    def _ranked_candidates(self, pool: CandidatePool) -> list[Candidate]:
        """The `max_candidates` with the highest estimated score, with their attributes and
        their `max_sources` strongest sources; items the catalog does not know are dropped."""
        c = self.cfg
        total_est = {item: sum(d.values()) for item, d in pool.est.items()}
        keep = sorted(pool.found, key=lambda i: (-total_est[i], i))[: c.max_candidates]
        catalog_known = len(self.catalog) > 0
        out: list[Candidate] = []
        for item in keep:
            attr = self.catalog.get(item)
            if attr is None:
                if catalog_known:
                    continue  # not (or no longer) in the catalog: nothing to show
                cand = Candidate(item)
            else:
                cand = Candidate(item, attr.category, attr.price, attr.in_stock,
                                 self.catalog.popularity(attr), attr.flags)  # fmt: skip
            terms = pool.est[item]
            ranked = sorted(pool.found[item].items(), key=lambda kv: -terms[kv[0]])
            cand.sources = [(src, a, v) for (src, a), v in ranked[: c.max_sources]]
            out.append(cand)
        return out

    def params(self, req: RecRequest, assignment: Assignment, k: int) -> RecParams:
        c = self.cfg
        return RecParams(
            k=k, surface=req.surface, context_item=req.item or "",
            weights=c.weights_for(assignment), default_weights=DEFAULT_WEIGHTS,
            per_category=assignment.per_category
            if assignment.per_category is not None else c.per_category,
            half_life_ms=c.recency_half_life_ms, content_min=c.content_min,
            collab_min=c.collab_min, repurchase=self._repurchase(assignment),
            excluded=tuple(c.surface_exclusions.get(req.surface, ())), guards=c.guards,
            min_price=req.filters.min_price, max_price=req.filters.max_price,
            only_categories=req.filters.categories, personal_share=c.personal_share,
            live_share=c.live_share,
            now_ms=req.now_ms,
        )  # fmt: skip

    def _repurchase(self, assignment: Assignment) -> bool:
        return assignment.repurchase if assignment.repurchase is not None else self.cfg.repurchase

    def compute(
        self,
        req: RecRequest,
        assignment: Assignment = DEFAULT,
        *,
        ctx: RecContext | None = None,
        k: int | None = None,
        deadline: float | None = None,
    ) -> RecList:
        """Compute a list inline (raises on Redis errors; `serve` adds the fallbacks)."""
        model = assignment.model or self.model
        if ctx is None:
            ctx = rec_calls.parse_rec_context(
                calls.fcall_ro(self.client, "rec_context", self.context_args(req.user, model))
            )
        if deadline is not None and time.perf_counter() > deadline:
            raise BudgetExceeded("budget spent reading the context")
        params = self.params(req, assignment, k or req.k)
        anchors, cands = self.candidates(
            ctx, req, model, params.weights, params.repurchase, deadline
        )
        if deadline is not None and time.perf_counter() > deadline:
            raise BudgetExceeded("budget spent gathering candidates")
        reply: RecReply = rec_calls.parse_recommend(
            calls.fcall_ro(
                self.client, "recommend",
                rec_calls.recommend_args(self.keys, req.user, params, anchors, cands),
            )
        )  # fmt: skip
        return RecList(
            items=reply.items, tier=reply.tier, interactions=reply.interactions,
            as_of_ts=ctx.last_ts, computed_ms=int(time.time() * 1000), variant=assignment.label,
            model=model, candidates=reply.candidates, filtered=reply.filtered,
        )  # fmt: skip

    def write_cache(self, user: str, surface: str, lst: RecList) -> None:
        self.client.set(self.keys.recs(user, surface), lst.to_json(), ex=self.cfg.lkg_ttl_s)

    def precompute(self, user: str, surfaces: Sequence[str] = CACHED_SURFACES) -> RecContext:
        """Compute and cache the lists of `surfaces` for a user (the worker's job)."""
        ctx = rec_calls.parse_rec_context(
            calls.fcall_ro(self.client, "rec_context", self.context_args(user, self.model))
        )
        for surface in surfaces:
            if surface == "cart" and not ctx.cart:
                continue
            assignment = self.experiments.assign(user, surface)
            req = RecRequest(user, surface, None, self.cfg.cache_k)
            lst = self.compute(req, assignment, ctx=ctx, k=self.cfg.cache_k)
            self.write_cache(user, surface, lst)
            self.lru.put(self._lru_key(req), lst)
            self.count("precomputed")
        return ctx

    # -- serving --------------------------------------------------------------------------------
    @staticmethod
    def _lru_key(req: RecRequest) -> tuple[str, ...]:
        return (req.user, req.surface, req.item or "", req.filters.key())

    def _fresh(self, lst: RecList, ctx: RecContext, assignment: Assignment, model: str | None,
               now_ms: int) -> bool:  # fmt: skip
        # Event times alone miss events at the same time as the list's newest one (the sample
        # has minute resolution: a second invoice in the same minute) or older (late): the
        # seen-filter's count moves with every new item, so both must match.
        return (
            lst.as_of_ts >= ctx.last_ts
            and lst.interactions == ctx.interactions
            and now_ms - lst.computed_ms <= self.cfg.cache_max_age_s * 1000
            and lst.variant == assignment.label
            and lst.model == model
        )

    def warm_up(self, user: str = "warmup:0") -> list[str]:
        """Run what a first request runs, once per surface, before traffic arrives.

        A first product page otherwise pays for cold connections (two pools), the first
        Function calls, the search index's first KNN query and Python's first-call costs
        (lazy imports, caches), and fell back on the 50 ms budget on a busy machine. Read-only:
        `compute` (FCALL_RO), no cache write, no exposure; `user` has no state, and the
        context item is the most popular one. Best effort: returns what ran.
        """
        done: list[str] = []
        item = self.snapshot[0][0] if self.snapshot else None
        requests = [RecRequest(user, "home", None, self.cfg.cache_k)]
        if item is not None:
            requests.append(RecRequest(user, "product", item, self.cfg.cache_k))
            if self.content_knn is not None:
                self._knn_cache.pop(item, None)
                done.append(f"content_knn:{len(self._knn(item) or [])}")
        for req in requests:
            try:
                self.compute(req)
            except (redis.RedisError, EngineError, ValueError) as exc:
                self._log_error(f"warm-up {req.surface}: {exc}")
                continue
            done.append(req.surface)
        self.count("warmed_up", len(done))
        return done

    def _patient(self) -> Recommender:
        """This recommender (same catalog, model, lists, caches) on clients without the
        serving budget's socket timeout: a backtest on a busy machine must not turn a slow
        call into an error. Made once."""
        if is_cluster(self.client):
            return self  # the cluster client keeps its own timeouts and retries
        with self._lock:
            view = self._patient_view
        if view is None:
            view = copy.copy(self)
            protocol = self.client.connection_pool.connection_kwargs.get("protocol") or 2
            view.client = resp2_twin(
                self.client, protocol=protocol, socket_timeout=PATIENT_TIMEOUT_S
            )
            view._lists_client = resp2_twin(view.client)
            view._patient_view = view
            with self._lock:
                if self._patient_view is None:
                    self._patient_view = view
                else:  # another thread made one first
                    view.client.close()
                    view._lists_client.close()
                view = self._patient_view
        return view

    def at_time(self, req: RecRequest) -> RecResponse:
        """A list computed as of `req.now_ms` (replays and backtests through the API): the
        same computation as `serve`'s inline step, with no budget, cache, fallback or
        exposure (a backtest must score what the engine ranks, and must not count as
        traffic). Raises on Redis errors."""
        t0 = time.perf_counter()
        if req.now_ms <= 0:
            raise ValueError("at_time needs req.now_ms")
        assignment = self.experiments.assign(req.user, req.surface)
        lst = self._patient().compute(req, assignment)
        self.count("served.as_of")
        return self._response(req, lst, "inline", None, None, assignment, t0)

    def serve(self, req: RecRequest) -> RecResponse:
        """Answer a request: cache, inline, last-known-good, popularity. Never raises."""
        t0 = time.perf_counter()
        redis_up = not self.breaker.open and (self.health is None or self.health.up)
        if redis_up and self._thread is None:  # with the thread, it refreshes experiments
            self.experiments.maybe_refresh()
        assignment = self.experiments.assign(req.user, req.surface)
        model = assignment.model or self.model
        cacheable = (
            req.surface in CACHED_SURFACES
            and req.filters.empty
            and req.k <= self.cfg.cache_k
            and not req.now_ms  # a list of another time is not the shopper's current one
        )
        deadline = t0 + self.cfg.budget_ms / 1000
        cached: RecList | None = None
        ctx: RecContext | None = None
        reason = "redis_unavailable"
        resp: RecResponse | None = None
        if redis_up:
            try:
                pipe = self.client.pipeline(transaction=False)
                if cacheable:
                    pipe.get(self.keys.recs(req.user, req.surface))
                calls.fcall_ro(pipe, "rec_context", self.context_args(req.user, model))
                replies = pipe.execute()
                ctx = rec_calls.parse_rec_context(replies[-1])
                if cacheable and replies[0] is not None:
                    cached = RecList.from_json(replies[0])
                now_ms = int(time.time() * 1000)
                if cached is not None and self._fresh(cached, ctx, assignment, model, now_ms):
                    served = cached
                    resp = self._response(req, cached, "cache", None, None, assignment, t0)
                else:
                    served = self.compute(
                        req, assignment, ctx=ctx, k=self.cfg.cache_k if cacheable else req.k,
                        deadline=deadline,
                    )  # fmt: skip
                    if time.perf_counter() > deadline:
                        self.count("over_budget")
                    resp = self._response(req, served, "inline", None, None, assignment, t0)
                    if cacheable:
                        try:
                            self.write_cache(req.user, req.surface, served)
                        except redis.RedisError as exc:  # served anyway; the next read retries
                            self._log_error(f"caching the list of {req.user}: {exc}")
                self.lru.put(self._lru_key(req), served)
            except BudgetExceeded:
                reason = "budget"
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                self.breaker.trip()
                reason = "timeout" if isinstance(exc, redis.TimeoutError) else "redis_unavailable"
                self._log_error(f"recommendations for {req.user}: {exc}")
            except (redis.RedisError, EngineError, ValueError, KeyError, IndexError) as exc:
                reason = "error"
                self._log_error(f"recommendations for {req.user}: {exc!r}")
            except Exception:  # the last line of defence: a shopper never sees an error
                reason = "error"
                log.exception("recommendations for %s failed", req.user)
        if resp is None:
            # What the live session already holds (read before the failure, if it was) never
            # comes back from an older list: e.g. the item bought a second ago.
            # Without repurchase the long-term history is excluded too, as `recommend` does.
            done: set[str] = set()
            if ctx is not None:
                done = set(ctx.recent) | set(ctx.cart)
                if not self._repurchase(assignment):
                    done |= set(ctx.hist)
            check_seen = ctx is not None and reason in ("budget", "error")
            resp = self._fallback(req, cached, reason, assignment, t0, done, check_seen)
        self.count(f"served.{resp.source}")
        if resp.fallback:
            self.count(f"fallback.{resp.fallback}.{resp.fallback_reason}")
        self.experiments.record_exposure(
            assignment,
            rec_calls.Exposure(resp.rec_id, req.user, assignment.variant, req.surface,
                               tuple(it.item_id for it in resp.items), int(time.time() * 1000)),
        )  # fmt: skip
        return resp

    def _response(
        self,
        req: RecRequest,
        lst: RecList,
        source: str,
        fallback: str | None,
        reason: str | None,
        assignment: Assignment,
        t0: float,
    ) -> RecResponse:
        return RecResponse(
            request=req, items=lst.items[: req.k], source=source, fallback=fallback,
            fallback_reason=reason, age_ms=max(0, int(time.time() * 1000) - lst.computed_ms),
            tier=lst.tier, interactions=lst.interactions, assignment=assignment, model=lst.model,
            rec_id=f"r-{uuid.uuid4().hex[:16]}", took_ms=(time.perf_counter() - t0) * 1000,
            filtered=lst.filtered,
        )  # fmt: skip

    def _fallback(
        self,
        req: RecRequest,
        cached: RecList | None,
        reason: str,
        assignment: Assignment,
        t0: float,
        exclude: set[str] | None = None,
        check_seen: bool = False,
    ) -> RecResponse:
        """Last good list, else the popularity snapshot, minus `exclude`; with `check_seen`
        (Redis answered but the budget ran out) also minus what the seen-filter holds."""
        skip = (exclude or set()) | {req.item or ""}
        good = cached or self.lru.get(self._lru_key(req))
        check_seen = check_seen and not self._repurchase(assignment)
        if check_seen and good is not None:
            skip |= self._seen_among(req.user, [it.item_id for it in good.items])
        if good is not None and any(it.item_id not in skip for it in good.items):
            kept = [it for it in good.items if it.item_id not in skip]
            lst = replace(good, items=kept)
            return self._response(req, lst, "fallback", "last_good", reason, assignment, t0)
        items: list[RecItem] = []
        chunk = max(4 * req.k, 40)
        # The snapshot in chunks, each checked against the seen-filter in one call: a heavy
        # buyer may have bought most of the top hundred.
        for start in range(0, len(self.snapshot), chunk):
            part = self.snapshot[start : start + chunk]
            if check_seen:
                skip |= self._seen_among(req.user, [item for item, _, _ in part])
            for item, score, why in part:
                if len(items) >= req.k:
                    break
                if item in skip:
                    continue
                attr = self.catalog.get(item)
                category = attr.category if attr else ""
                if attr is not None and (
                    not attr.in_stock or not req.filters.admits(attr.category, attr.price)
                ):
                    continue
                items.append(RecItem(item, score, why, "", category))
            if len(items) >= req.k:
                break
        lst = RecList(items, "cold", 0, 0, int(time.time() * 1000), assignment.label, self.model)
        resp = self._response(req, lst, "fallback", "popular", reason, assignment, t0)
        resp.tier = None
        resp.interactions = None
        return resp

    def _seen_among(self, user: str, items: Sequence[str]) -> set[str]:
        """The items the user's seen-filter holds (one BF.MEXISTS); empty when it fails."""
        todo = list(dict.fromkeys(items))
        if not todo:
            return set()
        seen_key = self.keys.rec_context_keys(user)[3]
        try:
            flags = self.client.execute_command("BF.MEXISTS", seen_key, *todo)  # type: ignore[no-untyped-call]
        except redis.ResponseError:  # no filter yet (BF.MEXISTS on a missing key is 0s)
            return set()
        except (redis.ConnectionError, redis.TimeoutError):
            return set()  # the fallback is served anyway; the history set still applies
        return {item for item, f in zip(todo, flags, strict=True) if int(f) == 1}

    # -- presentation ------------------------------------------------------------------------------
    def reason_text(self, it: RecItem) -> str:
        anchor = ""
        if it.anchor:
            attr = self.catalog.get(it.anchor)
            anchor = attr.title if attr and attr.title else it.anchor
        category = it.category.replace("_", " ") if it.category else ""
        if it.reason == "trending" and not category:
            return "trending now"
        if it.reason == "category" and not category:
            return "popular with shoppers like you"
        template = REASONS.get(it.reason, "recommended for you")
        return template.format(anchor=anchor, category=category)

    def as_json(self, resp: RecResponse) -> dict[str, Any]:
        req = resp.request
        items = []
        for it in resp.items:
            attr = self.catalog.get(it.item_id)
            items.append({
                "item_id": it.item_id, "score": round(it.score, 6),
                "reason": self.reason_text(it), "reason_code": it.reason,
                "anchor": it.anchor or None,
                "title": attr.title if attr else None,
                "category": it.category or (attr.category if attr else None),
                "price": attr.price if attr else None,
            })  # fmt: skip
        a = resp.assignment
        return {
            "user_id": req.user, "surface": req.surface, "item": req.item, "k": req.k,
            "items": items, "rec_id": resp.rec_id, "source": resp.source,
            "fallback": resp.fallback, "fallback_reason": resp.fallback_reason,
            "age_ms": resp.age_ms, "tier": TIER_NAMES.get(resp.tier or "", resp.tier),
            "interactions": resp.interactions, "experiment": a.experiment,
            "variant": a.label, "model_version": resp.model, "took_ms": round(resp.took_ms, 3),
            "filtered": resp.filtered,
            "tracking": {"rec_id": resp.rec_id, "variant": a.label},
        }  # fmt: skip


def timeout_client(url: str, timeout_s: float) -> redis.Redis:
    """A client with short socket timeouts and no retries: a slow or stopped Redis fails
    fast, and `serve` falls back instead of hanging the request."""
    return connect(
        url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, max_connections=64
    )
