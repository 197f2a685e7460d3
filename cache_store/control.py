"""Capacity control for stores that live inside vLLM's engine processes.

The autoscaler cannot call a store directly: the store is built by the KV connector inside
each engine's scheduler and worker processes. It writes the capacities it wants into a small
JSON file (`{"capacity_bytes": {"disk": N, ...}}`); `ControlFile.watch` applies them to a
store within `poll_s` even while no request arrives.

Fail-safe: a missing file changes nothing; an unreadable or malformed file, or a value that is
not a non-negative integer, is ignored with one warning per change of the file, and the
current capacities stay.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from pathlib import Path
from typing import Callable, Optional

logger = logging.getLogger("greencache.store.control")


def parse_capacities(text: str) -> dict[str, int]:
    """Tier name → capacity in bytes from the control file's text; ValueError if malformed."""
    control = json.loads(text)
    if not isinstance(control, dict):
        raise ValueError(f"expected a JSON object, got {type(control).__name__}")
    caps = control.get("capacity_bytes", {})
    if not isinstance(caps, dict):
        raise ValueError("'capacity_bytes' must be an object of tier name -> bytes")
    out: dict[str, int] = {}
    for name, value in caps.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"capacity of tier {name!r} must be a non-negative number of bytes, got {value!r}")
        out[str(name)] = int(value)
    return out


class ControlFile:
    """Polls one control file and hands changed capacities to `apply(tier_name, bytes)`."""

    def __init__(self, path: str | Path, apply: Callable[[str, int], None], poll_s: float = 1.0) -> None:
        self.path = Path(path)
        self.apply = apply
        self.poll_s = poll_s
        self._mtime = 0.0
        self._checked = 0.0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def poll(self, force: bool = False) -> None:
        """Apply the file if it changed since the last poll (rate-limited to one stat per `poll_s`)."""
        now = time.monotonic()
        if not force and now - self._checked < self.poll_s:
            return
        self._checked = now
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            return
        if mtime == self._mtime:
            return
        self._mtime = mtime
        try:
            caps = parse_capacities(self.path.read_text())
        except (OSError, ValueError) as e:
            logger.warning("ignoring store control file %s: %s", self.path, e)
            return
        for name, cap in caps.items():
            try:
                self.apply(name, cap)
            except KeyError:
                pass  # a tier this store does not have

    def watch(self) -> None:
        """Apply changes from a background thread as well, so they land without traffic."""
        if self.poll_s <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="greencache-store-control", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll()
            except Exception:  # the control thread must outlive any tier error
                logger.exception("store control poll failed")

    def close(self) -> None:
        self._stop.set()
