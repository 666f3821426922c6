"""Least privilege in Redis (app/redis/acl.py): the embedded server's ACL users, and maxmemory
with noeviction answered as a clear 503.

These tests start their own embedded servers (the session's shared server keeps the open
`default` user so other tests can work under random key prefixes).
"""

from __future__ import annotations

import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from starlette.datastructures import Secret
from starlette.testclient import TestClient

from app.api.app import create_app
from app.catalog.index import CatalogConfig, CatalogKeys, create_index
from app.catalog.vectorizers import get_vectorizer
from app.core.keys import Keys
from app.core.settings import ROOT, EngineConfig, Settings
from app.redis import embedded as redis_stack
from app.redis import library as functions
from loaders.catalog import load_online_retail

PREFIX = "rt:"
SERVER_KEY = "sk_test"
ADMIN_KEY = "s3cret-admin"
SAMPLE = ROOT / "data" / "online-retail" / "online-retail-2010-12_2011-09.csv.gz"
NOW = int(time.time() * 1000)


@pytest.fixture(scope="module")
def acl_server() -> Iterator[redis_stack.EmbeddedRedis]:
    server = redis_stack.temporary(acl_prefix=PREFIX).start()
    try:
        with redis.Redis.from_url(server.url_for("admin")) as admin:
            functions.load(admin)
        yield server
    finally:
        server.stop()


def settings(url: str, tmp_path: Path, **over: Any) -> Settings:
    return Settings(
        redis_url=url, host="127.0.0.1", port=0, write_keys=frozenset(),
        admin_key=Secret(ADMIN_KEY), data_dir=tmp_path, sample_data=tmp_path / "none",
        log_json=False, engine=EngineConfig(key_prefix=PREFIX),
        server_keys=frozenset({SERVER_KEY}), **over,
    )  # fmt: skip


def test_the_default_user_is_off_and_passwords_stay_in_the_data_folder(
    acl_server: redis_stack.EmbeddedRedis,
) -> None:
    with pytest.raises(redis.AuthenticationError), redis.Redis(port=acl_server.port) as anon:
        anon.ping()
    creds = acl_server.data_dir / "credentials.json"
    assert stat.S_IMODE(creds.stat().st_mode) == 0o600
    acl_file = (acl_server.data_dir / "users.acl").read_text()
    assert acl_server.credentials is not None
    assert all(pw not in acl_file for pw in acl_server.credentials.passwords.values())
    assert not creds.resolve().is_relative_to(ROOT)  # never in the repo


@pytest.mark.parametrize(
    "command",
    [
        ("FLUSHALL",), ("FLUSHDB",), ("CONFIG", "SET", "maxmemory", "0"),
        ("FUNCTION", "DELETE", "retail"), ("FUNCTION", "FLUSH"),
        ("FUNCTION", "LOAD", "REPLACE", "#!lua name=x\nredis.register_function('x', "
         "function() return 1 end)"),
        ("SET", "other:key", "1"), ("GET", "other:key"), ("DEL", "other:key"),
        ("FCALL", "identify_user", "1", "other:u:{x}:profile"),
        ("KEYS", "*"), ("EVAL", "return 1", "0"), ("SCRIPT", "FLUSH"), ("SHUTDOWN",),
        ("ACL", "SETUSER", "app", "+@all"), ("FT.DROPINDEX", "rt:idx"),
        ("MIGRATE", "127.0.0.1", "1", "rt:x", "0", "1"),
    ],
    ids=lambda c: " ".join(c[:2]),
)  # fmt: skip
def test_the_app_user_cannot(
    acl_server: redis_stack.EmbeddedRedis, command: tuple[str, ...]
) -> None:
    with (
        redis.Redis.from_url(acl_server.url_for("app")) as app,
        pytest.raises(redis.exceptions.NoPermissionError),
    ):
        app.execute_command(*command)
    with redis.Redis.from_url(acl_server.url_for("admin")) as admin:
        assert admin.function_list(library="retail")  # still there


def test_the_worker_user_cannot_touch_other_keys_or_the_server(
    acl_server: redis_stack.EmbeddedRedis,
) -> None:
    with redis.Redis.from_url(acl_server.url_for("worker")) as worker:
        for command in (("FLUSHALL",), ("CONFIG", "SET", "maxmemory", "0"), ("SET", "x", "1"),
                        ("FUNCTION", "DELETE", "retail")):  # fmt: skip
            with pytest.raises(redis.exceptions.NoPermissionError):
                worker.execute_command(*command)


