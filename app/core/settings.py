"""Settings, read once from the environment (and an optional `.env` file) via starlette Config."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from starlette.config import Config
from starlette.datastructures import Secret

from app.core.keys import DEFAULT_AGG_SHARDS, DEFAULT_PARTITIONS, Keys
from app.core.units import DAY_S, HOUR_MS

# Forward-decay epoch of the affinity scores (2010-01-01T00:00:00Z): before the sample data.
# Scores stay finite for ~900 half-lives after it (14 d half-life: until ~2044); see docs/keys.md.
AFF_EPOCH_MS = 1_262_304_000_000


@dataclass(frozen=True)
class EngineConfig:
    """Tunables the Functions receive in ARGV. Documented in docs/keys.md (bytes per user/item)."""

    key_prefix: str = "rt:"
    # Shopper partitions (unit of ordering, atomicity and distribution) and aggregate shards
    # (global aggregates split by item hash). Fixed when a deployment is created: the layout
    # key records them and the engine refuses a different value (app/ingest/layout.py).
    partitions: int = DEFAULT_PARTITIONS
    agg_shards: int = DEFAULT_AGG_SHARDS
    session_ttl_s: int = 30 * 60  # a session ends after 30 min without events (sliding)
    user_ttl_s: int = 90 * DAY_S  # affinities and seen-filter live 90 days after the last event
    profile_ttl_s: int = 365 * DAY_S  # traits live a year after the last identify
    dedup_window_ms: int = 24 * HOUR_MS  # event ids remembered 24 h (ingest time) ...
    dedup_cap: int = 10_000  # ... and at most 10,000 per user
    # Session caps: the session document is decoded and re-encoded by cjson on every write
    # (~13 us per KB, measured), so it holds what live ranking needs (recommendations read the
    # 8 newest items; the longer history is u:{id}:hist) and no more.
    recent_cap: int = 20
    cart_cap: int = 20
    searches_cap: int = 10
    aff_epoch_ms: int = AFF_EPOCH_MS
    aff_half_life_ms: int = 14 * 24 * HOUR_MS
    co_window_ms: int = 30 * 60 * 1000
    co_recent_n: int = 2  # pairs per event: each costs 2 ZINCRBY (bench/ingest.py)
    bloom_capacity: int = 1000
    bloom_error: float = 0.01
    # Affinity weight of one event per type (search carries no item; remove is not interest).
    weights: tuple[tuple[str, float], ...] = (
        ("view", 1.0), ("click", 2.0), ("add_to_cart", 4.0), ("purchase", 8.0),
    )  # fmt: skip
    # Per partition log: ~300 B an entry; 64 x 5,000 entries: ~100 MB at the cap. The aggregate
    # workers normally trail by well under a second; /health alerts at half the cap.
    log_maxlen: int = 5_000
    trend_ttl_s: int = 2 * DAY_S
    trend_window_h: int = 24
    trend_half_life_ms: int = 2 * HOUR_MS
    topk: int = 50
    cms_width: int = 4000
    item_ttl_s: int = 400 * DAY_S
    co_cap: int = 100
    raw_retention_ms: int = 8 * 24 * HOUR_MS
    hour_retention_ms: int = 400 * 24 * HOUR_MS
    # Work per Function call, so that no call holds the single Redis thread much longer than
    # ~1 ms (others interleave between calls; all calls of a batch still go out in one
    # pipeline). An `ingest_partition` call costs per shopper in it (reading and writing its
    # session, dedup set and feature states: ~150-250 us of server time) and per event
    # (~25-60 us, more with new user x category states; docs/features.md, "Write cost"):
    # at most `ack_work_per_call` units: one per event line (at least one per event: an
    # order of 30 products costs 30), `ack_shopper_work` per shopper and `ack_state_work` per
    # other feature state written (a user x category pair: ~30-50 us).
    ack_work_per_call: int = 16
    ack_shopper_work: int = 4
    ack_state_work: int = 1
    # The aggregate workers cut each partition's read into blocks of at most this many log
    # entries and send the blocks in rounds of at most `agg_events_per_call` events, one
    # `apply_blocks` call per target slot and round: a shard's call carries its share of the
    # round (1/agg_shards of the items, ~10 us per key; an item feature state ~50 us), the
    # `{g}` popularity call all of it (~2-4 us each). At 400 the busiest shards' calls (80-120
    # keys) reached 1.3-1.8 ms; 250 keeps them near 1 ms for ~3% more server time
    # (docs/features.md, "Write cost").
    agg_entries_per_block: int = 50
    agg_events_per_call: int = 250

    def keys(self) -> Keys:
        return Keys(self.key_prefix, self.partitions, self.agg_shards)

    def weights_arg(self) -> str:
        return ",".join(f"{name}={value:g}" for name, value in self.weights)


CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}


def cluster_url(url: str) -> str:
    """`redis://h:p/0` -> `redis+cluster://h:p` (a cluster has only database 0)."""
    parts = urlsplit(url)
    if parts.scheme in CLUSTER_SCHEMES:
        return url
    scheme = {"redis": "redis+cluster", "rediss": "rediss+cluster"}.get(parts.scheme)
    if scheme is None:
        raise ValueError(f"REDIS_CLUSTER needs a redis:// or rediss:// URL, got {url!r}")
    return urlunsplit((scheme, parts.netloc, "", parts.query, ""))


def is_cluster_url(url: str) -> bool:
    return urlsplit(url).scheme in CLUSTER_SCHEMES


@dataclass(frozen=True)
class Limits:
    """Abuse limits (docs/security.md). Token buckets per process; 0 turns a bucket off."""

    per_write_key_rps: float = 1000.0  # requests/s per write key (client or server) ...
    per_write_key_burst: float = 2000.0
    per_address_rps: float = 200.0  # ... and per client address, on every /v1 route
    per_address_burst: float = 400.0
    auth_failures: int = 5  # failed admin/server keys per address before slowing down ...
    auth_lockout_s: float = 1.0  # ... by this, doubling per further failure (cap 60 s)
    body_bytes: int = 1_000_000
    json_depth: int = 32
    number_digits: int = 20


@dataclass(frozen=True)
class Settings:
    # `redis+cluster://...` selects Redis Cluster (app/redis/connect.py); REDIS_CLUSTER=1 turns
    # a redis:// URL into that form here, so every entry point sees one setting.
    redis_url: str | None
    host: str
    port: int
    write_keys: frozenset[str]
    admin_key: Secret | None
    data_dir: Path
    sample_data: Path
    log_json: bool
    engine: EngineConfig = field(default_factory=EngineConfig)
    # Aggregate worker threads inside the app process (0: none; load_settings defaults to 1).
    agg_workers: int = 0
    # The catalog and its search index (CATALOG_REDIS_URL): on a cluster, a non-clustered Redis
    # Stack; None = the same server as REDIS_URL (single server).
    catalog_redis_url: str | None = None
    # RETAIL_ACK_REPLICAS > 0: POST /v1/events answers 200 only once that many replicas of every
    # primary hold the batch (WAIT; app/redis/replication.py), else 503 so the sender retries.
    ack_replicas: int = 0
    ack_timeout_ms: int = 100

    @property
    def catalog_url(self) -> str | None:
        """Where products live: CATALOG_REDIS_URL, else REDIS_URL (a cluster needs the former)."""
        return self.catalog_redis_url or self.redis_url

    # Who may write and read what (docs/security.md). `write_keys` are public client keys
    # (browsers, apps); `server_keys` secret backend keys; shopper tokens are signed with
    # `identity_secret`. `verify_identity=False` is for local experiments only.
    server_keys: frozenset[str] = frozenset()
    identity_secret: Secret | None = None
    verify_identity: bool = True
    limits: Limits = field(default_factory=Limits)
    # The app's Redis client: socket timeouts sized to the write budget (a hung Redis is
    # detected by the breaker's probe long before these expire).
    redis_timeout_s: float = 2.0
    redis_maxmemory: str = "2gb"  # the embedded server's maxmemory (policy: noeviction)


ROOT = Path(__file__).resolve().parents[2]


def load_settings(env_file: str | Path | None = ".env") -> Settings:
    """Read the environment once. Secrets are never defaulted: no admin key, no admin endpoints."""
    config = Config(env_file if env_file and Path(env_file).exists() else None)
    write_keys = _key_set(config("RETAIL_WRITE_KEYS", cast=str, default=""))
    server_keys = _key_set(config("RETAIL_SERVER_KEYS", cast=str, default=""))
    if write_keys & server_keys:
        raise ValueError("a key is in both RETAIL_WRITE_KEYS and RETAIL_SERVER_KEYS: keep "
                         "public client keys and secret server keys apart")  # fmt: skip
    admin = config("RETAIL_ADMIN_KEY", cast=Secret, default=None)
    redis_url = config("REDIS_URL", cast=str, default=None) or None
    if redis_url and config("REDIS_CLUSTER", cast=bool, default=False):
        redis_url = cluster_url(redis_url)
    identity = config("RETAIL_IDENTITY_SECRET", cast=Secret, default=None)
    ack_timeout_ms = config("RETAIL_ACK_TIMEOUT_MS", cast=int, default=100)
    redis_timeout_ms = config("RETAIL_REDIS_TIMEOUT_MS", cast=int, default=2000)
    if ack_timeout_ms >= redis_timeout_ms:
        # WAIT would outlast the socket: the client would time out first and report Redis
        # down ("unavailable") instead of the replicas being late ("not_replicated").
        raise ValueError(f"RETAIL_ACK_TIMEOUT_MS ({ack_timeout_ms}) must be below "
                         f"RETAIL_REDIS_TIMEOUT_MS ({redis_timeout_ms}): lower the first or "
                         "raise the second")  # fmt: skip
    return Settings(
        redis_url=redis_url,
        host=config("RETAIL_HOST", cast=str, default="127.0.0.1"),
        port=config("RETAIL_PORT", cast=int, default=8000),
        write_keys=write_keys,
        admin_key=admin if admin is not None and str(admin) else None,
        data_dir=Path(config("RETAIL_DATA_DIR", cast=str, default=str(ROOT / "var"))),
        sample_data=Path(
            config(
                "RETAIL_SAMPLE_DATA",
                cast=str,
                default=str(
                    ROOT / "data" / "online-retail" / "online-retail-2010-12_2011-09.csv.gz"
                ),
            )
        ),
        log_json=config("RETAIL_LOG_JSON", cast=bool, default=False),
        agg_workers=config("RETAIL_AGG_WORKERS", cast=int, default=1),
        engine=EngineConfig(
            key_prefix=config("RETAIL_KEY_PREFIX", cast=str, default="rt:"),
            partitions=config("RETAIL_PARTITIONS", cast=int, default=DEFAULT_PARTITIONS),
            agg_shards=config("RETAIL_AGG_SHARDS", cast=int, default=DEFAULT_AGG_SHARDS),
        ),
        catalog_redis_url=config("CATALOG_REDIS_URL", cast=str, default=None) or None,
        ack_replicas=config("RETAIL_ACK_REPLICAS", cast=int, default=0),
        ack_timeout_ms=ack_timeout_ms,
        server_keys=server_keys,
        identity_secret=identity if identity is not None and str(identity) else None,
        verify_identity=config("RETAIL_IDENTITY_VERIFICATION", cast=bool, default=True),
        limits=Limits(
            per_write_key_rps=config("RETAIL_RATE_PER_KEY", cast=float, default=1000.0),
            per_write_key_burst=2 * config("RETAIL_RATE_PER_KEY", cast=float, default=1000.0),
            per_address_rps=config("RETAIL_RATE_PER_ADDRESS", cast=float, default=200.0),
            per_address_burst=2 * config("RETAIL_RATE_PER_ADDRESS", cast=float, default=200.0),
            body_bytes=config("RETAIL_MAX_BODY_BYTES", cast=int, default=1_000_000),
        ),
        redis_timeout_s=redis_timeout_ms / 1000,
        redis_maxmemory=config("RETAIL_REDIS_MAXMEMORY", cast=str, default="2gb"),
    )


def _key_set(raw: str) -> frozenset[str]:
    keys = frozenset(k.strip() for k in raw.split(",") if k.strip())
    for key in keys:
        if not key.isascii() or not key.isprintable():
            raise ValueError("write and server keys must be printable ASCII")
    return keys
