"""Cost-aware eviction: keep the chunks that save the most prefill per byte (GreedyDual-Size-Frequency).

Score of a chunk (higher = keep):

    priority = L + frequency × saved_prefill_s / size_bytes

- `saved_prefill_s` is the prefill a hit avoids. Attention makes later chunks dearer: chunk `i`
  (0-based) of `C` tokens costs `C × (a + b × (i + 0.5) × C)` seconds, with `a` the per-token
  linear cost (MLP, projections) and `b` the per-token-pair attention cost. Defaults are
  relative (a=1, b=1/4096 per token), which only the ratio between chunks needs; pass profile
  values to get seconds.
- `frequency` counts hits since insertion, so reused chunks stay.
- `L` ("inflation") is the priority of the last evicted chunk: each access re-scores a chunk at
  the current L, so chunks that were valuable long ago but are no longer touched age out.

Limits: the cost model ignores where a chunk would be re-requested (its prefix must also be
cached to be usable, so evicting chunk 0 of a prefix strands the rest; later chunks score
higher, which partly offsets that), and sizes are equal for one model, so within one model the
policy ranks by position × frequency, aged.
"""

from __future__ import annotations

import heapq
from typing import Optional


class CostAwarePolicy:
    def __init__(self, chunk_tokens: int = 256, linear_cost: float = 1.0, attention_cost: float = 1.0 / 4096) -> None:
        self.chunk_tokens = chunk_tokens
        self.a = linear_cost
        self.b = attention_cost
        self.inflation = 0.0
        self._heap: list[tuple[float, int, str]] = []
        self._entry: dict[str, tuple[float, int]] = {}  # key -> (priority, version)
        self._meta: dict[str, tuple[int, int, int]] = {}  # key -> (size, chunk_index, frequency)
        self._version = 0

    def saved_prefill(self, chunk_index: int) -> float:
        c = self.chunk_tokens
        return c * (self.a + self.b * (chunk_index + 0.5) * c)

    def _push(self, key: str) -> None:
        size, idx, freq = self._meta[key]
        prio = self.inflation + freq * self.saved_prefill(idx) / max(size, 1)
        self._version += 1
        self._entry[key] = (prio, self._version)
        heapq.heappush(self._heap, (prio, self._version, key))

    def on_insert(self, key: str, size: int, chunk_index: int = 0) -> None:
        self._meta[key] = (size, chunk_index, 1)
        self._push(key)

    def on_access(self, key: str) -> None:
        if key in self._meta:
            size, idx, freq = self._meta[key]
            self._meta[key] = (size, idx, freq + 1)
            self._push(key)

    def on_remove(self, key: str) -> None:
        self._meta.pop(key, None)
        self._entry.pop(key, None)

    def victim(self) -> Optional[str]:
        while self._heap:
            prio, version, key = self._heap[0]
            if self._entry.get(key) == (prio, version):
                self.inflation = prio
                return key
            heapq.heappop(self._heap)  # stale entry
        return None

    # The disk tier keeps its order in a shared index (tiers/disk.py): the same priority, with
    # the inflation L kept in the index, lowest evicted first (and L set to the victim's).
    shared_inflates = True

    def shared_score(self, freq: int, chunk_index: int, size: int, inflation: float) -> float:
        return inflation + freq * self.saved_prefill(chunk_index) / max(size, 1)
