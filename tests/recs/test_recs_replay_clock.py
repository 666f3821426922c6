"""A replay of history through the HTTP API scores what bench/evaluate.py scores (issue 16,
item 5): with `as_of` (admin) the recommendation is computed at the event time, so the
new-arrival boost, peer and session recency behave as they did then.

Real data: the model is trained before 2011-07-01; a seeded sample of returning customers'
purchases is replayed, training period through the engine, test period through POST
/v1/events; before each test invoice the same `home` list is asked of the API (as_of = the
invoice time) and of the Recommender exactly as bench/evaluate.py asks it.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import redis
from starlette.datastructures import Secret
from starlette.testclient import TestClient

from app.api.app import create_app
from app.catalog.index import CatalogConfig, CatalogKeys
from app.catalog.vectorizers import get_vectorizer
from app.core.events import parse_event
from app.core.settings import EngineConfig, Settings, load_settings
from app.engine import build_engine
from app.recs.config import RecConfig
from app.recs.experiments import DEFAULT
from app.recs.lists import RecRequest
from app.recs.recommender import Recommender
from loaders.catalog import load_rows, online_retail_rows
from loaders.train import train_online_retail
from tests.recs.test_recs_purchased import SPLIT_MS, invoices_by_user

SAMPLE = load_settings(None).sample_data
ADMIN = {"Authorization": "Bearer s3cret-admin"}
WRITE = {"X-Write-Key": "wk_test"}


def hit(ranked: list[str], targets: set[str]) -> float:
    return 1.0 if set(ranked[:10]) & targets else 0.0


def test_api_replay_with_as_of_reproduces_the_offline_evaluation(
    client: redis.Redis, cfg: EngineConfig, redis_url: str, tmp_path: Path
) -> None:
    per_user = invoices_by_user()
    returning = sorted(
        u for u, invs in per_user.items()
        if any(i[0]["ts"] < SPLIT_MS for i in invs) and any(i[0]["ts"] >= SPLIT_MS for i in invs)
    )  # fmt: skip
    users = set(random.Random(5).sample(returning, 40))
    prefix = cfg.key_prefix
    rows, _ = online_retail_rows(SAMPLE)
    rows = [replace(r, record=replace(r.record, stock=100, stock_mode="set"))
            for r in rows if r.record is not None]  # fmt: skip
    load_rows(client, CatalogConfig(key_prefix=prefix), CatalogKeys(prefix), rows,
              get_vectorizer(), source="online-retail")  # fmt: skip
    train_online_retail(client, cfg, SAMPLE, until_ms=SPLIT_MS, content=False)
    rcfg = RecConfig(key_prefix=prefix)
    offline = Recommender(client, cfg, rcfg)  # as bench/evaluate.py builds it
    ingestor = build_engine(client, cfg, rec_config=rcfg, experiments=offline.experiments).ingestor
    invoices = sorted((inv for u in users for inv in per_user[u]), key=lambda i: i[0]["ts"])
    now = int(time.time() * 1000)
    for inv in (i for i in invoices if i[0]["ts"] < SPLIT_MS):
        ingestor.ingest([parse_event(ev, now_ms=now) for ev in inv])
    offline.refresh()

    settings = Settings(
        redis_url=redis_url, host="127.0.0.1", port=0, write_keys=frozenset(),
        server_keys=frozenset({"wk_test"}),
        admin_key=Secret("s3cret-admin"), data_dir=tmp_path, sample_data=SAMPLE,
        log_json=False, engine=cfg,
    )  # fmt: skip
    app = create_app(settings)
    app.state.rec_config = rcfg
    app.state.rec_background = False
    bought: dict[str, set[str]] = defaultdict(set)
    for inv in (i for i in invoices if i[0]["ts"] < SPLIT_MS):
        bought[inv[0]["user_id"]].update(ev["items"][0]["item_id"] for ev in inv)
    api_hits: list[float] = []
    offline_hits: list[float] = []
    same = 0
    with TestClient(app) as api:
        url = f"/v1/recommendations/{invoices[0][0]['user_id']}"
        # Admin only: without credentials (403: a personal read) and with a server key (401).
        assert api.get(url, params={"as_of": SPLIT_MS}).status_code == 403
        server = {"Authorization": "Bearer wk_test"}
        assert api.get(url, params={"as_of": SPLIT_MS}, headers=server).status_code == 401
        assert api.get(url, params={"as_of": "soon"}, headers=ADMIN).status_code == 422
        for inv in (i for i in invoices if i[0]["ts"] >= SPLIT_MS):
            user, ts = inv[0]["user_id"], inv[0]["ts"]
            items = {ev["items"][0]["item_id"] for ev in inv}
            new = items - bought[user]
            if new:
                body = api.get(f"/v1/recommendations/{user}", headers=ADMIN,
                               params={"k": 10, "as_of": ts}).json()  # fmt: skip
                assert body["as_of_ms"] == ts and body["source"] == "inline", body
                via_api = [it["item_id"] for it in body["items"]]
                lst = offline.compute(RecRequest(user, "home", None, 10, now_ms=ts), DEFAULT)
                via_offline = [it.item_id for it in lst.items]
                same += via_api == via_offline
                api_hits.append(hit(via_api, new))
                offline_hits.append(hit(via_offline, new))
            resp = api.post("/v1/events", json={"events": inv}, headers=WRITE)
            assert resp.json()["accepted"] == len(inv), resp.text
            bought[user] |= items
    offline.close()
    n = len(api_hits)
    assert n >= 60
    hr_api, hr_offline = sum(api_hits) / n, sum(offline_hits) / n
    # The same computation on the same state: the same lists, so the same figure.
    assert same >= 0.95 * n, f"{same} of {n} lists identical"
    assert abs(hr_api - hr_offline) <= 0.02, (hr_api, hr_offline)
    assert hr_offline > 0.1  # a real figure, not an empty one
    print(
        f"as_of replay: {n} queries, {same} identical lists, HR@10 API {hr_api:.4f} "
        f"offline {hr_offline:.4f}"
    )
