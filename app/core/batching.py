"""Cutting a stream into lists (Python 3.11 has no `itertools.batched`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


def batched(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """Consecutive lists of `size` items (the last may be shorter), lazily."""
    if size < 1:
        raise ValueError("size must be >= 1")
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def budget_runs(
    groups: Iterable[Sequence[T]], budget: int, *, group_cost: int = 0
) -> list[list[list[T]]]:
    """Groups (e.g. one shopper's events, in order) packed into runs of at most `budget`
    work: each item costs 1 and each group present in a run `group_cost` more (its fixed
    cost, e.g. reading and writing the shopper's state). A group that does not fit in the
    current run fills it and continues at the start of the next (its parts stay in order, in
    consecutive runs, never two in one run)."""
    if budget <= group_cost or group_cost < 0:
        raise ValueError("budget must exceed group_cost (>= 0): a run takes at least one item")
    runs: list[list[list[T]]] = [[]]
    room = budget
    for group in groups:
        items = list(group)
        while items:
            if room <= group_cost:
                runs.append([])
                room = budget
            take = room - group_cost
            part, items = items[:take], items[take:]
            runs[-1].append(part)
            room -= group_cost + len(part)
    return [run for run in runs if run]
