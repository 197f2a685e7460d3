"""Compare GPU measurements (scripts/gpu_measure_llama8b.py) with a shipped PerfModel profile.

    python scripts/compare_gpu_measurement.py \\
        --measured benchmarks/results/gpu/llama3-8b-h100-pytorch-run1.json \\
                   benchmarks/results/gpu/llama3-8b-h100-pytorch-run2.json \\
        --profile scripts/derived/llama3-8b-h100x1-kernel-derived.json \\
        --out benchmarks/results/gpu/README.md

Prints JSON (per-point ratios and summary) and writes a markdown table. Latency is the median
over runs of each run's median; power is taken from the points measured for at least 4 s
(shorter loops are too short for NVML's energy counter to average well).
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np

# DESIGN.md's H100 defaults (Splitwise simulator configs), used by autoscaler/carbon.py
DEFAULT_POWER_W = {"prefill": 700.0, "decode": 380.0, "idle": 75.0}


def load_runs(paths: list[str]) -> tuple[dict, dict, dict, list[dict]]:
    runs = [json.loads(Path(p).read_text()) for p in paths]
    pre: dict[int, list] = {}
    dec: dict[tuple[int, int], list] = {}
    for r in runs:
        for p in r["prefill"]:
            pre.setdefault(p["tokens"], []).append(p)
        for p in r["decode"]:
            dec.setdefault((p["batch"], p["context"]), []).append(p)
    return pre, dec, runs[0]["meta"], runs


def profile_prefill(profile: dict, n: int) -> float:
    xs, ys = zip(*profile["prefill"])
    return float(np.interp(n, xs, ys))


def profile_decode(profile: dict, b: int, ctx: int) -> float | None:
    for row in profile["decode"]:
        if row[0] == b and row[2] == ctx:
            return float(row[1])
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--measured", nargs="+", required=True)
    ap.add_argument("--profile", required=True)
    ap.add_argument("--out", help="markdown file to write")
    args = ap.parse_args()
    pre, dec, meta, runs = load_runs(args.measured)
    profile = json.loads(Path(args.profile).read_text())

    rows_p, rows_d = [], []
    for n in sorted(pre):
        m = statistics.median(p["latency_s"] for p in pre[n])
        spread = max(p["latency_s"] for p in pre[n]) / min(p["latency_s"] for p in pre[n]) - 1
        prof = profile_prefill(profile, n) if n <= profile["prefill"][-1][0] else None
        rows_p.append({"tokens": n, "measured_s": m, "run_spread_pct": 100 * spread, "profile_s": prof,
                       "profile_over_measured": prof / m if prof else None})
    for (b, ctx) in sorted(dec, key=lambda k: (k[1], k[0])):
        m = statistics.median(p["latency_s"] for p in dec[(b, ctx)])
        prof = profile_decode(profile, b, ctx)
        rows_d.append({"batch": b, "context": ctx, "measured_s": m, "profile_s": prof,
                       "profile_over_measured": prof / m if prof else None})

    def long_points(points):
        """Power of the loops that ran ≥ 3.5 s (long enough for NVML's energy counter)."""
        return [p["avg_power_w"] for p in points if "avg_power_w" in p and p["iters"] * p["latency_s"] >= 3.5]
    power = {
        "idle_w": statistics.median(r["power"]["idle_before_load_w"] for r in runs if "idle_before_load_w" in r["power"]),
        "idle_weights_loaded_w": statistics.median(r["power"]["idle_weights_loaded_w"] for r in runs
                                                   if "idle_weights_loaded_w" in r["power"]),
        "prefill_w": statistics.median(long_points(pre[2048])),
        "decode_w_by_point": {f"B={b},ctx={c}": statistics.median(long_points(dec[(b, c)]))
                              for (b, c) in dec if long_points(dec[(b, c)])},
    }
    ratios_p = [r["profile_over_measured"] for r in rows_p if r["profile_over_measured"] and r["tokens"] >= 512]
    ratios_d = [r["profile_over_measured"] for r in rows_d if r["profile_over_measured"]]
    summary = {"prefill_profile_over_measured_median": statistics.median(ratios_p),
               "decode_profile_over_measured_median": statistics.median(ratios_d),
               "decode_profile_over_measured_range": [min(ratios_d), max(ratios_d)]}
    out = {"meta": meta, "prefill": rows_p, "decode": rows_d, "power": power, "summary": summary,
           "profile": args.profile, "measured": args.measured}
    print(json.dumps(out, indent=1))

    if args.out:
        f = lambda x, s=1000: "–" if x is None else f"{x * s:.1f}"  # noqa: E731
        r = lambda x: "–" if x is None else f"{x:.2f}"  # noqa: E731
        lines = [f"| prompt tokens | measured (ms) | spread between runs | profile (ms) | profile / measured |",
                 "|---:|---:|---:|---:|---:|"]
        lines += [f"| {x['tokens']} | {f(x['measured_s'])} | {x['run_spread_pct']:.0f}% | {f(x['profile_s'])} | "
                  f"{r(x['profile_over_measured'])} |" for x in rows_p]
        lines += ["", "| batch | context | measured step (ms) | profile (ms) | profile / measured |",
                  "|---:|---:|---:|---:|---:|"]
        lines += [f"| {x['batch']} | {x['context']} | {f(x['measured_s'])} | {f(x['profile_s'])} | "
                  f"{r(x['profile_over_measured'])} |" for x in rows_d]
        lines += ["", "| power | measured (W) | default in DESIGN.md / carbon.py (W) |", "|---|---:|---:|",
                  f"| idle, nothing loaded | {power['idle_w']:.0f} | {DEFAULT_POWER_W['idle']:.0f} |",
                  f"| idle, 15 GiB of weights resident | {power['idle_weights_loaded_w']:.0f} | – |",
                  f"| prefill, 2048-token prompts back to back | {power['prefill_w']:.0f} | "
                  f"{DEFAULT_POWER_W['prefill']:.0f} |"]
        lines += [f"| decode, {k} | {v:.0f} | {DEFAULT_POWER_W['decode']:.0f} |"
                  for k, v in power["decode_w_by_point"].items()]
        # keep the hand-written text above the marker, replace the tables below it
        out_path = Path(args.out)
        head = out_path.read_text().split("<!-- table -->")[0] if out_path.exists() else ""
        out_path.write_text(head + "<!-- table -->\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
