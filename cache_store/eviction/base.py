"""The eviction-policy contract used by the memory and disk tiers.

A policy only orders keys; the tier owns the bytes and calls the hooks below. `victim()` must
return a key currently tracked (or None when empty); the tier then removes it and calls
`on_remove`.
"""

from __future__ import annotations

from typing import Optional, Protocol


class EvictionPolicy(Protocol):
    def on_insert(self, key: str, size: int, chunk_index: int = 0) -> None: ...
    def on_access(self, key: str) -> None: ...
    def on_remove(self, key: str) -> None: ...
    def victim(self) -> Optional[str]: ...
