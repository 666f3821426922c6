"""Product search: input validation, one RediSearch query per request, personal re-rank.

Hybrid search (`GET /v1/search`) is ONE `FT.AGGREGATE` on the index alias:

    (<filters> @title|description:(w1 | w2 | ...))
        =>[KNN $K @embedding $vector HYBRID_POLICY ADHOC_BF AS vector_distance]
    SCORER BM25STD ADDSCORES LOAD ... APPLY ... SORTBY @hybrid_score DESC MAX n

- Filters (category, price range, in-stock) are part of the query: RediSearch only ever
  considers documents that pass them. Nothing is filtered in Python.
- Candidates are the documents that pass the filters and contain at least one of the words
  or its singular/plural form (title or description; `word_forms`); among them the K (50)
  nearest vectors, computed exactly (HYBRID_POLICY ADHOC_BF: the candidates are few), are
  scored
      hybrid = alpha * vector + (1 - alpha) * text
      vector = max(0, 1 - cosine_distance)             (cosine similarity, clipped at 0)
      text   = bm25 / (bm25 + c * n_words)             (explicit SCORER BM25STD, title x2;
                                                        saturating 0..1, half credit when
                                                        BM25 averages c per query word)
  with alpha 0.7 and c 4 (CatalogConfig). Requiring a word keeps the candidate set small
  (measured at 100k items: p99 ~3-4 ms, against 10-20 ms for an optional text clause that
  scores every filtered document).
- When no document passing the filters has any of the words (a typo, a synonym), the same
  request falls back to a filtered KNN on the query vector (text score 0, `fallback: true`).
- With `user`, the top 3k candidates are re-ranked by the shopper's live affinities
  (`user_profile` Function, members `cat:<category>` and `price:<band>`):
      score = hybrid + w * (0.7 * cat_affinity + 0.3 * price_affinity),  w = 0.2
  where each affinity is the decayed score divided by the user's strongest of that kind.
  A `price_band` profile trait (warehouse profile sync, docs in README) counts half of the
  price-band preference (all of it for a shopper with no live affinities yet).

Query text: words are runs of letters and digits; every other character separates words,
so RediSearch syntax characters never reach the query (`t-light` is `t light`). Text that is
clearly query syntax (`@field:`, `=>`, `$param`, `[ ] { } |`), control characters, more than
200 characters or 16 words, or no word at all is refused with a 422 naming `q`.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis
from redis.commands.search.aggregation import Desc
from redisvl.exceptions import RedisSearchError
from redisvl.index import SearchIndex
from redisvl.query import VectorQuery
from redisvl.query.aggregate import AggregationQuery
from redisvl.query.filter import FilterExpression, Tag
from redisvl.schema import IndexSchema
from redisvl.utils.token_escaper import TokenEscaper

from app.catalog.index import (
    CatalogConfig,
    CatalogKeys,
    IndexMeta,
    check_compatible,
    is_missing_index,
    json_reply,
    load_schema_spec,
    read_meta,
    redis_cmd,
    resolve_spec,
)
from app.catalog.vectorizers import STOPWORDS, WORD_RE, TextVectorizer, embed_texts
from app.core.errors import SearchIndexError, ValidationError
from app.core.events import ID_RULE, IDENTITY_RE
from app.core.keys import Keys
from app.core.settings import EngineConfig
from app.core.taxonomy import SLUG_RE
from app.redis import calls

MAX_QUERY_CHARS = 200
MAX_WORDS = 16
MAX_WORD_CHARS = 64
MAX_K = 100
MAX_CANDIDATES = 200
MAX_PRICE = 1_000_000.0
PRICE_MEDIAN_TTL_S = 300.0
CATEGORY_SHARE = 0.7  # of the affinity boost; the rest is the price band
PRICE_BANDS = ("lt2", "2-5", "5-10", "10-25", "25+")  # price_band()'s values
TRAIT_PRICE_BAND = "price_band"  # the profile trait read by the re-rank
TRAIT_BAND_SHARE = 0.5  # of the price-band preference when the shopper has live affinities
RETURN_FIELDS = ("item_id", "title", "category", "price", "stock", "in_stock", "popularity")
SYNTAX_RE = re.compile(r"@\w+\s*:|=>|\$[A-Za-z_]|[\[\]{}|]")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_ESCAPER = TokenEscaper()


# -- request parsing (pure) ---------------------------------------------------------------------


@dataclass(frozen=True)
class Filters:
    categories: tuple[str, ...] = ()
    min_price: float | None = None
    max_price: float | None = None
    in_stock: bool | None = True  # True: only in stock (default), False: only out, None: any
    exclude_item: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "category": list(self.categories) or None,
            "min_price": self.min_price,
            "max_price": self.max_price,
            "in_stock": "any" if self.in_stock is None else self.in_stock,
        }


@dataclass(frozen=True)
class SearchRequest:
    q: str
    words: tuple[str, ...]
    filters: Filters
    k: int = 10
    user: str | None = None


def query_words(q: str | None) -> tuple[str, ...]:
    """The words of a shopper's query, or ValidationError('q', ...)."""
    if q is None or not q.strip():
        raise ValidationError("q", "is required: the words to search for")
    if len(q) > MAX_QUERY_CHARS:
        raise ValidationError("q", f"must be at most {MAX_QUERY_CHARS} characters")
    if CONTROL_RE.search(q):
        raise ValidationError("q", "must not contain control characters")
    if SYNTAX_RE.search(q):
        raise ValidationError(
            "q",
            "looks like query syntax (@field:, =>, $param, [ ] { } |): send plain words and use "
            "the category, min_price, max_price and in_stock parameters for filters",
        )
    found = [w.lower() for w in WORD_RE.findall(q)]
    words = tuple(dict.fromkeys(w for w in found if w not in STOPWORDS))
    if not found:
        raise ValidationError("q", "must contain at least one letter or digit")
    if not words:
        raise ValidationError("q", "has only stop words (the, of, and, ...)")
    if len(words) > MAX_WORDS:
        raise ValidationError("q", f"must have at most {MAX_WORDS} words")
    if any(len(w) > MAX_WORD_CHARS for w in words):
        raise ValidationError("q", f"words must be at most {MAX_WORD_CHARS} characters")
    return words


