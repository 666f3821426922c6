"""The product catalog: key names, settings, the document shape, and the search index lifecycle.

Keys (all with the item's hash tag, so the catalog Functions touch one cluster slot):
  `<prefix>p:{<item>}`        JSON product document (the index's key prefix is `<prefix>p:`)
  `<prefix>i:{<item>}:price`  TimeSeries of accepted prices
  `<prefix>i:{<item>}:guard`  HASH of price guard settings
  `<prefix>idx:{products}:meta` HASH: which index version is live and how it was built

Index lifecycle: indexes are versioned (`<prefix>idx:products:v<N>`) and queries use the alias
`<prefix>idx:products`. `reindex` builds version N+1 next to the live one (RediSearch indexes
the existing documents in the background), waits until it is complete, then swaps the alias
and the meta hash in one MULTI/EXEC and drops version N: a query always finds an index.
A vectorizer change is a re-index too: vectors live under `$.vec.<vectorizer slug>`, so the
new vectors are written next to the old ones first and the old index keeps serving meanwhile.
See docs/search.md.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import redis
import yaml
from redisvl.index import SearchIndex
from redisvl.schema import IndexSchema
from starlette.config import Config

from app.catalog.vectorizers import (
    DEFAULT_VECTORIZER,
    TextVectorizer,
    dims_of,
    embed_texts,
    get_vectorizer,
    vector_slug,
)
from app.core.batching import batched
from app.core.errors import SearchIndexError, ValidationError
from app.core.events import ID_RE, ID_RULE
from app.core.keys import Keys, tag
from app.core.settings import ROOT
from app.core.taxonomy import SLUG_RE, category_for
from app.core.units import DAY_MS

SCHEMA_PATH = ROOT / "indexes" / "products.yaml"


# -- settings -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogConfig:
    """Search and price-guard tunables (environment: see `load_catalog_config`)."""

    key_prefix: str = "rt:"
    vectorizer: str = DEFAULT_VECTORIZER  # RETAIL_VECTORIZER
    schema_path: Path = SCHEMA_PATH
    ef_runtime: int = 128  # RETAIL_SEARCH_EF_RUNTIME: HNSW beam per query (recall vs latency)
    alpha: float = 0.7  # vector share of the hybrid score; 1 - alpha is the text share
    text_saturation: float = 4.0  # BM25 s -> s / (s + c * words): half credit at c per word
    affinity_weight: float = 0.2  # RETAIL_SEARCH_AFFINITY_WEIGHT: user re-rank boost
    candidates: int = 50  # KNN candidates per hybrid query (>= k; more when re-ranking)
    max_change_pct: float = 30.0  # RETAIL_PRICE_MAX_CHANGE_PCT: velocity limit per window
    price_window_ms: int = 3_600_000  # RETAIL_PRICE_WINDOW_S (seconds in the environment)
    price_retention_ms: int = 400 * DAY_MS  # price history kept 400 days
    history_n: int = 20  # price points shown by GET /v1/items/{id}
    meta_ttl_s: float = 1.0  # how long a query process trusts its copy of the index meta


def load_catalog_config(env_file: str | Path | None = ".env") -> CatalogConfig:
    config = Config(env_file if env_file and Path(env_file).exists() else None)
    return CatalogConfig(
        key_prefix=config("RETAIL_KEY_PREFIX", cast=str, default="rt:"),
        vectorizer=config("RETAIL_VECTORIZER", cast=str, default=DEFAULT_VECTORIZER),
        ef_runtime=config("RETAIL_SEARCH_EF_RUNTIME", cast=int, default=128),
        affinity_weight=config("RETAIL_SEARCH_AFFINITY_WEIGHT", cast=float, default=0.2),
        max_change_pct=config("RETAIL_PRICE_MAX_CHANGE_PCT", cast=float, default=30.0),
        price_window_ms=1000 * config("RETAIL_PRICE_WINDOW_S", cast=int, default=3600),
    )


# -- keys -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatalogKeys:
    """Catalog key and index names under one key prefix (same prefix as `app.core.keys.Keys`)."""

    prefix: str = "rt:"

    @property
    def doc_prefix(self) -> str:
        return f"{self.prefix}p:"

    def doc(self, item: str) -> str:
        return f"{self.doc_prefix}{tag(item)}"

    def price(self, item: str) -> str:
        return Keys(self.prefix).item(item, "price")

    def guard(self, item: str) -> str:
        return Keys(self.prefix).item(item, "guard")

    def item_keys(self, item: str) -> list[str]:
        """doc, guard, price: the KEYS of every catalog Function, in that order."""
        return [self.doc(item), self.guard(item), self.price(item)]

    @property
    def alias(self) -> str:
        return f"{self.prefix}idx:products"

    def index(self, version: int) -> str:
        return f"{self.alias}:v{version}"

    @property
    def meta(self) -> str:
        return f"{self.prefix}idx:{{products}}:meta"

    def item_of(self, doc_key: str | bytes) -> str:
        key = doc_key.decode() if isinstance(doc_key, bytes) else doc_key
        return key[len(self.doc_prefix) + 1 : -1]


# -- the product document -------------------------------------------------------------------

CURRENCY = "GBP"
MAX_TITLE = 300
MAX_DESCRIPTION = 5000
MAX_TAGS = 50
MAX_TEXT = 500  # brand, url, image_url, tag


@dataclass(frozen=True)
class ProductRecord:
    """One product as a loader hands it over (already validated, see `validate_record`).

    `category` empty means: derive it from the title (`app.core.taxonomy.category_for`).
    `stock_mode` 'set': the source manages stock (applied on every change); 'initial': only
    when the product is created (the Online Retail stock is synthetic, see loaders/catalog.py).
    """

    item_id: str
    title: str
    price: float
    stock: int = 0
    stock_mode: str = "set"
    description: str = ""
    category: str = ""
    brand: str = ""
    tags: tuple[str, ...] = ()
    url: str = ""
    image_url: str = ""
    popularity: float = 0.0
    created_ms: int | None = None
    source: str = "feed"
    stock_source: str = "feed"  # 'feed' | 'synthetic'
    line_no: int = 0


def validate_record(rec: ProductRecord) -> None:
    """Raise ValidationError(field, message) for the first bad field."""
    if not ID_RE.match(rec.item_id):
        raise ValidationError("item_id", ID_RULE)
    if not rec.title.strip() or len(rec.title) > MAX_TITLE:
        raise ValidationError("title", f"must be 1-{MAX_TITLE} characters")
    if not (0 < rec.price <= 1_000_000) or rec.price != rec.price:
        raise ValidationError("price", "must be a number > 0 and <= 1000000")
    if not (0 <= rec.stock <= 1_000_000_000):
        raise ValidationError("stock", "must be an integer between 0 and 1000000000")
    if rec.stock_mode not in ("set", "initial"):
        raise ValidationError("stock_mode", "must be 'set' or 'initial'")
    if len(rec.description) > MAX_DESCRIPTION:
        raise ValidationError("description", f"must be at most {MAX_DESCRIPTION} characters")
    if rec.category and not SLUG_RE.match(rec.category):
        raise ValidationError("category", "must be a slug: 1-32 of a-z 0-9 _ -")
    if len(rec.tags) > MAX_TAGS or any(not t or len(t) > MAX_TEXT for t in rec.tags):
        raise ValidationError("tags", f"at most {MAX_TAGS} non-empty tags of <= {MAX_TEXT} chars")
    for name in ("brand", "url", "image_url"):
        if len(getattr(rec, name)) > MAX_TEXT:
            raise ValidationError(name, f"must be at most {MAX_TEXT} characters")
    if not (0 <= rec.popularity < 1e15):
        raise ValidationError("popularity", "must be a number >= 0")
    if not SLUG_RE.match(rec.source):
        raise ValidationError("source", "must be a slug: 1-32 of a-z 0-9 _ -")


def content_of(rec: ProductRecord) -> dict[str, Any]:
    """The document fields a load owns (Lua adds content_hash, price, stock, in_stock and the
    timestamps, so they never travel twice)."""
    category = rec.category or category_for(rec.title)
    return {
        "item_id": rec.item_id,
        "title": rec.title,
        "description": rec.description,
        "category": category,
        "category_source": "feed" if rec.category else "derived",
        "brand": rec.brand,
        "tags": list(rec.tags),
        "currency": CURRENCY,
        "url": rec.url,
        "image_url": rec.image_url,
        "popularity": rec.popularity,
        "source": rec.source,
        "stock_source": rec.stock_source,
    }


def embedding_text(content: dict[str, Any]) -> str:
    """What the vectorizer reads for a product: title, description, brand, category, tags."""
    parts = [
        str(content.get("title", "")),
        str(content.get("description", "")),
        str(content.get("brand", "")),
        str(content.get("category", "")).replace("_", " ").replace("-", " "),
        " ".join(str(t) for t in content.get("tags", [])),
    ]
    return " ".join(p for p in parts if p)


def content_hash(content: dict[str, Any], rec: ProductRecord, vectorizer_model: str) -> str:
    """Hex digest of everything a load writes: unchanged products are not rewritten."""
    payload = {
        "content": content,
        "price": rec.price,
        "stock": rec.stock if rec.stock_mode == "set" else None,
        "vectorizer": vectorizer_model,
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def vector_json(vector: np.ndarray) -> list[float]:
    """Canonical float32 -> the shortest decimals that parse back to the same float32."""
    return [float(x) for x in np.round(vector.astype(np.float64), 6)]


def content_json(content: dict[str, Any], slug: str, vector: np.ndarray) -> str:
    doc = {**content, "vec": {slug: vector_json(vector)}}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False)


# -- index meta -----------------------------------------------------------------------------


@dataclass(frozen=True)
class IndexMeta:
    """The live index, as recorded in `<prefix>idx:{products}:meta` (a HASH)."""

    version: int
    index: str
    alias: str
    vectorizer: str
    dims: int
    vector_path: str
    schema_hash: str
    created_ms: int

    def to_hash(self) -> dict[str, str]:
        return {k: str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_hash(cls, raw: dict[Any, Any]) -> IndexMeta:
        d = {_s(k): _s(v) for k, v in raw.items()}
        return cls(
            version=int(d["version"]),
            index=d["index"],
            alias=d["alias"],
            vectorizer=d["vectorizer"],
            dims=int(d["dims"]),
            vector_path=d["vector_path"],
            schema_hash=d["schema_hash"],
            created_ms=int(d["created_ms"]),
        )


def redis_cmd(client: redis.Redis | redis.client.Pipeline, *args: Any) -> Any:
    """A module command (FT.*, JSON.*) through redis-py's untyped `execute_command`."""
    return client.execute_command(*args)  # type: ignore[no-untyped-call]


