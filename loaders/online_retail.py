"""Parse the Online Retail CSV (UCI, 2010-12 .. 2011-09) into a catalog and purchase events.

Pure parsing: no Redis here (see `loaders/replay.py` for ingestion). The file is real and messy;
every row is either used or skipped for one named reason, counted in a `SkipReport` with a few
example line numbers, so a run always says what it did.

Decisions (all deliberate, see also data/online-retail/README.md):

- Line numbers are 1-based physical CSV lines (the header is line 1, the first row line 2).
- Stock codes are upper-cased: the file spells 94 product codes in both cases (`85123A`,
  `85123a`) for the same product. Item ids are the upper-cased code.
- `is_product_code`: a product code is 5 digits plus at most 2 letters (`22423`, `85123A`,
  `15056BL`). Everything else is a fee, a service or a non-product line (POST, DOT, M, C2, D, S,
  BANK CHARGES, AMAZONFEE, CRUK, PADS, B, DCGS*, gift vouchers `gift_0001_*`...), and so are
  three numeric codes used for services (`SERVICE_CODES`: a voucher, carriage, packing).
- Descriptions are whitespace-normalised (`" SET 2 TEA TOWELS "` == `"SET 2 TEA TOWELS"`).
- Times: InvoiceDate is UK local time without a zone; we treat it as UTC (at most one hour
  off during British Summer Time). Event `ts` is milliseconds since the epoch.
- Categories are derived from the product's canonical title by `app.core.taxonomy.category_for`
  (the data has no category column).

Purchase events (`purchase_events`): one event per valid invoice line. A row is skipped for the
first reason that applies, in this order:

  malformed             wrong field count or unparseable number/date/customer id
  empty_stock_code      no StockCode
  cancellation          InvoiceNo starts with "C" (returns are not purchases; we do not replay
                        them as negative events: the engine has no such event type)
  non_product           `is_product_code` is false (postage, fees, manual lines, vouchers...)
  missing_customer      guest checkout: no CustomerID, so no user to attribute it to (the row
                        still counts for the catalog)
  non_positive_quantity Quantity <= 0 (stock adjustments outside cancellations)
  non_positive_price    UnitPrice <= 0 (free samples, adjustments)
  quantity_too_large    Quantity above the engine's limit (100,000 per line)
  duplicate_line        the same invoice already had an identical line (same code, description,
                        quantity, price, customer and time): the file repeats some lines
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import re
from collections import Counter
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.core.taxonomy import category_for

COLUMNS = (
    "InvoiceNo", "StockCode", "Description", "Quantity", "InvoiceDate", "UnitPrice",
    "CustomerID", "Country",
)  # fmt: skip
MAX_QTY = 100_000  # app.core.events accepts 1..100000 units per line
MAX_EXAMPLES = 5

PRODUCT_CODE_RE = re.compile(r"^\d{5}[A-Z]{0,2}$")
# Numeric codes that are services, not merchandise (checked by description on this file):
# 22016 "Dotcomgiftshop Gift Voucher £100.00", 23444 "Next Day Carriage", 23574 "PACKING CHARGE".
SERVICE_CODES = frozenset({"22016", "23444", "23574"})
CUSTOMER_RE = re.compile(r"^(\d{1,20})(?:\.0*)?$")
INVOICE_RE = re.compile(r"^[A-Z]?\d{1,20}$")

# Skip reasons, in the order they are checked (see the module docstring).
MALFORMED = "malformed"
EMPTY_STOCK_CODE = "empty_stock_code"
CANCELLATION = "cancellation"
NON_PRODUCT = "non_product"
MISSING_CUSTOMER = "missing_customer"
NON_POSITIVE_QUANTITY = "non_positive_quantity"
NON_POSITIVE_PRICE = "non_positive_price"
QUANTITY_TOO_LARGE = "quantity_too_large"
DUPLICATE_LINE = "duplicate_line"
# Catalog only: a product code whose rows never carry a positive price (adjustments only).
NO_PRICE = "no_price"

EVENT_ID_PREFIX = "or"


@dataclass
class SkipReport:
    """Skipped rows (or products) per reason, with the first few line numbers of each."""

    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[int]] = field(default_factory=dict)
    kept: int = 0  # rows (or products) used
    max_examples: int = MAX_EXAMPLES

    def add(self, reason: str, line_no: int) -> None:
        self.counts[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < self.max_examples:
            ex.append(line_no)

    @property
    def skipped(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        head = f"kept {self.kept:,}, skipped {self.skipped:,}"
        if not self.counts:
            return head
        parts = [
            f"  {reason}: {n:,} (e.g. line {', '.join(str(x) for x in self.examples[reason])})"
            for reason, n in sorted(self.counts.items(), key=lambda kv: (-kv[1], kv[0]))
        ]
        return "\n".join([head + ":", *parts])


@dataclass(frozen=True, slots=True)
class Row:
    """One parsed CSV row. `customer_id` is None for guests ("17850", no ".0");
    `stock_code` is as written (stripped), `item_id` its upper-cased form."""

    line_no: int
    invoice: str
    stock_code: str
    description: str
    quantity: int
    ts_ms: int
    unit_price: float
    customer_id: str | None
    country: str

    @property
    def item_id(self) -> str:
        return self.stock_code.upper()

    @property
    def is_cancellation(self) -> bool:
        return self.invoice.startswith("C")

    @property
    def is_sale(self) -> bool:
        """A real sale line: not cancelled, units and price positive (guests included)."""
        return not self.is_cancellation and self.quantity > 0 and self.unit_price > 0


@dataclass(frozen=True, slots=True)
class Product:
    item_id: str  # upper-cased StockCode
    title: str  # most frequent description (sale rows preferred), "" if none
    price: float  # latest positive UnitPrice (sale rows preferred), GBP
    category: str  # derived: app.core.taxonomy.category_for(title)
    first_seen_ms: int  # first and last row of any kind mentioning the code
    last_seen_ms: int
    purchase_lines: int  # sale lines (guests included, cancellations excluded)
    units: int  # units over those lines
    codes: tuple[str, ...] = ()  # spellings of the code in the file (e.g. 85123A, 85123a)


def is_product_code(code: str) -> bool:
    """True for merchandise codes: 5 digits + at most 2 letters, case-insensitive, minus the
    few numeric service codes in `SERVICE_CODES`."""
    up = code.strip().upper()
    return PRODUCT_CODE_RE.match(up) is not None and up not in SERVICE_CODES


def normalize_description(text: str) -> str:
    return " ".join(text.split())


def _open_text(path: str | Path) -> io.TextIOWrapper:
    p = Path(path)
    if p.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(p, "rb"), encoding="utf-8", newline="")
    return open(p, encoding="utf-8", newline="")


class _DateCache:
    """InvoiceDate -> ms since the epoch (as UTC); rows of one invoice share their date."""

    def __init__(self) -> None:
        self.text = ""
        self.ms = 0

    def __call__(self, text: str) -> int:
        if text != self.text:
            dt = datetime.strptime(text.strip(), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
            self.ms = int(dt.timestamp()) * 1000
            self.text = text
        return self.ms


def _column_index(header: list[str]) -> list[int]:
    names = [h.strip().lstrip("\ufeff") for h in header]
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise ValueError(f"not an Online Retail CSV: missing column(s) {', '.join(missing)}")
    return [names.index(c) for c in COLUMNS]


def read_rows(path: str | Path, report: SkipReport | None = None) -> Iterator[Row]:
    """Parsed rows in file order. Malformed rows are never yielded: they are counted in
    `report` (reason `malformed`) when one is given."""
    date_ms = _DateCache()
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            return
        idx = _column_index(header)
        width = len(header)
        next_line = reader.line_num + 1
        for rec in reader:
            line_no, next_line = next_line, reader.line_num + 1
            if not rec:
                continue  # blank line
            if len(rec) != width:
                if report is not None:
                    report.add(MALFORMED, line_no)
                continue
            inv, code, desc, qty, date, price, cust, country = (rec[i] for i in idx)
            try:
                invoice = inv.strip().upper()
                if not INVOICE_RE.match(invoice):
                    raise ValueError(invoice)
                quantity = int(qty)
                unit_price = float(price)
                if unit_price != unit_price or unit_price in (float("inf"), float("-inf")):
                    raise ValueError(price)
                ts_ms = date_ms(date)
                customer: str | None = None
                if cust.strip():
                    m = CUSTOMER_RE.match(cust.strip())
                    if m is None:
                        raise ValueError(cust)
                    customer = m.group(1)
            except ValueError:
                if report is not None:
                    report.add(MALFORMED, line_no)
                continue
            yield Row(
                line_no, invoice, code.strip(), normalize_description(desc), quantity,
                ts_ms, unit_price, customer, country.strip(),
            )  # fmt: skip


# -- purchase-event filter ----------------------------------------------------------------------


def user_id_for(customer_id: str) -> str:
    """`"17850"` -> `"c17850"`: the engine's user id for an Online Retail customer."""
    return f"c{customer_id}"


