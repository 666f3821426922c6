"""`python -m app.cli profiles load FILE`: warehouse profile sync (see loaders/profiles.py).

    profiles load FILE [--format csv|jsonl] [--id-column user_id] [--traits a,b,c]
                       [--mapping mapping.yaml] [--batch 500] [--dry-run]
                       [--url http://host:port --write-key KEY]

Without --url: REDIS_URL when set, else the embedded Redis Stack on var/redis, like the other
commands. `add_profile_commands(sub)` registers it on `app.cli`'s subparsers.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import redis

from app.core.errors import ValidationError
from app.core.settings import Settings
from app.engine import build_engine
from app.ingest.segment import load_tracking_config
from app.ingest.tracking import TrackingSink
from app.redis import library as functions
from app.redis.connect import connect
from loaders import profiles


def _mapping(args: argparse.Namespace) -> profiles.ColumnMap:
    if args.mapping and args.traits:
        raise ValidationError("--traits", "give either --traits or --mapping, not both")
    if args.mapping:
        return profiles.load_mapping(Path(args.mapping))
    traits = None
    if args.traits:
        names = [t.strip() for t in args.traits.split(",") if t.strip()]
        traits = {name: name for name in names}
    return profiles.ColumnMap(args.id_column, traits)


def cmd_profiles_load(args: argparse.Namespace, settings: Settings) -> int:
    from app.cli.common import redis_for

    path = Path(args.file)
    if not path.exists():
        raise ValidationError("FILE", f"{path} does not exist")
    mapping = _mapping(args)
    common = {"fmt": args.format, "batch_size": args.batch, "progress": True}
    if args.dry_run:
        report = profiles.sync(path, mapping, None, **common)
    elif args.url:
        # Profiles name known users: a backend job sends them with a server key (a public
        # client key would need each user's shopper token: docs/security.md).
        key = args.write_key or next(iter(sorted(settings.server_keys)), None)
        if not key:
            raise ValidationError("--write-key", "needed with --url (or set RETAIL_SERVER_KEYS)")
        report = profiles.sync(path, mapping, profiles.http_sender(args.url, key), **common)
    else:
        with redis_for(settings) as url, connect(url) as client:
            functions.ensure_current(client, load_if_stale=True)
            engine = build_engine(client, settings.engine)
            sink = TrackingSink(client, settings.engine, engine.ingestor, load_tracking_config())
            report = profiles.sync(path, mapping, profiles.sink_sender(sink.apply), **common)
    print(report.summary())
    return 0


def load_sample_profiles(client: redis.Redis, settings: Settings) -> None:
    """The demo's warehouse sync: the sample profiles (tier, country, price band, ...) as
    identify calls; a re-run finds them all duplicates."""
    engine = build_engine(client, settings.engine)
    sink = TrackingSink(client, settings.engine, engine.ingestor, load_tracking_config())
    print(f"syncing warehouse profiles from {profiles.SAMPLE.relative_to(profiles.ROOT)} ...")
    report = profiles.sync(profiles.SAMPLE, profiles.ColumnMap(), profiles.sink_sender(sink.apply),
                           batch_size=1000, progress=True)  # fmt: skip
    print(report.summary())


def add_profile_commands(sub: Any) -> None:
    p = sub.add_parser("profiles", help="warehouse profile sync: CSV / JSONL rows -> identify")
    psub = p.add_subparsers(dest="profiles_command", required=True)
    q = psub.add_parser("load", help="send each row as an identify call (traits)")
    q.add_argument("file", help="CSV or JSONL (optionally .gz); Parquet: export it first")
    q.add_argument("--format", choices=["csv", "jsonl"], default=None)
    q.add_argument("--id-column", default="user_id", help="the user id column (user_id)")
    q.add_argument("--traits", default=None, help="columns to send as traits (default: all)")
    q.add_argument("--mapping", default=None,
                   help="YAML: {id_column: ..., traits: {trait_name: column}}")  # fmt: skip
    q.add_argument("--batch", type=int, default=500, help="identify calls per batch (500)")
    q.add_argument("--dry-run", action="store_true", help="read and validate, send nothing")
    q.add_argument("--url", default=None, help="a running server (else straight to Redis)")
    q.add_argument("--write-key", default=None,
                   help="a server key, with --url (default: RETAIL_SERVER_KEYS)")  # fmt: skip
    q.set_defaults(fn=cmd_profiles_load)
