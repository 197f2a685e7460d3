"""The routing state an application's LLM deployments share in one process, and the choice of
deployment for a request with a mixed GPU fleet (one deployment per GPU type).

It lives apart from `routing.py` because Serve ships the router class to the routing process by
value (cloudpickle): that module's globals there are a private copy, while this module is
imported normally, once per process, by the routers (at start) and by the ingress.
"""

from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence


@dataclass
class AppRoutes:
    """What the routers of one application's LLM deployments share in this process.

    Serve's routers may run on a thread of their own while the ingress reads this from its
    request loop: `replicas` is never changed in place, only replaced whole, so a reader
    iterates a snapshot; `owner` is read by single lookups."""

    owner: "OrderedDict[str, str]" = field(default_factory=OrderedDict)  # block hash -> replica unique_id
    replicas: dict[str, frozenset] = field(default_factory=dict)  # deployment -> its running replicas' unique ids
    routers: dict[str, Any] = field(default_factory=dict)  # deployment -> its PrefixAffinityRouter

    def set_replicas(self, deployment: str, ids) -> None:
        self.replicas = {**self.replicas, deployment: frozenset(ids)}

    def deployment_of(self, replica: str) -> Optional[str]:
        for name, ids in self.replicas.items():  # a snapshot: replaced, never changed in place
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
