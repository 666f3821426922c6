"""A hung Redis (SIGSTOP of a server this test started) under 60 concurrent event writers:
recommendations keep being answered from the in-process tier, writes fail fast with 503 and
Retry-After, and the breaker notices within a second. Latency goals are measured by
bench/hung_redis.py; this test checks the behaviour (everything answered, nobody waits a
socket timeout) and prints its figures."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from app.api import auth
from app.core.settings import Limits
from app.redis import embedded as redis_stack
from app.redis import library as functions
from app.redis.health import RedisHealth
from tests.chaos_fixtures import hang_run, pause
from tests.recs_fixtures import SERVING_REC_CFG, World, build_world, recs_app
from tests.web_fixtures import serving

SERVER = {"X-Write-Key": "wk_test"}
USERS = [f"hang{i}" for i in range(20)]


@pytest.fixture
def private() -> Iterator[tuple[redis_stack.EmbeddedRedis, World]]:
    server = redis_stack.temporary().start()
    try:
        with redis.Redis.from_url(server.url) as client:
            functions.load(client)
            yield server, build_world(client, "th:", SERVING_REC_CFG)
    finally:
        server.stop()


@pytest.mark.timeout(120)
def test_recommendations_are_answered_while_redis_hangs_under_60_writers(
    private: tuple[redis_stack.EmbeddedRedis, World], tmp_path: Path
) -> None:
    server, w = private
    app = recs_app(server.url, w, tmp_path)
    app.state.rec_background = True
    # Unlimited rates: 60 writers from one address are the point here.
    app.state.guard = auth.Guard(Limits(per_write_key_rps=0, per_address_rps=0))
    assert server.proc is not None
    with serving(app) as base:
        health = app.state.redis_health
        assert isinstance(health, RedisHealth)
        figures = hang_run(base, pause(server.proc.pid), lambda: not health.up, SERVER, USERS,
                           writers=60, before_s=1.0, hang_s=3.0)  # fmt: skip
    summary = figures.summary()
    print(json.dumps(summary))
    hung = figures.recs_hung
    assert hung.latencies_ms and set(hung.statuses) == {200}  # 100% answered
    assert max(hung.latencies_ms) < 1000, summary  # nobody waited a 2-5 s socket timeout
    assert figures.detect_s is not None and figures.detect_s < 1.0, summary
    assert figures.writes_hung.statuses[503] > 0  # writes fail fast, with Retry-After
    assert not set(figures.writes_hung.statuses) - {200, 503}, summary


@pytest.mark.timeout(120)
def test_recommendations_are_answered_when_redis_dies_under_60_writers(
    private: tuple[redis_stack.EmbeddedRedis, World], tmp_path: Path
) -> None:
    server, w = private
    app = recs_app(server.url, w, tmp_path)
    app.state.rec_background = True
    app.state.guard = auth.Guard(Limits(per_write_key_rps=0, per_address_rps=0))
    with serving(app) as base:
        health = app.state.redis_health
        assert isinstance(health, RedisHealth)
        figures = hang_run(base, (server.kill, lambda: None), lambda: not health.up, SERVER,
                           USERS, writers=60, before_s=1.0, hang_s=2.0)  # fmt: skip
    summary = figures.summary()
    print(json.dumps(summary))
    assert set(figures.recs_hung.statuses) == {200}, summary
    assert figures.detect_s is not None and figures.detect_s < 1.0, summary
    assert set(figures.writes_hung.statuses) <= {200, 503}, summary
    assert max(figures.writes_hung.latencies_ms) < 1000, summary  # refused at once
