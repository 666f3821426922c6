"""Who may read and write what over HTTP (docs/security.md), and the input limits.

Every personal endpoint and write, with no key, a wrong key, the public client key alone, another
shopper's token, an expired token, the right token, and the server/admin keys.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis
from starlette.applications import Starlette
from starlette.datastructures import Secret
from starlette.requests import Request
from starlette.testclient import TestClient

from app.api.app import create_app, redis_error
from app.core import tokens
from app.core.keys import Keys
from app.core.settings import EngineConfig, Limits, Settings

PUBLIC = "pk_public"
SERVER_KEY = "sk_server"
ADMIN_KEY = "s3cret-admin"
SECRET = "identity-secret"
NOW = int(time.time() * 1000)
ANON = "web-" + uuid.uuid4().hex  # a random bearer id, as the SDKs make them


def settings(redis_url: str, cfg: EngineConfig, tmp_path: Path, **over: Any) -> Settings:
    base = Settings(
        redis_url=redis_url, host="127.0.0.1", port=0, write_keys=frozenset({PUBLIC}),
        admin_key=Secret(ADMIN_KEY), data_dir=tmp_path, sample_data=tmp_path / "none",
        log_json=False, engine=cfg, server_keys=frozenset({SERVER_KEY}),
        identity_secret=Secret(SECRET),
    )  # fmt: skip
    return replace(base, **over)


@pytest.fixture
def api(redis_url: str, cfg: EngineConfig, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(settings(redis_url, cfg, tmp_path))
    app.state.rec_background = False
    with TestClient(app) as client:
        yield client


def token(user: str, ttl_s: int = 600, now: float | None = None) -> str:
    return tokens.mint(SECRET, user, ttl_s=ttl_s, now=now)


def expired(user: str) -> str:
    return token(user, ttl_s=60, now=time.time() - 3600)


def view(event_id: str, user: str | None = "c1", **extra: Any) -> dict[str, Any]:
    who = {"user_id": user} if user else {"anonymous_id": ANON}
    return {"event_id": event_id, "type": "view", **who, "item_id": "A", "ts": NOW, **extra}


# (headers, expected status class) per credential case, for reads about shopper c1
READ_CASES = [
    ("no key", {}, 403),
    ("wrong key", {"Authorization": "Bearer nope"}, 401),
    ("public key alone", {"X-Write-Key": PUBLIC}, 403),
    ("other shopper's token", {"X-Write-Key": PUBLIC, "X-Shopper-Token": token("c2")}, 403),
    ("expired token", {"X-Shopper-Token": expired("c1")}, 403),
    ("right token", {"X-Shopper-Token": token("c1")}, 200),
    ("right token + public key", {"X-Write-Key": PUBLIC, "X-Shopper-Token": token("c1")}, 200),
    ("server key", {"Authorization": f"Bearer {SERVER_KEY}"}, 200),
    ("admin key", {"Authorization": f"Bearer {ADMIN_KEY}"}, 200),
]
READS = [
    "/v1/recommendations/c1?k=3",
    "/v1/users/c1/session",
    "/v1/users/c1/profile",
    "/v1/search?q=heart&user=c1",
]


@pytest.mark.parametrize("path", READS)
@pytest.mark.parametrize(
    ("case", "headers", "expected"), READ_CASES, ids=[c[0] for c in READ_CASES]
)
def test_reads_about_a_shopper_need_proof(
    api: TestClient, path: str, case: str, headers: dict[str, str], expected: int
) -> None:
    api.post("/v1/events", json=view("seed"), headers={"X-Write-Key": SERVER_KEY})
    status = api.get(path, headers=headers).status_code
    if expected == 200:  # allowed: whatever the endpoint answers, never an auth error
        assert status not in (401, 403), (case, status)
    else:
        assert status == expected, (case, status)


WRITE_CASES = [
    ("no key", {}, None, 401),
    ("wrong key", {"X-Write-Key": "nope"}, None, 401),
    ("public key alone", {"X-Write-Key": PUBLIC}, None, 403),
    ("other shopper's token", {"X-Write-Key": PUBLIC}, token("c2"), 403),
    ("expired token", {"X-Write-Key": PUBLIC}, expired("c1"), 403),
    ("right token", {"X-Write-Key": PUBLIC}, token("c1"), 200),
    ("server key", {"X-Write-Key": SERVER_KEY}, None, 200),
    ("server key (Basic, as Segment sends it)", {"Authorization": "Basic c2tfc2VydmVyOg=="},
     None, 200),
    ("admin key", {"Authorization": f"Bearer {ADMIN_KEY}"}, None, 200),
]  # fmt: skip


@pytest.mark.parametrize(
    ("case", "headers", "tok", "expected"), WRITE_CASES, ids=[c[0] for c in WRITE_CASES]
)
def test_events_and_identify_naming_a_user_need_its_token(
    api: TestClient, case: str, headers: dict[str, str], tok: str | None, expected: int
) -> None:
    context = {"context": {"shopper_token": tok}} if tok else {}
    event = api.post("/v1/events", json=view("e1", **context), headers=headers)
    assert event.status_code == expected, (case, event.text)
    if expected == 200:
        assert event.json()["accepted"] == 1
    body = {"user_id": "c1", "traits": {"email": "c1@example.com"}, **context}
    ident = api.post("/v1/identify", json=body, headers=headers)
    assert ident.status_code == expected, (case, ident.text)


def test_a_numeric_user_id_needs_its_token_too(api: TestClient) -> None:
    event = {**view("num1"), "user_id": 17850}
    assert api.post("/v1/events", json=event, headers={"X-Write-Key": PUBLIC}).status_code == 403
    event["context"] = {"shopper_token": token("17850")}
    assert api.post("/v1/events", json=event, headers={"X-Write-Key": PUBLIC}).status_code == 200


def test_the_token_may_travel_in_the_header_for_events(api: TestClient) -> None:
    headers = {"X-Write-Key": PUBLIC, "X-Shopper-Token": token("c1")}
    assert api.post("/v1/events", json=view("h1"), headers=headers).json()["accepted"] == 1


def test_a_rejected_message_is_rejected_alone_and_never_applied(
    api: TestClient, client: redis.Redis, keys: Keys
) -> None:
    batch = {"events": [
        view("ok1", context={"shopper_token": token("c1")}),
        view("bad1", user="victim1"),  # the public key, no token for victim1
        view("anon1", user=None),
    ]}  # fmt: skip
    resp = api.post("/v1/events", json=batch, headers={"X-Write-Key": PUBLIC})
    assert resp.status_code == 200
    body = resp.json()
    assert (body["accepted"], body["rejected"]) == (2, 1)
    assert body["results"][1]["error"] == "forbidden" and "token" in body["results"][1]["reason"]
    assert client.exists(*keys.user_all("victim1")) == 0
    assert api.app.state.guard.rejected["write"] == 1  # counted (also the auth.rejected metric)


def test_the_identify_takeover_from_the_report_is_refused(
    api: TestClient, client: redis.Redis, keys: Keys
) -> None:
    victim = "anon:victim"
    client.json().set(keys.user(victim, "session"), "$", {"cart": []})
    mine = {"X-Write-Key": PUBLIC}
    attack = {"user_id": "attacker", "anonymous_id": "victim",
              "context": {"shopper_token": token("attacker")}}  # fmt: skip
    resp = api.post("/v1/identify", json=attack, headers=mine)
    assert resp.status_code == 403 and "random" in resp.json()["detail"]
    assert client.exists(keys.user(victim, "session")) == 1  # nothing moved
    traits = {"user_id": "c17850", "traits": {"email": "attacker@example.com"}}
    assert api.post("/v1/identify", json=traits, headers=mine).status_code == 403
    # The shopper's own merge of a real (random) anonymous id works with the public key.
    own = {"user_id": "attacker", "anonymous_id": ANON,
           "context": {"shopper_token": token("attacker")}}  # fmt: skip
    assert api.post("/v1/identify", json=own, headers=mine).status_code == 200


def test_anonymous_ids_are_bearer_ids(api: TestClient) -> None:
    assert api.get("/v1/recommendations/anon:victim").status_code == 403  # guessable
    assert api.get(f"/v1/recommendations/anon:{ANON}").status_code == 200
    short = {**view("s1", user=None), "anonymous_id": "abc"}
    resp = api.post("/v1/events", json=short, headers={"X-Write-Key": PUBLIC})
    assert resp.status_code == 403
    # A server key may use any id (loaders replaying history).
    assert (
        api.post("/v1/events", json=short, headers={"X-Write-Key": SERVER_KEY}).json()["accepted"]
        == 1
    )


def test_verification_off_is_for_a_loopback_server_only(
    redis_url: str, cfg: EngineConfig, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="local experiments"):
        create_app(settings(redis_url, cfg, tmp_path, verify_identity=False, host="0.0.0.0"))
    app = create_app(settings(redis_url, cfg, tmp_path, verify_identity=False))
    app.state.rec_background = False
    with TestClient(app) as local:
        assert local.get("/v1/users/c1/session").status_code == 404  # no proof asked
        assert (
            local.post("/v1/events", json=view("v1"), headers={"X-Write-Key": PUBLIC}).json()[
                "accepted"
            ]
            == 1
        )


# -- credentials and input ------------------------------------------------------------------------


def test_non_ascii_credentials_and_a_missing_bearer_prefix_are_401(api: TestClient) -> None:
    for name in ("X-Write-Key", "Authorization"):
        resp = api.post("/v1/events", json=view("n1"), headers={name: "clé".encode()})
        assert resp.status_code == 401, (name, resp.text)
    resp = api.get("/v1/users/c1/profile", headers={"Authorization": ADMIN_KEY})
    assert resp.status_code == 401  # "Bearer " is not optional


JSON_WRITES = [
    ("post", "/v1/events", {"X-Write-Key": SERVER_KEY}),
    ("post", "/v1/identify", {"X-Write-Key": SERVER_KEY}),
    ("put", "/v1/experiments/x1", {"Authorization": f"Bearer {ADMIN_KEY}"}),
    ("patch", "/v1/items/A", {"Authorization": f"Bearer {ADMIN_KEY}"}),
]


@pytest.mark.parametrize(("method", "path", "headers"), JSON_WRITES)
def test_hostile_json_is_a_422_on_every_json_endpoint(
    api: TestClient, method: str, path: str, headers: dict[str, str]
) -> None:
    for body in (b"[" * 100_000, b'{"a":' * 50 + b"1" + b"}" * 50, b"[NaN]", b"[1e999]",
                 b'{"qty": ' + b"9" * 5000 + b"}"):  # fmt: skip
        resp = api.request(method, path, content=body, headers=headers)
        # /v1/identify also speaks the Segment API: 400 or 413 (its 32 KB message limit) there.
        expected = (400, 413, 422) if path == "/v1/identify" else (422,)
        assert resp.status_code in expected, (path, body[:20], resp.text)


def test_bad_numbers_and_ids_are_named(
    api: TestClient, client: redis.Redis, cfg: EngineConfig
) -> None:
    w = {"X-Write-Key": SERVER_KEY}
    huge = api.post("/v1/events", content=b'{"event_id":"q","type":"view","user_id":"c1",'
                    b'"item_id":"A","qty":' + b"7" * 5000 + b"}", headers=w)  # fmt: skip
    assert huge.status_code == 422 and huge.json()["field"] == "body"
    for bad in ("abc\n", "../x", "a:b", "a{b}", "a b", "é", "x" * 65, "anon:x"):
        single = api.post("/v1/events", json=view("i1", user=bad), headers=w)
        assert single.status_code == 422 and single.json()["field"] == "user_id", bad
        item = api.post("/v1/events", json={**view("i2"), "item_id": bad}, headers=w)
        assert item.status_code == 422 and item.json()["field"] == "item_id", bad
    batch = api.post("/v1/events", json=[view("b1"), view("b2", user="abc\n")], headers=w)
    assert batch.status_code == 200  # one bad event is rejected alone, never a 503
    assert [r["status"] for r in batch.json()["results"]] == ["accepted", "rejected"]
    names = [k.decode() for k in client.scan_iter(match=f"{cfg.key_prefix}*")]
    assert names and not any(not n.isprintable() or "../" in n for n in names)


def raw_request(base: str, head: bytes, chunks: Iterator[bytes]) -> tuple[bytes, int]:
    """Send `head`, then chunks until the server answers; (status line, body bytes sent)."""
    host, port = base.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        reply = b""
        for chunk in chunks:
            with contextlib.suppress(BlockingIOError):
                reply += sock.recv(4096)
            if reply:
                break
            try:
                sock.sendall(chunk)
            except (BlockingIOError, BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        sock.setblocking(True)
        deadline = time.monotonic() + 10
        while b"\r\n" not in reply and time.monotonic() < deadline:
            reply += sock.recv(4096)
    return reply.split(b"\r\n", 1)[0], sent


def test_bodies_are_limited_while_streaming(
    redis_url: str, cfg: EngineConfig, tmp_path: Path
) -> None:
    from tests.web_fixtures import serving

    limits = Limits(body_bytes=100_000)
    app = create_app(settings(redis_url, cfg, tmp_path, limits=limits))
    app.state.rec_background = False
    with serving(app) as base:
        head = b"POST /v1/events HTTP/1.1\r\nHost: x\r\nX-Write-Key: sk_server\r\n"
        declared = head + b"Content-Length: 200000000\r\n\r\n"
        status, sent = raw_request(base, declared, iter([b" " * 65536] * 3000))
        assert b" 413 " in status + b" " and sent < 10_000_000
        chunked = head + b"Transfer-Encoding: chunked\r\n\r\n"
        piece = b"10000\r\n" + b" " * 65536 + b"\r\n"
        status, sent = raw_request(base, chunked, iter([piece] * 3000))  # never terminated
        assert b" 413 " in status + b" " and sent < 10_000_000


# -- abuse -----------------------------------------------------------------------------------------


def test_rate_limits_answer_429_with_retry_after(
    redis_url: str, cfg: EngineConfig, tmp_path: Path
) -> None:
    limits = Limits(per_write_key_rps=0.5, per_write_key_burst=3, per_address_rps=0.5,
                    per_address_burst=6)  # fmt: skip
    app = create_app(settings(redis_url, cfg, tmp_path, limits=limits))
    app.state.rec_background = False
    with TestClient(app) as tc:
        w = {"X-Write-Key": SERVER_KEY}
        codes = [tc.post("/v1/events", json=view(f"r{i}"), headers=w).status_code for i in range(4)]
        assert codes == [200, 200, 200, 429]
        limited = tc.post("/v1/events", json=view("r9"), headers=w)
        assert int(limited.headers["retry-after"]) >= 1
        codes = [tc.get("/v1/trending").status_code for _ in range(4)]
        assert codes[-1] == 429 and "retry-after" in tc.get("/v1/trending").headers
        assert tc.get("/health").status_code == 200  # probes are not limited


def test_repeated_bad_admin_keys_are_slowed_down(api: TestClient) -> None:
    wrong = {"Authorization": "Bearer guess"}
    codes = [api.get("/v1/experiments", headers=wrong).status_code for _ in range(6)]
    assert codes[:5] == [401] * 5 and codes[5] == 429
    right = api.get("/v1/experiments", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert right.status_code == 429 and int(right.headers["retry-after"]) >= 1


# -- Redis replies --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "status", "error", "retry"),
    [
        (redis.ConnectionError("refused"), 503, "unavailable", True),
        (redis.TimeoutError("timed out"), 503, "unavailable", True),
        (redis.BusyLoadingError("loading"), 503, "unavailable", True),
        (redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
         503, "redis_out_of_memory", True),
        (redis.exceptions.NoPermissionError("User app has no permissions"), 500,
         "redis_permission", False),
        (redis.ResponseError("Bad simple string value"), 500, "engine_error", False),
    ],
)  # fmt: skip
def test_each_redis_failure_gets_a_truthful_status(
    exc: Exception, status: int, error: str, retry: bool
) -> None:
    request = Request({"type": "http", "app": Starlette(), "method": "GET", "path": "/",
                       "headers": []})  # fmt: skip
    resp = asyncio.run(redis_error(request, exc))
    assert resp.status_code == status
    assert error in bytes(resp.body).decode()
    assert ("retry-after" in resp.headers) is retry


def test_gzip_bodies_are_limited_uncompressed_too(
    redis_url: str, cfg: EngineConfig, tmp_path: Path
) -> None:
    import gzip

    app = create_app(settings(redis_url, cfg, tmp_path, limits=Limits(body_bytes=50_000)))
    app.state.rec_background = False
    w = {"X-Write-Key": SERVER_KEY, "Content-Encoding": "gzip"}
    with TestClient(app) as tc:
        small = gzip.compress(json.dumps(view("gz1")).encode())
        assert tc.post("/v1/events", content=small, headers=w).json()["accepted"] == 1
        bomb = gzip.compress(b"[" + b" " * 10_000_000 + b"]")  # ~10 KB compressed
        resp = tc.post("/v1/events", content=bomb, headers=w)
        assert resp.status_code == 413 and "uncompressed" in resp.json()["detail"]
        assert tc.post("/v1/events", content=b"nope", headers=w).status_code == 422


def test_while_the_breaker_is_open_redis_work_is_refused_at_once(api: TestClient) -> None:
    health = api.app.state.redis_health  # type: ignore[attr-defined]
    health.close()  # no probe closes it again during this test
    health.trip("test: Redis hangs")
    w = {"X-Write-Key": SERVER_KEY}
    for method, path, body in [
        ("POST", "/v1/events", view("br1")),
        ("POST", "/v1/identify", {"user_id": "c1"}),
        ("GET", "/v1/users/c1/profile", None),
        ("GET", "/v1/trending", None),
    ]:
        # Redis itself answers: a 503 here can only come from the open breaker.
        resp = api.request(method, path, json=body, headers=w)
        assert resp.status_code == 503 and resp.headers["retry-after"] == "1", (path, resp.text)
    rec = api.get("/v1/recommendations/c1", headers=w)
    assert rec.status_code == 200 and rec.json()["fallback"] == "popular"


def segment_track(mid: str, user: str | None, tok: str | None = None) -> dict[str, Any]:
    who = {"userId": user} if user else {"anonymousId": ANON}
    context = {"context": {"shopper_token": tok}} if tok else {}
    return {"type": "track", "messageId": mid, "event": "Product Viewed",
            "properties": {"product_id": "A"}, **who, **context}  # fmt: skip


def test_segment_messages_follow_the_same_rules(api: TestClient) -> None:
    basic = {"Authorization": "Basic " + base64.b64encode(f"{PUBLIC}:".encode()).decode()}
    assert api.post("/v1/track", json=segment_track("t1", "c1"), headers=basic).status_code == 403
    other = segment_track("t2", "c1", token("c2"))
    assert api.post("/v1/track", json=other, headers=basic).status_code == 403
    mine = segment_track("t3", "c1", token("c1"))
    assert api.post("/v1/track", json=mine, headers=basic).json()["status"] == "accepted"
    anon = segment_track("t4", None)
    assert api.post("/v1/track", json=anon, headers=basic).status_code == 200
    batch = {"batch": [segment_track("b1", "c1", token("c1")), segment_track("b2", "victim2")]}
    body = api.post("/v1/batch", json=batch, headers=basic).json()
    assert (body["accepted"], body["rejected"]) == (1, 1)
    assert body["errors"][0]["index"] == 1 and body["errors"][0]["error"] == "forbidden"
    alias = {"type": "alias", "messageId": "a1", "userId": "c1", "previousId": "c17850",
             "context": {"shopper_token": token("c1")}}  # fmt: skip
    resp = api.post("/v1/alias", json=alias, headers=basic)
    assert resp.status_code == 403  # a known user's id is no bearer id: only a backend aliases it
    server = {"Authorization": f"Bearer {SERVER_KEY}"}
    assert api.post("/v1/track", json=segment_track("t5", "c9"), headers=server).status_code == 200
    deep = b'{"batch": ' + b"[" * 100_000 + b"]}"
    assert api.post("/v1/batch", content=deep, headers=basic).status_code in (400, 413)
