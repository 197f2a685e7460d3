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
application in one process share one table (`AppRoutes`), and record which replicas each
deployment runs, so the ingress first picks the deployment (`choose_deployment`: the one whose
replica owns the longest prefix, unless it is busier than the rest by the threshold; else the
least loaded) and that deployment's router then picks the replica as above.
"""

from __future__ import annotations

import hashlib
import random
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable, List, Optional, Sequence

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


@dataclass
class AppRoutes:
    """What the routers of one application's LLM deployments share in this process."""

    owner: "OrderedDict[str, str]" = field(default_factory=OrderedDict)  # block hash -> replica unique_id
    replicas: dict[str, set[str]] = field(default_factory=dict)  # deployment -> its running replicas
    routers: dict[str, "PrefixAffinityRouter"] = field(default_factory=dict)  # deployment -> its router

    def deployment_of(self, replica: str) -> Optional[str]:
        for name, ids in self.replicas.items():
            if replica in ids:
                return name
        return None

    def load_per_replica(self, deployment: str) -> float:
        """Requests queued or running per replica of `deployment`, as its router last saw them."""
        ids = self.replicas.get(deployment) or set()
        router = self.routers.get(deployment)
        if not ids or router is None:
            return 0.0
        return sum(router.queue_len(r) for r in ids) / len(ids)


_APPS: dict[str, AppRoutes] = {}


def app_routes(app: str) -> AppRoutes:
    """The shared routing state of `app` in this process (made on first use)."""
    return _APPS.setdefault(app, AppRoutes())


def choose_deployment(routes: AppRoutes, names: Sequence[str], hashes: Sequence[str], imbalance_threshold: float,
                      allowed: Optional[Iterable[str]] = None) -> str:
    """Which of an application's LLM deployments (`names`, one per GPU type) gets a request.

    Candidates: the deployments that run a replica and that the plan keeps (`allowed`: types
    with a planned count above zero; None = all). A deployment the plan is draining gets no new
    request, one still starting gets none until it runs a replica. If no candidate runs a
    replica, any deployment that does; if none does, the first allowed one (the request then
    waits in Serve for its replica). Among candidates: the one whose replica owns the longest
    remembered prefix of the request, unless its load per replica exceeds the least loaded
    candidate's by more than `imbalance_threshold`; else the least loaded."""
    allowed = set(names) if allowed is None else set(allowed)
    running = [n for n in names if routes.replicas.get(n)]
    live = [n for n in running if n in allowed] or running
    if not live:
        return next((n for n in names if n in allowed), names[0])
    if len(live) == 1:
        return live[0]
    load = {n: routes.load_per_replica(n) for n in live}
    least = min(load.values())
    for h in reversed(hashes):
        rid = routes.owner.get(h)
        if rid is None:
            continue
        owner = routes.deployment_of(rid)
        if owner in load:
            if load[owner] <= least + imbalance_threshold:
                return owner
            break
    return min(live, key=lambda n: (load[n], random.random()))


class PrefixAffinityRouter(RequestRouter):
    """Route by longest remembered prefix, falling back to the least-loaded replica."""

    def initialize_state(self, **routing: Any) -> None:
        """`routing`: fields of `RoutingConfig` (its defaults fill the rest)."""
        cfg = RoutingConfig.model_validate(routing)
        self._imbalance_threshold = cfg.imbalance_threshold
        self._table_size = cfg.table_size
        self._prefix_affinity = cfg.prefix_affinity
        deployment = getattr(self, "_deployment_id", None)
        if deployment is not None:  # shared with the app's other LLM deployments in this process
            self._routes = app_routes(deployment.app_name)
            self._name = deployment.name
        else:  # built outside Serve's router (unit use)
            self._routes, self._name = AppRoutes(), "llm"
        self._routes.routers[self._name] = self
        self._owner = self._routes.owner  # block hash -> replica unique_id

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
        for rid in self.curr_replicas:
            if rid.unique_id == unique_id:
                q = self.replica_queue_len_cache.get(rid)
                return 0 if q is None else q
        return 0

    def update_replicas(self, replicas: List[RunningReplica]) -> None:
        super().update_replicas(replicas)
        self._routes.replicas[self._name] = {r.replica_id.unique_id for r in replicas}

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
