"""The carbon autoscaler: the control loop that re-plans every interval (run as a Serve
deployment on the head node, `deployments/app.py`; the simulator drives the same policy).

Loop (every `interval_s`): observe → forecast → plan → actuate → record.
- observe: from the telemetry hub (telemetry.py), the request rate, token mix (mean prompt and
  output tokens, the prefill-equivalent prompt length) and mean TTFT/TPOT the ingress replicas
  saw over the last interval, the sampled chunk accesses of the replicas' stores; the grid
  intensity at the current trace time.
- forecast: carbon intensity over the horizon from the source; load = the observed rate (or an
  override), flat over the horizon.
- plan: the policy (`autoscaler.policies.PlannerPolicy`, the joint MILP with a DP fallback) takes
  an `Observation` and returns a `Decision`; the simulator drives the same class. If even
  `max_replicas` cannot meet the SLO the plan runs the maximum and says so.
- actuate: slot 1's replica target and disk capacity are published in Ray's internal KV
  (control_plane.py): the Serve policy follows the target, every replica applies the capacity
  to its node's disk tier within a second.
- record: the slot's predicted carbon is charged to the ledger (`CarbonConfig.footprint`); one
  JSON line per decision goes to the decision log, the last decision to `last.json` (a
  restarted autoscaler of the same deployment resumes from it; a new deployment starts fresh),
  and a summary to the telemetry hub for `/metrics`.

Mixed GPU fleet (`cfg.fleet`): the policy is `FleetPlannerPolicy` (autoscaler/policies.py, over
the planner in autoscaler/fleet.py), which chooses a count per GPU type; each type's Serve deployment follows its own count. Moving replicas
from one type to another is make-before-break (`transition_targets`): while a type the plan
grows has fewer replicas running than planned, no type is shrunk below what it runs, so requests
always have somewhere to go; the old type goes once the new one is up (the cycle after).

Fail-safe: any error in a cycle is logged and recorded; the last actuated plan stays in force.
Demo speed-up: each interval advances the trace clock by `trace_hours_per_interval` hours.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import traceback
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

import ray

from autoscaler import control_plane
from autoscaler.carbon import CarbonLedger, Footprint, RequestCarbonRate
from autoscaler.carbon_sources import source_status
from autoscaler.config import AutoscalerConfig
from autoscaler.policies import Decision, Observation
from autoscaler.state import AutoscalerState
from autoscaler.telemetry import AUTOSCALER_KEY, INGRESS_KEY, get_or_create_hub, is_replica_key

logger = logging.getLogger("greencache.autoscaler")


_INGRESS_SUMS = ("requests_total", "finished", "prompt_tokens", "prompt_tokens_sq", "cached_tokens", "output_tokens",
                 "ttft_s", "tpot_s", "tpot_count")


def _ingress_totals(snapshot: dict) -> Optional[dict]:
    """The ingress replicas' cumulative counters, summed, with the newest report time."""
    reports = [v for k, v in snapshot.items() if k.startswith(INGRESS_KEY)]
    if not reports:
        return None
    totals = {k: sum(float(r.get(k, 0) or 0) for r in reports) for k in _INGRESS_SUMS}
    totals["time"] = max(float(r["time"]) for r in reports)
    return totals


def _interval_means(now: dict, before: dict, perf) -> dict:
    """Request rate, token mix and latencies over the interval between two readings."""
    d = {k: now[k] - before.get(k, 0.0) for k in _INGRESS_SUMS}
    out: dict[str, Any] = {"request_rate_rps": max(0.0, d["requests_total"] / (now["time"] - before["time"]))}
    if d["finished"] > 0:
        mean_p, mean_p2 = d["prompt_tokens"] / d["finished"], d["prompt_tokens_sq"] / d["finished"]
        out.update(mean_prompt_tokens=mean_p, mean_output_tokens=d["output_tokens"] / d["finished"],
                   mean_cached_tokens=d["cached_tokens"] / d["finished"], mean_ttft_s=d["ttft_s"] / d["finished"])
        if perf is not None:
            out["effective_prompt_tokens"] = perf.effective_prompt_from_moments(mean_p, mean_p2)
    if d["tpot_count"] > 0:
        out["mean_tpot_s"] = d["tpot_s"] / d["tpot_count"]
    return out


