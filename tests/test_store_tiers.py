"""Each tier: capacity is a hard limit, shrinking evicts at once, failures are misses."""

from __future__ import annotations

import os

import pytest
import redis

from cache_store.eviction import CostAwarePolicy, LRUPolicy
from cache_store.redis_server import RedisServer
from cache_store.control import ControlFile
from cache_store.store import KVStore, build_store
from cache_store.tiers import DiskTier, MemoryTier, RedisTier

KB = 1024


def items(n, size=10 * KB, start=0):
    return [(f"ns:{i:04d}", bytes([i % 251]) * size, i) for i in range(start, start + n)]


@pytest.fixture(params=["memory", "disk", "redis"])
def tier(request, tmp_path, redis_url):
    if request.param == "memory":
        t = MemoryTier(100 * KB)
    elif request.param == "disk":
        t = DiskTier(tmp_path / "disk", 100 * KB)
    else:
        t = RedisTier(redis_url, 100 * KB)
    yield t
    t.close()


def _disk_bytes(path) -> int:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))


def test_roundtrip_and_contains(tier):
    tier.put_many(items(3))
    got = tier.get_many(["ns:0000", "ns:0001", "ns:9999"])
    assert got[0] == bytes([0]) * 10 * KB and got[1] == bytes([1]) * 10 * KB and got[2] is None
    assert tier.contains_many(["ns:0002", "ns:0003"]) == [True, False]
    st = tier.stats()
    assert st["hits"] == 2 and st["lookups"] == 3 and st["bytes_written"] == 30 * KB


def test_never_exceeds_capacity_and_evicts_lru(tier):
    for batch in range(5):
        tier.put_many(items(4, start=batch * 4))
        assert tier.stats()["used_bytes"] <= 100 * KB
    st = tier.stats()
    assert st["used_bytes"] == 100 * KB  # 10 chunks of 10 KiB
    assert st["evictions"] == 10
    assert tier.contains_many(["ns:0000", "ns:0019"]) == [False, True]
    if isinstance(tier, DiskTier):
        assert _disk_bytes(tier.path) <= 100 * KB


def test_shrinking_evicts_at_once(tier):
    tier.put_many(items(10))
    tier.get_many(["ns:0000"])  # touch: most recently used now
    tier.set_capacity(30 * KB)
    st = tier.stats()
    assert st["used_bytes"] <= 30 * KB
    assert tier.contains_many(["ns:0000"]) == [True]  # the touched chunk survived
    assert sum(tier.contains_many([k for k, _, _ in items(10)])) == 3
    if isinstance(tier, DiskTier):
        assert _disk_bytes(tier.path) <= 30 * KB


def test_oversized_item_dropped(tier):
    tier.put_many([("ns:big", b"x" * 200 * KB, 0)])
    assert tier.contains_many(["ns:big"]) == [False]
    assert tier.stats()["dropped_puts"] == 1


def test_disk_index_rebuilt_on_restart(tmp_path):
    t = DiskTier(tmp_path / "d", 100 * KB)
    t.put_many(items(5))
    (tmp_path / "d" / "stray.123.tmp").write_bytes(b"partial")
    t2 = DiskTier(tmp_path / "d", 100 * KB)
    assert t2.stats()["chunks"] == 5 and t2.stats()["used_bytes"] == 50 * KB
    assert t2.get_many(["ns:0004"])[0] == bytes([4]) * 10 * KB
    assert not (tmp_path / "d" / "stray.123.tmp").exists()
    t3 = DiskTier(tmp_path / "d", 20 * KB)  # restart with a smaller limit evicts oldest
    assert t3.stats()["used_bytes"] <= 20 * KB


def test_full_disk_does_not_crash(tmp_path):
    # A tiny tmpfs would need root; a read-only directory gives the same write failure.
    d = tmp_path / "ro"
    t = DiskTier(d, 100 * KB)
    os.chmod(d, 0o500)
    try:
        if os.access(d, os.W_OK):  # running as root: permissions don't stop us, fill instead
            t.path = d / "missing-subdir"  # writes fail with ENOENT
        t.put_many(items(2))
        assert t.stats()["dropped_puts"] == 2 and t.stats()["errors"] >= 2
        assert t.get_many(["ns:0000"]) == [None]
    finally:
        os.chmod(d, 0o700)


def test_redis_down_is_a_miss_and_recovers():
    server = RedisServer()
    t = RedisTier(server.url, 100 * KB, retry_after_s=0.2, socket_timeout_s=0.5)
    t.put_many(items(2))
    assert t.get_many(["ns:0000"])[0] is not None
    server.stop()
    assert t.get_many(["ns:0000", "ns:0001"]) == [None, None]
    t.put_many(items(1, start=5))  # dropped, no exception
    assert t.stats()["healthy"] is False and t.stats()["errors"] >= 1
    server.start()  # restarted empty (no persistence)
    import time

    time.sleep(0.3)
    t.put_many(items(1, start=7))
    assert t.get_many(["ns:0007"])[0] == bytes([7]) * 10 * KB
    assert t.healthy
    server.stop()


