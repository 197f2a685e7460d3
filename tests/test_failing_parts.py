"""A part that fails or stalls degrades the store, never the engine: a stopped Redis (alive, but
answering nothing) costs a lookup its short deadline, then nothing while the breaker is open,
and reads resume by themselves when it comes back."""

from __future__ import annotations

import os
import signal
import time

from cache_store.redis_server import RedisServer
from cache_store.tiers import RedisTier

KB = 1024


def test_a_stopped_redis_costs_little_while_stopped_and_nothing_after():
    server = RedisServer()
    t = RedisTier(server.url, 10 << 20)  # the defaults: 0.1 s lookup deadline, back-off 0.5 s doubling to 5 s
    keys = [f"ns:{i:04d}" for i in range(8)]
    t.put_many([(k, b"v" * KB, i) for i, k in enumerate(keys)])
    assert t.contains_many(keys) == [True] * 8
    os.kill(server.proc.pid, signal.SIGSTOP)  # alive and listening, answering nothing
    try:
        blocked = 0.0
        t_end = time.monotonic() + 6.0
        calls = 0
        while time.monotonic() < t_end:  # a scheduler asking every 10 ms, as an engine's steps do
            t0 = time.monotonic()
            assert t.contains_many(keys) == [False] * 8  # a miss, not an exception
            blocked += time.monotonic() - t0
            calls += 1
            time.sleep(0.01)
        assert blocked / 6.0 < 0.10, (blocked, calls)  # < 10% of the time spent waiting on Redis
        assert not t.healthy and t.stats()["circuit_opens"] == 1
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    deadline = time.monotonic() + 6.0  # the longest back-off is 5 s
    while t.contains_many(keys) != [True] * 8:
        assert time.monotonic() < deadline, "reads did not resume after Redis came back"
        time.sleep(0.05)
    assert t.get_many(keys[:1]) == [b"v" * KB] and t.healthy
    server.stop()
