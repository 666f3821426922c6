"""Helpers every command group uses: where Redis is (REDIS_URL, the embedded server, or a local
cluster) and the two connections (engine, catalog)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import redis

from app.core.errors import ConfigError
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


def check_can_start(settings: Settings, what: str = "the API") -> socket.socket:
    """Before anything starts or loads: the data folder is free (the embedded server's, when
    REDIS_URL is unset: its holder is named), then the port, which is taken now and handed
    to the server later (`serve_api`): a second start cannot take it while this one loads."""
    lock = embedded.DataDirLock(settings.data_dir / "redis")
    if not settings.redis_url and lock.path.exists():  # no file: nobody can hold it
        lock.acquire()  # raises naming the holder
        lock.release()
    return reserve_port(settings.host, settings.port, what)


def reserve_port(host: str, port: int, what: str = "the API") -> socket.socket:
    """A listening socket on `host:port`, or one line saying why not (not after minutes of
    loading). Connections made before the server starts wait in its backlog."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    # What hypercorn sets too: a port in TIME_WAIT after our own restart is not "busy".
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)  # listening: another SO_REUSEADDR socket can no longer bind it
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is already in use, so {what} cannot start there: "
                "stop the other server or set RETAIL_PORT (or --port)"
            ) from None
        raise ConfigError(f"cannot bind {what} to {host}:{port}: {exc.strerror}") from None
    return sock


def check_port_free(host: str, port: int, what: str = "the API") -> None:
    """Fail now, in one line, when `host:port` is taken (the port is not kept)."""
    reserve_port(host, port, what).close()


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
    # start() inside the try: a signal right after it returns must still stop the server.
    try:
        server.start()
        print(f"Redis Stack ready on {server.host}:{server.port} (ACL users admin, app, "
              f"worker; passwords in {server.data_dir / 'credentials.json'})")  # fmt: skip
        with redis.Redis.from_url(server.url) as admin:
            functions.ensure_current(admin, load_if_stale=True)
        yield RedisUrls(server.url_for("admin"), server.url_for("app"), server.url_for("worker"))
    finally:
        if server.proc is not None:
            print("stopping Redis ...", flush=True)
            server.stop()
            print(f"Redis stopped; data kept in {server.data_dir}", flush=True)


@contextlib.contextmanager
def redis_for(settings: Settings, *, port: int = 0, user: str = "worker") -> Iterator[str]:
    """The URL of one role (see `redis_servers`); loaders and workers by default."""
    with redis_servers(settings, port=port) as urls:
        yield urls.of(user)


def serve_api(settings: Settings, listener: socket.socket | None = None) -> None:
    """Serve the API until SIGINT/SIGTERM, on `listener` (from `check_can_start`, reserved
    before anything loaded) or else on host:port."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config as HyperConfig

    from app.api.app import create_app

    config = HyperConfig()
    # hypercorn takes the descriptor over (fd://) and closes it when it stops.
    config.bind = [f"fd://{listener.detach()}" if listener else f"{settings.host}:{settings.port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # through our (JSON) handler
    app = create_app(settings)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

    previous = signal.getsignal(signal.SIGTERM)
    try:
        asyncio.run(run())
    finally:
        # asyncio resets SIGTERM to the default (exit at once) when its loop closes; the
        # caller still has Redis to stop.
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


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
