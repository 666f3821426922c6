"""`python -m app.cli recs ...`: model training, the refresh worker, lists and experiments.

    recs train [--path FILE] [--until YYYY-MM-DD] [--no-content]   train + swap in a model
    recs model                                                      current model, versions
    recs worker [--debounce-ms 300]                                 the refresh worker
    recs show USER [--surface home|product|cart] [--item ID] [--k 10]
    recs experiment list | show ID | put ID FILE.json | delete ID

Like the other commands: REDIS_URL when set, else the embedded Redis Stack on var/redis.
`add_recs_commands(sub)` registers them on `app.cli`'s subparsers.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

import redis

from app.core.settings import Settings
from app.recs.config import WEIGHT_NAMES, load_rec_config
from app.recs.experiments import ExperimentStore, parse_experiment
from app.recs.keys import SURFACES, RecKeys
from app.recs.lists import RecRequest
from app.recs.model import TrainConfig, model_info
from app.recs.recommender import Recommender
from app.redis import library as functions


def cmd_recs(args: argparse.Namespace, settings: Settings) -> int:
    from app.cli.common import clients, servers_for

    engine = settings.engine
    keys = RecKeys(engine.key_prefix, engine.partitions, engine.agg_shards)
    with servers_for(settings) as (found, _app), clients(found) as (client, catalog):
        functions.ensure_current(client, load_if_stale=True)
        action = args.recs_command
        if action == "train":
            from loaders.train import date_ms, train_online_retail

            report = train_online_retail(
                client, engine, Path(args.path or settings.sample_data),
                TrainConfig(neighbours=args.neighbours),
                until_ms=date_ms(args.until) if args.until else None,
                content=not args.no_content, catalog_client=catalog,
            )  # fmt: skip
            print(report.summary())
        elif action == "model":
            print(json.dumps(model_info(client, keys), indent=2))
        elif action == "worker":
            from app.recs.worker import RecWorker

            rec = Recommender(client, engine, load_rec_config(key_prefix=engine.key_prefix))
            worker = RecWorker(client, rec, debounce_ms=args.debounce_ms)
            stop = threading.Event()
            try:
                worker.run(stop)
            except KeyboardInterrupt:
                stop.set()
            finally:
                rec.close()
        elif action == "show":
            rec = Recommender(client, engine, load_rec_config(key_prefix=engine.key_prefix))
            rec.refresh()
            resp = rec.serve(RecRequest(args.user, args.surface, args.item, args.k))
            print(json.dumps(rec.as_json(resp), indent=2))
            rec.close()
        else:
            return _experiment(args, client, keys)
    return 0


def _experiment(args: argparse.Namespace, client: redis.Redis, keys: RecKeys) -> int:
    store = ExperimentStore(client, keys)
    store.refresh()
    if args.exp_action == "list":
        print(json.dumps([e.as_json() for e in store.all()], indent=2))
        return 0
    if not args.id:
        print("an experiment id is needed")
        return 2
    if args.exp_action == "show":
        exp = store.get(args.id)
        if exp is None:
            print(f"no experiment {args.id}")
            return 1
        print(json.dumps(store.report(exp), indent=2))
    elif args.exp_action == "put":
        body: Any = json.loads(Path(args.file).read_text())
        exp = parse_experiment(args.id, body, WEIGHT_NAMES, now_ms=int(time.time() * 1000),
                               existing=store.get(args.id))  # fmt: skip
        store.put(exp)
        print(json.dumps(exp.as_json(), indent=2))
    elif args.exp_action == "delete":
        print("deleted" if store.delete(args.id) else f"no experiment {args.id}")
    return 0


def add_recs_commands(sub: Any) -> None:
    """Register `recs ...` on app.cli's subparsers."""
    p = sub.add_parser("recs", help="recommendations: train, model, worker, show, experiment")
    rsub = p.add_subparsers(dest="recs_command", required=True)
    q = rsub.add_parser("train", help="train the model on the Online Retail purchases")
    q.add_argument("--path", default=None)
    q.add_argument("--until", default=None, help="YYYY-MM-DD: only purchases before it")
    q.add_argument("--neighbours", type=int, default=TrainConfig.neighbours)
    q.add_argument("--no-content", action="store_true")
    q.set_defaults(fn=cmd_recs)
    q = rsub.add_parser("model", help="current model version and kept versions")
    q.set_defaults(fn=cmd_recs)
    q = rsub.add_parser("worker", help="refresh active shoppers' lists (consumer group)")
    q.add_argument("--debounce-ms", type=float, default=300.0)
    q.set_defaults(fn=cmd_recs)
    q = rsub.add_parser("show", help="a shopper's recommendations (JSON)")
    q.add_argument("user")
    q.add_argument("--surface", choices=SURFACES, default="home")
    q.add_argument("--item", default=None)
    q.add_argument("--k", type=int, default=10)
    q.set_defaults(fn=cmd_recs)
    q = rsub.add_parser("experiment", help="list | show ID | put ID FILE | delete ID")
    q.add_argument("exp_action", choices=["list", "show", "put", "delete"])
    q.add_argument("id", nargs="?", default=None)
    q.add_argument("file", nargs="?", default=None)
    q.set_defaults(fn=cmd_recs)
