"""Mixed GPU fleets: GPU types, and the planner that chooses per slot how many replicas of each
type to run together with the cache capacity (EcoServe's reuse and rightsizing, joined with
GreenCache's cache sizing).

A GPU type (`GPUType` in autoscaler/gpu_types.py, the catalogue in `data/profiles/gpu_types.json`,
written by scripts/derive_gpu_profiles.py) carries its performance for a model (a `PerfModel` profile),
its power (prefill / decode / idle W per GPU), GPUs per replica, memory, its embodied carbon per
GPU and per server share with the lifetime they are amortised over, and the reuse case: a GPU
past its planned lifetime is charged `reuse_embodied_fraction` of its amortised embodied carbon
per hour (a stated parameter; 0 says "already paid for", and says so).

Notation (slot t = 1..T of Δ hours; GPU type k; cache configuration c):

    λ_t        forecast arrival rate (requests/s)            N_k    replicas of type k available
    W_kc       replica-seconds per request on type k with cache c (prefill·(1 − h_c), KV load, decode)
    μ_kc       the most requests/s one type-k replica serves within the TTFT/TPOT SLO with cache
               c (0: it cannot meet the SLO at all)
    f_tk       grams of one type-k replica through slot t: idle power at CI_t, and embodied
               (× the reuse fraction when past its lifetime)
    b_tkc      grams per request/s served by type k with cache c in slot t: busy power above idle
    s_tc       grams of cache c through slot t (storage power and embodied)
    α_k, β     switching cost (g per type-k replica started, g per GB changed; `fleet_problem`
               takes α per GPU, so a 4-GPU replica costs 4α to start); stopping a replica
               is free: with a cost on both, a 12-slot horizon keeps an idle replica powered whenever
               12 slots of its idle carbon cost less than stopping it, every hour again

Variables: n[t,k] ∈ {0..N_k} integer, y[t,c] ∈ {0,1}, z[t,k,c] ≥ 0 (the load type k serves under
cache c; only where μ_kc > 0), u[t,k], v[t] ≥ 0.

Objective (grams CO2e), minimised:

    Σ_t [ Σ_k f_tk·n[t,k] + Σ_{k,c} b_tkc·z[t,k,c] + Σ_c s_tc·y[t,c] + Σ_k α_k·u[t,k] + β·v[t] ]

Constraints (numbered as in the code):

    (1) Σ_c y[t,c] = 1                                  one cache configuration per slot
    (2) Σ_{k,c} z[t,k,c] = λ_t                           all load is served
    (3) z[t,k,c] ≤ λ_t·y[t,c]                            ... under the chosen configuration
    (4) Σ_c z[t,k,c] / μ_kc ≤ n[t,k]                     SLO: no replica above its SLO rate
    (5) Σ_k n[t,k] ≥ n_min                               fewest replicas in all (the operator's floor)
    (6) u[t,k] ≥ n[t,k] − n[t−1,k],  v[t] ≥ ±(Σ_c cap_c·y[t,c] − Σ_c cap_c·y[t−1,c]);
        slot 0 is the current state

With one type and no replica switching cost this is the single-type planner's problem
(autoscaler/planner.py), whose α charges stops as well as starts: (4) becomes n ≥ λ·W/ρ_max, its
`rmin`. The split z is the planner's assumption about where load goes (cheapest busy energy
first); the simulator's router does not follow it: it sends each request where its prefill
would finish first.

Exact oracle: given the counts n and the cache c of a slot, the best split is a small LP whose
optimum is greedy (fill the type with the lowest b_tkc first, up to μ_kc·n_k), so every slot's
cost is a function of the state (n_1..n_K, c); the switching cost is separable and piecewise
linear in every coordinate (one slope up, another down), so `solve_fleet_dp` is a shortest path over those states with one L1 distance
transform per axis: O(T·Π_k(N_k+1)·|C|·(K+1)). It is the MILP's warm start and the tests' oracle.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from autoscaler.carbon import CarbonConfig
from autoscaler.gpu_types import GPUType
from autoscaler.planner import CacheOption, PlanInfeasible, l1_transform


def slo_rate(perf, slo, prompt_tokens: float, output_tokens: float, hit_ratio: float, batch: float = 16,
             tier: str = "disk") -> float:
    """μ: the most requests/s one replica serves within `slo` (the same M/M/1-style model as
    `PerfModel.rmin`: a replica meets the SLO iff its utilisation ρ = μ·W stays below the
    ceiling and the inflated TTFT and TPOT meet their targets). 0 if no load meets it."""
    tail = -math.log(1 - slo.percentile / 100) / math.log(2)
    p = perf.predict(0.0, 1, prompt_tokens, output_tokens, hit_ratio, batch, tier)  # unloaded times
    rho = min(slo.max_utilisation * (1 - 1e-9), 1 - p["ttft_p50_s"] * tail / slo.ttft_s,
              1 - p["tpot_p50_s"] / slo.tpot_s)
    return max(0.0, rho) / p["work_s"]


@dataclass
class FleetType:
    """A type as the problem sees it: availability, switching cost and the per-cache figures."""

    name: str
    max_count: int
    carbon: CarbonConfig
    work_s: np.ndarray  # W_kc, per cache option
    rate_rps: np.ndarray  # μ_kc, per cache option
    embodied_scale: float = 1.0
    alpha_g_per_replica: float = 0.0


@dataclass
class FleetProblem:
    slot_hours: float
    arrival_rps: Sequence[float]
    intensity: Sequence[float]
    types: list[FleetType]
    caches: Sequence[CacheOption]
    storage_carbon: CarbonConfig = field(default_factory=CarbonConfig)  # prices s_tc
    beta_g_per_gb: float = 0.0
    initial_counts: Optional[Sequence[int]] = None  # default: none running
    initial_capacity_gb: float = 0.0
    min_total_replicas: int = 1

    @property
    def T(self) -> int:
        return len(self.arrival_rps)

    def fixed_cost(self) -> np.ndarray:
        """f_tk, [T, K]."""
        ci = np.asarray(self.intensity, dtype=float)
        cols = []
        for k in self.types:
            fp = k.carbon.footprint(intensity_g_per_kwh=ci, replica_hours=self.slot_hours)
            cols.append(fp.operational_g + k.embodied_scale * fp.embodied_g)
        return np.stack(cols, axis=1)

    def busy_cost(self) -> np.ndarray:
        """b_tkc, [T, K, C]: grams per request/s served through slot t."""
        ci = np.asarray(self.intensity, dtype=float)
        out = np.zeros((self.T, len(self.types), len(self.caches)))
        for i, k in enumerate(self.types):
            busy_wh = k.carbon.busy_extra_w() * np.asarray(k.work_s)[None, :] * self.slot_hours
            out[:, i, :] = k.carbon.footprint(intensity_g_per_kwh=ci[:, None], busy_wh=busy_wh).operational_g
        return out

    def storage_cost(self) -> np.ndarray:
        """s_tc, [T, C]."""
        ci = np.asarray(self.intensity, dtype=float)
        caps = np.array([c.capacity_gb for c in self.caches])
        return self.storage_carbon.footprint(intensity_g_per_kwh=ci[:, None],
                                             ssd_gb_hours=caps[None, :] * self.slot_hours).total_g

    def initial(self) -> np.ndarray:
        return np.zeros(len(self.types), dtype=int) if self.initial_counts is None \
            else np.asarray(self.initial_counts, dtype=int)

    def grid_shape(self) -> tuple[int, ...]:
        return tuple(k.max_count + 1 for k in self.types) + (len(self.caches),)

    def state_costs(self) -> tuple[list[np.ndarray], list[list[np.ndarray]]]:
        """Every slot's cost for every state (n_1..n_K, c), inf where the SLO cannot be met, and
        the greedy split z_k (requests/s per type) that attains it: ([T] grids, [T][K] grids)."""
        K = len(self.types)
        shape = self.grid_shape()
        counts = np.meshgrid(*[np.arange(k.max_count + 1) for k in self.types], np.zeros(len(self.caches)),
                             indexing="ij")[:K]
        enough = sum(counts) >= self.min_total_replicas
        fixed, busy, storage = self.fixed_cost(), self.busy_cost(), self.storage_cost()
        costs, splits = [], []
        for t in range(self.T):
            lam = float(self.arrival_rps[t])
            f, b = fixed[t], busy[t]
            cost = sum(f[i] * counts[i] for i in range(K)) + storage[t][None] * np.ones(shape)
            split = [np.zeros(shape) for _ in range(K)]
            remaining = np.full(shape, lam)
            for c in range(len(self.caches)):
                for i in sorted(range(K), key=lambda i: b[i, c]):
                    take = np.minimum(remaining[..., c], self.types[i].rate_rps[c] * counts[i][..., c])
                    split[i][..., c] = take
                    cost[..., c] += b[i, c] * take
                    remaining[..., c] -= take
            costs.append(np.where((remaining <= 1e-9 * max(lam, 1.0)) & enough, cost, np.inf))
            splits.append(split)
        return costs, splits


@dataclass
class FleetPlan:
    counts: list[list[int]]  # [T][K]
    cache: list[int]
    split_rps: list[list[float]]  # [T][K], the load each type serves (greedy split)
    objective_g: float
    method: str
    solve_s: float
    optimal: bool
    gap: float = 0.0
    dp_objective_g: Optional[float] = None
    reason: str = ""


def _axes(p: FleetProblem) -> tuple[np.ndarray, list[tuple[np.ndarray, float, float]]]:
    """The DP's state axes: the cache options' order by capacity (the distance transform needs
    sorted positions), and per axis (positions, cost per unit up, cost per unit down)."""
    caps = np.array([c.capacity_gb for c in p.caches])
    order = np.argsort(caps, kind="stable")
    return order, [(np.arange(k.max_count + 1, dtype=float), k.alpha_g_per_replica, 0.0) for k in p.types] + \
        [(caps[order], p.beta_g_per_gb, p.beta_g_per_gb)]


def _entry_cost(p: FleetProblem, axes) -> np.ndarray:
    """Switching from the current state into every state of slot 0."""
    K = len(p.types)
    grids = np.meshgrid(*[a for a, _, _ in axes], indexing="ij")
    init = p.initial()
    return sum(p.types[i].alpha_g_per_replica * np.maximum(0, grids[i] - init[i]) for i in range(K)) \
        + p.beta_g_per_gb * np.abs(grids[K] - p.initial_capacity_gb)


def _spread(f: np.ndarray, axes, forward: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """min over s' of f(s') + switching(s' → s) (forward) or switching(s → s') (backward), one
    distance transform per axis, and the flat index of the s' that attains it."""
    src = np.arange(f.size).reshape(f.shape)
    for ax, (pos, up, down) in enumerate(axes):
        f, arg = l1_transform(f, pos, up if forward else down, axis=ax, w_down=down if forward else up)
        src = np.take_along_axis(src, arg, axis=ax)
    return f, src


