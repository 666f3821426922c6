"""Command line: `python -m app.cli <command>` (also installed as `retail`).

Exit codes: 0 success, 1 runtime failure, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import secrets
import signal
import sys
from pathlib import Path

import redis
from starlette.datastructures import Secret

from app.cli.common import clients, cluster_for, redis_for, servers_for
from app.core import tokens
from app.core.errors import EngineError
from app.core.events import ID_RULE, IDENTITY_RE
from app.core.logs import configure_logging
from app.core.settings import Settings, load_settings
from app.redis import embedded as redis_stack
from app.redis import library as functions
from app.redis.connect import connect

log = logging.getLogger("retail.cli")


def _serve(settings: Settings, workers_note: bool = True) -> None:
    from hypercorn.asyncio import serve
    from hypercorn.config import Config as HyperConfig

    from app.api.app import create_app

    config = HyperConfig()
    config.bind = [f"{settings.host}:{settings.port}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # through our (JSON) handler
    app = create_app(settings)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]

    asyncio.run(run())


def cmd_redis(args: argparse.Namespace, settings: Settings) -> int:
    if settings.redis_url:
        print("REDIS_URL is set: nothing to start", file=sys.stderr)
        return 2
    if args.cluster:
        return _run_cluster(settings, args.cluster, args.replicas)
    with redis_for(settings, port=args.port, user="admin") as url:
        with redis.Redis.from_url(url) as client:
            lib = functions.load(client)
        print(f"Functions library {lib.name} {lib.version} loaded")
        print(f"connect with: redis-cli -u {url}   (or `python -m app.cli redis-cli -u {url}`)")
        print("Ctrl-C stops it")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


def _run_cluster(settings: Settings, masters: int, replicas: int) -> int:
    with cluster_for(settings, masters, replicas) as found, clients(found) as (client, catalog):
        lib = functions.ensure_everywhere(client, catalog, load_if_stale=True)
        print(f"Functions library {lib.name} {lib.version} on every primary and the search node")
        print(f"use it with:\n  export REDIS_URL={found.redis_url}\n"
              f"  export CATALOG_REDIS_URL={found.catalog_redis_url}")  # fmt: skip
        print("Ctrl-C stops every node")
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


def cmd_functions(args: argparse.Namespace, settings: Settings) -> int:
    """`load`: FUNCTION LOAD REPLACE on every primary (also: a master added to a cluster);
    `version`: each primary's live version against these sources (exit 1 when any differs)."""
    if not settings.redis_url:
        print("set REDIS_URL (the server or cluster to load the library into)", file=sys.stderr)
        return 2
    with connect(settings.redis_url) as client:
        redis_stack.probe(client)
        expected = functions.build_library().version
        if args.action == "load":
            lib = functions.load(client)
            print(f"loaded {lib.name} {lib.version}")
        stale = 0
        for node, live in functions.node_versions(client).items():
            print(f"{node}  live: {live or '(none)'}  expected: {expected}")
            stale += live != expected
        return 1 if stale else 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    settings = dataclasses.replace(
        settings, host=args.host or settings.host, port=args.port or settings.port
    )
    with servers_for(settings, cluster=args.cluster, replicas=args.replicas, user="app") as (
        found,
        _app,
    ):
        _serve(found)
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from loaders import replay

    with servers_for(settings) as (found, _app), clients(found) as (client, _):
        functions.ensure_current(client, load_if_stale=True)
        report = replay.replay(client, settings.engine, Path(args.file or settings.sample_data),
                               limit=args.limit, progress=True)  # fmt: skip
    print(report.summary())
    return 0


def cmd_workers(args: argparse.Namespace, settings: Settings) -> int:
    """Aggregate workers on their own (the app runs one in-process unless RETAIL_AGG_WORKERS=0)."""
    import signal
    import threading

    from app.engine import build_engine

    with redis_for(settings) as url, redis.Redis.from_url(url) as client:
        functions.ensure_current(client, load_if_stale=True)
        engine = build_engine(client, settings.engine)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        worker = engine.worker(args.worker, args.of)
        print(f"aggregate worker {args.worker} of {args.of}: {len(worker.assigned)} partitions",
              flush=True)  # fmt: skip
        try:
            worker.run(stop)
        except KeyboardInterrupt:
            stop.set()
        print(f"stopped after {worker.stats.entries:,} log entries", flush=True)
    return 0


