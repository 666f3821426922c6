"""The in-process tier that keeps recommendations answering when Redis is slow or down: the
last-good LRU, the circuit breaker, the budget error."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

from app.core.errors import EngineError
from app.recs.lists import RecList


class BudgetExceeded(EngineError):
    """The inline computation ran out of its latency budget."""


class LRU:
    """Bounded map of the last lists served per (user, surface, item, filters). Thread-safe."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[tuple[str, ...], RecList] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, ...]) -> RecList | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: tuple[str, ...], value: RecList) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)


class Breaker:
    """After a connection failure, calls skip Redis for `open_s` (no pile-up of timeouts)."""

    def __init__(self, open_s: float) -> None:
        self.open_s = open_s
        self.until = 0.0

    @property
    def open(self) -> bool:
        return time.monotonic() < self.until

    def trip(self) -> None:
        self.until = time.monotonic() + self.open_s

    def reset(self) -> None:
        self.until = 0.0
