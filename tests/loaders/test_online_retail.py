"""Online Retail parsing: rows, skip reasons, catalog, purchase-event shape (no Redis)."""

from __future__ import annotations

import csv
import gzip
import io
from datetime import UTC, datetime
from pathlib import Path

import pytest

from app.core.events import parse_event
from loaders import online_retail as orl

HEADER = list(orl.COLUMNS)
SAMPLE = (
    Path(__file__).resolve().parents[2]
    / "data"
    / "online-retail"
    / "online-retail-2010-12_2011-09.csv.gz"
)
NOW_MS = 2_000_000_000_000  # 2033: every 2010-2011 event is in the past


def ms(text: str) -> int:
    return int(datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC).timestamp()) * 1000


def write_gz(path: Path, rows: list[list[str] | str]) -> Path:
    """Rows are field lists (csv-quoted) or raw text lines (to write malformed lines)."""
    buf = io.StringIO(newline="")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(HEADER)
    for row in rows:
        if isinstance(row, str):
            buf.write(row + "\n")
        else:
            writer.writerow(row)
    with gzip.open(path, "wt", encoding="utf-8", newline="") as fh:
        fh.write(buf.getvalue())
    return path


# Line numbers in the file: header is line 1, so ROWS[i] is line i + 2.
ROWS: list[list[str] | str] = [
    # 2: valid
    ["536365", "85123A", "WHITE HANGING HEART T-LIGHT HOLDER", "6", "2010-12-01 08:26:00",
     "2.55", "17850.0", "United Kingdom"],
    # 3: valid, quoted description with a comma, same invoice
    ["536365", "22900", "SET 2 TEA TOWELS, I LOVE LONDON", "4", "2010-12-01 08:26:00",
     "2.95", "17850.0", "United Kingdom"],
    # 4: cancellation
    ["C536379", "85123A", "WHITE HANGING HEART T-LIGHT HOLDER", "-2", "2010-12-01 09:41:00",
     "2.55", "17850.0", "United Kingdom"],
    # 5: postage
    ["536370", "POST", "POSTAGE", "3", "2010-12-01 08:45:00", "18.00", "12583.0", "France"],
    # 6: guest checkout (no customer): skipped for events, counted for the catalog
    ["536544", "85123A", "WHITE HANGING HEART T-LIGHT HOLDER", "10", "2010-12-01 14:32:00",
     "2.95", "", "United Kingdom"],
    # 7: zero price
    ["536414", "22139", "RETROSPOT TEA SET CERAMIC 11 PC", "1", "2010-12-01 11:52:00", "0",
     "13408.0", "United Kingdom"],
    # 8: malformed quantity
    ["536365", "71053", "WHITE METAL LANTERN", "six", "2010-12-01 08:26:00", "3.39", "17850.0",
     "United Kingdom"],
    # 9: malformed: too few fields
    "536365,71053,WHITE METAL LANTERN,6",
    # 10: non-positive quantity outside a cancellation (stock adjustment)
    ["536500", "22139", "damaged", "-5", "2010-12-01 12:00:00", "4.25", "13408.0",
     "United Kingdom"],
    # 11: exact duplicate of line 2
    ["536365", "85123A", "WHITE HANGING HEART T-LIGHT HOLDER", "6", "2010-12-01 08:26:00",
     "2.55", "17850.0", "United Kingdom"],
    # 12: empty stock code
    ["536600", "", "MYSTERY", "1", "2010-12-01 13:00:00", "1.00", "13408.0", "United Kingdom"],
    # 13: lower-case spelling of 85123A, later date, new price: same product
    ["536700", "85123a", " WHITE HANGING HEART  T-LIGHT HOLDER ", "2", "2010-12-02 10:00:00",
     "3.25", "13408.0", "United Kingdom"],
    # 14: quantity beyond the engine's per-line limit
    ["536701", "22139", "RETROSPOT TEA SET CERAMIC 11 PC", "200000", "2010-12-02 10:05:00",
     "4.25", "13408.0", "United Kingdom"],
    # 15: malformed date
    ["536702", "22139", "RETROSPOT TEA SET CERAMIC 11 PC", "1", "02/12/2010 10:05",
     "4.25", "13408.0", "United Kingdom"],
    # 16: malformed customer id
    ["536703", "22139", "RETROSPOT TEA SET CERAMIC 11 PC", "1", "2010-12-02 10:06:00",
     "4.25", "ABC", "United Kingdom"],
    # 17: bank charges (non-product code with a space)
    ["536704", "BANK CHARGES", "Bank Charges", "1", "2010-12-02 10:07:00", "15.00", "13408.0",
     "United Kingdom"],
    # 18: valid, another customer; the only sale of 22139 (so its price is 4.95)
    ["536705", "22139", "RETROSPOT TEA SET CERAMIC 11 PC", "3", "2010-12-02 11:00:00", "4.95",
     "13408.0", "United Kingdom"],
    # 19: product code that never has a positive price
    ["536706", "21999", "found", "5", "2010-12-02 11:30:00", "0", "", "United Kingdom"],
]  # fmt: skip


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    return write_gz(tmp_path / "mini.csv.gz", ROWS)


