"""The offline (batch) model next to the real-time signals: item-item similarity, versioned.

`train()` computes, with numpy:
- collaborative neighbours: EASE (closed-form item-item regression, `ease_similarity`) up to
  `ease_max_items` items; beyond, or with method="cosine": cosine similarity of items over
  shoppers, each shopper weighted 1 / log2(2 + n_u) (n_u = distinct items of the shopper: a
  wholesaler buying 800 items says less about each pair than a shopper buying 5), times a
  significance factor co / (co + shrink) on the raw number of shoppers who bought both (so a
  pair seen once does not look perfect): sim(i, j) = cos_w(i, j) * co(i, j) / (co(i, j) + shrink);
- content neighbours: cosine of the catalog's product vectors (exact brute force);
- popularity: distinct shoppers per item (top N overall and per category);
- similar shoppers ("peers"): plain cosine of shoppers over their distinct items, top N per
  shopper. The model keeps only who is similar to whom; what the peers bought lately is read at
  serving time from their live history (`u:{peer}:hist`), so the signal "shoppers like you
  bought this recently" follows the present although the model was trained in the past;
and writes the top-N per item (and per shopper) into Redis under a new model version:

  i:{<item>}:nn:<version>  ZSET  neighbour -> similarity   (TTL ttl_s)
  i:{<item>}:cn:<version>  ZSET  neighbour -> similarity   (TTL ttl_s)
  u:{<user>}:peers:<version>  ZSET  shopper -> similarity  (TTL ttl_s)
  g:{g}:rec:pop:<version>  ZSET  item -> shoppers          (TTL ttl_s)
  g:{g}:rec:cat:<version>:<category>  ZSET  item -> shoppers (TTL ttl_s)

then flips the pointer `g:{g}:rec:model` and registers the version in `g:{g}:rec:models` in
one MULTI/EXEC: readers see the old version or the complete new one, never a half-written one.
Older versions not pinned by an experiment get a short TTL (`grace_s`, so requests in flight
finish) and leave the registry; pinned ones get their TTL renewed.

Scale: the user x item matrix is dense (float32): fine up to ~20k items x 50k shoppers
(4 GB); beyond, swap in a sparse product (scipy) or sample shoppers. Similarities are computed
in blocks of items, so the item x item matrix is never held whole.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import redis

from app.recs.experiments import experiment_from_json
from app.recs.keys import NAME_RE, RecKeys


@dataclass(frozen=True)
class TrainConfig:
    neighbours: int = 50
    content_neighbours: int = 30
    # "ease" (closed-form item-item regression) up to `ease_max_items` items, else "cosine".
    method: str = "ease"
    ease_lambda: float = 300.0
    ease_max_items: int = 6_000
    shrink: float = 5.0  # cosine only
    user_weighting: bool = True  # cosine only
    popular_n: int = 500
    peers: int = 100  # similar shoppers kept per shopper (0: none)
    # "bought next" (`next_transitions`) blended into the neighbour lists with this weight;
    # 0: off. Needs the invoices (time order) passed to `train`.
    next_weight: float = 0.0
    # time-decayed co-purchase for EASE (`decayed_matrix`), half-life in days; 0: binary
    decay_half_life_days: float = 0.0
    next_pop_exponent: float = 0.5
    category_n: int = 50
    ttl_s: int = 30 * 86_400
    grace_s: int = 3_600
    block: int = 512
    write_batch: int = 500


@dataclass
class Interactions:
    """Distinct (shopper, item) pairs as index arrays."""

    users: list[str]
    items: list[str]
    rows: np.ndarray  # user index per pair
    cols: np.ndarray  # item index per pair

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> Interactions:
        uidx: dict[str, int] = {}
        iidx: dict[str, int] = {}
        seen: set[tuple[int, int]] = set()
        for user, item in pairs:
            u = uidx.setdefault(user, len(uidx))
            i = iidx.setdefault(item, len(iidx))
            seen.add((u, i))
        arr = np.array(sorted(seen), dtype=np.int64).reshape(-1, 2)
        return cls(list(uidx), list(iidx), arr[:, 0], arr[:, 1])

    def matrix(self) -> np.ndarray:
        x = np.zeros((len(self.users), len(self.items)), dtype=np.float32)
        x[self.rows, self.cols] = 1.0
        return x


def top_n(scores: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise top n (descending; ties by column index) of a 2-D array: (indices, values)."""
    n = min(n, scores.shape[1])
    if n <= 0:
        return np.zeros((scores.shape[0], 0), dtype=np.int64), np.zeros((scores.shape[0], 0))
    part = np.argpartition(-scores, n - 1, axis=1)[:, :n]
    vals = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    idx = np.take_along_axis(part, order, axis=1)
    return idx, np.take_along_axis(scores, idx, axis=1)