def observe_telemetry(snapshot: dict, last_reading: Optional[dict], perf=None) -> tuple[dict, Optional[dict]]:
    """What the hub's snapshot says about the last interval (compared with `last_reading`, the
    ingress counters at the previous call), the per-replica store capacities, and the sampled
    chunk accesses. Returns (observed values, the reading to pass next time)."""
    obs: dict[str, Any] = {"request_rate_rps": None, "store": {}, "access_sample": [], "sample_rate": None,
                           "chunk_bytes": None}
    totals = _ingress_totals(snapshot)
    if totals is not None:
        if last_reading is not None and totals["time"] > last_reading["time"]:
            obs.update(_interval_means(totals, last_reading, perf))
        last_reading = totals
    for rid, rep in snapshot.items():
        if not is_replica_key(rid):
            continue
        for p in rep.get("processes", []):
            role = str(p.get("role", "")).lower()
            if role == "scheduler":  # lookups happen there
                obs["access_sample"].extend(p.get("access_sample", []))
                obs["sample_rate"] = p.get("access_sample_rate")
                obs["chunk_bytes"] = p.get("chunk_bytes")
            elif role == "worker":
                obs["store"][rid] = {n: {"capacity_bytes": t.get("capacity_bytes"), "used_bytes": t.get("used_bytes")}
                                     for n, t in p.get("store", {}).get("tiers", {}).items()}
    return obs, last_reading


def transition_targets(planned: dict[str, int], running: Optional[dict[str, int]],
                       previous: Optional[dict[str, int]] = None) -> dict[str, int]:
    """Per-type replica targets to publish on the way to the `planned` counts, given the replicas
    each type runs now. Make-before-break: while any type runs fewer replicas than planned, every
    type keeps at least what it runs; once every type runs its planned count (or more), the plan
    itself. With the running counts unknown (`running` None: Serve did not answer), nothing is
    shrunk below the targets published before (`previous`)."""
    if running is None:
        return {t: max(n, int((previous or {}).get(t, 0))) for t, n in planned.items()}
    if all(int(running.get(t, 0)) >= n for t, n in planned.items()):
        return dict(planned)
    return {t: max(n, int(running.get(t, 0))) for t, n in planned.items()}


