"""Mixed GPU fleets in simulation (#16): the planner choosing GPU generations, against EcoServe-style
provisioning and against the best static configuration in hindsight.

    python -m benchmarks.fleet_results              # ~25 min on 2 cores; writes simulate/fleet.json + fleet.md
    python -m benchmarks.fleet_results --quick      # half a day per run, a smoke check

For each model (Llama-3-8B on 1 GPU, Llama-3-70B on 4 GPUs per replica) × load (the Mooncake
conversation trace at 1 req/s, flat and with a diurnal cycle of amplitude 0.5) × the six grids:

- `joint-milp` and `ecoserve` on the H100s alone (`h100:N`), on H100s and A100s (`h100:N,a100:N`),
  and on H100s with A100s past their lifetime (`...,a100:N:reuse`, their embodied carbon 0);
- the best static configuration in hindsight for each result: the fixed (H100 count, A100 count,
  cache size) with the least carbon on that grid among those whose SLO attainment is at least
  the policy's own. Static configurations are simulated once per model × load (their serving does
  not depend on the grid) and priced per grid and per reuse case from their hourly ledgers.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Optional

import numpy as np

GRIDS = ("FR", "US-CAL-CISO", "DE", "US-TEX-ERCO", "US-MIDA-PJM", "IN-WE")
FLEET_SIZE = {"llama3-8b": 8, "llama3-70b": 12}  # replicas of each type available
LOADS = {"flat": 0.0, "diurnal": 0.5}
POLICIES = ("joint-milp", "ecoserve")


def static_fleet(counts: dict, capacity_gb: float):
    """A fixed fleet and cache size (a candidate for the best static configuration)."""
    from autoscaler.policies import StaticPolicy

    name = "static:" + ",".join(f"{k}{v}" for k, v in counts.items()) + f":{capacity_gb:g}GB"
    return StaticPolicy(name, 0, capacity_gb, counts=dict(counts))


def _fleets(model: str) -> dict[str, str]:
    n = FLEET_SIZE[model]
    return {"h100": f"h100:{n}", "h100+a100": f"h100:{n},a100:{n}", "h100+a100 reuse": f"h100:{n},a100:{n}:reuse"}


def _candidates(sim) -> list:
    """Fleets whose SLO capacity at the trace's peak lies between 0.6× and 2.5× the peak load
    (planner's per-type rate at each cache's provisioning hit ratio), on four cache sizes."""
    from autoscaler.fleet import slo_rate

    slo = sim.planner_slo()
    caps = [c for c in sim.capacities_gb if c == 0 or c >= sim.full_capacity_gb / 4]
    out = []
    for cap in caps:
        h = sim.hit_at(cap)
        mu = {t.name: slo_rate(sim.type_perf[t.name], slo, sim.effective_prompt, sim.mean_output, h) for t in sim.types}
        n = {t.name: t.count for t in sim.types}
        for nh in range(0, n["h100"] + 1):
            for na in range(0, n.get("a100", 0) + 1, 2 if n.get("a100", 0) > 8 else 1):
                if na and not mu.get("a100"):
                    continue  # A100s that cannot meet the SLO at this cache only add carbon
                capacity = mu["h100"] * nh + mu.get("a100", 0.0) * na
                if nh + na >= 1 and 0.6 * sim.peak_rps <= capacity <= 2.5 * sim.peak_rps:
                    out.append(static_fleet({"h100": nh, "a100": na}, cap))
    return out


_SIM = None


def _run_static(pol) -> tuple[str, dict, float, dict]:
    res = _SIM.run(pol)
    led = _SIM.last_ledger
    return pol.name, pol.counts, res.slo_attainment, {"rep_s_by": {k: v.copy() for k, v in led.rep_s_by.items()},
                                          "busy_j_by": {k: v.copy() for k, v in led.busy_j_by.items()},
                                          "gb_s": led.gb_s.copy()}


def _price(amounts: dict, sim, intensity: np.ndarray, reuse: bool) -> float:
    """kg CO2e of a static run's hourly amounts at `intensity`, A100 embodied × 0 when `reuse`."""
    H = len(amounts["gb_s"])
    ci = intensity[:H]
    kg = float(np.sum(sim.carbon.footprint(intensity_g_per_kwh=ci, ssd_gb_hours=amounts["gb_s"] / 3600).total_g))
    for t in sim.types:
        fp = t.carbon.footprint(intensity_g_per_kwh=ci, replica_hours=amounts["rep_s_by"][t.name] / 3600,
                                busy_wh=amounts["busy_j_by"][t.name] / 3600)
        scale = 0.0 if (reuse and t.name == "a100") else 1.0
        kg += float(np.sum(fp.operational_g) + scale * np.sum(fp.embodied_g))
    return kg / 1000


