"""The eviction-policy contract used by the memory and disk tiers.

A policy only orders keys; the tier owns the bytes. In a process-local tier the tier calls the
hooks below, and `victim()` must return a key currently tracked (or None when empty); the tier
then removes it and calls `on_remove`. In the node-shared disk tier the order lives in the
tier's index as one score per chunk (`shared_score`).
"""

from __future__ import annotations

from typing import Optional, Protocol


class EvictionPolicy(Protocol):
    # In-process order (the memory tier):
    def on_insert(self, key: str, size: int, chunk_index: int = 0) -> None: ...
    def on_access(self, key: str) -> None: ...
    def on_remove(self, key: str) -> None: ...
    def victim(self) -> Optional[str]: ...

    # Shared order (the disk tier, whose index every process on a node uses): a score per
    # chunk, the lowest evicted first; `shared_inflates` policies then store the victim's
    # score as the new inflation that later scores start from.
    shared_inflates: bool

    def shared_score(self, freq: int, chunk_index: int, size: int, inflation: float) -> float: ...
