"""bench/ranking.py on tiny synthetic pools: a learner must find the one feature that decides
the target, and no feature may read the query's own invoice or anything later."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from bench import ranking
from bench.evaluate import Invoice

DAY = ranking.DAY_MS
T0 = 1_300_000_000_000


def invoice(ts: int, user: str, items: list[str], price: float = 2.0) -> Invoice:
    events = [{"items": [{"item_id": it, "qty": 1, "price": price}]} for it in items]
    return Invoice(ts, user, f"inv-{user}-{ts}", items, events)


def write_pools(path: Path, n: int, seed: int) -> None:
    """n queries of 20 candidates: the target is the one whose `sig` term is 1 (the others'
    lie in [0, 0.5]); the engine's list holds 10 other candidates, so its order never hits;
    `noise` carries nothing."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for q in range(n):
            items = [f"i{q}-{j}" for j in range(20)]
            target = rng.choice(items)
            pool = {
                it: {
                    "sig": 1.0 if it == target else rng.uniform(0, 0.5),
                    "noise": rng.uniform(0, 1),
                }
                for it in items
            }
            others = [it for it in items if it != target]
            rng.shuffle(others)
            row = {
                "user": f"u{q % 7}",
                "ts": T0 + q * 1000,
                "tier": "collab",
                "targets": [target],
                "ranked": others[:10],
                "sent": items,
                "pool": pool,
            }
            f.write(json.dumps(row) + "\n")


@pytest.fixture
def blocks(tmp_path: Path) -> tuple[ranking.Block, ranking.Block, ranking.Schema]:
    write_pools(tmp_path / "fit.jsonl", 150, seed=1)
    write_pools(tmp_path / "score.jsonl", 80, seed=2)
    fit_q = ranking.read_pools(tmp_path / "fit.jsonl")
    score_q = ranking.read_pools(tmp_path / "score.jsonl")
    schema = ranking.schema_of(fit_q + score_q)
    hist = ranking.History([invoice(T0 - DAY, "u1", ["x"])], {})
    return (
        ranking.build_block(fit_q, hist, schema, "sent"),
        ranking.build_block(score_q, hist, schema, "sent"),
        schema,
    )


def test_the_engine_order_misses_and_the_oracle_sees_the_target(
    blocks: tuple[ranking.Block, ranking.Block, ranking.Schema],
) -> None:
    _, score, _ = blocks
    m = ranking.metrics(score, None)
    assert m["hit_rate_at_10"] == 0.0
    assert m["oracle"] == 1.0
    assert m["queries"] == 80


@pytest.mark.parametrize("learner", ["logistic", "lambdarank"])
def test_a_learner_ranks_the_deciding_feature_first(
    learner: str, blocks: tuple[ranking.Block, ranking.Block, ranking.Schema]
) -> None:
    if learner == "lambdarank" and not ranking.lightgbm_available():
        pytest.skip("lightgbm is not installed")
    fit, score, _ = blocks
    if learner == "logistic":
        setting = ranking.Setting("logistic", (("l2", 1.0),))
    else:
        setting = ranking.Setting(
            "lambdarank", (("min_data_in_leaf", 20.0), ("num_leaves", 7.0), ("rounds", 50.0))
        )
    m = ranking.metrics(score, ranking.fit_and_score(setting, fit, score))
    assert m["hit_rate_at_10"] == 1.0
    assert m["ndcg_at_10"] == 1.0  # the target first, not merely in the top 10


def test_no_feature_reads_the_query_invoice_or_later() -> None:
    """Adding the query's own invoice (same time) and later purchases changes no feature."""
    ts = T0 + 100 * DAY
    past = [
        invoice(ts - 40 * DAY, "u", ["a", "b"]),
        invoice(ts - 3 * DAY, "v", ["c"], 5.0),
        invoice(ts - 2 * DAY, "u", ["c"]),
    ]
    future = [
        invoice(ts, "u", ["c", "d"], 9.0),
        invoice(ts, "v", ["d"], 9.0),
        invoice(ts + DAY, "u", ["d"], 9.0),
        invoice(ts + 1, "w", ["c", "d"], 9.0),
    ]
    q = ranking.PoolQuery(
        "u", ts, "collab", {"d"}, ["d"], ["d", "c"], {"d": {"nn": 0.5}, "c": {"co": 0.2}}
    )
    categories = {"a": "x", "b": "x", "c": "y", "d": "y"}
    schema = ranking.schema_of([q])
    before = ranking.query_matrix(q, ["d", "c"], ranking.History(past, categories), schema)
    after = ranking.query_matrix(q, ["d", "c"], ranking.History(past + future, categories), schema)
    np.testing.assert_array_equal(before, after)
    col = {name: i for i, name in enumerate(schema.features)}
    assert before[0, col["item_lines_all"]] == 0.0  # "d" is only ever sold from the query on
    assert np.isnan(before[0, col["item_log_price"]])
    assert before[1, col["item_lines_all"]] == pytest.approx(np.log1p(2))
    assert before[1, col["item_log_price"]] == pytest.approx(np.log(2.0))  # the last price paid
    assert before[0, col["user_invoices"]] == pytest.approx(np.log1p(2))
    assert before[0, col["user_days_since_last"]] == pytest.approx(2.0)
    assert before[0, col["cat_in_last_invoice"]] == 1.0  # "c" (category y) in the last invoice


def test_candidates_keep_the_engine_order_and_its_whole_list() -> None:
    q = ranking.PoolQuery(
        "u",
        T0,
        "collab",
        set(),
        ["b", "z"],
        ["a", "b", "c"],
        {"a": {"nn": 1.0}, "b": {"nn": 0.5}, "c": {"nn": 0.1}, "p": {"nn": 2.0}},
    )
    assert ranking.candidates(q, "sent") == ["b", "z", "a", "c"]
    assert ranking.candidates(q, "pool") == ["b", "z", "a", "c", "p"]
