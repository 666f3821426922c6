"""The offline model: similarity math, versioned writes, the atomic swap, retiring old
versions (unless an experiment pins them), and memory bounds of every recommendation key."""

from __future__ import annotations

import time

import numpy as np
import pytest

from app.recs import calls as rec_calls
from app.recs.experiments import Experiment, ExperimentStore, Variant
from app.recs.keys import RecKeys
from app.recs.lists import RecRequest
from app.recs.model import (
    EASE_TOP1,
    Interactions,
    TrainConfig,
    blend_lists,
    content_similarity,
    decayed_matrix,
    item_method,
    item_similarity,
    model_info,
    next_transitions,
    top_n,
    train,
    user_similarity,
)
from app.redis import calls
from tests.recs_fixtures import World, event, world_fixture

NOW = int(time.time() * 1000)


def test_top_n_orders_by_value_then_index() -> None:
    idx, vals = top_n(np.array([[0.1, 0.5, 0.5, 0.9, 0.0]]), 3)
    assert idx.tolist() == [[3, 1, 2]] and vals.tolist() == [[0.9, 0.5, 0.5]]


def test_item_similarity_is_weighted_cosine_with_significance() -> None:
    pairs = [("u1", "A"), ("u1", "B"), ("u2", "A"), ("u2", "B"), ("u3", "A"), ("u3", "C"),
             ("u4", "D")]  # fmt: skip
    inter = Interactions.from_pairs(pairs)
    cfg = TrainConfig(neighbours=3, method="cosine", shrink=1.0, user_weighting=False)
    idx, sim = item_similarity(inter, cfg)
    items = inter.items
    row = dict(zip([items[j] for j in idx[items.index("A")]], sim[items.index("A")], strict=True))
    # cos(A, B) = 2 / sqrt(3 * 2); significance 2 / (2 + 1)
    assert row["B"] == pytest.approx(2 / np.sqrt(6) * 2 / 3, rel=1e-5)
    assert row["C"] == pytest.approx(1 / np.sqrt(3) * 1 / 2, rel=1e-5)
    assert row.get("D", 0.0) == 0.0 and row.get("A", 0.0) == 0.0
    # heavy shoppers count less with user weighting
    heavy = pairs + [("big", x) for x in "ABCDEFGHIJ"]
    w_idx, w_sim = item_similarity(
        Interactions.from_pairs(heavy), TrainConfig(method="cosine", shrink=0.0)
    )
    n_idx, n_sim = item_similarity(
        Interactions.from_pairs(heavy),
        TrainConfig(method="cosine", shrink=0.0, user_weighting=False),
    )
    it = Interactions.from_pairs(heavy).items
    a, d = it.index("A"), it.index("D")

    def s(i: np.ndarray, v: np.ndarray) -> float:
        return float(dict(zip(i[a].tolist(), v[a].tolist(), strict=True)).get(d, 0.0))

    assert 0 < s(w_idx, w_sim) < s(n_idx, n_sim)


def test_ease_weights_are_the_ridge_regression_of_each_item_on_the_others() -> None:
    rng = np.random.default_rng(3)
    pairs = [(f"u{u}", f"i{i}") for u in range(40) for i in range(8) if rng.random() < 0.35]
    inter = Interactions.from_pairs(pairs)
    lam = 2.0
    idx, sim = item_similarity(inter, TrainConfig(neighbours=7, ease_lambda=lam))
    x = inter.matrix().astype(np.float64)
    n = x.shape[1]
    # Independent derivation: column j of B solves min ||x_j - X_-j b||^2 + lam ||b||^2.
    expected = np.zeros((n, n))
    for j in range(n):
        others = [c for c in range(n) if c != j]
        xo = x[:, others]
        b = np.linalg.solve(xo.T @ xo + lam * np.eye(n - 1), xo.T @ x[:, j])
        expected[others, j] = b
    # Stored rescaled: the mean strongest neighbour per item becomes EASE_TOP1, capped at 1.
    positive = np.maximum(expected, 0.0)
    top1 = positive.max(axis=1)
    scale = EASE_TOP1 / top1[top1 > 0].mean()
    for i in range(n):
        got = dict(zip(idx[i].tolist(), sim[i].tolist(), strict=True))
        for j in range(n):
            want = min(positive[i, j] * scale, 1.0) if i != j else 0.0
            assert got.get(j, 0.0) == pytest.approx(want, abs=1e-5), (i, j)


def test_item_model_falls_back_to_cosine_beyond_ease_max_items() -> None:
    assert item_method(500, TrainConfig()) == "ease"
    assert item_method(500, TrainConfig(ease_max_items=499)) == "cosine"
    assert item_method(500, TrainConfig(method="cosine")) == "cosine"
    with pytest.raises(ValueError, match="unknown item model"):
        item_method(500, TrainConfig(method="svd"))


