"""Hash tags that spread N parts evenly over a cluster's masters.

A family split N ways (`{g0}`, `{g1}`, ...) lands on the masters by the CRC16 slot of each tag,
which is as uneven as dice: 16 tags `{a0}..{a15}` put 4 / 4 / 8 of them on three masters with
evenly assigned slot ranges. `spread_tag(name, i, n)` instead picks, for part i, the first tag
`<name><i>.<k>` whose slot falls in the i-th of n equal slice of the 16,384 slots. Any
assignment of contiguous, equal slot ranges to M masters (what `redis-cli --cluster create`
and rebalancing produce) then gives each master n/M parts, +- 1.

The tags are a pure function of (name, i, n): every process and language computes the same ones
(CRC16/XMODEM of the tag, as Redis does). Changing n changes the tags (a re-split moves data).
"""

from __future__ import annotations

from functools import lru_cache

SLOTS = 16_384


def crc16(data: bytes) -> int:
    """CRC16/XMODEM, the cluster's key hash (Redis `crc16.c`)."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def slot_of_tag(tag: str) -> int:
    return crc16(tag.encode()) % SLOTS


@lru_cache(maxsize=4096)
def spread_tag(name: str, i: int, n: int) -> str:
    """The hash tag (without braces) of part i of n of the family `name`."""
    if not 0 <= i < n:
        raise ValueError(f"part {i} out of range for {n} parts")
    lo, hi = i * SLOTS // n, (i + 1) * SLOTS // n
    k = 0
    while True:  # about n tries on average: each lands in the slice with probability 1/n
        tag = f"{name}{i}.{k}"
        if lo <= slot_of_tag(tag) < hi:
            return tag
        k += 1
