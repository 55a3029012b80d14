"""A bounded, single-flight cache for results the viewer computes on request (cell layers, heatmap images).

Computing a lesion's cells takes about a second of CPU and a few hundred MB; a browser (or a hostile page) may
ask for the same one 40 times at once. :class:`ComputeCache` guarantees that

- a key is computed at most once at a time (single flight): concurrent requests for a key being computed wait
  for that computation and share its result (or its exception);
- at most ``max_concurrent`` different keys are computed at once; further requests wait their turn;
- at most ``max_items`` results are kept, the least recently used dropped first.

``computed`` counts the computations actually run (for tests and benchmarks).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any


class _Flight:
    """One computation in progress: its waiters block on ``done`` and then read ``value`` or ``error``."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class ComputeCache:
    """LRU cache of at most ``max_items`` values; at most ``max_concurrent`` computations run at once."""

    def __init__(self, max_items: int = 64, max_concurrent: int = 2):
        if max_items < 1 or max_concurrent < 1:
            raise ValueError("max_items and max_concurrent must be >= 1")
        self.max_items = max_items
        self._items: OrderedDict[Hashable, Any] = OrderedDict()
        self._flights: dict[Hashable, _Flight] = {}
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max_concurrent)
        self.computed = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        """The cached value of ``key``, else ``compute()`` run once however many threads ask at the same time."""
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = _Flight()
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return flight.value
        try:
            with self._slots:
                with self._lock:
                    self.computed += 1
                flight.value = compute()
        except BaseException as err:
            flight.error = err
            raise
        else:
            with self._lock:
                self._items[key] = flight.value
                while len(self._items) > self.max_items:
                    self._items.popitem(last=False)
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()
        return flight.value
