"""Real invoice sizes are accepted as one purchase (issue 16, item 8)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from starlette.datastructures import Secret
from starlette.testclient import TestClient

from app.api.app import create_app
from app.core.events import MAX_ITEMS
from app.core.keys import Keys
from app.core.settings import EngineConfig, Settings, load_settings
from loaders import online_retail

WRITE = {"X-Write-Key": "wk_test"}


@pytest.fixture
def api(redis_url: str, cfg: EngineConfig, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(
        redis_url=redis_url, host="127.0.0.1", port=0, write_keys=frozenset(),
        server_keys=frozenset({"wk_test"}),
        admin_key=Secret("s3cret-admin"), data_dir=tmp_path, sample_data=tmp_path / "none",
        log_json=False, engine=cfg,
    )  # fmt: skip
    with TestClient(create_app(settings)) as client:
        yield client


def largest_invoice() -> list[dict[str, Any]]:
    """The lines of the data's largest invoice (420 lines in the shipped sample)."""
    path = load_settings(None).sample_data
    events, _ = online_retail.purchase_events(path)
    by_invoice: dict[str, list[dict[str, Any]]] = defaultdict(list)
    try:
        for ev in events:
            by_invoice[ev["session_id"]].append(ev["items"][0])
    finally:
        events.close()
    return max(by_invoice.values(), key=len)


def test_the_largest_real_invoice_is_one_purchase(
    api: TestClient, client: redis.Redis, keys: Keys
) -> None:
    lines = largest_invoice()
    assert len(lines) > 200  # what the old cap refused
    items = [{"item_id": ln["item_id"], "qty": ln["qty"], "price": ln["price"]} for ln in lines]
    event = {"event_id": "big-1", "type": "purchase", "user_id": "c-big", "session_id": "s",
             "items": items, "ts": int(time.time() * 1000)}  # fmt: skip
    resp = api.post("/v1/events", json=event, headers=WRITE)
    assert resp.status_code == 200, resp.text
    assert resp.json()["accepted"] == 1
    session = client.json().get(keys.user("c-big", "session"))
    assert session["counters"]["purchase"] >= 1


def test_the_line_limit_is_stated_and_holds_end_to_end(api: TestClient) -> None:
    now = int(time.time() * 1000)
    lines = [{"item_id": f"L{i}", "qty": 1, "price": 1.0} for i in range(MAX_ITEMS + 1)]
    event = {"event_id": "too-big", "type": "purchase", "user_id": "c-x", "session_id": "s",
             "items": lines, "ts": now}  # fmt: skip
    resp = api.post("/v1/events", json=event, headers=WRITE)
    assert resp.status_code == 422
    assert resp.json()["detail"] == f"at most {MAX_ITEMS} lines per purchase"
    # Exactly at the limit the whole path (every Function's argument handling) still works.
    event["event_id"], event["items"] = "at-limit", lines[:MAX_ITEMS]
    assert api.post("/v1/events", json=event, headers=WRITE).json()["accepted"] == 1
