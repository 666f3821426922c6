"""Feature serving over HTTP, and the training-table export (CSV), end to end."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from starlette.datastructures import Secret
from starlette.testclient import TestClient

from app.api.app import create_app
from app.api.features import feature_routes
from app.core.events import Event, parse_event
from app.core.keys import Keys
from app.core.settings import EngineConfig, Settings
from app.engine import build_engine
from app.features.offline import events_from_log
from app.features.online import (
    get_features,
)
from app.features.spec import (
    DAY_MS,
    HOUR_MS,
    FeatureSet,
    load_feature_set,
)
from loaders import export_features

ADMIN = {"Authorization": "Bearer s3cret-admin"}
T0 = 1_700_000_000_000 - 1_700_000_000_000 % DAY_MS
FAR = 2_000_000_000_000


@pytest.fixture(scope="module")
def fs() -> FeatureSet:
    # The shipped definitions; a 3-day history so past rows can be read back online too.
    return load_feature_set(history_ms=3 * DAY_MS)


def events() -> list[Event]:
    raw: list[dict[str, Any]] = []
    for i in range(40):
        user = f"u{i % 4}"
        raw.append({"event_id": f"v{i}", "type": "view", "user_id": user, "item_id": f"I{i % 5}",
                    "ts": T0 + i * 7 * 60_000, "props": {"category": f"c{i % 2}"}})  # fmt: skip
        if i % 3 == 0:
            raw.append({"event_id": f"p{i}", "type": "purchase", "user_id": user,
                        "ts": T0 + i * 7 * 60_000 + 30_000,
                        "items": [{"item_id": f"I{i % 5}", "qty": 1 + i % 2, "price": 1.25,
                                   "category": f"c{i % 2}"}]})  # fmt: skip
    return [parse_event(obj, now_ms=FAR) for obj in raw]


@pytest.fixture
def api(
    redis_url: str, cfg: EngineConfig, fs: FeatureSet, client: redis.Redis, tmp_path: Path
) -> Iterator[TestClient]:
    engine = build_engine(client, cfg, features=fs)
    engine.ingestor.ingest(events())
    engine.drain()
    settings = Settings(
        redis_url=redis_url, host="127.0.0.1", port=0, server_keys=frozenset({"wk"}),
        write_keys=frozenset(), admin_key=Secret("s3cret-admin"),
        data_dir=tmp_path, sample_data=tmp_path / "none",
        log_json=False, engine=cfg,
    )  # fmt: skip
    app = create_app(settings)
    app.router.routes.extend(feature_routes())
    app.state.feature_set = fs
    with TestClient(app) as tc:
        yield tc


def test_feature_values_need_the_admin_key(api: TestClient) -> None:
    assert api.get("/v1/features/user/u1").status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert api.get("/v1/features/user/u1", headers=wrong).status_code == 401
    assert api.post("/v1/features/user", json={"ids": ["u1"]}).status_code == 401
    assert api.get("/v1/features").status_code == 200  # definitions only: public


def test_get_one_entity(api: TestClient, client: redis.Redis, keys: Keys, fs: FeatureSet) -> None:
    as_of = T0 + 6 * HOUR_MS
    resp = api.get(f"/v1/features/user/u1?as_of={as_of}", headers=ADMIN)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["entity_type"] == "user" and body["id"] == "u1" and body["as_of_ms"] == as_of
    assert set(body["features"]) == set(fs.names("user"))
    (row,) = get_features(client, fs, keys, "user", ["u1"], as_of=as_of)
    assert body["features"] == row.values
    assert body["features"]["user_views_24h"] == 10
    some = api.get(f"/v1/features/user/u1?names=user_views_24h,user_spend_30d&as_of={as_of}",
                   headers=ADMIN).json()  # fmt: skip
    assert list(some["features"]) == ["user_views_24h", "user_spend_30d"]


def test_user_category_and_latest(api: TestClient) -> None:
    resp = api.get("/v1/features/user_category/u1~c1?as_of=latest", headers=ADMIN)
    assert resp.status_code == 200, resp.text
    assert resp.json()["features"]["user_category_views_7d"] >= 0
    now = api.get("/v1/features/item/I1", headers=ADMIN).json()
    assert now["features"]["item_views_1h"] == 0  # 2023 events, read as of now


def test_batch(api: TestClient) -> None:
    as_of = T0 + 6 * HOUR_MS
    ids = [f"I{i}" for i in range(5)] + ["I404"]
    resp = api.post("/v1/features/item", headers=ADMIN,
                    json={"ids": ids, "names": ["item_views_24h"], "as_of": as_of})  # fmt: skip
    assert resp.status_code == 200, resp.text
    rows = resp.json()["rows"]
    assert [r["id"] for r in rows] == ids
    assert [r["features"]["item_views_24h"] for r in rows] == [8, 8, 8, 8, 8, 0]


@pytest.mark.parametrize(
    ("method", "path", "body", "field"),
    [
        ("GET", "/v1/features/shop/u1", None, "entity_type"),
        ("GET", "/v1/features/user/u1?names=nope", None, "names"),
        ("GET", "/v1/features/user/u1?names=item_views_1h", None, "names"),
        ("GET", "/v1/features/user/u%20x", None, "id"),
        ("GET", "/v1/features/user_category/u1", None, "id"),
        ("GET", "/v1/features/user/u1?as_of=yesterday", None, "as_of"),
        ("POST", "/v1/features/user", {"ids": []}, "ids"),
        ("POST", "/v1/features/user", {"ids": ["u1"] * 501}, "ids"),
        ("POST", "/v1/features/user", {"ids": ["u1"], "names": "x,,y"}, "names"),
        ("POST", "/v1/features/user", [1], "body"),
    ],
)
def test_invalid_requests_are_422(
    api: TestClient, method: str, path: str, body: Any, field: str
) -> None:
    resp = api.request(method, path, headers=ADMIN, json=body)
    assert resp.status_code == 422, resp.text
    assert resp.json()["field"] == field


def test_definitions_endpoint(api: TestClient, fs: FeatureSet) -> None:
    body = api.get("/v1/features").json()
    assert body["version"] == fs.version
    views = next(f for f in body["features"] if f["name"] == "user_views_7d")
    assert views["granularity"] == "rolling 7d at 1h buckets, event time, UTC"


def test_export_from_the_log_equals_online_values(
    api: TestClient, client: redis.Redis, keys: Keys, fs: FeatureSet, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch, redis_url: str,
) -> None:  # fmt: skip
    """The training table built from the log matches what the online path serves as of each
    row's time: the export and the serving path agree (and only earlier events count)."""
    times = [T0 + 30 * 60_000, T0 + 3 * HOUR_MS + 17, T0 + 5 * HOUR_MS, T0 + 2 * DAY_MS]
    rows_csv = tmp_path / "rows.csv"
    with rows_csv.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["entity_id", "ts", "label"])
        for i, t in enumerate(times):
            w.writerow([f"u{i % 4}", t, i % 2])
        w.writerow(["u1", "2023-11-14T04:00:00Z", 1])
    out = tmp_path / "train.csv"
    monkeypatch.setenv("RETAIL_KEY_PREFIX", keys.prefix)
    code = export_features.main(
        ["--rows", str(rows_csv), "--out", str(out), "--redis-url", redis_url]
    )
    assert code == 0
    with out.open(newline="") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 5 and table[-1]["ts"] == str(T0 + 4 * HOUR_MS)
    for rec in table:
        (online,) = get_features(client, fs, keys, "user", [rec["entity_id"]], as_of=int(rec["ts"]))
        for name, value in online.values.items():
            expected = (
                "" if value is None else repr(value) if isinstance(value, float) else str(value)
            )
            if fs.features[name].agg == "decayed_sum" and value is not None:
                assert float(rec[name]) == pytest.approx(value, rel=1e-9)
            else:
                assert rec[name] == expected, (name, rec)

    # The same table from an archived JSONL dump of the log.
    dump = tmp_path / "events.jsonl"
    assert export_features.main(["--dump-log", str(dump), "--redis-url", redis_url]) == 0
    assert len(dump.read_text().splitlines()) == len(list(events_from_log(client, keys)))
    out2 = tmp_path / "train2.csv"
    assert export_features.main(["--rows", str(rows_csv), "--out", str(out2),
                                 "--events", str(dump)]) == 0  # fmt: skip
    assert out2.read_text() == out.read_text()


def test_export_rejects_bad_rows(tmp_path: Path) -> None:
    rows = tmp_path / "rows.csv"
    rows.write_text("entity_id,ts\nu1,not-a-time\n")
    events_file = tmp_path / "e.jsonl"
    events_file.write_text(json.dumps({"event_id": "x"}) + "\n")
    code = export_features.main(["--rows", str(rows), "--out", str(tmp_path / "o.csv"),
                                 "--events", str(events_file)])  # fmt: skip
    assert code == 1
