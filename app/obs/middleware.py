"""Pure ASGI middleware: request id, timing and one structured log line per request."""

from __future__ import annotations

import json
import logging
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

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
