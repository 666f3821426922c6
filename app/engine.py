"""The one assembly of the engine: settings + a Redis client -> the ingestor with every hook,
the recommender's configuration and experiments, the feature set.

The HTTP app, the command line, the loaders, the workers, the benchmarks and the tests all build
ingestion here, so no entry point can leave a hook out (a replay that never fed the
recommender's history was the bug that asked for this module).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import redis

from app.core.keys import Keys
from app.core.settings import EngineConfig
from app.features.online import ingest_hook
from app.features.spec import FeatureSet, default_feature_set
from app.ingest.ingestor import Ingestor, Phase2Hook
from app.recs.experiments import ExperimentStore
from app.recs.hook import RecIngestHook
from app.recs.keys import RecKeys
from app.recs.recommender import RecConfig, load_rec_config


@dataclass
class Engine:
    """What a process needs to write events: one instance per process (or per test prefix)."""

    config: EngineConfig
    client: redis.Redis
    features: FeatureSet
    rec_config: RecConfig
    experiments: ExperimentStore
    ingestor: Ingestor
    keys: Keys = field(init=False)

    def __post_init__(self) -> None:
        self.keys = Keys(self.config.key_prefix)


def ingest_hooks(
    config: EngineConfig,
    *,
    features: FeatureSet,
    rec_config: RecConfig,
    experiments: ExperimentStore | None,
    cluster: bool = False,
) -> list[Phase2Hook]:
    """Every phase-2 extension of ingestion: the feature store's online path and the
    recommender's history, popularity and experiment attribution."""
    return [
        ingest_hook(features, config, cluster=cluster),
        RecIngestHook(config, rec_config, experiments, cluster=cluster),
    ]


def build_engine(
    client: redis.Redis,
    config: EngineConfig,
    *,
    features: FeatureSet | None = None,
    rec_config: RecConfig | None = None,
    experiments: ExperimentStore | None = None,
    extra_hooks: Sequence[Phase2Hook] = (),
    cluster: bool = False,
) -> Engine:
    """The engine on `client`. `rec_config` defaults to the environment's (RETAIL_REC_*) with
    this config's key prefix; `extra_hooks` run after the engine's own (e.g. a test's probe)."""
    fs = features or default_feature_set()
    rcfg = replace(
        rec_config or load_rec_config(key_prefix=config.key_prefix),
        key_prefix=config.key_prefix,
    )
    store = experiments or ExperimentStore(client, RecKeys(config.key_prefix))
    hooks = ingest_hooks(config, features=fs, rec_config=rcfg, experiments=store, cluster=cluster)
    ingestor = Ingestor(client, config, cluster=cluster, phase2_hooks=[*hooks, *extra_hooks])
    return Engine(config, client, fs, rcfg, store, ingestor)
