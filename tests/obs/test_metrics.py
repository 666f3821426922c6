"""Metrics: in-process aggregation, the flush to RedisTimeSeries, Prometheus and JSON views."""

from __future__ import annotations

import io
import json
import logging
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from starlette.types import Receive, Scope, Send

from app.core.events import parse_event
from app.core.logs import JsonFormatter, RequestIdFilter, configure_logging
from app.core.settings import EngineConfig
from app.core.tags import spread_tag
from app.obs.collectors import IngestMetrics, StatsCollector
from app.obs.flusher import Flusher
from app.obs.middleware import MetricsMiddleware, RequestContextMiddleware
from app.obs.registry import (
    DEFAULT,
    MAX_LABEL,
    N_BUCKETS,
    UNMATCHED,
    Histogram,
    MetricsConfig,
    Registry,
    bucket_of,
    bucket_upper_ms,
    load_metrics_config,
    record,
)
from app.obs.series import PARTS, MetricKeys, field_of, parse_field
from app.obs.views import local_totals, read_totals, render_prometheus, series_json, stats_json
from tests.web_fixtures import ADMIN, WRITE, free_port, full_app

NOW = int(time.time() * 1000)


# -- pure parts ------------------------------------------------------------------------------


def test_histogram_quantiles_track_the_exact_ones() -> None:
    rng = np.random.default_rng(7)
    samples = rng.lognormal(mean=1.0, sigma=1.2, size=20_000)  # ms: a long tail
    hist = Histogram()
    for v in samples:
        hist.observe(float(v))
    assert hist.count == len(samples)
    assert hist.sum_ms == pytest.approx(float(samples.sum()))
    for q in (0.5, 0.9, 0.95, 0.99):
        exact = float(np.quantile(samples, q))
        # Buckets are 2^(1/4) apart: an interpolated quantile is within one bucket width.
        assert hist.quantile(q) == pytest.approx(exact, rel=0.19), q
    assert Histogram().quantile(0.5) is None


def test_bucket_edges() -> None:
    for i in range(N_BUCKETS - 1):
        upper = bucket_upper_ms(i)
        assert bucket_of(upper) == i
        assert bucket_of(upper * 1.01) == i + 1
    assert bucket_of(0.0) == 0
    assert bucket_of(10**9) == N_BUCKETS - 1
    assert bucket_upper_ms(N_BUCKETS - 1) == float("inf")


def test_registry_caps_its_label_sets() -> None:
    reg = Registry(max_series=5)
    for i in range(50):
        reg.inc("demo.count", 1, variant=f"v{i}")
    pending = reg.drain()
    assert len(pending.counters) == 6  # 5 admitted + the `other` label set
    assert pending.counters[("demo.count", (("variant", "other"),))] == 45
    assert reg.dropped == 45
    assert not reg.drain()  # drained


def test_registry_validates_names_and_cleans_label_values() -> None:
    reg = Registry()
    with pytest.raises(ValueError):
        reg.inc("Bad Name")
    with pytest.raises(ValueError):
        reg.inc("ok.name", 1, **{"Bad": "x"})
    reg.inc("ok.name", 1, variant='a"b|c=d{e}' + "x" * 100)
    ((_, labels),) = reg.drain().counters
    value = dict(labels)["variant"]
    assert len(value) == MAX_LABEL and '"' not in value and "|" not in value
    assert "=" not in value
    reg.inc("ok.name", float("nan"))  # ignored
    assert not reg.drain()


def test_record_counts_into_the_default_registry() -> None:
    before = DEFAULT.local_totals()[0].get(("test.record", (("kind", "x"),)), 0.0)
    record("test.record", 2, kind="x")
    after = DEFAULT.local_totals()[0][("test.record", (("kind", "x"),))]
    assert after - before == 2


