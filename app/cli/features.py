"""`python -m app.cli features ...`: the feature store from the command line.

    features list                                  the definitions (name, entity, granularity)
    features get ENTITY ID [ID ...] [--names a,b] [--as-of now|latest|MS]
    features export --rows rows.csv --out train.csv [...]   (see loaders/export_features.py)

Like the other commands: REDIS_URL when set, else the embedded Redis Stack on var/redis.
`add_feature_commands(sub)` registers them on `app.cli`'s subparsers.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from app.core.settings import Settings
from app.features.online import get_features, parse_as_of
from app.features.spec import ENTITY_TYPES, default_feature_set
from app.redis import library as functions
from app.redis.connect import is_cluster
from loaders import export_features


def cmd_features_list(args: argparse.Namespace, settings: Settings) -> int:
    fs = default_feature_set()
    print(f"feature set {fs.version} ({fs.source}); history {fs.history_ms // 3_600_000} h")
    for f in fs.features.values():
        print(f"  {f.name:<40} {f.entity:<14} {f.agg:<16} {f.granularity()}")
    return 0


def cmd_features_get(args: argparse.Namespace, settings: Settings) -> int:
    from app.cli.common import clients, servers_for

    fs = default_feature_set()
    names = args.names.split(",") if args.names else None
    with servers_for(settings) as (found, _app), clients(found) as (client, _):
        functions.ensure_current(client, load_if_stale=True)
        rows = get_features(
            client, fs, settings.engine.keys(), args.entity, args.ids, names,
            parse_as_of(args.as_of), cluster=is_cluster(client),
        )  # fmt: skip
    out = [{"id": r.entity_id, "as_of_ms": r.as_of_ms, "features": r.values} for r in rows]
    print(json.dumps(out, indent=2))
    return 0


def cmd_features_export(args: argparse.Namespace, settings: Settings) -> int:
    return export_features.run(args)


def add_feature_commands(sub: Any) -> None:
    """Register `features list|get|export` on app.cli's subparsers."""
    p = sub.add_parser("features", help="feature store: definitions, online values, export")
    fsub = p.add_subparsers(dest="features_command", required=True)

    q = fsub.add_parser("list", help="the feature definitions")
    q.set_defaults(fn=cmd_features_list)

    q = fsub.add_parser("get", help="online feature values (FCALL_RO features_get)")
    q.add_argument("entity", choices=ENTITY_TYPES)
    q.add_argument("ids", nargs="+")
    q.add_argument("--names", default=None, help="a,b,c (default: all of the entity type)")
    q.add_argument("--as-of", default="now", help="now | latest | ms since the epoch")
    q.set_defaults(fn=cmd_features_get)

    q = fsub.add_parser("export", help="point-in-time-correct training table (CSV)")
    export_features.add_arguments(q)
    q.set_defaults(fn=cmd_features_export)
