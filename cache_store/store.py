"""KVStore: ordered tiers (local first), longest-prefix lookup, promotion, write-through.

- `lookup_prefix(keys)` → how many leading chunk keys are present in *some* tier. A prefix
  may span tiers (chunk 0 on disk, chunk 1 in Redis).
- `get_many(keys)` reads each key from the first tier that has it and promotes hits into the
  faster tiers above.
- `put_many(items)` writes through to every tier (each tier enforces its own capacity).
- `invalidate(keys)` deletes a chunk everywhere (used when a value fails validation).
- Capacity per tier is changeable while serving (`set_capacity`), directly or through a small
  JSON control file that the engine processes poll (`control_path`), because the store lives
  inside vLLM's engine processes where the autoscaler cannot call it.

Stats: per-tier counters plus the embodied carbon accrued by provisioned capacity
(capacity GB × hours × kgCO2e per GB-hour; factors from DESIGN.md: SSD 0.110 kg/GB and DRAM
0.29 kg/GB over a 4-year life).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Optional, Sequence

logger = logging.getLogger("greencache.store")

HOURS_PER_LIFE = 4 * 365 * 24
# kgCO2e per GB of capacity per hour of provisioning (embodied, amortised).
EMBODIED_KG_PER_GB_HOUR = {
    "disk": 0.110 / HOURS_PER_LIFE,  # SSD, EcoServe artifact
    "memory": 0.29 / HOURS_PER_LIFE,  # DRAM, EcoServe artifact
    "redis": 0.29 / HOURS_PER_LIFE,  # Redis holds data in DRAM
}


class KVStore:
    def __init__(self, tiers: Sequence[Any], control_path: Optional[str] = None, control_poll_s: float = 1.0,
                 access_sample_rate: float = 0.25, access_sample_max: int = 4000) -> None:
        from collections import deque

        self.tiers = list(tiers)
        # SHARDS-sampled stream of requested chunk keys (short ids), for hit-rate curves.
        self.access_sample_rate = access_sample_rate
        self.access_sample: "deque[str]" = deque(maxlen=access_sample_max)
        self.control_path = Path(control_path) if control_path else None
        self.control_poll_s = control_poll_s
        self._control_mtime = 0.0
        self._control_checked = 0.0
        self._t_start = time.monotonic()
        self._gb_hours = {t.name: 0.0 for t in self.tiers}
        self._t_last = self._t_start
        self.lookups = 0
        self.lookup_chunks = 0  # denominators: chunks asked for in lookups
        self.hit_chunks = 0  # leading chunks found
        self.invalid_chunks = 0
        self.load_s = 0.0
        self.save_s = 0.0
        self.poll_control(force=True)
        self._stop = threading.Event()
        self._poller: Optional[threading.Thread] = None
        if self.control_path is not None and control_poll_s > 0:
            # Apply capacity changes within `control_poll_s` even when no request arrives.
            self._poller = threading.Thread(target=self._poll_loop, name="greencache-store-control", daemon=True)
            self._poller.start()

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.control_poll_s):
            try:
                self.poll_control()
            except Exception:  # never let the control loop die on a bad file or tier error
                logger.exception("store control poll failed")

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

    def poll_control(self, force: bool = False) -> None:
        """Apply capacities from the control file if it changed (cheap; rate-limited)."""
        if self.control_path is None:
            return
        now = time.monotonic()
        if not force and now - self._control_checked < self.control_poll_s:
            return
        self._control_checked = now
        try:
            mtime = self.control_path.stat().st_mtime
        except FileNotFoundError:
            return
        if mtime == self._control_mtime:
            return
        self._control_mtime = mtime
        try:
            control = json.loads(self.control_path.read_text())
            for name, cap in control.get("capacity_bytes", {}).items():
                try:
                    self.set_capacity(name, int(cap))
                except KeyError:
                    pass
        except (OSError, ValueError) as e:
            logger.warning("ignoring unreadable store control file %s: %s", self.control_path, e)

    # ---- data path --------------------------------------------------------------------
    def lookup_prefix(self, keys: Sequence[str]) -> int:
        self.poll_control()
        self.lookups += 1
        self.lookup_chunks += len(keys)
        from autoscaler.hitrate import sampled

        for k in keys:
            if sampled(k, self.access_sample_rate):
                self.access_sample.append(k[-16:])
        present = [False] * len(keys)
        remaining = list(range(len(keys)))
        for t in self.tiers:
            if not remaining:
                break
            found = t.contains_many([keys[i] for i in remaining])
            still = []
            for i, f in zip(remaining, found):
                if f:
                    present[i] = True
                else:
                    still.append(i)
            remaining = still
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
                for upper in self.tiers[:depth]:
                    upper.put_many(promote)
            missing = still
        self.load_s += time.perf_counter() - t0
        return out

    def put_many(self, items: Sequence[tuple[str, bytes, int]]) -> None:
        self.poll_control()
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
        tiers = {t.name: t.stats() for t in self.tiers}
        embodied = {n: self._gb_hours[n] * EMBODIED_KG_PER_GB_HOUR.get(n, 0.0) for n in self._gb_hours}
        return {
            "lookups": self.lookups,
            "lookup_chunks": self.lookup_chunks,
            "hit_chunks": self.hit_chunks,
            "invalid_chunks": self.invalid_chunks,
            "load_s": self.load_s,
            "save_s": self.save_s,
            "capacity_gb_hours": dict(self._gb_hours),
            "embodied_kg": embodied,
            "embodied_kg_total": sum(embodied.values()),
            "tiers": tiers,
        }

    def close(self) -> None:
        self._stop.set()
        for t in self.tiers:
            t.close()


def build_store(spec: dict) -> KVStore:
    """Build a store from a plain dict (what travels in vLLM's kv_connector_extra_config).

    spec = {"tiers": [{"kind": "memory"|"disk"|"redis", "capacity_bytes": N,
                       "path": DIR (disk), "url": URL (redis), "eviction": "lru"|"cost-aware"}],
            "control_path": FILE (optional), "chunk_tokens": 256}
    """
    from cache_store.eviction import make_policy
    from cache_store.tiers import DiskTier, MemoryTier, RedisTier

    tiers = []
    for t in spec.get("tiers", []):
        kind = t["kind"]
        cap = int(t["capacity_bytes"])
        policy = make_policy(t.get("eviction", "lru"), chunk_tokens=spec.get("chunk_tokens", 256)) \
            if t.get("eviction", "lru") != "lru" else make_policy("lru")
        if kind == "memory":
            tiers.append(MemoryTier(cap, policy))
        elif kind == "disk":
            tiers.append(DiskTier(os.path.expanduser(t["path"]), cap, policy))
        elif kind == "redis":
            tiers.append(RedisTier(t["url"], cap, prefix=t.get("prefix", "gc:")))
        else:
            raise ValueError(f"unknown tier kind {kind!r}; use memory, disk or redis")
    return KVStore(tiers, control_path=spec.get("control_path"),
                   access_sample_rate=float(spec.get("access_sample_rate", 0.25)))