class CarbonAutoscaler:
    """The loop and its state. `deployment_id` identifies one deployment of `app`: state in the
    home directory is resumed only by the same deployment (a replacement after a crash)."""

    def __init__(self, config: dict, home: str | Path, app: str = "greencache", deployment_id: str = "",
                 running_counts=None) -> None:
        """`running_counts()`: with a mixed fleet, the replicas each GPU type's deployment runs
        now (raises or returns None if Serve cannot say); the Serve app passes it."""
        from autoscaler.carbon_sources import source_for
        from autoscaler.policies import FleetPlannerPolicy, PlannerPolicy

        self.cfg = AutoscalerConfig.model_validate(config)
        self.app, self.deployment_id = app, deployment_id
        self.state = AutoscalerState(home)
        self.source = source_for(self.cfg.grid, self.cfg.carbon_api)
        self.perf = None
        if self.cfg.profile_path:
            from autoscaler.perf_model import PerfModel

            self.perf = PerfModel.load(self.cfg.profile_path)  # bad profile: refuse to start
        self.fleet = self.cfg.fleet_types()
        self.running_counts = running_counts
        if self.fleet:
            self.policy = FleetPlannerPolicy.from_autoscaler_config(self.cfg)
            self.fleet = self.policy.types  # as the policy prices them (the site's PUE)
        else:
            self.policy = PlannerPolicy.from_autoscaler_config(self.cfg, self.perf)
        self.trace_time = datetime.fromisoformat(self.cfg.trace_start).replace(tzinfo=timezone.utc)
        self.overrides: dict[str, Any] = {}
        self.ledger = CarbonLedger()
        self.cycles = 0
        self.last: Optional[dict] = self.state.load_last()
        if self.last is not None and self.last.get("deployment_id") != deployment_id:
            self.last = None  # another deployment's state: this one starts from its configuration
        self._last_reading: Optional[dict] = None
        if self.last is not None:  # resume after a restart, one step after the recorded decision
            self.trace_time = self._next_trace_time(datetime.fromisoformat(self.last["trace_time"]))
            self.ledger = CarbonLedger.from_totals(self.last.get("carbon_so_far_g"))
            self.cycles = int(self.last.get("cycle", 0))
            logger.info("autoscaler resumed at %s (cycle %d)", self.trace_time, self.cycles)
        # A plain thread, so a restarted actor (Ray re-runs __init__) resumes planning by itself.
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="carbon-autoscaler", daemon=True)
        self._thread.start()

    async def start(self) -> bool:
        """Kept for callers that wait until the actor is constructed."""
        return self._thread.is_alive()

    # ---- control ------------------------------------------------------------------------
    async def set_overrides(self, **kw: Any) -> dict:
        """Pin inputs for demos and tests: `intensity_g_per_kwh`, `load_rps`, and the token mix
        `prompt_tokens` / `output_tokens` (mean per request) in place of the observed one (None
        clears)."""
        unknown = set(kw) - {"intensity_g_per_kwh", "load_rps", "prompt_tokens", "output_tokens"}
        if unknown:
            raise ValueError(f"unknown override(s) {sorted(unknown)}")
        for k, v in kw.items():
            if v is None:
                self.overrides.pop(k, None)
            else:
                self.overrides[k] = v
        return dict(self.overrides)

    async def step(self) -> dict:
        """Run one cycle now."""
        return await asyncio.get_running_loop().run_in_executor(None, self._locked_cycle)

    async def status(self) -> dict:
        return {"last": self.last, "overrides": self.overrides, "cycles": self.cycles}

    async def stop(self) -> None:
        self._stop.set()

    async def decide(self, observation: dict) -> dict:
        """The decision this actor's policy makes for an observation (no actuation, no record):
        lets tests and the simulator check that both take the same decision."""
        d = self.policy.decide(Observation.from_json(observation))
        return {"replicas": d.replicas, "capacity_gb": d.capacity_gb, "counts": d.counts, "reason": d.reason}

    def _locked_cycle(self) -> dict:
        with self._lock:
            return self._cycle()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._locked_cycle()
            except Exception:
                logger.exception("autoscaler cycle failed")
            self._stop.wait(self.cfg.interval_s)

    # ---- one cycle ----------------------------------------------------------------------
    def _observe(self) -> dict:
        snap = {}
        if ray.is_initialized():
            try:
                snap = ray.get(get_or_create_hub().snapshot.remote(), timeout=2)
            except Exception:
                logger.debug("telemetry hub unavailable", exc_info=True)
        obs, self._last_reading = observe_telemetry(snap, self._last_reading, self.perf)
        return obs

    def observation(self, obs: Optional[dict] = None) -> Observation:
        """The policy's input for this cycle: observed load and access sample, the carbon
        forecast at the trace clock, the current decision; overrides applied."""
        from autoscaler.carbon_sources import ConstantSource

        obs = obs if obs is not None else self._observe()
        cfg = self.cfg
        source = self.source
        if "intensity_g_per_kwh" in self.overrides:
            source = ConstantSource(float(self.overrides["intensity_g_per_kwh"]))
        load = self.overrides.get("load_rps", obs["request_rate_rps"])
        if "prompt_tokens" in self.overrides:
            obs = {**obs, "mean_prompt_tokens": float(self.overrides["prompt_tokens"]), "effective_prompt_tokens": None}
        if "output_tokens" in self.overrides:
            obs = {**obs, "mean_output_tokens": float(self.overrides["output_tokens"])}
        current = self.last["decision"] if self.last else {"replicas": cfg.min_replicas, "capacity_gb": 0.0}
        counts = current.get("counts")
        if self.fleet and counts is None:  # before the first decision: what runs (else the first type's floor)
            first = next(t.name for t in self.fleet if t.count > 0)
            counts = self._running() or {first: cfg.min_replicas}
        return Observation(
            trace_time=self.trace_time, intensity_forecast=source.forecast(self.trace_time, cfg.horizon_slots),
            arrival_rps=float(load) if load is not None else 0.0, current_replicas=int(current["replicas"]),
            current_capacity_gb=float(current["capacity_gb"]), current_counts=counts,
            access_sample=list(obs["access_sample"]),
            sample_rate=float(obs["sample_rate"] or 1.0), chunk_bytes=int(obs["chunk_bytes"] or 0),
            mean_prompt_tokens=obs.get("mean_prompt_tokens"), mean_output_tokens=obs.get("mean_output_tokens"),
            effective_prompt_tokens=obs.get("effective_prompt_tokens"), mean_ttft_s=obs.get("mean_ttft_s"),
            mean_tpot_s=obs.get("mean_tpot_s"), now_s=time.monotonic())

    def _running(self) -> Optional[dict[str, int]]:
        """Replicas each fleet type runs now; None if unknown."""
        if self.running_counts is None:
            return None
        try:
            return self.running_counts()
        except Exception as e:
            logger.warning("could not read the fleet's running replicas (%s: %s)", type(e).__name__, e)
            return None

    def _slot_footprint(self, d: Decision, observation: Observation, counts: Optional[dict] = None) -> Footprint:
        """Carbon of the slot about to run, as the model predicts it, over the trace time one
        interval covers (with a fleet: each type's replicas as published, `counts`, which during
        a move include the type being replaced; the load the plan gives each type; their power
        and embodied carbon, scaled for reuse; the cache once)."""
        carbon = self.cfg.carbon
        hours = self.cfg.trace_hours_per_interval or self.cfg.interval_s / 3600.0
        if d.counts is not None:
            ci = observation.intensity_forecast[0]
            parts = [carbon.footprint(intensity_g_per_kwh=ci, ssd_gb_hours=d.capacity_gb * hours)]
            for t in self.fleet:
                pt = d.details["per_type"][t.name]
                n = (counts or {}).get(t.name, pt["replicas"])
                fp = t.carbon.footprint(intensity_g_per_kwh=ci, replica_hours=n * hours,
                                        busy_wh=t.carbon.busy_extra_w() * pt["load_rps"] * pt["work_s"] * hours)
                parts.append(Footprint(fp.operational_g, pt["embodied_scale"] * fp.embodied_g, fp.energy_kwh))
            return Footprint(*(sum(getattr(p, f) for p in parts) for f in ("operational_g", "embodied_g", "energy_kwh")))
        busy_replica_h = observation.arrival_rps * d.details["work_s"] * hours
        return carbon.footprint(intensity_g_per_kwh=observation.intensity_forecast[0],
                                replica_hours=d.replicas * hours, busy_wh=carbon.busy_extra_w() * busy_replica_h,
                                ssd_gb_hours=d.capacity_gb * hours)

    def _request_rate(self, fp: Footprint, d: Decision, observation: Observation, obs: dict) -> RequestCarbonRate:
        """The slot's footprint spread over the requests expected in it (autoscaler/carbon.py)."""
        problem = self.policy.last_problem
        prompt = obs.get("mean_prompt_tokens") or self.cfg.prompt_tokens
        cached = obs.get("mean_cached_tokens")
        uncached = prompt - cached if cached is not None else prompt * (1 - d.details["hit_ratio"])
        if d.counts is not None:  # a fleet: times weighted by where the plan sends the load
            prefill_s, decode_s = d.details["prefill_s"], d.details["decode_s"]
            basis = (f"estimate for the fleet {self.cfg.fleet} ({self.cfg.fleet_model} profiles, Splitwise power "
                     f"model), PUE {self.cfg.carbon.pue:g}, embodied amortised over each type's lifetime (EcoServe)")
        else:
            prefill_s, decode_s, basis = problem.prefill_s, problem.decode_s, self.cfg.carbon.basis()
        return RequestCarbonRate.for_slot(
            fp, expected_requests=observation.arrival_rps * self.cfg.interval_s,
            prefill_s=prefill_s, decode_s=decode_s, hit_ratio=d.details["hit_ratio"],
            mean_uncached_tokens=uncached, mean_output_tokens=obs.get("mean_output_tokens") or self.cfg.output_tokens,
            intensity_g_per_kwh=observation.intensity_forecast[0], basis=basis)

    def _cycle(self) -> dict:
        t_start = time.time()
        obs = self._observe()
        observation = self.observation(obs)
        try:
            d = self.policy.decide(observation)
        except Exception as e:
            self.state.append_decision({"time": t_start, "trace_time": self.trace_time.isoformat(),
                                        "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=3)})
            raise
        published = self._targets(d, observation)
        fp = self._slot_footprint(d, observation, published.get("counts"))
        self.ledger.charge(fp)
        self.cycles += 1
        record = self._record(t_start, obs, observation, d, fp)
        record["predicted"]["request_carbon"] = self._request_rate(fp, d, observation, obs).to_json()
        self._actuate(d, published)
        record["published"] = published
        self.state.append_decision(record)
        self.state.save_last(record)
        self.last = record
        self._publish(record)
        self._advance_clock()
        return record

    def _targets(self, d: Decision, observation: Observation) -> dict:
        """What to publish for decision `d`: with a fleet, the make-before-break step towards its
        counts, given what each type runs now (unknown: nothing below the step published last,
        or the counts before this decision)."""
        published: dict[str, Any] = {"replicas": d.replicas, "capacity_gb": d.capacity_gb}
        if d.counts is not None:
            running = self._running()
            previous = ((self.last or {}).get("published") or {}).get("counts") or observation.current_counts
            targets = transition_targets(d.counts, running, previous)
            published.update(replicas=sum(targets.values()), counts=targets, planned=dict(d.counts), running=running)
        return published

    def _actuate(self, d: Decision, published: dict) -> None:
        """Publish the targets; if Ray's KV cannot take them now, the previous ones stay in force
        and the next cycle publishes again."""
        try:
            control_plane.publish_plan(self.app, published["replicas"], published.get("counts"),
                                       published.get("planned"))
            control_plane.publish_capacities(self.app, {"disk": int(d.capacity_gb * 1e9)})
        except Exception as e:
            logger.warning("could not publish the decision (%s: %s); the previous one stays", type(e).__name__, e)

    def _record(self, t_start: float, obs: dict, observation: Observation, d: Decision, fp: Footprint) -> dict:
        problem = self.policy.last_problem
        return {
            "cycle": self.cycles, "time": t_start, "trace_time": self.trace_time.isoformat(), "grid": self.cfg.grid,
            "app": self.app, "deployment_id": self.deployment_id,
            "inputs": {"carbon_intensity_g_per_kwh": observation.intensity_forecast[0],
                       "carbon_source": source_status(self.source),
                       "forecast_g_per_kwh": list(problem.intensity), "load_rps": observation.arrival_rps,
                       "observed_rps": obs["request_rate_rps"], "overrides": dict(self.overrides),
                       "store": obs["store"], "current": {"replicas": observation.current_replicas,
                                                          "capacity_gb": observation.current_capacity_gb}},
            "observation": observation.summary(),
            "plan": d.details["plan"],
            "predicted": {"slot_operational_g": float(fp.operational_g), "slot_embodied_g": float(fp.embodied_g),
                          "rmin_for_choice": d.details.get("rmin_for_choice"), "slo_met": d.details["slo_met"],
                          **({"per_type": d.details["per_type"]} if d.counts is not None else {})},
            "decision": {"replicas": d.replicas, "capacity_gb": d.capacity_gb, "cache": d.details["cache_name"],
                         **({"counts": d.counts} if d.counts is not None else {})},
            "carbon_so_far_g": self.ledger.totals(),
            "reason": d.reason,
        }

    def _next_trace_time(self, t: datetime) -> datetime:
        """The trace time of the cycle after one at `t`: a step on in demo mode, else now."""
        if self.cfg.trace_hours_per_interval:
            return t + timedelta(hours=self.cfg.trace_hours_per_interval)
        return datetime.now(timezone.utc).replace(year=t.year)

    def _advance_clock(self) -> None:
        self.trace_time = self._next_trace_time(self.trace_time)

    def _publish(self, record: dict) -> None:
        if not ray.is_initialized():
            return
        try:
            get_or_create_hub().report.remote(AUTOSCALER_KEY, {
                "carbon_intensity_g_per_kwh": record["inputs"]["carbon_intensity_g_per_kwh"],
                "target_replicas": record["decision"]["replicas"],
                "capacity_gb": record["decision"]["capacity_gb"],
                "operational_g": record["carbon_so_far_g"]["operational"],
                "embodied_g": record["carbon_so_far_g"]["embodied"],
                "trace_time": record["trace_time"], "cycle": record["cycle"], "reason": record["reason"],
                "request_carbon": record["predicted"]["request_carbon"]},
                # until the next cycle has had time to report (a plan stays in force that long)
                ttl_s=2 * self.cfg.interval_s + 10)
        except Exception:
            logger.debug("publish failed", exc_info=True)