def test_loaders_and_the_app_work_under_their_users(
    acl_server: redis_stack.EmbeddedRedis, tmp_path: Path
) -> None:
    """The worker loads the catalog; the app serves every route family without a NOPERM."""
    cfg, ckeys = CatalogConfig(key_prefix=PREFIX), CatalogKeys(PREFIX)
    with redis.Redis.from_url(acl_server.url_for("worker")) as worker:
        create_index(worker, ckeys, get_vectorizer())
        report = load_online_retail(worker, cfg, ckeys, SAMPLE, get_vectorizer())
        assert report.created > 0, report.summary()
    app = create_app(settings(acl_server.url_for("app"), tmp_path))
    app.state.rec_background = False
    w = {"X-Write-Key": SERVER_KEY}
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    item = next(iter(_items(acl_server)))
    with TestClient(app, raise_server_exceptions=False) as api:
        assert api.get("/health").json()["status"] == "ok"
        events = [{"event_id": f"a{i}", "type": t, "user_id": "c1", "item_id": item, "ts": NOW}
                  for i, t in enumerate(("view", "click", "add_to_cart"))]  # fmt: skip
        events.append({"event_id": "a9", "type": "purchase", "user_id": "c1", "ts": NOW,
                       "items": [{"item_id": item, "qty": 1, "price": 2.5}]})  # fmt: skip
        assert api.post("/v1/events", json=events, headers=w).json()["accepted"] == 4
        anon = "web-" + uuid.uuid4().hex
        assert api.post("/v1/events", json={"event_id": "b1", "type": "view", "anonymous_id": anon,
                        "item_id": item, "ts": NOW}, headers=w).status_code == 200  # fmt: skip
        ident = api.post("/v1/identify", json={"user_id": "c1", "anonymous_id": anon}, headers=w)
        assert ident.status_code == 200, ident.text
        for path in ("/v1/recommendations/c1?surface=cart", "/v1/users/c1/profile",
                     "/v1/users/c1/session", "/v1/trending?type=purchase",
                     "/v1/search?q=heart&user=c1", f"/v1/items/{item}",
                     f"/v1/items/{item}/similar", "/v1/experiments", "/v1/recommender",
                     "/v1/features/user/c1", "/metrics", "/v1/stats"):  # fmt: skip
            resp = api.get(path, headers=admin)
            assert resp.status_code == 200, (path, resp.text)
        patch = api.patch(f"/v1/items/{item}", json={"stock": 3}, headers=admin)
        assert patch.status_code in (200, 409), patch.text
    with redis.Redis.from_url(acl_server.url_for("admin")) as root:
        outside = [k for k in root.scan_iter(count=1000) if not k.startswith(PREFIX.encode())]
        assert outside == []


def _items(server: redis_stack.EmbeddedRedis) -> list[str]:
    ckeys = CatalogKeys(PREFIX)
    with redis.Redis.from_url(server.url_for("admin")) as admin:
        return [ckeys.item_of(k) for k in admin.scan_iter(match=ckeys.doc_prefix + "*", count=500)]


def test_at_maxmemory_writes_get_a_clear_503_and_nothing_is_evicted(tmp_path: Path) -> None:
    server = redis_stack.temporary(acl_prefix=PREFIX, maxmemory="2gb").start()
    try:
        admin = redis.Redis.from_url(server.url_for("admin"))
        functions.load(admin)
        assert admin.config_get("maxmemory-policy")["maxmemory-policy"] == "noeviction"
        app = create_app(settings(server.url_for("app"), tmp_path))
        app.state.rec_background = False
        w = {"X-Write-Key": SERVER_KEY}
        keys = Keys(PREFIX)
        with TestClient(app) as api:
            seeded = [{"event_id": f"s{i}", "type": "view", "user_id": f"u{i}", "item_id": "A",
                       "ts": NOW} for i in range(20)]  # fmt: skip
            assert api.post("/v1/events", json=seeded, headers=w).json()["accepted"] == 20
            used = int(admin.info("memory")["used_memory"])
            admin.config_set("maxmemory", used + 256 * 1024)
            status = 200
            for batch in range(200):
                events = [{"event_id": f"f{batch}-{i}", "type": "view", "user_id": f"x{batch}-{i}",
                           "item_id": f"I{i}", "ts": NOW} for i in range(200)]  # fmt: skip
                resp = api.post("/v1/events", json=events, headers=w)
                status = resp.status_code
                if status != 200:
                    break
            assert status == 503, resp.text
            assert resp.json()["error"] == "redis_out_of_memory"
            assert int(resp.headers["retry-after"]) >= 1
            assert all(admin.exists(keys.user(f"u{i}", "session")) for i in range(20))
            rec = api.get("/v1/recommendations/u1", headers=w)
            assert rec.status_code == 200  # reads are still answered
    finally:
        server.stop()
