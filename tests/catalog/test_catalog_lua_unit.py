"""Pure helpers of lua/50_catalog.lua in Lua 5.1 (lupa): the guard decision and JSON splicing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.lua_harness import execute_library

EXPOSE = ["price_verdict", "splice", "json_num", "ts_value"]


@pytest.fixture(scope="module")
def lua() -> Any:
    helpers, rt, registered = execute_library(
        "return {" + ", ".join(f"{n} = {n}" for n in EXPOSE) + "}",
        cjson={"encode": json.dumps, "decode": json.loads},
    )
    helpers.rt = rt
    helpers.registered = registered
    return helpers


def guard(lua: Any, **kw: Any) -> Any:
    return lua.rt.table_from({"locked": False, "lock_reason": "", **kw})


# (new price, source, guard, window lo, window hi, expected reason)
VERDICTS = [
    (2.80, "automation", {}, 2.55, 2.55, None),  # +9.8%
    (3.315, "automation", {}, 2.55, 2.55, None),  # exactly +30%: allowed (float noise aside)
    (3.32, "automation", {}, 2.55, 2.55, "velocity"),
    (1.785, "automation", {}, 2.55, 2.55, None),  # exactly -30%
    (1.78, "feed", {}, 2.55, 2.55, "velocity"),
    (3.20, "automation", {}, 2.55, 3.00, None),  # within 30% of every price in the window
    (3.40, "automation", {}, 2.55, 3.00, "velocity"),  # +33% from 2.55 seen this window
    (2.00, "automation", {}, 2.55, 3.00, "velocity"),  # -33% from 3.00 seen this window
    (9.99, "manual", {}, 2.55, 2.55, None),  # manual is not velocity-limited
    (2.60, "automation", {"locked": True, "lock_reason": "promo"}, 2.55, 2.55, "locked"),
    (9.99, "manual", {"locked": True}, 2.55, 2.55, None),  # a manual change overrides the lock
    (1.90, "automation", {"floor": 2.0}, 2.55, 2.55, "below_floor"),
    (1.90, "manual", {"floor": 2.0}, 2.55, 2.55, "below_floor"),  # bounds bind manual too
    (2.00, "automation", {"floor": 2.0}, 2.55, 2.55, None),  # at the floor
    (3.50, "manual", {"ceiling": 3.0}, 2.55, 2.55, "above_ceiling"),
    (2.60, "automation", {}, None, None, None),  # no previous price: nothing to compare
]


@pytest.mark.parametrize(("new", "source", "g", "lo", "hi", "expected"), VERDICTS)
def test_price_verdict_table(
    lua: Any, new: float, source: str, g: dict[str, Any], lo: float | None, hi: float | None,
    expected: str | None,
) -> None:  # fmt: skip
    result = lua.price_verdict(new, source, guard(lua, **g), lo, hi, 30, 3_600_000)
    reason = result[0] if isinstance(result, tuple) else result
    assert reason == expected
    if expected is not None:
        assert isinstance(result, tuple) and result[1]  # a human-readable detail


def test_lock_reason_is_in_the_detail(lua: Any) -> None:
    reason, detail = lua.price_verdict(
        2.6, "automation", guard(lua, locked=True, lock_reason="black friday"), 2.55, 2.55, 30,
        3_600_000,
    )  # fmt: skip
    assert reason == "locked" and "black friday" in detail


def test_splice_appends_members(lua: Any) -> None:
    members = lua.rt.table_from([lua.rt.table_from(["price", "2.5"])])
    assert json.loads(lua.splice('{"a":1}', members)) == {"a": 1, "price": 2.5}
    assert json.loads(lua.splice("{}", members)) == {"price": 2.5}
    assert json.loads(lua.splice("{ }", members)) == {"price": 2.5}
    assert lua.splice('{"a":1}', lua.rt.table_from([])) == '{"a":1}'


def test_json_num_and_ts_value(lua: Any) -> None:
    assert lua.json_num(3) == "3"
    assert lua.json_num(1_795_000_000_000) == "1795000000000"
    assert float(lua.json_num(2.55)) == 2.55
    assert lua.ts_value(lua.rt.table_from({"ok": "1.65"})) == 1.65
    assert lua.ts_value("2") == 2


def test_catalog_functions_registered_with_flags(lua: Any) -> None:
    reg = lua.registered
    assert {"catalog_upsert", "catalog_update", "catalog_item"} <= set(reg)
    flags = reg["catalog_item"]["flags"]
    assert list(flags.values()) == ["no-writes"]
    assert reg["catalog_update"]["flags"] is None and reg["catalog_upsert"]["flags"] is None
