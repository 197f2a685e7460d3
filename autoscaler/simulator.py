"""Trace-driven simulator: request trace × carbon trace → carbon, energy, SLO attainment per policy.

The policies are the live ones (`autoscaler/policies.py`): the simulator builds an `Observation`
at each policy's interval, calls `decide`, and applies the `Decision` through simulated
actuators (`SimReplicas`, `SimCache`), as the live actor does through Serve and the store.

Models (stated, with their sources):
- **Cache**: an exact chunk-level LRU over the trace's 512-token prefix blocks (capacity in
  whole chunks of `block_tokens × kv_bytes_per_token`). A request's cached prefix is its
  leading run of blocks present at arrival; all its full blocks are then saved (write-through).
  Shrinking evicts from the LRU end at once; growing adds empty space.
- **Replica** (one vLLM engine on `gpus_per_replica` GPUs), timings from the `PerfModel` of a
  GPU profile (`autoscaler/data/profiles`):
  * prefill is served FCFS: service = prefill(uncached tokens) + KV load(cached tokens), and
    is slowed by the decode work sharing each step: × (1 + step(B)/prefill(chunk));
  * decode runs as one batch: a request's time per output token is
    TPOT = step(B, context) + ρ·prefill(chunk), B the sequences decoding on that replica when
    it starts, ρ the replica's recent prefill busy fraction (60 s EWMA), and `chunk` vLLM's
    chunked-prefill token budget (`max_num_batched_tokens`, 2,048): steps that carry a
    prefill chunk take that much longer;
  * the router sends each request to the ready replica with the least queued prefill work
    (the shared store makes every replica equally able to hit);
  * a new replica takes `cold_start_s` to load (powered, idle); a removed replica takes no new
    work and stays powered until its last request finishes.
- **Energy**: per GPU, idle power all the time a replica is powered, plus (prefill − idle) W for
  prefill seconds and (decode − idle) W for each request's share of its decode steps
  (output × step / B); SSD power per provisioned TB. Operational carbon = energy × PUE × the
  grid's hourly intensity. Embodied: replica-hours and provisioned GB-hours, amortised
  (`CarbonConfig`).
- **SLO** per request: TTFT ≤ max(`ttft_base_s`, `ttft_scale` × its uncached prefill time on an
  idle replica) and TPOT ≤ `tpot_s`. Attainment is the fraction meeting both.
- **Mixed fleets** (`SimConfig.fleet`, e.g. `h100:8,a100:8`): one pool of replicas per GPU type,
  each with its own profile, power and embodied carbon (autoscaler/fleet.py); the router sends
  a request to the replica, of any type, that would finish its prefill first (its queue and its
  type's speed; ties: the type whose mean request costs the least energy). The SLO stays the model's reference one (its H100 profile),
  so runs with different fleets are judged alike. Without a fleet: the model's reference type.
"""

from __future__ import annotations

import heapq
import json
import math
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from pydantic import BaseModel, Field

from autoscaler.carbon import SSD_EMBODIED_KG_PER_GB, CarbonConfig
from autoscaler.perf_model import SLO, PerfModel
from autoscaler.policies import (CarbonThresholdPolicy, FleetPlannerPolicy, Observation, PlannerPolicy,
                                 ServeDefaultPolicy, StaticPolicy, POLICY_NAMES)
from autoscaler.workloads import Trace
from cache_store.sampling import sampled_ids

PROFILES = Path(__file__).parent / "data" / "profiles"
# name → (profile file, cold start s, TTFT base s, TPOT SLO s, planning utilisation ceiling).
# The ceiling is the one calibration between the planner's analytic model (M/M/1-style, mean
# request) and the simulator's per-request queueing: the highest ρ at which a fixed replica
# count still met ≥ 90 % of the SLO on the Mooncake conversation trace at its peak hour
# (`python -m benchmarks.sim_calibration`; table in benchmarks/results/README.md).
MODELS = {
    "llama3-8b": ("llama3-8b-h100x1.json", 60.0, 1.0, 0.05, 0.30),
    "llama3-70b": ("llama3-70b-h100x4.json", 180.0, 2.0, 0.15, 0.45),
}


