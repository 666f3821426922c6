"""Replay of real Online Retail purchases into a real Redis Stack (first ~3000 lines)."""

from __future__ import annotations

import csv
import gzip
import io
import re
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from app.core.events import Event
from app.core.keys import Keys
from app.core.settings import EngineConfig
from app.engine import build_engine
from app.ingest.ingestor import IngestReport
from app.ingest.log import log_length
from app.ingest.sessions import session_view
from app.redis import calls
from loaders import online_retail as orl
from loaders import replay as rp

SAMPLE = (
    Path(__file__).resolve().parents[2]
    / "data"
    / "online-retail"
    / "online-retail-2010-12_2011-09.csv.gz"
)
HEAD_LINES = 3000  # header + 2999 rows
CUSTOMER = "17850"  # the first customer of the file


@dataclass(frozen=True)
class Expected:
    """What the truncated file should produce, computed here without the loader's code."""

    events: int
    items_of: dict[str, set[str]]  # customer -> stock codes bought (valid lines)
    last_invoices: dict[str, set[str]]  # customer -> invoice(s) at their latest time
    newest_ms: int  # time of the newest event (the trending watermark)


@pytest.fixture(scope="module")
def head_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("replay") / "head.csv.gz"
    with gzip.open(SAMPLE, "rt", encoding="utf-8", newline="") as src:
        lines = [next(src) for _ in range(HEAD_LINES)]
    with gzip.open(path, "wt", encoding="utf-8", newline="") as dst:
        dst.writelines(lines)
    return path