def solve_fleet_dp(p: FleetProblem, costs=None) -> FleetPlan:
    """Exact optimum by dynamic programming over (n_1..n_K, c) (module docstring). `costs`:
    `p.state_costs()` if the caller has it already."""
    t0 = time.perf_counter()
    K = len(p.types)
    order, axes = _axes(p)
    shape = p.grid_shape()
    grids, splits = costs or p.state_costs()
    costs = [g[..., order] for g in grids]
    V = costs[0] + _entry_cost(p, axes)
    back = np.zeros((p.T, V.size), dtype=np.int64)
    for t in range(1, p.T):
        g, src = _spread(V, axes)
        back[t] = src.ravel()
        V = costs[t] + g
    if not np.isfinite(V).any():
        raise PlanInfeasible(_explain(p))
    idx = int(np.argmin(V))
    obj = float(V.ravel()[idx])
    states = [0] * p.T
    for t in range(p.T - 1, -1, -1):
        states[t] = idx
        idx = int(back[t, idx])
    counts, cache, split = [], [], []
    for t, st in enumerate(states):
        u = np.unravel_index(st, shape)
        c = int(order[u[K]])
        counts.append([int(x) for x in u[:K]])
        cache.append(c)
        split.append([float(splits[t][i][u[:K] + (c,)]) for i in range(K)])
    return FleetPlan(counts=counts, cache=cache, split_rps=split, objective_g=obj, method="dp",
                     solve_s=time.perf_counter() - t0, optimal=True, dp_objective_g=obj)