class SimConfig(BaseModel):
    model: str = Field("llama3-8b", description=f"GPU profile: {sorted(MODELS)}.")
    grid: str = Field("FR", description="Bundled Electricity Maps grid.")
    start: str = Field("2023-06-01T00:00", description="Carbon-trace time the simulation starts at (UTC).")
    ttft_scale: float = Field(5.0, gt=0, description="TTFT SLO: this many × the idle uncached prefill time...")
    ttft_base_s: Optional[float] = Field(None, description="...but at least this (s); default per model.")
    tpot_s: Optional[float] = Field(None, description="TPOT SLO (s); default per model.")
    chunk_tokens: int = Field(2048, gt=0, description="Chunked-prefill token budget per step.")
    cold_start_s: Optional[float] = Field(None, description="Replica start-up time (s); default per model.")
    ssd_embodied_kg_per_gb: float = Field(SSD_EMBODIED_KG_PER_GB, ge=0, description="SSD embodied factor (kgCO2e/GB).")
    gpu_idle_w: Optional[float] = Field(None, ge=0, description="GPU idle power override (W); default 75 (H100). "
                                        "With a fleet it applies to the model's reference type (H100) only.")
    full_hit_fraction: float = Field(0.95, gt=0, le=1, description="'Full cache' reaches this share of the trace's best hit ratio.")
    max_replicas: Optional[int] = Field(None, description="Upper bound for adaptive policies; default 2 × the static count.")
    sample_rate: float = Field(0.02, gt=0, le=1, description="SHARDS rate of the access sample the planners see.")
    curve_window_s: float = Field(3 * 3600.0, gt=0, description="Access-sample window behind each planning decision (s).")
    carbon_bands: Sequence[float] = Field((1 / 3, 2 / 3), description="Carbon-threshold quantiles of the grid's year.")
    horizon_slots: int = Field(12, ge=1)
    solver_time_limit_s: float = Field(2.0, gt=0)
    fleet: Optional[str] = Field(None, description="Mixed GPU fleet, e.g. h100:8,a100:8 (a100:8:reuse: past lifetime); "
                                 "default: the model's reference GPU, replicas up to max_replicas.")


def model_perf(model: str) -> tuple[PerfModel, dict]:
    prof = json.loads((PROFILES / MODELS[model][0]).read_text())
    return PerfModel.fit(prof), prof["meta"]


