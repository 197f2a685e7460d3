"""Node-local disk tier (standing for NVMe), shared by every process on the node.

Every engine process on a node (each replica has a scheduler and a worker process) opens the
same directory, and they must behave as one tier: a chunk one replica wrote is a hit for the
others, and the node holds at most one capacity's worth of chunks. So the directory carries its
own index, a SQLite database (`index.sqlite`, WAL mode) that every process reads and writes in
transactions:

    chunks(key, size, chunk_index, freq, score)   one row per chunk file `<key>.kv`
    meta(name, value)                              capacity_bytes, used_bytes, inflation

- A put writes the chunk to a temporary file first, then in one transaction evicts the
  lowest-scored chunks until it fits, records the row and renames the file into place. A
  reader that sees the row finds the file; a crash leaves at most a temporary file, removed by
  the next process that opens the tier (if its writer is gone).
- The capacity is the node's: `set_capacity` stores it in the index and evicts at once, and
  every process checks it on every put. `capacity_bytes=None` at open keeps the node's
  current capacity (the replica sets it; engine processes follow it).
- `used_bytes` counts chunk files only (the index and temporary files are not counted).
- Eviction order comes from the configured policy's `shared_score` (cache_store/eviction): LRU
  scores by last access time, cost-aware by GreedyDual-Size-Frequency priority.
- On open, files without a row (a crash between rename and commit) are indexed and rows
  without a file are dropped, so the index always describes the directory.
- A full or failing disk (ENOSPC, EIO, permissions) drops the write and counts it; a read that
  fails is a miss. Nothing here raises for I/O trouble.
- The directory is private to its owner (0700), files 0600: chunks are derived from prompts.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from typing import Optional, Sequence

from cache_store.eviction import EvictionPolicy, LRUPolicy
from cache_store.local import atomic_write_bytes, private_dir
from cache_store.tiers.base import TierStats

logger = logging.getLogger("greencache.store.disk")

INDEX_NAME = "index.sqlite"
BUSY_TIMEOUT_S = 30.0  # how long a process waits for another's transaction on the index
# Hits count as accesses for eviction in batches: a load's reads do not each pay a transaction
# (0.1 ms each; four per 31-chunk load). Pending hits are written by this process's next
# transaction of any kind (every eviction runs in one), or once this many are pending or the
# oldest is this old; other processes' evictions see them at most that late.
TOUCH_BATCH = 64
TOUCH_DELAY_S = 1.0
_SCHEMA = """
CREATE TABLE IF NOT EXISTS chunks (key TEXT PRIMARY KEY, size INTEGER NOT NULL, chunk_index INTEGER NOT NULL,
                                   freq INTEGER NOT NULL, score REAL NOT NULL);
