"""`greencache bench planner`: MILP solve time on seeded random instances of two sizes.

Cases: 24 slots × 16 cache configurations × 8 replica options, and 96 × 64 × 16; and a mixed
fleet, 24 slots × 16 cache configurations × (8 × 8) replica pairs of two GPU types
(`autoscaler/fleet.py`). Each is solved as the live planner does (DP warm start, then the MILP
proves optimality or stops at the time limit; for the fleet the DP's exact bounds also tighten
the variables' ranges first) and, for reference, cold (the MILP alone). Reported: solve_s
(including the DP when warm), relative gap to the best bound, whether optimality was proven,
and whether the MILP's objective equals the DP's. Targets: the first proven optimal in
<= 0.5 s; the second within 1% gap in <= 5 s; the fleet proven optimal in <= 1 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="greencache bench planner", description=__doc__)
    p.add_argument("--json", action="store_true")
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--time-limit", type=float, default=4.5,
                   help="solver limit (s); leaves room for the DP warm start and model build within 5 s")
    p.add_argument("--solver", default="CBC", choices=["CBC", "HiGHS"])
    args = p.parse_args(argv)
    from autoscaler.fleet import solve_fleet_dp, solve_fleet_milp
    from autoscaler.instances import random_fleet_problem, random_problem
    from autoscaler.planner import solve_dp, solve_milp

    cases = []
    for slots, n_cache, n_rep in ((24, 16, 8), (96, 64, 16), (24, 16, "8x8")):
        fleet = n_rep == "8x8"
        for mode in ("warm", "cold"):
            runs = []
            for seed in range(args.seeds):
                prob = random_fleet_problem(seed, slots, n_cache, (7, 7)) if fleet \
                    else random_problem(seed, slots, n_cache, n_rep)
                dp = (solve_fleet_dp if fleet else solve_dp)(prob)
                out = (solve_fleet_milp if fleet else solve_milp)(
                    prob, time_limit_s=args.time_limit, warm_start=dp if mode == "warm" else None, solver=args.solver)
                total_s = out.solve_s + (dp.solve_s if mode == "warm" else 0.0)
                runs.append({"seed": seed, "solve_s": total_s, "gap": out.gap, "optimal": out.optimal,
                             "objective_g": out.objective_g, "dp_objective_g": dp.objective_g,
                             "matches_dp": abs(out.objective_g - dp.objective_g) <= 1e-6 * max(1, dp.objective_g)})
            worst = max(runs, key=lambda r: r["solve_s"])
            case = {"slots": slots, "cache_configs": n_cache, "replica_options": n_rep, "start": mode,
                    "solve_s": statistics.median(r["solve_s"] for r in runs), "solve_s_max": worst["solve_s"],
                    "gap": max(r["gap"] for r in runs), "optimal": all(r["optimal"] for r in runs),
                    "matches_dp": all(r["matches_dp"] for r in runs), "runs": runs}
            cases.append(case)
            print(f"[bench planner] {slots}x{n_cache}x{n_rep} {mode}: median {case['solve_s']:.3f}s max "
                  f"{case['solve_s_max']:.3f}s gap {case['gap']:.2e} optimal={case['optimal']}", file=sys.stderr)
    rows = [("slots x caches x replicas", "start", "median s", "max s", "max gap", "optimal", "= DP")]
    for c in cases:
        rows.append((f"{c['slots']} x {c['cache_configs']} x {c['replica_options']}", c["start"], f"{c['solve_s']:.3f}",
                     f"{c['solve_s_max']:.3f}", f"{c['gap']:.1e}", str(c["optimal"]), str(c["matches_dp"])))
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print("\n".join("  ".join(x.ljust(k) for x, k in zip(r, w)) for r in rows), file=sys.stderr)
    if args.json:
        print(json.dumps({"solver": args.solver, "time_limit_s": args.time_limit, "cases": cases,
                          "targets": {"small": "optimal in <= 0.5 s", "large": "gap <= 1% in <= 5 s",
                                      "fleet": "optimal in <= 1 s"}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