def test_read_rows_parses_and_numbers_lines(sample: Path) -> None:
    report = orl.SkipReport()
    rows = list(orl.read_rows(sample, report))
    assert [r.line_no for r in rows] == [n for n in range(2, 20) if n not in (8, 9, 15, 16)]
    first, second = rows[0], rows[1]
    assert first.invoice == "536365" and first.stock_code == "85123A"
    assert first.quantity == 6 and first.unit_price == 2.55
    assert first.customer_id == "17850" and first.country == "United Kingdom"
    assert first.ts_ms == ms("2010-12-01 08:26:00") == 1_291_191_960_000
    assert second.description == "SET 2 TEA TOWELS, I LOVE LONDON"
    guest = next(r for r in rows if r.line_no == 6)
    assert guest.customer_id is None
    variant = next(r for r in rows if r.line_no == 13)
    assert variant.stock_code == "85123a" and variant.item_id == "85123A"
    assert variant.description == "WHITE HANGING HEART T-LIGHT HOLDER"  # spaces normalised
    assert report.counts == {orl.MALFORMED: 4}
    assert report.examples[orl.MALFORMED] == [8, 9, 15, 16]


def test_is_product_code() -> None:
    for code in ("85123A", "85123a", "22423", "15056BL", " 84879 "):
        assert orl.is_product_code(code), code
    for code in ("POST", "DOT", "M", "m", "C2", "D", "S", "BANK CHARGES", "AMAZONFEE", "CRUK",
                 "PADS", "B", "DCGS0076", "DCGSSGIRL", "gift_0001_20", "", "123456", "1234",
                 "23444", "22016", "23574"):  # fmt: skip
        assert not orl.is_product_code(code), code


def test_purchase_events_skip_reasons(sample: Path) -> None:
    events_it, report = orl.purchase_events(sample)
    events = list(events_it)
    assert report.counts == {
        orl.MALFORMED: 4,
        orl.CANCELLATION: 1,
        orl.NON_PRODUCT: 2,
        orl.MISSING_CUSTOMER: 2,
        orl.NON_POSITIVE_PRICE: 1,
        orl.NON_POSITIVE_QUANTITY: 1,
        orl.DUPLICATE_LINE: 1,
        orl.EMPTY_STOCK_CODE: 1,
        orl.QUANTITY_TOO_LARGE: 1,
    }
    assert report.examples == {
        orl.MALFORMED: [8, 9, 15, 16],
        orl.CANCELLATION: [4],
        orl.NON_PRODUCT: [5, 17],
        orl.MISSING_CUSTOMER: [6, 19],
        orl.NON_POSITIVE_PRICE: [7],
        orl.NON_POSITIVE_QUANTITY: [10],
        orl.DUPLICATE_LINE: [11],
        orl.EMPTY_STOCK_CODE: [12],
        orl.QUANTITY_TOO_LARGE: [14],
    }
    assert report.kept == len(events) == 4
    assert report.skipped + report.kept == len(ROWS)
    assert [e["event_id"] for e in events] == [
        "or:536365:2", "or:536365:3", "or:536700:13", "or:536705:18",
    ]  # fmt: skip
    summary = report.summary()
    assert "kept 4, skipped 14" in summary
    assert "malformed: 4 (e.g. line 8, 9, 15, 16)" in summary


def test_event_shape_is_accepted_by_the_engine(sample: Path) -> None:
    events_it, _ = orl.purchase_events(sample)
    events = list(events_it)
    assert events[0] == {
        "event_id": "or:536365:2",
        "type": "purchase",
        "user_id": "c17850",
        "session_id": "inv-536365",
        "ts": 1_291_191_960_000,
        "items": [{"item_id": "85123A", "qty": 6, "price": 2.55, "category": "candles_lights"}],
    }
    assert events[2]["items"][0]["item_id"] == "85123A"  # lower-case code merged
    assert events[2]["user_id"] == "c13408"
    for obj in events:
        ev = parse_event(obj, now_ms=NOW_MS)
        assert ev.type == "purchase" and len(ev.lines) == 1
        assert ev.lines[0].category == obj["items"][0]["category"] != ""
    # Same file, same ids: the replay is deterministic.
    again, _ = orl.purchase_events(sample)
    assert [e["event_id"] for e in again] == [e["event_id"] for e in events]


def test_event_categories_come_from_the_catalog_title(tmp_path: Path) -> None:
    # The odd description of one line must not change the item's category.
    path = write_gz(tmp_path / "cat.csv.gz", [
        ["1", "22900", "SET 2 TEA TOWELS I LOVE LONDON", "1", "2011-01-01 10:00:00", "2.95",
         "12346.0", "UK"],
        ["2", "22900", "SET 2 TEA TOWELS I LOVE LONDON", "1", "2011-01-01 11:00:00", "2.95",
         "12346.0", "UK"],
        ["3", "22900", "LONDON GIFT", "1", "2011-01-01 12:00:00", "2.95", "12346.0", "UK"],
    ])  # fmt: skip
    catalog, _ = orl.build_catalog(path)
    events_it, _ = orl.purchase_events(path, catalog=catalog)
    assert {e["items"][0]["category"] for e in events_it} == {"textiles"}
    plain_it, _ = orl.purchase_events(path)  # no catalog: per-row description
    assert [e["items"][0]["category"] for e in plain_it] == ["textiles", "textiles", "party"]


