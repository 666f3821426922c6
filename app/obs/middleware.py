"""Pure ASGI middleware: request id, timing and one structured log line per request
(`RequestContextMiddleware`); per-route request counts and latency histograms into the metrics
registry, and the metrics' start-up and shutdown with the app (`MetricsMiddleware`)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Mapping
from dataclasses import replace

import anyio
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.core.logs import REQUEST_ID
from app.obs.collectors import IngestMetrics, StatsCollector
from app.obs.flusher import Flusher
from app.obs.registry import DEFAULT, UNMATCHED, MetricsConfig, Registry, load_metrics_config
from app.redis.connect import connect

log = logging.getLogger("retail.http")


class RequestContextMiddleware:
    """Adds `x-request-id` (kept from the client when sane) and `server-timing` headers."""

    def __init__(self, app: ASGIApp, *, json_logs: bool = False) -> None:
        self.app = app
        self.json_logs = json_logs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = (
            incoming if 0 < len(incoming) <= 64 and incoming.isprintable() else uuid.uuid4().hex
        )
        scope.setdefault("state", {})["request_id"] = request_id
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                elapsed = (time.perf_counter() - start) * 1000
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                headers.append((b"server-timing", f"app;dur={elapsed:.2f}".encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = (time.perf_counter() - start) * 1000
            fields = {
                "request_id": request_id, "method": scope["method"], "path": scope["path"],
                "status": status, "ms": round(elapsed, 3),
            }  # fmt: skip
            if self.json_logs:
                log.info(json.dumps(fields, separators=(",", ":")))
            else:
                log.info("%(method)s %(path)s %(status)s %(ms).2fms id=%(request_id)s", fields)


metrics_log = logging.getLogger("retail.metrics")

# -- the middleware -----------------------------------------------------------------------------


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str) and path:
        return path
    return UNMATCHED


class MetricsMiddleware:
    """Pure ASGI: per-request count and latency by route template (in process), and the
    flusher's lifecycle (started after the app's lifespan startup, stopped at shutdown).

    At startup it also hooks into the lifespan state: `IngestMetrics` is added to
    `state["ingestor"].observers`, and the Recommender's counters (`state["recommender"]`
    or `app.state.recommender`) are collected at each flush.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        config: MetricsConfig | None = None,
        registry: Registry | None = None,
    ) -> None:
        self.app = app
        self.config = config  # None: read from the environment at startup (key prefix known)
        self.registry = registry or DEFAULT
        self.flusher: Flusher | None = None
        self._collector: StatsCollector | None = None

    async def _shutdown(self) -> None:
        flusher, self.flusher = self.flusher, None
        if flusher is not None:
            await anyio.to_thread.run_sync(flusher.stop)
            flusher.client.close()
        if self._collector is not None:
            self.registry.remove_collector(self._collector)
            self._collector = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500
        # The id RequestContextMiddleware (outside this one) gave the request, for log records.
        token = REQUEST_ID.set((scope.get("state") or {}).get("request_id"))

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            ms = (time.perf_counter() - start) * 1000
            self.registry.observe_request(scope["method"], _route_template(scope), status, ms)
            REQUEST_ID.reset(token)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def receive_wrapper() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                await self._shutdown()
            return message

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                try:
                    self._startup(scope)
                except Exception:  # metrics must never stop the app from starting
                    metrics_log.exception("metrics start-up failed: metrics stay in process")
            await send(message)

        await self.app(scope, receive_wrapper, send_wrapper)

    def _startup(self, scope: Scope) -> None:
        state = scope.get("state") or {}
        settings = state.get("settings")
        prefix = getattr(getattr(settings, "engine", None), "key_prefix", None)
        app = scope.get("app")
        app_state = getattr(app, "state", None)
        # Tests (and embedders) may set app.state.metrics_registry / metrics_config first.
        registry = getattr(app_state, "metrics_registry", None)
        if isinstance(registry, Registry):
            self.registry = registry
        cfg = getattr(app_state, "metrics_config", None)
        if not isinstance(cfg, MetricsConfig):
            cfg = self.config or load_metrics_config(key_prefix=prefix)
        if prefix and cfg.key_prefix != prefix:
            cfg = replace(cfg, key_prefix=prefix)
        self.config = cfg
        if app_state is not None:
            app_state.metrics = self
        ingestor = state.get("ingestor")
        hooks = getattr(ingestor, "observers", None)
        if isinstance(hooks, list) and not any(isinstance(h, IngestMetrics) for h in hooks):
            hooks.append(IngestMetrics(self.registry))

        def rec_stats() -> Mapping[str, int]:
            rec = state.get("recommender") or getattr(getattr(app, "state", None), "recommender",
                                                      None)  # fmt: skip
            stats = getattr(rec, "stats", None)
            return stats() if callable(stats) else {}

        self._collector = StatsCollector(rec_stats)
        self.registry.add_collector(self._collector)
        url = getattr(settings, "redis_url", None)
        if cfg.enabled and url:
            client = connect(
                url, socket_timeout=cfg.socket_timeout_s,
                socket_connect_timeout=cfg.socket_timeout_s, max_connections=4,
            )  # fmt: skip
            self.flusher = Flusher(self.registry, client, cfg)
            self.flusher.start()
