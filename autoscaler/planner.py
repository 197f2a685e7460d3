"""The carbon planner: a mixed-integer program over replica count and cache configuration.

Notation (slot t = 1..T of Δ hours; replica options r ∈ R; cache configurations c ∈ C):

    λ_t      forecast arrival rate (requests/s)          CI_t   grid intensity (g/kWh)
    W(c)     GPU-seconds per request = prefill_s·(1−h(c)) + decode_s, h(c) the token hit ratio
    rmin_tc  fewest replicas meeting the TTFT/TPOT SLO with cache c at load λ_t
    P_idle, P_busy   replica power idle / busy (W)       PUE
    P_st(c)  storage power of configuration c (W)        e_rep, e_st(c)  embodied (g/h)
    cap(c)   capacity of c (GB, on SSD)                  α, β   switching cost (g per replica,
                                                                g per GB changed)

The power and embodied terms are priced by `CarbonConfig.footprint` (autoscaler/carbon.py),
the one carbon-cost function that the live ledger and the simulator also use.

Variables: x[t,r] ∈ {0,1} (run r replicas in slot t), y[t,c] ∈ {0,1} (use configuration c),
u_t, v_t ≥ 0 (replica and capacity change magnitudes).

Objective (grams CO2e), minimised:

    Σ_t  CI_t·PUE·Δ/1000 · ( P_idle·Σ_r r·x[t,r] + (P_busy−P_idle)·λ_t·Σ_c W(c)·y[t,c] + Σ_c P_st(c)·y[t,c] )
       + Δ·( e_rep·Σ_r r·x[t,r] + Σ_c e_st(c)·y[t,c] )
       + α·u_t + β·v_t

λ_t·W(c) is the average number of busy replicas' worth of GPU work, so the busy-power term is
linear in y (λ_t is data). Constraints (numbered as in the code):

    (1) Σ_r x[t,r] = 1                                   one replica option per slot
    (2) Σ_c y[t,c] = 1                                   one cache configuration per slot
    (3) Σ_r r·x[t,r] ≥ Σ_c rmin_tc·y[t,c]                SLO
    (4) u_t ≥ ±(Σ_r r·x[t,r] − Σ_r r·x[t−1,r]),  v_t ≥ ±(Σ_c cap(c)·y[t,c] − Σ_c cap(c)·y[t−1,c]);
        slot 0 is the current state (r0, cap0)
    (5) optional: (5a) total objective without switching ≤ carbon budget; (5b) min/max replicas
        (options outside are dropped); (5c) |replicas_t − replicas_{t−1}| ≤ max_change

Receding horizon: apply slot 1, re-plan next interval. Without (5a) the problem is a shortest
path over (r, c) states, solved exactly by `solve_dp`. The switching cost is separable and L1
in both coordinates, so the best predecessor of every state comes from two L1 distance
transforms (one along capacities, one along replica counts) that also carry their argmins:
O(T·|R|·|C|) in all. With (5c) the replica step is a windowed minimum, done directly in
O(T·|R|²·|C|). The DP is the test oracle, the MILP's warm start, and the fallback when the
solver times out or fails. `plan` never blocks longer than its time limit plus the DP.
An infeasible problem raises `PlanInfeasible` saying what to relax.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from autoscaler.carbon import CarbonConfig


class PlanInfeasible(ValueError):
    """No plan satisfies the constraints; the message says which one to relax."""


@dataclass
class CacheOption:
    name: str
    capacity_gb: float  # SSD capacity: priced as storage, and the switching cost (4)
    hit_ratio: float  # token-weighted h(c)


@dataclass
class PlanProblem:
    slot_hours: float
    arrival_rps: Sequence[float]  # λ_t
    intensity: Sequence[float]  # CI_t
    replica_options: Sequence[int]  # R
    caches: Sequence[CacheOption]  # C
    rmin: np.ndarray  # [T, C] ints
    prefill_s: float  # GPU-seconds of prefill per request with no cache hit
    decode_s: float  # GPU-seconds of decode per request
    carbon: CarbonConfig  # power, PUE and embodied factors (P_idle, P_busy, P_st, e_rep, e_st)
    alpha_g_per_replica: float = 0.0
    beta_g_per_gb: float = 0.0
    initial_replicas: int = 1
    initial_capacity_gb: float = 0.0
    carbon_budget_g: Optional[float] = None
    min_replicas: Optional[int] = None
    max_replicas: Optional[int] = None
    max_change: Optional[int] = None

    @property
    def T(self) -> int:
        return len(self.arrival_rps)

    def work_s(self) -> np.ndarray:
        """W(c), GPU-seconds per request."""
        return np.array([self.prefill_s * (1 - c.hit_ratio) + self.decode_s for c in self.caches])

    def options(self) -> list[int]:
        opts = [r for r in self.replica_options
                if (self.min_replicas is None or r >= self.min_replicas)
                and (self.max_replicas is None or r <= self.max_replicas)]
        if not opts:
            raise PlanInfeasible(f"no replica option in {list(self.replica_options)} lies within "
                                 f"[min_replicas={self.min_replicas}, max_replicas={self.max_replicas}]: "
                                 "widen the bounds or add options")
        return sorted(opts)

    def replica_cost(self) -> np.ndarray:
        """[T, R-option index]: grams of running r replicas through slot t (idle power, embodied)."""
        R = np.array(self.options(), dtype=float)
        ci = np.asarray(self.intensity, dtype=float)
        fp = self.carbon.footprint(intensity_g_per_kwh=ci[:, None], replica_hours=R[None, :] * self.slot_hours)
        return fp.total_g

    def cache_cost(self) -> np.ndarray:
        """[T, C]: grams of cache c through slot t: the busy power its hit ratio leaves, and its storage."""
        lam = np.asarray(self.arrival_rps, dtype=float)
        ci = np.asarray(self.intensity, dtype=float)
        caps = np.array([c.capacity_gb for c in self.caches])
        busy_replica_h = lam[:, None] * self.work_s()[None, :] * self.slot_hours  # λ_t·W(c)·Δ
        fp = self.carbon.footprint(intensity_g_per_kwh=ci[:, None], busy_wh=self.carbon.busy_extra_w() * busy_replica_h,
                                   ssd_gb_hours=caps[None, :] * self.slot_hours)
        return fp.total_g

    def slot_cost(self) -> np.ndarray:
        """Operational + embodied grams per (t, r-option index, c) without switching; inf where (3) fails."""
        R = np.array(self.options(), dtype=float)
        cost = self.replica_cost()[:, :, None] + self.cache_cost()[:, None, :]  # [T,R,C]
        feasible = R[None, :, None] >= np.asarray(self.rmin)[:, None, :]
        return np.where(feasible, cost, np.inf)


@dataclass
class Plan:
    replicas: list[int]
    cache: list[int]  # index into problem.caches
    objective_g: float
    method: str  # "milp", "dp", "dp-fallback"
    solve_s: float
    optimal: bool
    gap: float = 0.0
    dp_objective_g: Optional[float] = None
    reason: str = ""
    breakdown: dict = field(default_factory=dict)


def l1_transform(f: np.ndarray, pos: np.ndarray, w: float, axis: int,
                 w_down: Optional[float] = None) -> tuple[np.ndarray, np.ndarray]:
    """g_i = min_j f_j + w·|pos_i − pos_j| along `axis` (positions sorted ascending), and the
    argmin j: one forward and one backward pass, O(n) per line. With `w_down`, moving from j
    down to i (pos_i < pos_j) costs w_down per unit instead (the forward pass carries the moves
    up, the backward pass the moves down; a path that goes up then down never costs less than
    the direct move, so the result stays exact)."""
    w_down = w if w_down is None else w_down
    g = np.moveaxis(f.copy(), axis, 0)
    arg = np.broadcast_to(np.arange(g.shape[0]).reshape((-1,) + (1,) * (g.ndim - 1)), g.shape).copy()
    for order in (range(1, g.shape[0]), range(g.shape[0] - 2, -1, -1)):
        for i in order:
            j = i - 1 if order.step == 1 else i + 1
            cand = g[j] + (w if order.step == 1 else w_down) * abs(pos[i] - pos[j])
            better = cand < g[i]
            g[i] = np.where(better, cand, g[i])
            arg[i] = np.where(better, arg[j], arg[i])
    return np.moveaxis(g, 0, axis), np.moveaxis(arg, 0, axis)


def _best_predecessor(V: np.ndarray, R: np.ndarray, caps: np.ndarray, p: "PlanProblem") -> tuple[np.ndarray, ...]:
    """For every state (r, c): min over (r', c') of V[r', c'] + α|R_r − R_r'| + β|cap_c − cap_c'|,
    and the argmins (r', c'). `caps` sorted ascending."""
    gc, argc = l1_transform(V, caps, p.beta_g_per_gb, axis=1)  # over c' for each r'
    if p.max_change is None:
        best, argr = l1_transform(gc, R, p.alpha_g_per_replica, axis=0)  # then over r'
    else:  # (5c): only predecessors within max_change replicas
        dist = np.abs(R[:, None] - R[None, :])  # [r, r']
        cand = gc[None, :, :] + p.alpha_g_per_replica * dist[:, :, None]  # [r, r', c]
        cand = np.where((dist <= p.max_change)[:, :, None], cand, np.inf)
        argr = np.argmin(cand, axis=1)
        best = np.take_along_axis(cand, argr[:, None, :], axis=1)[:, 0, :]
    return best, argr, np.take_along_axis(argc, argr, axis=0)


def solve_dp(p: PlanProblem) -> Plan:
    """Exact optimum of the problem without the carbon budget (5a), by dynamic programming."""
    t0 = time.perf_counter()
    R = np.array(p.options(), dtype=float)
    caps = np.array([c.capacity_gb for c in p.caches])
    order = np.argsort(caps, kind="stable")  # the L1 transform needs sorted positions
    cost = p.slot_cost()[:, :, order]  # [T,R,C] in capacity order
    caps_s = caps[order]
    T, nR, nC = cost.shape
    back = np.zeros((T, nR, nC, 2), dtype=np.int64)
    # slot 0's predecessor is the current state
    V = cost[0] + p.alpha_g_per_replica * np.abs(R - p.initial_replicas)[:, None] \
        + p.beta_g_per_gb * np.abs(caps_s - p.initial_capacity_gb)[None, :]
    if p.max_change is not None:
        V = np.where((np.abs(R - p.initial_replicas) <= p.max_change)[:, None], V, np.inf)
    for t in range(1, T):
        best, back[t, :, :, 0], back[t, :, :, 1] = _best_predecessor(V, R, caps_s, p)
        V = cost[t] + best
    if not np.isfinite(V).any():
        raise PlanInfeasible(_explain(p))
    r_i, c_i = np.unravel_index(int(np.argmin(V)), V.shape)
    obj = float(V[r_i, c_i])
    rs, cs = [0] * T, [0] * T
    for t in range(T - 1, -1, -1):
        rs[t], cs[t] = int(r_i), int(c_i)
        if t > 0:
            r_i, c_i = back[t, r_i, c_i]
    return Plan(replicas=[int(R[i]) for i in rs], cache=[int(order[i]) for i in cs], objective_g=obj, method="dp",
                solve_s=time.perf_counter() - t0, optimal=True, dp_objective_g=obj)


def _explain(p: PlanProblem) -> str:
    opts = p.options()
    rmin = np.asarray(p.rmin)
    for t in range(p.T):
        need = int(rmin[t].min())
        if need > max(opts):
            return (f"slot {t}: {p.arrival_rps[t]:.2f} req/s needs at least {need} replicas to meet the SLO even "
                    f"with the best cache, but at most {max(opts)} are allowed: raise max_replicas (or add "
                    "replica options) or relax the TTFT/TPOT SLO")
    if p.max_change is not None:
        return (f"max_change={p.max_change} replicas per slot cannot follow the load from {p.initial_replicas} "
                "replicas: raise max_change")
    return "no feasible (replicas, cache) sequence: relax the SLO or the replica bounds"


def plan_cost(p: PlanProblem, replicas: Sequence[int], cache: Sequence[int]) -> dict:
    """Evaluate a plan: grams by component (for checks, logs and the simulator)."""
    R = p.options()
    cost = p.slot_cost()
    slot = sum(cost[t, R.index(replicas[t]), cache[t]] for t in range(p.T))
    prev_r, prev_cap = p.initial_replicas, p.initial_capacity_gb
    switch = 0.0
    for t in range(p.T):
        cap = p.caches[cache[t]].capacity_gb
        switch += p.alpha_g_per_replica * abs(replicas[t] - prev_r) + p.beta_g_per_gb * abs(cap - prev_cap)
        prev_r, prev_cap = replicas[t], cap
    return {"slots_g": float(slot), "switching_g": float(switch), "total_g": float(slot + switch)}


def _milp_model(p: PlanProblem, solver: str, threads: int):
    """The MILP of the module docstring as a python-mip model; returns (model, x, y)."""
    import mip

    R = p.options()
    C = range(len(p.caches))
    T = range(p.T)
    caps = [c.capacity_gb for c in p.caches]
    rmin = np.asarray(p.rmin)
    m = mip.Model(sense=mip.MINIMIZE, solver_name=solver)
    m.verbose = 0
    m.threads = threads
    x = [[m.add_var(var_type=mip.BINARY) for _ in R] for _ in T]
    y = [[m.add_var(var_type=mip.BINARY) for _ in C] for _ in T]
    u = [m.add_var(lb=0) for _ in T]
    v = [m.add_var(lb=0) for _ in T]
    rep_cost, cache_cost = p.replica_cost(), p.cache_cost()  # the objective's coefficients
    slot_terms = [mip.xsum(float(rep_cost[t, i]) * x[t][i] for i in range(len(R)))
                  + mip.xsum(float(cache_cost[t, c]) * y[t][c] for c in C) for t in T]
    m.objective = mip.xsum(slot_terms) + mip.xsum(p.alpha_g_per_replica * u[t] + p.beta_g_per_gb * v[t] for t in T)
    for t in T:
        reps = mip.xsum(R[i] * x[t][i] for i in range(len(R)))
        capt = mip.xsum(caps[c] * y[t][c] for c in C)
        m += mip.xsum(x[t]) == 1, f"c1_one_replica_option_{t}"  # (1)
        m += mip.xsum(y[t]) == 1, f"c2_one_cache_config_{t}"  # (2)
        m += reps >= mip.xsum(int(rmin[t, c]) * y[t][c] for c in C), f"c3_slo_{t}"  # (3)
        prev_r = p.initial_replicas if t == 0 else mip.xsum(R[i] * x[t - 1][i] for i in range(len(R)))
        prev_c = p.initial_capacity_gb if t == 0 else mip.xsum(caps[c] * y[t - 1][c] for c in C)
        m += u[t] >= reps - prev_r, f"c4_u_up_{t}"  # (4)
        m += u[t] >= prev_r - reps, f"c4_u_down_{t}"
        m += v[t] >= capt - prev_c, f"c4_v_up_{t}"
        m += v[t] >= prev_c - capt, f"c4_v_down_{t}"
        if p.max_change is not None:  # (5c)
            m += reps - prev_r <= p.max_change, f"c5c_up_{t}"
            m += prev_r - reps <= p.max_change, f"c5c_down_{t}"
    if p.carbon_budget_g is not None:  # (5a)
        m += mip.xsum(slot_terms) <= p.carbon_budget_g, "c5a_carbon_budget"
    return m, x, y


def _budget_infeasible(p: PlanProblem) -> PlanInfeasible:
    cost = p.slot_cost().reshape(p.T, -1)
    if p.carbon_budget_g is not None and np.isfinite(cost.min(axis=1)).all():
        floor = float(cost.min(axis=1).sum())
        return PlanInfeasible(f"carbon budget {p.carbon_budget_g:.0f} g is below what the SLO allows: even the "
                              f"cleanest SLO-feasible choice in every slot emits {floor:.0f} g (switching "
                              "excluded): raise the budget or relax the SLO")
    return PlanInfeasible(_explain(p))


def solve_milp(p: PlanProblem, *, time_limit_s: float = 5.0, warm_start: Optional[Plan] = None,
               solver: str = "CBC", threads: int = 1) -> Plan:
    """Solve the MILP in the module docstring with python-mip (imported here: only the planner needs it)."""
    import mip

    t_start = time.perf_counter()
    R, C, T = p.options(), range(len(p.caches)), range(p.T)
    m, x, y = _milp_model(p, solver, threads)
    if warm_start is not None:
        m.start = [(x[t][i], 1.0 if warm_start.replicas[t] == r else 0.0) for t in T for i, r in enumerate(R)] + \
                  [(y[t][c], 1.0 if warm_start.cache[t] == c else 0.0) for t in T for c in C]
    status = m.optimize(max_seconds=time_limit_s)
    solve_s = time.perf_counter() - t_start
    if status == mip.OptimizationStatus.INFEASIBLE:
        raise _budget_infeasible(p)
    if status not in (mip.OptimizationStatus.OPTIMAL, mip.OptimizationStatus.FEASIBLE):
        raise TimeoutError(f"solver returned {status.name} in {solve_s:.2f}s")
    reps = [R[max(range(len(R)), key=lambda i: x[t][i].x)] for t in T]
    cache = [max(C, key=lambda c: y[t][c].x) for t in T]
    obj = float(m.objective_value)
    bound = float(m.objective_bound)
    gap = abs(obj - bound) / max(abs(obj), 1e-9)
    return Plan(replicas=reps, cache=cache, objective_g=obj, method="milp", solve_s=solve_s,
                optimal=status == mip.OptimizationStatus.OPTIMAL, gap=gap)


def plan(p: PlanProblem, *, time_limit_s: float = 5.0, solver: str = "CBC", warm_start: bool = True) -> Plan:
    """Receding-horizon plan: MILP with the DP plan as warm start; the DP plan if the solver
    times out or fails (budget permitting). Never raises for solver trouble, only for
    infeasibility."""
    dp = solve_dp(p)
    try:
        out = solve_milp(p, time_limit_s=time_limit_s, warm_start=dp if warm_start else None, solver=solver)
        out.dp_objective_g = dp.objective_g
        out.reason = "milp optimal" if out.optimal else f"milp feasible at time limit (gap {out.gap:.2%})"
    except PlanInfeasible:
        raise
    except Exception as e:  # timeout, solver failure
        if p.carbon_budget_g is not None and plan_cost(p, dp.replicas, dp.cache)["slots_g"] > p.carbon_budget_g:
            raise PlanInfeasible(f"solver failed ({e}) and the exact budget-free plan exceeds the carbon budget: "
                                 "raise the budget or the solver time limit") from e
        dp.method = "dp-fallback"
        dp.reason = f"solver did not finish ({e}); exact DP plan used"
        out = dp
    out.breakdown = plan_cost(p, out.replicas, out.cache)
    return out
