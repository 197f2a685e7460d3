"""GreenCache's footprint on one machine: its home directory layout, safe file writes, free ports.

This module sits in the bottom layer (`cache_store` imports no other part of GreenCache), so
every part can use it:

- `HomeLayout`: where each file GreenCache keeps on a node lives, under one home directory
  (`GREENCACHE_HOME`, default `~/.greencache`). Every path is spelled out here and nowhere else.
- `atomic_write_text` / `atomic_write_bytes`: write to a temporary file in the same directory,
  then rename over the target, so a reader sees the old content or the new, never a mix.
  `durable=True` also fsyncs the file and the directory, so the new content survives a crash
  of the machine (state the autoscaler resumes from); caches skip it (a lost chunk is a miss).
- `private_dir`: a directory only its owner may enter (0700): KV chunks are derived from
  prompts, and state files carry decisions.
- `free_port`: a TCP port nothing listens on, on the given (loopback by default) address.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class HomeLayout:
    """Paths under one GreenCache home directory (one per node)."""

    home: Path

    @property
    def demo_model(self) -> Path:
        """The demo model (`greencache demo-model`), built on first use."""
        return self.home / "demo-model"

    @property
    def kv_disk(self) -> Path:
        """Default disk (NVMe) tier directory of the KV store."""
        return self.home / "kv-disk"

    @property
    def kv_stats(self) -> Path:
        """Store statistics each replica's engine processes publish (one folder per replica)."""
        return self.home / "kv-stats"

    @property
    def secrets(self) -> Path:
        """Secrets GreenCache generates for itself (the password of a Redis it starts), 0700."""
        return self.home / "secrets"

    @property
    def autoscaler(self) -> Path:
        """The autoscaler's state directory (on the node where it runs: the head)."""
        return self.home / "autoscaler"

    @property
    def last_decision(self) -> Path:
        """The autoscaler's last decision, which a restarted actor resumes from."""
        return self.autoscaler / "last.json"

    @property
    def decisions(self) -> Path:
        """The autoscaler's decision log (one JSON line per cycle)."""
        return self.autoscaler / "decisions.jsonl"


def private_dir(path: str | os.PathLike) -> Path:
    """Create `path` (and parents) if missing; the leaf is made owner-only (0700)."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True)
    try:
        os.chmod(p, 0o700)
    except OSError:  # not ours to change (e.g. an operator-provided mount): leave it
        pass
    return p


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, durable: bool = False, mode: int = 0o600) -> None:
    """Replace `path` with `data` atomically (see module docstring); raises OSError on failure
    and leaves no temporary file behind."""
    final = Path(path)
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        dfd = os.open(final.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


def atomic_write_text(path: str | os.PathLike, text: str, *, durable: bool = False, mode: int = 0o600) -> None:
    atomic_write_bytes(path, text.encode(), durable=durable, mode=mode)


def is_temporary(name: str) -> bool:
    """True for the temporary files `atomic_write_*` leaves if a process dies mid-write."""
    return name.startswith(".") and name.endswith(".tmp")


def loopback_host(host: str) -> str:
    """The address this machine reaches a server bound to `host` at (loopback for a wildcard)."""
    return "127.0.0.1" if host in ("", "0.0.0.0", "::") else host


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on at `host` right now, chosen below the kernel's
    ephemeral range (32768-60999 on Linux): a port the kernel hands out for `bind(0)` can be
    handed again to one of the many processes Ray starts before ours binds it (seen as Serve's
    NoAvailablePortError for a direct-ingress port)."""
    import random

    addr = loopback_host(host)
    for _ in range(100):
        port = random.randrange(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind((addr, port))
            except OSError:
                continue
            return port
    with socket.socket() as s:
        s.bind((addr, 0))
        return s.getsockname()[1]
