"""Each tier: capacity is a hard limit, shrinking evicts at once, failures are misses."""

from __future__ import annotations

import os
import time

import pytest
import redis

from cache_store.eviction import CostAwarePolicy, LRUPolicy
from cache_store.redis_server import RedisServer
from cache_store.control import parse_capacities
from cache_store.store import KVStore
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
    """Bytes of chunk files (the capacity counts those; the index and temporaries are not chunks)."""
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".kv"))


def _dead_pid() -> int:
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


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


def test_a_read_chunk_outlives_older_ones_at_the_next_eviction(tier):
    tier.put_many(items(10))
    tier.get_many(["ns:0000", "ns:0001"])  # the oldest two, read: now the most recently used
    tier.put_many(items(2, start=10))  # full: two must go
    assert tier.contains_many(["ns:0000", "ns:0001", "ns:0002", "ns:0003"]) == [True, True, False, False]


def test_disk_reads_reach_other_processes_within_the_touch_delay(tmp_path, monkeypatch):
    """A process counts its hits in batches; another process's eviction sees them once the
    batch is written (here: the delay passed and the next read wrote it)."""
    from cache_store.tiers import disk

    monkeypatch.setattr(disk, "TOUCH_DELAY_S", 0.2)
    owner, reader = DiskTier(tmp_path / "d", 100 * KB), DiskTier(tmp_path / "d", None)
    owner.put_many(items(10))
    reader.get_many(["ns:0000"])
    time.sleep(0.25)
    reader.get_many(["ns:0001"])  # due: both reads are written now
    owner.put_many(items(2, start=10))
    assert owner.contains_many(["ns:0000", "ns:0001", "ns:0002", "ns:0003"]) == [True, True, False, False]
    reader.close()
    owner.close()


def test_oversized_item_dropped(tier):
    tier.put_many([("ns:big", b"x" * 200 * KB, 0)])
    assert tier.contains_many(["ns:big"]) == [False]
    assert tier.stats()["dropped_puts"] == 1


def test_disk_index_rebuilt_on_restart(tmp_path):
    t = DiskTier(tmp_path / "d", 100 * KB)
    t.put_many(items(5))
    stray = tmp_path / "d" / f".ns_0009.kv.{_dead_pid()}.tmp"  # a writer that died mid-write
    stray.write_bytes(b"partial")
    live = tmp_path / "d" / f".ns_0010.kv.{os.getpid()}.tmp"  # a writer still running: keep
    live.write_bytes(b"partial")
    (tmp_path / "d" / "ns_0042.kv").write_bytes(b"y" * 10 * KB)  # a chunk file the index missed
    os.unlink(tmp_path / "d" / "ns_0001.kv")  # an index row whose file is gone
    t2 = DiskTier(tmp_path / "d", 100 * KB)
    assert t2.stats()["chunks"] == 5 and t2.stats()["used_bytes"] == 50 * KB
    assert t2.contains_many(["ns:0001", "ns:0042"]) == [False, True]
    assert t2.get_many(["ns:0004"])[0] == bytes([4]) * 10 * KB
    assert not stray.exists() and live.exists()
    t3 = DiskTier(tmp_path / "d", 20 * KB)  # restart with a smaller limit evicts oldest
    assert t3.stats()["used_bytes"] <= 20 * KB


def test_disk_row_whose_file_is_gone_is_forgotten_on_read(tmp_path):
    t = DiskTier(tmp_path / "d", 100 * KB)
    t.put_many(items(3))
    os.unlink(tmp_path / "d" / "ns_0001.kv")  # removed underneath the running tier
    assert t.get_many(["ns:0000", "ns:0001", "ns:0009"]) == [bytes([0]) * 10 * KB, None, None]
    assert t.contains_many(["ns:0001"]) == [False]
    assert t.stats()["used_bytes"] == 20 * KB and t.stats()["chunks"] == 2
    t.close()


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

    deadline = time.monotonic() + 3  # the monitor's pings: 0.2 s, then doubling
    while not t.healthy:
        assert time.monotonic() < deadline, "the breaker did not close after Redis came back"
        time.sleep(0.05)
    t.put_many(items(1, start=7))
    assert t.get_many(["ns:0007"])[0] == bytes([7]) * 10 * KB
    assert t.healthy
    server.stop()


