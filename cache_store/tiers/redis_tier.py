"""Shared Redis tier: chunks every replica can read, with store-enforced capacity.

Layout per namespace prefix `gc:`: the chunk value under its key, plus
- `gc:lru` (sorted set: key → last access time) for LRU eviction across replicas,
- `gc:size` (hash: key → bytes) and `gc:used` (bytes counter) for the capacity limit.
After a write pushes `gc:used` over `capacity_bytes`, the writer evicts the oldest keys until
it is back under. Where GreenCache owns the server, also run it with `maxmemory` and
`maxmemory-policy allkeys-lru` (see `start_redis_server`) as a backstop.

Failure semantics: every call has a deadline, short where an engine waits for it:
`lookup_timeout_s` for existence checks (the scheduler's path), `read_timeout_s` for reading and
deleting chunks (the forward pass's path; the deadline bounds each socket read, not the whole
transfer), `socket_timeout_s` for writes (a background thread). An error or a missed deadline
opens a circuit breaker; while open, lookups and gets are misses and puts are dropped without
touching the network. Requests never pay for the retries: a monitor thread pings Redis
`retry_after_s` after the first failure, then at doubling intervals up to `max_retry_after_s`,
and closes the breaker when it answers (redis-py reconnects). So a down or stalled Redis (a
stopped process accepts connections and never answers) costs the calls in flight when it
failed one short deadline each, then nothing, and reads resume within `max_retry_after_s` of
its return. The same thread refreshes the shared used-bytes counter that `stats()` reports, so
publishing stats never waits on the network either.

Secrets: the password never travels in the URL (which vLLM logs with its configuration). It is
read, in the process that connects, from `password_file` or the environment variable named by
`password_env`; logs and stats name the server by its redacted URL. `rediss://` URLs connect
over TLS (`?ssl_ca_certs=/path/ca.pem` names the CA).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Optional, Sequence
from urllib.parse import urlsplit, urlunsplit

from cache_store.tiers.base import TierStats

logger = logging.getLogger("greencache.store.redis")


def redact_url(url: str) -> str:
    """`url` without user info or query (which may carry a password or key paths)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def url_has_password(url: str) -> bool:
    return urlsplit(url).password is not None


def read_password(password_file: Optional[str] = None, password_env: Optional[str] = None) -> Optional[str]:
    """The Redis password from a file (first line, trailing newline removed) or an environment
    variable; None if neither is given or set."""
    if password_file:
        with open(os.path.expanduser(password_file)) as f:
            return f.read().strip("\r\n")
    if password_env and os.environ.get(password_env):
        return os.environ[password_env]
    return None


