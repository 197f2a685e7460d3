"""Node-local disk tier (standing for NVMe): one file per chunk under a directory.

- Writes go to a temporary file and are renamed into place (`local.atomic_write_bytes`), so
  readers never see a partial chunk; a crash leaves at most a stray `*.tmp`, removed on start.
- The directory is private to its owner (0700), files 0600: chunks are derived from prompts.
- The index (key → size) is rebuilt by scanning the directory on start, oldest file first, so
  a restarted replica reuses what it saved before and LRU order survives restarts roughly.
- `used_bytes` counts file sizes, so the capacity limit is bytes on disk.
- A full or failing disk (ENOSPC, EIO, permissions) drops the write and counts it; never raises.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

from cache_store.eviction import EvictionPolicy
from cache_store.local import atomic_write_bytes, private_dir
from cache_store.tiers.base import LocalTier

logger = logging.getLogger("greencache.store.disk")


def _filename(key: str) -> str:
    return key.replace(":", "_") + ".kv"


def _key(filename: str) -> str:
    return filename[: -len(".kv")].replace("_", ":", 1)


class DiskTier(LocalTier):
    name = "disk"

    def __init__(self, path: str | os.PathLike, capacity_bytes: int, policy: Optional[EvictionPolicy] = None) -> None:
        super().__init__(capacity_bytes, policy)
        self.path = Path(path)
        private_dir(self.path)
        entries = []
        for e in os.scandir(self.path):
            if e.name.endswith(".tmp"):
                try:
                    os.unlink(e.path)
                except OSError:
                    pass
            elif e.name.endswith(".kv") and e.is_file():
                st = e.stat()
                entries.append((st.st_mtime, e.name, st.st_size))
        for _, name, size in sorted(entries):
            self._track(_key(name), size)
        self._evict_until(self.capacity_bytes)

    def _read(self, key: str) -> Optional[bytes]:
        # The index knows the size: one unbuffered read of exactly that many bytes (+1 to
        # notice a file that grew); no fstat, no buffered-reader copy.
        size = self.index.get(key, 0)
        try:
            fd = os.open(self.path / _filename(key), os.O_RDONLY)
            try:
                data = os.read(fd, size + 1) if size else b""
                if len(data) != size:  # rewritten or truncated underneath us: read it whole
                    os.lseek(fd, 0, os.SEEK_SET)
                    with os.fdopen(os.dup(fd), "rb") as f:
                        data = f.read()
                return data
            finally:
                os.close(fd)
        except FileNotFoundError:
            return None
        except OSError as e:
            self.s.errors += 1
            logger.warning("disk tier read failed for %s: %s", key, e)
            return None

    def _write(self, key: str, value: bytes) -> bool:
        try:
            atomic_write_bytes(self.path / _filename(key), value)
            return True
        except OSError as e:
            self.s.errors += 1
            logger.warning("disk tier write failed for %s: %s", key, e)
            return False

    def _delete(self, key: str) -> None:
        try:
            os.unlink(self.path / _filename(key))
        except FileNotFoundError:
            pass
        except OSError as e:
            self.s.errors += 1
            logger.warning("disk tier delete failed for %s: %s", key, e)

    def contains_many(self, keys):
        # Check the file system, not only our index: the engine's scheduler process looks up
        # chunks that its worker process wrote, and other processes may evict.
        out = []
        with self._lock:
            for k in keys:
                exists = os.path.exists(self.path / _filename(k))
                if exists and k not in self.index:
                    try:
                        self._track(k, os.path.getsize(self.path / _filename(k)))
                    except OSError:
                        exists = False
                elif not exists and k in self.index:
                    self._untrack(k)
                out.append(exists)
        return out
