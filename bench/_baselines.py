"""The baselines `bench/evaluate.py` compares the engine with, all asked the same question.

Every method answers `recommend(history, exclude, k)`: the customer's purchase counts so far
(items -> invoices that held them, training period plus earlier test invoices) and the items
it must not offer (protocol A: everything the customer bought before). Item models are fitted
once on the training period; the customer's row is folded in at query time, so a customer's
later purchases count for every method, as they do for the engine.

- `MostPopular`: distinct customers per item in the training period (fixed).
- `UpdatingMostPopular`: the same count, also fed every replayed test invoice (`observe`), so
  it knows what sells in the test period up to the query; the fair popularity baseline for an
  engine that learns from the replay.
- `NumpyItemKnn`: the project's own plain cosine item-kNN (score = sum of similarities).
- `ImplicitPeer`: a model of the `implicit` library (ALS, BM25 or cosine item-kNN), with the
  settings chosen on the validation folds (`PEER_SETTINGS`, docs/recommendations.md). The
  library is the optional extra `peers` (also in `dev`); without it `load_peers` says so
  and returns none.

Every method fills a list shorter than k from the training popularity, as any deployed
recommender would.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from app.recs.model import Interactions

K = 10


class Method(Protocol):
    name: str

    def recommend(self, history: Counter[str], exclude: set[str], k: int = K) -> list[str]: ...


def _fill(out: list[str], order: Sequence[str], exclude: set[str], k: int) -> list[str]:
    taken = set(out)
    for it in order:
        if len(out) >= k:
            break
        if it not in exclude and it not in taken:
            out.append(it)
            taken.add(it)
    return out


class TrainingData:
    """The training period as an items vocabulary, a user x item count matrix and popularity."""

    def __init__(self, train_pairs: Sequence[tuple[str, str]]) -> None:
        inter = Interactions.from_pairs(train_pairs)
        self.items = inter.items
        self.users = inter.users
        self.index = {it: i for i, it in enumerate(self.items)}
        user_index = {u: i for i, u in enumerate(self.users)}
        counts: Counter[tuple[int, int]] = Counter(
            (user_index[u], self.index[it]) for u, it in train_pairs
        )
        self.cells = counts  # (user, item) -> invoices holding the item
        binary = inter.matrix()
        buyers = binary.sum(axis=0)
        order = np.lexsort((np.arange(len(buyers)), -buyers))
        self.popular = [self.items[i] for i in order]
        self.binary = binary

    def popularity_rank(self) -> dict[str, int]:
        """1 = the training period's best seller (distinct customers)."""
        return {it: r for r, it in enumerate(self.popular, start=1)}


class MostPopular:
    name = "MostPopular"

    def __init__(self, data: TrainingData) -> None:
        self.order = data.popular

    def recommend(self, history: Counter[str], exclude: set[str], k: int = K) -> list[str]:
        return _fill([], self.order, exclude, k)


class UpdatingMostPopular:
    """Distinct customers per item, training period plus every invoice replayed so far."""

    name = "MostPopular (updating)"

    def __init__(self, train_pairs: Sequence[tuple[str, str]]) -> None:
        self.buyers: dict[str, set[str]] = {}
        for user, item in train_pairs:
            self.buyers.setdefault(item, set()).add(user)
        self._order: list[str] | None = None

    def observe(self, user: str, items: Sequence[str]) -> None:
        for item in items:
            who = self.buyers.setdefault(item, set())
            if user not in who:
                who.add(user)
                self._order = None

    def recommend(self, history: Counter[str], exclude: set[str], k: int = K) -> list[str]:
        if self._order is None:
            self._order = sorted(self.buyers, key=lambda it: (-len(self.buyers[it]), it))
        return _fill([], self._order, exclude, k)


