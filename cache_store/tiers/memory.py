"""In-process memory tier (DRAM): the fastest, smallest, per-process tier."""

from __future__ import annotations

from typing import Optional

from cache_store.eviction import EvictionPolicy
from cache_store.tiers.base import LocalTier


class MemoryTier(LocalTier):
    name = "memory"

    def __init__(self, capacity_bytes: int, policy: Optional[EvictionPolicy] = None) -> None:
        super().__init__(capacity_bytes, policy)
        self._data: dict[str, bytes] = {}

    def _read(self, key: str) -> Optional[bytes]:
        return self._data.get(key)

    def _write(self, key: str, value: bytes) -> bool:
        self._data[key] = bytes(value)
        return True

    def _delete(self, key: str) -> None:
        self._data.pop(key, None)
