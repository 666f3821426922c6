"""Cutting a stream into lists (Python 3.11 has no `itertools.batched`)."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
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
    groups: Iterable[Sequence[T]],
    budget: int,
    *,
    group_cost: int = 0,
    extras: Callable[[T], Iterable[Hashable]] | None = None,
    extra_cost: int = 0,
    item_cost: Callable[[T], int] | None = None,
) -> list[list[list[T]]]:
    """Groups (e.g. one shopper's events, in order) packed into runs of at most `budget`
    work: each item costs `item_cost(item)` (default 1), each group present in a run
    `group_cost` more (its fixed cost, e.g. reading and writing the shopper's state) and
    each distinct extra of the group's items in that run (`extras(item)`, e.g. the feature
    states an event writes besides the shopper's own) `extra_cost` more. A group that does
    not fit in the current run fills it and continues at the start of the next (its parts
    stay in order, in consecutive runs, never two in one run). An item that alone exceeds
    the budget gets a run of its own."""
    if budget <= group_cost or group_cost < 0 or extra_cost < 0:
        raise ValueError("budget must exceed group_cost (>= 0): a run takes at least one item")
    runs: list[list[list[T]]] = [[]]
    room = budget
    for group in groups:
        part: list[T] = []
        seen: set[Hashable] = set()
        for item in group:
            own = 1 if item_cost is None else item_cost(item)
            mine = set(extras(item)) if extras is not None else set()
            new = mine - seen
            cost = own + extra_cost * len(new) + (0 if part else group_cost)
            if cost > room and (part or runs[-1]):
                if part:
                    runs[-1].append(part)
                runs.append([])
                room, part, seen, new = budget, [], set(), mine
                cost = own + extra_cost * len(new) + group_cost
            part.append(item)
            seen |= new
            room -= cost
        if part:
            runs[-1].append(part)
    return [run for run in runs if run]
