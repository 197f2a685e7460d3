"""A part that fails or stalls degrades the store, never the engine: a stopped Redis (alive, but
answering nothing) costs the first lookup its short deadline, then nothing (the retries are the
tier's own pings, not the callers'), and reads resume by themselves when it comes back."""

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
        waits = []
        t_end = time.monotonic() + 6.0
        while time.monotonic() < t_end:  # a scheduler asking every 10 ms, as an engine's steps do
            t0 = time.monotonic()
            assert t.contains_many(keys) == [False] * 8  # a miss, not an exception
            assert t.get_many(keys[:2]) == [None, None]  # and a load finds nothing, at once
            waits.append(time.monotonic() - t0)
            time.sleep(0.01)
        slow = [w for w in waits if w > 0.02]
        # Only the call that found Redis stopped waited (its 0.1 s deadline): the back-off's
        # retries (0.5, 1, 2, 4 s) were pings from the tier's own thread, not these calls.
        assert len(slow) <= 1 and sum(waits) < 0.3, (slow, sum(waits), len(waits))
        assert not t.healthy and t.stats()["circuit_opens"] == 1
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)
    deadline = time.monotonic() + 6.0  # the longest back-off is 5 s
    while t.contains_many(keys) != [True] * 8:
        assert time.monotonic() < deadline, "reads did not resume after Redis came back"
        time.sleep(0.05)
    assert t.get_many(keys[:1]) == [b"v" * KB] and t.healthy
    t.close()
    server.stop()
