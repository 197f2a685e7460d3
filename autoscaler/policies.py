"""Autoscaling policies: `decide(observation) -> Decision`, shared by the live actor and the simulator.

The live actor (`autoscaler/actor.py`) and the simulator (`autoscaler/simulator.py`) build an
`Observation`, call the *same* policy object's `decide`, and hand the `Decision` to their
actuators (Serve plan file + store control file live; simulated replicas and cache in the
simulator). No policy logic lives anywhere else.

Policies (names as in `greencache simulate --policies`):

| name | replicas | cache capacity |
|---|---|---|
| `static` | fixed, provisioned for the peak | fixed, the largest option ("full cache") |
| `no-cache` | fixed, provisioned for the peak without a cache | 0 |
| `serve-default` | Ray Serve's default queue-length policy (Ray's own code) | full, fixed |
| `carbon-threshold` | Serve's default, capped by carbon-intensity bands (KEDA-style) | full, fixed |
| `cache-ilp` | fixed, provisioned for the peak | chosen hourly by the planner (GreenCache-style) |
| `joint-milp` | chosen hourly by the planner (ours) | chosen hourly by the planner |
| `ecoserve` | per GPU type, rightsized hourly against carbon (EcoServe-style) | 0 (no cache sizing) |

With a mixed GPU fleet (`greencache simulate --fleet h100:8,a100:8`), `joint-milp` and `ecoserve`
choose a count per GPU type (`FleetPlannerPolicy`, autoscaler/fleet.py); the others are sized as
without a fleet and run on the fleet's first type, at most as many replicas as it has.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any, Optional, Protocol, Sequence

import numpy as np

POLICY_NAMES = ("static", "no-cache", "serve-default", "carbon-threshold", "cache-ilp", "joint-milp", "ecoserve")


@dataclass
class Observation:
    """What a policy sees at a decision point. Live: from the StatsHub and the carbon source;
    simulated: from the simulator's state. Plain data, JSON round-trippable (decision logs)."""

    trace_time: datetime
    intensity_forecast: list[float]  # g/kWh per hourly slot; [0] is now
    arrival_rps: float  # request rate over the last interval
    ongoing_requests: float = 0.0  # requests in flight now (queue-based policies)
    current_replicas: int = 1
    current_capacity_gb: float = 0.0
    current_counts: Optional[dict] = None  # replicas per GPU type, with a mixed fleet
    access_sample: list = field(default_factory=list)  # SHARDS-sampled chunk keys, in access order
    sample_rate: float = 1.0
    chunk_bytes: int = 0
    window_accesses: Optional[int] = None  # all chunk accesses the sample was drawn from (SHARDS_adj)
    mean_prompt_tokens: Optional[float] = None  # None: the policy's configured value
    effective_prompt_tokens: Optional[float] = None  # length whose prefill time is the mix's mean
    mean_output_tokens: Optional[float] = None
    mean_ttft_s: Optional[float] = None  # over the last interval's finished requests
    mean_tpot_s: Optional[float] = None
    now_s: float = 0.0  # monotonic seconds (delay logic of queue-based policies)

    def to_json(self) -> dict:
        d = asdict(self)
        d["trace_time"] = self.trace_time.isoformat()
        return d

    def summary(self) -> dict:
        """`to_json` without the access sample (thousands of ids): its size and a digest instead,
        for decision logs that must stay small."""
        import hashlib

        d = self.to_json()
        sample = d.pop("access_sample")
        d["access_sample_size"] = len(sample)
        d["access_sample_digest"] = hashlib.blake2b("\n".join(map(str, sample)).encode(), digest_size=8).hexdigest()
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Observation":
        d = dict(d)
        d["trace_time"] = datetime.fromisoformat(d["trace_time"])
        return cls(**d)


@dataclass
class Decision:
    replicas: int
    capacity_gb: float
    reason: str = ""
    details: dict = field(default_factory=dict)
    counts: Optional[dict] = None  # replicas per GPU type (mixed fleets); `replicas` is their sum


class Policy(Protocol):
    name: str
    interval_s: float  # how often the caller should call decide (seconds)

    def decide(self, obs: Observation) -> Decision: ...