def cmd_reset(args: argparse.Namespace, settings: Settings) -> int:
    """Delete every key under the prefix (to rebuild a data set made by an older layout)."""
    from app.ingest.layout import reset_prefix

    if not args.yes:
        print(f"this deletes every key under {settings.engine.key_prefix!r}: add --yes")
        return 2
    with redis_for(settings) as url, redis.Redis.from_url(url) as client:
        n = reset_prefix(client, settings.engine.key_prefix)
    print(f"deleted {n:,} keys under {settings.engine.key_prefix!r}; now replay or `make demo`")
    return 0


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from loaders import replay

    write_key = next(iter(settings.write_keys), None) or f"wk_demo_{secrets.token_hex(6)}"
    server_key = next(iter(settings.server_keys), None) or f"sk_demo_{secrets.token_urlsafe(18)}"
    admin_key = str(settings.admin_key) if settings.admin_key else secrets.token_urlsafe(24)
    identity_secret = (
        str(settings.identity_secret) if settings.identity_secret else secrets.token_urlsafe(32)
    )
    example_token = tokens.mint(identity_secret, "c17850", ttl_s=24 * 3600)
    with servers_for(settings, cluster=args.cluster, replicas=args.replicas) as (found, app_s):
        with clients(found) as (client, catalog):
            lib = functions.ensure_everywhere(client, catalog, load_if_stale=True)
            print(f"Functions library {lib.version} loaded")
            _load_catalog(catalog, settings)
            print(f"replaying the real Online Retail purchases from {settings.sample_data} ...")
            report = replay.replay(client, settings.engine, settings.sample_data,
                                   limit=args.limit, progress=True)  # fmt: skip
            print(report.summary())
            from loaders.train import train_online_retail

            print("training the item-item model on the real purchases ...")
            trained = train_online_retail(client, settings.engine, settings.sample_data,
                                          catalog_client=catalog)  # fmt: skip
            print(trained.summary())
            from app.cli.profiles import load_sample_profiles

            load_sample_profiles(client, settings)
        settings = dataclasses.replace(
            app_s, write_keys=frozenset({write_key}),
            server_keys=frozenset({server_key}), admin_key=Secret(admin_key),
            identity_secret=Secret(identity_secret),
        )  # fmt: skip
        print(_demo_banner(settings, server_key, example_token))
        _serve(settings)
    return 0


def _demo_banner(settings: Settings, server_key: str, example_token: str) -> str:
    """What `make demo` prints once the API is up: the session's keys and what to try."""
    base = f"http://{settings.host}:{settings.port}"
    write_key = next(iter(settings.write_keys))
    admin_key = str(settings.admin_key)
    return f"""
API on {base}  (Ctrl-C stops the app and Redis)
  public write key : {write_key}   (browsers: events for a user id carry its shopper token)
  secret server key: {server_key}   (backends, server SDKs: any shopper)
  secret admin key : {admin_key}   (shown once; set RETAIL_ADMIN_KEY to choose your own)

Try:
  curl {base}/health
  curl '{base}/v1/trending?type=purchase&k=5'
  curl '{base}/v1/search?q=heart+lantern&max_price=5&in_stock=true&k=5'
  curl '{base}/v1/items/85123A/similar?k=5'
  curl '{base}/v1/recommendations/c17850?k=5' -H 'X-Shopper-Token: {example_token}'
  open {base}/ (storefront demo) and {base}/dashboard (live metrics)
  curl -X POST {base}/v1/events -H 'X-Write-Key: {write_key}' \\
       -H 'content-type: application/json' -d '{{"event_id":"demo-1","type":"view",
       "user_id":"c17850","session_id":"s1","item_id":"85123A",
       "context":{{"shopper_token":"{example_token}"}}}}'
  curl {base}/v1/users/c17850/profile -H 'Authorization: Bearer {admin_key}'   (synced traits)
  (the token above is c17850's for 24 h, minted with the session's RETAIL_IDENTITY_SECRET;
   the storefront gets tokens for its shoppers from /v1/demo/token, as a retailer backend
   would hand them to its logged-in shoppers; events for a user id need one: docs/security.md)
  curl {base}/v1/users/c17850/session -H 'Authorization: Bearer {admin_key}'
  Segment / RudderStack server SDKs: host (data plane URL) {base}, write key {server_key}
  curl -X POST {base}/v1/track -u '{write_key}:' -H 'content-type: application/json' \\
       -d '{{"messageId":"demo-2","userId":"c17850","event":"Product Viewed",
       "properties":{{"product_id":"85123A"}},"context":{{"shopper_token":"{example_token}"}}}}'
  API contract: {base}/openapi.json, readable at {base}/docs
"""


