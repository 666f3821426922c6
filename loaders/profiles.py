"""Warehouse profile sync (Segment's "Warehouse Actions" pattern): a CSV or JSONL table of
customers -> identify calls, in batches, through the tracking path (`/v1/batch`'s translation
and sink), so a synced trait lands exactly where an SDK's identify would put it.

    python -m app.cli profiles load FILE [--id-column user_id] [--traits a,b,c | --mapping m.yaml]
                                         [--batch 500] [--dry-run] [--url URL --write-key KEY]

Each row's messageId is a hash of its content (user id + traits), so re-running the same file
reports duplicates instead of writing again, and a changed row is a new message. Rows that fail
validation are listed with their line number and reason; the others are sent. `--dry-run`
reads and validates without sending. Without `--url` the rows go straight to Redis (REDIS_URL or
the embedded server); with it, to a running server's `/v1/batch` (gzip, HTTP Basic with a
server key: profiles name known users, docs/security.md).

Parquet is not read: its readers (pyarrow, fastparquet) are tens of MB of native code for one
input format; export Parquet to CSV or JSONL first (e.g. `duckdb -c "COPY t TO 'p.csv'"`).

The sample (`python -m loaders.profiles sample`) is derived from the shipped Online Retail data:
per customer their country, order count, lifetime spend (net of cancellations), median unit
price band and a membership
tier from spend (gold: top 10 % of customers, silver: the next 30 %, bronze: the rest).
"""

from __future__ import annotations

import argparse
import base64
import csv
import gzip
import hashlib
import io
import json
import math
import statistics
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from app.catalog.search import price_band
from app.core.errors import ValidationError
from app.ingest.segment import Action, translate
from loaders.online_retail import (
    CANCELLATION,
    is_product_code,
    read_rows,
    skip_reason,
    user_id_for,
)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "profiles" / "online-retail-profiles.csv"
SAMPLE_COLUMNS = ("user_id", "country", "tier", "orders", "lifetime_spend", "price_band",
                  "first_order", "last_order")  # fmt: skip
MAX_REJECTIONS_SHOWN = 20


# -- reading -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ColumnMap:
    """Which column is the user id, and trait name -> column (None: every other column)."""

    id_column: str = "user_id"
    traits: Mapping[str, str] | None = None


def load_mapping(path: Path) -> ColumnMap:
    """`id_column: customer_id` and `traits: {tier: membership_tier, country: country}`."""
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict) or not isinstance(raw.get("id_column", "user_id"), str):
        raise ValidationError("mapping", f"{path}: needs id_column: <name> and traits: {{...}}")
    traits = raw.get("traits")
    if traits is not None and (
        not isinstance(traits, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in traits.items())
    ):
        raise ValidationError("mapping.traits", "must map trait names to column names")
    return ColumnMap(raw.get("id_column", "user_id"), traits)


def _open(path: Path) -> io.TextIOWrapper:
    raw = path.open("rb")
    stream = gzip.GzipFile(fileobj=raw) if path.name.endswith(".gz") else raw
    return io.TextIOWrapper(stream, encoding="utf-8", newline="")


def file_format(path: Path, given: str | None) -> str:
    if given:
        return given
    name = path.name.removesuffix(".gz")
    if name.endswith(".csv"):
        return "csv"
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if name.endswith(".parquet"):
        raise ValidationError("format", "Parquet is not read: export the table to CSV or JSONL")
    raise ValidationError("format", f"cannot tell the format of {path.name}: pass --format")


def read_table(path: Path, fmt: str) -> Iterator[tuple[int, Any]]:
    """(line number, row) pairs; a JSONL line that is not JSON is yielded as an error string."""
    with _open(path) as text:
        if fmt == "csv":
            for i, row in enumerate(csv.DictReader(text), start=2):
                yield i, row
            return
        for i, line in enumerate(text, start=1):
            if not line.strip():
                continue
            try:
                yield i, json.loads(line)
            except json.JSONDecodeError as exc:
                yield i, f"not JSON: {exc.msg}"


