"""Helpers shared by tests/test_catalog_*.py (imported explicitly; conftest.py is untouched).

Every catalog test works under its own key prefix, so it gets its own index
(`<prefix>idx:products:v<N>`); `dropping` removes the indexes, meta and products at the end.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import redis
from starlette.applications import Starlette
from starlette.datastructures import Secret

from app.api.app import create_app
from app.api.catalog import catalog_routes
from app.catalog.index import CatalogConfig, CatalogKeys, drop_catalog
from app.core.settings import ROOT, EngineConfig, Settings

SAMPLE = ROOT / "data" / "online-retail" / "online-retail-2010-12_2011-09.csv.gz"
ADMIN_KEY = "s3cret-admin"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def new_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}:"


@contextlib.contextmanager
def dropping(client: redis.Redis, ckeys: CatalogKeys) -> Iterator[None]:
    """Drop this prefix's indexes, meta and products when the block ends."""
    try:
        yield
    finally:
        drop_catalog(client, ckeys, delete_docs=True)


def catalog_app(
    redis_url: str, engine: EngineConfig, tmp_path: Path, cfg: CatalogConfig | None = None
) -> Starlette:
    """The real app with the catalog routes mounted (unless app.api.app already mounts them)."""
    settings = Settings(
        redis_url=redis_url, host="127.0.0.1", port=0, server_keys=frozenset({"wk_test"}),
        write_keys=frozenset(), admin_key=Secret(ADMIN_KEY),
        data_dir=tmp_path, sample_data=tmp_path / "none",
        log_json=False, engine=engine,
    )  # fmt: skip
    app = create_app(settings)
    if not any(getattr(r, "path", None) == "/v1/search" for r in app.routes):
        app.router.routes.extend(catalog_routes())
    app.state.catalog_config = replace(cfg or CatalogConfig(), key_prefix=engine.key_prefix)
    return app
