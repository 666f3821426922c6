import pytest

from app.core.batching import batched


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