def typed(value: Any) -> Any:
    """CSV cells are text: numbers and true/false become JSON values; '' means no value."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text == "":
        return None
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            number = cast(text)
        except ValueError:
            continue
        # "nan" / "inf" read as floats but are words in a table; keep them as text.
        return number if math.isfinite(number) else text
    return text


def row_message(row: Any, mapping: ColumnMap, now_iso: str) -> dict[str, Any]:
    if not isinstance(row, Mapping):
        raise ValidationError("row", row if isinstance(row, str) else "must be an object")
    user = typed(row.get(mapping.id_column))
    if user is None:
        raise ValidationError(mapping.id_column, "is empty (the user id column)")
    if mapping.traits is None:
        traits = {k: typed(v) for k, v in row.items() if k != mapping.id_column}
    else:
        missing = [c for c in mapping.traits.values() if c not in row]
        if missing:
            raise ValidationError(missing[0], "no such column in this row")
        traits = {name: typed(row[col]) for name, col in mapping.traits.items()}
    traits = {k: v for k, v in traits.items() if v is not None}
    content = json.dumps([str(user), traits], sort_keys=True, separators=(",", ":"))
    return {
        "type": "identify",
        "messageId": "profile-" + hashlib.sha256(content.encode()).hexdigest()[:40],
        "userId": str(user),
        "traits": traits,
        "timestamp": now_iso,
    }


# -- sending -------------------------------------------------------------------------------------


@dataclass
class SyncReport:
    read: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0
    dry_run: bool = False

    def summary(self) -> str:
        rate = self.read / self.seconds if self.seconds > 0 else 0.0
        outcome = (
            f"valid {self.accepted:,} (dry run: nothing sent)"
            if self.dry_run
            else f"accepted {self.accepted:,}, duplicates {self.duplicates:,}"
        )
        lines = [
            f"profiles: read {self.read:,} rows; {outcome}; rejected {len(self.rejected):,}; "
            f"{self.seconds:.1f} s ({rate:,.0f} rows/s)"
        ]
        for line_no, reason in self.rejected[:MAX_REJECTIONS_SHOWN]:
            lines.append(f"  line {line_no}: {reason}")
        if len(self.rejected) > MAX_REJECTIONS_SHOWN:
            lines.append(f"  ... and {len(self.rejected) - MAX_REJECTIONS_SHOWN:,} more")
        return "\n".join(lines)


@dataclass(frozen=True)
class BatchOutcome:
    accepted: int
    duplicates: int
    rejected: Mapping[int, str]  # index in the batch -> reason


Sender = Callable[[Sequence[dict[str, Any]]], BatchOutcome]


def sink_sender(apply: Callable[[Sequence[Action]], Sequence[Any]]) -> Sender:
    """Straight to Redis through the tracking sink (same translation as /v1/batch)."""

    def send(messages: Sequence[dict[str, Any]]) -> BatchOutcome:
        now = int(time.time() * 1000)
        actions = [translate(m, received_ms=now) for m in messages]  # validated already
        outcomes = list(apply(actions))
        return BatchOutcome(
            sum(1 for o in outcomes if o.status == "accepted"),
            sum(1 for o in outcomes if o.status == "duplicate"),
            {i: o.reason for i, o in enumerate(outcomes) if o.status == "rejected"},
        )

    return send


def http_sender(url: str, write_key: str, timeout_s: float = 30.0) -> Sender:
    """POST /v1/batch to a running server (gzip, HTTP Basic with the write key), as the SDKs
    do; 429 and 5xx are retried with backoff (the content-hash messageIds make that safe),
    other errors stop the sync."""
    auth = "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()

    def send(messages: Sequence[dict[str, Any]]) -> BatchOutcome:
        body = gzip.compress(json.dumps({"batch": list(messages)}).encode())
        request = urllib.request.Request(
            url.rstrip("/") + "/v1/batch", data=body, method="POST",
            headers={"Content-Type": "application/json", "Content-Encoding": "gzip",
                     "Authorization": auth},
        )  # fmt: skip
        for attempt in range(6):
            try:
                with urllib.request.urlopen(request, timeout=timeout_s) as resp:
                    reply = json.loads(resp.read())
                break
            except urllib.error.HTTPError as exc:
                retry = exc.code == 429 or exc.code >= 500
                if not retry or attempt == 5:
                    raise ValidationError("url", f"HTTP {exc.code}: {exc.read()[:300]!r}") from exc
                time.sleep(0.5 * 2**attempt)
        return BatchOutcome(
            int(reply.get("accepted", 0)),
            int(reply.get("duplicate", 0)),
            {e["index"]: f"{e['field']}: {e['reason']}" for e in reply.get("errors", [])},
        )

    return send


def sync(
    path: Path,
    mapping: ColumnMap,
    send: Sender | None,
    *,
    fmt: str | None = None,
    batch_size: int = 500,
    progress: bool = False,
) -> SyncReport:
    """Read, validate, and (unless `send` is None: dry run) send in batches."""
    report = SyncReport(dry_run=send is None)
    t0 = time.monotonic()
    now_ms = int(time.time() * 1000)
    now_iso = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now_ms / 1000))
    batch: list[tuple[int, dict[str, Any]]] = []

    def flush() -> None:
        if batch and send is not None:
            outcome = send([m for _, m in batch])
            report.accepted += outcome.accepted
            report.duplicates += outcome.duplicates
            report.rejected += [(batch[i][0], r) for i, r in sorted(outcome.rejected.items())]
        elif batch:
            report.accepted += len(batch)  # dry run: would be sent
        batch.clear()
        if progress:
            elapsed = time.monotonic() - t0
            print(
                f"\r  {report.read:,} rows, {report.read / max(elapsed, 1e-9):,.0f} rows/s, "
                f"{len(report.rejected):,} rejected",
                end="",
                file=sys.stderr,
                flush=True,
            )

    for line_no, row in read_table(path, file_format(path, fmt)):
        report.read += 1
        try:
            message = row_message(row, mapping, now_iso)
            translate(message, received_ms=now_ms)  # the same validation as /v1/batch
        except ValidationError as exc:
            report.rejected.append((line_no, f"{exc.field}: {exc.message}"))
            continue
        batch.append((line_no, message))
        if len(batch) >= batch_size:
            flush()
    flush()
    if progress:
        print(file=sys.stderr)
    report.seconds = time.monotonic() - t0
    return report


# -- the sample derived from the shipped data ----------------------------------------------------


def sample_rows(source: Path) -> list[dict[str, Any]]:
    """One row per customer of the Online Retail purchases (see the module docstring)."""
    spend: dict[str, float] = {}
    orders: dict[str, set[str]] = {}
    prices: dict[str, list[float]] = {}
    country: dict[str, str] = {}
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for row in read_rows(source):
        reason = skip_reason(row)
        if reason == CANCELLATION and row.customer_id and is_product_code(row.stock_code):
            # Spend is net of cancellations (their quantities are negative).
            spend[row.customer_id] = spend.get(row.customer_id, 0.0) + row.quantity * row.unit_price
            continue
        if reason is not None or not row.customer_id:
            continue
        c = row.customer_id
        spend[c] = spend.get(c, 0.0) + row.quantity * row.unit_price
        orders.setdefault(c, set()).add(row.invoice)
        prices.setdefault(c, []).append(row.unit_price)
        country.setdefault(c, row.country)
        first[c] = min(first.get(c, row.ts_ms), row.ts_ms)
        last[c] = max(last.get(c, row.ts_ms), row.ts_ms)
    spend = {c: max(0.0, v) for c, v in spend.items() if c in orders}
    ranked = sorted(spend, key=lambda c: (-spend[c], c))
    n = len(ranked)
    tier = {c: "gold" if i < n * 0.1 else "silver" if i < n * 0.4 else "bronze"
            for i, c in enumerate(ranked)}  # fmt: skip

    def day(ms: int) -> str:
        return time.strftime("%Y-%m-%d", time.gmtime(ms / 1000))

    return [
        {"user_id": user_id_for(c), "country": country[c], "tier": tier[c],
         "orders": len(orders[c]), "lifetime_spend": round(spend[c], 2),
         "price_band": price_band(statistics.median(prices[c])) or "",
         "first_order": day(first[c]), "last_order": day(last[c])}
        for c in sorted(spend, key=lambda c: int(c))
    ]  # fmt: skip


def write_sample(source: Path, out: Path) -> int:
    rows = sample_rows(source)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(SAMPLE_COLUMNS), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="profile sample file from the shipped data")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("sample", help=f"write {SAMPLE.relative_to(ROOT)}")
    p.add_argument(
        "--source",
        type=Path,
        default=ROOT / "data" / "online-retail" / "online-retail-2010-12_2011-09.csv.gz",
    )
    p.add_argument("--out", type=Path, default=SAMPLE)
    args = parser.parse_args(argv)
    print(f"wrote {write_sample(args.source, args.out):,} profiles to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