def _explain(p: FleetProblem) -> str:
    for t in range(p.T):
        most = max(sum(k.rate_rps[c] * k.max_count for k in p.types) for c in range(len(p.caches)))
        if most < p.arrival_rps[t]:
            return (f"slot {t}: {p.arrival_rps[t]:.2f} req/s is more than the whole fleet serves within the SLO "
                    f"({most:.2f} req/s with the best cache): add GPUs to the fleet or relax the TTFT/TPOT SLO")
    return "no feasible plan: lower the replica floor or relax the SLO"


def fleet_plan_cost(p: FleetProblem, counts: Sequence[Sequence[int]], cache: Sequence[int]) -> dict:
    """Grams of a plan by component (slots at their greedy split, and switching)."""
    grids = p.state_costs()[0]
    slot = sum(float(grids[t][tuple(counts[t]) + (cache[t],)]) for t in range(p.T))
    prev, prev_cap, switch = p.initial(), p.initial_capacity_gb, 0.0
    for t in range(p.T):
        cap = p.caches[cache[t]].capacity_gb
        switch += sum(k.alpha_g_per_replica * max(0, counts[t][i] - prev[i]) for i, k in enumerate(p.types))
        switch += p.beta_g_per_gb * abs(cap - prev_cap)
        prev, prev_cap = np.asarray(counts[t]), cap
    return {"slots_g": slot, "switching_g": switch, "total_g": slot + switch}


