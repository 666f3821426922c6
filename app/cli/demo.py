"""`python -m app.cli demo`: the embedded Redis Stack, the real sample data, the API.

A re-run on the same data folder is quick and keeps working curls: the catalog load and the
replay skip what is already there (checkpoint and dedup), the model is reused when it was
trained from the same data and settings, and the generated keys live in the data folder
(`<RETAIL_DATA_DIR>/demo-keys.json`, never the repo) and are printed again.

The sample is from 2010-2011: the demo replays it shifted so that it ends now (catalog
`created_ms` too), so trending, recency and the new-arrival boost behave as they would live.
The offset is fixed at the first replay into a data folder (see `loaders.replay.shift_to_now`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import secrets
import time
from dataclasses import dataclass

import redis
from starlette.datastructures import Secret

from app.cli.common import check_can_start, clients, serve_api, servers_for
from app.core import tokens
from app.core.settings import Settings
from app.recs.keys import RecKeys
from app.recs.model import matching_model
from app.redis import library as functions

KEYS_FILE = "demo-keys.json"


@dataclass(frozen=True)
class DemoKeys:
    write_key: str
    server_key: str
    admin_key: str
    identity_secret: str
    origin: str  # where they come from, said when printed


def demo_keys(settings: Settings) -> DemoKeys:
    """The environment's keys where set; the others kept in the data folder (created once,
    mode 0600), so the curls printed by an earlier start still work."""
    path = settings.data_dir / KEYS_FILE
    stored: dict[str, str] = {}
    if path.exists():
        stored = json.loads(path.read_text())
    generated = {
        "write_key": stored.get("write_key") or f"wk_demo_{secrets.token_hex(6)}",
        "server_key": stored.get("server_key") or f"sk_demo_{secrets.token_urlsafe(18)}",
        "admin_key": stored.get("admin_key") or secrets.token_urlsafe(24),
        "identity_secret": stored.get("identity_secret") or secrets.token_urlsafe(32),
    }
    if generated != stored:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(generated, fh)
    env = {
        "write_key": next(iter(sorted(settings.write_keys)), None),
        "server_key": next(iter(sorted(settings.server_keys)), None),
        "admin_key": str(settings.admin_key) if settings.admin_key else None,
        "identity_secret": str(settings.identity_secret) if settings.identity_secret else None,
    }
    chosen = {k: env[k] or v for k, v in generated.items()}
    origin = f"kept in {path}" if stored else f"generated, kept in {path}"
    if all(env.values()):
        origin = "from the environment"
    return DemoKeys(origin=origin, **chosen)


def prepare(
    client: redis.Redis,
    settings: Settings,
    limit: int | None = None,
    catalog: redis.Redis | None = None,
) -> dict[str, str]:
    """Library, catalog, shifted replay, model (reused when it matches): what `serve` needs.
    Returns what was done, by step (the CLI prints it; tests read it)."""
    from loaders import replay
    from loaders.train import train_online_retail, training_fingerprint

    done: dict[str, str] = {}
    products = catalog or client  # the search node of a cluster holds the catalog
    lib = functions.ensure_everywhere(client, products, load_if_stale=True)
    print(f"Functions library {lib.version} loaded")
    shift = replay.shift_to_now(client, settings.engine, settings.sample_data)
    done["shift_ms"] = str(shift)
    ends = replay.last_event_ms(settings.sample_data) + shift
    age_h = (time.time() * 1000 - ends) / 3_600_000
    print(f"the sample data (2010-12 .. 2011-09) is replayed shifted by {shift / 86_400_000:,.1f}"
          f" days: it ends {age_h:,.1f} h ago")  # fmt: skip
    if age_h > settings.engine.trend_window_h:
        # Fixed at the first load; trending's window (and its buckets' TTL) has passed since.
        print(
            f"note: this data folder was loaded {age_h / 24:,.1f} days ago, beyond trending's "
            f"{settings.engine.trend_window_h} h window: `make clean` (or another "
            "RETAIL_DATA_DIR) reloads the sample ending now"
        )
    _load_catalog(products, settings, shift)
    print(f"replaying the real Online Retail purchases from {settings.sample_data} ...")
    report = replay.replay(client, settings.engine, settings.sample_data, limit=limit,
                           progress=True, shift_ms=shift)  # fmt: skip
    print(report.summary())
    done["replay"] = f"{report.accepted} accepted"
    fingerprint = training_fingerprint(settings.sample_data)
    if limit is not None:
        fingerprint += f":limit={limit}"
    reused = matching_model(client, RecKeys(settings.engine.key_prefix), fingerprint)
    if reused is not None:
        print(f"model {reused} matches the data and settings: reused (no retraining)")
        done["model"] = f"reused {reused}"
    else:
        print("training the item-item model on the real purchases ...")
        trained = train_online_retail(
            client, settings.engine, settings.sample_data, fingerprint=fingerprint,
            catalog_client=products,
        )  # fmt: skip
        print(trained.summary())
        done["model"] = f"trained {trained.version}"
    from app.cli.profiles import load_sample_profiles

    load_sample_profiles(client, settings)
    return done


def _load_catalog(client: redis.Redis, settings: Settings, shift_ms: int) -> None:
    """Search index + the real catalog (idempotent: unchanged products are not rewritten)."""
    from app.catalog.index import CatalogKeys, create_index, load_catalog_config
    from app.catalog.vectorizers import get_vectorizer
    from loaders.catalog import load_online_retail

    cfg = dataclasses.replace(load_catalog_config(), key_prefix=settings.engine.key_prefix)
    ckeys = CatalogKeys(cfg.key_prefix)
    vectorizer = get_vectorizer(cfg.vectorizer)
    print(create_index(client, ckeys, vectorizer).summary())
    print(f"loading the real catalog from {settings.sample_data} ...")
    report = load_online_retail(client, cfg, ckeys, settings.sample_data, vectorizer,
                                shift_ms=shift_ms, progress=True)  # fmt: skip
    print(report.summary())


def banner(base: str, keys: DemoKeys, example_token: str) -> str:
    """What `make demo` prints once the API is up: the keys and what to try."""
    w, a, sk = keys.write_key, keys.admin_key, keys.server_key
    return f"""
