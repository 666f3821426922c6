"""A circuit breaker fed by a probe: a hung or stopped Redis is known within ~0.5 s.

Request timeouts alone detect a hung Redis only when a request has waited its full socket
timeout, and every concurrent request waits it too. A daemon thread PINGs Redis on its own
connection every `interval_s` with a `timeout_s` socket timeout; after one failed probe the
breaker opens (callers fail fast or fall back) until a probe succeeds again. Callers that see a
connection error or timeout themselves may open it at once with `trip()`.
"""

from __future__ import annotations

import logging
import threading
import time

import redis

from app.core.errors import RedisUnavailableError
from app.redis.connect import connect, disconnect

log = logging.getLogger("retail.redis.health")


class RedisHealth:
    def __init__(self, url: str, *, interval_s: float = 0.2, timeout_s: float = 0.25) -> None:
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._client = connect(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, max_connections=2
        )
        self._down_since: float | None = None
        self.last_error = ""
        self.trips = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def up(self) -> bool:
        return self._down_since is None

    def down_for_s(self) -> float:
        return 0.0 if self._down_since is None else time.monotonic() - self._down_since

    def check(self) -> None:
        """Raise RedisUnavailableError while the breaker is open."""
        if self._down_since is not None:
            raise RedisUnavailableError(
                f"Redis is not answering (for {self.down_for_s():.1f} s: {self.last_error}); "
                "retry later"
            )

    def trip(self, reason: str) -> None:
        if self._down_since is None:
            self._down_since = time.monotonic()
            self.trips += 1
            self.last_error = reason
            log.error("Redis unavailable: %s (requests fail fast until a probe succeeds)", reason)

    def probe_once(self) -> bool:
        try:
            self._client.ping()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            self.trip(f"{type(exc).__name__}: {exc}")
            # A hung server keeps the half-read connection: start the next probe afresh.
            disconnect(self._client)
            return False
        except redis.RedisError as exc:  # e.g. LOADING or NOPERM: it answers, so it is up
            log.debug("health probe: %s", exc)
        if self._down_since is not None:
            log.warning("Redis answers again after %.1f s", self.down_for_s())
            self._down_since = None
        return True

    def start(self) -> RedisHealth:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="redis-health", daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.probe_once()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None
        self._client.close()
