"""Helpers every command group uses: where Redis is (REDIS_URL, or the embedded server)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import redis

from app.core.settings import Settings
from app.redis import embedded
from app.redis import library as functions


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
