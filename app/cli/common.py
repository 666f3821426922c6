"""Helpers every command group uses: where Redis is (REDIS_URL, or the embedded server)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from app.core.settings import Settings
from app.redis import embedded


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