def test_prometheus_text_format() -> None:
    reg = Registry()
    for ms in (0.4, 1.0, 3.0, 250.0):
        reg.observe_request("GET", "/v1/items/{item_id}", 200, ms)
    reg.observe_request("POST", "/v1/events", 503, 2.0)
    reg.inc("recs.served", 3, source="cache")
    text = render_prometheus(local_totals(reg), {"retail_up": 1})
    lines = text.splitlines()
    assert "# TYPE retail_http_requests_total counter" in lines
    assert (
        'retail_http_requests_total{method="GET",route="/v1/items/{item_id}",status="2xx"} 4'
        in lines
    )
    assert 'retail_http_requests_total{method="POST",route="/v1/events",status="5xx"} 1' in lines
    assert 'retail_recs_served_total{source="cache"} 3' in lines
    assert "# TYPE retail_http_request_duration_seconds histogram" in lines
    label = 'method="GET",route="/v1/items/{item_id}"'
    buckets = [
        ln for ln in lines if ln.startswith(f"retail_http_request_duration_seconds_bucket{{{label}")
    ]
    counts = [int(ln.rsplit(" ", 1)[1]) for ln in buckets]
    assert counts == sorted(counts) and counts[-1] == 4  # cumulative, +Inf = count
    assert 'le="+Inf"' in buckets[-1]
    assert f"retail_http_request_duration_seconds_count{{{label}}} 4" in lines
    le_1ms = next(ln for ln in buckets if 'le="0.001"' in ln)
    assert le_1ms.endswith(" 2")  # 0.4 ms and 1.0 ms
    assert "retail_up 1" in lines
    assert text.endswith("\n")


def test_totals_field_round_trip() -> None:
    labels = (("method", "GET"), ("route", "/v1/items/{item_id}"))
    field = field_of("http.latency_ms", labels, "b12")
    assert parse_field(field) == ("http.latency_ms", dict(labels), "b12")
    key = MetricKeys("rt:", part=3).series(("http.latency_ms", labels), "p95")
    assert (
        key == f"rt:m:{{{spread_tag('m', 3, PARTS)}}}:http:latency_ms:GET:/v1/items/<item_id>:p95"
    )
    assert key.count("{") == 1  # the only hash tag is the part's


def _event(event_id: str, etype: str, **extra: Any) -> Any:
    body: dict[str, Any] = {"event_id": event_id, "type": etype, "user_id": "u1", "ts": NOW}
    if etype == "purchase":
        body["items"] = [{"item_id": "A", "qty": 2, "price": 2.5}, {"item_id": "B", "price": 1}]
    elif etype == "search":
        body["props"] = {"query": "heart"}
    else:
        body["item_id"] = "A"
    body.update(extra)
    return parse_event(body, now_ms=NOW)


def test_ingest_hook_counts_events_and_variant_conversions() -> None:
    reg = Registry()
    hook = IngestMetrics(reg)
    calls = hook([
        _event("1", "view"), _event("2", "view"), _event("3", "search"),
        _event("4", "click", props={"variant": "B", "rec_id": "r1"}),
        _event("5", "purchase", props={"variant": "B"}),
        _event("6", "purchase"),  # no variant: not attributed
        _event("7", "view", props={"variant": "B"}),  # a view is not a conversion
    ])  # fmt: skip
    assert calls == []
    counters = reg.drain().counters
    assert counters[("events.ingested", (("type", "view"),))] == 3
    assert counters[("events.ingested", (("type", "purchase"),))] == 2
    assert counters[("recs.conversions", (("type", "click"), ("variant", "B")))] == 1
    assert counters[("recs.conversions", (("type", "purchase"), ("variant", "B")))] == 1
    assert counters[("recs.revenue", (("variant", "B"),))] == pytest.approx(6.0)
    assert ("recs.conversions", (("type", "view"), ("variant", "B"))) not in counters


def test_stats_collector_turns_cumulative_counters_into_deltas() -> None:
    source = {"served.cache": 3, "served.inline": 1, "fallback.popular.timeout": 1}
    collector = StatsCollector(lambda: source)
    reg = Registry()
    collector(reg)
    source.update({"served.cache": 5, "over_budget": 2})
    collector(reg)
    counters = reg.drain().counters
    assert counters[("recs.served", (("source", "cache"),))] == 5
    assert counters[("recs.served", (("source", "inline"),))] == 1
    assert counters[("recs.fallbacks", (("kind", "popular"), ("reason", "timeout")))] == 1
    assert counters[("recs.other", (("name", "over_budget"),))] == 2


