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

Mixed GPU fleets: one LLM deployment per GPU type, each with its own router. The routers of an
application in one process share one table (`route_table.AppRoutes`), and record which replicas
each deployment runs, so the ingress first picks the deployment (`route_table.choose_deployment`)
and that deployment's router then picks the replica as above. Serve ships this router class to
the processes that route *by value* (cloudpickle), so this module's globals there are a copy:
the shared table lives in `deployments/route_table.py`, imported when a router starts.
"""

from __future__ import annotations

import hashlib
import random
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
        # Imported here, at run time, from the process's own module: Serve pickles this class
        # by value, and a module-level import would bind a private copy of the table.
        from deployments import route_table

        deployment = getattr(self, "_deployment_id", None)
        if deployment is not None:  # shared with the app's other LLM deployments in this process
            self._routes = route_table.app_routes(deployment.app_name)
            self._name = deployment.name
        else:  # built outside Serve's router (unit use)
            self._routes, self._name = route_table.AppRoutes(), "llm"
        self._routes.routers[self._name] = self
        self._owner = self._routes.owner  # block hash -> replica unique_id
        self._ids: dict[str, ReplicaID] = {}

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

    def queue_len(self, unique_id: str) -> int:
        """The last known queue length of this deployment's replica `unique_id` (0 if unknown)."""
        rid = self._ids.get(unique_id)
        q = self.replica_queue_len_cache.get(rid) if rid is not None else None
        return 0 if q is None else q

    def update_replicas(self, replicas: List[RunningReplica]) -> None:
        super().update_replicas(replicas)
        self._ids = {r.replica_id.unique_id: r.replica_id for r in replicas}  # replaced whole (AppRoutes)
        self._routes.set_replicas(self._name, self._ids)

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
        if dead in self._ids:  # the ingress stops choosing this deployment for it at once
            self._ids = {k: v for k, v in self._ids.items() if k != dead}
            self._routes.set_replicas(self._name, self._ids)