def event_id_for(invoice: str, line_no: int) -> str:
    """Deterministic, so a re-run sends the same ids and the engine reports duplicates."""
    return f"{EVENT_ID_PREFIX}:{invoice}:{line_no}"


def skip_reason(row: Row) -> str | None:
    """Why a row is not a purchase event (None: it is one). Duplicates are checked apart."""
    if not row.stock_code:
        return EMPTY_STOCK_CODE
    if row.is_cancellation:
        return CANCELLATION
    if not is_product_code(row.stock_code):
        return NON_PRODUCT
    if row.customer_id is None:
        return MISSING_CUSTOMER
    if row.quantity <= 0:
        return NON_POSITIVE_QUANTITY
    if row.unit_price <= 0:
        return NON_POSITIVE_PRICE
    if row.quantity > MAX_QTY:
        return QUANTITY_TOO_LARGE
    return None


class EventFilter:
    """`skip_reason` plus exact-duplicate detection (stateful: one instance per pass).

    Remembers a 12-byte digest per accepted line (about 270k lines on the full file)."""

    def __init__(self) -> None:
        self._seen: set[bytes] = set()

    def reason(self, row: Row) -> str | None:
        reason = skip_reason(row)
        if reason is not None:
            return reason
        text = "\x1f".join(
            (row.invoice, row.item_id, row.description, str(row.quantity),
             repr(row.unit_price), row.customer_id or "", str(row.ts_ms))
        )  # fmt: skip
        digest = hashlib.blake2b(text.encode(), digest_size=12).digest()
        if digest in self._seen:
            return DUPLICATE_LINE
        self._seen.add(digest)
        return None