def test_store_prefix_spans_tiers_and_promotes(tmp_path, redis_url):
    mem, disk, red = MemoryTier(1000 * KB), DiskTier(tmp_path / "d", 1000 * KB), RedisTier(redis_url, 1000 * KB)
    store = KVStore([mem, disk, red])
    its = items(4)
    disk.put_many(its[:1])
    red.put_many(its[1:3])
    keys = [k for k, _, _ in its]
    assert store.lookup_prefix(keys) == 3  # chunk 3 is nowhere
    vals = store.get_many(keys[:3])
    assert all(v is not None for v in vals)
    assert mem.contains_many(keys[:3]) == [True] * 3  # promoted to memory
    assert disk.contains_many(keys[1:3]) == [True, True]  # and to disk
    store.invalidate(keys[:1])
    assert store.lookup_prefix(keys) == 0
    s = store.stats()
    assert s["invalid_chunks"] == 1 and s["lookup_chunks"] == 8 and s["hit_chunks"] == 3
    assert s["capacity_gb_hours"]["memory"] > 0  # the capacity held so far (for the carbon ledger)


def test_store_control_file_resizes(tmp_path):
    import json

    mem = MemoryTier(1000 * KB)
    store = KVStore([mem])
    ctl = tmp_path / "control.json"
    store.control = ControlFile(ctl, store.set_capacity, poll_s=0)
    store.put_many(items(20))
    ctl.write_text(json.dumps({"capacity_bytes": {"memory": 50 * KB}}))
    store.put_many(items(1, start=100))  # the data path polls the control file
    assert mem.capacity_bytes == 50 * KB and mem.used_bytes <= 50 * KB


@pytest.mark.parametrize("body", ["null", "[1, 2]", "1e400", '{"capacity_bytes": {"memory": -5}}',
                                  '{"capacity_bytes": {"memory": "big"}}', '{"capacity_bytes": 7}', "{not json"])
def test_bad_control_file_is_ignored(tmp_path, body, caplog):
    mem = MemoryTier(1000 * KB)
    ctl = tmp_path / "control.json"
    ctl.write_text(body)
    control = ControlFile(ctl, lambda name, cap: setattr(mem, "capacity_bytes", cap), poll_s=0)
    control.poll(force=True)  # must not raise
    assert mem.capacity_bytes == 1000 * KB
    assert "ignoring store control file" in caplog.text


def test_lru_and_cost_aware_order():
    lru = LRUPolicy()
    for k in "abc":
        lru.on_insert(k, 1)
    lru.on_access("a")
    assert lru.victim() == "b"

    cost = CostAwarePolicy(chunk_tokens=256)
    cost.on_insert("early", 100, chunk_index=0)
    cost.on_insert("late", 100, chunk_index=30)  # deeper chunk: more prefill saved
    assert cost.victim() == "early"
    cost.on_remove("early")
    cost.on_insert("hot", 100, chunk_index=0)
    for _ in range(50):
        cost.on_access("hot")  # frequency outweighs position
    assert cost.victim() == "late"


def test_cost_aware_tier_keeps_valuable_chunks(tmp_path):
    t = MemoryTier(30 * KB, CostAwarePolicy(chunk_tokens=256))
    t.put_many([("ns:a", b"a" * 10 * KB, 0), ("ns:b", b"b" * 10 * KB, 20), ("ns:c", b"c" * 10 * KB, 40)])
    t.put_many([("ns:d", b"d" * 10 * KB, 10)])
    assert t.contains_many(["ns:a", "ns:b", "ns:c", "ns:d"]) == [False, True, True, True]


def test_capacity_shrink_applies_without_traffic(tmp_path):
    import json
    import time

    ctl = tmp_path / "control.json"
    store = build_store({"tiers": [{"kind": "memory", "capacity_bytes": 1000 * KB}], "control_path": str(ctl),
                         "control_poll_s": 0.1})
    mem = store.tier("memory")
    try:
        store.put_many(items(20))
        ctl.write_text(json.dumps({"capacity_bytes": {"memory": 40 * KB}}))
        deadline = time.monotonic() + 5
        while mem.used_bytes > 40 * KB and time.monotonic() < deadline:
            time.sleep(0.05)  # no put or lookup: the control thread must apply it
        assert mem.capacity_bytes == 40 * KB and mem.used_bytes <= 40 * KB
    finally:
        store.close()


def test_owned_redis_has_maxmemory_backstop():
    server = RedisServer(maxmemory_bytes=64 << 20)
    try:
        r = redis.Redis.from_url(server.url)
        assert r.config_get("maxmemory")["maxmemory"] == str(64 << 20)
        assert r.config_get("maxmemory-policy")["maxmemory-policy"] == "allkeys-lru"
        assert r.config_get("save")["save"] == ""
    finally:
        server.stop()