# ---- simulated actuators -----------------------------------------------------------------
class SimCache:
    """Exact LRU over chunk ids; capacity in whole chunks."""

    def __init__(self, chunk_bytes: int) -> None:
        self.chunk_bytes = chunk_bytes
        self.lru: "OrderedDict[int, None]" = OrderedDict()
        self.capacity_gb = 0.0
        self.slots = 0

    def set_capacity(self, gb: float) -> None:
        self.capacity_gb = float(gb)
        self.slots = int(gb * 1e9 // self.chunk_bytes)
        lru = self.lru
        while len(lru) > self.slots:
            lru.popitem(last=False)

    def access(self, blocks: list) -> int:
        """Look up then save one request's blocks; returns the cached prefix length in blocks.
        Recency is refreshed last block first, so a prefix's first block is the most recently
        used and eviction trims prefixes from their tails (as vLLM's prefix cache does): an
        evicted first block would make every later block of the prefix unreachable."""
        if self.slots <= 0:
            return 0
        lru = self.lru
        hit = 0
        for b in blocks:
            if b in lru:
                hit += 1
            else:
                break
        for b in reversed(blocks):
            if b in lru:
                lru.move_to_end(b)
            else:
                lru[b] = None
        while len(lru) > self.slots:
            lru.popitem(last=False)
        return hit


@dataclass
class _Replica:
    ready_at: float
    free_at: float = 0.0
    decodes: list = field(default_factory=list)  # heap of decode end times
    acc: float = 0.0  # EWMA prefill busy seconds
    acc_t: float = 0.0
    draining: bool = False
    last_end: float = 0.0
    powered_from: float = 0.0


# How far back a replica's prefill busy fraction looks (EWMA time constant, s).
PREFILL_BUSY_TAU_S = 60.0


@dataclass
class Served:
    """What serving one request on the fleet came to."""

    ttft_s: float
    tpot_s: float
    end_s: float
    start_s: float  # when its prefill started (its busy energy is charged to that hour)
    busy_j: float  # GPU energy above idle (J)


class SimReplicas:
    """The simulated fleet: replicas that start cold, drain when removed, and serve requests
    (FCFS prefill, one decode batch each; the module docstring states the model)."""

    def __init__(self, cold_start_s: float, perf: Optional[PerfModel] = None, chunk_tokens: int = 2048,
                 carbon: Optional[CarbonConfig] = None) -> None:
        self.cold_start_s = cold_start_s
        self.active: list[_Replica] = []
        self.draining: list[_Replica] = []
        self.perf = perf
        self.chunk_s = perf.prefill_s(chunk_tokens) if perf is not None else 0.0
        self.carbon = carbon or CarbonConfig()

    def set_target(self, n: int, t: float, initial: bool = False) -> None:
        while len(self.active) < n:
            ready = t if initial else t + self.cold_start_s
            self.active.append(_Replica(ready_at=ready, free_at=ready, acc_t=t, powered_from=t))
        while len(self.active) > n:
            r = self.active.pop()
            r.draining = True
            self.draining.append(r)

    def powered(self, t: float) -> int:
        self.draining = [r for r in self.draining if r.last_end > t]
        return len(self.active) + len(self.draining)

    def _route(self, t: float) -> tuple[_Replica, float]:
        """The ready replica with the least queued prefill work, and when it can start."""
        best, best_start = None, math.inf
        for r in self.active:
            s0 = max(r.free_at, t, r.ready_at)
            if s0 < best_start:
                best_start, best = s0, r
        return best, best_start

    def prefill_s(self, prompt: int, cached: int) -> float:
        """Prefill service time on an idle replica: the uncached part, plus loading the rest."""
        return self.perf.prefill_s(prompt - cached) + self.perf.load_s_per_token.get("disk", 0.0) * cached

    def serve(self, t: float, prompt: int, output: int, cached: int,
              routed: Optional[tuple[_Replica, float]] = None) -> Served:
        """Serve one request arriving at `t` with `cached` of its `prompt` tokens in the cache
        (`routed`: the replica and start time `_route(t)` gave, if the caller asked already)."""
        perf = self.perf
        service = self.prefill_s(prompt, cached)
        r, start = routed or self._route(t)
        dq = r.decodes
        while dq and dq[0] <= start:
            heapq.heappop(dq)
        ctx = prompt + output / 2
        # decode steps sharing the GPU slow the prefill down
        step_now = perf.decode_step_s(len(dq), ctx) if dq else 0.0
        service_eff = service * (1.0 + step_now / self.chunk_s)
        done_pre = start + service_eff
        r.free_at = done_pre
        rho = self._prefill_busy(r, start, service_eff)
        while dq and dq[0] <= done_pre:
            heapq.heappop(dq)
        B = len(dq) + 1
        step = perf.decode_step_s(B, ctx)
        tpot = step + rho * self.chunk_s  # steps that carry a prefill chunk take that much longer
        end = done_pre + output * tpot
        heapq.heappush(dq, end)
        r.last_end = max(r.last_end, end)
        pw, gpus = self.carbon.power, self.carbon.gpus_per_replica
        busy_j = gpus * ((pw.prefill_w - pw.idle_w) * service + (pw.decode_w - pw.idle_w) * output * step / B)
        return Served(ttft_s=done_pre - t, tpot_s=tpot, end_s=end, start_s=start, busy_j=busy_j)

    @staticmethod
    def _prefill_busy(r: _Replica, start: float, service_s: float) -> float:
        """Add `service_s` of prefill at `start` to the replica's EWMA; its busy fraction ρ."""
        if start > r.acc_t:
            r.acc = r.acc * math.exp(-(start - r.acc_t) / PREFILL_BUSY_TAU_S) + service_s
            r.acc_t = start
        else:
            r.acc += service_s
        return min(1.0, r.acc / PREFILL_BUSY_TAU_S)


class SimFleet:
    """Pools of replicas, one per GPU type (a single pool without a mixed fleet)."""

    def __init__(self, pools: dict[str, SimReplicas], order: Sequence[str]) -> None:
        self.pools = pools
        self.order = list(order)  # tie-break: least energy per mean request first

    @property
    def active(self) -> list:
        return [r for name in self.order for r in self.pools[name].active]

    def counts(self) -> dict[str, int]:
        return {name: len(p.active) for name, p in self.pools.items()}

    def set_counts(self, counts: dict[str, int], t: float, initial: bool = False) -> None:
        for name, pool in self.pools.items():
            pool.set_target(int(counts.get(name, 0)), t, initial=initial)

    def serve(self, t: float, prompt: int, output: int, cached: int) -> tuple[str, Served]:
        """On the pool whose best replica would finish this request's prefill first."""
        if len(self.order) == 1:
            return self.order[0], self.pools[self.order[0]].serve(t, prompt, output, cached)
        best, best_first, routed = self.order[0], math.inf, None
        for name in self.order:
            pool = self.pools[name]
            if pool.active:
                r, start = pool._route(t)
                first = start + pool.prefill_s(prompt, cached)
                if first < best_first:
                    best, best_first, routed = name, first, (r, start)
        return best, self.pools[best].serve(t, prompt, output, cached, routed)


class HourlyLedger:
    """Per-hour amounts the simulation's carbon is priced from (replica-seconds powered, GPU
    energy above idle, provisioned GB-seconds) and the hourly timeline of the decisions."""

    def __init__(self, hours: int, types: Sequence[str] = ("gpu",)) -> None:
        self.H = hours
        self.types = list(types)
        self.rep_s_by = {k: np.zeros(hours) for k in self.types}  # replica-seconds powered, per GPU type
        self.busy_j_by = {k: np.zeros(hours) for k in self.types}
        self.gb_s = np.zeros(hours)
        self.replicas_by = {k: np.zeros(hours) for k in self.types}  # active replicas at each hour's last update
        self.capacity_gb = np.zeros(hours)
        self.last_t = 0.0

    @property
    def rep_s(self) -> np.ndarray:
        return sum(self.rep_s_by.values())

    @property
    def busy_j(self) -> np.ndarray:
        return sum(self.busy_j_by.values())

    @property
    def replicas(self) -> np.ndarray:
        return sum(self.replicas_by.values())

    def _hour(self, t: float) -> int:
        return min(int(t // 3600), self.H - 1)

    def advance(self, t_now: float, fleet: SimFleet, cache: SimCache) -> None:
        """Charge the powered replicas and provisioned capacity from the last call until `t_now`."""
        dt = t_now - self.last_t
        if dt <= 0:
            return
        h = self._hour(self.last_t)
        for k, pool in fleet.pools.items():
            self.rep_s_by[k][h] += pool.powered(self.last_t) * dt
            self.replicas_by[k][h] = len(pool.active)
        self.gb_s[h] += cache.capacity_gb * dt
        self.capacity_gb[h] = cache.capacity_gb
        self.last_t = t_now

    def charge_busy(self, t: float, joules: float, gpu_type: str = "gpu") -> None:
        self.busy_j_by[gpu_type][self._hour(t)] += joules

    def footprint(self, carbon: dict[str, tuple[CarbonConfig, float]], storage: CarbonConfig, intensity: np.ndarray):
        """The whole run's carbon, hour by hour through the one carbon-cost function: each GPU
        type's replicas with its own factors (`carbon[type]` = (config, embodied scale)), plus
        the cache's storage."""
        from autoscaler.carbon import Footprint

        ci = intensity[:self.H]
        st = storage.footprint(intensity_g_per_kwh=ci, ssd_gb_hours=self.gb_s / 3600)
        op, emb, energy = st.operational_g, st.embodied_g, st.energy_kwh
        for k in self.types:
            cfg, scale = carbon[k]
            fp = cfg.footprint(intensity_g_per_kwh=ci, replica_hours=self.rep_s_by[k] / 3600,
                               busy_wh=self.busy_j_by[k] / 3600)
            op, emb, energy = op + fp.operational_g, emb + scale * fp.embodied_g, energy + fp.energy_kwh
        return Footprint(operational_g=op, embodied_g=emb, energy_kwh=energy)


# ---- the simulation ----------------------------------------------------------------------
ACCOUNT_EVERY_S = 60.0  # how often the hourly ledger catches up with powered replicas and capacity

@dataclass
class PolicyResult:
    policy: str
    requests: int
    finished: int
    total_kg: float
    operational_kg: float
    embodied_kg: float
    energy_kwh: float
    slo_attainment: float
    ttft_attainment: float
    tpot_attainment: float
    hit_ratio: float
    replica_hours: float
    ttft_p50_s: float
    ttft_p90_s: float
    tpot_p50_s: float
    tpot_p90_s: float
    mean_capacity_gb: float
    timeline: dict  # hourly: intensity, replicas, capacity_gb (and replicas per GPU type)
    reduction_vs_static_pct: Optional[float] = None
    replica_hours_by_type: Optional[dict] = None

    def summary(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "timeline"}
        return d


class Simulation:
    def __init__(self, trace: Trace, config: Optional[SimConfig] = None, source=None) -> None:
        from autoscaler.carbon_sources import TraceSource

        self.trace = trace
        self.cfg = cfg = config or SimConfig()
        self.perf, meta = model_perf(cfg.model)
        self.meta = meta
        _, cold, base, tpot, self.max_utilisation = MODELS[cfg.model]
        self.cold_start_s = cfg.cold_start_s if cfg.cold_start_s is not None else cold
        self.ttft_base_s = cfg.ttft_base_s if cfg.ttft_base_s is not None else base
        self.tpot_s = cfg.tpot_s if cfg.tpot_s is not None else tpot
        self.carbon = CarbonConfig(gpus_per_replica=int(meta["gpus_per_replica"]),
                                   ssd_embodied_kg_per_gb=cfg.ssd_embodied_kg_per_gb, gpu_idle_w=cfg.gpu_idle_w)
        self._fleet_types()
        self.chunk_bytes = int(trace.block_tokens * meta["kv_bytes_per_token"])
        self.source = source or TraceSource.grid(cfg.grid)
        self.start = datetime.fromisoformat(cfg.start).replace(tzinfo=timezone.utc)
        self.hours = int(math.ceil(max(trace.duration_s, 1.0) / 3600)) + 1
        self.intensity = np.array(self.source.forecast(self.start, self.hours))
        # The access stream in the order the cache sees recency (each request's blocks reversed),
        # and which accesses the SHARDS sample keeps: the same hash the live store samples with.
        nb = np.diff(trace.block_ptr)
        req = np.repeat(np.arange(len(trace)), nb)
        pos = np.arange(len(trace.blocks)) - trace.block_ptr[req]
        self.stream = trace.blocks[trace.block_ptr[req] + nb[req] - 1 - pos] if len(trace.blocks) else trace.blocks
        self.sampled = sampled_ids(self.stream, cfg.sample_rate)
        self.blocks_list = trace.blocks.tolist()
        self._provision()

    def _fleet_types(self) -> None:
        """The GPU types replicas run on: the fleet's, or the model's reference type alone."""
        from autoscaler.gpu_types import GPUType, parse_fleet

        cfg = self.cfg
        if cfg.fleet:
            types = parse_fleet(cfg.fleet, cfg.model)
            upd = {"ssd_embodied_kg_per_gb": cfg.ssd_embodied_kg_per_gb}
            self.types = [t.model_copy(update={"carbon": t.carbon.model_copy(update={
                **upd, **({"gpu_idle_w": cfg.gpu_idle_w} if t.carbon.gpu == self.carbon.gpu else {})})})
                for t in types]
        else:
            self.types = [GPUType(name=self.carbon.gpu.lower(), count=0, profile=str(PROFILES / MODELS[cfg.model][0]),
                                  carbon=self.carbon)]
        self.type_perf = {t.name: (self.perf if t.profile.endswith(MODELS[cfg.model][0]) else t.perf())
                          for t in self.types}
        self.type_carbon = {t.name: (t.carbon, t.embodied_scale()) for t in self.types}
        # the router's tie-break: least energy for a mean request (2k prompt, 256 out) first
        def energy(t) -> float:
            perf, pw = self.type_perf[t.name], t.carbon.power
            return t.carbon.gpus_per_replica * (pw.prefill_w * perf.prefill_s(2048) + pw.decode_w * perf.decode_s(2048, 256))
        self.type_order = [t.name for t in sorted(self.types, key=energy)]
        self.primary = self.types[0].name

    def new_fleet(self) -> SimFleet:
        return SimFleet({t.name: SimReplicas(self.cold_start_s, self.type_perf[t.name], self.cfg.chunk_tokens, t.carbon)
                         for t in self.types}, self.type_order)

    # ---- provisioning: what an operator sizes the static deployments for -----------------
    def _provision(self) -> None:
        from autoscaler.hitrate import HitRateCurve

        cfg, tr = self.cfg, self.trace
        end = min(len(tr), int(np.searchsorted(tr.arrival_s, 6 * 3600)))  # the first 6 hours
        sel = self.sampled[: tr.block_ptr[end]]
        sample = self.stream[: tr.block_ptr[end]][sel]
        r = cfg.sample_rate
        curve = HitRateCurve.from_stream(((int(k), 1) for k in sample), chunk_bytes=self.chunk_bytes,
                                         expected_weight=r * int(tr.block_ptr[end]))
        best = curve.hit_ratio(math.inf)
        self.provision_curve = curve
        # capacity ladder: the smallest power-of-two × 1 chunk-GB reaching full_hit_fraction of best
        unit = self.chunk_bytes / 1e9
        full = unit
        while curve.hit_ratio(full * 1e9 * r) < cfg.full_hit_fraction * best and full < 1e6:
            full *= 2
        self.full_capacity_gb = float(round(full, 1))
        self.capacities_gb = [0.0] + [round(self.full_capacity_gb / 2 ** k, 1) for k in range(6, -1, -1)]
        self.best_hit_ratio = best
        hours = np.bincount((tr.arrival_s // 3600).astype(int))
        self.peak_rps = float(hours[:-1].max() / 3600) if len(hours) > 1 else float(hours.max() / 3600)
        self.mean_rps = len(tr) / max(tr.duration_s, 1.0)
        self.mean_prompt = float(tr.prompt_tokens.mean())
        self.effective_prompt = self.perf.effective_prompt_tokens(tr.prompt_tokens)
        self.mean_output = float(tr.output_tokens.mean())
        slo = self.planner_slo()
        h_full = curve.hit_ratio(self.full_capacity_gb * 1e9 * r)
        self.static_replicas = self.perf.rmin(self.peak_rps, self.effective_prompt, self.mean_output, h_full, slo)
        self.nocache_replicas = self.perf.rmin(self.peak_rps, self.effective_prompt, self.mean_output, 0.0, slo)
        self.max_replicas = cfg.max_replicas or max(2, 2 * max(self.static_replicas, self.nocache_replicas))
        if not cfg.fleet:
            self.types[0] = self.types[0].model_copy(update={"count": self.max_replicas})

    def hit_at(self, capacity_gb: float) -> float:
        """The provisioning curve's token hit ratio at `capacity_gb` (the first six hours' sample)."""
        return self.provision_curve.hit_ratio(capacity_gb * 1e9 * self.cfg.sample_rate)

    def planner_slo(self) -> SLO:
        """The SLO the planners plan for: the per-request rule at the mean prompt."""
        ttft = max(self.ttft_base_s, self.cfg.ttft_scale * self.perf.prefill_s(self.effective_prompt))
        return SLO(ttft_s=ttft, tpot_s=self.tpot_s, max_utilisation=self.max_utilisation)

    def autoscaler_config(self, name: str = "joint-milp"):
        """The live actor's configuration that runs planner policy `name` on this scenario:
        cache-ilp pins replicas to the static count, joint-milp ranges over 1..max_replicas."""
        from autoscaler.config import AutoscalerConfig

        slo = self.planner_slo()
        lo, hi = (self.static_replicas, self.static_replicas) if name == "cache-ilp" else (1, self.max_replicas)
        return AutoscalerConfig(
            grid=self.cfg.grid, trace_start=self.cfg.start, min_replicas=lo, max_replicas=hi,
            capacities_gb=self.capacities_gb, horizon_slots=self.cfg.horizon_slots,
            solver_time_limit_s=self.cfg.solver_time_limit_s, profile_path=str(PROFILES / MODELS[self.cfg.model][0]),
            slo=slo,
            prompt_tokens=self.effective_prompt, output_tokens=self.mean_output, carbon=self.carbon)

    def make_policy(self, name: str):
        full = self.full_capacity_gb
        if name == "static":
            return StaticPolicy("static", self.static_replicas, full)
        if name == "no-cache":
            return StaticPolicy("no-cache", self.nocache_replicas, 0.0)
        if name == "serve-default":
            return ServeDefaultPolicy(1, self.max_replicas, full)
        if name == "carbon-threshold":
            year = np.array(self.source.forecast(self.start.replace(month=1, day=1, hour=0), 8760))
            th = [float(np.quantile(year, q)) for q in self.cfg.carbon_bands]
            # ceilings: clean third → max_replicas; middle → the peak-provisioned count;
            # dirty third → 3/4 of it (KEDA carbon-aware scaler style: carbon over SLO)
            caps = (1.0, self.static_replicas / self.max_replicas, 0.75 * self.static_replicas / self.max_replicas)
            return CarbonThresholdPolicy(1, self.max_replicas, full, th, caps=caps)
        if name == "ecoserve" or (name == "joint-milp" and self.cfg.fleet):
            a = self.autoscaler_config(name)
            eco = name == "ecoserve"
            return FleetPlannerPolicy(
                name, types=self.types, perfs=[self.type_perf[t.name] for t in self.types],
                capacities_gb=[0.0] if eco else a.capacities_gb, horizon_slots=1 if eco else a.horizon_slots,
                solver_time_limit_s=a.solver_time_limit_s, perf=self.perf, slo=a.slo, carbon=a.carbon,
                prompt_tokens=a.prompt_tokens, output_tokens=a.output_tokens,
                **({"alpha_g_per_replica": 0.0, "beta_g_per_gb": 0.0} if eco else {}))
        if name in ("cache-ilp", "joint-milp"):
            # built exactly as the live actor builds its policy, from an AutoscalerConfig
            return PlannerPolicy.from_autoscaler_config(self.autoscaler_config(name), self.perf, name=name)
        raise ValueError(f"unknown policy {name!r}; choose from {list(POLICY_NAMES)}")

    # ---- observation ---------------------------------------------------------------------
    def observe(self, t: float, interval_s: float, replicas: SimFleet, cache: SimCache, ongoing: int,
                want_sample: bool, latencies: Optional[tuple[np.ndarray, np.ndarray]] = None) -> Observation:
        """What a policy sees at `t`, as the live actor builds it: the last interval's request rate,
        token mix and (with `latencies`, the run's TTFT/TPOT so far) mean TTFT/TPOT; the sampled
        access stream; the carbon forecast; the current fleet and cache."""
        tr = self.trace
        i1 = int(np.searchsorted(tr.arrival_s, t))
        i0 = int(np.searchsorted(tr.arrival_s, t - interval_s))
        rate = (i1 - i0) / interval_s if t > 0 else self.mean_rps  # first decision: provisioning rate
        sample: list = []
        mp = mo = ep = mttft = mtpot = None
        window = None
        if want_sample:
            w0 = int(np.searchsorted(tr.arrival_s, t - self.cfg.curve_window_s))
            a, b = int(tr.block_ptr[w0]), int(tr.block_ptr[i1])
            sample = self.stream[a:b][self.sampled[a:b]].tolist()
            window = b - a
            if i1 > i0:
                mp, mo = float(tr.prompt_tokens[i0:i1].mean()), float(tr.output_tokens[i0:i1].mean())
                ep = self.perf.effective_prompt_tokens(tr.prompt_tokens[i0:i1])
        if latencies is not None and i1 > i0:
            mttft, mtpot = float(latencies[0][i0:i1].mean()), float(latencies[1][i0:i1].mean())
        hour = int(t // 3600)
        return Observation(
            trace_time=self.start + timedelta(seconds=t),
            intensity_forecast=[float(x) for x in self.intensity[hour:hour + self.cfg.horizon_slots]] or [0.0],
            arrival_rps=rate, ongoing_requests=float(ongoing), current_replicas=len(replicas.active),
            current_capacity_gb=cache.capacity_gb, current_counts=replicas.counts(), access_sample=sample, sample_rate=self.cfg.sample_rate,
            chunk_bytes=self.chunk_bytes, window_accesses=window, mean_prompt_tokens=mp, mean_output_tokens=mo,
            effective_prompt_tokens=ep, mean_ttft_s=mttft, mean_tpot_s=mtpot, now_s=t)

    # ---- run one policy ------------------------------------------------------------------
    def _decide(self, policy, t: float, fleet: SimFleet, cache: SimCache, in_flight: list, initial=False,
                latencies=None) -> None:
        """One decision point: observe, decide, apply the decision to the simulated actuators."""
        while in_flight and in_flight[0] <= t:
            heapq.heappop(in_flight)
        obs = self.observe(t, policy.interval_s, fleet, cache, len(in_flight), isinstance(policy, PlannerPolicy),
                           latencies)
        dec = policy.decide(obs)
        if dec.counts is None:  # a single-type policy: the first type, at most as many as the fleet has
            cap = self.types[0].count if self.cfg.fleet else dec.replicas
            fleet.set_counts({self.primary: min(dec.replicas, cap)}, t, initial=initial)
        else:
            fleet.set_counts(dec.counts, t, initial=initial)
        cache.set_capacity(dec.capacity_gb)

    def run(self, policy, progress: Optional[Callable[[float], None]] = None) -> PolicyResult:
        """Replay the trace under `policy`: requests in arrival order; every `policy.interval_s`
        a decision, every `ACCOUNT_EVERY_S` the hourly ledger catches up."""
        tr = self.trace
        n = len(tr)
        arrivals, prompts, outputs = tr.arrival_s.tolist(), tr.prompt_tokens.tolist(), tr.output_tokens.tolist()
        ptr, blocks = tr.block_ptr.tolist(), self.blocks_list
        cache = SimCache(self.chunk_bytes)
        fleet = self.new_fleet()
        ledger = HourlyLedger(self.hours, [t.name for t in self.types])
        in_flight: list[float] = []  # end times of requests still running (queue-based policies)
        ttft, tpot, finish = np.empty(n), np.empty(n), np.full(n, np.nan)
        self._decide(policy, 0.0, fleet, cache, in_flight, initial=True)
        cached_tokens = 0
        next_acct, next_tick = ACCOUNT_EVERY_S, policy.interval_s
        prog_every = max(1, n // 200)

        def tick_until(t_now: float) -> None:
            nonlocal next_acct, next_tick
            while min(next_acct, next_tick) <= t_now:
                nt = min(next_acct, next_tick)
                ledger.advance(nt, fleet, cache)
                if nt == next_tick:
                    self._decide(policy, nt, fleet, cache, in_flight, latencies=(ttft, tpot))
                    next_tick += policy.interval_s
                if nt == next_acct:
                    next_acct += ACCOUNT_EVERY_S

        for i in range(n):
            t = arrivals[i]
            tick_until(t)
            hit = cache.access(blocks[ptr[i]:ptr[i + 1]])
            cached = min(hit * tr.block_tokens, prompts[i] - 1)  # one token is always computed
            gpu_type, served = fleet.serve(t, prompts[i], outputs[i], cached)
            heapq.heappush(in_flight, served.end_s)
            ttft[i], tpot[i], finish[i] = served.ttft_s, served.tpot_s, served.end_s
            ledger.charge_busy(served.start_s, served.busy_j, gpu_type)
            cached_tokens += cached
            if progress is not None and i % prog_every == 0:
                progress(i / n)
        t_end = max(float(np.nanmax(finish)) if n else 0.0, tr.duration_s)
        tick_until(min(t_end, (self.hours - 1) * 3600.0))
        ledger.advance(min(t_end, self.hours * 3600.0 - 1), fleet, cache)
        if progress is not None:
            progress(1.0)
        self.last_finish = finish
        self.last_ledger = ledger
        return self._result(policy.name, ledger, ttft, tpot, finish, cached_tokens, t_end)

    def _result(self, name: str, ledger: HourlyLedger, ttft, tpot, finish, cached_tokens: int,
                t_end: float) -> PolicyResult:
        tr, n = self.trace, len(self.trace)
        fp = ledger.footprint(self.type_carbon, self.carbon, self.intensity)
        op_g, emb_g = float(np.sum(fp.operational_g)), float(np.sum(fp.embodied_g))
        p = tr.prompt_tokens.astype(float)
        ttft_ok = ttft <= np.maximum(self.ttft_base_s, self.cfg.ttft_scale * self.perf.prefill_s(p))
        tpot_ok = tpot <= self.tpot_s
        both = ttft_ok & tpot_ok
        hours_run = int(math.ceil(tr.duration_s / 3600))
        prompt_total = int(tr.prompt_tokens.sum())
        return PolicyResult(
            policy=name, requests=n, finished=int(np.isfinite(finish).sum()),
            total_kg=(op_g + emb_g) / 1000, operational_kg=op_g / 1000, embodied_kg=emb_g / 1000,
            energy_kwh=float(np.sum(fp.energy_kwh) * self.carbon.pue),
            slo_attainment=float(both.mean()) if n else 1.0,
            ttft_attainment=float(ttft_ok.mean()) if n else 1.0, tpot_attainment=float(tpot_ok.mean()) if n else 1.0,
            hit_ratio=cached_tokens / prompt_total if prompt_total else 0.0,
            replica_hours=float(ledger.rep_s.sum() / 3600),
            ttft_p50_s=float(np.median(ttft)) if n else 0.0, ttft_p90_s=float(np.quantile(ttft, 0.9)) if n else 0.0,
            tpot_p50_s=float(np.median(tpot)) if n else 0.0, tpot_p90_s=float(np.quantile(tpot, 0.9)) if n else 0.0,
            mean_capacity_gb=float(np.sum(ledger.gb_s) / max(t_end, 1.0)),
            timeline={"intensity": self.intensity[:hours_run].tolist(), "replicas": ledger.replicas[:hours_run].tolist(),
                      "capacity_gb": ledger.capacity_gb[:hours_run].tolist(),
                      **({"replicas_by_type": {k: v[:hours_run].tolist() for k, v in ledger.replicas_by.items()}}
                         if self.cfg.fleet else {})},
            replica_hours_by_type={k: float(v.sum() / 3600) for k, v in ledger.rep_s_by.items()},
        )


def simulate(trace: Trace, config: SimConfig, policies: Sequence[str] = POLICY_NAMES, *, workers: int = 1,
             progress: Optional[Callable[[str, float], None]] = None) -> dict:
    """Run `policies` on one trace × grid × model; returns the JSON the CLI prints."""
    sim = Simulation(trace, config)
    results: dict[str, PolicyResult] = {}
    if workers > 1 and len(policies) > 1:
        import multiprocessing as mp

        global _SIM
        _SIM = sim  # forked workers inherit it (no pickling of the trace)
        ctx = mp.get_context("fork")
        with ctx.Pool(min(workers, len(policies))) as pool:
            for name, res in zip(policies, pool.imap(_run_one, list(policies))):
                results[name] = res
                if progress:
                    progress(name, 1.0)
    else:
        for p in policies:
            results[p] = sim.run(sim.make_policy(p), progress=(lambda x, p=p: progress(p, x)) if progress else None)
    if "static" in results:
        base = results["static"].total_kg
        for r in results.values():
            r.reduction_vs_static_pct = 100.0 * (base - r.total_kg) / base if base else None
    return {
        "trace": trace.name, "grid": config.grid, "model": config.model, "start": config.start, "fleet": config.fleet,
        "days": trace.duration_s / 86400, "requests": len(trace),
        "provisioning": {"static_replicas": sim.static_replicas, "no_cache_replicas": sim.nocache_replicas,
                         "max_replicas": sim.max_replicas, "full_capacity_gb": sim.full_capacity_gb,
                         "capacities_gb": sim.capacities_gb, "peak_rps": sim.peak_rps, "mean_rps": sim.mean_rps,
                         "best_hit_ratio": sim.best_hit_ratio, "chunk_bytes": sim.chunk_bytes},
        "slo": {"ttft": f"max({sim.ttft_base_s} s, {config.ttft_scale} x idle uncached prefill)", "tpot_s": sim.tpot_s},
        "carbon": {"ssd_embodied_kg_per_gb": config.ssd_embodied_kg_per_gb, "gpu_idle_w": sim.carbon.power.idle_w,
                   "pue": sim.carbon.pue,
                   "gpus_per_replica": sim.carbon.gpus_per_replica,
                   "mean_intensity_g_per_kwh": float(np.mean(sim.intensity))},
        "policies": {k: v.summary() for k, v in results.items()},
        "timelines": {k: v.timeline for k, v in results.items()},
    }


_SIM: Optional[Simulation] = None


def _run_one(name: str) -> PolicyResult:
    return _SIM.run(_SIM.make_policy(name))
