"""Export a point-in-time-correct training table (CSV) for (entity, timestamp, label) rows.

    python -m loaders.export_features --rows rows.csv --out train.csv [--entity user]
        [--names a,b,c] [--events events.jsonl] [--redis-url URL] [--features FILE]
    python -m loaders.export_features --dump-log events.jsonl [--redis-url URL]

Rows CSV (header required): `entity_id`, `ts` and optional `label` and `entity_type` columns.
`ts` is ms since the epoch or ISO 8601 (a time without a zone is UTC). The entity type comes
from `--entity` (default user) or the `entity_type` column (one type per export).

Each output row is `entity_type, entity_id, ts, label`, then one column per feature (empty =
null): the features' values as of `ts`, computed by `app.features.offline.OfflineStore` from
the events with ts before it only, by exactly the definitions the online path serves
(features/features.yaml). Events come from `--events` (JSONL: log payloads or API events) or
else from the engine's log Stream (`g:{g}:log`, REDIS_URL or --redis-url). The Stream keeps the
newest `log_maxlen` entries: archive it with `--dump-log` to build tables further back.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis

from app.core.errors import EngineError, ValidationError
from app.core.events import Event
from app.core.keys import Keys
from app.core.settings import load_settings
from app.features.offline import OfflineStore, events_from_jsonl, events_from_log, log_payloads
from app.features.spec import (
    ENTITY_TYPES,
    FeatureSet,
    check_entity_id,
    load_feature_set,
    resolve_names,
)
from app.redis.connect import connect


@dataclass(frozen=True)
class TrainingRow:
    entity_id: str
    ts: int
    label: str


@dataclass(frozen=True)
class ExportReport:
    rows: int
    events: int
    features: int
    seconds: float

    def summary(self, out: str) -> str:
        return (
            f"wrote {self.rows:,} rows x {self.features} features to {out} "
            f"({self.events:,} events, {self.seconds:.1f} s)"
        )


def parse_ts(raw: str, line: int) -> int:
    value = raw.strip()
    if value.isdigit():
        return int(value)
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError(f"rows line {line}.ts", f"not ms or ISO 8601: {raw!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp() * 1000)


def read_rows(path: str | Path, entity: str | None) -> tuple[str, list[TrainingRow]]:
    """(entity type, rows) from a rows CSV; see the module docstring."""
    rows: list[TrainingRow] = []
    types: set[str] = set()
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
        if "entity_id" not in header or "ts" not in header:
            raise ValidationError("rows", "the CSV needs entity_id and ts columns")
        for line, rec in enumerate(reader, start=2):
            if rec.get("entity_type"):
                types.add(rec["entity_type"])
            rows.append(
                TrainingRow(rec["entity_id"], parse_ts(rec["ts"], line), rec.get("label") or "")
            )
    if len(types) > 1:
        raise ValidationError("rows.entity_type", f"one entity type per export, got {types}")
    kind = entity or (types.pop() if types else "user")
    if types and entity and types != {entity}:
        raise ValidationError("rows.entity_type", f"the file says {types}, --entity {entity}")
    if kind not in ENTITY_TYPES:
        raise ValidationError("entity", f"must be one of {list(ENTITY_TYPES)}")
    for row in rows:
        check_entity_id(kind, row.entity_id)
    return kind, rows


def format_value(value: Any) -> str:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else str(value)


def export(
    fs: FeatureSet,
    events: Iterable[Event],
    entity: str,
    rows: Sequence[TrainingRow],
    out: str | Path,
    names: Sequence[str] | None = None,
) -> ExportReport:
    """Write the training table; returns what it did."""
    t0 = time.monotonic()
    wanted = resolve_names(fs, entity, names)
    event_list = list(events)
    store = OfflineStore(fs, event_list)
    with open(out, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["entity_type", "entity_id", "ts", "label", *wanted])
        for row in rows:
            values = store.row(entity, row.entity_id, row.ts, wanted)
            writer.writerow(
                [
                    entity,
                    row.entity_id,
                    row.ts,
                    row.label,
                    *(format_value(values[n]) for n in wanted),
                ]
            )
    return ExportReport(len(rows), len(event_list), len(wanted), time.monotonic() - t0)


def dump_log(client: redis.Redis, keys: Keys, out: str | Path) -> int:
    """Archive the log Stream's event payloads as JSONL (input for --events later)."""
    n = 0
    with open(out, "w", encoding="utf-8") as fh:
        for data in log_payloads(client, keys):
            fh.write(data + "\n")
            n += 1
    return n


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=Path, help="CSV with entity_id, ts[, label, entity_type]")
    parser.add_argument("--out", type=Path, help="training table to write (CSV)")
    parser.add_argument("--entity", choices=ENTITY_TYPES, default=None, help="entity type")
    parser.add_argument("--names", default=None, help="features (a,b,c); default: all of the type")
    parser.add_argument("--events", type=Path, default=None, help="JSONL events (default: the log)")
    parser.add_argument("--features", type=Path, default=None, help="definitions YAML")
    parser.add_argument("--redis-url", default=None, help="Redis for the log (default $REDIS_URL)")
    parser.add_argument("--dump-log", type=Path, default=None, help="write the log as JSONL, exit")


def run(args: argparse.Namespace) -> int:
    settings = load_settings()
    keys = settings.engine.keys()
    url = args.redis_url or settings.redis_url
    needs_redis = args.dump_log is not None or args.events is None
    if needs_redis and not url:
        print("error: reading the log needs --redis-url or REDIS_URL (or pass --events FILE)",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        if args.dump_log is not None:
            with connect(str(url)) as client:
                n = dump_log(client, keys, args.dump_log)
            print(f"wrote {n:,} events to {args.dump_log}")
            return 0
        if args.rows is None or args.out is None:
            print("error: --rows and --out are required (or --dump-log FILE)", file=sys.stderr)
            return 2
        fs = load_feature_set(args.features)
        entity, rows = read_rows(args.rows, args.entity)
        names = args.names.split(",") if args.names else None
        if args.events is not None:
            report = export(fs, events_from_jsonl(args.events), entity, rows, args.out, names)
        else:
            with connect(str(url)) as client:
                report = export(fs, events_from_log(client, keys), entity, rows, args.out, names)
    except (EngineError, OSError, redis.RedisError, json.JSONDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.summary(str(args.out)))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loaders.export_features",
        description="Point-in-time-correct training table from the feature definitions.",
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