# ---- fixed policies -------------------------------------------------------------------------
class StaticPolicy:
    """Non-adaptive: the same replicas and cache capacity all the time (with `counts`, the same
    replicas of each GPU type of a mixed fleet)."""

    def __init__(self, name: str, replicas: int, capacity_gb: float, counts: Optional[dict] = None) -> None:
        self.name, self.capacity_gb, self.counts = name, float(capacity_gb), counts
        self.replicas = int(sum(counts.values())) if counts else int(replicas)
        self.interval_s = 3600.0

    def decide(self, obs: Observation) -> Decision:
        return Decision(self.replicas, self.capacity_gb, f"static: {self.replicas} replicas, {self.capacity_gb:g} GB",
                        counts=self.counts)


# ---- Ray Serve's default queue-length autoscaling --------------------------------------------
class ServeDefaultPolicy:
    """Ray Serve's default autoscaling, run through Ray's own functions (ray 2.60):
    `replica_queue_length_autoscaling_policy` gives the desired count from in-flight requests
    and `target_ongoing_requests`; Serve's scaling-factor and up/down-scale delay logic then
    apply, with the caller's clock. Defaults are Serve's (`AutoscalingConfig()`): target 2
    ongoing requests per replica, upscale delay 30 s, downscale delay 600 s. The cache is not
    Serve's business: it stays at `capacity_gb`."""

    name = "serve-default"

    def __init__(self, min_replicas: int, max_replicas: int, capacity_gb: float, interval_s: float = 10.0,
                 **autoscaling_config: Any) -> None:
        from ray.serve.config import AutoscalingConfig

        self.min_replicas, self.max_replicas = int(min_replicas), int(max_replicas)
        self.capacity_gb = float(capacity_gb)
        self.interval_s = interval_s
        self.config = AutoscalingConfig(min_replicas=self.min_replicas, max_replicas=self.max_replicas,
                                        **autoscaling_config)
        self.state: dict = {}
        self.target: Optional[int] = None

    def _cap(self, obs: Observation) -> tuple[int, str]:
        return self.max_replicas, ""

    def decide(self, obs: Observation) -> Decision:
        from ray.serve._private.common import DeploymentID
        from ray.serve.autoscaling_policy import (_apply_delay_logic, _apply_scaling_factors,
                                                  replica_queue_length_autoscaling_policy)
        from ray.serve.config import AutoscalingContext

        current = int(obs.current_replicas)
        target = self.target if self.target is not None else current
        ctx = AutoscalingContext(
            deployment_id=DeploymentID(name="llm", app_name="greencache"), deployment_name="llm",
            app_name="greencache", current_num_replicas=current, target_num_replicas=target,
            running_replicas=[], total_num_requests=float(obs.ongoing_requests), total_queued_requests=None,
            aggregated_metrics={}, raw_metrics={}, capacity_adjusted_min_replicas=self.min_replicas,
            capacity_adjusted_max_replicas=self.max_replicas, policy_state=self.state, last_scale_up_time=None,
            last_scale_down_time=None, current_time=obs.now_s, config=self.config)
        desired, _ = replica_queue_length_autoscaling_policy(ctx)
        desired = _apply_scaling_factors(desired, current, self.config)
        new, self.state = _apply_delay_logic(max(0, desired), target, self.config, self.state, _now=obs.now_s)
        cap, why = self._cap(obs)
        new = max(self.min_replicas, min(cap, int(new)))
        self.target = new
        return Decision(new, self.capacity_gb,
                        f"queue length {obs.ongoing_requests:g} / target {self.config.get_target_ongoing_requests():g}"
                        f" per replica → {new}{why}")


