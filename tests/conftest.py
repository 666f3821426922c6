"""Shared fixtures: one real Redis Stack server per test session, one key prefix per test.

With REDIS_URL set, tests use that server (it must be a disposable Redis Stack / Redis 8);
otherwise an embedded Redis Stack is started in a temporary folder and stopped at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest
import redis

from app.core.keys import Keys
from app.core.settings import EngineConfig
from app.redis import cluster
from app.redis import embedded as redis_stack
from app.redis import library as functions
from app.redis.cluster import LocalCluster
from app.redis.connect import connect


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    url = os.environ.get("REDIS_URL")
    if url:
        yield url
        return
    server = redis_stack.temporary().start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[LocalCluster]:
    """A local 3-master Redis Cluster and its search node, started once per test session (on
    first use), with the library on every primary and on the search node. The cluster tests
    (tests/test_cluster.py) use it; each test keeps its own key prefix there too."""
    cl = cluster.temporary(3).start()
    try:
        with connect(cl.url) as conn:
            functions.load(conn)
        with redis.Redis.from_url(cl.catalog_url) as conn:
            functions.load(conn)
        yield cl
    finally:
        cl.stop()


@pytest.fixture(scope="session")
def _library(redis_url: str) -> functions.Library:
    with connect(redis_url) as client:  # every primary when REDIS_URL is a cluster
        return functions.load(client)


@pytest.fixture
def client(redis_url: str, _library: functions.Library) -> Iterator[redis.Redis]:
    with connect(redis_url) as conn:
        yield conn


@pytest.fixture
def prefix() -> str:
    """A fresh key namespace, so tests never see each other's keys."""
    return f"t{uuid.uuid4().hex[:10]}:"


@pytest.fixture
def cfg(prefix: str) -> EngineConfig:
    return replace(EngineConfig(), key_prefix=prefix)


@pytest.fixture
def keys(cfg: EngineConfig) -> Keys:
    return cfg.keys()
