"""The live store and the simulator sample the same chunks for the autoscaler's hit-rate curve."""

from __future__ import annotations

import random

import numpy as np

from cache_store.format import Namespace, chunk_keys
from cache_store.sampling import key_id, sampled, sampled_ids, short_id
from cache_store.store import KVStore
from cache_store.tiers import MemoryTier

NS = Namespace(model="m", dtype="bfloat16", num_layers=2, num_kv_heads=2, head_size=8, block_size=16,
               chunk_tokens=32)


def _store_keys(n_prompts: int = 300) -> list[str]:
    rng = random.Random(0)
    keys: list[str] = []
    for _ in range(n_prompts):
        keys += chunk_keys(NS, [rng.randrange(10, 5000) for _ in range(32 * 4)])
    return keys


def test_store_and_simulator_keep_the_same_chunks():
    keys = _store_keys()
    ids = np.array([key_id(k) for k in keys], dtype=np.uint64)
    rate = 0.2
    store = KVStore([MemoryTier(1 << 20)])
    store.sampler.rate = rate
    for i in range(0, len(keys), 4):
        store.lookup_prefix(keys[i:i + 4])  # what the connector does for each prompt
    live = store.sampler.snapshot()
    simulated = [short_id(k) for k, keep in zip(keys, sampled_ids(ids, rate)) if keep]
    assert live == simulated[-len(live):]  # same chunks, same order (the live sample is bounded)
    assert 0.15 < len(simulated) / len(keys) < 0.25  # and it really is a sample at the rate
    # the short ids the live sample records map back to the same ids the simulator hashes
    assert all(key_id(s) == key_id(k) for s, k in zip(live, [k for k in keys if sampled(k, rate)][-len(live):]))


def test_integer_ids_and_strings_agree():
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 2**63, 5000, dtype=np.int64)
    for rate in (0.01, 0.1, 0.5):
        mask = sampled_ids(ids, rate)
        assert [sampled(int(i), rate) for i in ids] == mask.tolist()
        assert [sampled(f"ns:{int(i):016x}", rate) for i in ids] == mask.tolist()
    assert sampled_ids(ids, 1.0).all() and all(sampled(k, 1.0) for k in ("a", "b"))