def json_reply(reply: Any) -> Any:
    """A JSON.GET reply as Python data: redis-py decodes it itself once `client.json()` has
    registered its response callbacks on the client, and returns the raw text otherwise."""
    if isinstance(reply, bytes | str):
        return json.loads(reply)
    return reply


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    if isinstance(value, dict):
        return {_decode(k): _decode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_decode(v) for v in value]
    return value


def read_meta(client: redis.Redis, ckeys: CatalogKeys) -> IndexMeta | None:
    raw = client.hgetall(ckeys.meta)
    if not raw:
        return None
    try:
        return IndexMeta.from_hash(raw)
    except (KeyError, ValueError) as exc:
        raise SearchIndexError(
            f"{ckeys.meta} is damaged ({exc}): run catalog index reindex"
        ) from exc


def check_compatible(meta: IndexMeta, vectorizer: TextVectorizer) -> None:
    """The index's vectors and the app's vectorizer must be the same kind of vector."""
    dims = dims_of(vectorizer)
    if meta.vectorizer != vectorizer.model or meta.dims != dims:
        raise SearchIndexError(
            f"index {meta.index} holds {meta.vectorizer} vectors ({meta.dims}-d) but this process "
            f"uses {vectorizer.model} ({dims}-d): set RETAIL_VECTORIZER={meta.vectorizer} or "
            f"re-index with `python -m app.cli catalog index reindex` under the new vectorizer"
        )


