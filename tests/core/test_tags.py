"""Spread hash tags: Redis's own slot of every tag, and an even share per master."""

from __future__ import annotations

import pytest
from redis.crc import key_slot

from app.core.tags import SLOTS, slot_of_tag, spread_tag


def masters_of(tags: list[str], masters: int) -> list[int]:
    """Parts per master when the slots are cut into `masters` equal contiguous ranges (as
    `redis-cli --cluster create` assigns them)."""
    counts = [0] * masters
    for tag in tags:
        counts[min(key_slot(("{" + tag + "}").encode()) * masters // SLOTS, masters - 1)] += 1
    return counts


@pytest.mark.parametrize("n", [12, 16, 64])
@pytest.mark.parametrize("masters", [3, 4, 5, 7])
def test_parts_spread_evenly_over_any_number_of_masters(n: int, masters: int) -> None:
    tags = [spread_tag("p", i, n) for i in range(n)]
    assert len(set(tags)) == n
    counts = masters_of(tags, masters)
    assert max(counts) - min(counts) <= 2, counts  # plain {p0}..{p63}: 20 / 20 / 24 on 3


def test_slot_is_redis_own() -> None:
    for tag in ["g0.0", "p17.3", "a", "user-42", "ünï"]:
        assert slot_of_tag(tag) == key_slot(("{" + tag + "}").encode())
        assert slot_of_tag(tag) == key_slot(f"x:{{{tag}}}:y".encode())


def test_tags_are_stable_and_checked() -> None:
    assert spread_tag("g", 3, 12) == spread_tag("g", 3, 12)
    assert spread_tag("g", 3, 12) != spread_tag("g", 3, 16)
    with pytest.raises(ValueError, match="out of range"):
        spread_tag("g", 12, 12)
