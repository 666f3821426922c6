"""Run the library's Lua in lupa's Lua 5.1 (Redis' dialect) for fast unit tests of pure logic.

The chunk is the same code `app.redis.library.build_library` loads into Redis, plus a final
`return {...}` exposing the local helpers under test. `redis.call` is a stub that fails
loudly: these tests cover logic that must not touch Redis.
"""

from __future__ import annotations

import json
from typing import Any

from lupa import lua51

from app.redis.library import build_library

EXPOSE = [
    "forward_weight", "decayed_value", "price_band", "head_front", "newest", "trim_cart",
    "collect_pairs", "encode_doc", "parse_weights",
]  # fmt: skip


def execute_library(
    tail: str, cjson: dict[str, Any] | None = None
) -> tuple[Any, Any, dict[str, Any]]:
    """Run the library chunk plus `tail` (e.g. `return {...}`) in a fresh Lua 5.1 runtime.

    Returns (what `tail` returns, the runtime, {function name: its register_function spec}).
    `cjson` replaces the default stand-in (which renders empty tables as {} like Redis' cjson).
    """
    lua = lua51.LuaRuntime(unpack_returned_tuples=True)
    registered: dict[str, Any] = {}

    def register(spec: Any) -> None:
        registered[spec["function_name"]] = spec

    def call(*args: Any) -> Any:
        raise AssertionError(f"redis.call in a pure helper: {list(args)}")

    def encode(value: Any) -> str:
        return json.dumps(_to_py(value), separators=(",", ":"))

    lua.globals().redis = lua.table_from({"register_function": register, "call": call})
    default = {"encode": encode, "decode": lambda s: lua.table_from(json.loads(s))}
    lua.globals().cjson = lua.table_from(cjson or default)
    code = build_library().code.split("\n", 1)[1]  # drop the #!lua shebang line
    return lua.execute(code + "\n" + tail), lua, registered


def load() -> Any:
    exports = ", ".join(f"{name} = {name}" for name in EXPOSE)
    helpers, lua, registered = execute_library(f"return {{{exports}}}")
    helpers.registered = lua.table_from(
        {name: spec["callback"] for name, spec in registered.items()}
    )
    helpers.runtime = lua
    return helpers


def _to_py(value: Any) -> Any:
    if lua51.lua_type(value) == "table":
        keys = list(value.keys())
        if (
            keys
            and all(isinstance(k, int) for k in keys)
            and sorted(keys) == list(range(1, len(keys) + 1))
        ):
            return [_to_py(value[k]) for k in sorted(keys)]
        return {str(k): _to_py(v) for k, v in value.items()}
    return value
