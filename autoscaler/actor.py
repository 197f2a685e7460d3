"""The carbon autoscaler: a detached, named Ray actor that re-plans every interval.

Loop (every `interval_s`): observe → forecast → plan → actuate → record.
- observe: request rate from the ingress and KV-store stats from the replicas (telemetry.py),
  the grid intensity at the current trace time.
- forecast: carbon intensity over the horizon from the source; load = the observed rate (or an
  override), flat over the horizon.
- plan: the policy (`autoscaler.policies.PlannerPolicy`, the joint MILP with a DP fallback) takes
  an `Observation` and returns a `Decision`; the simulator drives the same class. If even
  `max_replicas` cannot meet the SLO the plan runs the maximum and says so.
- actuate: slot 1's replica target goes to the plan file that the Serve policy
  (`deployments/autoscaling_policy.py`) follows; slot 1's cache capacity goes to the store's
  control file, which every engine applies within a second (state.py).
- record: the slot's predicted carbon is charged to the ledger (`CarbonConfig.footprint`); one
  JSON line per decision goes to the decision log, the last decision to `last.json` (a
  restarted actor resumes from it), and a summary to the telemetry hub for `/metrics`.

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

from autoscaler.carbon import CarbonLedger, Footprint
from autoscaler.config import AutoscalerConfig
from autoscaler.policies import Decision, Observation
from autoscaler.state import AutoscalerState
from autoscaler.telemetry import AUTOSCALER_KEY, INGRESS_KEY, get_or_create_hub, is_replica_key

logger = logging.getLogger("greencache.autoscaler")

ACTOR_NAME = "greencache-autoscaler"
NAMESPACE = "greencache"


def observe_telemetry(snapshot: dict, last_requests: Optional[tuple[float, float]]) -> tuple[dict, Optional[tuple]]:
    """What the hub's snapshot says: request rate (from the ingress's counter and the previous
    reading `last_requests`), per-replica store capacities, and the sampled chunk accesses.
    Returns (observed values, the reading to pass next time)."""
    obs: dict[str, Any] = {"request_rate_rps": None, "store": {}, "access_sample": [], "sample_rate": None,
                           "chunk_bytes": None}
    ingress = snapshot.get(INGRESS_KEY)
    if ingress:
        now, total = ingress["time"], ingress["requests_total"]
        if last_requests is not None and now > last_requests[0]:
            obs["request_rate_rps"] = max(0.0, (total - last_requests[1]) / (now - last_requests[0]))
        last_requests = (now, total)
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
    return obs, last_requests


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class CarbonAutoscaler:
    def __init__(self, config: dict, home: str) -> None:
        from autoscaler.carbon_sources import TraceSource
        from autoscaler.policies import PlannerPolicy

        self.cfg = AutoscalerConfig.model_validate(config)
        self.state = AutoscalerState(home)
        self.source = TraceSource.grid(self.cfg.grid)
        self.perf = None
        if self.cfg.profile_path:
            from autoscaler.perf_model import PerfModel

            self.perf = PerfModel.load(self.cfg.profile_path)  # bad profile: refuse to start
        self.policy = PlannerPolicy.from_autoscaler_config(self.cfg, self.perf)
        self.trace_time = datetime.fromisoformat(self.cfg.trace_start).replace(tzinfo=timezone.utc)
        self.overrides: dict[str, Any] = {}
        self.ledger = CarbonLedger()
        self.cycles = 0
        self.last: Optional[dict] = self.state.load_last()
        self._last_requests: Optional[tuple[float, float]] = None
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
        """Pin inputs for demos and tests: `intensity_g_per_kwh`, `load_rps` (None clears)."""
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
        return {"replicas": d.replicas, "capacity_gb": d.capacity_gb, "reason": d.reason}

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
        try:
            snap = ray.get(get_or_create_hub().snapshot.remote(), timeout=2)
        except Exception:
            snap = {}
        obs, self._last_requests = observe_telemetry(snap, self._last_requests)
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
        current = self.last["decision"] if self.last else {"replicas": cfg.min_replicas, "capacity_gb": 0.0}
        return Observation(
            trace_time=self.trace_time, intensity_forecast=source.forecast(self.trace_time, cfg.horizon_slots),
            arrival_rps=float(load) if load is not None else 0.0, current_replicas=int(current["replicas"]),
            current_capacity_gb=float(current["capacity_gb"]), access_sample=list(obs["access_sample"]),
            sample_rate=float(obs["sample_rate"] or 1.0), chunk_bytes=int(obs["chunk_bytes"] or 0),
            now_s=time.monotonic())

    def _slot_footprint(self, d: Decision, observation: Observation) -> Footprint:
        """Carbon of the slot about to run, as the model predicts it, over the trace time one
        interval covers."""
        carbon = self.cfg.carbon
        hours = self.cfg.trace_hours_per_interval or self.cfg.interval_s / 3600.0
        busy_replica_h = observation.arrival_rps * d.details["work_s"] * hours
        return carbon.footprint(intensity_g_per_kwh=observation.intensity_forecast[0],
                                replica_hours=d.replicas * hours, busy_wh=carbon.busy_extra_w() * busy_replica_h,
                                ssd_gb_hours=d.capacity_gb * hours)

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
        fp = self._slot_footprint(d, observation)
        self.ledger.charge(fp)
        self.cycles += 1
        record = self._record(t_start, obs, observation, d, fp)
        self.state.write_plan(d.replicas)
        self.state.write_store_capacity("disk", int(d.capacity_gb * 1e9))
        self.state.append_decision(record)
        self.state.save_last(record)
        self.last = record
        self._publish(record)
        self._advance_clock()
        return record

    def _record(self, t_start: float, obs: dict, observation: Observation, d: Decision, fp: Footprint) -> dict:
        problem = self.policy.last_problem
        return {
            "cycle": self.cycles, "time": t_start, "trace_time": self.trace_time.isoformat(), "grid": self.cfg.grid,
            "inputs": {"carbon_intensity_g_per_kwh": observation.intensity_forecast[0],
                       "forecast_g_per_kwh": list(problem.intensity), "load_rps": observation.arrival_rps,
                       "observed_rps": obs["request_rate_rps"], "overrides": dict(self.overrides),
                       "store": obs["store"], "current": {"replicas": observation.current_replicas,
                                                          "capacity_gb": observation.current_capacity_gb}},
            "observation": observation.to_json(),
            "plan": d.details["plan"],
            "predicted": {"slot_operational_g": float(fp.operational_g), "slot_embodied_g": float(fp.embodied_g),
                          "rmin_for_choice": d.details["rmin_for_choice"], "slo_met": d.details["slo_met"]},
            "decision": {"replicas": d.replicas, "capacity_gb": d.capacity_gb, "cache": d.details["cache_name"]},
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
        try:
            get_or_create_hub().report.remote(AUTOSCALER_KEY, {
                "carbon_intensity_g_per_kwh": record["inputs"]["carbon_intensity_g_per_kwh"],
                "target_replicas": record["decision"]["replicas"],
                "capacity_gb": record["decision"]["capacity_gb"],
                "operational_g": record["carbon_so_far_g"]["operational"],
                "embodied_g": record["carbon_so_far_g"]["embodied"],
                "trace_time": record["trace_time"], "cycle": record["cycle"], "reason": record["reason"]})
        except Exception:
            logger.debug("publish failed", exc_info=True)


def start_autoscaler(config: AutoscalerConfig, home: str | Path):
    actor = CarbonAutoscaler.options(name=ACTOR_NAME, namespace=NAMESPACE, lifetime="detached",
                                     get_if_exists=True).remote(config.model_dump(), str(home))
    ray.get(actor.start.remote())
    return actor


def get_autoscaler():
    return ray.get_actor(ACTOR_NAME, namespace=NAMESPACE)