def test_loads_do_not_wait_for_promotions(tmp_path):
    """With background promotion a hit in a lower tier returns at once; the copy into the tiers
    above lands later, and a full promotion queue drops copies instead of blocking."""
    import time

    class SlowTier(MemoryTier):
        def put_many(self, items):
            time.sleep(0.2)
            super().put_many(items)

    upper, lower = SlowTier(1000 * KB), MemoryTier(1000 * KB)
    lower.put_many(items(4))
    store = KVStore([upper, lower], promote_in_background=True)
    keys = [k for k, _, _ in items(4)]
    t0 = time.perf_counter()
    assert all(v is not None for v in store.get_many(keys))
    assert time.perf_counter() - t0 < 0.15
    store.flush()
    assert upper.contains_many(keys) == [True] * 4
    for _ in range(30):  # far more batches than the queue holds, while the upper tier is slow
        store.get_many(["ns:9999", keys[0]])
        upper.delete_many([keys[0]])
    assert store.stats()["dropped_promotions"] > 0
    store.close()


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


@pytest.mark.parametrize("body", ["null", "[1, 2]", "1e400", '{"capacity_bytes": {"disk": -5}}',
                                  '{"capacity_bytes": {"disk": "big"}}', '{"capacity_bytes": 7}', "{not json",
                                  '{"capacity_bytes": {"disk": true}}', '{"capacity_bytes": {"disk": NaN}}'])
def test_bad_capacity_message_is_rejected(body):
    with pytest.raises(ValueError):
        parse_capacities(body)


def test_good_capacity_message_parses():
    assert parse_capacities('{"capacity_bytes": {"disk": 5e9, "redis": 0}}') == {"disk": 5_000_000_000, "redis": 0}


def test_control_reader_keeps_the_last_good_value(caplog):
    from autoscaler.control_plane import PollingReader

    answers = iter([{"disk": 1}, ValueError("garbage"), RuntimeError("GCS down"), None, {"disk": 2}])

    def read():
        a = next(answers)
        if isinstance(a, Exception):
            raise a
        return a

    r = PollingReader(read, every_s=0)
    assert [r.get() for _ in range(5)] == [{"disk": 1}, {"disk": 1}, {"disk": 1}, {"disk": 1}, {"disk": 2}]
    assert caplog.text.count("keeping the last good one") == 1  # one warning per episode


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


def test_owned_redis_has_maxmemory_backstop():
    server = RedisServer(maxmemory_bytes=64 << 20)
    try:
        r = redis.Redis.from_url(server.url)
        assert r.config_get("maxmemory")["maxmemory"] == str(64 << 20)
        assert r.config_get("maxmemory-policy")["maxmemory-policy"] == "allkeys-lru"
        assert r.config_get("save")["save"] == ""
    finally:
        server.stop()


def _writer(path: str, start: int, n: int) -> None:
    t = DiskTier(path, None)  # an engine process: follows the node's capacity
    for i in range(start, start + n):
        t.put_many([(f"ns:{i:04d}", bytes([i % 251]) * 10 * KB, i)])
    t.close()


def test_disk_tier_is_one_tier_per_node(tmp_path):
    """Processes sharing a node's directory see each other's chunks and share one capacity."""
    import multiprocessing as mp

    d = tmp_path / "node-disk"
    owner = DiskTier(d, 200 * KB)  # the replica sets the node's capacity
    other = DiskTier(d, None)
    owner.put_many(items(3))
    assert other.contains_many(["ns:0000", "ns:0002"]) == [True, True]  # written by another process
    assert other.get_many(["ns:0001"])[0] == bytes([1]) * 10 * KB
    procs = [mp.get_context("spawn").Process(target=_writer, args=(str(d), 100 + 40 * k, 40)) for k in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert _disk_bytes(d) <= 200 * KB  # three writers, one limit
    st = other.stats()
    assert st["used_bytes"] == _disk_bytes(d) and st["chunks"] == 20  # the index describes the directory
    owner.set_capacity(50 * KB)  # a capacity decision reaches every process's view at once
    assert other.stats()["capacity_bytes"] == 50 * KB and _disk_bytes(d) <= 50 * KB
    other.put_many(items(1, start=900))
    assert _disk_bytes(d) <= 50 * KB
