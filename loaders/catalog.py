"""Load products into the catalog: the Online Retail sample, or a generic JSONL / CSV feed.

    python -m loaders.catalog online-retail [--path FILE]
    python -m loaders.catalog feed FILE [--format jsonl|csv] [--source NAME] [--delete-missing]

Every product goes through the `catalog_upsert` Function (lua/50_catalog.lua), in pipelined
batches: a product whose content hash is unchanged is not rewritten (a re-run is a no-op), a
new one is created, a changed one is merged; a feed price change goes through the price
guardrails (source 'feed'). A bad row is reported with its line number and reason and the
load goes on. The summary counts created / updated / unchanged / deleted / rejected.

Online Retail (no stock, category or description columns in the data):
- one product per upper-cased StockCode, title = most frequent description, price = latest
  positive unit price, non-product codes skipped with counts (`loaders/online_retail.py`);
- category DERIVED from the title (`app.core.taxonomy.category_for`, `category_source: derived`);
- stock SYNTHETIC (`synthetic_stock`, `stock_source: synthetic`): deterministic per item id,
  about 8% out of stock, otherwise 1..250 units; applied when a product is created only;
- popularity = invoice lines that sold the item; created_ms = first time the code appears.

Generic feed (docs/search.md "Product feed"): JSONL, one object per line, or CSV with a header;
fields item_id (required), title (required), price (required, GBP), stock, description,
category, brand, tags (JSON list, or `a|b` in CSV), url, image_url, popularity, created_ms,
deleted (true removes the product). Unknown fields are an error (typos must not pass silently).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import io
import json
import math
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import redis

from app.catalog import calls as catalog_calls
from app.catalog.index import (
    CatalogConfig,
    CatalogKeys,
    ProductRecord,
    check_compatible,
    content_hash,
    content_json,
    content_of,
    create_index,
    delete_items,
    embedding_text,
    json_reply,
    load_catalog_config,
    read_meta,
    redis_cmd,
    scan_docs,
    validate_record,
)
from app.catalog.vectorizers import TextVectorizer, embed_texts, get_vectorizer, vector_slug
from app.core.batching import batched
from app.core.errors import EngineError, ValidationError
from app.core.settings import load_settings
from app.redis import library as functions
from loaders import online_retail
from loaders.online_retail import SkipReport

DEFAULT_BATCH = 500
MAX_EXAMPLES = 20
ONLINE_RETAIL_SOURCE = "online-retail"
FEED_FIELDS = (
    "item_id", "title", "price", "stock", "description", "category", "brand", "tags", "url",
    "image_url", "popularity", "created_ms", "deleted",
)  # fmt: skip


# -- sources --------------------------------------------------------------------------------------


def synthetic_stock(item_id: str) -> int:
    """SYNTHETIC stock (the data has none): deterministic per id; 8% are 0, the rest 1..250."""
    h = int.from_bytes(hashlib.blake2b(item_id.encode(), digest_size=8).digest(), "little")
    if h % 100 < 8:
        return 0
    return 1 + (h >> 8) % 250


@dataclass(frozen=True)
class FeedRow:
    """One row of a source: a record to upsert, an id to delete, or an error."""

    line_no: int
    record: ProductRecord | None = None
    delete_id: str | None = None
    error: str | None = None  # "field: message"
    item_id: str | None = None  # when known, also for errors (protects it from deletion)


def online_retail_rows(path: str | Path, shift_ms: int = 0) -> tuple[list[FeedRow], SkipReport]:
    """The Online Retail catalog as feed rows. A product aggregates many CSV rows, so its
    errors name the item id (line_no 0). The category is left empty: `content_of` derives it
    from the title with `app.core.taxonomy.category_for` and marks it `derived`. `shift_ms`
    moves `created_ms` like a shifted replay moves its events (the demo's "ends now")."""
    scan = online_retail.scan(path)
    rows = []
    for code, p in scan.catalog.items():
        rec = ProductRecord(
            item_id=code,
            title=p.title,
            price=p.price,
            stock=synthetic_stock(code),
            stock_mode="initial",
            popularity=float(p.purchase_lines),
            created_ms=p.first_seen_ms + shift_ms,
            source=ONLINE_RETAIL_SOURCE,
            stock_source="synthetic",
        )
        rows.append(_checked(rec))
    return rows, scan.report


def _checked(rec: ProductRecord) -> FeedRow:
    try:
        validate_record(rec)
    except ValidationError as exc:
        where = f"item {rec.item_id}: " if not rec.line_no else ""
        return FeedRow(rec.line_no, error=f"{where}{exc.field}: {exc.message}", item_id=rec.item_id)
    return FeedRow(rec.line_no, record=rec, item_id=rec.item_id)


def _open_text(path: Path) -> TextIO:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def feed_format(path: Path) -> str:
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    if name.endswith(".csv"):
        return "csv"
    raise ValidationError("format", f"cannot tell the format of {path.name}: pass --format")


def _is_true(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "y")
    return bool(value) if isinstance(value, int) else False


def _string(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name)
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise ValidationError(name, "must be a string")
    return " ".join(str(value).split()) if name == "title" else str(value).strip()


def _number(obj: dict[str, Any], name: str, csv_mode: bool) -> float | None:
    value = obj.get(name)
    if value is None or (csv_mode and isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise ValidationError(name, "must be a number")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValidationError(name, f"must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValidationError(name, "must be a finite number")
    return number


def _integer(obj: dict[str, Any], name: str, csv_mode: bool) -> int | None:
    number = _number(obj, name, csv_mode)
    if number is None:
        return None
    if number != int(number):
        raise ValidationError(name, f"must be an integer, got {obj.get(name)!r}")
    return int(number)


def record_from(obj: dict[str, Any], line_no: int, source: str, csv_mode: bool) -> FeedRow:
    """One feed object (parsed JSON line or CSV row as a dict) -> FeedRow."""
    unknown = sorted(k for k in obj if k not in FEED_FIELDS)
    raw_id = obj.get("item_id")
    item_id = str(raw_id).strip() if isinstance(raw_id, str | int) else None
    try:
        if unknown:
            raise ValidationError(unknown[0], f"unknown field (allowed: {', '.join(FEED_FIELDS)})")
        if not item_id:
            raise ValidationError("item_id", "is required")
        if _is_true(obj.get("deleted", False)):
            validate_record(ProductRecord(item_id=item_id, title="x", price=1.0))
            return FeedRow(line_no, delete_id=item_id, item_id=item_id)
        price = _number(obj, "price", csv_mode)
        if price is None:
            raise ValidationError("price", "is required")
        stock = _integer(obj, "stock", csv_mode)
        tags_raw = obj.get("tags")
        if tags_raw is None or tags_raw == "":
            tags: tuple[str, ...] = ()
        elif isinstance(tags_raw, str):
            tags = tuple(t.strip() for t in tags_raw.split("|") if t.strip())
        elif isinstance(tags_raw, list) and all(isinstance(t, str) for t in tags_raw):
            tags = tuple(t.strip() for t in tags_raw if t.strip())
        else:
            raise ValidationError("tags", "must be a list of strings (CSV: a|b|c)")
        created = _integer(obj, "created_ms", csv_mode)
        rec = ProductRecord(
            item_id=item_id,
            title=_string(obj, "title"),
            price=price,
            stock=stock if stock is not None else 0,
            stock_mode="set" if stock is not None else "initial",
            description=_string(obj, "description"),
            category=_string(obj, "category"),
            brand=_string(obj, "brand"),
            tags=tags,
            url=_string(obj, "url"),
            image_url=_string(obj, "image_url"),
            popularity=_number(obj, "popularity", csv_mode) or 0.0,
            created_ms=created,
            source=source,
            stock_source="feed",
            line_no=line_no,
        )
        validate_record(rec)
    except ValidationError as exc:
        return FeedRow(line_no, error=f"{exc.field}: {exc.message}", item_id=item_id)
    return FeedRow(line_no, record=rec, item_id=item_id)


def feed_rows(path: str | Path, fmt: str | None = None, source: str = "feed") -> Iterator[FeedRow]:
    """Rows of a JSONL or CSV feed, in file order. Line numbers are 1-based physical lines
    (for CSV the header is line 1). A later row repeating an item_id is an error."""
    p = Path(path)
    kind = fmt or feed_format(p)
    seen: dict[str, int] = {}

    def dedup(row: FeedRow) -> FeedRow:
        key = row.item_id
        if row.error is None and key is not None:
            if key in seen:
                return FeedRow(
                    row.line_no, error=f"item_id: duplicate of line {seen[key]}", item_id=key
                )
            seen[key] = row.line_no
        return row

    with _open_text(p) as fh:
        if kind == "jsonl":
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    yield FeedRow(line_no, error=f"line: invalid JSON ({exc.msg})")
                    continue
                if not isinstance(obj, dict):
                    yield FeedRow(line_no, error="line: must be a JSON object")
                    continue
                yield dedup(record_from(obj, line_no, source, csv_mode=False))
        elif kind == "csv":
            reader = csv.reader(fh)
            try:
                header = [h.strip().lstrip("\ufeff") for h in next(reader)]
            except StopIteration:
                return
            missing = [c for c in ("item_id", "title", "price") if c not in header]
            if missing:
                raise ValidationError("header", f"missing column(s) {', '.join(missing)}")
            next_line = reader.line_num + 1
            for rec in reader:
                line_no, next_line = next_line, reader.line_num + 1
                if not rec or all(not c.strip() for c in rec):
                    continue
                if len(rec) != len(header):
                    yield FeedRow(
                        line_no, error=f"line: {len(rec)} fields, the header has {len(header)}"
                    )
                    continue
                obj = {k: v for k, v in zip(header, rec, strict=True) if v != "" or k == "stock"}
                yield dedup(record_from(obj, line_no, source, csv_mode=True))
        else:
            raise ValidationError("format", "must be jsonl or csv")


# -- loading --------------------------------------------------------------------------------------


@dataclass
class LoadReport:
    source: str
    read: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    rejected: int = 0
    rejected_examples: list[tuple[int, str]] = field(default_factory=list)
    price_refused: Counter[str] = field(default_factory=Counter)
    price_refused_examples: dict[str, list[str]] = field(default_factory=dict)
    skipped: SkipReport | None = None  # Online Retail: rows that are not products
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def written(self) -> int:
        return self.created + self.updated

    @property
    def products_per_s(self) -> float:
        done = self.created + self.updated + self.unchanged
        return done / self.seconds if self.seconds > 0 else 0.0

    def reject(self, line_no: int, reason: str) -> None:
        self.rejected += 1
        if len(self.rejected_examples) < MAX_EXAMPLES:
            self.rejected_examples.append((line_no, reason))

    def summary(self) -> str:
        lines = [
            f"catalog load ({self.source}): read {self.read:,}, created {self.created:,}, "
            f"updated {self.updated:,}, unchanged {self.unchanged:,}, deleted {self.deleted:,}, "
            f"rejected {self.rejected:,} in {self.seconds:.1f} s "
            f"({self.products_per_s:,.0f} products/s)"
        ]
        for line_no, reason in self.rejected_examples:
            lines.append(f"  rejected line {line_no}: {reason}")
        if self.rejected > len(self.rejected_examples):
            lines.append(f"  ... and {self.rejected - len(self.rejected_examples):,} more")
        for reason, n in sorted(self.price_refused.items()):
            ex = ", ".join(self.price_refused_examples.get(reason, []))
            lines.append(f"  price change refused ({reason}): {n:,} (e.g. {ex})")
        if self.skipped is not None:
            lines.append("  source rows not used: " + self.skipped.summary().replace("\n", "\n  "))
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


class Progress:
    """A carriage-return counter on a terminal; a plain line every 10 s otherwise."""

    def __init__(self, total: int | None, stream: TextIO, enabled: bool = True) -> None:
        self.total, self.stream, self.enabled = total, stream, enabled
        self.tty = enabled and stream.isatty()
        self.start = time.monotonic()
        self.last = 0.0

    def line(self, done: int) -> str:
        rate = done / max(time.monotonic() - self.start, 1e-9)
        if self.total:
            frac = min(done / self.total, 1.0)
            bar = "#" * int(30 * frac) + "-" * (30 - int(30 * frac))
            return f"[{bar}] {done:,}/{self.total:,} products {100 * frac:5.1f}% {rate:,.0f}/s"
        return f"{done:,} products {rate:,.0f}/s"

    def update(self, done: int, final: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not final and now - self.last < (0.1 if self.tty else 10.0):
            return
        self.last = now
        text = self.line(done)
        self.stream.write(("\r" + text + ("\n" if final else "")) if self.tty else text + "\n")
        self.stream.flush()


def load_rows(
    client: redis.Redis,
    cfg: CatalogConfig,
    ckeys: CatalogKeys,
    rows: Iterable[FeedRow],
    vectorizer: TextVectorizer,
    *,
    source: str,
    batch: int = DEFAULT_BATCH,
    delete_missing: bool = False,
    max_delete_fraction: float = 0.2,
    progress: bool = False,
    total: int | None = None,
    stream: TextIO | None = None,
) -> LoadReport:
    """Upsert/delete every row in pipelined batches; errors are counted, never raised.

    Per batch: (1) one pipeline reads each product's stored content hash, so unchanged
    products cost one JSON.GET and no embedding; (2) the rest are embedded and sent as
    `catalog_upsert` calls in one pipeline (the Function compares the hash again: safe
    against concurrent writers); (3) deletions are UNLINKed.
    """
    if batch < 1:
        raise ValueError("batch must be >= 1")
    meta = read_meta(client, ckeys)
    if meta is not None:
        check_compatible(meta, vectorizer)
    slug = vector_slug(vectorizer.model)
    report = LoadReport(source=source)
    bar = Progress(total, stream if stream is not None else sys.stderr, progress)
    seen_ids: set[str] = set()
    t0 = time.monotonic()
    for chunk in batched(rows, batch):
        report.read += len(chunk)
        todo: list[Pending] = []
        deletes: list[str] = []
        for row in chunk:
            if row.item_id:
                seen_ids.add(row.item_id)
            if row.error is not None:
                report.reject(row.line_no, row.error)
            elif row.delete_id is not None:
                deletes.append(row.delete_id)
            elif row.record is not None:
                content = content_of(row.record)
                digest = content_hash(content, row.record, vectorizer.model)
                todo.append((row.record, content, digest))
        changed = _changed(client, ckeys, todo, report) if todo else []
        if changed:
            _upsert(client, cfg, ckeys, changed, vectorizer, slug, report)
        if deletes:
            report.deleted += delete_items(client, ckeys, deletes)
        bar.update(report.read)
    if delete_missing:
        _delete_missing(client, ckeys, source, seen_ids, max_delete_fraction, report)
    report.seconds = time.monotonic() - t0
    bar.update(report.read, final=True)
    return report


Pending = tuple[ProductRecord, dict[str, Any], str]  # record, content, content hash


def _changed(
    client: redis.Redis, ckeys: CatalogKeys, todo: list[Pending], report: LoadReport
) -> list[Pending]:
    """The products whose stored content hash differs (one JSON.GET each, pipelined): the
    others cost no embedding and no write."""
    pipe = client.pipeline(transaction=False)
    for rec, _, _ in todo:
        redis_cmd(pipe, "JSON.GET", ckeys.doc(rec.item_id), "$.content_hash")
    changed = []
    for (rec, content, digest), raw in zip(todo, pipe.execute(), strict=True):
        if raw is not None and json_reply(raw) == [digest]:
            report.unchanged += 1
        else:
            changed.append((rec, content, digest))
    return changed


def _upsert(
    client: redis.Redis,
    cfg: CatalogConfig,
    ckeys: CatalogKeys,
    changed: list[Pending],
    vectorizer: TextVectorizer,
    slug: str,
    report: LoadReport,
) -> None:
    """Embed and send `catalog_upsert` calls in one pipeline; count each outcome."""
    vectors = embed_texts(vectorizer, [embedding_text(c) for _, c, _ in changed])
    pipe = client.pipeline(transaction=False)
    for (rec, content, digest), vec in zip(changed, vectors, strict=True):
        args = catalog_calls.catalog_upsert_args(
            cfg, ckeys, rec, content_json(content, slug, vec), digest
        )
        pipe.fcall("catalog_upsert", len(args[0]), *args[0], *args[1])
    replies = pipe.execute(raise_on_error=False)
    for (rec, _, _), reply in zip(changed, replies, strict=True):
        if isinstance(reply, Exception):
            report.reject(rec.line_no, f"{rec.item_id}: {reply}")
            continue
        result = catalog_calls.parse_upsert(reply)
        if result.status == "created":
            report.created += 1
        elif result.status == "updated":
            report.updated += 1
        else:
            report.unchanged += 1
        if result.price_status.startswith("refused:"):
            reason = result.price_status.split(":", 1)[1]
            report.price_refused[reason] += 1
            ex = report.price_refused_examples.setdefault(reason, [])
            if len(ex) < 5:
                ex.append(rec.item_id)


def _delete_missing(
    client: redis.Redis,
    ckeys: CatalogKeys,
    source: str,
    seen: set[str],
    max_fraction: float,
    report: LoadReport,
) -> None:
    """Delete this source's products that the feed no longer lists (rows with errors still
    count as listed). Refused when it would delete more than `max_fraction` of them."""
    existing: list[str] = []
    for keys in batched(scan_docs(client, ckeys), 1000):
        pipe = client.pipeline(transaction=False)
        for key in keys:
            redis_cmd(pipe, "JSON.GET", key, "$.source")
        for key, raw in zip(keys, pipe.execute(), strict=True):
            if raw is not None and json_reply(raw) == [source]:
                existing.append(ckeys.item_of(key))
    missing = [item for item in existing if item not in seen]
    if not missing:
        return
    if len(missing) > max_fraction * len(existing):
        report.warnings.append(
            f"--delete-missing would delete {len(missing):,} of {len(existing):,} products of "
            f"source {source!r} (> {max_fraction:.0%}): nothing deleted; raise "
            "--max-delete-fraction if that is intended"
        )
        return
    report.deleted += delete_items(client, ckeys, missing)


def load_online_retail(
    client: redis.Redis,
    cfg: CatalogConfig,
    ckeys: CatalogKeys,
    path: str | Path,
    vectorizer: TextVectorizer,
    *,
    shift_ms: int = 0,
    **kwargs: Any,
) -> LoadReport:
    rows, skipped = online_retail_rows(path, shift_ms)
    report = load_rows(
        client, cfg, ckeys, rows, vectorizer, source=ONLINE_RETAIL_SOURCE, total=len(rows),
        **kwargs,
    )  # fmt: skip
    report.skipped = skipped
    return report


def load_feed(
    client: redis.Redis,
    cfg: CatalogConfig,
    ckeys: CatalogKeys,
    path: str | Path,
    vectorizer: TextVectorizer,
    *,
    fmt: str | None = None,
    source: str = "feed",
    **kwargs: Any,
) -> LoadReport:
    return load_rows(
        client, cfg, ckeys, feed_rows(path, fmt, source), vectorizer, source=source, **kwargs
    )


# -- command line ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m loaders.catalog",
        description="Load products into the catalog (idempotent; creates the index if needed).",
    )
    add_arguments(parser)
    return parser


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The loader's arguments (shared with `python -m app.cli catalog load`)."""
    sub = parser.add_subparsers(dest="kind", required=True)
    p = sub.add_parser("online-retail", help="the Online Retail sample shipped in data/")
    p.add_argument("--path", type=Path, default=None, help="CSV(.gz) in the Online Retail layout")
    p = sub.add_parser("feed", help="a JSONL or CSV product feed (see docs/search.md)")
    p.add_argument("path", type=Path)
    p.add_argument("--format", choices=["jsonl", "csv"], default=None)
    p.add_argument("--source", default="feed", help="source name stored on each product")
    p.add_argument("--delete-missing", action="store_true",
                   help="delete this source's products the feed no longer lists")  # fmt: skip
    p.add_argument("--max-delete-fraction", type=float, default=0.2)
    for q in sub.choices.values():
        q.add_argument(
            "--redis-url", default=None,
            help="Redis Stack URL (default: $CATALOG_REDIS_URL, else $REDIS_URL)",
        )  # fmt: skip
        q.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
        q.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
        q.add_argument("--no-index", action="store_true", help="do not create the index")


def run(args: argparse.Namespace, url: str) -> int:
    """Load as `args` say into the server at `url`; prints the summary."""
    settings = load_settings()
    cfg = load_catalog_config()
    ckeys = CatalogKeys(cfg.key_prefix)
    vectorizer = get_vectorizer(cfg.vectorizer)
    if args.batch_size < 1:
        print("error: --batch-size must be >= 1", file=sys.stderr)
        return 2
    with redis.Redis.from_url(url) as client:
        functions.ensure_current(client, load_if_stale=True)
        if not args.no_index:
            print(create_index(client, ckeys, vectorizer).summary())
        common: dict[str, Any] = {"batch": args.batch_size, "progress": not args.no_progress}
        if args.kind == "online-retail":
            path = args.path or settings.sample_data
            if not Path(path).exists():
                print(f"error: no such file: {path}", file=sys.stderr)
                return 2
            report = load_online_retail(client, cfg, ckeys, path, vectorizer, **common)
        else:
            if not Path(args.path).exists():
                print(f"error: no such file: {args.path}", file=sys.stderr)
                return 2
            report = load_feed(
                client, cfg, ckeys, args.path, vectorizer, fmt=args.format, source=args.source,
                delete_missing=args.delete_missing, max_delete_fraction=args.max_delete_fraction,
                **common,
            )  # fmt: skip
    print(report.summary())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # The catalog's server: CATALOG_REDIS_URL (the search node of a cluster), else REDIS_URL.
    url = args.redis_url or load_settings().catalog_url
    if not url:
        print(
            "error: no Redis to load into: pass --redis-url redis://HOST:PORT or set REDIS_URL "
            "(or use `python -m app.cli catalog load ...`, which starts the embedded server)",
            file=sys.stderr,
        )
        return 2
    try:
        return run(args, url)
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
