"""The demo from a fresh clone and on a restart (issue 16, items 3 and 4): keys kept in the
data folder, the model reused when it matches, the sample replayed so that it ends now."""

from __future__ import annotations

import gzip
import os
import stat
import time
from dataclasses import replace
from pathlib import Path

import redis
from starlette.datastructures import Secret
from starlette.testclient import TestClient

from app.api.app import create_app
from app.cli import demo
from app.core import tokens
from app.core.settings import EngineConfig, Settings, load_settings

SAMPLE = load_settings(None).sample_data


def settings_for(tmp_path: Path, cfg: EngineConfig, redis_url: str | None = None) -> Settings:
    return Settings(
        redis_url=redis_url, host="127.0.0.1", port=0, write_keys=frozenset(), admin_key=None,
        data_dir=tmp_path / "var", sample_data=tmp_path / "tail.csv.gz", log_json=False,
        engine=cfg,
    )  # fmt: skip


def test_demo_keys_are_kept_in_the_data_folder_and_reused(
    tmp_path: Path, cfg: EngineConfig
) -> None:
    settings = settings_for(tmp_path, cfg)
    first = demo.demo_keys(settings)
    path = settings.data_dir / demo.KEYS_FILE
    assert path.exists() and stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert first.origin.startswith("generated")
    again = demo.demo_keys(settings)
    assert (again.write_key, again.admin_key) == (first.write_key, first.admin_key)
    assert again.origin.startswith("kept in")
    chosen = replace(settings, write_keys=frozenset({"wk_mine"}), admin_key=Secret("mine"))
    own = demo.demo_keys(chosen)
    assert (own.write_key, own.admin_key) == ("wk_mine", "mine")
    assert (own.server_key, own.identity_secret) == (first.server_key, first.identity_secret)
    # The banner's curls carry the keys that will be served.
    text = demo.banner("http://127.0.0.1:8000", again, "tok")
    assert f"X-Write-Key: {again.write_key}" in text and f"Bearer {again.admin_key}" in text


def real_tail(dst: Path, rows: int = 4000) -> None:
    """The last `rows` rows of the real sample (its newest invoices), same layout."""
    with gzip.open(SAMPLE, "rt", encoding="utf-8") as src:
        lines = src.readlines()
    with gzip.open(dst, "wt", encoding="utf-8") as out:
        out.writelines([lines[0], *lines[-rows:]])


def test_demo_restart_reuses_the_model_and_trending_follows_live_events(
    tmp_path: Path, cfg: EngineConfig, redis_url: str, client: redis.Redis
) -> None:
    settings = settings_for(tmp_path, cfg, redis_url)
    real_tail(settings.sample_data)
    first = demo.prepare(client, settings)
    assert first["model"].startswith("trained")
    shift = int(first["shift_ms"])
    second = demo.prepare(client, settings)
    assert second["model"] == "reused " + first["model"].split()[1]
    assert second["shift_ms"] == str(shift)  # the same timeline on a restart
    assert second["replay"] == "0 accepted"  # nothing replayed twice

    keys = demo.demo_keys(settings)
    served = replace(settings, write_keys=frozenset({keys.write_key}),
                     server_keys=frozenset({keys.server_key}), admin_key=Secret(keys.admin_key),
                     identity_secret=Secret(keys.identity_secret))  # fmt: skip
    token = tokens.mint(keys.identity_secret, "c17850", ttl_s=3600)
    now = int(time.time() * 1000)
    with TestClient(create_app(served)) as api:
        body = api.get("/v1/trending", params={"type": "purchase", "k": 5}).json()
        assert body["items"], body
        assert now - 2 * 3_600_000 <= body["as_of_ms"] <= now + 60_000  # the data ends now
        assert all(it["title"] for it in body["items"])  # trending items carry titles
        live = {"event_id": "demo-live-1", "type": "purchase", "user_id": "c17850",
                "session_id": "s1", "items": [{"item_id": body["items"][0]["item_id"],
                                               "qty": 1, "price": 2.55}],
                "context": {"shopper_token": token}}  # fmt: skip
        posted = api.post("/v1/events", json=live, headers={"X-Write-Key": keys.write_key})
        assert posted.json()["accepted"] == 1
        after = api.get("/v1/trending", params={"type": "purchase", "k": 5}).json()
        assert after["items"], after  # a live event no longer empties trending
        assert after["as_of_ms"] >= body["as_of_ms"]
