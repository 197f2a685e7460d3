"""GreenCacheConnector inside real vLLM engines with a real disk tier and a real Redis.

vLLM's own prefix cache is off in these engines, so every reuse goes through the store.
Correctness is checked on tokens *and* logprobs; `test_wrong_kv_changes_output` proves the
comparison is sensitive (a well-formed chunk with the wrong KV does change the output), so
"equal to the cold run" really means the loaded KV was right.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from benchmarks.kv_engine import KVEngine
from cache_store.format import Namespace, chunk_keys, decode_chunk, encode_chunk
from cache_store.keys import ensure_mac_key, read_mac_key
from cache_store.redis_server import RedisServer
from cache_store.tiers import DiskTier

CHUNK = 256
# bf16 noise: a hit prefills only the suffix, so matmul shapes (and rounding) differ from the
# cold run's; vLLM's own prefix cache shows the same. Measured here: <= 0.008 for right KV;
# wrong KV moves logprobs by far more (see test_wrong_kv_changes_output).
LOGPROB_TOL = 0.03


def prompt(seed: int, n: int) -> list[int]:
    r = random.Random(seed)
    return [r.randrange(10, 2000) for _ in range(n)]


@pytest.fixture(scope="module")
def redis_srv():
    s = RedisServer()
    yield s
    s.stop()


def _spec(disk: Path, redis_url: str | None, home: Path) -> dict:
    tiers = [{"kind": "disk", "path": str(disk), "capacity_bytes": 1 << 30}]
    if redis_url:
        tiers.append({"kind": "redis", "url": redis_url, "capacity_bytes": 1 << 30})
    # one deployment: both engines MAC their chunks with the same secret
    return {"chunk_tokens": CHUNK, "tiers": tiers, "mac_key_file": str(ensure_mac_key(home.parent / "kv-mac.key"))}


def _mac_key(base: Path) -> bytes:
    return read_mac_key(base / "kv-mac.key")


@pytest.fixture(scope="module")
def engines(demo_model, tmp_path_factory, redis_srv):
    """Two engines ("replicas") with their own disk tiers sharing one Redis."""
    base = tmp_path_factory.mktemp("kv")
    a = KVEngine(str(demo_model), _spec(base / "diskA", redis_srv.url, base / "a"))
    b = KVEngine(str(demo_model), _spec(base / "diskB", redis_srv.url, base / "b"))
    (base / "a").mkdir(exist_ok=True)
    (base / "b").mkdir(exist_ok=True)
    yield a, b, base
    a.close()
    b.close()


def _files(disk: Path) -> dict[str, Path]:
    return {p.name[: -len(".kv")].replace("_", ":", 1): p for p in disk.glob("*.kv")}


def _same(x: dict, y: dict) -> None:
    assert x["token_ids"] == y["token_ids"]
    assert max(abs(p - q) for p, q in zip(x["logprobs"], y["logprobs"])) < LOGPROB_TOL, (x["logprobs"], y["logprobs"])


@pytest.mark.parametrize("n_tokens,chunks", [(300, 1), (700, 2), (1024, 3), (1100, 4)])
def test_hit_equals_cold(engines, n_tokens, chunks):
    a, _, _ = engines
    p = prompt(n_tokens, n_tokens)
    cold = a.generate([p])[0]
    assert cold["num_cached_tokens"] == 0
    hit = a.generate([p])[0]
    # at least one prompt token is always computed, so 1024 tokens reuse 3 chunks, not 4
    assert hit["num_cached_tokens"] == chunks * CHUNK
    _same(cold, hit)


def test_wrong_kv_changes_output(engines):
    a, _, base = engines
    pa, pb = prompt(1, 600), prompt(2, 600)
    cold_a = a.generate([pa])[0]
    a.generate([pb])
    files = _files(base / "diskA")
    ka, kb = chunk_keys(a_ns := _ns(files), pa)[0], chunk_keys(a_ns, pb)[0]
    # Re-encode B's chunk 0 under A's key, with the deployment's secret: well-formed, passes
    # every check, wrong content. (Without the secret this is impossible: see the forged case.)
    mk = _mac_key(base)
    _, shape, payload = decode_chunk(a_ns, kb, files[kb].read_bytes(), mac_key=mk)
    original = files[ka].read_bytes()
    files[ka].write_bytes(encode_chunk(a_ns, ka, "bfloat16", shape, bytes(payload), mac_key=mk))
    try:
        wrong = a.generate([pa])[0]
        assert wrong["num_cached_tokens"] == 2 * CHUNK
        diff = max(abs(p - q) for p, q in zip(wrong["logprobs"], cold_a["logprobs"]))
        print("wrong-KV logprob diff", diff)
        assert wrong["token_ids"] != cold_a["token_ids"] or diff > 10 * LOGPROB_TOL
    finally:
        files[ka].write_bytes(original)
    _same(a.generate([pa])[0], cold_a)


def _ns(files: dict[str, Path]) -> Namespace:
    """Recover the engine's namespace object from a stored chunk (tests only)."""
    key, path = next(iter(files.items()))
    ns_id = key.split(":")[0]

    class _NS(Namespace):
        @property
        def id(self):  # type: ignore[override]
            return ns_id

    return _NS("?", "bfloat16", 0, 0, 0, 0, CHUNK)


