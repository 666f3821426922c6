"""The one assembly of the engine: settings + a Redis client -> the acknowledged ingestion
path and the aggregate workers, with every hook; the recommender's configuration and
experiments; the feature set.

The HTTP app, the command line, the loaders, the workers, the benchmarks and the tests all build
ingestion here, so no entry point can leave a hook out (a replay that never fed the
recommender's history was the bug that asked for this module).

- `engine.ingestor`: the acknowledged path (one `ingest_partition` call per partition: dedup,
  log, shopper state and the shopper's online features);
- `engine.workers(...)` / `engine.drain()`: the aggregate workers that derive trending,
  sketches, item series, co-occurrence, item features, popularity, history and experiment
  attribution from the logs (app/ingest/aggregates.py);
- `engine.start_workers()`: the workers in background threads of this process (the app and
  the demo run them in-process; `python -m app.cli workers` runs them on their own).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import redis

from app.core.keys import Keys
from app.core.settings import EngineConfig
from app.features.online import ack_features, item_feature_hook
from app.features.spec import FeatureSet, default_feature_set
from app.ingest.aggregates import AggregateWorker, BlockHook, FreshnessSink
from app.ingest.ingestor import Ingestor, Observer
from app.ingest.layout import ensure_layout
from app.recs.config import RecConfig, load_rec_config
from app.recs.experiments import ExperimentStore
from app.recs.hook import RecBlockHook
from app.recs.keys import RecKeys
from app.redis.connect import is_cluster


@dataclass
class WorkerThreads:
    """Aggregate workers running in background threads; `stop()` joins them."""

    workers: list[AggregateWorker]
    threads: list[threading.Thread]
    stop_event: threading.Event

    def stop(self, timeout: float = 5.0) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(timeout)


@dataclass
class Engine:
    """What a process needs to write events: one instance per process (or per test prefix)."""

    config: EngineConfig
    client: redis.Redis
    features: FeatureSet
    rec_config: RecConfig
    experiments: ExperimentStore
    ingestor: Ingestor
    block_hooks: list[BlockHook]
    keys: Keys = field(init=False)
    _drainer: AggregateWorker | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.keys = self.config.keys()

    def worker(
        self, worker: int = 0, of: int = 1, *, freshness: FreshnessSink | None = None,
        client: redis.Redis | None = None, count: int = 100,
    ) -> AggregateWorker:  # fmt: skip
        """One aggregate worker (it owns the partitions `p % of == worker`)."""
        return AggregateWorker(
            client or self.client, self.config, hooks=self.block_hooks, worker=worker, of=of,
            freshness=freshness, count=count,
        )  # fmt: skip

    def drain(self) -> int:
        """Apply everything logged so far, in this thread (tests, loaders, benchmarks). Uses
        the consumer name of worker 0 of 1: do not run it next to a separate worker."""
        if self._drainer is None:
            self._drainer = self.worker()
        return self._drainer.drain()

    def start_workers(
        self, n: int = 1, *, freshness: FreshnessSink | None = None, idle_s: float = 0.05
    ) -> WorkerThreads:
        stop = threading.Event()
        workers = [self.worker(i, n, freshness=freshness) for i in range(n)]
        threads = [
            threading.Thread(
                target=w.run, args=(stop,), kwargs={"idle_s": idle_s}, name=f"agg-{i}", daemon=True
            )
            for i, w in enumerate(workers)
        ]
        for t in threads:
            t.start()
        return WorkerThreads(workers, threads, stop)


def build_engine(
    client: redis.Redis,
    config: EngineConfig,
    *,
    features: FeatureSet | None = None,
    rec_config: RecConfig | None = None,
    experiments: ExperimentStore | None = None,
    extra_hooks: Sequence[BlockHook] = (),
    observers: Sequence[Observer] = (),
    check_layout: bool = True,
    cluster: bool | None = None,
) -> Engine:
    """The engine on `client`. `rec_config` defaults to the environment's (RETAIL_REC_*) with
    this config's key prefix; `extra_hooks` run after the engine's own worker hooks. The
    deployment's key layout is recorded or checked first (app/ingest/layout.py). Every
    ingestion call touches one slot by construction; `cluster` (default: whether `client` is
    a `RedisCluster`) only splits the recommender's real-time popularity into shards."""
    if cluster is None:
        cluster = is_cluster(client)
    if check_layout:
        ensure_layout(client, config)
    fs = features or default_feature_set()
    rcfg = replace(
        rec_config or load_rec_config(key_prefix=config.key_prefix),
        key_prefix=config.key_prefix,
    )
    keys = config.keys()
    store = experiments or ExperimentStore(
        client, RecKeys(config.key_prefix, config.partitions, config.agg_shards)
    )
    ingestor = Ingestor(client, config, ack_features=ack_features(fs, keys), observers=observers)
    hooks: list[BlockHook] = [
        item_feature_hook(fs, keys),
        RecBlockHook(config, rcfg, store, cluster=cluster),
        *extra_hooks,
    ]
    return Engine(config, client, fs, rcfg, store, ingestor, hooks)
