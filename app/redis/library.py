"""The `retail` Redis Functions library: assembly from lua/*.lua, loading, version check.

The library version is `<package version>+<sha256 of the Lua sources>[:12]`, injected as a Lua
constant, so any edit to any Lua file yields a new version and the app refuses to run against
a stale library (`LibraryVersionError`) instead of silently calling old code. On a Redis
Cluster the library lives on every primary (Functions are per node; replicas copy their
primary's): loading and the version check go to each primary in turn.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import redis

from app.core.errors import LibraryVersionError, RedisSetupError
from app.redis.connect import node_name, primaries

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
    """FUNCTION LOAD REPLACE on the server, or on every primary of a cluster; returns the
    library that is now live. (A cluster client would send FUNCTION LOAD to one node only.)"""
    lib = library or build_library()
    for node in primaries(client):
        try:
            node.function_load(lib.code, replace=True)
        except redis.ResponseError as exc:
            raise RedisSetupError(
                f"loading the Functions library on {node_name(node)} failed: {exc}"
            ) from exc
    return lib


def _node_version(node: redis.Redis) -> str | None:
    try:
        value = node.fcall_ro("library_version", 0)
    except redis.ResponseError as exc:
        if "not found" in str(exc).lower():
            return None
        raise
    return value.decode() if isinstance(value, bytes) else str(value)


def node_versions(client: redis.Redis) -> dict[str, str | None]:
    """`host:port` -> live library version (None: no library) of every primary."""
    return {node_name(node): _node_version(node) for node in primaries(client)}


def loaded_version(client: redis.Redis) -> str | None:
    """The live version when every primary runs the same one; None when any lacks it; a
    `mixed:` marker when they differ (a node added or restarted without the library)."""
    versions = set(node_versions(client).values())
    if None in versions:
        return None
    if len(versions) == 1:
        return versions.pop()
    return "mixed:" + ",".join(sorted(str(v) for v in versions))


def ensure_current(client: redis.Redis, *, load_if_stale: bool) -> Library:
    """Check every primary runs these sources; load it where it does not when allowed (a
    master added to the cluster later gets the library at the next start-up), else refuse."""
    lib = build_library()
    stale = [name for name, v in node_versions(client).items() if v != lib.version]
    if not stale:
        return lib
    if load_if_stale:
        return load(client, lib)
    raise LibraryVersionError(
        f"Redis node(s) {', '.join(stale)} lack Functions library version {lib.version}: "
        "run `python -m app.cli functions load` (or start with RETAIL_LOAD_FUNCTIONS=1)"
    )


def ensure_everywhere(client: redis.Redis, catalog: redis.Redis, *, load_if_stale: bool) -> Library:
    """`ensure_current` on the engine's server(s) and, when it is another server, on the
    catalog node (the catalog Functions run there)."""
    lib = ensure_current(client, load_if_stale=load_if_stale)
    if catalog is not client:
        ensure_current(catalog, load_if_stale=load_if_stale)
    return lib