class CarbonThresholdPolicy(ServeDefaultPolicy):
    """KEDA carbon-aware scaler style: Serve's default scaling, with the replica ceiling cut
    when the grid is dirty. Bands (g/kWh) → fraction of max replicas: intensity below
    `thresholds[0]` → 100 %, below `thresholds[1]` → `caps[1]`, above → `caps[2]`."""

    name = "carbon-threshold"

    def __init__(self, min_replicas: int, max_replicas: int, capacity_gb: float, thresholds: Sequence[float],
                 caps: Sequence[float] = (1.0, 0.75, 0.5), interval_s: float = 10.0, **kw: Any) -> None:
        super().__init__(min_replicas, max_replicas, capacity_gb, interval_s, **kw)
        self.thresholds, self.caps = list(thresholds), list(caps)

    def _cap(self, obs: Observation) -> tuple[int, str]:
        ci = obs.intensity_forecast[0]
        band = sum(ci >= t for t in self.thresholds)
        cap = max(self.min_replicas, math.floor(self.max_replicas * self.caps[band] + 1e-9))
        return cap, f" (carbon {ci:.0f} g/kWh: band {band}, cap {cap})"


# ---- planner-driven policies ------------------------------------------------------------------
class PlannerPolicy:
    """Receding-horizon MILP (`autoscaler.planner.plan`): forecast carbon over the horizon, load
    flat at the observed rate, hit-rate curve from the sampled access stream (the workload's
    default curve until 200 samples). Applies slot 1. `replica_options` with one value makes it
    the cache-only ILP (GreenCache-style); a range makes it the joint MILP (ours). If even the
    largest option misses the SLO it runs the maximum and says so."""

    def __init__(self, name: str, *, replica_options: Sequence[int], capacities_gb: Sequence[float],
                 horizon_slots: int = 12, solver_time_limit_s: float = 2.0, perf=None, slo=None,
                 carbon=None, workload=None, prompt_tokens: float = 2048, output_tokens: float = 256,
                 alpha_g_per_replica: float = 20.0, beta_g_per_gb: float = 0.05, interval_s: float = 3600.0,
                 min_curve_samples: int = 200) -> None:
        from autoscaler.carbon import CarbonConfig
        from autoscaler.scenario import Workload

        self.name = name
        self.replica_options = sorted(int(r) for r in replica_options)
        self.capacities_gb = [float(c) for c in capacities_gb]
        self.horizon_slots = horizon_slots
        self.solver_time_limit_s = solver_time_limit_s
        self.perf, self.slo = perf, slo
        self.carbon = carbon or CarbonConfig()
        self.workload = workload or Workload()
        self.prompt_tokens, self.output_tokens = prompt_tokens, output_tokens
        self.alpha, self.beta = alpha_g_per_replica, beta_g_per_gb
        self.interval_s = interval_s
        self.min_curve_samples = min_curve_samples
        self.last_problem = None

    @classmethod
    def from_autoscaler_config(cls, cfg, perf=None, name: str = "joint-milp", replica_options=None) -> "PlannerPolicy":
        """The live actor's policy, built from its `AutoscalerConfig` (the simulator uses this too).
        Without a profile the SLO's utilisation ceiling is the whole SLO model (the workload's rule)."""
        from autoscaler.scenario import Workload

        return cls(name, replica_options=replica_options or range(cfg.min_replicas, cfg.max_replicas + 1),
                   capacities_gb=cfg.capacities_gb, horizon_slots=cfg.horizon_slots,
                   solver_time_limit_s=cfg.solver_time_limit_s, perf=perf, slo=cfg.slo if perf is not None else None,
                   carbon=cfg.carbon, workload=Workload(max_utilisation=cfg.slo.max_utilisation),
                   prompt_tokens=cfg.prompt_tokens, output_tokens=cfg.output_tokens)

    def hit_ratio_fn(self, obs: Observation):
        if len(obs.access_sample) >= self.min_curve_samples and obs.chunk_bytes:
            from autoscaler.hitrate import HitRateCurve

            # The sample is already SHARDS-filtered at `sample_rate`: keep all of it and scale
            # capacities by the rate, which turns sampled distances into real ones.
            r = obs.sample_rate or 1.0
            expected = obs.window_accesses * r if obs.window_accesses else None
            curve = HitRateCurve.from_stream(((k, 1) for k in obs.access_sample), chunk_bytes=obs.chunk_bytes,
                                             expected_weight=expected)
            return (lambda cap_gb: curve.hit_ratio(cap_gb * 1e9 * r)), \
                f"observed hit-rate curve ({len(obs.access_sample)} sampled accesses)"
        return None, "default hit-rate curve"

    def decide(self, obs: Observation) -> Decision:
        from autoscaler.planner import PlanInfeasible, plan
        from autoscaler.scenario import build_problem

        H = self.horizon_slots
        fc = list(obs.intensity_forecast)[:H]
        fc += [fc[-1]] * (H - len(fc))
        hfn, curve_note = self.hit_ratio_fn(obs)
        kwargs: dict[str, Any] = dict(
            intensity=fc, load_rps=[max(0.0, float(obs.arrival_rps))] * H, capacities_gb=self.capacities_gb,
            replica_options=self.replica_options, carbon=self.carbon, workload=self.workload,
            initial_replicas=int(obs.current_replicas), initial_capacity_gb=float(obs.current_capacity_gb),
            hit_ratio_fn=hfn, alpha_g_per_replica=self.alpha, beta_g_per_gb=self.beta)
        if self.perf is not None:
            kwargs.update(perf=self.perf, slo=self.slo,
                          prompt_tokens=obs.effective_prompt_tokens or obs.mean_prompt_tokens or self.prompt_tokens,
                          output_tokens=obs.mean_output_tokens or self.output_tokens)
        problem = build_problem(None, obs.trace_time, H, **kwargs)
        reason = ""
        try:
            out = plan(problem, time_limit_s=self.solver_time_limit_s)
        except PlanInfeasible as e:
            top = max(self.replica_options)
            problem.rmin = np.minimum(problem.rmin, top)
            out = plan(problem, time_limit_s=self.solver_time_limit_s)
            reason = f"SLO not attainable within {top} replicas ({e}); running the maximum. "
        self.last_problem = problem
        c = out.cache[0]
        return Decision(
            replicas=int(out.replicas[0]), capacity_gb=float(problem.caches[c].capacity_gb),
            reason=(reason + out.reason + f"; {curve_note}").strip(),
            details={"plan": {"replicas": list(map(int, out.replicas)),
                              "capacity_gb": [problem.caches[i].capacity_gb for i in out.cache],
                              "method": out.method, "optimal": out.optimal, "objective_g": out.objective_g,
                              "dp_objective_g": out.dp_objective_g, "solve_s": out.solve_s},
                     "hit_ratio": float(problem.caches[c].hit_ratio), "work_s": float(problem.work_s()[c]),
                     "rmin_for_choice": int(problem.rmin[0, c]),
                     "slo_met": bool(out.replicas[0] >= problem.rmin[0, c]),
                     "cache_name": problem.caches[c].name})


