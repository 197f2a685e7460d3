"""Mixed GPU fleets (autoscaler/fleet.py): the catalogue, the exact DP against brute force, the
MILP against the DP (cold, so the DP's bounds do not help it), the one-type case against the
single-type planner, and what the reuse parameter changes."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest

from autoscaler.carbon import GPU_POWER, CarbonConfig
from autoscaler.fleet import (FleetProblem, FleetType, fleet_plan_cost, fleet_problem, plan_fleet, slo_rate,
                              solve_fleet_dp, solve_fleet_milp)
from autoscaler.gpu_types import CATALOGUE, load_catalogue, parse_fleet
from autoscaler.instances import random_fleet_problem
from autoscaler.perf_model import SLO
from autoscaler.planner import CacheOption, PlanInfeasible, PlanProblem, solve_dp


def test_the_catalogue_prices_both_types_for_both_models_from_the_shipped_profiles():
    raw = json.loads(CATALOGUE.read_text())["types"]
    for model in ("llama3-8b", "llama3-70b"):
        cat = load_catalogue(model)
        assert set(cat) == {"h100", "a100"}
        for name, t in cat.items():
            assert raw[name]["power_w"] == {"prefill": t.carbon.power.prefill_w, "decode": t.carbon.power.decode_w,
                                            "idle": t.carbon.power.idle_w}
            assert t.carbon.gpus_per_replica == (4 if model == "llama3-70b" else 1)
        h, a = cat["h100"].perf(), cat["a100"].perf()
        # the older generation is slower at every prompt length and batch the profiles cover
        assert all(a.prefill_s(n) > h.prefill_s(n) for n in (256, 1024, 4096))
        assert a.decode_step_s(16, 1024) > h.decode_step_s(16, 1024)
    assert cat["a100"].carbon.replica_embodied_g_per_h() < cat["h100"].carbon.replica_embodied_g_per_h()


def test_fleet_spec_parses_counts_and_reuse_and_refuses_nonsense():
    h, a = parse_fleet("h100:8,a100:4:reuse=0.25")
    assert (h.count, a.count, h.past_lifetime, a.past_lifetime) == (8, 4, False, True)
    assert a.embodied_scale() == 0.25 and h.embodied_scale() == 1.0
    assert parse_fleet("a100:2:reuse")[0].embodied_scale() == 0.0
    for bad, why in (("v100:2", "unknown GPU type"), ("h100", "needs a count"), ("h100:2:cheap", "unknown --fleet flag"),
                     ("", "names no GPU type"), ("h100:4,h100:4", "twice")):
        with pytest.raises(ValueError, match=why):
            parse_fleet(bad)


def test_slo_rate_is_the_single_type_planners_rmin():
    perf = load_catalogue("llama3-8b")["h100"].perf()
    slo = SLO(ttft_s=0.5, tpot_s=0.05)
    for hit in (0.0, 0.6):
        mu = slo_rate(perf, slo, 2048, 256, hit)
        for lam in (0.5, 3.0, 11.0, 26.0):
            assert perf.rmin(lam, 2048, 256, hit, slo) == max(1, int(np.ceil(lam / mu - 1e-9)))


def _brute_force(p: FleetProblem) -> float:
    states = [s for s in itertools.product(*[range(k.max_count + 1) for k in p.types], range(len(p.caches)))]
    best = np.inf
    for plan in itertools.product(states, repeat=p.T):
        cost = fleet_plan_cost(p, [s[:-1] for s in plan], [s[-1] for s in plan])["total_g"]
        best = min(best, cost)
    return best


@pytest.mark.parametrize("seed", range(3))
def test_dp_is_exact_against_brute_force(seed):
    p = random_fleet_problem(seed, slots=3, n_cache=3, counts=(2, 2))
    dp = solve_fleet_dp(p)
    assert dp.objective_g == pytest.approx(_brute_force(p), rel=1e-9)
    assert fleet_plan_cost(p, dp.counts, dp.cache)["total_g"] == pytest.approx(dp.objective_g, rel=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_milp_cold_finds_the_dp_optimum_and_its_split_serves_the_load(seed):
    p = random_fleet_problem(seed, slots=6, n_cache=5, counts=(3, 3))
    dp = solve_fleet_dp(p)
    cold = solve_fleet_milp(p, time_limit_s=60)
    assert cold.optimal
    assert cold.objective_g == pytest.approx(dp.objective_g, rel=1e-6)
    warm = plan_fleet(p, time_limit_s=60)
    assert warm.method == "milp" and warm.optimal and warm.objective_g == pytest.approx(dp.objective_g, rel=1e-6)
    for t in range(p.T):
        assert sum(cold.split_rps[t]) == pytest.approx(p.arrival_rps[t], rel=1e-6)
        for k, typ in enumerate(p.types):  # no replica above its SLO rate under the chosen cache
            assert cold.split_rps[t][k] <= typ.rate_rps[cold.cache[t]] * cold.counts[t][k] * (1 + 1e-6) + 1e-9


def test_one_type_is_the_single_type_planner():
    # (without a replica switching cost: the fleet planner charges starts only, the single-type
    # planner starts and stops alike; the cache's switching cost is the same in both)
    rng = np.random.default_rng(3)
    caps = [0.0, 200.0, 600.0, 1500.0]
    hit = [0.0, 0.3, 0.5, 0.6]
    caches = [CacheOption(f"c{i}", c, h) for i, (c, h) in enumerate(zip(caps, hit))]
    prefill_s, decode_s = 0.6, 1.2
    work = np.array([prefill_s * (1 - h) + decode_s for h in hit])
    lam = rng.uniform(0.3, 3.5, 12)
    ci = rng.uniform(30, 500, 12)
    carbon = CarbonConfig()
    single = PlanProblem(slot_hours=1.0, arrival_rps=lam.tolist(), intensity=ci.tolist(), replica_options=list(range(1, 9)),
                         caches=caches, rmin=np.ceil(lam[:, None] * work[None, :] / 0.7).astype(int), prefill_s=prefill_s,
                         decode_s=decode_s, carbon=carbon, alpha_g_per_replica=0.0, beta_g_per_gb=0.2,
                         initial_replicas=3, initial_capacity_gb=200.0)
    fleet = FleetProblem(slot_hours=1.0, arrival_rps=lam.tolist(), intensity=ci.tolist(), caches=caches,
                         types=[FleetType("h100", 8, carbon, work, 0.7 / work)],
                         storage_carbon=carbon, beta_g_per_gb=0.2, initial_counts=[3], initial_capacity_gb=200.0)
    a, b = solve_dp(single), solve_fleet_dp(fleet)
    assert b.objective_g == pytest.approx(a.objective_g, rel=1e-9)
    assert [c[0] for c in b.counts] == a.replicas


def _two_types(reuse: bool, ci: float) -> FleetProblem:
    types = parse_fleet("h100:6,a100:6" + (":reuse" if reuse else ""))
    caches = [CacheOption("none", 0.0, 0.0), CacheOption("ssd", 400.0, 0.5)]
    return fleet_problem(types, intensity=[ci] * 6, load_rps=[3.0, 6.0, 9.0, 9.0, 6.0, 3.0], caches=caches,
                         slo=SLO(ttft_s=2.0, tpot_s=0.1), prompt_tokens=2048, output_tokens=256,
                         alpha_g_per_replica=2.0)


def test_reuse_makes_old_gpus_worth_running_where_embodied_carbon_dominates():
    # On a clean grid most of a replica's carbon is embodied: once the A100s' is paid for,
    # the plan moves load onto them; charged in full, it keeps them off.
    fresh, reused = plan_fleet(_two_types(False, 20.0)), plan_fleet(_two_types(True, 20.0))
    assert sum(c[1] for c in fresh.counts) == 0
    assert sum(c[1] for c in reused.counts) > 0
    assert reused.objective_g < fresh.objective_g
    # both plans keep every replica within its SLO rate
    for pl, p in ((fresh, _two_types(False, 20.0)), (reused, _two_types(True, 20.0))):
        for t in range(p.T):
            assert sum(k.rate_rps[pl.cache[t]] * n for k, n in zip(p.types, pl.counts[t])) >= p.arrival_rps[t]


def test_a_load_beyond_the_whole_fleet_says_what_to_relax():
    p = _two_types(False, 100.0)
    p.arrival_rps = [500.0] * p.T
    with pytest.raises(PlanInfeasible, match="add GPUs to the fleet or relax"):
        plan_fleet(p)


def test_gpu_power_table_matches_the_catalogue():
    raw = json.loads(CATALOGUE.read_text())["types"]
    for name, t in raw.items():
        assert GPU_POWER[t["power_key"]].prefill_w == t["power_w"]["prefill"]


def test_plan_cli_answers_which_gpus_to_run_when(capsys):
    from greencache import cli

    def run(fleet: str) -> dict:
        assert cli.main(["plan", "--fleet", fleet, "--grid", "FR", "--hours", "12", "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    fresh, reused = run("h100:8,a100:8"), run("h100:8,a100:8:reuse")
    for out in (fresh, reused):
        assert out["optimal"] and out["objective_g"] == pytest.approx(out["dp_objective_g"], rel=1e-6)
        for s in out["slots"]:
            assert sum(s["load_rps"].values()) == pytest.approx(s["arrival_rps"], rel=1e-6)
            assert all(0 <= n <= 8 for n in s["replicas"].values())
    # France's grid is clean: embodied carbon decides, and A100s already paid for win
    assert sum(s["replicas"]["a100"] for s in reused["slots"]) > sum(s["replicas"]["a100"] for s in fresh["slots"])
    assert reused["objective_g"] < fresh["objective_g"]
    assert cli.main(["plan", "--fleet", "h100:8,tpu:2"]) == 2
    assert "unknown GPU type 'tpu'" in capsys.readouterr().err


def test_stopping_is_free_so_a_useless_replica_is_stopped_at_once():
    # 6 replicas of each type running, load for one: every plan stops the rest in slot 0, even
    # though starting costs far more than an idle hour (a cost on stopping would keep them)
    p = _two_types(False, 300.0)
    p.arrival_rps = [1.0] * p.T
    p.initial_counts = [6, 6]
    for k in p.types:
        k.alpha_g_per_replica = 1000.0
    out = plan_fleet(p)
    assert sum(out.counts[0]) == 1
    assert fleet_plan_cost(p, out.counts, out.cache)["switching_g"] == 0.0
