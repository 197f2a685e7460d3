"""StatsHub: a small named Ray actor where replicas publish KV-store stats for the ingress.

The store lives inside vLLM's engine processes, which neither the ingress nor the autoscaler
can call; each replica reads its engine processes' stats files and pushes them here every few
seconds. `/metrics` renders the latest snapshot (`StoreMetricsCollector`), and the autoscaler
observes the same snapshot. Entries older than `stale_after_s` (a replica that went away) are
dropped (publishers push every 2 s). Never blocking serving: pushes are fire-and-forget, reads have timeouts.
"""

from __future__ import annotations

import time
from typing import Any, Iterable

import ray

HUB_NAME = "greencache-stats-hub"
HUB_NAMESPACE = "greencache"


@ray.remote(num_cpus=0)
class StatsHub:
    def __init__(self, stale_after_s: float = 10.0) -> None:
        self._stats: dict[str, tuple[float, dict]] = {}
        self.stale_after_s = stale_after_s

    def report(self, replica_id: str, stats: dict) -> None:
        self._stats[replica_id] = (time.time(), stats)

    def snapshot(self) -> dict[str, dict]:
        now = time.time()
        self._stats = {k: v for k, v in self._stats.items() if now - v[0] < self.stale_after_s}
        return {k: v[1] for k, v in self._stats.items()}


def get_or_create_hub():
    return StatsHub.options(name=HUB_NAME, namespace=HUB_NAMESPACE, get_if_exists=True,
                            lifetime="detached").remote()


class StoreMetricsCollector:
    """prometheus_client collector over the last StatsHub snapshot (set by the ingress)."""

    def __init__(self) -> None:
        self.snapshot: dict[str, dict] = {}

    def collect(self) -> Iterable[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        def fam(kind, name, doc, labels):
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            return cls(name, doc, labels=labels)

        proc = {
            "lookups": fam("counter", "greencache_kv_lookups", "Prefix lookups against the store.", ["replica", "role"]),
            "lookup_chunks": fam("counter", "greencache_kv_lookup_chunks", "Chunks asked for in lookups (hit-ratio denominator).", ["replica", "role"]),
            "hit_chunks": fam("counter", "greencache_kv_hit_chunks", "Leading chunks found in lookups.", ["replica", "role"]),
            "hit_tokens": fam("counter", "greencache_kv_hit_tokens", "Prompt tokens covered by found chunks.", ["replica", "role"]),
            "lookup_tokens": fam("counter", "greencache_kv_lookup_tokens", "Prompt tokens covered by chunks asked for.", ["replica", "role"]),
            "invalid_chunks": fam("counter", "greencache_kv_invalid_chunks", "Chunks rejected (corrupt, truncated, foreign) and deleted.", ["replica", "role"]),
            "loaded_chunks": fam("counter", "greencache_kv_loaded_chunks", "Chunks loaded into the engine.", ["replica", "role"]),
            "saved_chunks": fam("counter", "greencache_kv_saved_chunks", "Chunks saved to the store.", ["replica", "role"]),
            "failed_chunks": fam("counter", "greencache_kv_failed_chunks", "Chunks whose load failed (recomputed).", ["replica", "role"]),
            "load_s": fam("counter", "greencache_kv_load_seconds", "Time spent reading chunks (s).", ["replica", "role"]),
            "save_s": fam("counter", "greencache_kv_save_seconds", "Time spent writing chunks (s).", ["replica", "role"]),
            "embodied_kg_total": fam("counter", "greencache_kv_embodied_carbon_kg", "Embodied carbon accrued by provisioned store capacity (kgCO2e).", ["replica", "role"]),
        }
        tier_fams = {
            "lookups": fam("counter", "greencache_kv_tier_lookups", "Keys asked for per tier.", ["replica", "role", "tier"]),
            "hits": fam("counter", "greencache_kv_tier_hits", "Keys found per tier.", ["replica", "role", "tier"]),
            "bytes_read": fam("counter", "greencache_kv_tier_read_bytes", "Bytes read per tier.", ["replica", "role", "tier"]),
            "bytes_written": fam("counter", "greencache_kv_tier_written_bytes", "Bytes written per tier.", ["replica", "role", "tier"]),
            "evictions": fam("counter", "greencache_kv_tier_evictions", "Chunks evicted per tier.", ["replica", "role", "tier"]),
            "errors": fam("counter", "greencache_kv_tier_errors", "I/O errors per tier.", ["replica", "role", "tier"]),
            "capacity_bytes": fam("gauge", "greencache_kv_tier_capacity_bytes", "Capacity limit per tier (bytes).", ["replica", "role", "tier"]),
            "used_bytes": fam("gauge", "greencache_kv_tier_used_bytes", "Bytes used per tier.", ["replica", "role", "tier"]),
        }
        auto = [
            ("carbon_intensity_g_per_kwh", "greencache_autoscaler_carbon_intensity_g_per_kwh", "Grid intensity the last plan used (g/kWh)."),
            ("target_replicas", "greencache_autoscaler_target_replicas", "Replica target of the current plan."),
            ("capacity_gb", "greencache_autoscaler_cache_capacity_gb", "Disk-tier capacity of the current plan (GB)."),
            ("operational_g", "greencache_autoscaler_operational_carbon_g", "Predicted operational carbon so far (g)."),
            ("embodied_g", "greencache_autoscaler_embodied_carbon_g", "Predicted embodied carbon so far (g)."),
        ]
        a = self.snapshot.get("__autoscaler__")
        if a:
            for key, name, doc in auto:
                g = GaugeMetricFamily(name, doc)
                g.add_metric([], float(a.get(key, 0) or 0))
                yield g
        for replica, rep in self.snapshot.items():
            if replica.startswith("__"):
                continue
            for p in rep.get("processes", []):
                role = str(p.get("role", "?")).lower()
                store = p.get("store", {})
                chunk = p.get("chunk_tokens", 0)
                values = {**store, **{k: p.get(k, 0) for k in ("loaded_chunks", "saved_chunks", "failed_chunks")},
                          "hit_tokens": store.get("hit_chunks", 0) * chunk,
                          "lookup_tokens": store.get("lookup_chunks", 0) * chunk}
                for k, f in proc.items():
                    f.add_metric([replica, role], float(values.get(k, 0) or 0))
                for tname, t in store.get("tiers", {}).items():
                    for k, f in tier_fams.items():
                        f.add_metric([replica, role, tname], float(t.get(k, 0) or 0))
        yield from proc.values()
        yield from tier_fams.values()
