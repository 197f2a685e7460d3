"""Prometheus metrics at the ingress: the serving path (what clients experience) and the store.

Serving metric names follow vLLM's (`vllm:time_to_first_token_seconds` →
`greencache_time_to_first_token_seconds`) so existing dashboards translate. Store and
autoscaler metrics come from the telemetry hub's last snapshot (`StoreMetricsCollector`).
One registry per ingress process, served at `/metrics`.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from autoscaler.carbon import CarbonConfig
from autoscaler.telemetry import AUTOSCALER_KEY, is_replica_key

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)
# Tiers whose bytes sit in DRAM (Redis keeps its data in memory) or on SSD, for embodied carbon.
DRAM_TIERS = ("memory", "redis")
SSD_TIERS = ("disk",)


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ttft = Histogram(
            "greencache_time_to_first_token_seconds",
            "Time from request arrival at the ingress to the first generated token (s).",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.itl = Histogram(
            "greencache_inter_token_latency_seconds",
            "Time between consecutive streamed chunks, per generated token (s).",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.e2e = Histogram(
            "greencache_e2e_request_latency_seconds",
            "Time from arrival to the last token (s).",
            ["model"], buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.prompt_tokens = Counter(
            "greencache_prompt_tokens", "Prompt tokens processed.", ["model"], registry=r
        )
        self.generation_tokens = Counter(
            "greencache_generation_tokens", "Tokens generated.", ["model"], registry=r
        )
        self.cached_tokens = Counter(
            "greencache_prefix_cache_hit_tokens",
            "Prompt tokens served from a prefix cache instead of prefill.",
            ["model"], registry=r,
        )
        self.carbon = Counter(
            "greencache_carbon_grams",
            "Estimated carbon of answered requests (gCO2e), operational and embodied: the per-request "
            "estimates of usage.carbon (autoscaler/carbon.py).",
            ["kind"], registry=r,
        )
        self.requests = Counter(
            "greencache_requests",
            "Requests by endpoint and HTTP status.",
            ["endpoint", "status"], registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _family(kind: str, name: str, doc: str, labels: list[str]):
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    return (CounterMetricFamily if kind == "counter" else GaugeMetricFamily)(name, doc, labels=labels)


_PROCESS_METRICS = (  # key in a process's stats → (kind, name, help)
    ("lookups", "counter", "greencache_kv_lookups", "Prefix lookups against the store."),
    ("lookup_chunks", "counter", "greencache_kv_lookup_chunks", "Chunks asked for in lookups (hit-ratio denominator)."),
    ("hit_chunks", "counter", "greencache_kv_hit_chunks", "Leading chunks found in lookups."),
    ("hit_tokens", "counter", "greencache_kv_hit_tokens", "Prompt tokens covered by found chunks."),
    ("lookup_tokens", "counter", "greencache_kv_lookup_tokens", "Prompt tokens covered by chunks asked for."),
    ("invalid_chunks", "counter", "greencache_kv_invalid_chunks", "Chunks rejected (corrupt, truncated, foreign) and deleted."),
    ("loaded_chunks", "counter", "greencache_kv_loaded_chunks", "Chunks loaded into the engine."),
    ("saved_chunks", "counter", "greencache_kv_saved_chunks", "Chunks saved to the store."),
    ("failed_chunks", "counter", "greencache_kv_failed_chunks", "Chunks whose load failed (recomputed)."),
    ("load_s", "counter", "greencache_kv_load_seconds", "Time spent reading chunks (s)."),
    ("save_s", "counter", "greencache_kv_save_seconds", "Time spent writing chunks (s)."),
    ("embodied_kg", "counter", "greencache_kv_embodied_carbon_kg",
     "Embodied carbon accrued by provisioned store capacity (kgCO2e)."),
)
_TIER_METRICS = (
    ("lookups", "counter", "greencache_kv_tier_lookups", "Keys asked for per tier."),
    ("hits", "counter", "greencache_kv_tier_hits", "Keys found per tier."),
    ("bytes_read", "counter", "greencache_kv_tier_read_bytes", "Bytes read per tier."),
    ("bytes_written", "counter", "greencache_kv_tier_written_bytes", "Bytes written per tier."),
    ("evictions", "counter", "greencache_kv_tier_evictions", "Chunks evicted per tier."),
    ("errors", "counter", "greencache_kv_tier_errors", "I/O errors per tier."),
    ("capacity_bytes", "gauge", "greencache_kv_tier_capacity_bytes", "Capacity limit per tier (bytes)."),
    ("used_bytes", "gauge", "greencache_kv_tier_used_bytes", "Bytes used per tier."),
)
_AUTOSCALER_METRICS = (
    ("carbon_intensity_g_per_kwh", "greencache_autoscaler_carbon_intensity_g_per_kwh", "Grid intensity the last plan used (g/kWh)."),
    ("target_replicas", "greencache_autoscaler_target_replicas", "Replica target of the current plan."),
    ("capacity_gb", "greencache_autoscaler_cache_capacity_gb", "Disk-tier capacity of the current plan (GB)."),
    ("operational_g", "greencache_autoscaler_operational_carbon_g", "Predicted operational carbon so far (g)."),
    ("embodied_g", "greencache_autoscaler_embodied_carbon_g", "Predicted embodied carbon so far (g)."),
    ("cycle", "greencache_autoscaler_cycles", "Planning cycles run by this deployment's autoscaler."),
)


class StoreMetricsCollector:
    """prometheus_client collector over the last telemetry snapshot (set by the ingress).
    Embodied carbon of store capacity is priced with the autoscaler's `CarbonConfig`."""

    def __init__(self, carbon: Optional[CarbonConfig] = None) -> None:
        self.snapshot: dict[str, dict] = {}
        self.carbon = carbon or CarbonConfig()

    def _embodied_kg(self, store: dict) -> float:
        gb_h = store.get("capacity_gb_hours", {})
        fp = self.carbon.footprint(intensity_g_per_kwh=0.0,
                                   ssd_gb_hours=sum(gb_h.get(t, 0.0) for t in SSD_TIERS),
                                   dram_gb_hours=sum(gb_h.get(t, 0.0) for t in DRAM_TIERS))
        return fp.embodied_g / 1000

    def _process_values(self, p: dict) -> dict:
        store = p.get("store", {})
        chunk = p.get("chunk_tokens", 0)
        return {**store, **{k: p.get(k, 0) for k in ("loaded_chunks", "saved_chunks", "failed_chunks")},
                "hit_tokens": store.get("hit_chunks", 0) * chunk,
                "lookup_tokens": store.get("lookup_chunks", 0) * chunk,
                "embodied_kg": self._embodied_kg(store)}

    def _autoscaler(self) -> Iterable[Any]:
        a = self.snapshot.get(AUTOSCALER_KEY)
        if not a:
            return
        for key, name, doc in _AUTOSCALER_METRICS:
            g = _family("gauge", name, doc, [])
            g.add_metric([], float(a.get(key, 0) or 0))
            yield g

    def collect(self) -> Iterable[Any]:
        yield from self._autoscaler()
        proc = {key: _family(kind, name, doc, ["replica", "role"]) for key, kind, name, doc in _PROCESS_METRICS}
        tier = {key: _family(kind, name, doc, ["replica", "role", "tier"]) for key, kind, name, doc in _TIER_METRICS}
        for replica, rep in self.snapshot.items():
            if not is_replica_key(replica):
                continue
            for p in rep.get("processes", []):
                role = str(p.get("role", "?")).lower()
                values = self._process_values(p)
                for k, f in proc.items():
                    f.add_metric([replica, role], float(values.get(k, 0) or 0))
                for tname, t in p.get("store", {}).get("tiers", {}).items():
                    for k, f in tier.items():
                        f.add_metric([replica, role, tname], float(t.get(k, 0) or 0))
        yield from proc.values()
        yield from tier.values()