class FleetPlannerPolicy(PlannerPolicy):
    """The planner over a mixed GPU fleet (autoscaler/fleet.py): per slot, replicas of each
    type and the cache; applies slot 1. As `ecoserve` (EcoServe-style provisioning): one cache
    option (none), a one-slot horizon and no switching cost, so each hour it rightsizes the
    fleet across types against that hour's carbon, with embodied carbon amortised over each
    type's lifetime (and the reuse fraction for GPUs past it)."""

    def __init__(self, name: str, *, types, perfs=None, capacities_gb: Sequence[float], min_total_replicas: int = 1,
                 **kw: Any) -> None:
        super().__init__(name, replica_options=[1], capacities_gb=capacities_gb, **kw)
        self.types = list(types)
        self.perfs = perfs or [t.perf() for t in self.types]
        self.min_total_replicas = int(min_total_replicas)

    @classmethod
    def from_autoscaler_config(cls, cfg, perf=None, name: str = "joint-milp", replica_options=None):
        """The live actor's policy for `cfg.fleet` (a mixed fleet), from its `AutoscalerConfig`.
        Each type keeps its catalogue power and embodied figures; the site's PUE is the
        configured one (`cfg.carbon.pue`)."""
        from autoscaler.scenario import Workload

        types = [t.model_copy(update={"carbon": t.carbon.model_copy(update={"pue": cfg.carbon.pue})})
                 for t in cfg.fleet_types()]
        return cls(name, types=types, capacities_gb=cfg.capacities_gb, horizon_slots=cfg.horizon_slots,
                   solver_time_limit_s=cfg.solver_time_limit_s, slo=cfg.slo, carbon=cfg.carbon,
                   workload=Workload(max_utilisation=cfg.slo.max_utilisation), prompt_tokens=cfg.prompt_tokens,
                   output_tokens=cfg.output_tokens, min_total_replicas=cfg.min_replicas)

    def decide(self, obs: Observation) -> Decision:
        from autoscaler.fleet import fleet_problem, plan_fleet
        from autoscaler.perf_model import SLO
        from autoscaler.planner import PlanInfeasible
        from autoscaler.scenario import cache_options

        H = self.horizon_slots
        fc = list(obs.intensity_forecast)[:H]
        fc += [fc[-1]] * (H - len(fc))
        hfn, curve_note = self.hit_ratio_fn(obs)
        caches = cache_options(self.capacities_gb, self.workload, hfn)
        names = [t.name for t in self.types]
        current = obs.current_counts or {}
        prompt = obs.effective_prompt_tokens or obs.mean_prompt_tokens or self.prompt_tokens
        output = obs.mean_output_tokens or self.output_tokens
        problem = fleet_problem(
            self.types, perfs=self.perfs, intensity=fc, load_rps=[max(0.0, float(obs.arrival_rps))] * H,
            caches=caches, slo=self.slo or SLO(),
            prompt_tokens=prompt, output_tokens=output, slot_hours=1.0,
            alpha_g_per_replica=self.alpha, beta_g_per_gb=self.beta, storage_carbon=self.carbon,
            initial_counts=[int(current.get(n, 0)) for n in names], initial_capacity_gb=float(obs.current_capacity_gb),
            min_total_replicas=self.min_total_replicas)
        reason = ""
        lam = max(0.0, float(obs.arrival_rps))
        try:
            out = plan_fleet(problem, time_limit_s=self.solver_time_limit_s)
            counts, c, split = dict(zip(names, out.counts[0])), out.cache[0], list(out.split_rps[0])
            reason, slo_met = out.reason, True
        except PlanInfeasible as e:  # more load than the whole fleet serves within the SLO
            c = len(caches) - 1  # the largest cache, and every replica of the types that can meet the SLO at all
            useful = {k.name for k in problem.types if k.rate_rps[c] > 0} or {k.name for k in problem.types}
            counts = {t.name: (t.count if t.name in useful else 0) for t in self.types}
            reason = f"SLO not attainable with the whole fleet ({e}); running every replica of {sorted(useful)}"
            out, slo_met = None, False
            cap = [k.rate_rps[c] * counts[k.name] for k in problem.types]  # load spread by SLO capacity
            split = [lam * x / sum(cap) if sum(cap) else lam / len(cap) for x in cap]
        self.last_problem = problem
        per_type = {k.name: {"replicas": int(counts[k.name]), "load_rps": float(z), "work_s": float(k.work_s[c]),
                             "slo_rate_rps": float(k.rate_rps[c]), "embodied_scale": float(k.embodied_scale)}
                    for k, z in zip(problem.types, split)}
        # Prefill and decode seconds per request, weighted by where the load goes (by replicas when idle).
        w = np.array(split) if sum(split) > 0 else np.array([counts[n] for n in names], dtype=float)
        w = w / w.sum() if w.sum() > 0 else np.full(len(names), 1.0 / len(names))
        prefill_s = float(sum(wi * p.prefill_s(prompt) for wi, p in zip(w, self.perfs)))
        decode_s = float(sum(wi * p.decode_s(prompt, output) for wi, p in zip(w, self.perfs)))
        return Decision(
            replicas=int(sum(counts.values())), capacity_gb=float(caches[c].capacity_gb), counts=counts,
            reason=f"{reason}; {curve_note}",
            details={"plan": {"counts": out.counts if out else None, "method": out.method if out else "all",
                              "objective_g": out.objective_g if out else None,
                              "dp_objective_g": out.dp_objective_g if out else None,
                              "capacity_gb": [caches[i].capacity_gb for i in out.cache] if out else None},
                     "hit_ratio": float(caches[c].hit_ratio), "cache_name": caches[c].name, "per_type": per_type,
                     "slo_met": slo_met, "prefill_s": prefill_s, "decode_s": decode_s})
