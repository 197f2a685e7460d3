"""Serve autoscaling policy for the LLM deployment: follow the carbon plan, guard bursts.

Runs inside the Serve controller every control-loop tick, so it must never block: it only
reads a small JSON file that the carbon autoscaler actor writes (`{"target_replicas": N}`),
cached by modification time. The plan is the slow, carbon-optimal baseline; the fast guard
scales *above* it when in-flight requests per replica exceed `burst_ongoing_per_replica`
(never below the plan). Fail-open: with no plan file (autoscaler not started, or it died) the
deployment keeps its current size, bounded by min/max replicas.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Optional


class PlanFollowingPolicy:
    def __init__(self, plan_path: str, burst_ongoing_per_replica: Optional[float] = None) -> None:
        self.plan_path = plan_path
        self.burst = burst_ongoing_per_replica
        self._mtime = 0.0
        self._target: Optional[int] = None

    def _plan_target(self) -> Optional[int]:
        try:
            mtime = os.stat(self.plan_path).st_mtime
        except OSError:
            return self._target
        if mtime != self._mtime:
            try:
                with open(self.plan_path) as f:
                    self._target = int(json.load(f)["target_replicas"])
                self._mtime = mtime
            except (OSError, ValueError, KeyError, TypeError):
                pass  # half-written or bad file: keep the last good target
        return self._target

    def __call__(self, ctx: Any) -> tuple[int, dict]:
        plan = self._plan_target()
        target = plan if plan is not None else ctx.current_num_replicas
        guard = 0
        if self.burst:
            try:
                guard = math.ceil(float(ctx.total_num_requests) / self.burst)
            except Exception:
                guard = 0
        target = max(target, guard)
        target = max(ctx.capacity_adjusted_min_replicas, min(ctx.capacity_adjusted_max_replicas, target))
        return target, {"plan_target": plan, "burst_guard": guard}
