"""Start a private redis-server on a loopback port (tests, benchmarks, `greencache serve`)."""

from __future__ import annotations

import shutil
import subprocess
import time
from typing import Optional

from cache_store.local import free_port


class RedisServer:
    """A redis-server process we own: no persistence, optional maxmemory + LRU backstop."""

    def __init__(self, port: Optional[int] = None, maxmemory_bytes: Optional[int] = None) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server not found; install it (Debian: apt-get install redis-server)")
        self.port = port or free_port()
        self.maxmemory_bytes = maxmemory_bytes
        self.exe = exe
        self.proc: Optional[subprocess.Popen] = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [self.exe, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
                "--protected-mode", "yes"]
        if self.maxmemory_bytes:
            args += ["--maxmemory", str(self.maxmemory_bytes), "--maxmemory-policy", "allkeys-lru"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port, socket_timeout=0.5).ping()
                return
            except Exception:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None
