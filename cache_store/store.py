"""KVStore: ordered tiers (local first), longest-prefix lookup, promotion, write-through.

- `lookup_prefix(keys)` → how many leading chunk keys are present in *some* tier. A prefix
  may span tiers (chunk 0 on disk, chunk 1 in Redis).
- `get_many(keys)` reads each key from the first tier that has it and promotes hits into the
  faster tiers above: inline, or with `promote_in_background` from a thread of its own, so a
  load (which the engine waits for before prefill) does not also wait for the writes. Up to
  `PROMOTE_QUEUE` batches wait; beyond that, promotions are dropped and counted.
- `put_many(items)` writes through to every tier (each tier enforces its own capacity).
- `invalidate(keys)` deletes a chunk everywhere (used when a value fails validation).
- `set_capacity(tier, bytes)` changes a tier's limit while serving. The disk tier's capacity
  is the node's (tiers/disk.py): whoever sets it, every process on the node follows it.

Stats: per-tier counters, lookups and hits, and the capacity each tier has held over time
(GB-hours), which the autoscaler's carbon ledger turns into embodied carbon. Every lookup also
feeds a SHARDS access sample (sampling.py) for the autoscaler's hit-rate curve.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any, Optional, Sequence

from cache_store.sampling import AccessSampler

logger = logging.getLogger("greencache.store")

PROMOTE_QUEUE = 16  # batches of promotions waiting for the background thread


class KVStore:
    def __init__(self, tiers: Sequence[Any], sampler: Optional[AccessSampler] = None,
                 promote_in_background: bool = False) -> None:
        self.tiers = list(tiers)
        self.sampler = sampler or AccessSampler()
        self.dropped_promotions = 0
        self._promotions: Optional[queue.Queue] = None
        if promote_in_background:
            self._promotions = queue.Queue(maxsize=PROMOTE_QUEUE)
            threading.Thread(target=self._promote_loop, name="greencache-store-promote", daemon=True).start()
        self._gb_hours = {t.name: 0.0 for t in self.tiers}
        self._t_last = time.monotonic()
        self.lookups = 0
        self.lookup_chunks = 0  # denominators: chunks asked for in lookups
        self.hit_chunks = 0  # leading chunks found
        self.invalid_chunks = 0
        self.load_s = 0.0
        self.save_s = 0.0

    def tier(self, name: str):
        for t in self.tiers:
            if t.name == name:
                return t
        raise KeyError(f"no tier named {name!r}; have {[t.name for t in self.tiers]}")

    # ---- capacity ---------------------------------------------------------------------
    def _accrue(self) -> None:
        now = time.monotonic()
        dt_h = (now - self._t_last) / 3600.0
        for t in self.tiers:
            self._gb_hours[t.name] += t.capacity_bytes / 1e9 * dt_h
        self._t_last = now

    def set_capacity(self, tier_name: str, capacity_bytes: int) -> None:
        self._accrue()
        self.tier(tier_name).set_capacity(int(capacity_bytes))

    # ---- data path --------------------------------------------------------------------
    def lookup_prefix(self, keys: Sequence[str]) -> int:
        self.lookups += 1
        self.lookup_chunks += len(keys)
        self.sampler.observe(keys)
        present = [False] * len(keys)
        remaining = list(range(len(keys)))
        for t in self.tiers:
            if not remaining:
                break
            found = t.contains_many([keys[i] for i in remaining])
            for i, f in zip(remaining, found):
                present[i] = f
            remaining = [i for i, f in zip(remaining, found) if not f]
        n = 0
        while n < len(keys) and present[n]:
            n += 1
        self.hit_chunks += n
        return n

    def get_many(self, keys: Sequence[str], chunk_indices: Optional[Sequence[int]] = None) -> list[Optional[bytes]]:
        t0 = time.perf_counter()
        out: list[Optional[bytes]] = [None] * len(keys)
        missing = list(range(len(keys)))
        for depth, t in enumerate(self.tiers):
            if not missing:
                break
            values = t.get_many([keys[i] for i in missing])
            promote = []
            still = []
            for i, v in zip(missing, values):
                if v is None:
                    still.append(i)
                else:
                    out[i] = v
                    promote.append((keys[i], v, chunk_indices[i] if chunk_indices else 0))
            if promote and depth > 0:
                self._promote(self.tiers[:depth], promote)
            missing = still
        self.load_s += time.perf_counter() - t0
        return out

    def _promote(self, uppers: list, items: list) -> None:
        if self._promotions is None:
            for upper in uppers:
                upper.put_many(items)
            return
        try:
            self._promotions.put_nowait((uppers, items))
        except queue.Full:
            self.dropped_promotions += len(items)

    def _promote_loop(self) -> None:
        while True:
            job = self._promotions.get()
            if job is None:
                return
            uppers, items = job
            for upper in uppers:
                try:
                    upper.put_many(items)
                except Exception:  # a tier never raises for I/O, but a promotion must never kill this thread
                    logger.exception("promotion into %s failed", getattr(upper, "name", upper))
            self._promotions.task_done()

    def flush(self) -> None:
        """Wait until queued promotions are written (tests, shutdown)."""
        if self._promotions is not None:
            self._promotions.join()

    def put_many(self, items: Sequence[tuple[str, bytes, int]]) -> None:
        t0 = time.perf_counter()
        for t in self.tiers:
            t.put_many(items)
        self.save_s += time.perf_counter() - t0

    def invalidate(self, keys: Sequence[str]) -> None:
        self.invalid_chunks += len(keys)
        for t in self.tiers:
            t.delete_many(keys)

    def stats(self) -> dict:
        self._accrue()
        return {
            "lookups": self.lookups,
            "lookup_chunks": self.lookup_chunks,
            "hit_chunks": self.hit_chunks,
            "invalid_chunks": self.invalid_chunks,
            "load_s": self.load_s,
            "save_s": self.save_s,
            "capacity_gb_hours": dict(self._gb_hours),
            "dropped_promotions": self.dropped_promotions,
            "tiers": {t.name: t.stats() for t in self.tiers},
        }

    def close(self) -> None:
        if self._promotions is not None:
            self.flush()
            self._promotions.put(None)
        for t in self.tiers:
            t.close()


def build_store(spec: dict) -> KVStore:
    """Build a store from a plain dict (what travels in vLLM's kv_connector_extra_config;
    `cache_store.config.KVStoreConfig.spec` writes it).

    spec = {"tiers": [{"kind": "memory"|"disk"|"redis", "capacity_bytes": N (None for a disk
                       tier: follow the node's), "path": DIR (disk), "url": URL (redis),
                       "password_file"/"password_env": where the Redis password is (redis),
                       "eviction": "lru"|"cost-aware"}],
            "chunk_tokens": 128, "access_sample_rate": 0.25}
    """
    from cache_store.eviction import make_policy
    from cache_store.tiers import DiskTier, MemoryTier, RedisTier

    chunk_tokens = spec.get("chunk_tokens", 128)
    tiers = []
    for t in spec.get("tiers", []):
        kind = t["kind"]
        cap = t.get("capacity_bytes")
        eviction = t.get("eviction", "lru")
        policy = make_policy(eviction, chunk_tokens=chunk_tokens) if eviction != "lru" else make_policy("lru")
        if kind == "memory":
            tiers.append(MemoryTier(int(cap), policy))
        elif kind == "disk":
            tiers.append(DiskTier(os.path.expanduser(t["path"]), None if cap is None else int(cap), policy))
        elif kind == "redis":
            tiers.append(RedisTier(t["url"], int(cap), prefix=t.get("prefix", "gc:"),
                                   password_file=t.get("password_file"), password_env=t.get("password_env")))
        else:
            raise ValueError(f"unknown tier kind {kind!r}; use memory, disk or redis")
    return KVStore(tiers, AccessSampler(rate=float(spec.get("access_sample_rate", 0.25))),
                   promote_in_background=bool(spec.get("promote_in_background", True)))