# -- schema ---------------------------------------------------------------------------------


def load_schema_spec(path: Path = SCHEMA_PATH) -> dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        spec = yaml.safe_load(fh)
    if not isinstance(spec, dict) or "fields" not in spec or "index" not in spec:
        raise SearchIndexError(f"{path} is not a redisvl index schema")
    return spec


def resolve_spec(
    spec: dict[str, Any], ckeys: CatalogKeys, version: int, vectorizer: TextVectorizer
) -> dict[str, Any]:
    """The YAML spec with this prefix's names and the vectorizer's path and dims filled in."""
    d = copy.deepcopy(spec)
    d["index"]["name"] = ckeys.index(version)
    d["index"]["prefix"] = ckeys.doc_prefix
    vectors = [f for f in d["fields"] if f.get("type") == "vector"]
    if len(vectors) != 1:
        raise SearchIndexError("the product schema must have exactly one vector field")
    vec = vectors[0]
    vec["path"] = f"$.vec.{vector_slug(vectorizer.model)}"
    vec.setdefault("attrs", {})["dims"] = dims_of(vectorizer)
    return d


def schema_hash(resolved: dict[str, Any]) -> str:
    """Digest of a resolved schema, names excluded (same fields + params = same hash)."""
    d = copy.deepcopy(resolved)
    d["index"].pop("name", None)
    text = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# -- RediSearch helpers ---------------------------------------------------------------------------


