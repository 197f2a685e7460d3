"""SHARDS spatial sampling of chunk accesses: one hash for the live store and the simulator.

The autoscaler plans cache capacity from a hit-rate curve, which it builds from a sample of
the chunk-access stream (Waldspurger et al., FAST'15): a chunk is in the sample when a hash of
its key falls under the sampling rate, so a sampled chunk is seen at *every* access and its
reuse distances stay exact. The live store (`AccessSampler`, strings keys) and the simulator
(`sampled_ids`, integer chunk ids in numpy arrays) must keep the same chunks for the live
planner and the simulated one to see the same curve, so both go through `bucket`:

    key_id(key)  the chunk's 64-bit id: its chain-hash digest (the last 16 hex digits of a
                 store key `<namespace>:<hex>`), the integer itself for simulator ids, else
                 the first 8 bytes of blake2b(key)
    bucket(id)   Fibonacci hashing: the top 24 bits of id × 0x9E3779B97F4A7C15 mod 2^64
    sampled      bucket < rate × 2^24
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import Hashable, Iterable

import numpy as np

_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1
BUCKET_BITS = 24


def key_id(key: Hashable) -> int:
    """The 64-bit id the sampling hash sees for a key (see module docstring)."""
    if isinstance(key, (int, np.integer)):
        return int(key) & _MASK64
    s = str(key)
    digest = s.rpartition(":")[2][-16:]
    if len(digest) == 16:
        try:
            return int(digest, 16)
        except ValueError:
            pass
    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")


def threshold(rate: float) -> int:
    """Buckets below this are sampled."""
    return int(min(max(rate, 0.0), 1.0) * (1 << BUCKET_BITS))


def bucket(ident: int) -> int:
    return ((ident * _GOLDEN) & _MASK64) >> (64 - BUCKET_BITS)


def sampled(key: Hashable, rate: float) -> bool:
    """Is `key` in the SHARDS sample at `rate`? (Every key at rate >= 1.)"""
    if rate >= 1.0:
        return True
    return bucket(key_id(key)) < threshold(rate)


def sampled_ids(ids: np.ndarray, rate: float) -> np.ndarray:
    """Vectorised `sampled` for integer chunk ids (the simulator's access stream)."""
    if rate >= 1.0:
        return np.ones(len(ids), dtype=bool)
    h = (np.asarray(ids).astype(np.uint64) * np.uint64(_GOLDEN)) >> np.uint64(64 - BUCKET_BITS)
    return h < np.uint64(threshold(rate))


def short_id(key: str) -> str:
    """What the sample records of a store key: its last 16 hex digits (enough to tell chunks apart)."""
    return key[-16:]


class AccessSampler:
    """The sampled access stream of one store: short ids of sampled keys, most recent last."""

    def __init__(self, rate: float = 0.25, max_len: int = 4000) -> None:
        self.rate = rate
        self.recent: "deque[str]" = deque(maxlen=max_len)

    def observe(self, keys: Iterable[str]) -> None:
        for k in keys:
            if sampled(k, self.rate):
                self.recent.append(short_id(k))

    def snapshot(self) -> list[str]:
        return list(self.recent)
