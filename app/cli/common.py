"""Helpers every command group uses: where Redis is (REDIS_URL, or the embedded server, or a
local cluster) and the two connections (engine, catalog)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

import redis

from app.core.settings import Settings
from app.redis import cluster as local_cluster
from app.redis import embedded
from app.redis.connect import catalog_connection, connect


@contextlib.contextmanager
def redis_for(settings: Settings, *, port: int = 0) -> Iterator[str]:
    """REDIS_URL when set; else the embedded Redis Stack on `var/redis` (kept across runs)."""
    if settings.redis_url:
        yield settings.redis_url
        return
    server = embedded.EmbeddedRedis(settings.data_dir / "redis", port=port)
    print(f"starting embedded Redis Stack 7.4 (data: {server.data_dir}, AOF everysec) ...")
    server.start()
    print(f"Redis Stack ready at {server.url}")
    try:
        yield server.url
    finally:
        print("stopping Redis ...")
        server.stop()


@contextlib.contextmanager
def cluster_for(settings: Settings, masters: int, replicas: int = 0) -> Iterator[Settings]:
    """A local cluster (+ search node) on `var/cluster` (kept across runs); the settings that
    point at it (REDIS_URL=redis+cluster://..., CATALOG_REDIS_URL=the search node)."""
    cl = local_cluster.LocalCluster(settings.data_dir / "cluster", masters, replicas)
    print(f"starting a local Redis Cluster: {masters} masters x {replicas} replicas + a search "
          f"node (data: {cl.base_dir}, AOF everysec) ...")  # fmt: skip
    cl.start()
    print(f"cluster ready: REDIS_URL={cl.url}  CATALOG_REDIS_URL={cl.catalog_url}")
    try:
        yield dataclasses.replace(settings, redis_url=cl.url, catalog_redis_url=cl.catalog_url)
    finally:
        print("stopping the cluster ...")
        cl.stop()


@contextlib.contextmanager
def servers_for(settings: Settings, *, cluster: int = 0, replicas: int = 0) -> Iterator[Settings]:
    """Settings with a running Redis: REDIS_URL when set; else a local cluster when `cluster`
    masters are asked for; else the embedded server."""
    if settings.redis_url:
        yield settings
    elif cluster:
        with cluster_for(settings, cluster, replicas) as found:
            yield found
    else:
        with redis_for(settings) as url:
            yield dataclasses.replace(settings, redis_url=url)


@contextlib.contextmanager
def clients(settings: Settings) -> Iterator[tuple[redis.Redis, redis.Redis]]:
    """(engine client, catalog client): the same one on a single server."""
    assert settings.redis_url is not None  # servers_for() filled it
    client = connect(settings.redis_url)
    try:
        catalog = catalog_connection(settings, client)
    except BaseException:
        client.close()
        raise
    try:
        yield client, catalog
    finally:
        client.close()
        if catalog is not client:
            catalog.close()