def test_next_transitions_count_new_items_of_the_next_invoice_per_shopper() -> None:
    items = ["A", "B", "C", "D"]
    invoices = [
        ("u1", 2, ["C", "B"]),  # out of order on purpose: sorted by time per shopper
        ("u1", 1, ["A"]),
        ("u1", 3, ["A", "D"]),  # A is not new to u1: no A -> A; B -> D and C -> D are
        ("u2", 1, ["A"]),
        ("u2", 5, ["C"]),
        ("u3", 1, ["A", "B"]),  # u3 has no next invoice: counts for nothing
    ]
    idx, vals = next_transitions(invoices, items, 3, shrink=0.0, pop_exponent=0.0)
    raw = {(items[i], items[int(j)]): float(v)
           for i in range(4) for j, v in zip(idx[i], vals[i], strict=True) if v > 0}  # fmt: skip
    # A was followed by a next invoice for 2 shoppers; C was new next to both, B to one
    assert set(raw) == {("A", "B"), ("A", "C"), ("B", "D"), ("C", "D")}
    scale = raw[("A", "C")]  # 2/2, rescaled to the mean strongest value
    assert raw[("A", "B")] == pytest.approx(scale / 2)
    assert raw[("B", "D")] == pytest.approx(scale) and raw[("C", "D")] == pytest.approx(scale)
    # with pop_exponent 1 a target that everyone buys next counts less per shopper
    idx, vals = next_transitions(invoices, items, 3, shrink=0.0, pop_exponent=1.0)
    row_a = dict(zip((items[int(j)] for j in idx[0]), vals[0].tolist(), strict=True))
    assert row_a["C"] == pytest.approx(row_a["B"])  # 2/2 / 2 buyers = 1/2 / 1 buyer


def test_decayed_matrix_weighs_each_cell_by_the_age_of_its_last_purchase() -> None:
    inter = Interactions.from_pairs([("u1", "A"), ("u1", "B"), ("u2", "A")])
    day = 86_400_000
    invoices = [("u1", 0, ["A"]), ("u1", 10 * day, ["A", "B"]), ("u2", 0, ["A"])]
    x = decayed_matrix(inter, invoices, 10 * day)
    # newest invoice at day 10: u1's A and B are fresh, u2's A is one half-life old
    assert x.tolist() == [[1.0, 1.0], [0.5, 0.0]]


def test_blend_lists_sums_weighted_lists_per_row() -> None:
    a = (np.array([[1, 2], [0, 2], [0, 1]]), np.array([[0.5, 0.1], [0.4, 0.2], [0.3, 0.0]]), 1.0)
    b = (np.array([[2, 1], [2, 0], [1, 0]]), np.array([[0.6, 0.2], [0.1, 0.0], [0.9, 0.1]]), 0.5)
    idx, vals = blend_lists([a, b], 2)
    assert idx[0].tolist() == [1, 2] and vals[0].tolist() == pytest.approx([0.6, 0.4])
    assert idx[2].tolist() == [1, 0] and vals[2].tolist() == pytest.approx([0.45, 0.35])


def test_user_similarity_is_plain_cosine_over_distinct_items() -> None:
    pairs = [("u1", "A"), ("u1", "B"), ("u2", "A"), ("u2", "B"), ("u3", "A"), ("u3", "C"),
             ("u4", "D"), ("u1", "A")]  # fmt: skip
    inter = Interactions.from_pairs(pairs)
    idx, sim = user_similarity(inter, TrainConfig(peers=3))
    users = inter.users
    row = dict(zip([users[j] for j in idx[users.index("u1")]], sim[users.index("u1")], strict=True))
    assert row["u2"] == pytest.approx(1.0) and row["u3"] == pytest.approx(0.5)  # 1 / sqrt(2 * 2)
    assert row.get("u4", 0.0) == 0.0 and row.get("u1", 0.0) == 0.0  # nothing shared; not self
    none_idx, none_sim = user_similarity(inter, TrainConfig(peers=0))
    assert none_idx.shape == (4, 0) and none_sim.shape == (4, 0)


def test_content_similarity_excludes_self() -> None:
    v = np.array([[1, 0], [0.9, 0.1], [0, 1]], dtype=np.float32)
    idx, sim = content_similarity(v, 2)
    assert idx[0].tolist() == [1, 2] and sim[0][0] == pytest.approx(0.9939, abs=1e-3)


world = world_fixture("tmod")