# -- catalog -----------------------------------------------------------------------------------


@dataclass
class _Acc:
    """Running state of one product while scanning."""

    first_line: int
    first_seen: int
    last_seen: int
    codes: set[str] = field(default_factory=set)
    sale_titles: Counter[str] = field(default_factory=Counter)
    other_titles: Counter[str] = field(default_factory=Counter)
    title_last: dict[str, int] = field(default_factory=dict)
    sale_price: tuple[int, int, float] | None = None  # (ts, line, price) of the latest sale
    any_price: tuple[int, int, float] | None = None  # same over rows of any kind
    lines: int = 0
    units: int = 0

    def add(self, row: Row) -> None:
        self.codes.add(row.stock_code)
        self.first_seen = min(self.first_seen, row.ts_ms)
        self.last_seen = max(self.last_seen, row.ts_ms)
        sale = row.is_sale
        if row.description:
            (self.sale_titles if sale else self.other_titles)[row.description] += 1
            last = self.title_last.get(row.description, 0)
            self.title_last[row.description] = max(last, row.ts_ms)
        if row.unit_price > 0:
            stamp = (row.ts_ms, row.line_no, row.unit_price)
            if self.any_price is None or stamp > self.any_price:
                self.any_price = stamp
            if sale and (self.sale_price is None or stamp > self.sale_price):
                self.sale_price = stamp
        if sale:
            self.lines += 1
            self.units += row.quantity

    def title(self) -> str:
        titles = self.sale_titles or self.other_titles
        if not titles:
            return ""
        # Most frequent; ties: most recently seen, then alphabetical (deterministic).
        return min(titles, key=lambda t: (-titles[t], -self.title_last[t], t))


