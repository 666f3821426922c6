"""Replay the Online Retail purchases through the engine's ingestion path.

    python -m loaders.replay [--limit N] [--redis-url URL] [--path FILE] [--batch-size N]

Each valid invoice line becomes one purchase event (see `loaders/online_retail.py`), is
validated by `app.core.events.parse_event` exactly like an API event, and is sent through
`app.ingest.ingestor.Ingestor` in batches. Event ids are deterministic (`or:<invoice>:<line>`), so a
re-run within the engine's dedup window (24 h of ingest time, `EngineConfig.dedup_window_ms`)
is a no-op: every event comes back as a duplicate. An interrupted replay can simply be run
again; what was already ingested is skipped by the same dedup.

Two passes over the file: the first builds the catalog (categories come from each product's
canonical title) and counts the events for the progress bar; the second streams the events.
A batch holds at most `batch_size` events and spans at most half the per-item series
retention (`EngineConfig.raw_retention_ms`), see `replay`. The file must be in time order (it
is: InvoiceDate never decreases).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import redis

from app.core.errors import EngineError, ValidationError
from app.core.events import Event, parse_event
from app.core.settings import EngineConfig, load_settings
from app.engine import build_engine
from app.ingest.ingestor import Ingestor
from app.redis import embedded as redis_stack
from app.redis import library as functions
from app.redis.connect import connect
from loaders import online_retail
from loaders.online_retail import SkipReport

DEFAULT_BATCH = 2000
CHECKPOINT_TTL_S = 400 * 86_400
TTY_REDRAW_S = 0.1  # redraw the bar at most this often on a terminal ...
LOG_EVERY_S = 10.0  # ... and print a plain progress line this often otherwise (CI logs)
BAR_WIDTH = 30


@dataclass
class ReplayReport:
    """What a replay did; `summary()` is the human-readable form the CLI prints."""

    path: str
    total: int  # events the replay was going to send (after `limit`)
    read: int = 0  # events read from the file so far
    sent: int = 0  # events sent to Redis (the ones parse_event accepted)
    accepted: int = 0
    duplicates: int = 0
    logged: int = 0  # entries appended to the partition logs (= accepted events)
    aggregated: int = 0  # log entries the aggregate workers applied during the replay
    batches: int = 0
    invalid: Counter[str] = field(default_factory=Counter)  # parse_event rejections, by field
    skipped: SkipReport = field(default_factory=SkipReport)  # rows that are not events
    products: int = 0
    resumed_from: int = 0  # events already replayed by an earlier run (checkpoint), skipped
    scan_seconds: float = 0.0  # first pass: catalog + event count
    seconds: float = 0.0  # second pass: parse, validate, ingest

    @property
    def events_per_s(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        lines = [
            f"replayed {self.path}",
            f"  events read {self.read:,} of {self.total:,} "
            f"(first {self.resumed_from:,} done by an earlier run), sent {self.sent:,} in "
            f"{self.batches:,} batches: "
            f"accepted {self.accepted:,}, duplicates {self.duplicates:,}, "
            f"logged {self.logged:,}, applied to aggregates {self.aggregated:,}",
            f"  {self.seconds:.1f} s, {self.events_per_s:,.0f} events/s "
            f"(+ {self.scan_seconds:.1f} s catalog scan, {self.products:,} products)",
        ]
        if self.invalid:
            parts = ", ".join(f"{k} {v:,}" for k, v in sorted(self.invalid.items()))
            lines.append(f"  rejected by validation: {parts}")
        lines.append("  rows not replayed: " + self.skipped.summary().replace("\n", "\n  "))
        return "\n".join(lines)


def checkpoint_key(cfg: EngineConfig, path: str | Path) -> str:
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]
    return f"{cfg.key_prefix}loader:replay:{digest}"


class Progress:
    """A carriage-return bar on a terminal; a plain line every LOG_EVERY_S otherwise."""

    def __init__(self, total: int, stream: TextIO, enabled: bool = True) -> None:
        self.total = total
        self.stream = stream
        self.enabled = enabled
        self.tty = enabled and stream.isatty()
        self.start = time.monotonic()
        self.last_draw = 0.0

    def line(self, done: int, now: float) -> str:
        elapsed = max(now - self.start, 1e-9)
        rate = done / elapsed
        frac = done / self.total if self.total else 1.0
        filled = int(BAR_WIDTH * min(frac, 1.0))
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        eta_s = f"{eta:,.0f}s" if eta != float("inf") else "?"
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        return (
            f"[{bar}] {done:,}/{self.total:,} events {100 * frac:5.1f}% "
            f"{rate:,.0f} ev/s ETA {eta_s}"
        )

    def update(self, done: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        every = TTY_REDRAW_S if self.tty else LOG_EVERY_S
        if now - self.last_draw < every:
            return
        self.last_draw = now
        if self.tty:
            self.stream.write("\r" + self.line(done, now))
        else:
            self.stream.write(self.line(done, now) + "\n")
        self.stream.flush()

    def finish(self, done: int) -> None:
        if not self.enabled:
            return
        text = self.line(done, time.monotonic())
        self.stream.write(("\r" + text + "\n") if self.tty else (text + "\n"))
        self.stream.flush()


def replay(
    client: redis.Redis,
    cfg: EngineConfig,
    path: str | Path,
    *,
    limit: int | None = None,
    batch_size: int = DEFAULT_BATCH,
    progress: bool = True,
    stream: TextIO | None = None,
    resume: bool = True,
    ingestor: Ingestor | None = None,
    drain: Callable[[], int] | None = None,
    shift_ms: int = 0,
) -> ReplayReport:
    """Send the file's purchase events (the first `limit` of them) through the Ingestor.

    A checkpoint (`<prefix>loader:replay:<sha256 of the file>`, the number of events read and
    fully ingested) makes a re-run skip what an earlier run finished, even after the 24 h
    dedup window; inside the window the per-event dedup makes overlaps harmless too.
    `shift_ms` is added to every event time (see `shift_to_now`).
    """
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if limit is not None and limit < 0:
        raise ValueError("limit must be >= 0")
    functions.ensure_current(client, load_if_stale=True)

    t0 = time.monotonic()
    scan = online_retail.scan(path)
    total = scan.events if limit is None else min(limit, scan.events)
    events, skipped = online_retail.purchase_events(path, catalog=scan.catalog)
    report = ReplayReport(
        path=str(path), total=total, skipped=skipped, products=len(scan.catalog),
        scan_seconds=time.monotonic() - t0,
    )  # fmt: skip

    if ingestor is None:  # the whole engine, as the HTTP API ingests
        engine = build_engine(client, cfg)
        ingestor, drain = engine.ingestor, engine.drain
    checkpoint = checkpoint_key(cfg, path)
    done_before = int(client.hget(checkpoint, "read") or 0) if resume else 0
    report.resumed_from = min(done_before, total)
    bar = Progress(total, stream if stream is not None else sys.stderr, progress)
    sender = BatchSender(client, cfg, ingestor, drain, report, checkpoint, bar, batch_size)
    # parse_event refuses events more than 5 min in the future; the data is 2010-2011.
    now_ms = int(time.time() * 1000)
    t1 = time.monotonic()
    # With a limit, stop right after the last wanted event (the skip report then covers the
    # rows read so far); without one, read the whole file so the skip report is complete.
    try:
        for taken, obj in enumerate(events if limit != 0 else (), start=1):
            report.read = taken
            if taken > done_before:
                if shift_ms:
                    obj["ts"] += shift_ms
                try:
                    sender.add(parse_event(obj, now_ms=now_ms))
                except ValidationError as exc:
                    report.invalid[exc.field] += 1
            if limit is not None and taken >= limit:
                break
        sender.flush()
    finally:
        events.close()
    report.seconds = time.monotonic() - t1
    bar.finish(report.read)
    return report


class BatchSender:
    """Batches parsed events into the Ingestor, drains the aggregates after each batch and
    moves the checkpoint past what is fully ingested."""

    def __init__(
        self,
        client: redis.Redis,
        cfg: EngineConfig,
        ingestor: Ingestor,
        drain: Callable[[], int] | None,
        report: ReplayReport,
        checkpoint: str,
        bar: Progress,
        batch_size: int,
    ) -> None:
        self.client, self.ingestor, self.drain = client, ingestor, drain
        self.report, self.checkpoint, self.bar = report, checkpoint, bar
        self.batch_size = batch_size
        self.batch: list[Event] = []
        # The Ingestor applies a batch's aggregates user by user, not in time order, and
        # RedisTimeSeries refuses a sample older than a series' retention (counted back from
        # its newest sample). Cutting batches at half the raw retention keeps every batch
        # applicable (the file is in time order; the 2010 Christmas break alone spans 15 days).
        self.span_ms = max(cfg.raw_retention_ms // 2, 1)

    def add(self, ev: Event) -> None:
        if self.batch and abs(ev.ts - self.batch[0].ts) > self.span_ms:
            # `ev` is read but not in this batch: the checkpoint must stop before it.
            self.flush(read=self.report.read - 1)
        self.batch.append(ev)
        if len(self.batch) >= self.batch_size:
            self.flush()

    def flush(self, read: int | None = None) -> None:
        """Send the batch (nothing when empty); then the checkpoint moves to `read` (default:
        every event read so far), the count of file events fully ingested."""
        if not self.batch:
            return
        report = self.report
        read = report.read if read is None else read
        result = self.ingestor.ingest(self.batch)
        report.sent += len(self.batch)
        report.accepted += result.accepted
        report.duplicates += result.duplicates
        report.logged += result.logged
        report.batches += 1
        if self.drain is not None:
            # Aggregates follow the log; applying them batch by batch keeps the workers'
            # lag (and the logs) short. With workers running elsewhere (the app), their
            # partitions are leased and this applies nothing: they do.
            report.aggregated += self.drain()
        self.batch.clear()
        self.client.hset(
            self.checkpoint, mapping={"read": read, "updated_ms": int(time.time() * 1000)}
        )
        self.client.expire(self.checkpoint, CHECKPOINT_TTL_S)
        self.bar.update(read)


def last_event_ms(path: str | Path) -> int:
    """The newest purchase event time of the file."""
    return online_retail.scan(path).last_event_ms


def shift_to_now(client: redis.Redis, cfg: EngineConfig, path: str | Path) -> int:
    """The offset (ms) that makes the file's replay end now, fixed at the first replay.

    The sample is from 2010-2011; replayed as is, trending ("now" = the newest event) empties
    at the first live event and the new-arrival boost never fires. Shifted, the data reads as
    the shop's recent past. The offset is kept in the file's checkpoint, so a re-run (resume,
    restart) replays onto the same timeline; it is a whole number of hours (the data's last
    hour becomes the current one, trending's hourly buckets line up as in the data).
    """
    checkpoint = checkpoint_key(cfg, path)
    stored = client.hget(checkpoint, "shift_ms")
    if stored is not None:
        return int(stored)
    if int(client.hget(checkpoint, "read") or 0) > 0:
        return 0  # an earlier unshifted replay of this file: stay on its timeline
    last = last_event_ms(path)
    now_ms = int(time.time() * 1000)
    hour_ms = 3_600_000
    # Whole hours, never past now (parse_event refuses events from the future).
    shift = max(0, (now_ms - last) // hour_ms * hour_ms)
    client.hset(checkpoint, "shift_ms", shift)
    client.expire(checkpoint, CHECKPOINT_TTL_S)
    return shift


def main(argv: Sequence[str] | None = None) -> int:
    settings = load_settings()
    parser = argparse.ArgumentParser(
        prog="python -m loaders.replay",
        description="Replay the Online Retail purchases into the engine (idempotent).",
    )
    parser.add_argument("--limit", type=int, default=None, help="replay only the first N events")
    parser.add_argument("--redis-url", default=None, help="Redis Stack URL (default: $REDIS_URL)")
    parser.add_argument(
        "--path", type=Path, default=settings.sample_data, help="CSV(.gz) file to replay"
    )
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    args = parser.parse_args(argv)

    url = args.redis_url or settings.redis_url  # settings read $REDIS_URL (and .env)
    if not url:
        print(
            "error: no Redis to replay into: pass --redis-url redis://HOST:PORT or set REDIS_URL "
            "(a Redis Stack >= 7.4 or Redis 8 server)",
            file=sys.stderr,
        )
        return 2
    if args.limit is not None and args.limit < 0:
        parser.error("--limit must be >= 0")
    if args.batch_size < 1:
        parser.error("--batch-size must be >= 1")
    if not Path(args.path).exists():
        print(f"error: no such file: {args.path}", file=sys.stderr)
        return 2

    client = connect(url)
    try:
        redis_stack.probe(client)
        report = replay(
            client, settings.engine, args.path, limit=args.limit,
            batch_size=args.batch_size, progress=not args.no_progress,
        )  # fmt: skip
    except (EngineError, redis.RedisError) as exc:
        print(f"\nerror: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted: run again to resume (ingested events are deduplicated)")
        return 130
    finally:
        client.close()
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
