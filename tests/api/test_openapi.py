"""The OpenAPI document: every live route is in it, it is a valid OpenAPI 3.1 document, and the
schemas describe what the handlers really answer."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from openapi_spec_validator import validate
from starlette.datastructures import Secret
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from app.api.app import create_app
from app.api.openapi import Operation, document, operation, route_methods
from app.core.settings import EngineConfig, Settings


@pytest.fixture
def api(redis_url: str, cfg: EngineConfig, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        redis_url=redis_url, host="127.0.0.1", port=0, write_keys=frozenset({"wk_test"}),
        admin_key=Secret("s3cret-admin"), data_dir=tmp_path, sample_data=tmp_path / "none",
        log_json=True, engine=cfg,
    )  # fmt: skip
    with TestClient(create_app(settings)) as client:
        yield client


def test_every_route_is_in_the_document(api: TestClient) -> None:
    doc = api.get("/openapi.json").json()
    live = route_methods(api.app.routes)  # type: ignore[attr-defined]
    assert len(live) > 25
    for path, method, _endpoint in live:
        assert method.lower() in doc["paths"].get(path, {}), f"{method} {path} missing"
        op = doc["paths"][path][method.lower()]
        assert op["summary"] and op["responses"]
    documented = {(p, m.upper()) for p, ms in doc["paths"].items() for m in ms}
    assert documented == {(p, m) for p, m, _ in live}  # nothing documented that is not served


def test_the_document_is_valid_openapi_3_1(api: TestClient) -> None:
    doc = api.get("/openapi.json").json()
    assert doc["openapi"] == "3.1.0"
    validate(doc)  # raises on any schema violation


def test_auth_schemes_are_declared_per_operation(api: TestClient) -> None:
    doc = api.get("/openapi.json").json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["writeKeyBasic"] == {**schemes["writeKeyBasic"], "type": "http",
                                        "scheme": "basic"}  # fmt: skip
    assert schemes["writeKeyHeader"]["name"] == "X-Write-Key"
    events = doc["paths"]["/v1/events"]["post"]
    assert {"writeKeyBasic": []} in events["security"]
    assert "requestBody" in events
    profile = doc["paths"]["/v1/users/{user_id}/profile"]["get"]
    assert profile["security"] == [{"shopperToken": []}, {"serverBearer": []},
                                   {"adminBearer": []}]  # fmt: skip
    assert {"401", "403", "429"} <= set(profile["responses"])
    recs = doc["paths"]["/v1/recommendations/{user_id}"]["get"]
    assert recs["security"] == profile["security"]
    assert doc["paths"]["/v1/experiments"]["get"]["security"] == [{"adminBearer": []}]
    assert doc["paths"]["/health"]["get"]["security"] == []
    # Starlette's {entity_id:path} converter is not part of the OpenAPI template.
    assert "/v1/features/{entity_type}/{entity_id}" in doc["paths"]


def test_docs_page_is_served_without_a_cdn(api: TestClient) -> None:
    page = api.get("/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "/static/api.js" in page.text and "https://" not in page.text
    assert api.get("/static/api.js").status_code == 200


def test_an_undocumented_route_is_refused() -> None:
    async def bare(request: object) -> Response:
        return Response()

    @operation(Operation("documented", "t"))
    async def described(request: object) -> Response:
        return Response()

    doc = document([Route("/ok", described)], version="1", title="t")
    assert "get" in doc["paths"]["/ok"]
    with pytest.raises(LookupError, match="GET /bare"):
        document([Route("/ok", described), Route("/bare", bare)], version="1", title="t")
