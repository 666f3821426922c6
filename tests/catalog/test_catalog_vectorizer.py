"""The vectorizers: determinism, dimension, redisvl interface; and the mismatch guard."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import redis
from starlette.testclient import TestClient

from app.catalog.index import CatalogConfig, CatalogKeys, IndexMeta, check_compatible, create_index
from app.catalog.search import ProductSearch, parse_search
from app.catalog.vectorizers import (
    DEFAULT_VECTORIZER,
    HashedNgramVectorizer,
    embed_texts,
    features,
    get_vectorizer,
    vector_slug,
)
from app.core.errors import SearchIndexError
from app.core.settings import EngineConfig
from tests.catalog_fixtures import catalog_app, dropping

TEXTS = ["WHITE HANGING HEART T-LIGHT HOLDER", "heart lantern", "RED RETROSPOT MUG", "x"]


def _digest(matrix: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(matrix, dtype=np.float32).tobytes()).hexdigest()


def test_default_is_256_d_float32_unit_norm() -> None:
    v = get_vectorizer()
    assert v.model == DEFAULT_VECTORIZER and v.dims == 256
    m = embed_texts(v, TEXTS)
    assert m.shape == (4, 256) and m.dtype == np.float32
    assert np.allclose(np.linalg.norm(m, axis=1), 1.0, atol=1e-4)
    # Stored form: 6 decimals, so the JSON text round-trips to the very same float32.
    assert np.array_equal(np.round(m.astype(np.float64), 6).astype(np.float32), m)


def test_deterministic_across_instances_and_processes() -> None:
    a = embed_texts(HashedNgramVectorizer(), TEXTS)
    b = embed_texts(HashedNgramVectorizer(), TEXTS)
    assert np.array_equal(a, b)
    code = (
        "import hashlib, numpy as np; "
        "from app.catalog.vectorizers import HashedNgramVectorizer as H, embed_texts; "
        f" m = embed_texts(H(), {TEXTS!r}); "
        "print(hashlib.sha256(np.ascontiguousarray(m, dtype=np.float32).tobytes()).hexdigest())"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    )  # fmt: skip
    assert out.stdout.strip() == _digest(a)  # Python's own hash() randomisation plays no part


def test_redisvl_interface_embed_embed_many_and_buffer() -> None:
    v = get_vectorizer()
    one = v.embed("heart lantern")
    many = v.embed_many(["heart lantern", "blue mug"])
    assert isinstance(one, list) and len(one) == 256 and all(isinstance(x, float) for x in one)
    assert many[0] == one
    buf = v.embed("heart lantern", as_buffer=True)
    assert isinstance(buf, bytes) and len(buf) == 256 * 4
    assert np.array_equal(np.frombuffer(buf, dtype=np.float32), np.asarray(one, np.float32))


def test_related_texts_are_closer_than_unrelated() -> None:
    m = embed_texts(
        get_vectorizer(), ["heart lantern", "hanging metal heart lantern", "red retrospot mug"]
    )
    assert m[0] @ m[1] > 0.4 > m[0] @ m[2]


def test_features_fold_plurals_and_drop_stop_words() -> None:
    assert features("Lanterns of the heart") == features("lantern heart")
    assert "empty:" in features("!!!")  # a fixed non-zero vector for text without words


def test_unknown_vectorizer_is_a_clear_error() -> None:
    with pytest.raises(SearchIndexError, match="unknown vectorizer"):
        get_vectorizer("no-such-model")


class Hashed128(HashedNgramVectorizer):
    """A second, incompatible vectorizer for the mismatch tests."""

    model: str = "test-hashed-128"
    dims: int | None = 128


def test_check_compatible_names_both_sides() -> None:
    meta = IndexMeta(1, "x:idx:products:v1", "x:idx:products", DEFAULT_VECTORIZER, 256,
                     "$.vec.hashed_ngram_v1", "h", 0)  # fmt: skip
    check_compatible(meta, get_vectorizer())
    with pytest.raises(SearchIndexError, match=r"hashed-ngram-v1 vectors \(256-d\).*128-d"):
        check_compatible(meta, Hashed128())
    assert vector_slug("all-MiniLM-L6-v2") == "all_minilm_l6_v2"


def test_dimension_mismatch_is_an_error_not_garbage(
    client: redis.Redis, cfg: EngineConfig, tmp_path: Path, redis_url: str
) -> None:
    ckeys = CatalogKeys(cfg.key_prefix)
    catalog_cfg = CatalogConfig(key_prefix=cfg.key_prefix)
    with dropping(client, ckeys):
        create_index(client, ckeys, get_vectorizer())
        search = ProductSearch(client, catalog_cfg, Hashed128(), cfg)
        with pytest.raises(SearchIndexError, match="test-hashed-128"):
            search.search(parse_search({"q": "heart lantern"}))
        # Over HTTP the same misconfiguration is a 503 naming both vectorizers.
        app = catalog_app(redis_url, cfg, tmp_path, catalog_cfg)
        with TestClient(app) as api:
            app.state.product_search = search  # the process runs with the other vectorizer
            resp = api.get("/v1/search", params={"q": "heart lantern"})
        assert resp.status_code == 503, resp.text
        assert "test-hashed-128" in resp.json()["detail"]


def test_missing_index_is_503_not_500(
    client: redis.Redis, cfg: EngineConfig, tmp_path: Path, redis_url: str
) -> None:
    with TestClient(catalog_app(redis_url, cfg, tmp_path)) as api:
        resp = api.get("/v1/search", params={"q": "heart"})
    assert resp.status_code == 503
    assert "catalog index create" in resp.json()["detail"]