@pytest.fixture(scope="module")
def expected(head_file: Path) -> Expected:
    with gzip.open(head_file, "rt", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    seen: set[tuple[str, ...]] = set()
    items_of: dict[str, set[str]] = defaultdict(set)
    dates_of: dict[str, dict[str, str]] = defaultdict(dict)
    events = 0
    for r in rows:
        code = r["StockCode"].strip().upper()
        if (
            r["InvoiceNo"].startswith("C")
            or not re.fullmatch(r"\d{5}[A-Z]{0,2}", code)
            or code in {"22016", "23444", "23574"}  # voucher, carriage, packing
            or not r["CustomerID"]
            or int(r["Quantity"]) <= 0
            or float(r["UnitPrice"]) <= 0
        ):
            continue
        key = (r["InvoiceNo"], code, " ".join(r["Description"].split()), r["Quantity"],
               r["UnitPrice"], r["CustomerID"], r["InvoiceDate"])  # fmt: skip
        if key in seen:
            continue
        seen.add(key)
        events += 1
        customer = r["CustomerID"].removesuffix(".0")
        items_of[customer].add(code)
        dates_of[customer][r["InvoiceNo"]] = r["InvoiceDate"]
    last = {}
    for customer, invoices in dates_of.items():
        latest = max(invoices.values())
        last[customer] = {inv for inv, d in invoices.items() if d == latest}
    newest = max(d for invoices in dates_of.values() for d in invoices.values())
    newest_ms = int(datetime.fromisoformat(newest).replace(tzinfo=UTC).timestamp()) * 1000
    return Expected(events, dict(items_of), last, newest_ms)


def test_expected_is_not_trivial(expected: Expected) -> None:
    assert expected.events > 1_500
    assert len(expected.items_of[CUSTOMER]) > 5


def test_replay_then_rerun_is_all_duplicates(
    client: redis.Redis, cfg: EngineConfig, keys: Keys, head_file: Path, expected: Expected
) -> None:
    first = rp.replay(client, cfg, head_file, batch_size=500, progress=False)
    assert first.total == first.read == first.sent == expected.events
    assert first.accepted == expected.events
    assert first.duplicates == 0 and not first.invalid
    assert first.batches == -(-expected.events // 500)
    assert first.skipped.kept == expected.events
    assert first.skipped.kept + first.skipped.skipped == HEAD_LINES - 1
    assert first.logged == expected.events
    assert first.aggregated == expected.events  # the replay applied its aggregates as it went
    assert log_length(client, keys) == expected.events
    marks = [int(v) for v in client.mget(keys.watermarks) if v is not None]
    assert marks and max(marks) == expected.newest_ms
    # Lines of one invoice are co-bought: some item has co-bought neighbours.
    assert any(client.scan_iter(match=f"{cfg.key_prefix}i:*:co:b", count=1000))

    # Without the checkpoint, the per-event dedup alone makes the re-run a no-op.
    second = rp.replay(client, cfg, head_file, batch_size=500, progress=False, resume=False)
    assert second.sent == expected.events
    assert second.accepted == 0 and second.duplicates == expected.events
    assert log_length(client, keys) == expected.events  # nothing logged twice
    assert "duplicates" in second.summary()


def test_customer_state_after_replay(
    client: redis.Redis, cfg: EngineConfig, keys: Keys, head_file: Path, expected: Expected
) -> None:
    rp.replay(client, cfg, head_file, progress=False)
    user = orl.user_id_for(CUSTOMER)
    for part in ("session", "dedup", "aff", "seen"):
        assert client.exists(keys.user(user, part)) == 1, part

    profile = calls.user_profile(client, cfg, keys, user)
    assert profile.session is not None
    session = session_view(profile.session, cfg)
    last = {f"inv-{inv}" for inv in expected.last_invoices[CUSTOMER]}
    assert session["session_id"] in last
    purchased = {entry["item"] for entry in session["purchased"]}
    assert purchased <= expected.items_of[CUSTOMER] and purchased

    # Affinities: exactly the derived categories of what the customer bought, plus price bands.
    catalog, _ = orl.build_catalog(head_file)
    categories = {catalog[code].category for code in expected.items_of[CUSTOMER]}
    members = {m.decode() for m in client.zrange(keys.user(user, "aff"), 0, -1)}
    assert {m.removeprefix("cat:") for m in members if m.startswith("cat:")} == categories
    assert any(m.startswith("price:") for m in members)
    for code in expected.items_of[CUSTOMER]:
        assert client.execute_command("BF.EXISTS", keys.user(user, "seen"), code) == 1


def test_limit_stops_early(
    client: redis.Redis, cfg: EngineConfig, keys: Keys, head_file: Path
) -> None:
    report = rp.replay(client, cfg, head_file, limit=120, batch_size=50, progress=False)
    assert (report.total, report.read, report.sent, report.accepted) == (120, 120, 120, 120)
    assert report.batches == 3
    assert report.skipped.kept == 120
    assert log_length(client, keys) == 120
    nothing = rp.replay(client, cfg, head_file, limit=0, progress=False)
    assert (nothing.total, nothing.sent, nothing.batches) == (0, 0, 0)


def test_invalid_events_are_counted_not_sent(
    client: redis.Redis, cfg: EngineConfig, keys: Keys, tmp_path: Path
) -> None:
    path = tmp_path / "dates.csv"
    path.write_text(
        ",".join(orl.COLUMNS) + "\n"
        "1,22139,TEA SET,1,1999-12-31 10:00:00,4.25,12346.0,UK\n"  # before 2000: ts refused
        "2,22139,TEA SET,1,2011-01-01 10:00:00,4.25,12346.0,UK\n"
    )
    report = rp.replay(client, cfg, path, progress=False)
    assert report.invalid == {"ts": 1}
    assert (report.read, report.sent, report.accepted) == (2, 1, 1)
    assert "rejected by validation: ts 1" in report.summary()


def test_progress_output(client: redis.Redis, cfg: EngineConfig, head_file: Path) -> None:
    out = io.StringIO()  # not a TTY: plain lines, no carriage returns
    rp.replay(client, cfg, head_file, limit=300, batch_size=100, stream=out)
    text = out.getvalue()
    assert "\r" not in text
    assert text.splitlines()[-1].startswith("[" + "#" * rp.BAR_WIDTH + "] 300/300 events 100.0%")
    assert "ev/s" in text and "ETA" in text


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_on_a_terminal() -> None:
    tty = FakeTTY()
    bar = rp.Progress(1000, tty)
    bar.update(250)
    bar.update(260)  # within the redraw interval: not drawn
    bar.finish(1000)
    text = tty.getvalue()
    assert text.count("\r") == 2 and text.endswith("\n")
    assert " 250/1,000 events  25.0%" in text and "1,000/1,000 events 100.0%" in text
    quiet = FakeTTY()
    off = rp.Progress(10, quiet, enabled=False)
    off.update(5)
    off.finish(10)
    assert quiet.getvalue() == ""


def test_main_without_redis_exits_2(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("REDIS_URL", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env here
    assert rp.main(["--limit", "5"]) == 2
    assert "--redis-url" in capsys.readouterr().err


def test_main_replays(
    monkeypatch: pytest.MonkeyPatch,
    redis_url: str,
    prefix: str,
    client: redis.Redis,
    keys: Keys,
    head_file: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RETAIL_KEY_PREFIX", prefix)  # the CLI reads its config from the env
    argv = ["--redis-url", redis_url, "--path", str(head_file), "--limit", "40", "--no-progress"]
    assert rp.main(argv) == 0
    out = capsys.readouterr()
    assert "accepted 40, duplicates 0" in out.out and out.err == ""
    assert log_length(client, keys) == 40
    assert rp.main([*argv[:2], "--path", str(tmp_path / "missing.csv")]) == 2


def gap_file(tmp_path: Path) -> Path:
    """Two customers' purchases on Jan 1-2, then c1's on Jan 13: 11 days, beyond the 8-day raw
    series retention, so the replay cuts a batch before the Jan 13 event."""
    path = tmp_path / "gap.csv"
    path.write_text(
        ",".join(orl.COLUMNS) + "\n"
        "1,85123A,WHITE HANGING HEART T-LIGHT HOLDER,1,2011-01-01 10:00:00,2.55,1.0,UK\n"
        "2,22139,RETROSPOT TEA SET CERAMIC 11 PC,1,2011-01-02 10:00:00,4.95,2.0,UK\n"
        "3,22139,RETROSPOT TEA SET CERAMIC 11 PC,1,2011-01-13 10:00:00,4.95,1.0,UK\n"
    )
    return path


def test_batches_never_span_more_than_half_the_series_retention(
    client: redis.Redis, cfg: EngineConfig, keys: Keys, tmp_path: Path
) -> None:
    # The Ingestor applies a batch's aggregates user by user: here c1's 2011-01-13 purchase of
    # 22139 would reach the item's minute series before c2's 2011-01-02 one, 11 days older,
    # beyond the series' 8-day retention (RedisTimeSeries refuses it). The replay therefore
    # cuts batches at half the retention: c1's late purchase goes in a second batch.
    path = gap_file(tmp_path)
    assert cfg.raw_retention_ms < 11 * 86_400_000
    report = rp.replay(client, cfg, path, progress=False)
    assert (report.accepted, report.batches) == (3, 2)
    raw, hourly = keys.item_series("22139", "purchase")
    jan2, jan13 = 1_293_962_400_000, 1_294_912_800_000

    def samples(key: str) -> list[tuple[int, float]]:
        return [(int(t), float(v)) for t, v in client.execute_command("TS.RANGE", key, "-", "+")]

    # Both purchases landed: the raw series keeps its last 8 days, the hourly one the Jan 2 hour
    # (closed by the Jan 13 sample; the Jan 13 hour is still open).
    assert samples(raw) == [(jan13, 1.0)]
    assert samples(hourly) == [(jan2, 1.0)]


def test_checkpoint_makes_a_rerun_a_noop_after_the_dedup_window(
    client: redis.Redis, cfg: EngineConfig, keys: Keys, head_file: Path, expected: Expected
) -> None:
    rp.replay(client, cfg, head_file, limit=700, batch_size=300, progress=False)
    # Simulate the 24 h dedup window having passed: every dedup set is gone.
    for key in client.scan_iter(match=f"{cfg.key_prefix}u:*:dedup"):
        client.delete(key)
    resumed = rp.replay(client, cfg, head_file, batch_size=300, progress=False)
    assert resumed.resumed_from == 700
    assert resumed.sent == expected.events - 700
    assert resumed.accepted == expected.events - 700
    assert log_length(client, keys) == expected.events  # nothing replayed twice
    again = rp.replay(client, cfg, head_file, progress=False)
    assert again.sent == 0 and again.resumed_from == expected.events
    assert client.ttl(rp.checkpoint_key(cfg, head_file)) > 0


def test_a_batch_cut_by_time_checkpoints_before_the_event_that_cut_it(
    client: redis.Redis, cfg: EngineConfig, keys: Keys, tmp_path: Path
) -> None:
    # The Jan 13 event is read before the Jan 1-2 batch is sent (it is what cuts the batch):
    # the checkpoint after that batch must not count it, or a crash before the next batch
    # is sent would lose it on resume.
    path = gap_file(tmp_path)
    engine = build_engine(client, cfg)

    class CrashOnSecondBatch:
        calls = 0

        def ingest(self, events: list[Event]) -> IngestReport:
            self.calls += 1
            if self.calls == 2:
                raise ConnectionError("killed before the second batch")
            return engine.ingestor.ingest(events)

    with pytest.raises(ConnectionError):
        rp.replay(client, cfg, path, progress=False, ingestor=CrashOnSecondBatch(),  # type: ignore[arg-type]
                  drain=engine.drain)  # fmt: skip
    assert client.hget(rp.checkpoint_key(cfg, path), "read") == b"2"
    resumed = rp.replay(client, cfg, path, progress=False)
    assert (resumed.resumed_from, resumed.accepted) == (2, 1)
    assert log_length(client, keys) == 3