class NumpyItemKnn:
    """Plain cosine over customers (binary); score = sum of similarities to the history."""

    name = "item-kNN (numpy cosine)"

    def __init__(self, data: TrainingData) -> None:
        self.data = data
        x = data.binary
        counts = x.sum(axis=0)
        norms = np.sqrt(counts)
        norms[norms == 0] = 1.0
        sim = (x.T @ x) / norms[:, None] / norms[None, :]
        np.fill_diagonal(sim, 0.0)
        self.sim = sim.astype(np.float32)

    def recommend(self, history: Counter[str], exclude: set[str], k: int = K) -> list[str]:
        idx = [self.data.index[it] for it in history if it in self.data.index]
        out: list[str] = []
        if idx:
            scores = self.sim[:, idx].sum(axis=1)
            for j in np.argsort(-scores, kind="stable"):
                if scores[j] <= 0 or len(out) == k:
                    break
                it = self.data.items[int(j)]
                if it not in exclude:
                    out.append(it)
        return _fill(out, self.data.popular, exclude, k)


# -- implicit ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PeerSetting:
    """One `implicit` model and how a customer's counts become its input values."""

    model: str  # "als" | "bm25" | "cosine"
    weighting: str  # "count" | "log" (log(1 + count)) | "binary"
    factors: int = 64  # ALS
    regularization: float = 1.0  # ALS
    iterations: int = 30  # ALS
    alpha: float = 1.0  # ALS confidence scale
    neighbours: int = 100  # item-kNN K
    k1: float = 1.2  # BM25
    b: float = 0.75  # BM25

    @property
    def label(self) -> str:
        if self.model == "als":
            return (f"implicit ALS (f={self.factors}, reg={self.regularization:g}, "
                    f"it={self.iterations}, alpha={self.alpha:g}, {self.weighting})")  # fmt: skip
        if self.model == "bm25":
            return (f"implicit BM25 item-kNN (K={self.neighbours}, K1={self.k1:g}, "
                    f"B={self.b:g}, {self.weighting})")  # fmt: skip
        return f"implicit cosine item-kNN (K={self.neighbours}, {self.weighting})"

    def value(self, count: float) -> float:
        if self.weighting == "binary":
            return 1.0
        if self.weighting == "log":
            return math.log1p(count)
        return float(count)


# Chosen on the validation folds (`bench/evaluate.py --validate --peers-grid`: mean HR@10 of
# the two folds), never on a test fold; the grid and its figures are in docs/recommendations.md.
PEER_SETTINGS: dict[str, PeerSetting] = {
    "als": PeerSetting("als", "log", factors=128, regularization=10.0, iterations=30, alpha=1.0),
    "bm25": PeerSetting("bm25", "binary", neighbours=20, k1=1.2, b=0.3),
    "cosine": PeerSetting("cosine", "binary", neighbours=20),
}


def peer_grid(rounds: Sequence[int] = (1, 2)) -> list[PeerSetting]:
    """The settings tried for each peer on the validation folds. Round 2 extends round 1
    where its best settings sat on the grid's edge (ALS: the strongest regularisation and
    most factors; BM25: the smallest K1 and B)."""
    grid: list[PeerSetting] = []
    if 1 in rounds:
        for factors in (32, 64, 128):
            for reg in (0.1, 1.0, 10.0):
                for weighting in ("log", "binary"):
                    for alpha in (1.0, 10.0):
                        grid.append(PeerSetting("als", weighting, factors=factors, alpha=alpha,
                                                regularization=reg, iterations=30))  # fmt: skip
        for neighbours in (20, 100, 300, 1000):
            for weighting in ("count", "binary"):
                for k1, b in ((1.2, 0.75), (0.6, 0.75), (1.2, 0.3)):
                    grid.append(PeerSetting("bm25", weighting, neighbours=neighbours, k1=k1, b=b))
        for neighbours in (20, 50, 100, 300, 1000):
            for weighting in ("binary", "count"):
                grid.append(PeerSetting("cosine", weighting, neighbours=neighbours))
    if 2 in rounds:
        for factors in (128, 256):
            for reg in (10.0, 30.0, 100.0):
                for weighting in ("log", "binary"):
                    if factors == 128 and reg == 10.0:
                        continue  # in round 1
                    grid.append(PeerSetting("als", weighting, factors=factors, alpha=1.0,
                                            regularization=reg, iterations=30))  # fmt: skip
        for neighbours in (20, 1000):
            for weighting in ("count", "binary"):
                for k1, b in ((0.3, 0.3), (0.6, 0.3), (0.3, 0.75), (1.2, 0.1), (0.6, 0.1)):
                    grid.append(PeerSetting("bm25", weighting, neighbours=neighbours, k1=k1, b=b))
    return grid