class RedisTier:
    name = "redis"

    def __init__(self, url: str, capacity_bytes: int, *, prefix: str = "gc:", socket_timeout_s: float = 1.0,
                 read_timeout_s: float = 0.25, lookup_timeout_s: float = 0.1, retry_after_s: float = 0.5,
                 max_retry_after_s: float = 5.0, refresh_s: float = 2.0, password_file: Optional[str] = None,
                 password_env: Optional[str] = None) -> None:
        import redis

        self.url = redact_url(url)  # what logs and stats may show
        self.capacity_bytes = int(capacity_bytes)
        self.prefix = prefix
        self.retry_after_s = retry_after_s
        self.max_retry_after_s = max_retry_after_s
        kwargs = {}
        password = read_password(password_file, password_env)
        if password is not None:
            kwargs["password"] = password
        def connect(timeout_s: float, **more):
            return redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, **kwargs,
                                        **more)

        self.client = connect(socket_timeout_s)  # writes and evictions (background threads)
        # chunk reads and deletes (the forward pass): chunks are large, and reading the socket
        # 1 MiB at a time instead of redis-py's 64 KiB halved a 7.75 MiB MGET (3.0 → 1.6 ms)
        self.reader = connect(read_timeout_s, socket_read_size=1 << 20)
        self.probe = connect(lookup_timeout_s)  # existence checks (the scheduler), pings
        self.s = TierStats()
        self._down_until = 0.0  # 0: breaker closed; else open, and the monitor's next ping is due then
        self._backoff_s = retry_after_s
        self.circuit_opens = 0
        self._used = 0  # the shared counter, as last seen
        self.refresh_s = refresh_s
        self._closed = threading.Event()
        self._wake = threading.Event()
        self._monitor = threading.Thread(target=self._monitor_loop, name="greencache-redis-monitor", daemon=True)
        self._monitor.start()

    # ---- circuit breaker ------------------------------------------------------------
    def _available(self) -> bool:
        return self._down_until == 0.0

    def _fail(self, e: Exception) -> None:
        self.s.errors += 1
        now = time.monotonic()
        if self._down_until == 0.0:  # the first failure of an outage
            self.circuit_opens += 1
            self._backoff_s = self.retry_after_s
            logger.warning("redis tier %s unavailable (%s: %s); retrying in %.1fs", self.url, type(e).__name__, e,
                           self._backoff_s)
            self._down_until = now + self._backoff_s
            self._wake.set()

    def _monitor_loop(self) -> None:
        """Retry an open breaker with pings (back-off doubling), and refresh the used-bytes
        counter while healthy: the only Redis calls no request asked for."""
        while not self._closed.is_set():
            if self._down_until == 0.0:
                try:
                    self._used = int(self.probe.get(self.prefix + "used") or 0)
                except Exception as e:
                    self._fail(e)
                    continue
                self._wake.wait(self.refresh_s)
                self._wake.clear()
                continue
            self._closed.wait(max(0.0, self._down_until - time.monotonic()))
            if self._closed.is_set():
                return
            try:
                self.probe.ping()
            except Exception:
                self._backoff_s = min(self.max_retry_after_s, self._backoff_s * 2)
                self._down_until = time.monotonic() + self._backoff_s
                continue
            logger.warning("redis tier %s is back", self.url)
            self._down_until = 0.0

    @property
    def healthy(self) -> bool:
        return self._available()

    # ---- tier API -------------------------------------------------------------------
    def get_many(self, keys: Sequence[str]) -> list[Optional[bytes]]:
        self.s.lookups += len(keys)
        if not keys or not self._available():
            return [None] * len(keys)
        t0 = time.perf_counter()
        try:
            # one round trip: the values, and the LRU touch (xx: only keys still tracked)
            pipe = self.reader.pipeline(transaction=False)
            pipe.mget(list(keys))
            pipe.zadd(self.prefix + "lru", {k: time.time() for k in keys}, xx=True)
            values = pipe.execute()[0]
        except Exception as e:  # redis.RedisError, OSError
            self._fail(e)
            return [None] * len(keys)
        finally:
            self.s.get_s += time.perf_counter() - t0
        for v in values:
            if v is not None:
                self.s.hits += 1
                self.s.bytes_read += len(v)
        return values

    def contains_many(self, keys: Sequence[str]) -> list[bool]:
        if not keys or not self._available():
            return [False] * len(keys)
        try:
            pipe = self.probe.pipeline(transaction=False)
            for k in keys:
                pipe.exists(k)
            return [bool(x) for x in pipe.execute()]
        except Exception as e:
            self._fail(e)
            return [False] * len(keys)

    def put_many(self, items: Sequence[tuple[str, bytes, int]]) -> None:
        if not items:
            return
        if not self._available():
            self.s.dropped_puts += len(items)
            return
        t0 = time.perf_counter()
        try:
            now = time.time()
            pipe = self.client.pipeline(transaction=False)
            sized = [(k, v) for k, v, _ in items if len(v) <= self.capacity_bytes]
            self.s.dropped_puts += len(items) - len(sized)
            for k, v in sized:
                pipe.set(k, v, nx=True)
            created = pipe.execute()
            pipe = self.client.pipeline(transaction=False)
            added = 0
            for (k, v), ok in zip(sized, created):
                if ok:
                    pipe.zadd(self.prefix + "lru", {k: now})
                    pipe.hset(self.prefix + "size", k, len(v))
                    added += len(v)
                    self.s.puts += 1
                    self.s.bytes_written += len(v)
            if added:
                pipe.incrby(self.prefix + "used", added)
            res = pipe.execute()
            if added:
                self._used = int(res[-1])
                if self._used > self.capacity_bytes:
                    self._evict_until(self.capacity_bytes)
        except Exception as e:
            self._fail(e)
            self.s.dropped_puts += len(items)
        finally:
            self.s.put_s += time.perf_counter() - t0

    def _evict_until(self, limit: int) -> None:
        while True:
            used = int(self.client.get(self.prefix + "used") or 0)
            if used <= limit:
                return
            # Pop as few as needed: estimate from the average chunk size (equal within a model).
            n_keys = max(1, int(self.client.zcard(self.prefix + "lru")))
            need = max(1, min(64, (used - limit) * n_keys // max(used, 1)))
            popped = self.client.zpopmin(self.prefix + "lru", need)
            if not popped:
                # Nothing tracked but counter high (keys evicted by Redis maxmemory): resync.
                self.client.set(self.prefix + "used", 0)
                return
            keys = [k for k, _ in popped]
            sizes = self.client.hmget(self.prefix + "size", keys)
            freed = sum(int(s or 0) for s in sizes)
            pipe = self.client.pipeline(transaction=False)
            pipe.delete(*keys)
            pipe.hdel(self.prefix + "size", *keys)
            pipe.decrby(self.prefix + "used", freed)
            self._used = int(pipe.execute()[-1])
            self.s.evictions += len(keys)
            self.s.evicted_bytes += freed

    def delete_many(self, keys: Sequence[str]) -> None:
        if not keys or not self._available():
            return
        try:
            sizes = self.reader.hmget(self.prefix + "size", list(keys))
            pipe = self.reader.pipeline(transaction=False)
            pipe.delete(*keys)
            pipe.zrem(self.prefix + "lru", *keys)
            pipe.hdel(self.prefix + "size", *keys)
            freed = sum(int(s or 0) for s in sizes)
            if freed:
                pipe.decrby(self.prefix + "used", freed)
            pipe.execute()
        except Exception as e:
            self._fail(e)

    def set_capacity(self, capacity_bytes: int) -> None:
        self.capacity_bytes = int(capacity_bytes)
        if self._available():
            try:
                self._evict_until(self.capacity_bytes)
            except Exception as e:
                self._fail(e)

    def used_bytes(self) -> int:
        """Bytes stored by every writer, as of this process's last write or the monitor's last
        refresh (at most `refresh_s` old); no network call."""
        return self._used

    def stats(self) -> dict:
        return {"tier": self.name, "capacity_bytes": self.capacity_bytes, "used_bytes": self.used_bytes(),
                "healthy": self.healthy, "circuit_opens": self.circuit_opens, **self.s.as_dict()}

    def close(self) -> None:
        self._closed.set()
        self._wake.set()
        for c in (self.client, self.reader, self.probe):
            try:
                c.close()
            except Exception:
                pass