def test_train_writes_a_version_then_flips_and_retires_the_old_one(world: World) -> None:
    w, keys = world, world.keys
    first = w.model.version
    assert model_info(w.client, keys)["current"] == first
    top = {m.decode() for m in w.client.zrevrange(keys.nn("K1", first), 0, 4)}
    assert top == {"K2", "K3", "O1", "W1", "T1"}  # bought together (fixtures)
    assert w.client.ttl(keys.nn("K1", first)) > 86_400
    assert w.client.exists(keys.cn("K1", first)) and w.client.exists(keys.popular(first))
    # peers: m0 and m1 bought the same basket (fixtures)
    assert w.client.zrevrange(keys.peers("m0", first), 0, 0, withscores=True) == [(b"m1", 1.0)]
    assert w.client.ttl(keys.peers("m0", first)) > 86_400 and w.model.peer_lists == 9
    pairs = [("n1", "K1"), ("n1", "L1"), ("n2", "K1"), ("n2", "L1")]
    cfg = TrainConfig(grace_s=60)
    second = train(w.client, keys, Interactions.from_pairs(pairs), {}, cfg, version="v2").version
    info = model_info(w.client, keys)
    assert info["current"] == "v2" and set(info["versions"]) == {"v2"}
    assert w.client.zrevrange(keys.nn("K1", second), 0, 0) == [b"L1"]
    assert 0 < w.client.ttl(keys.nn("K1", first)) <= 60  # retired: gone after the grace
    assert 0 < w.client.ttl(keys.peers("m0", first)) <= 60
    # an experiment pins v2: training v3 keeps it (TTL renewed)
    store = ExperimentStore(w.client, keys)
    store.put(Experiment("pin", (Variant("a", 50, model="v2"), Variant("b", 50))))
    third = train(w.client, keys, Interactions.from_pairs(pairs), {}, cfg, version="v3")
    assert third.pinned == ["v2"] and w.client.ttl(keys.nn("K1", "v2")) > 86_400
    rec = w.recommender()
    assert rec.model == "v3"
    store.delete("pin")
    # back to the world's model for the other tests of this module
    train(w.client, keys, Interactions.from_pairs(pairs), {}, cfg, version=first)
    rec.close()


def test_peers_recent_purchases_are_candidates_with_their_reason(world: World) -> None:
    """User-kNN: m1's peer m0 (same basket in training) buys L4 now; m1 gets L4, 'peers'."""
    w = world
    w.ingest([event("peer-1", "purchase", "m0", "L4", NOW - 60_000)])
    rec = w.recommender()
    ctx = rec_calls.parse_rec_context(
        calls.fcall_ro(w.client, "rec_context", rec.context_args("m1", rec.model))
    )
    assert ctx.peers["m0"] == pytest.approx(1.0) and len(ctx.peers) <= rec.cfg.n_peers
    lst = rec.compute(RecRequest("m1", "home", None, 5, now_ms=NOW))
    top = {it.item_id: it.reason for it in lst.items}
    assert top.get("L4") == "peers"
    # the peer value is capped at one purchase and decays with the history's half-life
    hist = {"m0": [("L4", 8.0 * 2 ** ((NOW - w.engine.aff_epoch_ms) / rec.cfg.hist_half_life_ms))]}
    half_life_later = NOW + rec.cfg.hist_half_life_ms
    assert rec.peer_scores(ctx, hist, NOW) == [("L4", 1.0)]
    two_peers = rec_calls.RecContext(0, 0, (), (), (), (), {}, {"m0": 0.5, "m2": 0.2})
    hist["m2"] = [("K6", 32.0 * 2 ** ((NOW - w.engine.aff_epoch_ms) / rec.cfg.hist_half_life_ms))]
    got = dict(rec.peer_scores(two_peers, hist, half_life_later))
    # L4: 0.5 x (1 purchase, one half-life ago) = 0.25; K6: 0.2 x min(1, 4 x 0.5) = 0.2
    assert got["L4"] == pytest.approx(1.0) and got["K6"] == pytest.approx(0.8)
    rec.close()


def test_every_recommendation_key_is_bounded(world: World) -> None:
    w = world
    rec = w.recommender(hist_cap=5)
    w.rebuild(rec.cfg)
    items = ["K1", "K2", "K3", "K4", "K5", "K6", "L1", "L2", "L3", "L4", "P1", "P2", "P3"]
    for u in range(5):
        user = f"mem{u}"
        w.ingest([event(f"mem{u}-{i}", "view", user, it, NOW - 1000 * i)
                  for i, it in enumerate(items)])  # fmt: skip
        rec.serve(RecRequest(user, "home", None, 5))
        rec.serve(RecRequest(user, "cart", None, 5))
    rec.close()
    mine = RecKeys(w.engine.key_prefix)
    checked = 0
    for raw in w.client.scan_iter(match=w.engine.key_prefix + "*", count=1000):
        key = raw.decode()
        if not any(part in key for part in (":hist", ":recs:", ":nn:", ":cn:", ":rec:", ":exp:",
                                            "x:{", ":peers:")):  # fmt: skip
            continue
        checked += 1
        ttl = w.client.ttl(key)
        if key in (mine.model_pointer, mine.models, mine.rec_stats, mine.experiments):
            continue  # fixed size: one string / one field per version, counter, experiment
        assert ttl > 0, key
        if key.endswith(":hist"):
            assert w.client.zcard(key) <= 5
    assert checked > 20


def test_cli_commands_parse() -> None:
    import argparse

    from app.cli.recs import add_recs_commands, cmd_recs

    parser = argparse.ArgumentParser()
    add_recs_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["recs", "show", "c17850", "--surface", "cart", "--k", "5"])
    assert (args.fn, args.user, args.surface, args.k) == (cmd_recs, "c17850", "cart", 5)
    args = parser.parse_args(["recs", "train", "--until", "2011-07-01", "--no-content"])
    assert args.until == "2011-07-01" and args.no_content
    args = parser.parse_args(["recs", "experiment", "put", "e1", "e1.json"])
    assert (args.exp_action, args.id, args.file) == ("put", "e1", "e1.json")
