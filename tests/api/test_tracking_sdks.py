"""The real Segment and RudderStack Python SDKs, unchanged, against a live server.

Each SDK is pointed at the engine (its `host` / data plane URL) and sends page, track,
identify and alias calls through its own queue, batching, gzip and retry code. The first batch
is processed but its reply is replaced by a 503 (a reply lost on the way back): the SDK retries
it, and messageId dedup keeps the retry from counting anything twice. The test then checks that
the shopper's session, profile and recommendations moved.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.recs_fixtures import World, recs_app, world_fixture
from tests.web_fixtures import serving

BACKEND = {"X-Write-Key": "wk_test"}  # recs_app's server key

ADMIN = {"Authorization": "Bearer s3cret-admin"}

world = world_fixture("tsdk")


class LoseFirstBatchReply:
    """ASGI wrapper: the first POST /v1/batch is handled, then answered 503 instead."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.lost = 0
        self.batches = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/v1/batch":
            await self.app(scope, receive, send)
            return
        self.batches += 1
        if self.lost:
            await self.app(scope, receive, send)
            return
        self.lost += 1

        async def swallow(message: Message) -> None:
            pass

        await self.app(scope, receive, swallow)
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send(
            {
                "type": "http.response.body",
                "body": b'{"success": false, "code": "unavailable", "message": "retry"}',
            }
        )


@pytest.fixture
def live(redis_url: str, world: World, tmp_path: Path) -> Iterator[tuple[str, LoseFirstBatchReply]]:
    app = LoseFirstBatchReply(recs_app(redis_url, world, tmp_path))
    with serving(app) as url:  # type: ignore[arg-type]
        yield url, app


def segment_client(url: str) -> Any:
    from segment.analytics import Client

    return Client(write_key="wk_test", host=url, gzip=True, max_retries=5, upload_interval=0.1)


def rudder_client(url: str) -> Any:
    from rudderstack.analytics import Client

    return Client(write_key="wk_test", host=url, max_retries=5, upload_interval=0.1)


@pytest.mark.parametrize("make_client", [segment_client, rudder_client], ids=["segment", "rudder"])
def test_sdk_moves_session_profile_and_recommendations(
    live: tuple[str, LoseFirstBatchReply], make_client: Callable[[str], Any]
) -> None:
    url, wrapper = live
    tag = make_client.__name__.split("_")[0]
    user, visitor, old = f"{tag}-shopper", f"{tag}-visitor", f"{tag}-old-device"
    # Read as the shop's backend does (server key); a browser would send the shopper's token.
    before = requests.get(f"{url}/v1/recommendations/{user}", params={"k": 4}, headers=BACKEND,
                          timeout=10).json()  # fmt: skip
    assert before["tier"] != "content_based"  # nothing known about this shopper yet

    errors: list[Any] = []
    sdk = make_client(url)
    sdk.on_error = lambda exc, batch: errors.append(exc)
    sdk.page(anonymous_id=visitor, name="Home", properties={"path": "/"})
    sdk.track(
        anonymous_id=visitor,
        event="Product Viewed",
        properties={"product_id": "K1", "price": 12.75, "category": "kitchen"},
    )
    sdk.flush()  # the first batch: processed, its reply lost, retried by the SDK
    sdk.identify(
        user_id=user,
        anonymous_id=visitor,
        traits={"membership": "gold", "income_bracket": "50-75k"},
    )
    sdk.track(
        user_id=user,
        anonymous_id=visitor,
        event="Product Added",
        properties={"product_id": "K2", "price": 2.95, "quantity": 2},
    )
    sdk.track(anonymous_id=old, event="Product Viewed", properties={"product_id": "L1"})
    sdk.alias(previous_id=old, user_id=user)
    sdk.flush()
    sdk.shutdown()
    assert not errors, errors
    assert wrapper.lost == 1 and wrapper.batches >= 3  # the lost reply was retried

    profile = requests.get(f"{url}/v1/users/{user}/profile", headers=ADMIN, timeout=10).json()
    assert profile["traits"] == {"membership": "gold", "income_bracket": "50-75k"}
    assert set(profile["merged_anonymous_ids"]) == {f"anon:{visitor}", f"anon:{old}"}
    session = profile["session"]
    assert {r["item"] for r in session["recent"]} == {"K1", "K2", "L1"}
    assert list(session["cart"]) == ["K2"]
    # The retried first batch counted once.
    assert session["counters"]["view"] == 2 and session["counters"]["add_to_cart"] == 1

    deadline = time.monotonic() + 10
    while True:
        after = requests.get(f"{url}/v1/recommendations/{user}", params={"k": 4}, headers=BACKEND,
                             timeout=10).json()  # fmt: skip
        if after["tier"] == "content_based" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert after["tier"] == "content_based", after
    items = [it["item_id"] for it in after["items"]]
    assert items != [it["item_id"] for it in before["items"]]
    assert "K2" not in items  # in the cart: not recommended again
