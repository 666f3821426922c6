"""The README's HTTP API table is held against the app (issue 16, item 9): every route is
listed, every listed route exists, and the auth column is what the route enforces.

Generic on purpose: a new route (any module) fails here until the README lists it, and any
auth value other than `-` (admin, write key, "server/admin key or shopper token", ...) means
"401 (or 403) without credentials"; `-` followed by a note is public without credentials. A row may
list several paths with the same methods and auth.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.datastructures import Secret
from starlette.routing import Route
from starlette.testclient import TestClient

from app.api.app import create_app
from app.core.settings import ROOT, EngineConfig, Settings

PARAM_RE = re.compile(r"\{[^}]+\}")
SAMPLE_PARAMS = {"user_id": "c17850", "item_id": "85123A", "exp_id": "readme-exp",
                 "entity_type": "user", "entity_id": "c17850"}  # fmt: skip


def shape(path: str) -> str:
    return PARAM_RE.sub("{}", path.split("?", 1)[0])


def readme_rows() -> dict[tuple[str, str], str]:
    """(method, path shape) -> auth cell, from the table under '## HTTP API'."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## HTTP API", 1)[1].split("\n## ", 1)[0]
    rows: dict[tuple[str, str], str] = {}
    for line in section.splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if len(cells) != 4 or cells[0] in ("method", "---"):
            continue
        methods, path_cell, auth = cells[0], cells[1], cells[2].strip("`")
        paths = re.findall(r"`(/[^`]*)`", path_cell)
        assert paths, f"no path in README row: {line}"
        for method in (m.strip() for m in methods.split(",")):
            for path in paths:
                key = (method, shape(path.replace("\\|", "|")))
                assert key not in rows, f"listed twice: {key}"
                rows[key] = auth
    return rows


@pytest.fixture
def api(redis_url: str, cfg: EngineConfig, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        redis_url=redis_url, host="127.0.0.1", port=0, write_keys=frozenset({"wk_test"}),
        admin_key=Secret("s3cret-admin"), data_dir=tmp_path, sample_data=tmp_path / "none",
        log_json=False, engine=cfg,
    )  # fmt: skip
    with TestClient(create_app(settings)) as client:
        yield client


def app_routes(api: TestClient) -> dict[tuple[str, str], str]:
    """(method, path shape) -> a concrete URL to call."""
    out: dict[tuple[str, str], str] = {}
    for route in api.app.routes:  # type: ignore[attr-defined]
        if not isinstance(route, Route):
            continue  # the /static mount: files, not API
        url = PARAM_RE.sub(lambda m: SAMPLE_PARAMS[m.group(0)[1:-1].split(":")[0]], route.path)
        for method in sorted(route.methods or {"GET"}):
            if method not in ("HEAD", "OPTIONS"):  # OPTIONS: CORS preflights, no credentials
                out[(method, shape(route.path))] = url
    return out


def test_readme_lists_every_route_and_nothing_else(api: TestClient) -> None:
    documented, served = set(readme_rows()), set(app_routes(api))
    assert served - documented == set(), "routes missing from the README table"
    assert documented - served == set(), "README rows without a route"


def test_readme_auth_column_matches_the_routes(api: TestClient) -> None:
    rows = readme_rows()
    wrong = []
    for (method, path), url in sorted(app_routes(api).items()):
        body = {} if method in ("POST", "PUT", "PATCH") else None
        status = api.request(method, url, json=body).status_code  # no credentials at all
        # "-" (possibly with a note, e.g. "- (with `user=`: ...)"): public without credentials.
        needs_key = not rows[(method, path)].startswith("-")
        if needs_key != (status in (401, 403)):  # 403: a personal read without its proof
            wrong.append(f"{method} {path}: README auth {rows[(method, path)]!r}, got {status}")
    assert wrong == []


def test_unknown_routes_answer_json(api: TestClient) -> None:
    """Issue 16, item 12: no plain-text 'Not Found'."""
    resp = api.get("/v1/nothing-here")
    assert resp.status_code == 404
    assert resp.headers["content-type"] == "application/json"
    assert resp.json() == {"error": "not_found", "detail": "no route GET /v1/nothing-here"}
    wrong_method = api.delete("/v1/trending")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"] == "method_not_allowed"
    assert api.get("/static/nope.js").json()["error"] == "not_found"