def _price(params: Mapping[str, str], name: str) -> float | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise ValidationError(name, "must be a number") from None
    if not math.isfinite(value) or not 0 <= value <= MAX_PRICE:
        raise ValidationError(name, f"must be between 0 and {MAX_PRICE:.0f}")
    return value


def int_param(params: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    """An integer query parameter in [lo, hi]; missing or empty -> default; else 422."""
    raw = params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValidationError(name, "must be an integer") from None
    if not lo <= value <= hi:
        raise ValidationError(name, f"must be between {lo} and {hi}")
    return value


def parse_filters(params: Mapping[str, str]) -> Filters:
    cats: tuple[str, ...] = ()
    raw_cat = params.get("category")
    if raw_cat:
        cats = tuple(dict.fromkeys(c.strip() for c in raw_cat.split(",") if c.strip()))
        bad = [c for c in cats if not SLUG_RE.match(c)]
        if bad or not cats or len(cats) > 20:
            raise ValidationError("category", "must be 1-20 comma-separated slugs (a-z 0-9 _ -)")
    lo, hi = _price(params, "min_price"), _price(params, "max_price")
    if lo is not None and hi is not None and lo > hi:
        raise ValidationError("min_price", "must not be above max_price")
    raw_stock = (params.get("in_stock") or "true").lower()
    stock_map: dict[str, bool | None] = {
        "true": True, "1": True, "yes": True, "false": False, "0": False, "no": False,
        "any": None, "all": None,
    }  # fmt: skip
    if raw_stock not in stock_map:
        raise ValidationError("in_stock", "must be true (default), false or any")
    return Filters(cats, lo, hi, stock_map[raw_stock])


def parse_search(params: Mapping[str, str]) -> SearchRequest:
    words = query_words(params.get("q"))
    filters = parse_filters(params)
    k = int_param(params, "k", 10, 1, MAX_K)
    user = params.get("user") or None
    if user is not None and not IDENTITY_RE.match(user):
        raise ValidationError("user", ID_RULE)
    return SearchRequest(str(params.get("q")), words, filters, k, user)


def parse_similar(params: Mapping[str, str]) -> tuple[Filters, int]:
    return parse_filters(params), int_param(params, "k", 10, 1, MAX_K)


# -- query building (pure) ----------------------------------------------------------------------


def _num(value: float) -> str:
    return repr(float(value))


def price_clauses(
    lo: float | None, hi: float | None, median: float | None
) -> list[FilterExpression]:
    """The exact price range, in the form RediSearch evaluates faster.

    A numeric range is a union of range-tree leaves, and intersecting with a union of many
    leaves is slow (measured at 100k items: `@price:[-inf 10]` costs ~3 ms more than its
    complement). So a bound on the wide side of the median price is written as the negation
    of the narrow complement: `price <= 10` -> `-@price:[(10 +inf]`. Same result for every
    document that has a price (every product document has one: both write paths set it).
    `median` None: plain ranges.
    """
    wide_hi = hi is not None and median is not None and hi >= median
    wide_lo = lo is not None and median is not None and lo <= median
    if lo is not None and hi is not None and not (wide_lo and wide_hi):
        return [FilterExpression(f"@price:[{_num(lo)} {_num(hi)}]")]
    out = []
    if lo is not None:
        out.append(FilterExpression(
            f"-@price:[-inf ({_num(lo)}]" if wide_lo else f"@price:[{_num(lo)} +inf]"
        ))  # fmt: skip
    if hi is not None:
        out.append(FilterExpression(
            f"-@price:[({_num(hi)} +inf]" if wide_hi else f"@price:[-inf {_num(hi)}]"
        ))  # fmt: skip
    return out


def filter_expression(f: Filters, price_median: float | None = None) -> FilterExpression | None:
    """All filters as one RediSearch expression (tag values escaped by redisvl)."""
    parts: list[FilterExpression] = []
    if f.categories:
        parts.append(Tag("category") == list(f.categories))
    parts += price_clauses(f.min_price, f.max_price, price_median)
    if f.in_stock is True:
        # The out-of-stock set is the small one: exclude it rather than intersect the rest.
        parts.append(FilterExpression("-@in_stock:{false}"))
    elif f.in_stock is False:
        parts.append(Tag("in_stock") == "false")
    if f.exclude_item is not None:
        parts.append(Tag("item_id") != f.exclude_item)
    if not parts:
        return None
    expr = parts[0]
    for p in parts[1:]:
        expr = expr & p
    return expr


def word_forms(word: str) -> list[str]:
    """The word with its plural / singular forms (`cake` -> cake, cakes; `doilies` -> doilies,
    doily). RediSearch 2.10 does not stem-expand the pre-filter of a KNN query (plain
    FT.SEARCH does), so the hybrid query lists the forms itself."""
    forms = {word}
    sibilant = ("s", "x", "z", "ch", "sh")
    if len(word) > 2 and word.isalpha():
        if word.endswith("ies") and len(word) > 4:
            forms.add(word[:-3] + "y")  # doilies -> doily
        elif word.endswith("es") and word[:-2].endswith(sibilant):
            forms.add(word[:-2])  # boxes -> box, glasses -> glass
        elif word.endswith("s") and not word.endswith("ss"):
            forms.add(word[:-1])  # cakes -> cake
        elif word.endswith(sibilant):
            forms.add(word + "es")  # box -> boxes
        elif word.endswith("y") and word[-2] not in "aeiou":
            forms.add(word[:-1] + "ies")  # doily -> doilies
        else:
            forms.add(word + "s")  # cake -> cakes
    return sorted(forms)


def text_clause(words: Sequence[str]) -> str:
    """`@title|description:(w1 | w1s | w2 ...)`: documents with at least one of the words."""
    terms = dict.fromkeys(f for w in words for f in word_forms(w))
    return "@title|description:(" + " | ".join(_ESCAPER.escape(t) for t in terms) + ")"


def hybrid_query_string(words: Sequence[str], filters: FilterExpression | None) -> str:
    """`(<filters> @title|description:(w1|w2))=>[KNN $K ... HYBRID_POLICY ADHOC_BF ...]`.

    ADHOC_BF: exact distances over exactly the candidates (filters + one of the words),
    which are few. RediSearch's BATCHES policy walks the HNSW graph in batches and can run
    dry before finding every candidate (seen: 89 of 101), returning an incomplete list.
    """
    text = text_clause(words)
    pre = f"{filters} {text}" if filters is not None else text
    return f"({pre})=>[KNN $K @embedding $vector HYBRID_POLICY ADHOC_BF AS vector_distance]"


class HybridProductQuery(AggregationQuery):  # type: ignore[misc]
    """The hybrid FT.AGGREGATE (a redisvl AggregationQuery, run by `SearchIndex.query`)."""

    def __init__(
        self,
        words: Sequence[str],
        vector: bytes,
        filters: FilterExpression | None,
        *,
        candidates: int,
        keep: int,
        alpha: float,
        text_saturation: float,
    ) -> None:
        super().__init__(hybrid_query_string(words, filters))
        self.scorer("BM25STD")
        self.add_scores()
        # Cosine similarity clipped at 0: max(0, 1 - d) written with abs() (APPLY has no max).
        self.apply(vector_similarity="(1 - @vector_distance + abs(1 - @vector_distance)) / 2")
        self.apply(bm25="@__score")
        c = float(text_saturation) * max(len(words), 1)
        self.apply(text_score=f"@__score / (@__score + {c!r})")
        self.apply(
            hybrid_score=f"{float(alpha)!r} * @vector_similarity + "
            f"{float(1 - alpha)!r} * @text_score"
        )
        self.sort_by(Desc("@hybrid_score"), max=keep)
        # LOAD after SORTBY ... MAX: the product fields are read for the kept rows only, not
        # for every KNN candidate (-0.35 ms p50 at 100k). redis-py's `load()` always emits
        # LOAD first, so the step goes into the plan directly.
        self._aggregateplan.extend(["LOAD", str(len(RETURN_FIELDS)),
                                    *[f"@{name}" for name in RETURN_FIELDS]])  # fmt: skip
        self.dialect(2)
        self._params: dict[str, Any] = {"vector": vector, "K": candidates}

    @property
    def params(self) -> dict[str, Any]:
        return self._params


# -- results and re-rank ----------------------------------------------------------------------


@dataclass
class Hit:
    item_id: str
    title: str
    category: str
    price: float
    stock: int
    in_stock: bool
    popularity: float
    score: float
    components: dict[str, float] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {
            "item_id": self.item_id, "title": self.title, "category": self.category,
            "price": self.price, "stock": self.stock, "in_stock": self.in_stock,
            "score": round(self.score, 6),
            "components": {k: round(v, 6) for k, v in self.components.items()},
        }  # fmt: skip


def _f(row: Mapping[str, Any], name: str, default: float = 0.0) -> float:
    value = row.get(name)
    if value is None or value == "":
        return default
    return float(value)


def hit_from(row: Mapping[str, Any]) -> Hit:
    stock_flag = str(row.get("in_stock", "")).lower()
    return Hit(
        item_id=str(row.get("item_id", "")),
        title=str(row.get("title", "")),
        category=str(row.get("category", "")),
        price=_f(row, "price"),
        stock=int(_f(row, "stock")),
        in_stock=stock_flag in ("1", "true"),
        popularity=_f(row, "popularity"),
        score=0.0,
    )


def price_band(price: float) -> str | None:
    """Mirror of lua/00_common.lua price_band: the `price:<band>` affinity members."""
    if price <= 0:
        return None
    if price < 2:
        return "lt2"
    if price < 5:
        return "2-5"
    if price < 10:
        return "5-10"
    if price < 25:
        return "10-25"
    return "25+"


def normalised_affinities(
    affinities: Sequence[tuple[str, float]],
) -> tuple[dict[str, float], dict[str, float]]:
    """({category: 0..1}, {price band: 0..1}), each relative to the user's strongest."""
    cats = {m[4:]: v for m, v in affinities if m.startswith("cat:") and v > 0}
    bands = {m[6:]: v for m, v in affinities if m.startswith("price:") and v > 0}
    out = []
    for group in (cats, bands):
        top = max(group.values(), default=0.0)
        out.append({k: v / top for k, v in group.items()} if top > 0 else {})
    return out[0], out[1]


def trait_band(traits: Mapping[str, Any] | None) -> str | None:
    """The `price_band` trait (warehouse profile sync: the shopper's typical price band over
    their whole history), when it names a band."""
    band = (traits or {}).get(TRAIT_PRICE_BAND)
    return band if isinstance(band, str) and band in PRICE_BANDS else None


def band_preference(live: Mapping[str, float], trait: str | None) -> dict[str, float]:
    """Price-band preference 0..1: the live affinities, blended with the warehouse's band
    (its share TRAIT_BAND_SHARE; all of it when there is no live signal yet). The live
    affinities halve every 14 days; the warehouse remembers years, and knows a shopper who
    has not shopped here since the keys expired."""
    if trait is None:
        return dict(live)
    share = TRAIT_BAND_SHARE if live else 1.0
    out = {band: (1 - share) * v for band, v in live.items()}
    out[trait] = out.get(trait, 0.0) + share
    return out


def rerank(
    hits: list[Hit],
    affinities: Sequence[tuple[str, float]],
    weight: float,
    traits: Mapping[str, Any] | None = None,
) -> list[Hit]:
    """Add `weight * affinity` to each hit's score and sort (stable on ties)."""
    cats, live_bands = normalised_affinities(affinities)
    bands = band_preference(live_bands, trait_band(traits))
    for h in hits:
        band = price_band(h.price)
        aff = CATEGORY_SHARE * cats.get(h.category, 0.0) + (1 - CATEGORY_SHARE) * bands.get(
            band or "", 0.0
        )
        h.components["affinity"] = aff
        h.score = h.components.get("hybrid", h.score) + weight * aff
    return sorted(hits, key=lambda h: -h.score)


# -- execution ----------------------------------------------------------------------------------


@dataclass
class SearchResult:
    hits: list[Hit]
    meta: IndexMeta
    personalized: bool = False
    took_ms: float = 0.0
    fallback: bool = False  # no document matched a word: vector-only neighbours instead
    signals: list[str] = field(default_factory=list)  # what the re-rank used


class ProductSearch:
    """Runs searches for one key prefix. Thread-safe (the app shares one per process)."""

    def __init__(
        self,
        client: redis.Redis,
        cfg: CatalogConfig,
        vectorizer: TextVectorizer,
        engine: EngineConfig | None = None,
    ) -> None:
        self.client = client
        self.cfg = cfg
        self.vectorizer = vectorizer
        self.ckeys = CatalogKeys(cfg.key_prefix)
        self.keys = Keys(cfg.key_prefix)
        self.engine = engine or EngineConfig(key_prefix=cfg.key_prefix)
        resolved = resolve_spec(load_schema_spec(cfg.schema_path), self.ckeys, 0, vectorizer)
        resolved["index"]["name"] = self.ckeys.alias  # queries always go through the alias
        self.index = SearchIndex(IndexSchema.from_dict(resolved), redis_client=client)
        self._meta: tuple[float, IndexMeta] | None = None
        self._median: tuple[float, float | None] | None = None
        self._lock = threading.Lock()

    def meta(self) -> IndexMeta:
        """The live index's meta (cached `meta_ttl_s`), checked against our vectorizer."""
        now = time.monotonic()
        cached = self._meta
        if cached is not None and now - cached[0] < self.cfg.meta_ttl_s:
            return cached[1]
        meta = read_meta(self.client, self.ckeys)
        if meta is None:
            raise SearchIndexError(
                f"no product index for prefix {self.cfg.key_prefix!r}: run "
                "`python -m app.cli catalog index create` (or load the catalog)"
            )
        check_compatible(meta, self.vectorizer)
        with self._lock:
            self._meta = (now, meta)
        return meta

    def price_median(self) -> float | None:
        """Median price of the live index (one FT.AGGREGATE QUANTILE, cached
        `PRICE_MEDIAN_TTL_S`): only a hint for `price_clauses`, never affects results."""
        now = time.monotonic()
        cached = self._median
        if cached is not None and now - cached[0] < PRICE_MEDIAN_TTL_S:
            return cached[1]
        median: float | None = None
        try:
            reply = redis_cmd(
                self.client, "FT.AGGREGATE", self.ckeys.alias, "*", "GROUPBY", "0", "REDUCE",
                "QUANTILE", "2", "@price", "0.5", "AS", "median", "DIALECT", "2",
            )  # fmt: skip
            rows = reply.get(b"results", reply.get("results")) if isinstance(reply, dict) else None
            if rows:
                attrs = rows[0].get(b"extra_attributes", rows[0].get("extra_attributes", {}))
                value = attrs.get(b"median", attrs.get("median"))
                median = float(value) if value not in (None, b"", "") else None
            elif isinstance(reply, list) and len(reply) > 1:
                row = reply[1]
                median = float(row[row.index(b"median") + 1])
        except (redis.ResponseError, ValueError, TypeError):
            median = None
        self._median = (now, median)
        return median

    def embed(self, text: str) -> bytes:
        return bytes(embed_texts(self.vectorizer, [text])[0].astype(np.float32).tobytes())

    def _run(self, query: Any) -> list[dict[str, Any]]:
        try:
            return list(self.index.query(query))
        except RedisSearchError as exc:
            cause = exc.__cause__
            if cause is not None and is_missing_index(cause):
                self._meta = None
                raise SearchIndexError(
                    f"the product index alias {self.ckeys.alias} is missing: run "
                    "`python -m app.cli catalog index create`"
                ) from exc
            if isinstance(cause, redis.ConnectionError | redis.TimeoutError):
                raise cause from exc
            raise

    def search(self, req: SearchRequest, *, ef_runtime: int | None = None) -> SearchResult:
        t0 = time.perf_counter()
        meta = self.meta()
        personal = req.user is not None
        keep = min(MAX_CANDIDATES, 3 * req.k if personal else req.k)
        candidates = min(MAX_CANDIDATES, max(self.cfg.candidates, keep))
        vector = self.embed(req.q)
        filters = filter_expression(req.filters, self.price_median())
        query = HybridProductQuery(
            req.words,
            vector,
            filters,
            candidates=candidates,
            keep=keep,
            alpha=self.cfg.alpha,
            text_saturation=self.cfg.text_saturation,
        )
        hits = []
        for row in self._run(query):
            h = hit_from(row)
            h.components = {
                "vector": _f(row, "vector_similarity"),
                "bm25": _f(row, "bm25"),
                "text": _f(row, "text_score"),
                "hybrid": _f(row, "hybrid_score"),
            }
            h.score = h.components["hybrid"]
            hits.append(h)
        fallback = False
        if not hits:
            # No document passing the filters has any of the words (a typo, a synonym):
            # the nearest vectors among the filtered documents instead, text score 0.
            fallback = True
            hits = self.knn(vector, req.filters, keep, ef_runtime=ef_runtime)
            for h in hits:
                h.components = {"vector": h.score, "bm25": 0.0, "text": 0.0,
                                "hybrid": self.cfg.alpha * h.score}  # fmt: skip
                h.score = h.components["hybrid"]
        signals: list[str] = []
        if req.user is not None:
            profile = calls.user_profile(self.client, self.engine, self.keys, req.user, 40)
            traits = (profile.profile or {}).get("traits")
            band = trait_band(traits if isinstance(traits, dict) else None)
            signals = (["affinities"] if profile.affinities else []) + (
                [f"trait:{TRAIT_PRICE_BAND}={band}"] if band else []
            )
            hits = rerank(hits, profile.affinities, self.cfg.affinity_weight,
                          {TRAIT_PRICE_BAND: band} if band else None)  # fmt: skip
        took = (time.perf_counter() - t0) * 1000
        return SearchResult(hits[: req.k], meta, bool(signals), took, fallback, signals)

    def knn(
        self, vector: bytes, filters: Filters, k: int, *, ef_runtime: int | None = None
    ) -> list[Hit]:
        """Pure vector KNN with filters inside the query (FT.SEARCH via redisvl VectorQuery)."""
        self.meta()
        query = VectorQuery(
            vector,
            "embedding",
            return_fields=list(RETURN_FIELDS),
            filter_expression=filter_expression(filters, self.price_median()),
            num_results=k,
            ef_runtime=max(ef_runtime or self.cfg.ef_runtime, k),
        )
        hits = []
        for row in self._run(query):
            h = hit_from(row)
            sim = max(0.0, 1 - _f(row, "vector_distance"))
            h.components = {"vector": sim}
            h.score = sim
            hits.append(h)
        return hits

    def item_vector(self, item_id: str) -> bytes | None:
        meta = self.meta()
        got = redis_cmd(self.client, "JSON.GET", self.ckeys.doc(item_id), meta.vector_path)
        if got is None:
            return None
        values = json_reply(got)
        if not values:
            return None
        return bytes(np.asarray(values[0], dtype=np.float32).tobytes())

    def similar(self, item_id: str, filters: Filters, k: int) -> SearchResult | None:
        """Items whose vectors are nearest to this item's (itself excluded), filters inside."""
        t0 = time.perf_counter()
        vector = self.item_vector(item_id)
        if vector is None:
            return None
        f = Filters(filters.categories, filters.min_price, filters.max_price, filters.in_stock,
                    exclude_item=item_id)  # fmt: skip
        hits = self.knn(vector, f, k)
        return SearchResult(hits, self.meta(), False, (time.perf_counter() - t0) * 1000)