# -- the flush to Redis ------------------------------------------------------------------------


def _ts_info(client: redis.Redis, key: str) -> dict[str, Any]:
    raw = client.execute_command("TS.INFO", key)
    if isinstance(raw, list):
        raw = dict(zip(raw[::2], raw[1::2], strict=True))
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in raw.items()}


def _labels(info: dict[str, Any]) -> dict[str, str]:
    raw = info["labels"]
    pairs = raw.items() if isinstance(raw, dict) else raw
    return {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v)
            for k, v in pairs}  # fmt: skip


def _range_sum(client: redis.Redis, key: str) -> float:
    return sum(float(v) for _, v in client.execute_command("TS.RANGE", key, "-", "+"))


def _unreachable() -> redis.Redis:
    """A client of a closed port that fails at once (no retries)."""
    return redis.Redis(port=free_port(), socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))


def _sample(reg: Registry) -> None:
    for ms in (1.0, 2.0, 3.0, 40.0):
        reg.observe_request("GET", "/v1/items/{item_id}", 200, ms)
    reg.observe_request("POST", "/v1/events", 500, 5.0)
    reg.inc("events.ingested", 7, type="view")


def test_flush_writes_bounded_series_with_compaction_rules(
    client: redis.Redis, cfg: EngineConfig
) -> None:
    mcfg = MetricsConfig(key_prefix=cfg.key_prefix)
    keys = MetricKeys(cfg.key_prefix)
    reg = Registry()
    _sample(reg)
    flusher = Flusher(reg, client, mcfg)
    written = flusher.flush()
    assert written == 3 + 2 * 3  # 3 counter series, 2 routes x p50/p95/p99
    assert flusher.flush() == 0  # nothing pending

    req_key = keys.series(
        ("http.requests", (("method", "GET"), ("route", "/v1/items/{item_id}"), ("status", "2xx")))
    )
    assert req_key == f"{keys.base()}http:requests:GET:/v1/items/<item_id>:2xx"
    info = _ts_info(client, req_key)
    assert info["retentionTime"] == mcfg.raw_retention_ms
    assert _labels(info) == {
        "prefix": cfg.key_prefix, "metric": "http.requests", "kind": "counter",
        "method": "GET", "route": "/v1/items/{item_id}", "status": "2xx", "res": "raw",
        "part": str(keys.current_part),
    }  # fmt: skip
    rules = info["rules"]
    rule_keys = {(r[0] if isinstance(r, list) else r) for r in rules}
    rule_keys = {k.decode() if isinstance(k, bytes) else k for k in rule_keys}
    assert rule_keys == {req_key + ":1m", req_key + ":1h"}
    assert _ts_info(client, req_key + ":1h")["retentionTime"] == mcfg.hour_retention_ms
    assert _range_sum(client, req_key) == 4

    p95 = keys.series(("http.latency_ms", (("method", "GET"), ("route", "/v1/items/{item_id}"))),
                      "p95")  # fmt: skip
    (sample,) = client.execute_command("TS.RANGE", p95, "-", "+")
    assert 3.0 < float(sample[1]) <= 48.0  # the interval's p95 (bucket resolution)
    assert _ts_info(client, p95 + ":1m")["retentionTime"] == mcfg.minute_retention_ms

    totals = read_totals(client, keys)
    assert totals.counters[("events.ingested", (("type", "view"),))] == 7
    hist = totals.hists[("http.latency_ms", (("method", "GET"), ("route", "/v1/items/{item_id}")))]
    assert hist.count == 4 and hist.sum_ms == pytest.approx(46.0)

    # Every key is bounded: series by RETENTION, the totals hash by a TTL (and the series cap).
    found = [k.decode() for k in client.scan_iter(match=cfg.key_prefix + "*", count=1000)]
    assert found and all(k.startswith(keys.base()) for k in found)
    for key in found:
        if client.type(key) == b"TSDB-TYPE":
            assert 0 < _ts_info(client, key)["retentionTime"] <= mcfg.hour_retention_ms, key
        else:
            assert key == keys.totals and 0 < client.ttl(key) <= mcfg.totals_ttl_s


