"""Structured logs: one JSON object per line (`RETAIL_LOG_JSON=true`), with the request id.

`RequestContextMiddleware` (app/obs/middleware.py) gives every request an id and logs one line per
request; `MetricsMiddleware` (app/obs/middleware.py), which runs inside it, puts that id into the
`REQUEST_ID` context variable, so every log record emitted while serving the request (also in
the thread pool: Starlette copies the context into worker threads) carries it.

`JsonFormatter` renders a record as {"ts", "level", "logger", "msg", "request_id"?, "exc"?};
a message that is itself a JSON object (the per-request line in JSON mode) is merged into it
instead of being nested as a string.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time
from typing import Any, TextIO

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "retail_request_id", default=None
)


class RequestIdFilter(logging.Filter):
    """Adds `record.request_id` (None outside a request) for any formatter to use."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
        }
        message = record.getMessage()
        merged = False
        if message.startswith("{") and message.endswith("}"):
            try:
                fields = json.loads(message)
            except ValueError:
                fields = None
            if isinstance(fields, dict):
                out.update(fields)
                merged = True
        if not merged:
            out["msg"] = message
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        if request_id and "request_id" not in out:
            out["request_id"] = request_id
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, separators=(",", ":"), default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
SERVER_LOGGERS = ("hypercorn.error", "hypercorn.access")


def configure_logging(
    *, json_lines: bool, level: int = logging.INFO, stream: TextIO | None = None
) -> logging.Handler:
    """Replace the root handlers with one stream handler (JSON lines or plain text)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # hypercorn's CLI gives its loggers their own text handlers: route them through ours.
    for name in SERVER_LOGGERS:
        server_log = logging.getLogger(name)
        for old in list(server_log.handlers):
            server_log.removeHandler(old)
        server_log.propagate = True
    return handler