@dataclass(frozen=True)
class CatalogScan:
    catalog: dict[str, Product]
    report: SkipReport
    events: int  # purchase events `purchase_events` yields for the same file
    last_event_ms: int = 0  # the newest of those events' times


def scan(path: str | Path) -> CatalogScan:
    """One pass: the catalog (see `build_catalog`) and the number of purchase events."""
    report = SkipReport()
    accs: dict[str, _Acc] = {}
    events = EventFilter()
    n_events = 0
    last_event = 0
    for row in read_rows(path, report):
        if events.reason(row) is None:
            n_events += 1
            last_event = max(last_event, row.ts_ms)
        if not row.stock_code:
            report.add(EMPTY_STOCK_CODE, row.line_no)
            continue
        if not is_product_code(row.stock_code):
            report.add(NON_PRODUCT, row.line_no)
            continue
        acc = accs.get(row.item_id)
        if acc is None:
            acc = accs[row.item_id] = _Acc(row.line_no, row.ts_ms, row.ts_ms)
        acc.add(row)

    catalog: dict[str, Product] = {}
    for code in sorted(accs):
        acc = accs[code]
        stamp = acc.sale_price or acc.any_price
        if stamp is None:
            report.add(NO_PRICE, acc.first_line)
            continue
        title = acc.title()
        catalog[code] = Product(
            item_id=code,
            title=title,
            price=stamp[2],
            category=category_for(title),
            first_seen_ms=acc.first_seen,
            last_seen_ms=acc.last_seen,
            purchase_lines=acc.lines,
            units=acc.units,
            codes=tuple(sorted(acc.codes)),
        )
    report.kept = len(catalog)
    return CatalogScan(catalog, report, n_events, last_event)


def build_catalog(path: str | Path) -> tuple[dict[str, Product], SkipReport]:
    """One `Product` per (upper-cased) product StockCode; guests' rows count too.

    Title: the most frequent description among sale rows (any row if it never sold), ties to
    the most recent. Price: the latest positive UnitPrice of a sale row (of any row if none).
    Skipped rows: `malformed`, `empty_stock_code`, `non_product`. A product code whose rows
    never carry a positive price counts once as `no_price` (example line: its first row) and
    is left out. `report.kept` is the number of products.
    """
    result = scan(path)
    return result.catalog, result.report


# -- purchase events ---------------------------------------------------------------------------


def event_for(row: Row, category: str) -> dict[str, Any]:
    """The purchase event of one valid row, in the shape `app.core.events.parse_event` accepts."""
    if row.customer_id is None:
        raise ValueError(f"line {row.line_no}: a guest row has no user for an event")
    return {
        "event_id": event_id_for(row.invoice, row.line_no),
        "type": "purchase",
        "user_id": user_id_for(row.customer_id),
        "session_id": f"inv-{row.invoice}",
        "ts": row.ts_ms,
        "items": [
            {
                "item_id": row.item_id,
                "qty": row.quantity,
                "price": row.unit_price,
                "category": category,
            }
        ],
    }


EventStream = Generator[dict[str, Any], None, None]


def _events(
    path: str | Path, catalog: dict[str, Product] | None, report: SkipReport
) -> EventStream:
    events = EventFilter()
    for row in read_rows(path, report):
        reason = events.reason(row)
        if reason is not None:
            report.add(reason, row.line_no)
            continue
        product = catalog.get(row.item_id) if catalog is not None else None
        category = product.category if product is not None else category_for(row.description)
        report.kept += 1
        yield event_for(row, category)


def purchase_events(
    path: str | Path, *, catalog: dict[str, Product] | None = None
) -> tuple[EventStream, SkipReport]:
    """Purchase events (one per valid line, file order) and the report of skipped rows.

    The report fills in while the iterator is consumed: it is complete once the iterator is
    exhausted, and `report.kept` counts the events yielded so far. Item categories come from
    `catalog` (the product's canonical title) when given, else from the row's description.
    The stream is a generator: `close()` it when stopping early (closes the file at once).
    """
    report = SkipReport()
    return _events(path, catalog, report), report
