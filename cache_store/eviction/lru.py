"""Least-recently-used eviction."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Optional


class LRUPolicy:
    def __init__(self) -> None:
        self._order: "OrderedDict[str, None]" = OrderedDict()

    def on_insert(self, key: str, size: int, chunk_index: int = 0) -> None:
        self._order[key] = None
        self._order.move_to_end(key)

    def on_access(self, key: str) -> None:
        if key in self._order:
            self._order.move_to_end(key)

    def on_remove(self, key: str) -> None:
        self._order.pop(key, None)

    def victim(self) -> Optional[str]:
        return next(iter(self._order), None)

    # The disk tier keeps its order in a shared index (tiers/disk.py): a chunk's score is the
    # time of its last access, lowest evicted first.
    shared_inflates = False

    @staticmethod
    def shared_score(freq: int, chunk_index: int, size: int, inflation: float) -> float:
        return float(time.time_ns())