def implicit_available() -> bool:
    try:
        import implicit  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def _one_blas_thread() -> Iterator[None]:
    # implicit runs its own threads; a BLAS thread pool under it oversubscribes (and warns).
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"), warnings.catch_warnings():
        # Its BLAS check warns at model creation even under the limit, and its item-kNN
        # converts its own COO product to CSR with a warning: neither is about our input.
        warnings.filterwarnings("ignore", module="implicit")
        yield


class ImplicitPeer:
    def __init__(self, data: TrainingData, setting: PeerSetting, seed: int = 7) -> None:
        from scipy import sparse

        self.data = data
        self.setting = setting
        self.name = setting.label
        rows, cols, vals = [], [], []
        for (u, i), c in data.cells.items():
            rows.append(u)
            cols.append(i)
            vals.append(setting.value(c))
        shape = (len(data.users), len(data.items))
        self._sparse = sparse
        matrix = sparse.csr_matrix((np.array(vals, dtype=np.float32), (rows, cols)), shape=shape)
        if setting.model == "als":
            matrix = matrix * setting.alpha
        with _one_blas_thread():
            self.model = self._build(setting, seed)
            self.model.fit(matrix, show_progress=False)

    @staticmethod
    def _build(setting: PeerSetting, seed: int) -> Any:
        from implicit.als import AlternatingLeastSquares
        from implicit.nearest_neighbours import BM25Recommender, CosineRecommender

        if setting.model == "als":
            return AlternatingLeastSquares(factors=setting.factors,
                                           regularization=setting.regularization,
                                           iterations=setting.iterations,
                                           random_state=seed, num_threads=1)  # fmt: skip
        if setting.model == "bm25":
            return BM25Recommender(K=setting.neighbours, K1=setting.k1, B=setting.b,
                                   num_threads=1)  # fmt: skip
        if setting.model == "cosine":
            return CosineRecommender(K=setting.neighbours, num_threads=1)
        raise ValueError(f"unknown implicit model {setting.model!r}")

    def recommend(self, history: Counter[str], exclude: set[str], k: int = K) -> list[str]:
        cols = [(self.data.index[it], c) for it, c in history.items() if it in self.data.index]
        out: list[str] = []
        if cols:
            scale = self.setting.alpha if self.setting.model == "als" else 1.0
            row = self._sparse.csr_matrix(
                (np.array([self.setting.value(c) * scale for _, c in cols], dtype=np.float32),
                 ([0] * len(cols), [j for j, _ in cols])),
                shape=(1, len(self.data.items)),
            )  # fmt: skip
            banned = [self.data.index[it] for it in exclude if it in self.data.index]
            with _one_blas_thread():
                ids, scores = self.model.recommend(
                    0, row, N=k, filter_already_liked_items=True,
                    filter_items=np.array(banned, dtype=np.int32) if banned else None,
                    recalculate_user=self.setting.model == "als",
                )  # fmt: skip
            for j, s in zip(ids, scores, strict=True):
                if np.isfinite(s) and s > 0:
                    out.append(self.data.items[int(j)])
        return _fill(out, self.data.popular, exclude, k)


def load_peers(
    data: TrainingData, settings: dict[str, PeerSetting] | None = None
) -> list[ImplicitPeer]:
    """The implicit peers, or none (with a line saying why) when the library is absent."""
    if not implicit_available():
        print("implicit is not installed: its ALS / BM25 / cosine baselines are skipped "
              "(pip install -e '.[peers]' adds them)")  # fmt: skip
        return []
    return [ImplicitPeer(data, s) for s in (settings or PEER_SETTINGS).values()]
