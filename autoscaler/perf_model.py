"""Performance model from a measured profile: GPU work per request and the fewest replicas
that meet the TTFT/TPOT SLO for a cache size and a load.

Profile (JSON, written by `greencache profile`):
    {"prefill": [[uncached_tokens, seconds], ...],      # TTFT of unloaded single requests
     "decode":  [[batch_size, step_seconds], ...],      # time per output token at a concurrency
                # or [[batch_size, step_seconds, context_tokens], ...] when context varies
     "kv_load_s_per_token": {"disk": s, "redis": s},    # load time per cached token, by tier
     "meta": {...}}
Fits: prefill(n) = a + b·n + c·n² (non-negative least squares on the points; attention makes
it superlinear), decode_step(B) = d + e·B (linear in batch), plus f·B·context when the decode
points carry a context length (attention reads every cached token of every sequence).

Replica count (a stated approximation, not a queueing-exact model): with per-replica arrival
rate λ/r and GPU-seconds per request W = prefill(P(1−h)) + load(P·h) + O·decode_step(B)/B, the
utilisation is ρ = λ·W/r. TTFT ≈ (prefill(P(1−h)) + load(P·h)) / (1 − ρ) and TPOT ≈
decode_step(B) / (1 − ρ), an M/M/1-style inflation. `rmin` is the fewest r with ρ < ρ_max whose
predicted TTFT meets the SLO at its percentile (p90 ≈ 3.3 × p50 for an exponential tail) and
whose p50 TPOT does: a request's TPOT averages hundreds of steps, so its spread is small.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


# The busiest a replica may be planned to run. Without a measured profile this is the whole SLO
# model (replicas = load × work / ceiling); with one, it caps the M/M/1-style prediction.
DEFAULT_MAX_UTILISATION = 0.7


class SLO(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ttft_s: float = Field(2.0, gt=0, description="TTFT target at the percentile below (s).")
    tpot_s: float = Field(0.1, gt=0, description="Time-per-output-token target (s).")
    percentile: float = Field(90, ge=50, lt=100, description="Percentile the targets apply to.")
    max_utilisation: float = Field(DEFAULT_MAX_UTILISATION, gt=0, lt=1,
                                   description="Never plan replicas busier than this (fraction of time busy).")


def _nonneg_lstsq(A: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with x >= 0 for a handful of columns: best over all active sets (exact)."""
    from itertools import combinations

    n = A.shape[1]
    best, best_res = np.zeros(n), float(np.sum(y ** 2))
    # Scale columns so tiny quadratic coefficients are not lost to conditioning.
    scale = np.maximum(np.abs(A).max(axis=0), 1e-30)
    As = A / scale
    for k in range(1, n + 1):
        for cols in combinations(range(n), k):
            sol, *_ = np.linalg.lstsq(As[:, cols], y, rcond=None)
            if np.all(sol >= 0):
                x = np.zeros(n)
                x[list(cols)] = sol
                res = float(np.sum((As @ x - y) ** 2))
                if res < best_res - 1e-18:
                    best, best_res = x, res
    return best / scale


