"""Grouping work into Function calls: every call touches one hash slot on a cluster, and on a
standalone server (any key in any call) several entities share a call to save round trips."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TypeVar

from redis.crc import key_slot

T = TypeVar("T")


def call_groups(
    items: Sequence[T], key_of: Callable[[T], str], *, cluster: bool, per_call: int
) -> list[list[T]]:
    """`items` cut into one list per Function call: by the hash slot of `key_of(item)` on a
    cluster, else in runs of at most `per_call` (>= 1), order kept."""
    if not cluster:
        step = max(1, per_call)
        return [list(items[i : i + step]) for i in range(0, len(items), step)]
    by_slot: dict[int, list[T]] = defaultdict(list)
    for item in items:
        by_slot[key_slot(key_of(item).encode())].append(item)
    return list(by_slot.values())
