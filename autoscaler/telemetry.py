"""Telemetry: a small named Ray actor where the serving side publishes what the autoscaler observes.

Publishers (fire-and-forget, every few seconds):
- each LLM replica: its engine processes' KV-store stats (the store lives inside vLLM's engine
  processes, which nothing outside the replica can call);
- each ingress replica (`INGRESS_KEY` + its id): cumulative counts of the requests it has
  accepted and finished, their prompt and output tokens, TTFT and TPOT;
- the autoscaler (`AUTOSCALER_KEY`): a summary of its last decision, for `/metrics`.
Readers: the autoscaler (its observation) and the ingress (`/metrics`), with timeouts.
Entries older than `stale_after_s` (a replica that went away) are dropped, or than their own
`ttl_s` (the autoscaler's, which reports once per planning interval). Nothing here may block
serving: a missing hub costs a metric, never a request.
"""

from __future__ import annotations

import time

import ray

HUB_NAME = "greencache-stats-hub"
NAMESPACE = "greencache"
INGRESS_KEY = "__ingress__"  # + ":<replica id>"
AUTOSCALER_KEY = "__autoscaler__"


def is_replica_key(key: str) -> bool:
    """Replicas publish under their replica id; the other publishers under `__name__` keys."""
    return not key.startswith("__")


@ray.remote(num_cpus=0)
class StatsHub:
    def __init__(self, stale_after_s: float = 10.0) -> None:
        self._stats: dict[str, tuple[float, dict]] = {}  # key -> (expiry time, stats)
        self.stale_after_s = stale_after_s

    def report(self, key: str, stats: dict, ttl_s: float | None = None) -> None:
        self._stats[key] = (time.time() + (ttl_s or self.stale_after_s), stats)

    def snapshot(self) -> dict[str, dict]:
        now = time.time()
        self._stats = {k: v for k, v in self._stats.items() if now < v[0]}
        return {k: v[1] for k, v in self._stats.items()}

    def get(self, key: str) -> dict | None:
        v = self._stats.get(key)
        return v[1] if v is not None and time.time() < v[0] else None


def get_or_create_hub():
    """The hub, created on the head node on first use (so no worker node's loss takes it along)."""
    from autoscaler.control_plane import HEAD_RESOURCE

    return StatsHub.options(name=HUB_NAME, namespace=NAMESPACE, get_if_exists=True, lifetime="detached",
                            resources={HEAD_RESOURCE: 0.001}).remote()
