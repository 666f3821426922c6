"""Connecting to Redis: one standalone server or a Redis Cluster, chosen by one setting.

`REDIS_URL=redis+cluster://host:port` (or `REDIS_CLUSTER=1` with a `redis://` URL, which
`load_settings` turns into the same) selects redis-py's `RedisCluster`: it discovers the slot
map from a seed node (`redis+cluster://h1:p1,h2:p2` lists several) and routes every command by
its keys' slot (and follows MOVED/ASK and failovers). Nothing in the engine routes slots by
hand; Function calls are built so each one touches a single slot (app/core/keys.py).

`RedisCluster` is not a subclass of `redis.Redis`, but it carries the same command methods
(FCALL, pipelines, JSON, TS, ...) that the engine uses. The code base is typed against
`redis.Redis`, so `connect` hands the cluster client out under that type; the few places that
need the difference (loading Functions on every primary, per-slot grouping) ask `is_cluster`.
"""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.cluster import ClusterNode, RedisCluster

from app.core.errors import RedisSetupError
from app.core.settings import CLUSTER_SCHEMES, Settings, cluster_url, is_cluster_url

__all__ = [
    "cluster_url",
    "connect",
    "disconnect",
    "is_cluster",
    "is_cluster_url",
    "node_name",
    "node_of",
    "primaries",
    "resp2_cluster_twin",
]


def connect(url: str, **kwargs: Any) -> redis.Redis:
    """A client for `url`: `RedisCluster` for `redis+cluster://`, else `redis.Redis`.

    A cluster URL may list several seed nodes, `redis+cluster://h1:p1,h2:p2`: the client
    needs one of them reachable at start-up (a single seed that is down stops a restart)."""
    parts = urlsplit(url)
    if parts.scheme not in CLUSTER_SCHEMES:
        return redis.Redis.from_url(url, **kwargs)
    kwargs.pop("health_check_interval", None)  # per-connection option; the cluster pings itself
    auth, _, hosts = parts.netloc.rpartition("@")
    first, *more = hosts.split(",")
    netloc = f"{auth}@{first}" if auth else first
    plain = urlunsplit((CLUSTER_SCHEMES[parts.scheme], netloc, "", parts.query, ""))
    if more:
        seeds = [_host_port(h) for h in (first, *more)]
        kwargs["startup_nodes"] = [ClusterNode(h, p) for h, p in seeds]  # type: ignore[no-untyped-call]
    # Typed as redis.Redis on purpose: see the module docstring.
    return cast(redis.Redis, RedisCluster.from_url(plain, **kwargs))


def _host_port(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"cluster seed nodes are host:port, got {hostport!r}")
    return host, int(port)


def disconnect(client: redis.Redis) -> None:
    """Drop every pooled connection (a hung server keeps half-read ones), cluster or not."""
    if isinstance(client, RedisCluster):
        cast(Any, client).disconnect_connection_pools()
    else:
        client.connection_pool.disconnect()


def is_cluster(client: redis.Redis) -> bool:
    return isinstance(client, RedisCluster)


def primaries(client: redis.Redis) -> list[redis.Redis]:
    """One plain client per primary (cluster), or the client itself (standalone).

    For what must run on every primary (FUNCTION LOAD, the library version check, INFO)."""
    if not isinstance(client, RedisCluster):
        return [client]
    cluster = cast(Any, client)
    nodes = sorted(cluster.get_primaries(), key=lambda n: (n.host, n.port))
    return [cluster.get_redis_connection(node) for node in nodes]


def node_name(client: redis.Redis) -> str:
    kw = client.connection_pool.connection_kwargs
    return f"{kw.get('host', '?')}:{kw.get('port', '?')}"


def node_of(client: redis.Redis, key: str) -> redis.Redis:
    """A plain client of the node serving `key`'s slot (cluster), else `client`: for keyless
    commands that read one slot's keys (TS.MRANGE over a hash-tagged family)."""
    if not isinstance(client, RedisCluster):
        return client
    cluster = cast(Any, client)
    return cast(redis.Redis, cluster.get_redis_connection(cluster.get_node_from_key(key)))


def nodes_of(client: redis.Redis, keys: list[str]) -> list[redis.Redis]:
    """The distinct nodes serving these keys' slots, one plain client each (cluster), else
    `[client]`: for a keyless command over a family split in parts (TS.MRANGE per node)."""
    if not isinstance(client, RedisCluster):
        return [client]
    cluster = cast(Any, client)
    found: dict[str, redis.Redis] = {}
    for key in keys:
        node = cluster.get_node_from_key(key)
        if node.name not in found:
            found[node.name] = cluster.get_redis_connection(node)
    return list(found.values())


def catalog_connection(cfg: Settings, client: redis.Redis) -> redis.Redis:
    """The catalog's server: CATALOG_REDIS_URL, else the engine's own (single server only)."""
    if cfg.catalog_redis_url is None:
        if is_cluster(client):
            raise RedisSetupError(
                "REDIS_URL is a cluster but CATALOG_REDIS_URL is not set: the catalog and its "
                "search index live on one non-clustered Redis Stack (the search node; "
                "`python -m app.cli redis --cluster 3` starts one); see docs/cluster.md"
            )
        return client
    if is_cluster_url(cfg.catalog_redis_url):
        raise RedisSetupError(
            "CATALOG_REDIS_URL must name one non-clustered Redis Stack (RediSearch 2.10 "
            "without a coordinator indexes only its own shard's documents)"
        )
    return connect(cfg.catalog_redis_url, health_check_interval=30)


def resp2_cluster_twin(client: redis.Redis) -> redis.Redis:
    """A second cluster client on the same nodes and socket settings speaking RESP2 (flat
    replies; see app/recs/recommender.py `read_lists` for why)."""
    cluster = cast(Any, client)
    kept = (
        "socket_timeout",
        "socket_connect_timeout",
        "max_connections",
        "username",
        "password",
        "ssl",
        "ssl_cert_reqs",
        "ssl_ca_certs",
        "ssl_certfile",
        "ssl_keyfile",
    )
    kwargs = {k: v for k, v in cluster.nodes_manager.connection_kwargs.items() if k in kept}
    seeds = [ClusterNode(n.host, n.port) for n in cluster.get_primaries()]  # type: ignore[no-untyped-call]
    return cast(redis.Redis, RedisCluster(startup_nodes=seeds, protocol=2, **kwargs))
