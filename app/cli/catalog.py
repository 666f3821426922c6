"""`python -m app.cli catalog ...`: index lifecycle and catalog loads.

    catalog index create     create the first index version + alias (no-op when it exists)
    catalog index info       meta, live index figures, other versions (JSON)
    catalog index reindex    build v(N+1), wait, swap the alias, drop v(N): zero downtime
    catalog index drop --yes drop alias, versions and meta (--delete-docs: products too)
    catalog load online-retail [--path FILE]
    catalog load feed FILE [--format jsonl|csv] [--source NAME] [--delete-missing]

Like the other commands: REDIS_URL when set, else the embedded Redis Stack on var/redis.
`add_catalog_commands(sub)` registers them on `app.cli`'s subparsers.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from app.catalog.index import (
    CatalogKeys,
    create_index,
    drop_catalog,
    index_info,
    load_catalog_config,
    reindex,
)
from app.catalog.vectorizers import get_vectorizer
from app.core.settings import Settings
from app.redis import library as functions
from loaders import catalog as catalog_loader


def cmd_catalog_index(args: argparse.Namespace, settings: Settings) -> int:
    from app.cli.common import clients, servers_for

    cfg = load_catalog_config()
    ckeys = CatalogKeys(settings.engine.key_prefix)
    if args.action == "drop" and not args.yes:
        print("catalog index drop removes the search index (and with --delete-docs the products):")
        print("add --yes to confirm")
        return 2
    with servers_for(settings) as (found, _app), clients(found) as (_, client):
        if args.action == "info":
            print(json.dumps(index_info(client, ckeys), indent=2, default=str))
            return 0
        if args.action == "drop":
            n = drop_catalog(client, ckeys, delete_docs=args.delete_docs)
            print(f"dropped {n} index version(s) and {ckeys.alias}")
            return 0
        vectorizer = get_vectorizer(cfg.vectorizer)
        functions.ensure_current(client, load_if_stale=True)
        if args.action == "create":
            print(create_index(client, ckeys, vectorizer, timeout_s=args.timeout).summary())
        else:
            report = reindex(client, ckeys, vectorizer, timeout_s=args.timeout,
                             drop_old=not args.keep_old)  # fmt: skip
            print(report.summary())
    return 0


def cmd_catalog_load(args: argparse.Namespace, settings: Settings) -> int:
    from app.cli.common import servers_for

    if args.redis_url:
        return catalog_loader.run(args, args.redis_url)
    with servers_for(settings) as (found, _app):
        assert found.catalog_url is not None
        return catalog_loader.run(args, found.catalog_url)


def add_catalog_commands(sub: Any) -> None:
    """Register `catalog index ...` and `catalog load ...` on app.cli's subparsers."""
    p = sub.add_parser("catalog", help="product catalog: search index lifecycle and loads")
    csub = p.add_subparsers(dest="catalog_command", required=True)

    q = csub.add_parser("index", help="create | info | reindex | drop the product search index")
    q.add_argument("action", choices=["create", "info", "reindex", "drop"])
    q.add_argument("--timeout", type=float, default=3600.0, help="max seconds to wait for it")
    q.add_argument("--keep-old", action="store_true", help="reindex: keep the previous version")
    q.add_argument("--delete-docs", action="store_true", help="drop: delete the products too")
    q.add_argument("--yes", action="store_true", help="drop: confirm")
    q.set_defaults(fn=cmd_catalog_index)

    q = csub.add_parser("load", help="load products (Online Retail sample or a JSONL/CSV feed)")
    catalog_loader.add_arguments(q)
    q.set_defaults(fn=cmd_catalog_load)
