"""Start a private redis-server on a loopback port (tests, benchmarks, `greencache serve`).

The server is configured through its standard input (`redis-server -`), so its command line,
which `ps` shows to every user, carries no password. With `password=True` it gets a random one,
written to a 0600 file that `password_file` names; the store reads it from there.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

from cache_store.local import atomic_write_text, free_port, private_dir


class RedisServer:
    """A redis-server process we own: no persistence, optional maxmemory + LRU backstop,
    optional password, optional TLS (`tls=(cert_file, key_file, ca_file)`: then `url` is
    `rediss://` and the plain port is off)."""

    def __init__(self, port: Optional[int] = None, maxmemory_bytes: Optional[int] = None, *,
                 password: bool = False, secrets_dir: Optional[Path] = None,
                 tls: Optional[tuple[str, str, str]] = None) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server not found; install it (Debian: apt-get install redis-server)")
        self.port = port or free_port()
        self.maxmemory_bytes = maxmemory_bytes
        self.exe = exe
        self.tls = tls
        self.password: Optional[str] = secrets.token_urlsafe(24) if password else None
        self.password_file: Optional[str] = None
        if self.password is not None:
            d = private_dir(secrets_dir or tempfile.mkdtemp(prefix="greencache-redis-"))
            path = d / f"redis-{self.port}.password"
            atomic_write_text(path, self.password + "\n")
            self.password_file = str(path)
        self.proc: Optional[subprocess.Popen] = None
        self.start()

    @property
    def url(self) -> str:
        """The server's URL (never with the password; see `password_file`)."""
        if self.tls:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.tls[2]}"
        return f"redis://127.0.0.1:{self.port}/0"

    def _config(self) -> str:
        lines = ["bind 127.0.0.1", "save \"\"", "appendonly no", "protected-mode yes"]
        if self.tls:
            cert, key, ca = self.tls
            lines += ["port 0", f"tls-port {self.port}", f"tls-cert-file {cert}", f"tls-key-file {key}",
                      f"tls-ca-cert-file {ca}", "tls-auth-clients no"]
        else:
            lines += [f"port {self.port}"]
        if self.maxmemory_bytes:
            lines += [f"maxmemory {self.maxmemory_bytes}", "maxmemory-policy allkeys-lru"]
        if self.password is not None:
            lines += [f"requirepass {self.password}"]
        return "\n".join(lines) + "\n"

    def client(self):
        import redis

        kwargs = {"password": self.password, "socket_timeout": 0.5}
        if self.tls:
            kwargs.update(ssl=True, ssl_ca_certs=self.tls[2])
        return redis.Redis(host="127.0.0.1", port=self.port, **kwargs)

    def start(self) -> None:
        self.proc = subprocess.Popen([self.exe, "-"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, text=True)
        self.proc.stdin.write(self._config())
        self.proc.stdin.close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                self.client().ping()
                return
            except Exception:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.proc = None
