"""Tables and plots for simulation results (`greencache simulate`, `benchmarks/sim_results.py`)."""

from __future__ import annotations

from pathlib import Path

COLUMNS = ("total_kg", "operational_kg", "embodied_kg", "energy_kwh", "slo_attainment", "hit_ratio",
           "replica_hours", "reduction_vs_static_pct")


def table(result: dict) -> str:
    head = (f"{result['trace']} · {result['grid']} · {result['model']} · {result['days']:.1f} days · "
            f"{result['requests']:,} requests · full cache {result['provisioning']['full_capacity_gb']:g} GB, "
            f"static {result['provisioning']['static_replicas']} replicas")
    lines = [head, f"{'policy':<17}{'total kg':>10}{'oper. kg':>10}{'embod. kg':>10}{'kWh':>9}"
                   f"{'SLO att.':>9}{'hit':>7}{'rep-h':>8}{'cut':>8}"]
    for name, r in result["policies"].items():
        red = r.get("reduction_vs_static_pct")
        lines.append(f"{name:<17}{r['total_kg']:>10.2f}{r['operational_kg']:>10.2f}{r['embodied_kg']:>10.2f}"
                     f"{r['energy_kwh']:>9.1f}{r['slo_attainment']:>9.3f}{r['hit_ratio']:>7.3f}"
                     f"{r['replica_hours']:>8.0f}{(f'{red:.1f}%' if red is not None else '-'):>8}"
                     + ("  " + " ".join(f"{k} {v:.0f}" for k, v in r["replica_hours_by_type"].items())
                        if result.get("fleet") and r.get("replica_hours_by_type") else ""))
    return "\n".join(lines)


def plots(result: dict, out_dir: str | Path, prefix: str = "") -> list[str]:
    """carbon intensity vs chosen capacity and replicas over time; carbon breakdown per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tag = prefix or f"{result['trace']}_{result['grid']}_{result['model']}"
    files = []
    tl = result["timelines"]
    shown = [p for p in ("joint-milp", "cache-ilp", "serve-default") if p in tl]
    if shown:
        fig, axes = plt.subplots(3, 1, figsize=(10, 7), sharex=True)
        ci = tl[shown[0]]["intensity"]
        hours = range(len(ci))
        axes[0].plot(hours, ci, color="tab:gray")
        axes[0].set_ylabel("gCO2/kWh")
        axes[0].set_title(f"{result['grid']}: carbon intensity, cache capacity and replicas "
                          f"({result['trace']}, {result['model']})")
        for p in shown:
            axes[1].step(hours, [c / 1000 for c in tl[p]["capacity_gb"]], where="post", label=p)
            axes[2].step(hours, tl[p]["replicas"], where="post", label=p)
        axes[1].set_ylabel("cache TB")
        axes[2].set_ylabel("replicas")
        axes[2].set_xlabel("hour")
        axes[1].legend(loc="upper right", fontsize=8)
        fig.tight_layout()
        f = out / f"{tag}_timeline.png"
        fig.savefig(f, dpi=110)
        plt.close(fig)
        files.append(str(f))
    names = list(result["policies"])
    op = [result["policies"][n]["operational_kg"] for n in names]
    em = [result["policies"][n]["embodied_kg"] for n in names]
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.bar(names, op, label="operational", color="tab:orange")
    ax.bar(names, em, bottom=op, label="embodied", color="tab:blue")
    for i, n in enumerate(names):
        ax.text(i, op[i] + em[i], f"SLO {result['policies'][n]['slo_attainment']:.2f}", ha="center", va="bottom",
                fontsize=8)
    ax.set_ylabel("kgCO2e")
    ax.set_title(f"Carbon per policy: {result['trace']}, {result['grid']}, {result['model']}, {result['days']:.0f} days")
    ax.legend()
    plt.setp(ax.get_xticklabels(), rotation=20)
    fig.tight_layout()
    f = out / f"{tag}_breakdown.png"
    fig.savefig(f, dpi=110)
    plt.close(fig)
    files.append(str(f))
    return files
