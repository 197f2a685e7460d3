"""The files the autoscaler keeps on its node (the head; decisions reach other nodes through
Ray, control_plane.py).

Under `HomeLayout(home)` (cache_store/local.py, where every path is named):
- `autoscaler/decisions.jsonl`: one JSON line per planning cycle (inputs, plan, predicted
  carbon, reason), appended;
- `autoscaler/last.json`: the last decision and the carbon totals, written atomically and
  fsynced, which a restarted autoscaler resumes from.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional

from cache_store.local import HomeLayout, atomic_write_text, private_dir

logger = logging.getLogger("greencache.autoscaler")


class AutoscalerState:
    def __init__(self, home: str | Path, *, create: bool = True) -> None:
        """`create=False` only reads (e.g. `greencache status`): no directory is made."""
        self.layout = HomeLayout(Path(home))
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
        with open(self.layout.decisions, "a") as f:
            f.write(json.dumps(record, default=str) + "\n")