def main(argv: Optional[list[str]] = None) -> int:
    global _SIM
    import multiprocessing as mp

    from autoscaler.carbon_sources import TraceSource
    from autoscaler.simulator import SimConfig, Simulation
    from autoscaler.workloads import load_trace

    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=float, default=2.0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="benchmarks/results/simulate")
    ap.add_argument("--workers", type=int, default=2)
    a = ap.parse_args(argv)
    days = 0.5 if a.quick else a.days
    t_all = time.time()
    rows, statics_out = [], {}
    for model in FLEET_SIZE:
        fleets = _fleets(model)
        for load, diurnal in LOADS.items():
            trace = load_trace("mooncake-conversation", days=days, rps=1.0, diurnal=diurnal)
            # static configurations: simulated once, priced per grid
            _SIM = sim = Simulation(trace, SimConfig(model=model, grid="FR", fleet=fleets["h100+a100"]))
            cands = _candidates(sim)
            t0 = time.time()
            with mp.get_context("fork").Pool(a.workers) as pool:
                statics = pool.map(_run_static, cands)
            print(f"[fleet] {model} {load}: {len(statics)} static configurations in {time.time() - t0:.0f} s", flush=True)
            hours = sim.hours
            statics_out[f"{model}/{load}"] = [{"config": n, "slo_attainment": att} for n, _, att, _ in statics]
            for grid in GRIDS:
                ci = np.array(TraceSource.grid(grid).forecast(sim.start, hours))
                for fleet_name, spec in fleets.items():
                    gsim = Simulation(trace, SimConfig(model=model, grid=grid, fleet=spec))
                    for pol in POLICIES:
                        res = gsim.run(gsim.make_policy(pol))
                        reuse = fleet_name.endswith("reuse")
                        ok = [(_price(am, sim, ci, reuse), n, att) for n, counts, att, am in statics
                              if att >= res.slo_attainment and (fleet_name != "h100" or counts["a100"] == 0)]
                        best = min(ok) if ok else None
                        rows.append({
                            "model": model, "load": load, "grid": grid, "fleet": fleet_name, "policy": pol,
                            "total_kg": res.total_kg, "operational_kg": res.operational_kg,
                            "embodied_kg": res.embodied_kg, "slo_attainment": res.slo_attainment,
                            "replica_hours_by_type": res.replica_hours_by_type, "hit_ratio": res.hit_ratio,
                            "best_static": None if best is None else {"config": best[1], "total_kg": best[0],
                                                                      "slo_attainment": best[2]},
                            "reduction_vs_best_static_pct": None if best is None
                            else 100.0 * (best[0] - res.total_kg) / best[0]})
                print(f"[fleet] {model} {load} {grid} done ({time.time() - t_all:.0f} s)", flush=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    data = {"days": days, "trace": "mooncake-conversation", "rps": 1.0, "fleet_size": FLEET_SIZE, "rows": rows,
            "statics": statics_out, "wall_s": time.time() - t_all}
    (out / "fleet.json").write_text(json.dumps(data, indent=1) + "\n")
    table = render(rows)
    (out / "fleet.md").write_text(table)
    print(table)
    return 0


def render(rows: list[dict]) -> str:
    """One table per model × load: rows are grids, columns the policies on each fleet."""
    cols = [(f, p) for f in ("h100", "h100+a100", "h100+a100 reuse") for p in POLICIES]
    lines = []
    for model in FLEET_SIZE:
        for load in LOADS:
            sel = {(r["grid"], r["fleet"], r["policy"]): r for r in rows if r["model"] == model and r["load"] == load}
            if not sel:
                continue
            lines += [f"### {model}, {load} load", "",
                      "kg CO2e (SLO attainment; vs best static in hindsight, % less)", "",
                      "| grid | " + " | ".join(f"{p} on {f}" for f, p in cols) + " |",
                      "|---|" + "---|" * len(cols)]
            for g in GRIDS:
                cells = []
                for f, p in cols:
                    r = sel.get((g, f, p))
                    if r is None:
                        cells.append("-")
                        continue
                    red = r["reduction_vs_best_static_pct"]
                    cells.append(f"{r['total_kg']:.2f} ({r['slo_attainment']:.3f}; "
                                 f"{'n/a' if red is None else f'{red:+.1f}%'})")
                lines.append(f"| {g} | " + " | ".join(cells) + " |")
            lines.append("")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