CREATE INDEX IF NOT EXISTS chunks_by_score ON chunks (score);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value REAL NOT NULL);
"""


def _filename(key: str) -> str:
    return key.replace(":", "_") + ".kv"


def _key(filename: str) -> str:
    return filename[: -len(".kv")].replace("_", ":", 1)


def _writer_alive(tmp_name: str) -> bool:
    """Is the process that owns temporary file `.<name>.<pid>.tmp` still running?"""
    try:
        pid = int(tmp_name.rsplit(".", 2)[-2])
    except (ValueError, IndexError):
        return False
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


class DiskTier:
    name = "disk"

    def __init__(self, path: str | os.PathLike, capacity_bytes: Optional[int],
                 policy: Optional[EvictionPolicy] = None) -> None:
        self.path = private_dir(path)
        self.policy = policy or LRUPolicy()
        self.s = TierStats()
        self._lock = threading.RLock()
        self._pending_hits: list[str] = []  # read but not yet counted in the index (TOUCH_BATCH)
        self._pending_since = 0.0
        self._db = sqlite3.connect(self.path / INDEX_NAME, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                   check_same_thread=False)
        try:
            os.chmod(self.path / INDEX_NAME, 0o600)
        except OSError:
            pass
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # the index may lose its last commits on power loss; reconcile repairs it
        self._db.executescript(_SCHEMA)
        with self._tx():
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('capacity_bytes', ?)",
                             (int(capacity_bytes or 0),))
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('used_bytes', 0)")
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('inflation', 0)")
        self._reconcile()
        if capacity_bytes is not None:
            self.set_capacity(capacity_bytes)

    # ---- index helpers ----------------------------------------------------------------
    class _Tx:
        def __init__(self, tier: "DiskTier") -> None:
            self.tier = tier

        def __enter__(self):
            self.tier._lock.acquire()
            try:
                self.tier._db.execute("BEGIN IMMEDIATE")  # one writer at a time across processes
            except BaseException:
                self.tier._lock.release()
                raise
            self.tier._count_hits(self.tier._db)
            return self.tier._db

        def __exit__(self, exc_type, exc, tb):
            try:
                self.tier._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
            finally:
                self.tier._lock.release()
            return False

    def _tx(self) -> "DiskTier._Tx":
        return DiskTier._Tx(self)

    def _meta(self, db, name: str) -> float:
        return db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()[0]

    def _set_meta(self, db, name: str, value: float) -> None:
        db.execute("UPDATE meta SET value = ? WHERE name = ?", (value, name))

    def _score(self, db, freq: int, chunk_index: int, size: int) -> float:
        return self.policy.shared_score(freq, chunk_index, size, self._meta(db, "inflation"))

    def _evict_until(self, db, limit: int) -> None:
        """Delete lowest-scored chunks until used bytes ≤ `limit` (inside a transaction)."""
        used = int(self._meta(db, "used_bytes"))
        while used > limit:
            victims = db.execute("SELECT key, size, score FROM chunks ORDER BY score, rowid LIMIT 64").fetchall()
            if not victims:
                used = 0
                break
            for key, size, score in victims:
                if used <= limit:
                    break
                db.execute("DELETE FROM chunks WHERE key = ?", (key,))
                self._unlink(key)
                used -= size
                self.s.evictions += 1
                self.s.evicted_bytes += size
                if self.policy.shared_inflates:
                    self._set_meta(db, "inflation", score)
        self._set_meta(db, "used_bytes", used)

    def _unlink(self, key: str) -> None:
        try:
            os.unlink(self.path / _filename(key))
        except FileNotFoundError:
            pass
        except OSError as e:
            self.s.errors += 1
            logger.warning("disk tier delete failed for %s: %s", key, e)

    def _reconcile(self) -> None:
        """Make the index describe the directory: index unindexed chunk files (oldest first),
        drop rows whose file is gone, remove temporary files whose writer is dead. Runs under
        the index's write lock, so no other process's put lands half-seen."""
        with self._tx() as db:
            files: dict[str, tuple[float, int]] = {}
            for e in os.scandir(self.path):
                if e.name.endswith(".tmp"):
                    if not _writer_alive(e.name):
                        try:
                            os.unlink(e.path)
                        except OSError:
                            pass
                elif e.name.endswith(".kv") and e.is_file():
                    st = e.stat()
                    files[_key(e.name)] = (st.st_mtime, st.st_size)
            rows = dict(db.execute("SELECT key, size FROM chunks").fetchall())
            for key in set(rows) - set(files):
                db.execute("DELETE FROM chunks WHERE key = ?", (key,))
            for key in sorted(set(files) - set(rows), key=lambda k: files[k][0]):
                db.execute("INSERT INTO chunks VALUES (?, ?, 0, 1, ?)",
                           (key, files[key][1], self.policy.shared_score(1, 0, files[key][1], 0.0)))
            used = db.execute("SELECT COALESCE(SUM(size), 0) FROM chunks").fetchone()[0]
            self._set_meta(db, "used_bytes", used)
            self._evict_until(db, int(self._meta(db, "capacity_bytes")))

    # ---- tier API ---------------------------------------------------------------------
    @property
    def capacity_bytes(self) -> int:
        with self._lock:
            return int(self._meta(self._db, "capacity_bytes"))

    @property
    def used_bytes(self) -> int:
        with self._lock:
            return int(self._meta(self._db, "used_bytes"))

    def contains_many(self, keys: Sequence[str]) -> list[bool]:
        if not keys:
            return []
        with self._lock:
            found = {k for (k,) in self._db.execute(
                f"SELECT key FROM chunks WHERE key IN ({','.join('?' * len(keys))})", list(keys))}
        return [k in found for k in keys]

    def _read(self, key: str) -> Optional[bytes]:
        try:
            with open(self.path / _filename(key), "rb", buffering=0) as f:
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            self.s.errors += 1
            logger.warning("disk tier read failed for %s: %s", key, e)
            return None

    def get_many(self, keys: Sequence[str]) -> list[Optional[bytes]]:
        """The values of `keys` (None: not here). Files are read without asking the index
        first: a file exists only while its row does (it is renamed into place in the put's
        transaction and unlinked in the eviction's), and what is read is checked by the reader
        anyway. Hits count as accesses for eviction in batches (TOUCH_BATCH); a row whose file
        is gone (removed by hand) is dropped at once."""
        t0 = time.perf_counter()
        out: list[Optional[bytes]] = []
        hits, missed = [], []
        for k in keys:
            self.s.lookups += 1
            v = self._read(k)
            if v is None:
                missed.append(k)
            else:
                self.s.hits += 1
                self.s.bytes_read += len(v)
                hits.append(k)
            out.append(v)
        with self._lock:
            if hits and not self._pending_hits:
                self._pending_since = time.monotonic()
            self._pending_hits.extend(hits)
            due = len(self._pending_hits) >= TOUCH_BATCH or (
                self._pending_hits and time.monotonic() - self._pending_since >= TOUCH_DELAY_S)
        if missed:  # rows whose file is gone (removed by hand); most misses have no row
            missed = [k for k, ok in zip(missed, self.contains_many(missed)) if ok]
        if missed or due:
            self._forget(missed)  # its transaction counts the pending hits
        self.s.get_s += time.perf_counter() - t0
        return out

    def _count_hits(self, db) -> None:
        """Count the pending hits as accesses (inside the caller's transaction)."""
        hits, self._pending_hits = self._pending_hits, []
        if not hits:
            return
        counts: dict[str, int] = {}
        for k in hits:
            counts[k] = counts.get(k, 0) + 1
        keys = list(counts)
        try:
            rows = db.execute(f"SELECT key, freq, chunk_index, size FROM chunks WHERE key IN "
                              f"({','.join('?' * len(keys))})", keys).fetchall()
            inflation = self._meta(db, "inflation")
            db.executemany("UPDATE chunks SET freq = ?, score = ? WHERE key = ?", [
                (freq + counts[k], self.policy.shared_score(freq + counts[k], index, size, inflation), k)
                for k, freq, index, size in rows])
        except sqlite3.Error as e:  # the accesses are lost, the caller's transaction goes on
            self.s.errors += 1
            logger.warning("disk tier access count failed: %s", e)

    def _forget(self, missed: list[str]) -> None:
        """Drop the rows of `missed` (their files are gone), in a transaction that also counts
        the pending hits."""
        try:
            with self._tx() as db:
                if missed:
                    gone = db.execute(f"DELETE FROM chunks WHERE key IN ({','.join('?' * len(missed))}) "
                                      f"RETURNING size", missed).fetchall()
                    if gone:
                        self._set_meta(db, "used_bytes", self._meta(db, "used_bytes") - sum(g[0] for g in gone))
        except sqlite3.Error as e:
            self.s.errors += 1
            logger.warning("disk tier index update failed: %s", e)

    def put_many(self, items: Sequence[tuple[str, bytes, int]]) -> None:
        """`items` are (key, value, chunk_index); chunk_index feeds cost-aware eviction. One
        transaction per batch: the index's lock is taken once, not once per chunk."""
        t0 = time.perf_counter()
        written: list[tuple[str, int]] = []
        try:
            with self._tx() as db:
                present = {k for (k,) in db.execute(
                    f"SELECT key FROM chunks WHERE key IN ({','.join('?' * len(items))})", [k for k, _, _ in items])}
                cap = int(self._meta(db, "capacity_bytes"))
                used = int(self._meta(db, "used_bytes"))
                for key, value, chunk_index in items:
                    if key in present:
                        continue  # another replica saved it already
                    used = self._put_one(db, key, value, chunk_index, cap, used, written)
                    present.add(key)
                self._set_meta(db, "used_bytes", used)
        except sqlite3.Error as e:  # the batch's rows rolled back: its files must go too
            self.s.errors += 1
            self.s.dropped_puts += len(written)
            logger.warning("disk tier index update failed: %s", e)
            for key, _ in written:
                self._unlink(key)
            written = []
        self.s.puts += len(written)
        self.s.bytes_written += sum(size for _, size in written)
        self.s.put_s += time.perf_counter() - t0

    def _put_one(self, db, key: str, value: bytes, chunk_index: int, cap: int, used: int,
                 written: list) -> int:
        """Store one chunk inside the caller's transaction; returns the new used bytes."""
        size = len(value)
        if size > cap:
            self.s.dropped_puts += 1
            return used
        if used + size > cap:
            self._set_meta(db, "used_bytes", used)
            self._evict_until(db, cap - size)
            used = int(self._meta(db, "used_bytes"))
        try:
            atomic_write_bytes(self.path / _filename(key), value)  # in place before the row commits
        except OSError as e:
            self.s.errors += 1
            self.s.dropped_puts += 1
            logger.warning("disk tier write failed for %s: %s", key, e)
            return used
        db.execute("INSERT INTO chunks VALUES (?, ?, ?, 1, ?)",
                   (key, size, chunk_index, self._score(db, 1, chunk_index, size)))
        written.append((key, size))
        return used + size

    def delete_many(self, keys: Sequence[str]) -> None:
        if not keys:
            return
        try:
            with self._tx() as db:
                for k in keys:
                    size = db.execute("DELETE FROM chunks WHERE key = ? RETURNING size", (k,)).fetchone()
                    if size is not None:
                        self._set_meta(db, "used_bytes", self._meta(db, "used_bytes") - size[0])
                        self._unlink(k)
        except sqlite3.Error as e:
            self.s.errors += 1
            logger.warning("disk tier delete failed: %s", e)

    def set_capacity(self, capacity_bytes: int) -> None:
        """The node's capacity: stored in the index for every process, and enforced at once."""
        with self._tx() as db:
            self._set_meta(db, "capacity_bytes", int(capacity_bytes))
            self._evict_until(db, int(capacity_bytes))

    def stats(self) -> dict:
        with self._lock:
            chunks = self._db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
            return {"tier": self.name, "capacity_bytes": self.capacity_bytes, "used_bytes": self.used_bytes,
                    "chunks": chunks, **self.s.as_dict()}

    def close(self) -> None:
        with self._lock:
            try:
                if self._pending_hits:
                    self._forget([])
                self._db.close()
            except sqlite3.Error:
                pass