@pytest.mark.parametrize("damage", ["flip", "truncate", "foreign", "forged"])
def test_bad_chunk_is_a_miss_never_wrong_tokens(engines, redis_srv, damage):
    a, _, base = engines
    p = prompt(100 + len(damage), 800)
    cold = a.generate([p])[0]
    files = _files(base / "diskA")
    ns = _ns(files)
    key = chunk_keys(ns, p)[1]
    f = files[key]
    data = bytearray(f.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    elif damage == "truncate":
        data = data[: len(data) // 3]
    elif damage == "foreign":  # a chunk from another model's namespace placed under our key
        other = Namespace("some-other-model", "bfloat16", 4, 2, 128, 16, CHUNK)
        _, shape, payload = decode_chunk(ns, key, bytes(data), mac_key=_mac_key(base))
        data = bytearray(encode_chunk(other, key, "bfloat16", shape, bytes(payload), mac_key=_mac_key(base)))
    else:  # forged: well-formed, right namespace and key, other KV, MAC'd without the secret
        _, shape, payload = decode_chunk(ns, key, bytes(data), mac_key=_mac_key(base))
        wrong = bytes(b ^ 0x55 for b in bytes(payload))
        data = bytearray(encode_chunk(ns, key, "bfloat16", shape, wrong, mac_key=b"attacker-guess-0123456789abcdef"))
    f.write_bytes(bytes(data))
    # Drop the good copy from Redis so only the bad one exists.
    import redis

    redis.Redis.from_url(redis_srv.url).delete(key)
    before = a.stats()["failed_chunks"]
    out = a.generate([p])[0]
    _same(out, cold)
    after = a.stats()
    assert after["failed_chunks"] > before
    assert after["store"]["invalid_chunks"] >= 1
    # the bad value is gone (deleted), so it can never be served again
    assert not f.exists() or f.read_bytes() != bytes(data)


def test_cross_replica_hit_through_redis(engines):
    a, b, base = engines
    p = prompt(7, 900)
    cold = a.generate([p])[0]
    assert not any(k in _files(base / "diskB") for k in _files(base / "diskA"))
    hit = b.generate([p])[0]  # B never saw this prompt; its disk tier is empty for it
    assert hit["num_cached_tokens"] == 3 * CHUNK
    _same(hit, cold)
    s = b.stats()["store"]["tiers"]
    assert s["redis"]["hits"] >= 3
    # promoted into B's disk tier for next time
    assert len([k for k in _files(base / "diskB") if k in _files(base / "diskA")]) >= 3


def test_redis_killed_mid_run_degrades_then_recovers(engines, redis_srv):
    a, b, _ = engines
    p1, p2 = prompt(11, 700), prompt(12, 700)
    ref1, ref2 = a.generate([p1])[0], a.generate([p2])[0]  # cold references, saved to Redis
    redis_srv.stop()
    try:
        out = b.generate([p1])[0]  # Redis down: B recomputes
        assert out["num_cached_tokens"] == 0
        _same(out, ref1)
        assert b.stats()["store"]["tiers"]["redis"]["healthy"] is False
    finally:
        redis_srv.start()  # restarted empty
    time.sleep(2.5)  # circuit breaker retry interval
    b.generate([prompt(13, 600)])  # reconnects and saves again
    puts_before = b.stats()["store"]["tiers"]["redis"]["puts"]
    b.generate([prompt(14, 600)])
    assert b.stats()["store"]["tiers"]["redis"]["puts"] > puts_before
    _same(b.generate([p2])[0], ref2)


def test_shrinking_disk_capacity_evicts_and_respects_limit(engines):
    a, _, base = engines
    for i in range(3):
        a.generate([prompt(200 + i, 800)])
    disk = base / "diskA"
    chunk_bytes = max(p.stat().st_size for p in disk.glob("*.kv"))
    limit = 2 * chunk_bytes
    # what a replica does with a capacity decision: set it on the node's tier, from another process
    DiskTier(disk, None).set_capacity(limit)
    assert sum(p.stat().st_size for p in disk.glob("*.kv")) <= limit  # enforced at once
    a.generate([prompt(300, 600)])  # the engine's processes follow the node's capacity
    used = sum(p.stat().st_size for p in disk.glob("*.kv"))
    assert used <= limit
    st = a.stats()["store"]["tiers"]["disk"]
    assert st["capacity_bytes"] == limit and st["evictions"] > 0


def test_restarted_engine_reuses_its_disk_tier(demo_model, tmp_path):
    spec = {"chunk_tokens": CHUNK, "tiers": [{"kind": "disk", "path": str(tmp_path / "disk"), "capacity_bytes": 1 << 30}],
            "mac_key_file": str(ensure_mac_key(tmp_path / "kv-mac.key"))}
    p = prompt(77, 900)
    first = KVEngine(str(demo_model), spec)
    try:
        cold = first.generate([p])[0]
        assert cold["num_cached_tokens"] == 0
    finally:
        first.close()
    second = KVEngine(str(demo_model), spec)  # a new process: only the files remain
    try:
        hit = second.generate([p])[0]
        assert hit["num_cached_tokens"] == 3 * CHUNK
        _same(hit, cold)
        assert second.stats()["store"]["tiers"]["disk"]["hits"] >= 3
    finally:
        second.close()


def test_weights_changed_in_place_never_meet_the_old_kv(tmp_path):
    """Same path, same config, new weights (a checkpoint replaced in place): the new engine's
    namespace differs, so it computes everything itself instead of loading the old KV."""
    from deployments.demo_model import build_demo_model

    model = build_demo_model(tmp_path / "model", seed=0)
    spec = {"chunk_tokens": CHUNK, "tiers": [{"kind": "disk", "path": str(tmp_path / "disk"), "capacity_bytes": 1 << 30}],
            "mac_key_file": str(ensure_mac_key(tmp_path / "kv-mac.key"))}
    p = prompt(78, 900)
    first = KVEngine(str(model), spec)
    try:
        assert first.generate([p])[0]["num_cached_tokens"] == 0
        assert first.generate([p])[0]["num_cached_tokens"] == 3 * CHUNK  # its own chunks: a hit
    finally:
        first.close()
    build_demo_model(tmp_path / "model", seed=1)  # retrained weights, written over the old ones
    second = KVEngine(str(model), spec)
    try:
        assert second.generate([p])[0]["num_cached_tokens"] == 0
        assert second.stats()["store"]["invalid_chunks"] == 0  # not even looked at: another namespace
    finally:
        second.close()