API on {base}  (Ctrl-C stops the app and Redis)
  public write key : {w}   (browsers: events for a user id carry its shopper token)
  secret server key: {sk}   (backends, server SDKs: any shopper)
  secret admin key : {a}
  ({keys.origin}; set RETAIL_WRITE_KEYS / RETAIL_SERVER_KEYS / RETAIL_ADMIN_KEY /
   RETAIL_IDENTITY_SECRET to choose your own)

Try:
  curl {base}/health
  curl '{base}/v1/trending?type=purchase&k=5'
  curl '{base}/v1/search?q=heart+lantern&max_price=5&in_stock=true&k=5'
  curl '{base}/v1/items/85123A/similar?k=5'
  curl '{base}/v1/recommendations/c17850?k=5' -H 'X-Shopper-Token: {example_token}'
  open {base}/ (storefront demo) and {base}/dashboard (live metrics)
  curl -X POST {base}/v1/events -H 'X-Write-Key: {w}' \\
       -H 'content-type: application/json' -d '{{"event_id":"demo-1","type":"view",
       "user_id":"c17850","session_id":"s1","item_id":"85123A",
       "context":{{"shopper_token":"{example_token}"}}}}'
  curl '{base}/v1/trending?type=view&k=5'
  curl {base}/v1/users/c17850/profile -H 'Authorization: Bearer {a}'   (synced traits)
  (the token above is c17850's for 24 h, minted with the RETAIL_IDENTITY_SECRET above;
   the storefront gets tokens for its shoppers from /v1/demo/token, as a retailer backend
   would hand them to its logged-in shoppers; events for a user id need one: docs/security.md)
  curl {base}/v1/users/c17850/session -H 'Authorization: Bearer {a}'
  curl {base}/v1/recommender -H 'Authorization: Bearer {a}'
  Segment / RudderStack server SDKs: host (data plane URL) {base}, write key {sk}
  curl -X POST {base}/v1/track -u '{w}:' -H 'content-type: application/json' \\
       -d '{{"messageId":"demo-2","userId":"c17850","event":"Product Viewed",
       "properties":{{"product_id":"85123A"}},"context":{{"shopper_token":"{example_token}"}}}}'
  API contract: {base}/openapi.json, readable at {base}/docs
"""


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    listener = check_can_start(settings)  # before anything is started or loaded
    keys = demo_keys(settings)
    example_token = tokens.mint(keys.identity_secret, "c17850", ttl_s=24 * 3600)
    with servers_for(settings, cluster=args.cluster, replicas=args.replicas) as (found, app_s):
        with clients(found) as (client, catalog):
            prepare(client, settings, args.limit, catalog)
        settings = dataclasses.replace(
            app_s, write_keys=frozenset({keys.write_key}),
            server_keys=frozenset({keys.server_key}), admin_key=Secret(keys.admin_key),
            identity_secret=Secret(keys.identity_secret),
        )  # fmt: skip
        base = f"http://{settings.host}:{settings.port}"
        print(banner(base, keys, example_token), flush=True)
        serve_api(settings, listener)
    return 0