def test_catalog(sample: Path) -> None:
    catalog, report = orl.build_catalog(sample)
    assert sorted(catalog) == ["22139", "22900", "85123A"]
    heart = catalog["85123A"]
    assert heart.title == "WHITE HANGING HEART T-LIGHT HOLDER"
    assert heart.price == 3.25  # latest sale (2010-12-02), not the first or the guest's
    assert heart.codes == ("85123A", "85123a")
    # Sale lines: 2, 6 (guest), 11 (the duplicate still is a sale line for the catalog), 13.
    assert heart.purchase_lines == 4 and heart.units == 6 + 10 + 6 + 2
    assert heart.first_seen_ms == ms("2010-12-01 08:26:00")
    assert heart.last_seen_ms == ms("2010-12-02 10:00:00")
    assert heart.category == "candles_lights"
    teaset = catalog["22139"]
    # Sale titles only: "damaged" (an adjustment row) can never become the title.
    assert teaset.title == "RETROSPOT TEA SET CERAMIC 11 PC"
    assert teaset.price == 4.95 and teaset.category == "kitchen"
    assert catalog["22900"].title == "SET 2 TEA TOWELS, I LOVE LONDON"
    assert report.counts == {
        orl.MALFORMED: 4, orl.NON_PRODUCT: 2, orl.EMPTY_STOCK_CODE: 1, orl.NO_PRICE: 1,
    }  # fmt: skip
    assert report.examples[orl.NO_PRICE] == [19]
    assert report.kept == 3


def test_catalog_title_and_price_rules(tmp_path: Path) -> None:
    path = write_gz(tmp_path / "rules.csv.gz", [
        # Newest-dated row first in the file: the price follows InvoiceDate, not file order.
        ["3", "21000", "ROSE MUG", "1", "2011-03-01 10:00:00", "3.00", "1.0", "UK"],
        ["1", "21000", "ROSE MUG", "1", "2011-01-01 10:00:00", "1.00", "1.0", "UK"],
        ["2", "21000", "MUG ROSE", "1", "2011-02-01 10:00:00", "2.00", "1.0", "UK"],
        # A later free line and a later cancellation do not set the price.
        ["4", "21000", "ROSE MUG", "1", "2011-04-01 10:00:00", "0", "1.0", "UK"],
        ["C5", "21000", "ROSE MUG", "-1", "2011-05-01 10:00:00", "9.99", "1.0", "UK"],
        # Tie on counts: the most recently seen description wins.
        ["6", "21001", "OLD NAME", "1", "2011-01-01 10:00:00", "1.00", "", "UK"],
        ["7", "21001", "NEW NAME", "1", "2011-02-01 10:00:00", "1.00", "", "UK"],
        # Only cancelled: the cancellation's price is the fallback.
        ["C8", "21002", "LOST MUG", "-1", "2011-02-01 10:00:00", "5.00", "1.0", "UK"],
    ])  # fmt: skip
    catalog, _ = orl.build_catalog(path)
    mug = catalog["21000"]
    assert (mug.title, mug.price, mug.purchase_lines, mug.units) == ("ROSE MUG", 3.00, 3, 3)
    assert mug.first_seen_ms == ms("2011-01-01 10:00:00")
    assert mug.last_seen_ms == ms("2011-05-01 10:00:00")
    assert catalog["21001"].title == "NEW NAME"
    lost = catalog["21002"]
    assert (lost.price, lost.purchase_lines, lost.units) == (5.00, 0, 0)


def test_bad_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("InvoiceNo,StockCode,Quantity\n1,2,3\n")
    with pytest.raises(ValueError, match="missing column"):
        list(orl.read_rows(path))


def test_plain_csv_and_empty_file(tmp_path: Path) -> None:
    plain = tmp_path / "plain.csv"
    row = "1,22139,TEA SET,1,2011-01-01 10:00:00,4.25,12346.0,UK"
    plain.write_text(",".join(HEADER) + "\n" + row + "\n")
    assert [r.stock_code for r in orl.read_rows(plain)] == ["22139"]
    empty = tmp_path / "empty.csv"
    empty.write_text("")
    assert list(orl.read_rows(empty)) == []


def test_real_file_first_event() -> None:
    events_it, report = orl.purchase_events(SAMPLE)
    first = next(events_it)
    events_it.close()
    assert first["event_id"] == "or:536365:2"
    assert first["user_id"] == "c17850" and first["session_id"] == "inv-536365"
    assert first["ts"] == ms("2010-12-01 08:26:00")
    assert first["items"] == [
        {"item_id": "85123A", "qty": 6, "price": 2.55, "category": "candles_lights"}
    ]
    assert report.kept == 1
