import pytest

from app.core.batching import batched, budget_runs


def test_batched_keeps_order_and_the_short_tail() -> None:
    assert list(batched(range(7), 3)) == [[0, 1, 2], [3, 4, 5], [6]]
    assert list(batched([], 3)) == []
    assert list(batched("ab", 5)) == [["a", "b"]]


def test_batched_is_lazy() -> None:
    def endless():  # type: ignore[no-untyped-def]
        n = 0
        while True:
            yield n
            n += 1

    assert next(batched(endless(), 2)) == [0, 1]


def test_batched_refuses_a_size_below_one() -> None:
    with pytest.raises(ValueError, match="size"):
        list(batched([1], 0))


def test_budget_runs_fill_each_run_and_split_a_group_across_consecutive_runs() -> None:
    groups = [["a1", "a2"], ["b1", "b2", "b3", "b4", "b5"], ["c1"]]
    assert budget_runs(groups, 3) == [
        [["a1", "a2"], ["b1"]],
        [["b2", "b3", "b4"]],
        [["b5"], ["c1"]],
    ]
    # Every item once, in order; no run over budget; a group never twice in one run.
    for budget in range(1, 9):
        runs = budget_runs(groups, budget)
        assert [x for run in runs for part in run for x in part] == [x for g in groups for x in g]
        assert all(sum(len(part) for part in run) <= budget for run in runs)
        assert all(len({part[0][0] for part in run}) == len(run) for run in runs)
    assert budget_runs([], 3) == [] and budget_runs([[]], 3) == []


def test_budget_runs_charge_each_group_its_fixed_cost_in_every_run_it_enters() -> None:
    groups = [["a1"], ["b1"], ["c1", "c2", "c3", "c4", "c5", "c6"], ["d1"]]
    runs = budget_runs(groups, 6, group_cost=2)
    assert runs == [[["a1"], ["b1"]], [["c1", "c2", "c3", "c4"]], [["c5", "c6"]], [["d1"]]]
    for run in runs:
        assert sum(2 + len(part) for part in run) <= 6


def test_budget_runs_refuse_a_budget_that_holds_no_item() -> None:
    with pytest.raises(ValueError, match="budget"):
        budget_runs([[1]], 0)
    with pytest.raises(ValueError, match="budget"):
        budget_runs([[1]], 3, group_cost=3)


def test_budget_runs_charge_each_distinct_extra_once_per_run() -> None:
    # Items name their extras (e.g. "a1:x" writes state x); x again in the same run is free.
    groups = [["a1:x", "a2:x", "a3:y", "a4:z"], ["b1:x"]]

    def extras(item: str) -> list[str]:
        return [item[0] + item.split(":")[1]]  # per group: a shopper's category states

    runs = budget_runs(groups, 7, group_cost=2, extras=extras, extra_cost=1)
    # a1 costs 2+1+1, a2 1, a3 1+1 -> 7; a4 starts a new run: 2+1+1; b1 2+1+1 does not fit.
    assert runs == [[["a1:x", "a2:x", "a3:y"]], [["a4:z"]], [["b1:x"]]]
    # An item heavier than the budget still gets a run of its own.
    assert budget_runs([["a1:x"]], 3, group_cost=2, extras=extras, extra_cost=5) == [[["a1:x"]]]
    # Without extras the result is the plain packing.
    plain = budget_runs(groups, 7, group_cost=2)
    assert plain == budget_runs(groups, 7, group_cost=2, extras=extras, extra_cost=0)


def test_budget_runs_charge_each_item_its_own_cost() -> None:
    # An order of 4 products costs 4: it does not share a run of budget 6 with 2 more items.
    groups = [["v1", "o4", "v2", "v3"]]
    runs = budget_runs(groups, 6, group_cost=1, item_cost=lambda item: int(item[1]))
    assert runs == [[["v1", "o4"]], [["v2", "v3"]]]
    # The default costs every item 1.
    assert budget_runs(groups, 6, group_cost=1) == [[["v1", "o4", "v2", "v3"]]]