def _through_cost(p: FleetProblem, costs=None) -> list[np.ndarray]:
    """For every slot t and state s: the cost of the best whole plan that is in s at slot t
    (forward DP cost to reach s, plus backward DP cost from s to the end)."""
    order, axes = _axes(p)
    slot = [g[..., order] for g in (costs or p.state_costs())[0]]
    fwd = [slot[0] + _entry_cost(p, axes)]
    for t in range(1, p.T):
        fwd.append(slot[t] + _spread(fwd[-1], axes)[0])
    bwd = [np.zeros_like(slot[0])]
    for t in range(p.T - 2, -1, -1):
        bwd.insert(0, _spread(slot[t + 1] + bwd[0], axes, forward=False)[0])
    inv = np.argsort(order)
    return [(f + b)[..., inv] for f, b in zip(fwd, bwd)]


def _surviving(p: FleetProblem, incumbent_g: float, costs=None) -> list[tuple[np.ndarray, np.ndarray, set]]:
    """Bounds every plan at least as good as one costing `incumbent_g` obeys (reduced-cost
    fixing with the DP's exact bounds): a state whose best whole plan through it costs more
    is in no such plan. Per slot: the least and most replicas of each type, and the cache
    options, among the states that survive."""
    tol = 1e-7 * max(1.0, abs(incumbent_g))
    out = []
    for g in _through_cost(p, costs):
        idx = np.argwhere(g <= incumbent_g + tol)  # rows: (n_1..n_K, c)
        out.append((idx[:, :-1].min(axis=0), idx[:, :-1].max(axis=0), set(int(c) for c in idx[:, -1])))
    return out


