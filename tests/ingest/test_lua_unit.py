"""Pure Lua logic, run in Lua 5.1 via lupa (fast; the same functions run in Redis)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tests.lua_harness import _to_py, load

H = 14 * 86_400_000  # default affinity half-life (ms)
EPOCH = 1_262_304_000_000


@pytest.fixture(scope="module")
def lua() -> Any:
    return load()


# (weight, event age in half-lives at read time, expected decayed value)
DECAY_TABLE = [
    (1.0, 0.0, 1.0),
    (1.0, 1.0, 0.5),
    (8.0, 2.0, 2.0),
    (4.0, 0.5, 4.0 / math.sqrt(2)),
    (1.0, 10.0, 1.0 / 1024),
    (1.0, -1.0, 2.0),  # an event "from the future" relative to the read time
    (2.5, 30.0, 2.5 * 2.0**-30),
]


@pytest.mark.parametrize(("weight", "age_h", "expected"), DECAY_TABLE)
@pytest.mark.parametrize("years_after_epoch", [1, 16, 30])
def test_forward_decay_table(
    lua: Any, weight: float, age_h: float, expected: float, years_after_epoch: int
) -> None:
    t = EPOCH + years_after_epoch * 365 * 86_400_000
    score = lua.forward_weight(weight, t, EPOCH, H)
    at = t + age_h * H
    assert math.isfinite(score)
    assert lua.decayed_value(score, at, EPOCH, H) == pytest.approx(expected, rel=1e-9)


def test_forward_decay_sums_and_orders_like_exponential_decay(lua: Any) -> None:
    t0 = EPOCH + 5 * 365 * 86_400_000
    # Category a: weight 8 thirty days ago; b: weight 1 today and weight 1 a week ago.
    a = lua.forward_weight(8, t0 - 30 * 86_400_000, EPOCH, H)
    b = lua.forward_weight(1, t0, EPOCH, H) + lua.forward_weight(1, t0 - 7 * 86_400_000, EPOCH, H)
    now = t0
    da, db = lua.decayed_value(a, now, EPOCH, H), lua.decayed_value(b, now, EPOCH, H)
    assert da == pytest.approx(8 * 2 ** (-30 / 14), rel=1e-9)
    assert db == pytest.approx(1 + 2 ** (-7 / 14), rel=1e-9)
    assert (a > b) == (da > db)
    assert lua.decayed_value(0, now, EPOCH, H) == 0


@pytest.mark.parametrize(
    ("price", "band"),
    [
        (0, None),
        (-1, None),
        (0.5, "lt2"),
        (2, "2-5"),
        (4.99, "2-5"),
        (5, "5-10"),
        (24.9, "10-25"),
        (25, "25+"),
    ],
)
def test_price_band(lua: Any, price: float, band: str | None) -> None:
    assert lua.price_band(price) == band


def test_head_front_moves_an_item_to_the_front_and_caps(lua: Any) -> None:
    rt = lua.runtime
    head = rt.table_from([])
    for seq, item in enumerate(["A", "B", "C", "A", "D"], start=1):
        lua.head_front(head, item, 100 + seq, 3)
    assert [list(_to_py(row)) for row in _to_py(head)] == [["D", 105], ["A", 104], ["C", 103]]


def test_newest_orders_by_time_then_seq_and_caps(lua: Any) -> None:
    rt = lua.runtime
    entries = rt.table_from({
        "A": rt.table_from([10, "view", 1]), "B": rt.table_from([30, "view", 2]),
        "C": rt.table_from([30, "click", 5]), "D": rt.table_from([5, 3]),  # purchased: [ts, seq]
    })  # fmt: skip
    rows = [list(_to_py(r)) for r in _to_py(lua.newest(entries, 3))]
    assert rows == [["C", 30, 5], ["B", 30, 2], ["A", 10, 1]]


def test_trim_cart_drops_the_stalest_lines(lua: Any) -> None:
    rt = lua.runtime
    cart = rt.table_from(
        {
            f"I{i}": rt.table_from({"qty": 1, "price": 1, "ts": ts})
            for i, ts in enumerate([5, 1, 9, 3])
        }
    )
    dirty = rt.table_from({})
    lua.trim_cart(cart, 2, dirty)
    assert sorted(_to_py(cart)) == ["I0", "I2"]
    assert sorted(_to_py(dirty)) == ["I1", "I3"]  # removed lines go out as nulls in the patch


def test_collect_pairs_respects_window_and_limit(lua: Any) -> None:
    rt = lua.runtime
    head = rt.table_from(
        [rt.table_from([i, ts]) for i, ts in [("X", 100), ("Y", 90), ("Z", 0), ("W", 80)]]
    )
    out = rt.table_from([])
    lua.collect_pairs(out, head, "X", 100, "v", 50, 2)  # X itself skipped; Z outside window
    assert [list(_to_py(p)) for p in _to_py(out)] == [["Y", "X", "v"], ["W", "X", "v"]]


def test_encode_doc_keeps_empty_arrays_as_arrays(lua: Any) -> None:
    rt = lua.runtime
    doc = rt.table_from({"head": rt.table_from([]), "bhead": rt.table_from([]),
                         "recent": rt.table_from({}), "cart": rt.table_from({})})  # fmt: skip
    # The stub cjson renders empty tables as {} like Redis' cjson; encode_doc must fix them.
    encoded = lua.encode_doc(doc)
    assert '"head":[]' in encoded and '"bhead":[]' in encoded and '"recent":{}' in encoded


def test_weights_parse(lua: Any) -> None:
    w = _to_py(lua.parse_weights("view=1,click=2.5,purchase=8"))
    assert w == {"view": 1, "click": 2.5, "purchase": 8}


def test_library_registers_every_function_once(lua: Any) -> None:
    names = set(_to_py(lua.registered))
    assert {"ingest_partition", "apply_blocks", "user_profile", "export_user", "identify_user",
            "trending", "library_version", "catalog_upsert", "catalog_update",
            "catalog_item"} <= names  # fmt: skip
    # Each name registered once: the registry is a mapping, so compare with the Lua sources.
    import re

    from app.redis.library import lua_sources

    declared = [
        m for p in lua_sources() for m in re.findall(r"function_name = '(\w+)'", p.read_text())
    ]
    assert sorted(declared) == sorted(names)
