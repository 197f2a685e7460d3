"""Serve autoscaling policy for the LLM deployment: follow the carbon plan, guard bursts.

Runs inside the Serve controller every control-loop tick, so it must never block for long: it
reads the replica target the carbon autoscaler publishes in Ray's internal KV
(`autoscaler/control_plane.py`) at most once a second, with a timeout, keeping the last good
target through failures. The plan is the slow, carbon-optimal baseline; the fast guard scales
*above* it when in-flight requests per replica exceed `burst_ongoing_per_replica` (never below
the plan). Fail-open: with no plan (autoscaler off, not started yet, or down) the deployment
keeps its current size, bounded by min/max replicas.

With a mixed GPU fleet each type's deployment (`LLMReplica-<type>`) runs one of these with its
`gpu_type`, and follows that type's count in the plan.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from autoscaler import control_plane


class PlanFollowingPolicy:
    def __init__(self, app: str, burst_ongoing_per_replica: Optional[float] = None,
                 gpu_type: Optional[str] = None) -> None:
        self.app = app
        self.burst = burst_ongoing_per_replica
        self.plan = control_plane.PollingReader(lambda: control_plane.read_plan(app, gpu_type), every_s=1.0)

    def __call__(self, ctx: Any) -> tuple[int, dict]:
        plan = self.plan.get()
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
