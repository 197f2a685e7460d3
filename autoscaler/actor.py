"""The carbon autoscaler: a detached, named Ray actor that re-plans every interval.

Loop (every `interval_s`): observe → forecast → plan → actuate → record.
- observe: request rate from the ingress and KV-store stats from the replicas (StatsHub), the
  grid intensity at the current trace time.
- forecast: carbon intensity over the horizon from the source; load = the observed rate (or an
  override), flat over the horizon.
- plan: the policy (`autoscaler.policies.PlannerPolicy`, the joint MILP with a DP fallback) takes
  an `Observation` and returns a `Decision`; the simulator drives the same class. If even
  `max_replicas` cannot meet the SLO the plan runs the maximum and says so.
- actuate: slot 1's replica target goes to a plan file that the Serve policy
  (`deployments/autoscaling_policy.py`) follows; slot 1's cache capacity goes to the store's
  control file, which every engine applies within a second.
- record: one JSON line per decision (inputs, plan, predicted carbon, reason) in
  `<state_dir>/decisions.jsonl`, the last decision in `<state_dir>/last.json` (a restarted actor
  resumes from it), and a summary pushed to the StatsHub for `/metrics` and `greencache status`.

Fail-safe: any error in a cycle is logged and recorded; the last actuated plan stays in force.
Demo speed-up: each interval advances the trace clock by `trace_hours_per_interval` hours.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
import traceback
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

import ray
from pydantic import BaseModel, Field

from autoscaler.carbon import CarbonConfig

logger = logging.getLogger("greencache.autoscaler")

ACTOR_NAME = "greencache-autoscaler"
NAMESPACE = "greencache"


class AutoscalerConfig(BaseModel):
    enabled: bool = Field(True, description="Run the carbon autoscaler with `greencache serve`.")
    grid: str = Field("FR", description="Bundled Electricity Maps grid for carbon intensity.")
    trace_start: str = Field("2023-06-01T00:00", description="Trace time the autoscaler starts at (UTC, ISO).")
    interval_s: float = Field(30.0, gt=0, description="Seconds between planning cycles.")
    trace_hours_per_interval: float = Field(
        0.0, ge=0, description="Demo speed-up: trace hours the clock advances per interval; 0 = real time.")
    horizon_slots: int = Field(12, ge=1, description="Planning horizon (hourly slots).")
    min_replicas: int = Field(1, ge=1, description="Fewest LLM replicas.")
    max_replicas: int = Field(2, ge=1, description="Most LLM replicas.")
    capacities_gb: list[float] = Field(default_factory=lambda: [0.0, 50, 100, 200, 400, 800, 1600],
                                       description="Disk-tier capacity options the planner chooses from (GB).")
    solver_time_limit_s: float = Field(2.0, gt=0, description="MILP time limit per cycle (s).")
    state_dir: str = Field("", description="Decision log and resume state; default <home>/autoscaler.")
    plan_path: str = Field("", description="File the Serve policy follows; default <state_dir>/plan.json.")
    store_control_path: str = Field("", description="KV-store control file; default <home>/kv-control.json.")
    profile_path: str = Field("", description="Performance profile from `greencache profile`; empty = stated defaults.")
    ttft_slo_s: float = Field(2.0, gt=0, description="TTFT SLO at p90 (s), used with a profile.")
    tpot_slo_s: float = Field(0.1, gt=0, description="TPOT SLO at p90 (s), used with a profile.")
    max_utilisation: float = Field(0.85, gt=0, lt=1, description="Planning ceiling on replica utilisation, with a profile.")
    prompt_tokens: float = Field(2048, gt=0, description="Mean prompt length the plan assumes (tokens), with a profile.")
    output_tokens: float = Field(256, gt=0, description="Mean output length the plan assumes (tokens), with a profile.")
    carbon: CarbonConfig = Field(default_factory=CarbonConfig, description="Power and embodied-carbon factors.")


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1)
class CarbonAutoscaler:
    def __init__(self, config: dict, home: str) -> None:
        from autoscaler.carbon_sources import TraceSource

        self.cfg = AutoscalerConfig.model_validate(config)
        self.home = Path(home)
        self.state_dir = Path(self.cfg.state_dir or self.home / "autoscaler")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.plan_path = Path(self.cfg.plan_path or self.state_dir / "plan.json")
        self.control_path = Path(self.cfg.store_control_path or self.home / "kv-control.json")
        self.source = TraceSource.grid(self.cfg.grid)
        self.perf = None
        if self.cfg.profile_path:
            from autoscaler.perf_model import PerfModel

            self.perf = PerfModel.load(self.cfg.profile_path)  # bad profile: refuse to start
        from autoscaler.policies import PlannerPolicy

        self.policy = PlannerPolicy.from_autoscaler_config(self.cfg, self.perf)
        self.trace_time = datetime.fromisoformat(self.cfg.trace_start).replace(tzinfo=timezone.utc)
        self.overrides: dict[str, Any] = {}
        self.carbon_g = {"operational": 0.0, "embodied": 0.0}
        self.cycles = 0
        self.last: Optional[dict] = None
        self._last_requests: Optional[tuple[float, float]] = None
        last = self.state_dir / "last.json"
        if last.exists():  # resume after a restart
            try:
                self.last = json.loads(last.read_text())
                self.trace_time = datetime.fromisoformat(self.last["trace_time"])
                self.carbon_g = self.last.get("carbon_so_far_g", self.carbon_g)
                self.cycles = self.last.get("cycle", 0)
                logger.info("autoscaler resumed at %s (cycle %d)", self.trace_time, self.cycles)
            except Exception:
                logger.warning("could not resume from %s; starting fresh", last)
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
        from deployments.stats_hub import get_or_create_hub

        obs: dict[str, Any] = {"request_rate_rps": None, "store": {}, "access_sample": [], "sample_rate": None,
                               "chunk_bytes": None}
        try:
            snap = ray.get(get_or_create_hub().snapshot.remote(), timeout=2)
        except Exception:
            snap = {}
        ingress = snap.get("__ingress__")
        if ingress:
            now, total = ingress["time"], ingress["requests_total"]
            if self._last_requests is not None and now > self._last_requests[0]:
                obs["request_rate_rps"] = max(0.0, (total - self._last_requests[1]) / (now - self._last_requests[0]))
            self._last_requests = (now, total)
        for rid, rep in snap.items():
            if rid.startswith("__"):
                continue
            for p in rep.get("processes", []):
                if str(p.get("role", "")).lower() == "scheduler":  # lookups happen there
                    obs["access_sample"].extend(p.get("access_sample", []))
                    obs["sample_rate"] = p.get("access_sample_rate")
                    obs["chunk_bytes"] = p.get("chunk_bytes")
                if str(p.get("role", "")).lower() == "worker":
                    obs["store"][rid] = {n: {"capacity_bytes": t.get("capacity_bytes"), "used_bytes": t.get("used_bytes")}
                                         for n, t in p.get("store", {}).get("tiers", {}).items()}
        return obs

    def observation(self, obs: Optional[dict] = None) -> "Observation":
        """The policy's input for this cycle: observed load and access sample, the carbon
        forecast at the trace clock, the current decision; overrides applied."""
        from autoscaler.carbon_sources import ConstantSource
        from autoscaler.policies import Observation

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

    async def decide(self, observation: dict) -> dict:
        """The decision this actor's policy makes for an observation (no actuation, no record):
        lets tests and the simulator check that both take the same decision."""
        from autoscaler.policies import Observation

        d = self.policy.decide(Observation.from_json(observation))
        return {"replicas": d.replicas, "capacity_gb": d.capacity_gb, "reason": d.reason}

    def _cycle(self) -> dict:
        t_start = time.time()
        obs = self._observe()
        observation = self.observation(obs)
        cfg = self.cfg
        try:
            d = self.policy.decide(observation)
        except Exception as e:
            record = {"time": t_start, "trace_time": self.trace_time.isoformat(), "error": f"{type(e).__name__}: {e}",
                      "traceback": traceback.format_exc(limit=3)}
            self._append(record)
            raise
        problem = self.policy.last_problem
        replicas = d.replicas
        ci = observation.intensity_forecast[0]
        load = observation.arrival_rps
        # carbon of the slot we are about to run, as the model predicts it (grams), scaled to
        # the trace time one interval covers
        carbon = cfg.carbon
        hours = cfg.trace_hours_per_interval or cfg.interval_s / 3600.0
        storage_w = carbon.storage_w(d.capacity_gb, 0.0)
        energy_kwh = (carbon.replica_idle_w() * replicas
                      + (carbon.replica_busy_w() - carbon.replica_idle_w()) * load * d.details["work_s"]
                      + storage_w) * hours / 1000.0
        op_g = carbon.operational_g(energy_kwh, ci)
        emb_g = (carbon.replica_embodied_g_per_h() * replicas + carbon.storage_embodied_g_per_h(d.capacity_gb, 0.0)) * hours
        self.carbon_g = {"operational": self.carbon_g["operational"] + op_g, "embodied": self.carbon_g["embodied"] + emb_g}
        self.cycles += 1
        decision = {"replicas": replicas, "capacity_gb": d.capacity_gb, "cache": d.details["cache_name"]}
        record = {
            "cycle": self.cycles, "time": t_start, "trace_time": self.trace_time.isoformat(), "grid": cfg.grid,
            "inputs": {"carbon_intensity_g_per_kwh": ci, "forecast_g_per_kwh": list(problem.intensity),
                       "load_rps": load, "observed_rps": obs["request_rate_rps"], "overrides": dict(self.overrides),
                       "store": obs["store"], "current": {"replicas": observation.current_replicas,
                                                          "capacity_gb": observation.current_capacity_gb}},
            "observation": observation.to_json(),
            "plan": d.details["plan"],
            "predicted": {"slot_operational_g": op_g, "slot_embodied_g": emb_g,
                          "rmin_for_choice": d.details["rmin_for_choice"], "slo_met": d.details["slo_met"]},
            "decision": decision, "carbon_so_far_g": dict(self.carbon_g),
            "reason": d.reason,
        }
        self._actuate(decision)
        self._append(record)
        self.last = record
        tmp = self.state_dir / "last.json.tmp"
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.state_dir / "last.json")
        self._publish(record)
        if cfg.trace_hours_per_interval:
            self.trace_time += timedelta(hours=cfg.trace_hours_per_interval)
        else:
            self.trace_time = datetime.now(timezone.utc).replace(year=self.trace_time.year)
        return record

    def _actuate(self, decision: dict) -> None:
        tmp = self.plan_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"target_replicas": decision["replicas"], "updated": time.time()}))
        os.replace(tmp, self.plan_path)
        control = {}
        if self.control_path.exists():
            try:
                control = json.loads(self.control_path.read_text())
            except ValueError:
                control = {}
        caps = control.setdefault("capacity_bytes", {})
        caps["disk"] = int(decision["capacity_gb"] * 1e9)
        tmp = self.control_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(control))
        os.replace(tmp, self.control_path)

    def _append(self, record: dict) -> None:
        with open(self.state_dir / "decisions.jsonl", "a") as f:
            f.write(json.dumps(record, default=str) + "\n")

    def _publish(self, record: dict) -> None:
        try:
            from deployments.stats_hub import get_or_create_hub

            get_or_create_hub().report.remote("__autoscaler__", {
                "carbon_intensity_g_per_kwh": record["inputs"]["carbon_intensity_g_per_kwh"],
                "target_replicas": record["decision"]["replicas"],
                "capacity_gb": record["decision"]["capacity_gb"],
                "operational_g": record["carbon_so_far_g"]["operational"],
                "embodied_g": record["carbon_so_far_g"]["embodied"],
                "trace_time": record["trace_time"], "cycle": record["cycle"], "reason": record["reason"]})
        except Exception:
            logger.debug("publish failed", exc_info=True)


def start_autoscaler(config: AutoscalerConfig, home: str):
    actor = CarbonAutoscaler.options(name=ACTOR_NAME, namespace=NAMESPACE, lifetime="detached",
                                     get_if_exists=True).remote(config.model_dump(), home)
    ray.get(actor.start.remote())
    return actor


def get_autoscaler():
    return ray.get_actor(ACTOR_NAME, namespace=NAMESPACE)
