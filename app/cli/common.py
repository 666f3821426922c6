"""Helpers every command group uses: where Redis is (REDIS_URL, the embedded server, or a local
cluster) and the two connections (engine, catalog)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass

import redis

from app.core.settings import Settings
from app.redis import cluster as local_cluster
from app.redis import embedded
from app.redis import library as functions
from app.redis.connect import catalog_connection, connect


@dataclass(frozen=True)
class RedisUrls:
    """One URL per role: `admin` (operators, loading Functions), `app` (the HTTP app),
    `worker` (loaders, workers). With REDIS_URL all three are that URL (its credentials)."""

    admin: str
    app: str
    worker: str

    def of(self, user: str) -> str:
        return {"admin": self.admin, "app": self.app, "worker": self.worker}[user]


@contextlib.contextmanager
def redis_servers(settings: Settings, *, port: int = 0) -> Iterator[RedisUrls]:
    """REDIS_URL when set; else the embedded Redis Stack on `var/redis` (kept across runs),
    with its ACL users and generated passwords (docs/security.md) and the Functions library
    loaded by the admin user (the others may not load it)."""
    if settings.redis_url:
        yield RedisUrls(settings.redis_url, settings.redis_url, settings.redis_url)
        return
    server = embedded.EmbeddedRedis(
        settings.data_dir / "redis", port=port, acl_prefix=settings.engine.key_prefix,
        maxmemory=settings.redis_maxmemory,
    )  # fmt: skip
    print(f"starting embedded Redis Stack 7.4 (data: {server.data_dir}, AOF everysec) ...")
    server.start()
    print(f"Redis Stack ready on {server.host}:{server.port} (ACL users admin, app, worker; "
          f"passwords in {server.data_dir / 'credentials.json'})")  # fmt: skip
    try:
        with redis.Redis.from_url(server.url) as admin:
            functions.ensure_current(admin, load_if_stale=True)
        yield RedisUrls(server.url_for("admin"), server.url_for("app"), server.url_for("worker"))
    finally:
        print("stopping Redis ...")
        server.stop()


@contextlib.contextmanager
def redis_for(settings: Settings, *, port: int = 0, user: str = "worker") -> Iterator[str]:
    """The URL of one role (see `redis_servers`); loaders and workers by default."""
    with redis_servers(settings, port=port) as urls:
        yield urls.of(user)


@contextlib.contextmanager
def cluster_for(settings: Settings, masters: int, replicas: int = 0) -> Iterator[Settings]:
    """A local cluster (+ search node) on `var/cluster` (kept across runs, no ACL users: it
    binds 127.0.0.1 only); the settings that point at it (REDIS_URL=redis+cluster://...,
    CATALOG_REDIS_URL=the search node), the Functions library on every node."""
    cl = local_cluster.LocalCluster(settings.data_dir / "cluster", masters, replicas)
    print(f"starting a local Redis Cluster: {masters} masters x {replicas} replicas + a search "
          f"node (data: {cl.base_dir}, AOF everysec) ...")  # fmt: skip
    cl.start()
    print(f"cluster ready: REDIS_URL={cl.url}  CATALOG_REDIS_URL={cl.catalog_url}")
    try:
        found = dataclasses.replace(settings, redis_url=cl.url, catalog_redis_url=cl.catalog_url)
        with clients(found) as (client, catalog):
            functions.ensure_everywhere(client, catalog, load_if_stale=True)
        yield found
    finally:
        print("stopping the cluster ...")
        cl.stop()


@contextlib.contextmanager
def servers_for(
    settings: Settings, *, cluster: int = 0, replicas: int = 0, user: str = "worker"
) -> Iterator[tuple[Settings, Settings]]:
    """(settings for `user`, settings for the app) with a running Redis: REDIS_URL when set;
    else a local cluster when `cluster` masters are asked for; else the embedded server with
    its ACL users (`redis_servers`)."""
    if settings.redis_url:
        yield settings, settings
    elif cluster:
        with cluster_for(settings, cluster, replicas) as found:
            yield found, found
    else:
        with redis_servers(settings) as urls:
            yield (dataclasses.replace(settings, redis_url=urls.of(user)),
                   dataclasses.replace(settings, redis_url=urls.app))  # fmt: skip


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