def _load_catalog(client: redis.Redis, settings: Settings) -> None:
    """Search index + the real catalog (idempotent: unchanged products are not rewritten)."""
    from app.catalog.index import CatalogKeys, create_index, load_catalog_config
    from app.catalog.vectorizers import get_vectorizer
    from loaders.catalog import load_online_retail

    cfg = load_catalog_config()
    ckeys = CatalogKeys(cfg.key_prefix)
    vectorizer = get_vectorizer(cfg.vectorizer)
    print(create_index(client, ckeys, vectorizer).summary())
    print(f"loading the real catalog from {settings.sample_data} ...")
    report = load_online_retail(client, cfg, ckeys, settings.sample_data, vectorizer, progress=True)
    print(report.summary())


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    """Mint a shopper token (what a retailer's backend does; docs/security.md)."""
    if settings.identity_secret is None:
        print("set RETAIL_IDENTITY_SECRET (the secret shopper tokens are signed with)",
              file=sys.stderr)  # fmt: skip
        return 2
    if not IDENTITY_RE.match(args.user_id) or args.user_id.startswith("anon:"):
        print(f"user id {args.user_id!r}: {ID_RULE}", file=sys.stderr)
        return 2
    print(tokens.mint(str(settings.identity_secret), args.user_id, ttl_s=args.ttl))
    return 0


def cmd_redis_cli(args: argparse.Namespace, settings: Settings) -> int:
    return redis_stack.run_cli(args.rest, settings.data_dir / ".runtime")


def _cluster_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", type=int, default=0, metavar="N",
                   help="start a local Redis Cluster of N (>= 3) masters plus a search node "
                        "(var/cluster) instead of the single embedded server")  # fmt: skip
    p.add_argument("--replicas", type=int, default=0, help="replicas per master (--cluster)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retail", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="embedded Redis Stack + real sample data + API on :8000")
    p.add_argument("--limit", type=int, default=None, help="replay only the first N events")
    _cluster_args(p)
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("serve", help="serve the API (embedded Redis unless REDIS_URL is set)")
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000)")
    _cluster_args(p)
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("redis", help="run the embedded Redis Stack (or a local cluster) alone")
    p.add_argument("--port", type=int, default=6379)
    _cluster_args(p)
    p.set_defaults(fn=cmd_redis)

    p = sub.add_parser("functions", help="load or check the Functions library on every primary")
    p.add_argument("action", choices=["load", "version"])
    p.set_defaults(fn=cmd_functions)

    p = sub.add_parser("workers", help="aggregate workers: derive aggregates from the logs")
    p.add_argument("--worker", type=int, default=0, help="this worker's index (default 0)")
    p.add_argument("--of", type=int, default=1, help="number of workers (default 1)")
    p.set_defaults(fn=cmd_workers)

    p = sub.add_parser("reset", help="delete every key under the prefix (rebuild a data set)")
    p.add_argument("--yes", action="store_true", help="really delete")
    p.set_defaults(fn=cmd_reset)

    p = sub.add_parser("replay", help="replay the Online Retail purchases as events")
    p.add_argument("--file", default=None, help="CSV(.gz) in the Online Retail layout")
    p.add_argument("--limit", type=int, default=None)
    p.set_defaults(fn=cmd_replay)

    from app.cli.catalog import add_catalog_commands

    add_catalog_commands(sub)
    from app.cli.features import add_feature_commands

    add_feature_commands(sub)
    from app.cli.recs import add_recs_commands

    add_recs_commands(sub)
    from app.cli.profiles import add_profile_commands

    add_profile_commands(sub)

    p = sub.add_parser("token", help="mint a shopper token (needs RETAIL_IDENTITY_SECRET)")
    p.add_argument("user_id")
    p.add_argument("--ttl", type=int, default=tokens.DEFAULT_TTL_S, help="seconds (3600)")
    p.set_defaults(fn=cmd_token)

    p = sub.add_parser("redis-cli", help="the bundled redis-cli (with its OpenSSL 1.1 runtime)")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(fn=cmd_redis_cli)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = load_settings()
    configure_logging(json_lines=settings.log_json)
    try:
        return int(args.fn(args, settings))
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
