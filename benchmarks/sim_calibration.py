"""Calibrate the planner's utilisation ceiling against the simulator (prints JSON + a table).

For each model, fixed replica counts with no cache and with the full cache run on the first
half day of the Mooncake conversation trace at 1 req/s; next to each, the utilisation ρ the
planner's `PerfModel` predicts at the peak hour. The ceiling in `autoscaler/simulator.MODELS`
is the highest ρ whose simulated SLO attainment stayed ≥ 0.9.

    python -m benchmarks.sim_calibration [--days 0.5]
"""

from __future__ import annotations

import argparse
import json


def main() -> None:
    from autoscaler.policies import StaticPolicy
    from autoscaler.simulator import MODELS, SimConfig, Simulation
    from autoscaler.workloads import load_trace

    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=float, default=0.5)
    ap.add_argument("--trace", default="mooncake-conversation")
    a = ap.parse_args()
    tr = load_trace(a.trace, days=a.days, rps=1.0)
    rows = []
    for model in MODELS:
        sim = Simulation(tr, SimConfig(model=model))
        for cap in (0.0, sim.full_capacity_gb):
            for r in (3, 4, 5, 6, 8, 10):
                res = sim.run(StaticPolicy("fixed", r, cap))
                p = sim.perf.predict(sim.peak_rps, r, sim.effective_prompt, sim.mean_output, res.hit_ratio)
                rows.append({"model": model, "capacity_gb": cap, "replicas": r, "model_utilisation": p["utilisation"],
                             "slo_attainment": res.slo_attainment, "ttft_attainment": res.ttft_attainment,
                             "tpot_attainment": res.tpot_attainment, "hit_ratio": res.hit_ratio})
    print(json.dumps(rows))
    print(f"{'model':<11} {'cache GB':>9} {'replicas':>8} {'rho(model)':>10} {'SLO att.':>8} {'TTFT att.':>9} {'TPOT att.':>9}")
    for r in rows:
        print(f"{r['model']:<11} {r['capacity_gb']:>9.0f} {r['replicas']:>8} {r['model_utilisation']:>10.2f} "
              f"{r['slo_attainment']:>8.3f} {r['ttft_attainment']:>9.3f} {r['tpot_attainment']:>9.3f}")


if __name__ == "__main__":
    main()
