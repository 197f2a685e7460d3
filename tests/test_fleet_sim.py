"""Mixed GPU fleets in the simulator: per-type accounting, the router across types, the
`ecoserve` policy and `greencache simulate --fleet`."""

from __future__ import annotations

import json

import pytest

from autoscaler.policies import StaticPolicy
from autoscaler.simulator import SimConfig, Simulation, simulate
from autoscaler.workloads import load_trace


def Fixed(counts: dict, capacity_gb: float) -> StaticPolicy:
    """A fixed fleet and cache size."""
    return StaticPolicy("fixed", 0, capacity_gb, counts=counts)


@pytest.fixture(scope="module")
def trace():
    return load_trace("mooncake-conversation", days=0.25, rps=1.0)


def test_one_type_fleet_accounts_exactly_as_the_single_type_simulation(trace):
    plain = Simulation(trace, SimConfig(model="llama3-70b", grid="DE"))
    fleet = Simulation(trace, SimConfig(model="llama3-70b", grid="DE", fleet="h100:8"))
    a = plain.run(Fixed({"h100": 6}, plain.full_capacity_gb))
    b = fleet.run(Fixed({"h100": 6}, fleet.full_capacity_gb))
    for k in ("total_kg", "operational_kg", "embodied_kg", "slo_attainment", "replica_hours", "hit_ratio"):
        assert getattr(b, k) == pytest.approx(getattr(a, k), rel=1e-9), k


def test_reuse_charges_no_embodied_carbon_for_old_gpus_and_changes_nothing_else(trace):
    runs = {}
    for reuse in ("", ":reuse"):
        sim = Simulation(trace, SimConfig(model="llama3-70b", grid="FR", fleet=f"h100:4,a100:8{reuse}"))
        runs[reuse] = (sim, sim.run(Fixed({"h100": 3, "a100": 6}, sim.full_capacity_gb)))
    (s0, fresh), (_, reused) = runs[""], runs[":reuse"]
    assert reused.slo_attainment == fresh.slo_attainment and reused.operational_kg == pytest.approx(fresh.operational_kg)
    a100 = s0.types[1].carbon
    a100_embodied_kg = fresh.replica_hours_by_type["a100"] * a100.replica_embodied_g_per_h() / 1000
    assert a100_embodied_kg > 0
    assert fresh.embodied_kg - reused.embodied_kg == pytest.approx(a100_embodied_kg, rel=1e-9)


def test_the_router_uses_the_slow_type_only_when_it_would_answer_first(trace):
    sim = Simulation(trace, SimConfig(model="llama3-70b", grid="FR", fleet="h100:8,a100:8"))

    def a100_share(counts: dict) -> float:
        sim.run(Fixed(counts, sim.full_capacity_gb))
        busy = sim.last_ledger.busy_j_by
        return busy["a100"].sum() / (busy["a100"].sum() + busy["h100"].sum())

    # H100s to spare: the A100 only takes what arrives while every H100 is busy
    assert a100_share({"h100": 8, "a100": 1}) < 0.1
    # one H100 queues: the A100s answer first for most requests
    assert a100_share({"h100": 1, "a100": 8}) > 0.5


def test_ecoserve_rightsizes_per_type_without_a_cache(trace):
    out = simulate(trace, SimConfig(model="llama3-70b", grid="DE", fleet="h100:12,a100:12"),
                   ["static", "ecoserve", "joint-milp"])
    eco, joint = out["policies"]["ecoserve"], out["policies"]["joint-milp"]
    assert eco["mean_capacity_gb"] == 0 and eco["hit_ratio"] == 0
    assert set(eco["replica_hours_by_type"]) == {"h100", "a100"}
    tl = out["timelines"]["ecoserve"]["replicas_by_type"]
    assert len(set(zip(tl["h100"], tl["a100"]))) > 1  # it resizes the fleet as load and carbon change
    assert max(tl["h100"]) <= 12 and max(tl["a100"]) <= 12
    assert joint["mean_capacity_gb"] > 0  # the joint planner sizes the cache on the same fleet
    assert out["fleet"] == "h100:12,a100:12"


def test_simulate_cli_takes_a_fleet(capsys):
    from greencache import cli

    rc = cli.main(["simulate", "--fleet", "h100:4,a100:4:reuse", "--model", "llama3-70b", "--days", "0.1",
                   "--policies", "ecoserve,joint-milp", "--workers", "1", "--quiet", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out["policies"]) == {"ecoserve", "joint-milp"}
    assert all(set(p["replica_hours_by_type"]) == {"h100", "a100"} for p in out["policies"].values())
    assert cli.main(["simulate", "--fleet", "h100:4,v100:2", "--days", "0.1", "--quiet"]) == 2
    assert "unknown GPU type 'v100'" in capsys.readouterr().err