EASE_TOP1 = 0.3


def item_method(n_items: int, cfg: TrainConfig) -> str:
    """The item model actually used: EASE needs an items x items inverse (O(n^3), 8 n^2 bytes),
    so beyond `ease_max_items` the trainer falls back to cosine."""
    if cfg.method not in ("ease", "cosine"):
        raise ValueError(f"unknown item model method {cfg.method!r} (ease or cosine)")
    return "ease" if cfg.method == "ease" and n_items <= cfg.ease_max_items else "cosine"


def item_similarity(
    inter: Interactions, cfg: TrainConfig, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top `cfg.neighbours` collaborative neighbours per item: (indices, similarities).
    `weights` (EASE only): the shopper x item matrix to use instead of the binary one."""
    if item_method(len(inter.items), cfg) == "ease":
        return ease_similarity(inter, cfg, weights)
    return cosine_similarity(inter, cfg)


def decayed_matrix(
    inter: Interactions, invoices: Sequence[tuple[str, int, Sequence[str]]], half_life_ms: float
) -> np.ndarray:
    """Time-decayed co-purchase: the shopper x item matrix with each cell weighing
    2^(-age / half-life) by the shopper's last purchase of the item, age taken at the newest
    invoice (recent baskets weigh more). Cells without an invoice keep weight 1."""
    uidx = {u: i for i, u in enumerate(inter.users)}
    iidx = {it: i for i, it in enumerate(inter.items)}
    last: dict[tuple[int, int], int] = {}
    for user, ts, basket in invoices:
        u = uidx.get(user)
        if u is None:
            continue
        for it in basket:
            i = iidx.get(it)
            if i is not None and ts > last.get((u, i), -1):
                last[(u, i)] = ts
    x = inter.matrix().astype(np.float64)
    if last:
        newest = max(last.values())
        cells = np.array(list(last), dtype=np.int64)
        ages = newest - np.fromiter(last.values(), dtype=np.float64)
        x[cells[:, 0], cells[:, 1]] = np.exp2(-ages / half_life_ms)
    return x


def ease_similarity(
    inter: Interactions, cfg: TrainConfig, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """EASE (Steck 2019): the item-item weights B that best rebuild each shopper's items from
    their other items, B = I - P diag(1 / diag(P)) with P = (X^T X + lambda I)^-1, diag(B) = 0.
    Unlike cosine, a neighbour that only co-occurs because both items are popular gets little
    weight. Measured on the validation split (docs/recommendations.md): HR@10 0.405 vs 0.344
    for plain cosine, offline. Row i holds the items that i predicts (B[i, j] for j), top n;
    negative weights become 0, which the writer skips.
    """
    x = inter.matrix().astype(np.float64) if weights is None else weights
    gram = x.T @ x
    gram[np.diag_indices_from(gram)] += cfg.ease_lambda
    p = np.linalg.inv(gram)
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    idx, vals = top_n(b, min(cfg.neighbours, b.shape[1]))
    vals = np.maximum(vals, 0.0)
    # EASE weights are ~10x smaller than cosines. Rescale so the mean strongest neighbour is
    # EASE_TOP1 as with cosine on the real data, so the source weights keep their meaning (and
    # six decimals keep their precision); the serving side caps values at 1.
    top1 = vals[:, 0] if vals.shape[1] else np.zeros(0)
    if (top1 > 0).any():
        vals = np.minimum(vals * (EASE_TOP1 / float(top1[top1 > 0].mean())), 1.0)
    return idx, vals.astype(np.float32)


def cosine_similarity(inter: Interactions, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Weighted cosine with significance (see the module docstring)."""
    x = inter.matrix()
    n_u = x.sum(axis=1)
    w = 1.0 / np.log2(2.0 + n_u) if cfg.user_weighting else np.ones_like(n_u)
    xw = x * np.sqrt(w)[:, None].astype(np.float32)
    norms = np.sqrt((xw * xw).sum(axis=0))
    n_items = x.shape[1]
    all_idx = np.zeros((n_items, min(cfg.neighbours, n_items)), dtype=np.int64)
    all_sim = np.zeros(all_idx.shape, dtype=np.float32)
    for start in range(0, n_items, cfg.block):
        b = slice(start, min(start + cfg.block, n_items))
        co_w = xw[:, b].T @ xw
        co = x[:, b].T @ x
        denom = norms[b, None] * norms[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            sim = np.where(denom > 0, co_w / denom, 0.0) * (co / (co + cfg.shrink))
        rows = np.arange(b.stop - b.start)
        sim[rows, rows + start] = 0.0  # an item is not its own neighbour
        idx, vals = top_n(sim, all_idx.shape[1])
        all_idx[b], all_sim[b] = idx, vals
    return all_idx, all_sim


def next_transitions(
    invoices: Iterable[tuple[str, int, Sequence[str]]],
    items: Sequence[str],
    n: int,
    shrink: float = 10.0,
    pop_exponent: float = 0.5,
) -> tuple[np.ndarray, np.ndarray]:
    """ "Bought next": per item i, the items j that shoppers bought for the first time in the
    invoice right after one holding i, top `n` (indices, values). Directed, unlike
    co-occurrence: it answers "what does a shopper buy next, new to them, after buying i",
    which is the home list's question. Count = distinct shoppers per (i, j); value =
    count / (shoppers with a next invoice after buying i + `shrink`) / (shoppers who bought
    j new in a next invoice) ^ `pop_exponent` (without it, the best sellers fill every
    list: they are everyone's next purchase), rescaled so the mean
    strongest value is EASE_TOP1 as for the item model (so a blend weight keeps its meaning).
    `invoices` are (shopper, time, items); items outside `items` are skipped."""
    index = {it: i for i, it in enumerate(items)}
    m = len(items)
    by_user: dict[str, list[tuple[int, list[int]]]] = {}
    for user, ts, basket in invoices:
        cols = [index[it] for it in basket if it in index]
        by_user.setdefault(user, []).append((ts, cols))
    counts = np.zeros(m * m, dtype=np.float32)
    base = np.zeros(m, dtype=np.float32)
    targets = np.zeros(m, dtype=np.float32)
    for seq in by_user.values():
        seq.sort(key=lambda x: x[0])
        seen: set[int] = set(seq[0][1])
        links: set[int] = set()
        sources: set[int] = set()
        for (_, prev), (_, cur) in itertools.pairwise(seq):
            new = [j for j in cur if j not in seen]
            sources.update(prev)
            links.update(i * m + j for i in prev for j in new if i != j)
            seen.update(cur)
        if links:
            counts[np.fromiter(links, dtype=np.int64)] += 1.0
        if sources:
            base[np.fromiter(sources, dtype=np.int64)] += 1.0
        if links:
            targets[np.fromiter({x % m for x in links}, dtype=np.int64)] += 1.0
    mat = counts.reshape(m, m) / np.maximum(base[:, None] + shrink, 1.0)
    mat /= np.maximum(targets, 1.0)[None, :] ** pop_exponent
    idx, vals = top_n(mat, min(n, m))
    top1 = vals[:, 0] if vals.shape[1] else np.zeros(0)
    if (top1 > 0).any():
        vals = np.minimum(vals * (EASE_TOP1 / float(top1[top1 > 0].mean())), 1.0)
    return idx, vals.astype(np.float32)


def blend_lists(
    parts: Sequence[tuple[np.ndarray, np.ndarray, float]], n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise weighted sum of top-n lists (indices, values, weight) over the same items,
    top `n` of the sum, values capped at 1 as the serving side reads them."""
    m = parts[0][0].shape[0]
    dense = np.zeros((m, m), dtype=np.float32)
    rows = np.arange(m)[:, None]
    for idx, vals, weight in parts:
        np.add.at(dense, (np.broadcast_to(rows, idx.shape), idx), weight * vals)
    idx, vals = top_n(dense, min(n, m))
    return idx, np.minimum(vals, 1.0).astype(np.float32)


def user_similarity(inter: Interactions, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """Top `cfg.peers` similar shoppers per shopper: plain cosine over distinct items
    (indices, similarities; 0 where a shopper has fewer peers with a common item).

    Plain, unweighted cosine: tried on the validation split (docs/recommendations.md), it
    beat the item model's 1 / log2(2 + n_u) weighting for this use."""
    x = inter.matrix()
    norms = np.sqrt(x.sum(axis=1))
    n_users = x.shape[0]
    k = min(cfg.peers, max(n_users - 1, 0))
    all_idx = np.zeros((n_users, k), dtype=np.int64)
    all_sim = np.zeros((n_users, k), dtype=np.float32)
    if k == 0:
        return all_idx, all_sim
    for start in range(0, n_users, cfg.block):
        b = slice(start, min(start + cfg.block, n_users))
        co = x[b] @ x.T
        denom = norms[b, None] * norms[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            sim = np.where(denom > 0, co / denom, 0.0)
        rows = np.arange(b.stop - b.start)
        sim[rows, rows + start] = 0.0  # a shopper is not their own peer
        idx, vals = top_n(sim, k)
        all_idx[b], all_sim[b] = idx, vals
    return all_idx, all_sim


def content_similarity(
    vectors: np.ndarray, n: int, block: int = 512
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-n cosine neighbours of L2-normalised row vectors (self excluded)."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    v = v / norms
    m = v.shape[0]
    k = min(n, max(m - 1, 0))
    all_idx = np.zeros((m, k), dtype=np.int64)
    all_sim = np.zeros((m, k), dtype=np.float32)
    for start in range(0, m, block):
        b = slice(start, min(start + block, m))
        sim = v[b] @ v.T
        rows = np.arange(b.stop - b.start)
        sim[rows, rows + start] = -np.inf
        idx, vals = top_n(sim, k)
        all_idx[b], all_sim[b] = idx, vals
    return all_idx, all_sim


def new_version(now: float | None = None) -> str:
    t = datetime.fromtimestamp(now if now is not None else time.time(), tz=UTC)
    return "v" + t.strftime("%Y%m%d%H%M%S")


@dataclass
class TrainReport:
    version: str
    users: int
    items: int
    pairs: int
    nn_lists: int
    nn_links: int
    cn_lists: int
    categories: int
    seconds: float
    retired: list[str] = field(default_factory=list)
    pinned: list[str] = field(default_factory=list)
    peer_lists: int = 0

    def summary(self) -> str:
        return (
            f"model {self.version}: {self.users:,} shoppers, {self.items:,} items, "
            f"{self.pairs:,} shopper-item pairs; {self.nn_lists:,} neighbour lists "
            f"({self.nn_links:,} links), {self.cn_lists:,} content lists, "
            f"{self.peer_lists:,} peer lists, {self.categories} "
            f"category tops; {self.seconds:.1f} s; retired {self.retired or 'none'}, "
            f"kept for experiments {self.pinned or 'none'}"
        )


def _zadd_lists(
    pipe: redis.client.Pipeline,
    key_of: Any,
    items: Sequence[str],
    idx: np.ndarray,
    sim: np.ndarray,
    ttl_s: int,
    names: Sequence[str] | None = None,
) -> tuple[int, int]:
    names = names if names is not None else items
    lists = links = 0
    for row, item in enumerate(items):
        rounded = (
            (names[int(j)], round(float(s), 6)) for j, s in zip(idx[row], sim[row], strict=True)
        )
        mapping = {name: v for name, v in rounded if v > 0 and math.isfinite(v)}
        if mapping:
            key = key_of(item)
            pipe.delete(key)  # a retrain under an explicit, reused version replaces it
            pipe.zadd(key, mapping)
            pipe.expire(key, ttl_s)
            lists += 1
            links += len(mapping)
    return lists, links


def pinned_versions(client: redis.Redis, keys: RecKeys) -> set[str]:
    """Model versions that running or paused experiments refer to."""
    pinned = set()
    for raw in client.hvals(keys.experiments):
        try:
            exp = experiment_from_json(raw)
        except (ValueError, KeyError, TypeError):
            continue
        if exp.status != "stopped":
            pinned |= {v.model for v in exp.variants if v.model}
    return pinned


def _version_keys(client: redis.Redis, keys: RecKeys, version: str) -> list[str]:
    found = []
    for kind in ("nn", "cn"):
        pattern = f"{keys.prefix}i:{{*}}:{kind}:{version}"
        found += [_s(k) for k in client.scan_iter(match=pattern, count=1000)]
    pattern = f"{keys.prefix}u:{{*}}:*:peers:{version}"  # u:{p<n>}:<user>:peers:<version>
    found += [_s(k) for k in client.scan_iter(match=pattern, count=1000)]
    glob = keys.glob(f"rec:*:{version}*")
    found += [_s(k) for k in client.scan_iter(match=glob, count=1000)]
    return found


def _expire_all(client: redis.Redis, names: Sequence[str], ttl_s: int) -> None:
    for start in range(0, len(names), 1000):
        pipe = client.pipeline(transaction=False)
        for key in names[start : start + 1000]:
            pipe.expire(key, ttl_s)
        pipe.execute()


def popularity(
    inter: Interactions, categories: Mapping[str, str], cfg: TrainConfig
) -> tuple[list[tuple[str, int]], dict[str, list[tuple[str, int]]]]:
    """Distinct shoppers per item: the overall top `popular_n` and each category's top
    `category_n` (ties broken by item id, so equal data gives equal lists)."""
    items = inter.items
    counts = np.bincount(inter.cols, minlength=len(items))
    order = sorted(range(len(items)), key=lambda i: (-int(counts[i]), items[i]))
    popular = [(items[i], int(counts[i])) for i in order[: cfg.popular_n] if counts[i] > 0]
    by_cat: dict[str, list[tuple[str, int]]] = {}
    for i in order:
        cat = categories.get(items[i], "")
        if cat and NAME_RE.match(cat) and counts[i] > 0:
            lst = by_cat.setdefault(cat, [])
            if len(lst) < cfg.category_n:
                lst.append((items[i], int(counts[i])))
    return popular, by_cat


def write_lists(
    client: redis.Redis,
    key_of: Any,
    names: Sequence[str],
    idx: np.ndarray,
    sim: np.ndarray,
    cfg: TrainConfig,
) -> tuple[int, int]:
    """Row i of (idx, sim) as the sorted set `key_of(names[i])`, in pipelines of
    `cfg.write_batch` rows. Returns (lists written, links written)."""
    lists = links = 0
    for start in range(0, len(names), cfg.write_batch):
        pipe = client.pipeline(transaction=False)
        chunk = list(names[start : start + cfg.write_batch])
        rows = slice(start, start + len(chunk))
        a, b = _zadd_lists(pipe, key_of, chunk, idx[rows], sim[rows], cfg.ttl_s, names=names)
        lists, links = lists + a, links + b
        pipe.execute()
    return lists, links


def write_popularity(
    client: redis.Redis,
    keys: RecKeys,
    version: str,
    popular: list[tuple[str, int]],
    by_cat: Mapping[str, list[tuple[str, int]]],
    ttl_s: int,
) -> None:
    pipe = client.pipeline(transaction=False)
    if popular:
        pipe.delete(keys.popular(version))
        pipe.zadd(keys.popular(version), dict(popular))
        pipe.expire(keys.popular(version), ttl_s)
    for cat, lst in by_cat.items():
        pipe.delete(keys.category_top(version, cat))
        pipe.zadd(keys.category_top(version, cat), dict(lst))
        pipe.expire(keys.category_top(version, cat), ttl_s)
    pipe.execute()


def train(
    client: redis.Redis,
    keys: RecKeys,
    inter: Interactions,
    categories: Mapping[str, str],
    cfg: TrainConfig | None = None,
    *,
    vectors: tuple[Sequence[str], np.ndarray] | None = None,
    version: str | None = None,
    source: str = "",
    fingerprint: str = "",
    invoices: Sequence[tuple[str, int, Sequence[str]]] | None = None,
) -> TrainReport:
    """Compute the model from `inter`, write it under a new version, flip the pointer.
    `fingerprint` (kept in the registry) names the inputs, for `matching_model`; `invoices`
    (shopper, time, items), for the "bought next" blend (`TrainConfig.next_weight`)."""
    cfg = cfg or TrainConfig()
    t0 = time.monotonic()
    version = version or new_version()
    if not NAME_RE.match(version):
        raise ValueError(f"bad model version {version!r}")
    items = inter.items
    decayed = None
    if cfg.decay_half_life_days > 0 and invoices is not None:
        decayed = decayed_matrix(inter, invoices, cfg.decay_half_life_days * 86_400_000)
    nn_idx, nn_sim = item_similarity(inter, cfg, decayed)
    if cfg.next_weight > 0 and invoices is not None:
        nx_idx, nx_sim = next_transitions(
            invoices, items, cfg.neighbours, pop_exponent=cfg.next_pop_exponent
        )
        nn_idx, nn_sim = blend_lists(
            [(nn_idx, nn_sim, 1.0), (nx_idx, nx_sim, cfg.next_weight)], cfg.neighbours
        )

    popular, by_cat = popularity(inter, categories, cfg)
    nn_lists, nn_links = write_lists(
        client, lambda it: keys.nn(it, version), items, nn_idx, nn_sim, cfg
    )
    cn_lists = 0
    if vectors is not None and len(vectors[0]) > 1:
        v_items, matrix = vectors
        cn_idx, cn_sim = content_similarity(matrix, cfg.content_neighbours, cfg.block)
        cn_lists, _ = write_lists(
            client, lambda it: keys.cn(it, version), list(v_items), cn_idx, cn_sim, cfg
        )
    peer_lists = 0
    if cfg.peers > 0:
        pr_idx, pr_sim = user_similarity(inter, cfg)
        peer_lists, _ = write_lists(
            client, lambda u: keys.peers(u, version), inter.users, pr_idx, pr_sim, cfg
        )
    write_popularity(client, keys, version, popular, by_cat, cfg.ttl_s)

    meta = {
        "version": version, "created_ms": int(time.time() * 1000), "source": source,
        "users": len(inter.users), "items": len(items), "pairs": len(inter.rows),
        "neighbours": cfg.neighbours, "method": item_method(len(items), cfg),
        "ease_lambda": cfg.ease_lambda, "next_weight": cfg.next_weight if invoices else 0.0,
        "decay_half_life_days": cfg.decay_half_life_days if invoices else 0.0,
        "shrink": cfg.shrink, "user_weighting": cfg.user_weighting,
        "content_lists": cn_lists, "peers": cfg.peers, "peer_lists": peer_lists,
        "categories": sorted(by_cat), "ttl_s": cfg.ttl_s, "fingerprint": fingerprint,
    }  # fmt: skip
    # The flip: pointer and registry together (one slot, one transaction).
    pipe = client.pipeline(transaction=True)
    pipe.set(keys.model_pointer, version)
    pipe.hset(keys.models, version, json.dumps(meta, separators=(",", ":")))
    pipe.execute()
    retired, pinned = retire_old_versions(client, keys, version, cfg)
    return TrainReport(
        version, len(inter.users), len(items), len(inter.rows), nn_lists, nn_links,
        cn_lists, len(by_cat), time.monotonic() - t0, retired, pinned, peer_lists,
    )  # fmt: skip


def retire_old_versions(
    client: redis.Redis, keys: RecKeys, current: str, cfg: TrainConfig
) -> tuple[list[str], list[str]]:
    """Expire versions other than `current` unless an experiment pins them (renewed then)."""
    pinned = pinned_versions(client, keys)
    registered = [_s(v) for v in client.hkeys(keys.models)]
    retired, kept = [], []
    for v in registered:
        if v == current or not NAME_RE.match(v):
            continue
        names = _version_keys(client, keys, v)
        if v in pinned:
            _expire_all(client, names, cfg.ttl_s)
            kept.append(v)
        else:
            _expire_all(client, names, cfg.grace_s)
            client.hdel(keys.models, v)
            retired.append(v)
    return sorted(retired), sorted(kept)


def matching_model(client: redis.Redis, keys: RecKeys, fingerprint: str) -> str | None:
    """The current model version when it was trained from inputs named `fingerprint` and its
    lists still exist (they expire with `TrainConfig.ttl_s`); else None (train again)."""
    raw = client.get(keys.model_pointer)
    if raw is None or not fingerprint:
        return None
    version = _s(raw)
    meta = client.hget(keys.models, version)
    if meta is None or json.loads(meta).get("fingerprint") != fingerprint:
        return None
    return version if client.exists(keys.popular(version)) else None


def model_info(client: redis.Redis, keys: RecKeys) -> dict[str, Any]:
    raw = client.get(keys.model_pointer)
    versions = {_s(k): json.loads(v) for k, v in client.hgetall(keys.models).items()}
    return {"current": _s(raw) if raw is not None else None, "versions": versions}


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
