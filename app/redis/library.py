"""The `retail` Redis Functions library: assembly from lua/*.lua, loading, version check.

The library version is `<package version>+<sha256 of the Lua sources>[:12]`, injected as a Lua
constant, so any edit to any Lua file yields a new version and the app refuses to run against
a stale library (`LibraryVersionError`) instead of silently calling old code.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import redis

from app.core.errors import LibraryVersionError, RedisSetupError

LIBRARY_NAME = "retail"
LUA_DIR = Path(__file__).resolve().parents[2] / "lua"
PACKAGE_VERSION = "0.1.0"


@dataclass(frozen=True)
class Library:
    name: str
    version: str
    code: str


def lua_sources(lua_dir: Path = LUA_DIR) -> list[Path]:
    files = sorted(lua_dir.glob("*.lua"))
    if not files:
        raise RedisSetupError(f"no Lua sources in {lua_dir}")
    return files


def build_library(lua_dir: Path = LUA_DIR) -> Library:
    """Concatenate lua/*.lua (sorted by name) under the `#!lua` shebang."""
    parts = [(p.name, p.read_text()) for p in lua_sources(lua_dir)]
    digest = hashlib.sha256()
    for name, text in parts:
        digest.update(name.encode() + b"\0" + text.encode() + b"\0")
    version = f"{PACKAGE_VERSION}+{digest.hexdigest()[:12]}"
    body = "\n".join(f"-- ===== {name} =====\n{text}" for name, text in parts)
    code = f"#!lua name={LIBRARY_NAME}\nlocal LIBRARY_VERSION = '{version}'\n{body}"
    return Library(LIBRARY_NAME, version, code)


def load(client: redis.Redis, library: Library | None = None) -> Library:
    """FUNCTION LOAD REPLACE; returns the library that is now live."""
    lib = library or build_library()
    try:
        client.function_load(lib.code, replace=True)
    except redis.ResponseError as exc:
        raise RedisSetupError(f"loading the Functions library failed: {exc}") from exc
    return lib


def loaded_version(client: redis.Redis) -> str | None:
    try:
        value = client.fcall_ro("library_version", 0)
    except redis.ResponseError as exc:
        if "Function not found" in str(exc) or "not found" in str(exc).lower():
            return None
        raise
    return value.decode() if isinstance(value, bytes) else str(value)


def ensure_current(client: redis.Redis, *, load_if_stale: bool) -> Library:
    """Check the live library matches these sources; load it when allowed, else refuse."""
    lib = build_library()
    live = loaded_version(client)
    if live == lib.version:
        return lib
    if load_if_stale:
        return load(client, lib)
    raise LibraryVersionError(
        f"Redis has Functions library version {live or '(none)'}, this code needs {lib.version}: "
        "run `python -m app.cli functions load` (or start with RETAIL_LOAD_FUNCTIONS=1)"
    )
