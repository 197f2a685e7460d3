"""The files the autoscaler keeps on its node (the head; decisions reach other nodes through
Ray, control_plane.py).

Under `HomeLayout(home)` (cache_store/local.py, where every path is named):
- `autoscaler/decisions.jsonl`: one JSON line per planning cycle (inputs, plan, predicted
  carbon, reason: a summary, not the access sample), appended; past `max_log_bytes` it is
  rotated to `decisions.jsonl.1` ... `.{keep}`, so it never grows without bound;
- `autoscaler/last.json`: the last decision and the carbon totals, written atomically and
  fsynced, which a restarted autoscaler resumes from.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Optional

from cache_store.local import HomeLayout, atomic_write_text, private_dir

logger = logging.getLogger("greencache.autoscaler")


MAX_LOG_BYTES = 16 << 20
KEEP_LOGS = 3


class AutoscalerState:
    def __init__(self, home: str | Path, *, create: bool = True, max_log_bytes: int = MAX_LOG_BYTES,
                 keep: int = KEEP_LOGS) -> None:
        """`create=False` only reads (e.g. `greencache status`): no directory is made."""
        self.layout = HomeLayout(Path(home))
        self.max_log_bytes, self.keep = max_log_bytes, keep
        if create:
            private_dir(self.layout.autoscaler)

    def load_last(self) -> Optional[dict]:
        """The last recorded decision, or None (never ran, or the file is unreadable)."""
        path = self.layout.last_decision
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError) as e:
            logger.warning("could not read %s (%s); starting fresh", path, e)
            return None

    def save_last(self, record: dict) -> None:
        atomic_write_text(self.layout.last_decision, json.dumps(record), durable=True)

    def append_decision(self, record: dict) -> None:
        path = self.layout.decisions
        try:
            if path.stat().st_size >= self.max_log_bytes:
                self._rotate(path)
        except FileNotFoundError:
            pass
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(json.dumps(record, default=str) + "\n")

    def _rotate(self, path: Path) -> None:
        for i in range(self.keep - 1, 0, -1):
            older = path.with_name(f"{path.name}.{i}")
            if older.exists():
                os.replace(older, path.with_name(f"{path.name}.{i + 1}"))
        os.replace(path, path.with_name(f"{path.name}.1"))
