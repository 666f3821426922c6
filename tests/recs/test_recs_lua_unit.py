"""Pure helpers of lua/60_recommend.lua in Lua 5.1 (lupa): weights, tiers, anchors, diversity."""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.recs import calls as rec_calls
from app.recs.calls import RecContext
from app.recs.candidates import hist_anchor_weight
from app.recs.config import DEFAULT_WEIGHTS
from app.recs.keys import RecKeys
from tests.lua_harness import execute_library

HOUR = 3_600_000


@pytest.fixture(scope="module")
def lua() -> Any:
    rec, rt, registered = execute_library(
        "return REC", cjson={"encode": json.dumps, "decode": json.loads}
    )
    rec.rt = rt
    rec.registered = registered
    rec.error_of = rt.eval(
        "function(f, ...) local ok, e = pcall(f, ...) if ok then return nil end "
        "if type(e) == 'table' then return e.err end return tostring(e) end"
    )
    return rec


def table(lua: Any, value: Any) -> Any:
    rt = lua.rt
    if isinstance(value, dict):
        return rt.table_from({k: table(lua, v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return rt.table_from([table(lua, v) for v in value])
    return value


def test_python_and_lua_default_weights_are_the_same_table(lua: Any) -> None:
    assert dict(lua.DEFAULT_WEIGHTS.items()) == pytest.approx(DEFAULT_WEIGHTS)


def test_weights_override_defaults_and_refuse_unknown_names(lua: Any) -> None:
    w = lua.weights("nn=2.5, collab.ct=0")
    assert w["nn"] == 2.5 and w["collab.ct"] == 0 and w["co"] == DEFAULT_WEIGHTS["co"]
    assert lua.error_of(lua.weights, "nnn=1") == "ERR_BADARG weights: unknown name nnn"
    assert lua.error_of(lua.weights, "nn") == "ERR_BADARG weights: bad entry nn"


@pytest.mark.parametrize(
    ("n", "tier"), [(0, "cold"), (1, "content"), (9, "content"), (10, "collab"), (500, "collab")]
)
def test_tier_thresholds(lua: Any, n: int, tier: str) -> None:
    assert lua.tier(n, 1, 10) == tier


def test_anchor_weights_take_the_strongest_role(lua: Any) -> None:
    w = lua.weights("")
    now = 10 * HOUR
    ctx = table(lua, {
        "context": "P",
        "recent": [{"item": "V", "ts": now, "type": "view"},
                   {"item": "B", "ts": now - 2 * HOUR, "type": "purchase"},
                   {"item": "C", "ts": now - HOUR, "type": "add_to_cart"}],
        "cart": [{"item": "C", "ts": now - HOUR}],
        "hist": {"H": 0.5, "V": 0.1},
    })  # fmt: skip
    weights, reasons, live = lua.anchor_weights(table(lua, ["P", "V", "B", "C", "H", "X"]), ctx,
                                                w, now, HOUR)  # fmt: skip
    got = {a: (weights[i + 1], reasons[i + 1]) for i, a in enumerate("PVBCHX")}
    assert got["P"] == (2.0, "context")
    assert got["V"] == (pytest.approx(1.0), "viewed")  # a view just now
    assert got["B"] == (pytest.approx(0.25), "bought")  # two half-lives ago
    assert got["C"] == (1.5, "in_cart")  # the cart line (1.5) beats the decayed add (0.75)
    assert got["H"] == (pytest.approx(0.5), "history")
    assert got["X"] == (0, "history")
    # live roles (the live_share slots): not a purchase, not history
    assert {a: live[i + 1] for i, a in enumerate("PVBCHX")} == {
        "P": "context", "V": "viewed", "B": None, "C": "in_cart", "H": None, "X": None,
    }  # fmt: skip


@pytest.mark.parametrize("floor", [0.0, 0.3, 0.6])
def test_history_anchor_weight_has_a_floor_python_applies_alike(lua: Any, floor: float) -> None:
    """A history item's anchor weight is max(relative interest, hist_floor) x hist; an item
    outside the history stays 0. Python pre-sums history anchors with the same rule (it sends
    sum / weight of the strongest anchor, which the Function multiplies back), so the two must
    agree or history scores drift."""
    w = lua.weights(f"hist=2,hist_floor={floor}")
    rel = {"H": 0.9, "M": 0.4, "L": 0.05}
    ctx = table(lua, {"context": "", "recent": [], "cart": [], "hist": rel})
    weights, reasons, _ = lua.anchor_weights(table(lua, ["H", "M", "L", "X"]), ctx, w, HOUR, HOUR)
    got = {a: weights[i + 1] for i, a in enumerate("HMLX")}
    assert got == pytest.approx({a: 2 * max(r, floor) for a, r in rel.items()} | {"X": 0})
    assert reasons[3] == "history"
    py_ctx = RecContext(0, 3, (), (), tuple(rel), (), rel)
    for a in "HMLX":
        assert 2 * hist_anchor_weight(py_ctx, a, floor) == pytest.approx(got[a])


def test_diversify_caps_categories_and_is_prefix_consistent(lua: Any) -> None:
    def scored() -> Any:
        rows = [("a1", "a", 9.0), ("a2", "a", 8.0), ("a3", "a", 7.0), ("b1", "b", 6.0),
                ("a4", "a", 5.0), ("c1", "c", 4.0), ("b2", "b", 4.0)]  # fmt: skip
        return table(lua, [{"item": i, "category": c, "score": s} for i, c, s in rows])

    top, skipped = lua.diversify(scored(), 5, 2, 1)
    assert [top[i + 1]["item"] for i in range(len(top))] == ["a1", "a2", "b1", "b2", "c1"]
    assert skipped == 2  # a3 and a4 were passed over
    short, _ = lua.diversify(scored(), 3, 2, 1)
    assert [short[i + 1]["item"] for i in range(len(short))] == ["a1", "a2", "b1"]
    uncapped, skipped = lua.diversify(scored(), 3, 0, 1)
    assert [uncapped[i + 1]["item"] for i in range(3)] == ["a1", "a2", "a3"] and skipped == 0


def test_blend_keeps_slots_for_global_reasons_and_is_prefix_consistent(lua: Any) -> None:
    def scored() -> Any:
        rows = [(f"p{i}", 10.0 - i, True) for i in range(8)] + [
            (f"g{i}", 1.0 - i / 10, False) for i in range(8)
        ]
        return table(lua, [{"item": i, "category": i, "score": s, "personal": p}
                           for i, s, p in rows])  # fmt: skip

    def names(out: Any) -> list[str]:
        return [out[i + 1]["item"] for i in range(len(out))]

    top, _ = lua.diversify(scored(), 10, 0, 0.6)
    # ceil(0.6 * i) personal among the first i: p p g p g p p g p g
    assert names(top) == ["p0", "p1", "g0", "p2", "g1", "p3", "p4", "g2", "p5", "g3"]
    assert names(lua.diversify(scored(), 4, 0, 0.6)[0]) == names(top)[:4]
    only_personal = table(lua, [{"item": "x", "category": "c", "score": 1.0, "personal": True},
                                {"item": "y", "category": "d", "score": 0.5,
                                 "personal": True}])  # fmt: skip
    assert names(lua.diversify(only_personal, 5, 0, 0.1)[0]) == ["x", "y"]  # nothing else


def test_candidates_parse_flat_and_validate(lua: Any) -> None:
    cand = rec_calls.Candidate("I1", "kitchen", 2.5, True, 0.5, ("age",),
                               [("nn", 2, 0.4), ("tr", 0, 1.0)])  # fmt: skip
    _, argv = rec_calls.recommend_args(
        RecKeys("t:"), "u", rec_calls.RecParams(),
        ["A1", "A2"], [cand],
    )  # fmt: skip
    block = [str(x) for x in argv[18 + 2 + 1 :]]  # after n_anchors, anchors, n_candidates
    c, s, pos = lua.parse_candidates(table(lua, block), 1, 1, 2)
    assert (c["item"][1], c["category"][1], c["price"][1], c["stock"][1], c["flags"][1]) == (
        "I1", "kitchen", 2.5, True, "age",
    )  # fmt: skip
    assert [(s["src"][i], s["anchor"][i], s["value"][i]) for i in (1, 2)] == [
        ("nn", 2, 0.4), ("tr", 0, 1.0),
    ]  # fmt: skip
    assert pos == len(block) + 1
    bad = list(block)
    bad[7] = "38"  # anchor 3 of 2
    err = lua.error_of(lua.parse_candidates, table(lua, bad), 1, 1, 2)
    assert err == "ERR_BADARG candidate I1: bad source code 38"
    bad[7] = "2.5"  # not a whole code
    err = lua.error_of(lua.parse_candidates, table(lua, bad), 1, 1, 2)
    assert err == "ERR_BADARG candidate I1: bad source code 2.5"
    bad[7] = "-1"  # a negative anchor
    err = lua.error_of(lua.parse_candidates, table(lua, bad), 1, 1, 2)
    assert err == "ERR_BADARG candidate I1: bad source code -1"
    rise = list(block)
    rise[7] = "20"  # source 0 is 'rise' (1 nn .. 9 new, 0 rise)
    _, s, _ = lua.parse_candidates(table(lua, rise), 1, 1, 2)
    assert (s["src"][1], s["anchor"][1]) == ("rise", 2)


def test_score_sums_sources_and_names_the_strongest(lua: Any) -> None:
    w = lua.weights("aff=0,price=0,prior=0")
    m = lua.tier_weights(w, "collab")
    block = ["I1", "kitchen", "3", "1", "0", "", "3", "11", "0.5", "12", "0.9", "4", "1"]
    c, s, _ = lua.parse_candidates(table(lua, block), 1, 1, 1)
    aw = table(lua, [2.0])
    score, src, anchor, lsrc, lanchor = lua.score(
        c, s, 1, m, w, aw, table(lua, {"kitchen": 0.5}), table(lua, {})
    )
    w_nn, w_co, w_cat = DEFAULT_WEIGHTS["nn"], DEFAULT_WEIGHTS["co"], DEFAULT_WEIGHTS["cat"]
    # nn: weight x anchor 2 x 0.5; co: weight x 2 x 0.9; cat: weight x affinity 0.5 x 1
    assert score == pytest.approx(w_nn * 2 * 0.5 + w_co * 2 * 0.9 + w_cat * 0.5)
    assert (src, anchor) == ("nn", 1)
    assert (lsrc, lanchor) == (None, 0)  # no live anchors given
    live = table(lua, {1: True})
    *_, lsrc, lanchor = lua.score(c, s, 1, m, w, aw, table(lua, {"kitchen": 0.5}),
                                  table(lua, {}), live)  # fmt: skip
    strongest = "nn" if w_nn * 0.5 >= w_co * 0.9 else "co"
    assert (lsrc, lanchor) == (strongest, 1)  # the strongest term of a live anchor


def test_live_share_keeps_slots_for_the_session_while_it_has_candidates(lua: Any) -> None:
    def scored() -> Any:
        rows = [("k0", 20, False), ("k1", 19, False), ("k2", 18, False), ("k3", 17, False),
                ("v0", 3, True), ("v1", 2, True)]  # fmt: skip
        return table(lua, [{"item": i, "category": i, "score": sc, "personal": True,
                            "live": live} for i, sc, live in rows])  # fmt: skip

    def names(top: Any) -> list[str]:
        return [top[i + 1]["item"] for i in range(len(top))]

    # ceil(0.5 * i) live among the first i: v k v k, then no live candidate is left
    top, _ = lua.diversify(scored(), 6, 0, 1, 0.5)
    assert names(top) == ["v0", "k0", "v1", "k1", "k2", "k3"]
    assert top[1]["by_live"] and not top[2]["by_live"]
    assert names(lua.diversify(scored(), 3, 0, 1, 0.5)[0]) == names(top)[:3]  # prefix
    assert names(lua.diversify(scored(), 6, 0, 1, 0)[0])[:4] == ["k0", "k1", "k2", "k3"]  # off
    capped, skipped = lua.diversify(scored(), 3, 1, 1, 0.5)  # category cap still holds
    assert names(capped) == ["v0", "k0", "v1"] and skipped == 0


def test_every_recommendation_function_is_registered_with_its_flags(lua: Any) -> None:
    reg = lua.registered
    for name in ("rec_context", "recommend"):
        assert list(reg[name]["flags"].values()) == ["no-writes"]
    for name in ("rec_track", "exp_track"):
        assert reg[name]["flags"] is None