def test_two_workers_add_up(client: redis.Redis, cfg: EngineConfig) -> None:
    mcfg = MetricsConfig(key_prefix=cfg.key_prefix)
    workers = [Flusher(Registry(), client, mcfg) for _ in range(2)]
    for w in workers:
        _sample(w.registry)
        assert w.flush() > 0  # the second one finds the series created: "already exists"
    totals = read_totals(client, MetricKeys(cfg.key_prefix))
    assert totals.counters[("events.ingested", (("type", "view"),))] == 14
    lab = (("method", "POST"), ("route", "/v1/events"), ("status", "5xx"))
    assert totals.counters[("http.requests", lab)] == 2
    assert _range_sum(client, MetricKeys(cfg.key_prefix).series(("http.requests", lab))) == 2


def test_a_failed_flush_keeps_the_data_for_the_next(client: redis.Redis, cfg: EngineConfig) -> None:
    mcfg = MetricsConfig(key_prefix=cfg.key_prefix)
    reg = Registry()
    _sample(reg)
    down = _unreachable()
    flusher = Flusher(reg, down, mcfg)
    assert flusher.flush() == 0
    assert flusher.failures == 1 and flusher.last_error
    reg.inc("events.ingested", 1, type="view")  # more arrives meanwhile
    flusher.client = client
    assert flusher.flush() > 0
    totals = read_totals(client, MetricKeys(cfg.key_prefix))
    assert totals.counters[("events.ingested", (("type", "view"),))] == 8  # once, not twice
    down.close()


def test_a_vanished_series_is_recreated(client: redis.Redis, cfg: EngineConfig) -> None:
    mcfg = MetricsConfig(key_prefix=cfg.key_prefix)
    reg = Registry()
    flusher = Flusher(reg, client, mcfg)
    reg.inc("events.ingested", 1, type="view")
    flusher.flush()
    key = MetricKeys(cfg.key_prefix).series(("events.ingested", (("type", "view"),)))
    client.delete(key, key + ":1m", key + ":1h")
    reg.inc("events.ingested", 1, type="view")
    flusher.flush()  # this sample is lost in TS (logged), the totals keep it
    assert flusher.last_error
    reg.inc("events.ingested", 1, type="view")
    flusher.flush()
    assert _range_sum(client, key) == 1
    assert client.exists(key + ":1m")


def test_processes_write_their_own_parts_and_the_views_merge_them(
    client: redis.Redis, cfg: EngineConfig
) -> None:
    """Two processes (metrics parts 2 and 9): each flush writes its own part's keys only (one
    slot per process), and totals, recent rates, series and latency merge both."""
    mcfg = MetricsConfig(key_prefix=cfg.key_prefix)
    regs = [Registry(), Registry()]
    for reg, ms in zip(regs, (2.0, 900.0), strict=True):
        reg.observe_request("GET", "/v1/items/{item_id}", 200, ms)
        reg.inc("events.ingested", 3, type="view")
    for reg, part in zip(regs, (2, 9), strict=True):
        Flusher(reg, client, mcfg, part=part).flush()
    for part in (2, 9):
        mine = list(client.scan_iter(match=MetricKeys(cfg.key_prefix, part).base() + "*"))
        assert len(mine) >= 5  # its series, rollups and totals
    totals = read_totals(client, MetricKeys(cfg.key_prefix))
    assert totals.total("events.ingested") == 6
    route = (("method", "GET"), ("route", "/v1/items/{item_id}"))
    assert totals.hists[("http.latency_ms", route)].count == 2
    series = series_json(client, mcfg, minutes=10, step_s=60)
    assert sum(series["events"]["view"]) == 6
    assert sum(series["requests"]["GET /v1/items/{item_id}"]) == 2
    assert max(v or 0 for v in series["p99"]["GET /v1/items/{item_id}"]) >= 700  # the worst part
    stats = stats_json(client, Registry(), mcfg, window_s=60)
    assert stats["events"]["ingested"] == 6
    ep = {(e["method"], e["route"]): e for e in stats["endpoints"]}
    assert ep[("GET", "/v1/items/{item_id}")]["requests"] == 2