def is_missing_index(exc: BaseException) -> bool:
    """A RediSearch reply error that says the index (or its alias) does not exist."""
    text = str(exc).lower()
    return "unknown index" in text or "no such index" in text or "not found" in text


def ft_info(client: redis.Redis, name: str) -> dict[str, Any] | None:
    """FT.INFO as a str-keyed dict (RESP2 or RESP3), None when there is no such index."""
    try:
        raw = redis_cmd(client, "FT.INFO", name)
    except redis.ResponseError as exc:
        if is_missing_index(exc):
            return None
        raise
    value = _decode(raw)
    if isinstance(value, list):
        value = dict(zip(value[::2], value[1::2], strict=False))
    return dict(value)


def list_versions(client: redis.Redis, ckeys: CatalogKeys) -> list[tuple[int, str]]:
    """Every versioned product index of this prefix: [(version, name)], lowest first."""
    head = ckeys.alias + ":v"
    found = []
    for name in _decode(redis_cmd(client, "FT._LIST")):
        if name.startswith(head) and name[len(head) :].isdigit():
            found.append((int(name[len(head) :]), name))
    return sorted(found)


def wait_indexed(client: redis.Redis, name: str, timeout_s: float = 600.0) -> dict[str, Any]:
    """Poll FT.INFO until the background scan of existing documents is complete."""
    deadline = time.monotonic() + timeout_s
    while True:
        info = ft_info(client, name)
        if info is None:
            raise SearchIndexError(f"index {name} disappeared while indexing")
        done = float(info.get("percent_indexed", 1)) >= 1.0 and int(info.get("indexing", 0)) == 0
        if done:
            return info
        if time.monotonic() > deadline:
            raise SearchIndexError(f"index {name} not complete after {timeout_s:.0f} s")
        time.sleep(0.05)


def _create(
    client: redis.Redis,
    ckeys: CatalogKeys,
    spec: dict[str, Any],
    version: int,
    vectorizer: TextVectorizer,
) -> IndexMeta:
    resolved = resolve_spec(spec, ckeys, version, vectorizer)
    name = resolved["index"]["name"]
    if ft_info(client, name) is not None:
        raise SearchIndexError(f"index {name} already exists")
    SearchIndex(IndexSchema.from_dict(resolved), redis_client=client).create(overwrite=False)
    vec = next(f for f in resolved["fields"] if f.get("type") == "vector")
    return IndexMeta(
        version=version,
        index=name,
        alias=ckeys.alias,
        vectorizer=vectorizer.model,
        dims=dims_of(vectorizer),
        vector_path=vec["path"],
        schema_hash=schema_hash(resolved),
        created_ms=int(time.time() * 1000),
    )


def _swap(client: redis.Redis, ckeys: CatalogKeys, meta: IndexMeta) -> None:
    """Point the alias and the meta hash at `meta.index` in one transaction."""
    pipe = client.pipeline(transaction=True)
    redis_cmd(pipe, "FT.ALIASUPDATE", ckeys.alias, meta.index)
    pipe.delete(ckeys.meta)
    redis_cmd(pipe, "HSET", ckeys.meta, *[x for kv in meta.to_hash().items() for x in kv])
    pipe.execute()


def _next_version(client: redis.Redis, ckeys: CatalogKeys, meta: IndexMeta | None) -> int:
    versions = [v for v, _ in list_versions(client, ckeys)]
    return max([0, *versions, meta.version if meta else 0]) + 1


