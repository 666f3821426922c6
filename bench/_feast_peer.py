"""Feast as the side-by-side peer of bench/features.py: its SDK and Redis online store.

Optional (`pip install -e '.[peers]'`, best in its own virtualenv: Feast pins an older
redis-py). `available()` says why not when it cannot be imported. The peer holds the values the
engine computed (written with `write_to_online_store`, Feast's push path: Feast itself cannot
compute windowed features from events), one Feast entity per user, in its own Redis database
on the same server so its keys and memory are counted apart.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

VIEW = "user_features"


def available() -> str | None:
    """None when Feast can be used, else the reason it cannot."""
    try:
        import feast  # noqa: F401
        import pandas  # noqa: F401
    except ImportError as exc:
        return f"{exc} (install the optional peer: pip install -e '.[peers]')"
    return None


def version() -> str:
    import feast

    return str(feast.__version__)


class FeastPeer:
    def __init__(self, host_port: str, db: int, names: Sequence[str]) -> None:
        import pandas as pd
        from feast import Entity, FeatureStore, FeatureView, Field, FileSource, RepoConfig
        from feast.infra.online_stores.redis import RedisOnlineStoreConfig
        from feast.types import Float64
        from feast.value_type import ValueType

        self.names = list(names)
        self.refs = [f"{VIEW}:{n}" for n in self.names]
        self._pd = pd
        self._dir = Path(tempfile.mkdtemp(prefix="feast-peer-"))
        source_file = self._dir / "source.parquet"
        pd.DataFrame({"user_id": ["-"], "event_timestamp": [datetime.now(UTC)],
                      **{n: [0.0] for n in self.names}}).to_parquet(source_file)  # fmt: skip
        config = RepoConfig(
            project="bench", registry=str(self._dir / "registry.db"), provider="local",
            online_store=RedisOnlineStoreConfig(connection_string=f"{host_port},db={db}"),
            entity_key_serialization_version=3, repo_path=str(self._dir),
        )  # fmt: skip
        self.store = FeatureStore(config=config)
        user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING)
        view = FeatureView(
            name=VIEW, entities=[user], ttl=timedelta(days=3650), online=True,
            schema=[Field(name=n, dtype=Float64) for n in self.names],
            source=FileSource(path=str(source_file), timestamp_field="event_timestamp"),
        )  # fmt: skip
        self.store.apply([user, view])

    def write(self, rows: Mapping[str, Mapping[str, Any]]) -> None:
        """rows: user id -> feature values (None = null)."""
        ids = list(rows)
        data: dict[str, Any] = {"user_id": ids, "event_timestamp": [datetime.now(UTC)] * len(ids)}
        for n in self.names:
            data[n] = [_float(rows[u][n]) for u in ids]
        self.store.write_to_online_store(VIEW, self._pd.DataFrame(data))

    def read(self, user_ids: Sequence[str]) -> dict[str, list[Any]]:
        rows = [{"user_id": u} for u in user_ids]
        out: dict[str, list[Any]] = self.store.get_online_features(
            features=self.refs, entity_rows=rows
        ).to_dict()
        return out


def _float(v: Any) -> float:
    return math.nan if v is None else float(v)


def same(engine: Any, feast: Any) -> bool:
    """A value read back from Feast equals the engine's (null <-> null / NaN)."""
    if engine is None:
        return feast is None or (isinstance(feast, float) and math.isnan(feast))
    return feast is not None and float(engine) == float(feast)
