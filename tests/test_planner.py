"""The MILP planner against the exact DP oracle, its fallback, and its infeasibility messages."""

from __future__ import annotations

import numpy as np
import pytest

from autoscaler.carbon import CarbonConfig
from autoscaler.instances import random_problem
from autoscaler.planner import PlanInfeasible, plan, plan_cost, solve_dp, solve_milp


@pytest.mark.parametrize("seed", range(12))
def test_milp_objective_equals_dp_oracle(seed):
    rng = np.random.default_rng(seed)
    p = random_problem(seed, slots=int(rng.integers(3, 16)), n_cache=int(rng.integers(2, 9)),
                       n_replica=int(rng.integers(2, 7)),
                       max_change=None if seed % 3 else int(rng.integers(2, 6)))
    try:
        dp = solve_dp(p)
    except PlanInfeasible:
        with pytest.raises(PlanInfeasible):  # the oracle and the MILP agree on infeasibility too
            solve_milp(p, time_limit_s=30)
        return
    milp = solve_milp(p, time_limit_s=30, warm_start=None)  # cold: the solver must find it itself
    assert milp.optimal
    assert abs(milp.objective_g - dp.objective_g) <= 1e-6 * max(1.0, abs(dp.objective_g))
    # both plans are what they claim: re-evaluating them gives their objectives
    assert abs(plan_cost(p, dp.replicas, dp.cache)["total_g"] - dp.objective_g) < 1e-6 * max(1, dp.objective_g)
    assert abs(plan_cost(p, milp.replicas, milp.cache)["total_g"] - milp.objective_g) < 1e-5 * max(1, dp.objective_g)


def test_plans_respect_slo_and_bounds():
    p = random_problem(3, slots=24, n_cache=8, n_replica=6, min_replicas=2, max_change=3)
    out = plan(p, time_limit_s=10)
    opts = p.options()
    for t, (r, c) in enumerate(zip(out.replicas, out.cache)):
        assert r in opts and r >= 2
        assert r >= p.rmin[t, c]  # (3) SLO
    prev = p.initial_replicas
    for r in out.replicas:
        assert abs(r - prev) <= 3  # (5c)
        prev = r


def test_switching_costs_damp_changes():
    free = solve_dp(random_problem(5, slots=24, n_cache=8, n_replica=6, alpha_g_per_replica=0.0, beta_g_per_gb=0.0))
    costly = solve_dp(random_problem(5, slots=24, n_cache=8, n_replica=6, alpha_g_per_replica=1e6, beta_g_per_gb=1e4))
    changes = lambda pl: sum(a != b for a, b in zip(pl.replicas, pl.replicas[1:])) + sum(
        a != b for a, b in zip(pl.cache, pl.cache[1:]))
    assert changes(costly) <= changes(free)
    assert changes(costly) <= 2


def test_cleaner_grid_keeps_less_cache_when_storage_is_dear():
    # Same load; a very clean grid makes prefill nearly free, so paying embodied carbon for a
    # big cache does not pay off; a dirty grid makes the cache worth it.
    dear = CarbonConfig(ssd_embodied_kg_per_gb=20 * CarbonConfig().ssd_embodied_kg_per_gb)
    kw = dict(slots=6, n_cache=8, n_replica=6, alpha_g_per_replica=0, beta_g_per_gb=0, carbon=dear)
    base = random_problem(7, **kw)
    clean = solve_dp(random_problem(7, intensity=[5.0] * 6, **kw))
    dirty = solve_dp(random_problem(7, intensity=[700.0] * 6, **kw))
    cap = lambda pl: sum(base.caches[c].capacity_gb for c in pl.cache)
    assert cap(clean) <= cap(dirty)


def test_solver_timeout_falls_back_to_dp(monkeypatch):
    import autoscaler.planner as planner

    p = random_problem(11, slots=24, n_cache=16, n_replica=8)

    def too_slow(*a, **k):
        raise TimeoutError("solver returned NO_SOLUTION_FOUND in 0.01s")

    monkeypatch.setattr(planner, "solve_milp", too_slow)
    out = plan(p, time_limit_s=0.01)
    assert out.method == "dp-fallback" and "did not finish" in out.reason
    assert out.objective_g == pytest.approx(solve_dp(p).objective_g)


def test_real_solver_time_limit_yields_a_plan():
    p = random_problem(12, slots=96, n_cache=64, n_replica=16)
    out = plan(p, time_limit_s=0.001, warm_start=False)  # far too little time for CBC
    assert out.method in ("dp-fallback", "milp")
    assert out.objective_g == pytest.approx(solve_dp(p).objective_g, rel=0.05)
    assert len(out.replicas) == 96


def test_infeasible_slo_says_what_to_relax():
    p = random_problem(2, slots=6, n_cache=4, n_replica=4)
    p.rmin = np.full_like(np.asarray(p.rmin), 1000)
    with pytest.raises(PlanInfeasible, match="raise max_replicas"):
        plan(p)


def test_infeasible_budget_says_what_to_relax():
    p = random_problem(2, slots=6, n_cache=4, n_replica=4, carbon_budget_g=1.0)
    with pytest.raises(PlanInfeasible, match="raise the budget"):
        plan(p, time_limit_s=10)


def test_budget_constrains_the_plan():
    # Find (deterministically) an instance where switching costs make the budget-free plan
    # emit more slot carbon than the cleanest per-slot choices, so a budget in between binds.
    for seed in range(100):
        p = random_problem(seed, slots=12, n_cache=6, n_replica=5, alpha_g_per_replica=400.0, beta_g_per_gb=5.0)
        free = solve_dp(p)
        slots_free = plan_cost(p, free.replicas, free.cache)["slots_g"]
        floor = float(p.slot_cost().reshape(p.T, -1).min(axis=1).sum())
        if slots_free - floor > 1.0:
            break
    else:
        raise AssertionError("no instance with a binding budget among 100 seeds")
    budget = (slots_free + floor) / 2
    p.carbon_budget_g = budget
    out = plan(p, time_limit_s=20)
    assert plan_cost(p, out.replicas, out.cache)["slots_g"] <= budget + 1e-6
    assert out.objective_g >= free.objective_g - 1e-6  # a budget can only cost more in total


def test_bad_replica_bounds_explained():
    p = random_problem(1, slots=4, n_cache=3, n_replica=3, min_replicas=100)
    with pytest.raises(PlanInfeasible, match="min_replicas"):
        plan(p)