# -- lifecycle ----------------------------------------------------------------------------------


@dataclass
class IndexReport:
    action: str  # 'exists' | 'created' | 'reindexed'
    meta: IndexMeta
    previous: str | None = None
    dropped: str | None = None
    vectors_backfilled: int = 0
    vectors_removed: int = 0
    seconds: float = 0.0
    num_docs: int = 0
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        m = self.meta
        lines = [
            f"{self.action}: {m.index} (alias {m.alias}), {self.num_docs:,} documents, "
            f"vectorizer {m.vectorizer} ({m.dims}-d, {m.vector_path}), {self.seconds:.1f} s"
        ]
        if self.previous:
            lines.append(f"  previous index {self.previous}; dropped: {self.dropped or 'no'}")
        if self.vectors_backfilled or self.vectors_removed:
            lines.append(
                f"  vectors written {self.vectors_backfilled:,}, old vectors removed "
                f"{self.vectors_removed:,}"
            )
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def create_index(
    client: redis.Redis,
    ckeys: CatalogKeys,
    vectorizer: TextVectorizer,
    *,
    spec: dict[str, Any] | None = None,
    wait: bool = True,
    timeout_s: float = 600.0,
) -> IndexReport:
    """Create the first index version and its alias; an existing compatible index is kept."""
    start = time.monotonic()
    spec = spec if spec is not None else load_schema_spec()
    meta = read_meta(client, ckeys)
    if meta is not None:
        info = ft_info(client, meta.index)
        if info is not None:
            check_compatible(meta, vectorizer)
            report = IndexReport("exists", meta, num_docs=int(info.get("num_docs", 0)))
            wanted = schema_hash(resolve_spec(spec, ckeys, meta.version, vectorizer))
            if wanted != meta.schema_hash:
                report.warnings.append(
                    "the schema file differs from the live index: run `catalog index reindex`"
                )
            return report
    version = _next_version(client, ckeys, meta)
    new = _create(client, ckeys, spec, version, vectorizer)
    info = wait_indexed(client, new.index, timeout_s) if wait else ft_info(client, new.index) or {}
    _swap(client, ckeys, new)
    return IndexReport(
        "created", new, seconds=time.monotonic() - start, num_docs=int(info.get("num_docs", 0))
    )


def reindex(
    client: redis.Redis,
    ckeys: CatalogKeys,
    vectorizer: TextVectorizer,
    *,
    spec: dict[str, Any] | None = None,
    timeout_s: float = 3600.0,
    drop_old: bool = True,
    batch: int = 500,
    on_swap: Callable[[IndexMeta], None] | None = None,
) -> IndexReport:
    """Zero-downtime re-index: build v(N+1) beside v(N), wait, swap alias + meta, drop v(N).

    With a new vectorizer, its vectors are first written to every document under
    `$.vec.<new slug>` (the live index reads the old path, so it keeps answering), and the
    old vectors are removed after the swap. Run one re-index at a time per prefix.
    """
    start = time.monotonic()
    spec = spec if spec is not None else load_schema_spec()
    old = read_meta(client, ckeys)
    if old is None or ft_info(client, old.index) is None:
        report = create_index(client, ckeys, vectorizer, spec=spec, timeout_s=timeout_s)
        report.seconds = time.monotonic() - start
        return report
    new_path = f"$.vec.{vector_slug(vectorizer.model)}"
    backfilled = 0
    if new_path != old.vector_path or old.dims != dims_of(vectorizer):
        backfilled = backfill_vectors(client, ckeys, vectorizer, batch=batch)
    new = _create(client, ckeys, spec, _next_version(client, ckeys, old), vectorizer)
    info = wait_indexed(client, new.index, timeout_s)
    _swap(client, ckeys, new)
    if on_swap is not None:
        on_swap(new)
    dropped = None
    if drop_old:
        redis_cmd(client, "FT.DROPINDEX", old.index)
        dropped = old.index
    removed = 0
    if old.vector_path != new.vector_path:
        removed = remove_vectors(client, ckeys, old.vector_path, batch=batch)
    return IndexReport(
        "reindexed",
        new,
        previous=old.index,
        dropped=dropped,
        vectors_backfilled=backfilled,
        vectors_removed=removed,
        seconds=time.monotonic() - start,
        num_docs=int(info.get("num_docs", 0)),
    )


