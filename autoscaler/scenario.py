"""Build planner problems from a grid trace, a load forecast and a workload description.

`Workload` holds the per-request GPU work and the cache's hit-ratio curve. Its defaults stand
for Llama-3-8B on one H100 with a chat workload. They are a stated model, not a measurement:
- prefill 0.12 GPU-s per request: ~2k-token prompts at roughly 17k tokens/s of prefill
- decode 0.20 GPU-s per request: ~250 output tokens at ~25 ms per step, batch ~32
- KV 128 KiB per token (Llama-3-8B, bf16): 1 GB holds ~8k tokens
- hit-ratio curve h(cap) = h_max·(1 − exp(−cap/scale)), h_max 0.6, scale 200 GB
Replace them with a measured profile (`greencache profile`) and an observed hit-rate curve
once those land (issue #4, point 3).
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Optional, Sequence

import numpy as np
from pydantic import BaseModel, Field

from autoscaler.carbon import CarbonConfig
from autoscaler.carbon_sources import CarbonSource
from autoscaler.perf_model import DEFAULT_MAX_UTILISATION
from autoscaler.planner import CacheOption, PlanProblem


class Workload(BaseModel):
    prefill_gpu_s: float = Field(0.12, gt=0, description="GPU-seconds of prefill per request with no cache hit (s).")
    decode_gpu_s: float = Field(0.20, ge=0, description="GPU-seconds of decode per request (s).")
    hit_ratio_max: float = Field(0.6, ge=0, le=1, description="Token hit ratio with unbounded cache.")
    hit_ratio_scale_gb: float = Field(200.0, gt=0, description="Capacity at which 63% of the max hit ratio is reached (GB).")
    max_utilisation: float = Field(DEFAULT_MAX_UTILISATION, gt=0, le=1,
                                   description="Busy fraction per replica that keeps TTFT/TPOT within SLO.")
    peak_rps: float = Field(4.0, gt=0, description="Peak arrival rate of the default diurnal load (req/s).")
    trough_fraction: float = Field(0.3, gt=0, le=1, description="Night-time load as a fraction of peak.")

    def hit_ratio(self, capacity_gb: float) -> float:
        return self.hit_ratio_max * (1 - math.exp(-capacity_gb / self.hit_ratio_scale_gb))

    def diurnal_load(self, start: datetime, hours: int) -> list[float]:
        """Load peaking at 14:00 UTC, lowest at 02:00 (a stated default, not a trace)."""
        out = []
        for h in range(hours):
            hour = (start + timedelta(hours=h)).hour
            x = 0.5 * (1 - math.cos(2 * math.pi * (hour - 2) / 24))
            out.append(self.peak_rps * (self.trough_fraction + (1 - self.trough_fraction) * x))
        return out


def cache_options(capacities_gb: Sequence[float], workload: Workload, hit_ratio_fn=None) -> list[CacheOption]:
    """SSD-backed cache configurations (the disk tier); DRAM tiers can be added the same way.
    `hit_ratio_fn(capacity_gb)` overrides the workload's default curve (e.g. an observed one)."""
    h = hit_ratio_fn or workload.hit_ratio
    return [CacheOption(name=f"{cap:g}GB", capacity_gb=float(cap), hit_ratio=float(h(cap))) for cap in capacities_gb]


def build_problem(source: Optional[CarbonSource], start: datetime, hours: int, *, workload: Optional[Workload] = None,
                  intensity: Optional[Sequence[float]] = None,
                  carbon: Optional[CarbonConfig] = None, load_rps: Optional[Sequence[float]] = None,
                  capacities_gb: Sequence[float] = (0, 50, 100, 200, 400, 800, 1600, 3200),
                  replica_options: Sequence[int] = (1, 2, 3, 4, 6, 8, 12, 16),
                  alpha_g_per_replica: float = 20.0, beta_g_per_gb: float = 0.05,
                  initial_replicas: int = 2, initial_capacity_gb: float = 0.0, hit_ratio_fn=None,
                  perf=None, slo=None, prompt_tokens: float = 2048, output_tokens: float = 256,
                  **constraints) -> PlanProblem:
    """With `perf` (a fitted `PerfModel` from `greencache profile`) and `slo`, GPU work per
    request and rmin come from the measured profile; otherwise from `workload`'s stated
    defaults (utilisation rule). Carbon intensity: `intensity` if given, else `source`'s forecast."""
    workload = workload or Workload()
    carbon = carbon or CarbonConfig()
    lam = list(load_rps) if load_rps is not None else workload.diurnal_load(start, hours)
    caches = cache_options(capacities_gb, workload, hit_ratio_fn)
    prefill_s, decode_s = workload.prefill_gpu_s, workload.decode_gpu_s
    if perf is not None:
        from autoscaler.perf_model import SLO

        slo = slo or SLO()
        prefill_s = perf.prefill_s(prompt_tokens)
        decode_s = perf.decode_s(prompt_tokens, output_tokens)
        cap = max(replica_options)
        rmin = np.array([[perf.rmin(l, prompt_tokens, output_tokens, c.hit_ratio, slo, max_replicas=cap)
                          for c in caches] for l in lam], dtype=int)
    else:
        work = np.array([prefill_s * (1 - c.hit_ratio) + decode_s for c in caches])
        rmin = np.maximum(1, np.ceil(np.asarray(lam)[:, None] * work[None, :] / workload.max_utilisation)).astype(int)
    return PlanProblem(
        slot_hours=1.0, arrival_rps=lam,
        intensity=list(intensity) if intensity is not None else source.forecast(start, hours), replica_options=list(replica_options),
        caches=caches, rmin=rmin, prefill_s=prefill_s, decode_s=decode_s,
        carbon=carbon, alpha_g_per_replica=alpha_g_per_replica,
        beta_g_per_gb=beta_g_per_gb, initial_replicas=initial_replicas, initial_capacity_gb=initial_capacity_gb,
        **constraints,
    )