def test_series_and_stats_json(client: redis.Redis, cfg: EngineConfig) -> None:
    mcfg = MetricsConfig(key_prefix=cfg.key_prefix)
    reg = Registry()
    _sample(reg)
    StatsCollector(lambda: {"served.cache": 3, "served.inline": 1, "fallback.popular.budget": 1,
                            "served.fallback": 1})(reg)  # fmt: skip
    reg.inc("recs.conversions", 2, variant="B", type="purchase")
    Flusher(reg, client, mcfg).flush()

    series = series_json(client, mcfg, minutes=10, step_s=60)
    assert series["resolution"] == "raw"
    assert len(series["timestamps"]) in (10, 11)
    assert sum(series["requests"]["GET /v1/items/{item_id}"]) == 4
    assert sum(series["errors"]["POST /v1/events"]) == 1
    assert sum(series["events"]["view"]) == 7
    assert sum(series["recs"]["cache"]) == 3
    assert sum(series["conversions"]["B:purchase"]) == 2
    assert any(v for v in series["p95"]["GET /v1/items/{item_id}"] if v)

    # Beyond the raw retention (2 h): older steps from the 1-minute compactions, the newest
    # from the raw series (a compaction bucket is only written when a later sample arrives).
    view = MetricKeys(cfg.key_prefix).series(("events.ingested", (("type", "view"),)))
    client.execute_command("TS.ADD", view + ":1m", NOW - 3 * 3_600_000, 5)
    long = series_json(client, mcfg, minutes=600, step_s=600)
    assert long["resolution"] == "1m+raw"
    views = long["events"]["view"]
    assert sum(views) == 12 and 7 in views[-2:] and 5 in views[:-12]

    stats = stats_json(client, reg, mcfg, window_s=60)
    assert stats["source"] == "redis"
    ep = {(e["method"], e["route"]): e for e in stats["endpoints"]}
    items = ep[("GET", "/v1/items/{item_id}")]
    assert items["requests"] == 4 and items["errors"] == 0
    assert items["rate_per_s"] == pytest.approx(4 / 60, rel=0.01)
    assert 1.0 <= items["latency_ms"]["p50"] <= 3.0
    assert ep[("POST", "/v1/events")]["errors"] == 1
    assert stats["events"] == {"ingested": 7, "per_s": pytest.approx(7 / 60, rel=0.01),
                               "by_type": {"view": 7}, "unknown_item": 0}  # fmt: skip
    recs = stats["recommendations"]
    assert recs["served"] == {"cache": 3, "inline": 1, "fallback": 1}
    assert recs["cache_hit_rate"] == 0.6
    assert recs["fallbacks"] == {"popular:budget": 1}
    assert stats["variants"] == {"B": {"purchase": 2}}

    # Redis unreachable: this process's own totals, and the reason.
    down = _unreachable()
    local = stats_json(down, reg, mcfg)
    assert local["source"] == "local" and local["redis_error"]
    assert local["events"]["ingested"] == 7
    down.close()


# -- the middleware ---------------------------------------------------------------------------