def solve_fleet_milp(p: FleetProblem, *, time_limit_s: float = 5.0, warm_start: Optional[FleetPlan] = None,
                     solver: str = "CBC", threads: int = 1, costs=None) -> FleetPlan:
    """The MILP of the module docstring with python-mip. With a warm start, the variables'
    bounds are first tightened to what any plan at least as good must satisfy (`_surviving`):
    the model and its optimum are the same, the search is smaller. Without one (`cold`), CBC
    works on the model alone."""
    import mip

    t_start = time.perf_counter()
    K, C, T = range(len(p.types)), range(len(p.caches)), range(p.T)
    caps = [c.capacity_gb for c in p.caches]
    f, b, s = p.fixed_cost(), p.busy_cost(), p.storage_cost()
    init = p.initial()
    m = mip.Model(sense=mip.MINIMIZE, solver_name=solver)
    m.verbose, m.threads = 0, threads
    n = [[m.add_var(var_type=mip.INTEGER, lb=0, ub=p.types[k].max_count) for k in K] for _ in T]
    y = [[m.add_var(var_type=mip.BINARY) for _ in C] for _ in T]
    z = [{(k, c): m.add_var(lb=0) for k in K for c in C if p.types[k].rate_rps[c] > 0} for _ in T]
    u = [[m.add_var(lb=0) for _ in K] for _ in T]
    v = [m.add_var(lb=0) for _ in T]
    m.objective = mip.xsum(
        mip.xsum(float(f[t, k]) * n[t][k] + p.types[k].alpha_g_per_replica * u[t][k] for k in K)
        + mip.xsum(float(b[t, k, c]) * z[t][k, c] for (k, c) in z[t])
        + mip.xsum(float(s[t, c]) * y[t][c] for c in C) + p.beta_g_per_gb * v[t] for t in T)
    for t in T:
        lam = float(p.arrival_rps[t])
        m += mip.xsum(y[t]) == 1, f"c1_one_cache_config_{t}"  # (1)
        m += mip.xsum(z[t].values()) == lam, f"c2_load_served_{t}"  # (2)
        for (k, c), var in z[t].items():
            m += var <= lam * y[t][c], f"c3_chosen_cache_{t}_{k}_{c}"  # (3)
        for k in K:
            m += mip.xsum((1.0 / p.types[k].rate_rps[c]) * z[t][k, c] for c in C if (k, c) in z[t]) <= n[t][k], \
                f"c4_slo_{t}_{k}"  # (4)
        m += mip.xsum(n[t]) >= p.min_total_replicas, f"c5_floor_{t}"  # (5)
        capt = mip.xsum(caps[c] * y[t][c] for c in C)
        prev_cap = p.initial_capacity_gb if t == 0 else mip.xsum(caps[c] * y[t - 1][c] for c in C)
        for k in K:
            prev = int(init[k]) if t == 0 else n[t - 1][k]
            m += u[t][k] >= n[t][k] - prev, f"c6_u_start_{t}_{k}"  # (6)
        m += v[t] >= capt - prev_cap, f"c6_v_up_{t}"
        m += v[t] >= prev_cap - capt, f"c6_v_down_{t}"
    if warm_start is not None:
        for t, (lo, hi, caches) in enumerate(_surviving(p, warm_start.objective_g, costs)):
            for k in K:
                n[t][k].lb, n[t][k].ub = float(lo[k]), float(hi[k])
            for c in C:
                if c not in caches:
                    y[t][c].ub = 0.0
        m.start = [(n[t][k], float(warm_start.counts[t][k])) for t in T for k in K] + \
                  [(y[t][c], 1.0 if warm_start.cache[t] == c else 0.0) for t in T for c in C]
    status = m.optimize(max_seconds=time_limit_s)
    solve_s = time.perf_counter() - t_start
    if status == mip.OptimizationStatus.INFEASIBLE:
        raise PlanInfeasible(_explain(p))
    if status not in (mip.OptimizationStatus.OPTIMAL, mip.OptimizationStatus.FEASIBLE):
        raise TimeoutError(f"solver returned {status.name} in {solve_s:.2f}s")
    counts = [[int(round(n[t][k].x)) for k in K] for t in T]
    cache = [max(C, key=lambda c: y[t][c].x) for t in T]
    split = [[sum(z[t][k, c].x for c in C if (k, c) in z[t]) for k in K] for t in T]
    obj = float(m.objective_value)
    gap = abs(obj - float(m.objective_bound)) / max(abs(obj), 1e-9)
    return FleetPlan(counts=counts, cache=cache, split_rps=split, objective_g=obj, method="milp", solve_s=solve_s,
                     optimal=status == mip.OptimizationStatus.OPTIMAL, gap=gap)


