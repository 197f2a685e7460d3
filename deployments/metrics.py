"""Prometheus metrics of the serving path, measured at the ingress (what clients experience).

Names follow vLLM's (`vllm:time_to_first_token_seconds` → `greencache_time_to_first_token_seconds`)
so existing dashboards translate. One registry per ingress process, served at `/metrics`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75,
    1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)


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
        self.requests = Counter(
            "greencache_requests",
            "Requests by endpoint and HTTP status.",
            ["endpoint", "status"], registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
