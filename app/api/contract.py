"""The contract routes: `/openapi.json` (built from the live route table, once per app) and
`/docs`, a static page that renders it (no CDN, no build step)."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from app.api.openapi import ANY_OBJECT, Operation, document, operation

STATIC_DIR = Path(__file__).resolve().parent / "static"
TITLE = "Redis retail personalization engine"


def package_version() -> str:
    try:
        return metadata.version("redis-retail-engine")
    except metadata.PackageNotFoundError:  # running from a source tree without install
        return "0.0.0"


def app_document(request: Request) -> dict[str, Any]:
    """The app's document, built on first use (every route is registered by then)."""
    cached = getattr(request.app.state, "openapi", None)
    if cached is None:
        cached = document(request.app.routes, version=package_version(), title=TITLE)
        request.app.state.openapi = cached
    return dict(cached)


@operation(
    Operation(
        "This OpenAPI 3.1 document",
        "contract",
        responses={200: ("the document", ANY_OBJECT)},
    )
)
async def openapi_json(request: Request) -> Response:
    return JSONResponse(app_document(request))


@operation(
    Operation(
        "A readable page for the OpenAPI document",
        "contract",
        content_type="text/html",
        responses={200: ("HTML", None)},
    )
)
async def docs_page(request: Request) -> Response:
    return FileResponse(STATIC_DIR / "api.html", headers={"cache-control": "no-cache"})


def contract_routes() -> list[BaseRoute]:
    return [Route("/openapi.json", openapi_json), Route("/docs", docs_page)]
