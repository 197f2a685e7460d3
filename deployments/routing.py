"""Prefix-affinity request routing for the LLM deployment (a Ray Serve `RequestRouter`).

Why: a replica that served a conversation's earlier turns holds that prefix in its vLLM
prefix cache (and, with the KV store, in its node-local tier). Sending the next turn there
skips most of the prefill. Affinity must not overload a replica, so it yields to load.

How:
- The ingress hashes the prompt's token ids in blocks (`prefix_block_hashes`): a hash chain,
  so equal hashes mean equal prefixes up to that block.
- The router remembers which replica last served each block hash (bounded LRU table).
- For a new request it finds the longest remembered prefix. If that replica is present and its
  queue is at most `imbalance_threshold` longer than the least-loaded replica's, it is ranked
  first; otherwise (or with no match) the two least-loaded replicas are ranked, and Serve's
  queue-length probe picks the lower one.

The router runs inside each process holding a handle (the ingress), so its table is per
ingress replica; with several ingress replicas affinity is per ingress, which is still right
for sticky clients.
"""

from __future__ import annotations

import hashlib
import random
from collections import OrderedDict
from typing import Any, List, Optional, Sequence

from ray.serve.request_router import (
    PendingRequest,
    ReplicaID,
    RequestRouter,
    RunningReplica,
)

from deployments.config import RoutingConfig


def prefix_block_hashes(token_ids: Sequence[int], block_tokens: int, max_blocks: int) -> list[str]:
    """Chain hashes of the full `block_tokens`-sized blocks of `token_ids` (at most `max_blocks`).

    A trailing partial block is hashed too, so short prompts still get affinity.
    """
    hashes: list[str] = []
    h = hashlib.blake2b(digest_size=12)
    prev = b""
    n = len(token_ids)
    for start in range(0, min(n, block_tokens * max_blocks), block_tokens):
        block = token_ids[start : start + block_tokens]
        h = hashlib.blake2b(prev, digest_size=12)
        h.update(",".join(map(str, block)).encode())
        prev = h.digest()
        hashes.append(prev.hex())
    return hashes


class PrefixAffinityRouter(RequestRouter):
    """Route by longest remembered prefix, falling back to the least-loaded replica."""

    def initialize_state(self, **routing: Any) -> None:
        """`routing`: fields of `RoutingConfig` (its defaults fill the rest)."""
        cfg = RoutingConfig.model_validate(routing)
        self._imbalance_threshold = cfg.imbalance_threshold
        self._table_size = cfg.table_size
        self._prefix_affinity = cfg.prefix_affinity
        self._owner: "OrderedDict[str, str]" = OrderedDict()  # block hash -> replica unique_id

    @staticmethod
    def _hashes(pending_request: Optional[PendingRequest]) -> list[str]:
        if pending_request is None:
            return []
        for arg in pending_request.args:
            if isinstance(arg, dict) and "prefix_hashes" in arg:
                return arg["prefix_hashes"] or []
        return []

    def _load(self, replica: RunningReplica) -> int:
        q = self.replica_queue_len_cache.get(replica.replica_id)
        return 0 if q is None else q

    async def choose_replicas(
        self,
        candidate_replicas: List[RunningReplica],
        pending_request: Optional[PendingRequest] = None,
    ) -> List[List[RunningReplica]]:
        if not candidate_replicas:
            return []
        if pending_request is not None:
            # We do our own ranking over all replicas, so an unsuccessful round should back
            # off rather than spin (the locality mixins normally set this flag).
            pending_request.routing_context.should_backoff = True
        by_id = {r.replica_id.unique_id: r for r in candidate_replicas}
        loads = {r.replica_id.unique_id: self._load(r) for r in candidate_replicas}
        ranked = sorted(candidate_replicas, key=lambda r: (loads[r.replica_id.unique_id], random.random()))
        min_load = loads[ranked[0].replica_id.unique_id]

        owner_id = None
        for h in reversed(self._hashes(pending_request) if self._prefix_affinity else []):
            rid = self._owner.get(h)
            if rid is not None and rid in by_id:
                owner_id = rid
                break
        if owner_id is not None:
            owner = by_id[owner_id]
            if (
                loads[owner_id] <= min_load + self._imbalance_threshold
                and loads[owner_id] < owner.max_ongoing_requests
            ):
                rest = [r for r in ranked if r.replica_id.unique_id != owner_id][:2]
                return [[owner], rest] if rest else [[owner]]
        return [ranked[:2]]

    def on_request_routed(
        self,
        pending_request: PendingRequest,
        replica_id: ReplicaID,
        result: Any,
    ) -> None:
        rid = replica_id.unique_id
        for h in self._hashes(pending_request):
            self._owner[h] = rid
            self._owner.move_to_end(h)
        while len(self._owner) > self._table_size:
            self._owner.popitem(last=False)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        super().on_replica_actor_died(replica_id)
        dead = replica_id.unique_id
        for h in [h for h, r in self._owner.items() if r == dead]:
            del self._owner[h]
