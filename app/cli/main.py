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

from app.cli.common import check_can_start, check_port_free, redis_for, serve_api
from app.cli.demo import cmd_demo
from app.core import tokens
from app.core.errors import EngineError
from app.core.events import ID_RULE, IDENTITY_RE
from app.core.logs import configure_logging
from app.core.settings import Settings, load_settings
from app.redis import embedded as redis_stack
from app.redis import library as functions

log = logging.getLogger("retail.cli")


def cmd_redis(args: argparse.Namespace, settings: Settings) -> int:
    if settings.redis_url:
        print("REDIS_URL is set: nothing to start", file=sys.stderr)
        return 2
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


def cmd_functions(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.redis_url:
        print("set REDIS_URL (the server to load the library into)", file=sys.stderr)
        return 2
    with redis.Redis.from_url(settings.redis_url) as client:
        redis_stack.probe(client)
        if args.action == "load":
            lib = functions.load(client)
            print(f"loaded {lib.name} {lib.version}")
        else:
            expected = functions.build_library().version
            live = functions.loaded_version(client)
            print(f"live: {live or '(none)'}  expected: {expected}")
            return 0 if live == expected else 1
    return 0


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    settings = dataclasses.replace(
        settings, host=args.host or settings.host, port=args.port or settings.port
    )
    listener = check_can_start(settings)
    with redis_for(settings, user="app") as url:
        serve_api(dataclasses.replace(settings, redis_url=url), listener)
    return 0


def cmd_replay(args: argparse.Namespace, settings: Settings) -> int:
    from loaders import replay

    with redis_for(settings) as url, redis.Redis.from_url(url) as client:
        functions.ensure_current(client, load_if_stale=True)
        report = replay.replay(client, settings.engine, Path(args.file or settings.sample_data),
                               limit=args.limit, progress=True)  # fmt: skip
    print(report.summary())
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="retail", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="embedded Redis Stack + real sample data + API on :8000")
    p.add_argument("--limit", type=int, default=None, help="replay only the first N events")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("serve", help="serve the API (embedded Redis unless REDIS_URL is set)")
    p.add_argument("--host", default=None, help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default 8000)")
    p.set_defaults(fn=cmd_serve)

    p = sub.add_parser("redis", help="run the embedded Redis Stack on its own")
    p.add_argument("--port", type=int, default=6379)
    p.set_defaults(fn=cmd_redis)

    p = sub.add_parser("functions", help="load or check the Functions library (needs REDIS_URL)")
    p.add_argument("action", choices=["load", "version"])
    p.set_defaults(fn=cmd_functions)

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
