"""The tier contract and the bookkeeping shared by local (memory, disk) tiers.

Tier (batch-first, like LMCache's backends):
    get_many(keys) -> list[bytes | None]   None = miss (absent, evicted, or tier down)
    put_many(items)                        best effort: a full or down tier drops writes
    contains_many(keys) -> list[bool]
    delete_many(keys)
    set_capacity(bytes)                    shrinking evicts at once down to the new limit
    stats() -> dict
    close()

Failure semantics: no method raises for I/O trouble. A tier that cannot read answers miss; one
that cannot write drops the write; both count the event in stats. Callers never need a
try/except to keep serving.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from typing import Optional, Protocol, Sequence

from cache_store.eviction import EvictionPolicy, LRUPolicy


class Tier(Protocol):
    name: str

    def get_many(self, keys: Sequence[str]) -> list[Optional[bytes]]: ...
    def put_many(self, items: Sequence[tuple[str, bytes, int]]) -> None: ...
    def contains_many(self, keys: Sequence[str]) -> list[bool]: ...
    def delete_many(self, keys: Sequence[str]) -> None: ...
    def set_capacity(self, capacity_bytes: int) -> None: ...
    def stats(self) -> dict: ...
    def close(self) -> None: ...


@dataclass
class TierStats:
    lookups: int = 0  # keys asked for in get/contains
    hits: int = 0  # keys found
    bytes_read: int = 0
    bytes_written: int = 0
    puts: int = 0
    dropped_puts: int = 0  # writes not stored (too large, tier full of errors, tier down)
    evictions: int = 0
    evicted_bytes: int = 0
    errors: int = 0
    get_s: float = 0.0  # summed wall time in get_many
    put_s: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


class LocalTier:
    """Capacity-bounded tier with an in-process index and an eviction policy.

    Subclasses implement `_read`, `_write`, `_delete`; this class keeps `used_bytes` within
    `capacity_bytes` at every moment (evicting before a write that would overflow).
    """

    name = "local"

    def __init__(self, capacity_bytes: int, policy: Optional[EvictionPolicy] = None) -> None:
        self.capacity_bytes = int(capacity_bytes)
        self.policy = policy or LRUPolicy()
        self.index: dict[str, int] = {}
        self.used_bytes = 0
        self.s = TierStats()
        self._lock = threading.RLock()

    # subclass hooks
    def _read(self, key: str) -> Optional[bytes]: raise NotImplementedError
    def _write(self, key: str, value: bytes) -> bool: raise NotImplementedError
    def _delete(self, key: str) -> None: raise NotImplementedError

    def _track(self, key: str, size: int, chunk_index: int = 0) -> None:
        self.index[key] = size
        self.used_bytes += size
        self.policy.on_insert(key, size, chunk_index)

    def _untrack(self, key: str) -> None:
        size = self.index.pop(key, None)
        if size is not None:
            self.used_bytes -= size
            self.policy.on_remove(key)

    def _evict_until(self, limit: int) -> None:
        while self.used_bytes > limit and self.index:
            victim = self.policy.victim()
            if victim is None or victim not in self.index:
                # Policy lost track (should not happen); fall back to any key.
                victim = next(iter(self.index))
            size = self.index[victim]
            self._delete(victim)
            self._untrack(victim)
            self.s.evictions += 1
            self.s.evicted_bytes += size

    def get_many(self, keys: Sequence[str]) -> list[Optional[bytes]]:
        t0 = time.perf_counter()
        out: list[Optional[bytes]] = []
        with self._lock:
            for k in keys:
                self.s.lookups += 1
                v = self._read(k) if k in self.index else None
                if v is None:
                    if k in self.index:  # vanished underneath us (e.g. file removed)
                        self._untrack(k)
                    out.append(None)
                    continue
                self.s.hits += 1
                self.s.bytes_read += len(v)
                self.policy.on_access(k)
                out.append(v)
        self.s.get_s += time.perf_counter() - t0
        return out

    def contains_many(self, keys: Sequence[str]) -> list[bool]:
        with self._lock:
            return [k in self.index for k in keys]

    def put_many(self, items: Sequence[tuple[str, bytes, int]]) -> None:
        """`items` are (key, value, chunk_index); chunk_index feeds cost-aware eviction."""
        t0 = time.perf_counter()
        with self._lock:
            for key, value, chunk_index in items:
                size = len(value)
                if key in self.index:
                    self.policy.on_access(key)
                    continue
                if size > self.capacity_bytes:
                    self.s.dropped_puts += 1
                    continue
                self._evict_until(self.capacity_bytes - size)
                if self._write(key, value):
                    self._track(key, size, chunk_index)
                    self.s.puts += 1
                    self.s.bytes_written += size
                else:
                    self.s.dropped_puts += 1
        self.s.put_s += time.perf_counter() - t0

    def delete_many(self, keys: Sequence[str]) -> None:
        with self._lock:
            for k in keys:
                if k in self.index:
                    self._delete(k)
                    self._untrack(k)

    def set_capacity(self, capacity_bytes: int) -> None:
        with self._lock:
            self.capacity_bytes = int(capacity_bytes)
            self._evict_until(self.capacity_bytes)

    def stats(self) -> dict:
        with self._lock:
            return {"tier": self.name, "capacity_bytes": self.capacity_bytes, "used_bytes": self.used_bytes,
                    "chunks": len(self.index), **self.s.as_dict()}

    def close(self) -> None:
        pass
