"""A hung Redis under load, for tests/test_hung_redis.py and bench/hung_redis.py.

`hang_run` drives a served app (real HTTP, hypercorn) with `writers` threads posting events
and one reader asking for recommendations, SIGSTOPs the Redis server the caller started
itself (never another process), and measures what the reader and the writers saw while Redis
hung (`pause`) or died (a kill). A paused server is always SIGCONTed at the end.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import statistics
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Phase:
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    sources: Counter[str] = field(default_factory=Counter)

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)
        n = len(lat)

        def q(p: float) -> float | None:
            return round(lat[min(n - 1, int(p * n))], 2) if n else None

        return {
            "n": n, "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": round(lat[-1], 2) if n else None,
            "mean_ms": round(statistics.fmean(lat), 2) if n else None,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "sources": dict(self.sources),
        }  # fmt: skip


@dataclass
class HangFigures:
    writers: int
    hang_s: float
    detect_s: float | None  # the fault -> the app's breaker open
    recs_before: Phase
    recs_hung: Phase
    writes_hung: Phase

    def summary(self) -> dict[str, Any]:
        hung = self.recs_hung
        answered = sum(v for k, v in hung.statuses.items() if k == 200)
        return {
            "writers": self.writers, "hang_s": self.hang_s,
            "detect_s": None if self.detect_s is None else round(self.detect_s, 3),
            "recs_before": self.recs_before.summary(), "recs_hung": hung.summary(),
            "recs_answered_share": round(answered / max(1, len(hung.latencies_ms)), 4),
            "writes_hung": self.writes_hung.summary(),
        }  # fmt: skip


def _request(
    conn: http.client.HTTPConnection, method: str, path: str, headers: dict[str, str],
    body: bytes | None = None,
) -> tuple[int, bytes, float, float]:  # fmt: skip
    """(status, body, ms, Retry-After in seconds or 0)."""
    t0 = time.perf_counter()
    conn.request(method, path, body=body, headers=headers)
    resp = conn.getresponse()
    data = resp.read()
    retry = resp.getheader("retry-after") or "0"
    return resp.status, data, (time.perf_counter() - t0) * 1000, float(retry)


def pause(pid: int) -> tuple[Callable[[], None], Callable[[], None]]:
    """(fault, recover) for a hung server: SIGSTOP / SIGCONT of `pid` (a server we started)."""

    def recover() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)

    return (lambda: os.kill(pid, signal.SIGSTOP)), recover


def hang_run(
    base: str,
    fault: tuple[Callable[[], None], Callable[[], None]],
    is_open: Callable[[], bool],
    headers: dict[str, str],
    users: list[str],
    *,
    writers: int = 60,
    before_s: float = 1.0,
    hang_s: float = 3.0,
    eager_retry_s: float = 0.0,
) -> HangFigures:
    host, port = base.removeprefix("http://").split(":")
    stop = threading.Event()
    hung = threading.Event()
    writes = Phase()
    lock = threading.Lock()

    def writer(n: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        i = 0
        while not stop.is_set():
            i += 1
            ev = {"event_id": f"w{n}-{i}-{uuid.uuid4().hex[:6]}", "type": "view",
                  "user_id": f"writer{n}", "item_id": "K1",
                  "ts": int(time.time() * 1000)}  # fmt: skip
            try:
                status, _, ms, retry_s = _request(conn, "POST", "/v1/events",
                                         {**headers, "content-type": "application/json"},
                                         json.dumps(ev).encode())  # fmt: skip
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                status, ms, retry_s = 0, 0.0, 1.0
            if hung.is_set():
                with lock:
                    writes.latencies_ms.append(ms)
                    writes.statuses[status] += 1
            if status != 200:
                # A client following the protocol waits Retry-After (SDKs back off further);
                # `retry_s` > 0 makes an eager one that retries sooner.
                stop.wait(min(retry_s, eager_retry_s) if eager_retry_s else retry_s)
        conn.close()

    def read_phase(seconds: float) -> Phase:
        phase = Phase()
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            user = users[i % len(users)]
            i += 1
            try:
                status, data, ms, _ = _request(
                    conn, "GET", f"/v1/recommendations/{user}?k=5", headers
                )
                source = json.loads(data).get("fallback") or json.loads(data).get("source")
            except (OSError, http.client.HTTPException, ValueError):
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                status, ms, source = 0, 0.0, "error"
            phase.latencies_ms.append(ms)
            phase.statuses[status] += 1
            phase.sources[str(source)] += 1
            time.sleep(0.005)
        conn.close()
        return phase

    threads = [threading.Thread(target=writer, args=(n,), daemon=True) for n in range(writers)]
    for t in threads:
        t.start()
    detect_s: float | None = None
    try:
        before = read_phase(before_s)
        fault[0]()
        stopped_at = time.monotonic()
        hung.set()

        def watch() -> None:
            nonlocal detect_s
            while detect_s is None and time.monotonic() - stopped_at < hang_s:
                if is_open():
                    detect_s = time.monotonic() - stopped_at
                time.sleep(0.005)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        during = read_phase(hang_s)
        watcher.join()
    finally:
        fault[1]()
        stop.set()
        for t in threads:
            t.join(timeout=35)
    return HangFigures(writers, hang_s, detect_s, before, during, writes)