class PerfModel:
    def __init__(self, prefill_coef: np.ndarray, decode_coef: np.ndarray, load_s_per_token: dict[str, float],
                 meta: Optional[dict] = None) -> None:
        self.a, self.b, self.c = (float(x) for x in prefill_coef)
        self.d, self.e = float(decode_coef[0]), float(decode_coef[1])
        self.f = float(decode_coef[2]) if len(decode_coef) > 2 else 0.0
        self.load_s_per_token = load_s_per_token
        self.meta = meta or {}

    @classmethod
    def fit(cls, profile: dict) -> "PerfModel":
        pre = np.asarray(profile["prefill"], dtype=float)
        dec = np.asarray(profile["decode"], dtype=float)
        if len(pre) < 3 or len(dec) < 2:
            raise ValueError("profile needs >= 3 prefill points and >= 2 decode points")
        A = np.stack([np.ones(len(pre)), pre[:, 0], pre[:, 0] ** 2], axis=1)
        pc = _nonneg_lstsq(A, pre[:, 1])
        cols = [np.ones(len(dec)), dec[:, 0]]
        if dec.shape[1] > 2:
            cols.append(dec[:, 0] * dec[:, 2])
        dc = _nonneg_lstsq(np.stack(cols, axis=1), dec[:, 1])
        return cls(pc, dc, dict(profile.get("kv_load_s_per_token", {})), profile.get("meta"))

    @classmethod
    def load(cls, path: str | Path) -> "PerfModel":
        return cls.fit(json.loads(Path(path).read_text()))

    def prefill_s(self, tokens: float) -> float:
        return self.a + self.b * tokens + self.c * tokens * tokens

    def prefill_tokens_for(self, seconds: float) -> float:
        """Inverse of `prefill_s`: the prompt length that takes `seconds` (0 below the intercept)."""
        m = seconds - self.a
        if m <= 0:
            return 0.0
        if self.c <= 0:
            return m / self.b if self.b > 0 else 0.0
        return (-self.b + math.sqrt(self.b * self.b + 4 * self.c * m)) / (2 * self.c)

    def effective_prompt_tokens(self, prompt_tokens) -> float:
        """The length whose prefill time is the mix's mean prefill time: superlinear prefill makes
        a few long prompts cost more than the mean length suggests."""
        p = np.asarray(prompt_tokens, dtype=float)
        if p.size == 0:
            return 0.0
        return self.prefill_tokens_for(float(np.mean(self.a + self.b * p + self.c * p * p)))

    def effective_prompt_from_moments(self, mean_tokens: float, mean_sq_tokens: float) -> float:
        """`effective_prompt_tokens` from E[n] and E[n²] (what running counters can keep):
        prefill is quadratic in n, so its mean is a + b·E[n] + c·E[n²]."""
        return self.prefill_tokens_for(self.a + self.b * mean_tokens + self.c * mean_sq_tokens)

    def decode_step_s(self, batch: float, context: float = 0.0) -> float:
        """One decode step for `batch` sequences of `context` tokens each."""
        return self.d + self.e * batch + self.f * batch * context

    def decode_s(self, prompt_tokens: float, output_tokens: float, batch: float = 16) -> float:
        """A request's share of replica time while it decodes: `output_tokens` steps of a batch
        of `batch` at its mean context (prompt plus half its output), split across the batch."""
        return output_tokens * self.decode_step_s(batch, prompt_tokens + output_tokens / 2) / batch

    def work_s(self, prompt_tokens: float, output_tokens: float, hit_ratio: float, batch: float = 16,
               tier: str = "disk") -> float:
        load = self.load_s_per_token.get(tier, 0.0) * prompt_tokens * hit_ratio
        return self.prefill_s(prompt_tokens * (1 - hit_ratio)) + load + self.decode_s(prompt_tokens, output_tokens, batch)

    def predict(self, arrival_rps: float, replicas: int, prompt_tokens: float, output_tokens: float,
                hit_ratio: float, batch: float = 16, tier: str = "disk") -> dict:
        w = self.work_s(prompt_tokens, output_tokens, hit_ratio, batch, tier)
        rho = arrival_rps * w / max(replicas, 1)
        first = self.prefill_s(prompt_tokens * (1 - hit_ratio)) + self.load_s_per_token.get(tier, 0.0) * prompt_tokens * hit_ratio
        infl = math.inf if rho >= 1 else 1 / (1 - rho)
        return {"utilisation": rho, "ttft_p50_s": first * infl, "tpot_p50_s": self.decode_step_s(batch, prompt_tokens + output_tokens / 2) * infl,
                "work_s": w}

    def rmin(self, arrival_rps: float, prompt_tokens: float, output_tokens: float, hit_ratio: float, slo: SLO,
             max_replicas: int = 1024, batch: float = 16, tier: str = "disk") -> int:
        """Fewest replicas meeting the SLO (max_replicas + 1 if none does)."""
        tail = -math.log(1 - slo.percentile / 100) / math.log(2)  # p-th / p50 for an exponential tail
        for r in range(1, max_replicas + 1):
            p = self.predict(arrival_rps, r, prompt_tokens, output_tokens, hit_ratio, batch, tier)
            if p["utilisation"] < slo.max_utilisation and p["ttft_p50_s"] * tail <= slo.ttft_s \
                    and p["tpot_p50_s"] <= slo.tpot_s:
                return r
        return max_replicas + 1