def scan_docs(client: redis.Redis, ckeys: CatalogKeys, count: int = 1000) -> Iterator[str]:
    for key in client.scan_iter(match=ckeys.doc_prefix + "{*}", count=count, _type="ReJSON-RL"):
        yield _s(key)


def backfill_vectors(
    client: redis.Redis, ckeys: CatalogKeys, vectorizer: TextVectorizer, *, batch: int = 500
) -> int:
    """Write `$.vec.<slug>` of `vectorizer` into every product document; returns the count."""
    slug = vector_slug(vectorizer.model)
    paths = ("$.title", "$.description", "$.brand", "$.category", "$.tags")
    n = 0
    for keys in batched(scan_docs(client, ckeys), batch):
        pipe = client.pipeline(transaction=False)
        for key in keys:
            redis_cmd(pipe, "JSON.GET", key, *paths)
        texts, present = [], []
        for key, raw in zip(keys, pipe.execute(), strict=True):
            if raw is None:
                continue  # deleted meanwhile
            got = json_reply(raw)
            content = {p[2:]: (got.get(p) or [""])[0] for p in paths}
            texts.append(embedding_text(content))
            present.append(key)
        matrix = embed_texts(vectorizer, texts)
        pipe = client.pipeline(transaction=False)
        for key, vec in zip(present, matrix, strict=True):
            redis_cmd(pipe, "JSON.SET", key, f"$.vec.{slug}", json.dumps(vector_json(vec)))
        pipe.execute()
        n += len(present)
    return n


def remove_vectors(client: redis.Redis, ckeys: CatalogKeys, path: str, *, batch: int = 500) -> int:
    n = 0
    for keys in batched(scan_docs(client, ckeys), batch):
        pipe = client.pipeline(transaction=False)
        for key in keys:
            redis_cmd(pipe, "JSON.DEL", key, path)
        n += sum(int(x or 0) for x in pipe.execute(raise_on_error=False) if isinstance(x, int))
    return n


def index_info(client: redis.Redis, ckeys: CatalogKeys) -> dict[str, Any]:
    """Meta, the live index's FT.INFO highlights, and any other versions of this prefix."""
    meta = read_meta(client, ckeys)
    out: dict[str, Any] = {
        "alias": ckeys.alias,
        "meta": asdict(meta) if meta else None,
        "versions": [name for _, name in list_versions(client, ckeys)],
    }
    info = ft_info(client, ckeys.alias)
    if info is not None:
        keep = (
            "index_name", "num_docs", "max_doc_id", "num_records", "indexing", "percent_indexed",
            "hash_indexing_failures", "vector_index_sz_mb", "inverted_sz_mb",
            "total_indexing_time", "number_of_uses",
        )  # fmt: skip
        out["live"] = {k: info[k] for k in keep if k in info}
    else:
        out["live"] = None
    return out


def drop_catalog(client: redis.Redis, ckeys: CatalogKeys, *, delete_docs: bool = False) -> int:
    """Drop the alias, every index version and the meta of this prefix (and, with
    `delete_docs`, every product document with its guard and price history). Returns the
    number of indexes dropped."""
    with contextlib.suppress(redis.ResponseError):  # no alias
        redis_cmd(client, "FT.ALIASDEL", ckeys.alias)
    versions = list_versions(client, ckeys)
    for _, name in versions:
        redis_cmd(client, "FT.DROPINDEX", name)
    client.delete(ckeys.meta)
    if delete_docs:
        for keys in batched(scan_docs(client, ckeys), 500):
            pipe = client.pipeline(transaction=False)
            for key in keys:
                pipe.unlink(*ckeys.item_keys(ckeys.item_of(key)))
            pipe.execute()
    return len(versions)


def delete_items(client: redis.Redis, ckeys: CatalogKeys, items: Sequence[str]) -> int:
    """UNLINK each item's document, guard and price history (one slot per item: atomic)."""
    pipe = client.pipeline(transaction=False)
    for item in items:
        pipe.unlink(*ckeys.item_keys(item))
    return sum(1 for n in pipe.execute() if int(n) > 0)


def default_vectorizer(cfg: CatalogConfig) -> TextVectorizer:
    return get_vectorizer(cfg.vectorizer)
