"""Warehouse profile sync: the sample is derived from the shipped data, rows become identify
calls through the tracking path, re-runs are duplicates, bad rows are listed, dry runs send
nothing, and the HTTP sender works against a live server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from starlette.datastructures import Secret

from app.api.app import create_app
from app.core.keys import Keys
from app.core.settings import ROOT, EngineConfig, Settings
from app.engine import build_engine
from app.ingest.segment import TrackingConfig
from app.ingest.tracking import TrackingSink
from app.redis import calls
from loaders import profiles
from tests.web_fixtures import serving

SOURCE = ROOT / "data" / "online-retail" / "online-retail-2010-12_2011-09.csv.gz"


def traits_of(client: redis.Redis, cfg: EngineConfig, user: str) -> dict[str, object]:
    prof = calls.user_profile(client, cfg, Keys(cfg.key_prefix), user, 1)
    return dict((prof.profile or {}).get("traits", {}))


@pytest.fixture
def sender(client: redis.Redis, cfg: EngineConfig) -> Iterator[profiles.Sender]:
    engine = build_engine(client, cfg)
    sink = TrackingSink(client, cfg, engine.ingestor, TrackingConfig())
    yield profiles.sink_sender(sink.apply)
    keys = list(client.scan_iter(match=cfg.key_prefix + "*", count=1000))
    for i in range(0, len(keys), 500):
        client.unlink(*keys[i : i + 500])


def test_the_sample_is_derived_from_the_shipped_data(tmp_path: Path) -> None:
    out = tmp_path / "profiles.csv"
    assert profiles.write_sample(SOURCE, out) > 3000
    assert out.read_bytes() == profiles.SAMPLE.read_bytes()  # reproducible, not hand-made
    rows = {r["user_id"]: r for r in profiles.sample_rows(SOURCE)}
    tiers = [r["tier"] for r in rows.values()]
    assert tiers.count("gold") == pytest.approx(len(tiers) * 0.1, abs=1)
    assert rows["c17850"]["country"] == "United Kingdom"


def test_sync_sample_then_rerun_is_all_duplicates(
    client: redis.Redis, cfg: EngineConfig, sender: profiles.Sender
) -> None:
    mapping = profiles.ColumnMap("user_id", {"tier": "tier", "country": "country",
                                            "price_band": "price_band"})  # fmt: skip
    first = profiles.sync(profiles.SAMPLE, mapping, sender, batch_size=1000)
    assert first.read > 3000 and first.accepted == first.read and not first.rejected
    assert traits_of(client, cfg, "c14911") == {"tier": "gold", "country": "EIRE",
                                                "price_band": "2-5"}  # fmt: skip
    again = profiles.sync(profiles.SAMPLE, mapping, sender, batch_size=1000)
    assert (again.accepted, again.duplicates) == (0, first.read)


def test_bad_rows_are_listed_and_dry_run_sends_nothing(
    tmp_path: Path, client: redis.Redis, cfg: EngineConfig, sender: profiles.Sender
) -> None:
    rows = [
        {"id": "u-1", "tier": "gold", "spend": 10.5},
        {"id": "", "tier": "gold"},
        {"id": "bad id with spaces", "tier": "x"},
        {"id": "u-2", "tier": "y" * 300},
    ]
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n{not json\n")
    mapping = profiles.ColumnMap("id", None)
    dry = profiles.sync(path, mapping, None)
    assert (dry.read, dry.accepted) == (5, 1) and dry.dry_run
    assert traits_of(client, cfg, "u-1") == {}  # nothing sent
    report = profiles.sync(path, mapping, sender)
    assert report.accepted == 1
    reasons = dict(report.rejected)
    assert set(reasons) == {2, 3, 4, 5}
    assert "id: is empty" in reasons[2] and "userId" in reasons[3]
    assert "traits.tier" in reasons[4] and "not JSON" in reasons[5]
    assert traits_of(client, cfg, "u-1") == {"tier": "gold", "spend": 10.5}
    assert "line 4: traits.tier" in report.summary()


def test_mapping_yaml_and_csv_types(tmp_path: Path) -> None:
    (tmp_path / "m.yaml").write_text("id_column: customer\ntraits:\n  membership: tier\n")
    mapping = profiles.load_mapping(tmp_path / "m.yaml")
    msg = profiles.row_message({"customer": "c1", "tier": "gold", "x": "1"}, mapping, "t")
    assert msg["userId"] == "c1" and msg["traits"] == {"membership": "gold"}
    assert profiles.typed("12") == 12 and profiles.typed("2.5") == 2.5
    assert profiles.typed("TRUE") is True and profiles.typed("") is None
    assert profiles.typed("NaN") == "NaN" and profiles.typed("c17850") == "c17850"
    same = profiles.row_message({"customer": "c1", "tier": "gold"}, mapping, "later")
    assert same["messageId"] == msg["messageId"]  # content hash: same row, same id
    with pytest.raises(Exception, match="Parquet"):
        profiles.file_format(Path("t.parquet"), None)


def test_http_sender_against_a_live_server(
    redis_url: str, client: redis.Redis, cfg: EngineConfig, tmp_path: Path
) -> None:
    settings = Settings(
        redis_url=redis_url, host="127.0.0.1", port=0, write_keys=frozenset(),
        admin_key=Secret("s3cret-admin"), data_dir=tmp_path, sample_data=tmp_path / "none",
        log_json=False, engine=cfg, server_keys=frozenset({"wk_test"}),  # a backend job's key
    )  # fmt: skip
    path = tmp_path / "p.csv"
    path.write_text("user_id,tier,orders\nh-1,gold,3\nh-2,silver,\n")
    with serving(create_app(settings)) as url:
        report = profiles.sync(path, profiles.ColumnMap(), profiles.http_sender(url, "wk_test"))
        assert (report.accepted, report.rejected) == (2, [])
        again = profiles.sync(path, profiles.ColumnMap(), profiles.http_sender(url, "wk_test"))
        assert again.duplicates == 2
        with pytest.raises(Exception, match="401"):
            profiles.sync(path, profiles.ColumnMap(), profiles.http_sender(url, "wrong"))
    assert traits_of(client, cfg, "h-1") == {"tier": "gold", "orders": 3}
    assert traits_of(client, cfg, "h-2") == {"tier": "silver"}
