"""Helpers for the web, metrics and browser tests (imported explicitly; conftest.py untouched).

`full_app` is the real app with everything the storefront uses mounted: the web routes and
`MetricsMiddleware` (this issue), plus the catalog and recommendation routes when they are
importable and `app.api.app` does not mount them yet. `serving` runs an app under hypercorn on a
free localhost port in a background thread (for a real browser).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from starlette.applications import Starlette
from starlette.datastructures import Secret
from starlette.middleware import Middleware

from app.api.app import create_app
from app.api.web import WebConfig, web_routes
from app.core.settings import EngineConfig, Settings
from app.obs.middleware import MetricsMiddleware
from app.obs.registry import MetricsConfig, Registry

WRITE_KEY = "wk_test"  # the public client key the storefront page gets
SERVER_KEY = "sk_test"  # a backend's secret key: may write for any shopper
IDENTITY_SECRET = "id-secret-for-tests"
ADMIN_KEY = "s3cret-admin"
WRITE = {"X-Write-Key": SERVER_KEY}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def settings_for(redis_url: str, engine: EngineConfig, tmp_path: Path) -> Settings:
    return Settings(
        redis_url=redis_url, host="127.0.0.1", port=0, write_keys=frozenset({WRITE_KEY}),
        admin_key=Secret(ADMIN_KEY), data_dir=tmp_path, sample_data=tmp_path / "none",
        log_json=False, engine=engine, server_keys=frozenset({SERVER_KEY}),
        identity_secret=Secret(IDENTITY_SECRET),
    )  # fmt: skip


def _paths(app: Starlette) -> set[str]:
    return {str(getattr(r, "path", "")) for r in app.routes}


def full_app(
    redis_url: str,
    engine: EngineConfig,
    tmp_path: Path,
    *,
    registry: Registry | None = None,
    metrics_config: MetricsConfig | None = None,
    web_config: WebConfig | None = None,
    catalog: bool = True,
    recommendations: bool = True,
) -> Starlette:
    app = create_app(settings_for(redis_url, engine, tmp_path))
    if web_config is not None or "/metrics" not in _paths(app):
        ours = web_routes(web_config or WebConfig())
        mine = {str(getattr(r, "path", "")) for r in ours}
        app.router.routes[:] = [r for r in app.routes if getattr(r, "path", None) not in mine]
        app.router.routes.extend(ours)
    if catalog and "/v1/search" not in _paths(app):
        with contextlib.suppress(ImportError):
            from app.api.catalog import catalog_routes

            app.router.routes.extend(catalog_routes())
    if recommendations:
        with contextlib.suppress(ImportError):
            from app.api.recs import install_recommendations

            install_recommendations(app)  # adds its routes unless mounted already
            app.state.rec_background = True
    if not any(m.cls is MetricsMiddleware for m in app.user_middleware):
        # Innermost, as app.api.app would list it: after RequestContextMiddleware (request ids).
        app.user_middleware.append(Middleware(MetricsMiddleware))
    app.state.metrics_registry = registry or Registry()
    cfg = metrics_config or MetricsConfig(flush_s=0.2)
    app.state.metrics_config = replace(cfg, key_prefix=engine.key_prefix)
    return app


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def serving(app: Starlette, port: int | None = None) -> Iterator[str]:
    """hypercorn on 127.0.0.1:<free port> in a thread; yields the base URL."""
    from hypercorn.asyncio import serve
    from hypercorn.config import Config as HyperConfig

    port = port or free_port()
    config = HyperConfig()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    config.graceful_timeout = 2
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    failure: list[BaseException] = []

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
        except BaseException as exc:  # reported to the test below
            failure.append(exc)
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="hypercorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if failure:
            raise RuntimeError(f"the server failed to start: {failure[0]!r}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            break
        time.sleep(0.05)
    else:
        raise RuntimeError("the server did not start within 30 s")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(timeout=20)