def plan_fleet(p: FleetProblem, *, time_limit_s: float = 5.0, solver: str = "CBC") -> FleetPlan:
    """DP warm start, then the MILP; the DP plan if the solver does not finish or stops at a
    plan worse than the DP's. Raises only for infeasibility."""
    costs = p.state_costs()  # shared by the DP and the MILP's bound tightening
    dp = solve_fleet_dp(p, costs)
    try:
        out = solve_fleet_milp(p, time_limit_s=time_limit_s, warm_start=dp, solver=solver, costs=costs)
        out.dp_objective_g = dp.objective_g
        out.reason = "milp optimal" if out.optimal else f"milp feasible at time limit (gap {out.gap:.2%})"
        if out.objective_g > dp.objective_g * (1 + 1e-9):
            dp.method, dp.reason = "dp-fallback", f"solver stopped at a worse plan ({out.reason}); exact DP plan used"
            out = dp
    except PlanInfeasible:
        raise
    except Exception as e:
        dp.method, dp.reason = "dp-fallback", f"solver did not finish ({e}); exact DP plan used"
        out = dp
    return out


def fleet_problem(types: Sequence[GPUType], *, intensity: Sequence[float], load_rps: Sequence[float],
                  caches: Sequence[CacheOption], slo, prompt_tokens: float, output_tokens: float,
                  slot_hours: float = 1.0, alpha_g_per_replica: float = 20.0, beta_g_per_gb: float = 0.05,
                  initial_counts: Optional[Sequence[int]] = None, initial_capacity_gb: float = 0.0,
                  min_total_replicas: int = 1, storage_carbon: Optional[CarbonConfig] = None,
                  perfs: Optional[Sequence] = None) -> FleetProblem:
    """The planner's problem for real GPU types: W_kc and μ_kc from each type's profile and the
    SLO, f/b from each type's carbon figures; α is per GPU (a 4-GPU replica costs 4α to switch)."""
    ftypes = []
    for i, t in enumerate(types):
        perf = perfs[i] if perfs is not None else t.perf()
        work = np.array([perf.work_s(prompt_tokens, output_tokens, c.hit_ratio) for c in caches])
        rate = np.array([slo_rate(perf, slo, prompt_tokens, output_tokens, c.hit_ratio) for c in caches])
        ftypes.append(FleetType(name=t.name, max_count=t.count, carbon=t.carbon, work_s=work, rate_rps=rate,
                                embodied_scale=t.embodied_scale(),
                                alpha_g_per_replica=alpha_g_per_replica * t.carbon.gpus_per_replica))
    return FleetProblem(slot_hours=slot_hours, arrival_rps=list(load_rps), intensity=list(intensity), types=ftypes,
                        caches=caches, storage_carbon=storage_carbon or CarbonConfig(), beta_g_per_gb=beta_g_per_gb,
                        initial_counts=initial_counts, initial_capacity_gb=initial_capacity_gb,
                        min_total_replicas=min_total_replicas)