def test_the_request_path_only_counts_in_process() -> None:
    """No lifespan, no flusher: requests are counted without any I/O."""

    async def endpoint(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    reg = Registry()
    app = Starlette(
        routes=[Route("/things/{thing_id}", endpoint)],
        middleware=[Middleware(MetricsMiddleware, registry=reg)],
    )
    tc = TestClient(app)  # no `with`: no lifespan, so no flusher and no Redis at all
    assert tc.get("/things/1").status_code == 200
    assert tc.get("/things/2").status_code == 200
    assert tc.get("/nowhere").status_code == 404
    counters = reg.drain().counters
    lab = (("method", "GET"), ("route", "/things/{thing_id}"), ("status", "2xx"))
    assert counters[("http.requests", lab)] == 2
    unmatched = (("method", "GET"), ("route", UNMATCHED), ("status", "4xx"))
    assert counters[("http.requests", unmatched)] == 1


def test_an_exception_counts_as_a_5xx() -> None:
    reg = Registry()

    async def broken(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("boom")

    mw = MetricsMiddleware(broken, registry=reg)
    tc = TestClient(mw, raise_server_exceptions=False)
    assert tc.get("/x").status_code == 500
    ((_name, labels),) = reg.drain().counters
    assert dict(labels)["status"] == "5xx"


@pytest.fixture
def api(redis_url: str, cfg: EngineConfig, tmp_path: Path) -> Iterator[TestClient]:
    app = full_app(redis_url, cfg, tmp_path, catalog=False, recommendations=False,
                   metrics_config=MetricsConfig(flush_s=60))  # fmt: skip
    with TestClient(app) as tc:
        yield tc


def test_middleware_flushes_what_the_app_served(
    api: TestClient, client: redis.Redis, cfg: EngineConfig
) -> None:
    events = [
        {"event_id": "m1", "type": "view", "user_id": "u1", "item_id": "A", "ts": NOW},
        {"event_id": "m2", "type": "purchase", "user_id": "u1", "ts": NOW,
         "items": [{"item_id": "A", "qty": 1, "price": 4.0}], "props": {"variant": "B"}},
    ]  # fmt: skip
    assert api.post("/v1/events", json={"events": events}, headers=WRITE).status_code == 200
    assert api.post("/v1/events", json={"events": events}, headers=WRITE).status_code == 200
    assert api.get("/health").status_code == 200
    assert api.get("/v1/nothing-here").status_code == 404
    mw = api.app.state.metrics  # type: ignore[attr-defined]
    assert mw.flusher is not None and mw.flusher.flush() > 0

    totals = read_totals(client, MetricKeys(cfg.key_prefix))
    ok = (("method", "POST"), ("route", "/v1/events"), ("status", "2xx"))
    assert totals.counters[("http.requests", ok)] == 2
    assert totals.counters[("events.ingested", (("type", "view"),))] == 1  # duplicates excluded
    assert totals.counters[("recs.conversions", (("type", "purchase"), ("variant", "B")))] == 1
    assert totals.counters[("recs.revenue", (("variant", "B"),))] == 4.0

    text = api.get("/metrics").text
    assert 'retail_http_requests_total{method="POST",route="/v1/events",status="2xx"} 2' in text
    assert 'retail_events_ingested_total{type="purchase"} 1' in text
    assert "retail_metrics_source_redis 1" in text
    stats = api.get("/v1/stats").json()
    assert stats["events"]["ingested"] == 2
    assert stats["variants"] == {"B": {"purchase": 1, "revenue": 4.0}}
    assert stats["flusher"]["flushes"] >= 1
    series = api.get("/v1/stats/series?minutes=5&step_s=60").json()
    assert sum(series["requests"]["POST /v1/events"]) == 2
    assert api.get("/v1/stats/series?minutes=600&step_s=5").status_code == 422
    assert api.get("/v1/stats?window_s=1").status_code == 422


def test_the_last_flush_happens_at_shutdown(
    redis_url: str, cfg: EngineConfig, tmp_path: Path, client: redis.Redis
) -> None:
    app = full_app(redis_url, cfg, tmp_path, catalog=False, recommendations=False,
                   metrics_config=MetricsConfig(flush_s=300))  # fmt: skip
    with TestClient(app) as tc:
        assert tc.get("/health").status_code == 200
        assert not client.exists(MetricKeys(cfg.key_prefix).totals)  # nothing flushed yet
    totals = read_totals(client, MetricKeys(cfg.key_prefix))
    health = (("method", "GET"), ("route", "/health"), ("status", "2xx"))
    assert totals.counters[("http.requests", health)] == 1


def test_metrics_can_require_the_admin_key(
    redis_url: str, cfg: EngineConfig, tmp_path: Path
) -> None:
    app = full_app(redis_url, cfg, tmp_path, catalog=False, recommendations=False,
                   metrics_config=MetricsConfig(public=False, flush_s=60))  # fmt: skip
    with TestClient(app) as tc:
        for path in ("/metrics", "/v1/stats", "/v1/stats/series"):
            assert tc.get(path).status_code == 401, path
            assert tc.get(path, headers=ADMIN).status_code == 200, path


def test_load_metrics_config(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_text("RETAIL_METRICS_FLUSH_S=2.5\nRETAIL_METRICS_PUBLIC=false\n")
    cfg = load_metrics_config(env, key_prefix="x:")
    assert (cfg.flush_s, cfg.public, cfg.key_prefix, cfg.enabled) == (2.5, False, "x:", True)
    env.write_text("RETAIL_METRICS_FLUSH_S=0\n")
    with pytest.raises(ValueError):
        load_metrics_config(env)


# -- structured logs ----------------------------------------------------------------------------


def test_log_lines_carry_the_request_id() -> None:
    log = logging.getLogger("test.metrics.handler")

    async def endpoint(request: Request) -> JSONResponse:
        log.warning("inside %s", "the handler")
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[Route("/x", endpoint)],
        middleware=[
            Middleware(RequestContextMiddleware, json_logs=True),
            Middleware(MetricsMiddleware, registry=Registry()),
        ],
    )
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter())
    loggers = [log, logging.getLogger("retail.http")]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    try:
        resp = TestClient(app).get("/x", headers={"x-request-id": "req-42"})
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    assert resp.headers["x-request-id"] == "req-42"
    lines = [json.loads(ln) for ln in stream.getvalue().splitlines()]
    inside = next(ln for ln in lines if ln["logger"] == "test.metrics.handler")
    assert inside["msg"] == "inside the handler" and inside["request_id"] == "req-42"
    access = next(ln for ln in lines if ln["logger"] == "retail.http")
    assert access["request_id"] == "req-42" and access["path"] == "/x" and access["status"] == 200
    assert "msg" not in access  # the JSON message is merged, not nested as a string
    assert access["level"] == "INFO" and access["ts"].endswith("Z")


def test_random_label_values_never_break_the_text_format() -> None:
    reg = Registry()
    rng = random.Random(3)
    for _ in range(200):
        value = "".join(chr(rng.randint(32, 0x24F)) for _ in range(rng.randint(0, 80)))
        reg.inc("fuzz.count", 1, value=value)
    text = render_prometheus(local_totals(reg))
    for line in text.splitlines():
        if line.startswith("retail_fuzz_count_total{"):
            assert line.count('"') == 2 and line.rsplit(" ", 1)[1].isdigit()


def test_configure_logging_routes_everything_through_one_json_handler() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    server = logging.getLogger("hypercorn.error")
    server_saved = (list(server.handlers), server.propagate)
    server.addHandler(logging.StreamHandler(io.StringIO()))  # as hypercorn's CLI does
    stream = io.StringIO()
    try:
        configure_logging(json_lines=True, stream=stream)
        server.info("Running on http://127.0.0.1:8000")
        logging.getLogger("retail.test").info("plain %d", 1)
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved[0]:
            root.addHandler(h)
        root.setLevel(saved[1])
        server.handlers[:] = server_saved[0]
        server.propagate = server_saved[1]
    lines = [json.loads(ln) for ln in stream.getvalue().splitlines()]
    assert [(ln["logger"], ln["msg"]) for ln in lines] == [
        ("hypercorn.error", "Running on http://127.0.0.1:8000"),
        ("retail.test", "plain 1"),
    ]
    assert all("request_id" not in ln for ln in lines)  # outside any request
