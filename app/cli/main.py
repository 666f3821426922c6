"""Command line: `python -m app.cli <command>` (also installed as `retail`).

Exit codes: 0 success, 1 runtime failure, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import signal
import sys
import threading
from pathlib import Path

import redis

from app.cli.common import (
    check_can_start,
    check_port_free,
    clients,
    cluster_for,
    redis_for,
    serve_api,
    servers_for,
)
from app.cli.demo import cmd_demo
from app.core import tokens
from app.core.errors import EngineError
from app.core.events import ID_RULE, IDENTITY_RE
from app.core.logs import configure_logging
from app.core.settings import Settings, load_settings
from app.redis import embedded as redis_stack
from app.redis import library as functions
from app.redis.connect import connect

log = logging.getLogger("retail.cli")


def cmd_redis(args: argparse.Namespace, settings: Settings) -> int:
    if settings.redis_url:
        print("REDIS_URL is set: nothing to start", file=sys.stderr)
        return 2
    if args.cluster:
        return _run_cluster(settings, args.cluster, args.replicas)
    check_port_free("127.0.0.1", args.port, "the embedded Redis")
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
    listener = check_can_start(settings)
    with servers_for(settings, cluster=args.cluster, replicas=args.replicas, user="app") as (
        found,
        _app,
    ):
        serve_api(found, listener)
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


class Terminated(Exception):
    """SIGTERM outside the server loop (while Redis starts or data loads)."""


def _on_sigterm(signum: int, frame: object) -> None:
    # Python's default for SIGTERM ends the process at once: no `finally`, so the embedded
    # Redis (its own session) kept running, holding the data folder. Unwind instead.
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = load_settings()
    configure_logging(json_lines=settings.log_json)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(args.fn(args, settings))
    except EngineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Terminated:
        return 143


if __name__ == "__main__":
    sys.exit(main())
