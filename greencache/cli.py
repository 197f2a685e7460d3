"""The `greencache` command.

    greencache serve [--port P] [--replicas N] [--model DIR] [--engine-arg K=V ...]
    greencache status | plan | simulate | profile | demo-model DIR
    greencache bench serve|store|kv-reuse|planner|replay|cluster|overload|chaos [--json]

Flag defaults and units come from the configuration models (deployments/config.py,
cache_store/config.py, autoscaler/config.py, autoscaler/simulator.py), so a default is written
once. `greencache serve` runs the embedded demo, which differs from the models' production
defaults only where `SERVE_DEMO` says.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from typing import Any, Optional

from pydantic import BaseModel

# Where the local demo departs from the configuration models' defaults (which suit a real
# deployment): the demo advances the carbon trace one hour per planning cycle, so a viewer sees
# the plan follow a day's grid in minutes.
SERVE_DEMO = {"autoscaler.trace_hours_per_interval": 1.0}
BENCHMARKS = {
    "serve": "benchmarks.bench_serve",
    "store": "benchmarks.bench_store",
    "kv-reuse": "benchmarks.bench_kv_reuse",
    "planner": "benchmarks.bench_planner",
    "replay": "benchmarks.replay",
    "cluster": "benchmarks.bench_cluster",
    "overload": "benchmarks.bench_overload",
    "chaos": "benchmarks.bench_chaos",
}


def _kv(s: str) -> tuple[str, object]:
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {s!r}")
    k, v = s.split("=", 1)
    try:
        return k.replace("-", "_"), json.loads(v)
    except json.JSONDecodeError:
        return k.replace("-", "_"), v


def _flag(p: argparse.ArgumentParser, flag: str, model: type[BaseModel], field: str, *, scale: float = 1.0,
          unit: str = "", default: Any = None, **kw: Any) -> None:
    """Add `flag` whose default and help come from `model.field` (divided by `scale`, e.g. bytes → GB)."""
    info = model.model_fields[field]
    if default is None:
        default = info.get_default(call_default_factory=True)
        if scale != 1.0 and default is not None:
            default = default / scale
    shown = "" if default in (None, "") else f"default {default:g}{unit}" if isinstance(default, float) \
        else f"default {default}{unit}"
    if scale != 1.0:
        shown += f"; this flag is in{unit}"
    shown = f" ({shown})" if shown else ""
    p.add_argument(flag, default=default, help=(info.description or "") + shown, **kw)


def _add_serve_args(p: argparse.ArgumentParser) -> None:
    from autoscaler.config import AutoscalerConfig
    from cache_store.config import GB, KVStoreConfig
    from deployments.config import ServeConfig

    p.add_argument("--address", default=None, metavar="auto|HOST:PORT",
                   help="deploy onto this running Ray cluster instead of starting one (Serve's proxy on the head "
                        "serves the port; Ctrl-C deletes the application, the cluster keeps running)")
    _flag(p, "--host", ServeConfig, "host")
    _flag(p, "--port", ServeConfig, "port", type=int)
    _flag(p, "--replicas", ServeConfig, "num_replicas", type=int)
    _flag(p, "--max-replicas-per-node", ServeConfig, "max_replicas_per_node", type=int)
    _flag(p, "--model", ServeConfig, "model")
    _flag(p, "--served-model-name", ServeConfig, "served_model_name")
    _flag(p, "--max-model-len", ServeConfig, "max_model_len", type=int)
    p.add_argument("--engine-arg", type=_kv, action="append", default=[], metavar="KEY=VALUE",
                   help="extra vLLM engine argument (JSON value), repeatable, e.g. max_num_seqs=32")
    _flag(p, "--stream-interval-ms", ServeConfig, "stream_interval_ms", type=float)
    p.add_argument("--no-direct-ingress", action="store_true",
                   help="serve the port through Ray Serve's HTTP proxy instead of the ingress replica's own server")
    _flag(p, "--kv-disk-path", KVStoreConfig, "disk_path")
    _flag(p, "--kv-disk-gb", KVStoreConfig, "disk_capacity_bytes", scale=GB, unit=" GB", type=float)
    _flag(p, "--kv-memory-gb", KVStoreConfig, "memory_capacity_bytes", scale=GB, unit=" GB", type=float)
    _flag(p, "--kv-redis-url", KVStoreConfig, "redis_url")
    _flag(p, "--kv-redis-password-file", KVStoreConfig, "redis_password_file")
    _flag(p, "--kv-redis-gb", KVStoreConfig, "redis_capacity_bytes", scale=GB, unit=" GB", type=float)
    _flag(p, "--kv-chunk-tokens", KVStoreConfig, "chunk_tokens", type=int)
    p.add_argument("--no-kv-store", action="store_true", help="serve without the shared KV store")
    p.add_argument("--no-autoscaler", action="store_true", help="fixed replica count, no carbon autoscaler")
    _flag(p, "--grid", AutoscalerConfig, "grid")
    _flag(p, "--max-replicas", AutoscalerConfig, "max_replicas", type=int)
    _flag(p, "--autoscaler-interval", AutoscalerConfig, "interval_s", unit=" s", type=float)
    _flag(p, "--profile", AutoscalerConfig, "profile_path")
    _flag(p, "--fleet", AutoscalerConfig, "fleet")
    _flag(p, "--fleet-model", AutoscalerConfig, "fleet_model")
    _flag(p, "--trace-hours-per-interval", AutoscalerConfig, "trace_hours_per_interval", type=float,
          default=SERVE_DEMO["autoscaler.trace_hours_per_interval"])
    p.add_argument("--carbon-api", default=None, metavar="PROVIDER:ZONE",
                   help="live carbon intensity, e.g. electricitymaps:FR or watttime:CAISO_NORTH (token in "
                        "GREENCACHE_CARBON_API_TOKEN); on failure the last value, then the --grid trace")
    p.add_argument("--carbon-api-url", default=None, help="the carbon service's base URL (default: its public API)")
    p.add_argument("--api-key", action="append", default=[],
                   help="accepted bearer token, repeatable; also GREENCACHE_API_KEYS (comma-separated)")
    p.add_argument("--allow-unauthenticated", action="store_true",
                   help="serve without API keys on an address other than loopback")
    _flag(p, "--max-queued-requests", ServeConfig, "max_queued_requests", type=int)


def _serve_config(args: argparse.Namespace):
    from autoscaler.config import AutoscalerConfig
    from cache_store.config import GB, KVStoreConfig
    from deployments.config import ServeConfig
    from deployments.settings import settings

    return ServeConfig(
        host=args.host,
        port=args.port,
        num_replicas=args.replicas,
        max_replicas_per_node=args.max_replicas_per_node,
        model=args.model,
        served_model_name=args.served_model_name,
        max_model_len=args.max_model_len,
        engine_kwargs=dict(args.engine_arg),
        api_keys=list(args.api_key) + settings().api_keys,
        allow_unauthenticated=args.allow_unauthenticated,
        max_queued_requests=args.max_queued_requests,
        stream_interval_ms=args.stream_interval_ms,
        direct_ingress=not (args.no_direct_ingress or args.address),
        kv_store=KVStoreConfig(
            enabled=not args.no_kv_store,
            chunk_tokens=args.kv_chunk_tokens,
            memory_capacity_bytes=int(args.kv_memory_gb * GB),
            disk_path=args.kv_disk_path,
            disk_capacity_bytes=int(args.kv_disk_gb * GB),
            redis_url=args.kv_redis_url,
            redis_password_file=args.kv_redis_password_file,
            redis_capacity_bytes=int(args.kv_redis_gb * GB),
        ),
        autoscaler=AutoscalerConfig(
            enabled=not args.no_autoscaler,
            grid=args.grid,
            max_replicas=max(args.max_replicas, args.replicas),
            interval_s=args.autoscaler_interval,
            trace_hours_per_interval=args.trace_hours_per_interval,
            profile_path=args.profile,
            fleet=args.fleet,
            fleet_model=args.fleet_model,
            carbon_api=_carbon_api(args.carbon_api, args.carbon_api_url),
        ),
    )


def _carbon_api(spec: Optional[str], url: Optional[str]):
    from autoscaler.config import CarbonAPIConfig

    if spec is None:
        if url is not None:
            raise ValueError("--carbon-api-url needs --carbon-api PROVIDER:ZONE")
        return None
    provider, sep, zone = spec.partition(":")
    if not sep or not zone:
        raise ValueError(f"--carbon-api expects PROVIDER:ZONE (e.g. electricitymaps:FR), got {spec!r}")
    return CarbonAPIConfig(provider=provider, zone=zone, base_url=url)


def _print_endpoint(url: str, name: str) -> None:
    print(f"GreenCache is serving '{name}' at {url}/v1 (OpenAI API)", flush=True)
    print(f"  try: curl {url}/v1/chat/completions -H 'Content-Type: application/json' "
          f"-d '{{\"model\": \"{name}\", \"messages\": [{{\"role\": \"user\", \"content\": \"hi\"}}]}}'",
          flush=True)
    print(f"  metrics: {url}/metrics   health: {url}/health   stop: Ctrl-C", flush=True)


def cmd_serve(args: argparse.Namespace) -> int:
    from deployments.demo_model import resolve_model
    from deployments.launch import deploy, stop_all

    try:
        config = _serve_config(args)
    except Exception as e:
        print(f"greencache serve: invalid configuration: {e}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def _on_signal(signum, frame):
        print(f"\ngreencache: received {signal.Signals(signum).name}, shutting down...", flush=True)
        stop.set()

    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    try:
        url = deploy(config, address=args.address)
        # ray.init installs its own SIGTERM handler (which kills the driver abruptly);
        # ours must win so Serve and the engines shut down in order.
        signal.signal(signal.SIGINT, _on_signal)
        signal.signal(signal.SIGTERM, _on_signal)
        _print_endpoint(url, resolve_model(config)[1])
        while not stop.is_set():
            stop.wait(1.0)
    finally:
        stop_all()
        print("greencache: stopped", flush=True)
    return 0


def cmd_demo_model(args: argparse.Namespace) -> int:
    from deployments.demo_model import build_demo_model

    print(build_demo_model(args.dir, num_layers=args.layers, hidden_size=args.hidden))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    return importlib.import_module(BENCHMARKS[args.what]).main(args.rest)


def cmd_profile(args: argparse.Namespace) -> int:
    from benchmarks.profiler import main as profile_main

    return profile_main(args.rest)


def cmd_status(args: argparse.Namespace) -> int:
    """Read the running deployment's state from its files (no Ray connection needed)."""
    from autoscaler.state import AutoscalerState
    from deployments.settings import settings

    home = args.home or settings().home
    rec = AutoscalerState(home, create=False).load_last()
    if rec is None:
        print(f"greencache status: no autoscaler state under {home} (is `greencache serve` running?)", file=sys.stderr)
        return 1
    out = {
        "trace_time": rec["trace_time"], "grid": rec.get("grid"),
        "carbon_intensity_g_per_kwh": rec["inputs"]["carbon_intensity_g_per_kwh"],
        "replicas": rec["decision"]["replicas"], "cache_capacity_gb": rec["decision"]["capacity_gb"],
        "load_rps": rec["inputs"]["load_rps"],
        "carbon_so_far_g": rec["carbon_so_far_g"], "cycle": rec["cycle"], "reason": rec["reason"],
    }
    if rec["decision"].get("counts") is not None:  # a mixed fleet: the plan per GPU type, and the step towards it
        published = rec.get("published") or {}
        out["replicas_by_gpu_type"] = rec["decision"]["counts"]
        out["published_by_gpu_type"] = published.get("counts")
        out["running_by_gpu_type"] = published.get("running")
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        c = out["carbon_so_far_g"]
        print(f"grid {out['grid']} at {out['trace_time']}: {out['carbon_intensity_g_per_kwh']:.1f} gCO2/kWh")
        print(f"replicas {out['replicas']}, disk cache {out['cache_capacity_gb']:g} GB, load {out['load_rps']:.2f} req/s")
        if "replicas_by_gpu_type" in out:
            def by_type(d):
                return ", ".join(f"{t} {n}" for t, n in d.items()) if d else "unknown"

            print(f"planned per GPU type: {by_type(out['replicas_by_gpu_type'])}; published: "
                  f"{by_type(out['published_by_gpu_type'])}; running: {by_type(out['running_by_gpu_type'])}")
        print(f"carbon so far: {c['operational']:.1f} g operational + {c['embodied']:.1f} g embodied "
              f"(cycle {out['cycle']}; {out['reason']})")
    return 0


def _plan_slots(problem, out, start) -> list[dict]:
    from datetime import timedelta

    return [{"slot": t, "time": (start + timedelta(hours=t)).isoformat(),
             "carbon_intensity_g_per_kwh": problem.intensity[t], "arrival_rps": problem.arrival_rps[t],
             "replicas": out.replicas[t], "cache": problem.caches[out.cache[t]].name,
             "cache_capacity_gb": problem.caches[out.cache[t]].capacity_gb,
             "hit_ratio": problem.caches[out.cache[t]].hit_ratio} for t in range(problem.T)]


def cmd_plan(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from autoscaler.carbon_sources import TraceSource
    from autoscaler.planner import PlanInfeasible, plan
    from autoscaler.scenario import build_problem

    try:
        start = datetime.fromisoformat(args.start).replace(tzinfo=timezone.utc)
    except ValueError:
        print(f"greencache plan: --start {args.start!r} is not an ISO time like 2023-06-01T00:00", file=sys.stderr)
        return 2
    source = TraceSource(args.trace) if args.trace else TraceSource.grid(args.grid)
    if args.fleet:
        return _plan_fleet(args, source, start)
    problem = build_problem(source, start, args.hours, max_replicas=args.max_replicas,
                            carbon_budget_g=args.budget_g)
    try:
        out = plan(problem, time_limit_s=args.time_limit)
    except PlanInfeasible as e:
        print(f"greencache plan: infeasible: {e}", file=sys.stderr)
        return 1
    slots = _plan_slots(problem, out, start)
    result = {"grid": args.grid, "start": start.isoformat(), "hours": args.hours, "method": out.method,
              "optimal": out.optimal, "gap": out.gap, "objective_g": out.objective_g,
              "dp_objective_g": out.dp_objective_g, "solve_s": out.solve_s, "reason": out.reason,
              "breakdown": out.breakdown, "slots": slots}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{'time':25s} {'CI g/kWh':>9s} {'req/s':>6s} {'replicas':>8s} {'cache':>8s}")
    for s in slots:
        print(f"{s['time']:25s} {s['carbon_intensity_g_per_kwh']:9.1f} {s['arrival_rps']:6.2f} "
              f"{s['replicas']:8d} {s['cache']:>8s}")
    print(f"objective {out.objective_g:.1f} g (DP {out.dp_objective_g:.1f} g), {out.method}, {out.solve_s:.3f} s")
    return 0


def _plan_fleet(args: argparse.Namespace, source, start) -> int:
    """`greencache plan --fleet h100:8,a100:8`: replicas of each GPU type and the cache per slot."""
    from datetime import timedelta

    from autoscaler.fleet import fleet_problem, plan_fleet
    from autoscaler.gpu_types import parse_fleet
    from autoscaler.perf_model import SLO
    from autoscaler.planner import PlanInfeasible
    from autoscaler.scenario import Workload, cache_options

    if args.budget_g is not None or args.max_replicas is not None:
        print("greencache plan: --budget-g and --max-replicas apply to a single GPU type; with --fleet the "
              "counts in --fleet bound each type", file=sys.stderr)
        return 2
    try:
        types = parse_fleet(args.fleet, args.model)
    except ValueError as e:
        print(f"greencache plan: {e}", file=sys.stderr)
        return 2
    workload = Workload()
    load = [x * args.load_scale for x in workload.diurnal_load(start, args.hours)]
    caches = cache_options((0, 50, 100, 200, 400, 800, 1600, 3200), workload)
    problem = fleet_problem(types, intensity=source.forecast(start, args.hours), load_rps=load, caches=caches,
                            slo=SLO(), prompt_tokens=2048, output_tokens=256)
    try:
        out = plan_fleet(problem, time_limit_s=args.time_limit)
    except PlanInfeasible as e:
        print(f"greencache plan: infeasible: {e}", file=sys.stderr)
        return 1
    names = [t.name for t in types]
    slots = [{"slot": t, "time": (start + timedelta(hours=t)).isoformat(),
              "carbon_intensity_g_per_kwh": problem.intensity[t], "arrival_rps": problem.arrival_rps[t],
              "replicas": dict(zip(names, out.counts[t])), "load_rps": dict(zip(names, out.split_rps[t])),
              "cache": caches[out.cache[t]].name, "cache_capacity_gb": caches[out.cache[t]].capacity_gb}
             for t in range(problem.T)]
    if args.json:
        print(json.dumps({"grid": args.grid, "model": args.model, "fleet": args.fleet, "start": start.isoformat(),
                          "method": out.method, "optimal": out.optimal, "objective_g": out.objective_g,
                          "dp_objective_g": out.dp_objective_g, "solve_s": out.solve_s, "slots": slots}, indent=2))
        return 0
    print(f"{'time':25s} {'CI g/kWh':>9s} {'req/s':>6s} " + " ".join(f"{n:>6s}" for n in names) + f" {'cache':>8s}")
    for s in slots:
        print(f"{s['time']:25s} {s['carbon_intensity_g_per_kwh']:9.1f} {s['arrival_rps']:6.2f} "
              + " ".join(f"{s['replicas'][n]:6d}" for n in names) + f" {s['cache']:>8s}")
    print(f"objective {out.objective_g:.1f} g (DP {out.dp_objective_g:.1f} g), {out.method}, {out.solve_s:.3f} s")
    return 0


class _PolicyProgress:
    """A tqdm bar over policies that each report their own fraction done."""

    def __init__(self, n: int, desc: str, quiet: bool) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=n, desc=desc, unit="policy", file=sys.stderr, disable=quiet)
        self.done: dict[str, float] = {}

    def __call__(self, name: str, frac: float) -> None:
        self.bar.update(frac - self.done.get(name, 0.0))
        self.done[name] = frac
        self.bar.set_postfix_str(name)

    def close(self) -> None:
        self.bar.close()


def cmd_simulate(args: argparse.Namespace) -> int:
    """Replay a request trace and a carbon trace through every policy (the live policy code)."""
    from autoscaler.policies import POLICY_NAMES
    from autoscaler.sim_report import plots, table
    from autoscaler.simulator import SimConfig, simulate
    from autoscaler.workloads import load_trace

    policies = list(POLICY_NAMES) if args.policies == "all" else [p.strip() for p in args.policies.split(",")]
    bad = [p for p in policies if p not in POLICY_NAMES]
    if bad:
        print(f"unknown policies {bad}; choose from {list(POLICY_NAMES)} or 'all'", file=sys.stderr)
        return 2
    try:
        trace = load_trace(args.trace, days=args.days, rps=args.rps, seed=args.seed, diurnal=args.diurnal)
        cfg = SimConfig(model=args.model, grid=args.grid, start=args.start,
                        ssd_embodied_kg_per_gb=args.ssd_embodied_kg_per_gb, gpu_idle_w=args.gpu_idle_w,
                        fleet=args.fleet)
        if args.fleet:
            from autoscaler.gpu_types import parse_fleet

            parse_fleet(args.fleet, args.model)  # a bad spec is an error now, not in a worker
    except (ValueError, KeyError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    progress = _PolicyProgress(len(policies), f"simulate {args.trace} {args.grid} {args.model}", args.quiet)
    t0 = time.time()
    result = simulate(trace, cfg, policies, workers=args.workers, progress=progress)
    progress.close()
    result["wall_s"] = time.time() - t0
    if args.plots:
        result["plots"] = plots(result, args.plots)
    if args.json:
        out = dict(result)
        if not args.timelines:
            out.pop("timelines", None)
        print(json.dumps(out))
    else:
        print(table(result))
        print(f"({result['wall_s']:.1f} s)")
    return 0


def _add_status_plan(sub) -> None:
    p = sub.add_parser("status", help="carbon intensity, replicas, cache capacity and carbon so far")
    p.add_argument("--home", default=None, help="GreenCache home (default ~/.greencache or GREENCACHE_HOME)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("plan", help="plan replicas and cache capacity over a carbon trace (MILP)")
    p.add_argument("--grid", default="FR", help="bundled grid: FR, DE, US-CAL-CISO, US-MIDA-PJM, US-TEX-ERCO, IN-WE")
    p.add_argument("--trace", default=None, help="an Electricity Maps hourly CSV instead of a bundled grid")
    p.add_argument("--start", default="2023-06-01T00:00", help="UTC start, ISO format")
    p.add_argument("--hours", type=int, default=24)
    p.add_argument("--max-replicas", type=int, default=None)
    p.add_argument("--budget-g", type=float, default=None, help="carbon budget over the horizon (g)")
    p.add_argument("--fleet", default=None, help="mixed GPU fleet, e.g. h100:8,a100:8 (a100:8:reuse marks GPUs "
                   "past their lifetime; :reuse=0.25 still charges a quarter of their embodied carbon)")
    p.add_argument("--model", default="llama3-8b", choices=["llama3-8b", "llama3-70b"],
                   help="model whose GPU profiles price the fleet (with --fleet)")
    p.add_argument("--load-scale", type=float, default=1.0, help="scale the default diurnal load (with --fleet)")
    p.add_argument("--time-limit", type=float, default=5.0, help="solver time limit (s)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)


def _add_simulate(sub) -> None:
    import os

    from autoscaler.simulator import SimConfig

    p = sub.add_parser("simulate", help="replay a request trace and a carbon trace through the autoscaling policies")
    p.add_argument("--trace", default="mooncake-conversation",
                   help="mooncake-conversation, mooncake-synthetic, azure-conv, azure-code")
    _flag(p, "--grid", SimConfig, "grid")
    _flag(p, "--model", SimConfig, "model")
    p.add_argument("--days", type=float, default=7.0)
    p.add_argument("--rps", type=float, default=1.0, help="mean request rate after time-scaling")
    p.add_argument("--diurnal", type=float, default=0.0,
                   help="synthetic day/night rate cycle amplitude A in [0,1): peak/trough (1+A)/(1-A); 0 = flat")
    _flag(p, "--start", SimConfig, "start")
    p.add_argument("--policies", default="all", help="'all' or a comma list")
    _flag(p, "--ssd-embodied-kg-per-gb", SimConfig, "ssd_embodied_kg_per_gb", type=float)
    _flag(p, "--gpu-idle-w", SimConfig, "gpu_idle_w", type=float)
    _flag(p, "--fleet", SimConfig, "fleet")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="policies run in parallel")
    p.add_argument("--plots", default=None, help="write PNG plots to this directory")
    p.add_argument("--json", action="store_true")
    p.add_argument("--timelines", action="store_true", help="include hourly timelines in the JSON")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_simulate)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="greencache", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("serve", help="serve the OpenAI API on a local Ray cluster")
    _add_serve_args(p)
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("demo-model", help="build the demo model (random weights, local tokenizer)")
    p.add_argument("dir")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.set_defaults(func=cmd_demo_model)
    p = sub.add_parser("profile", help="measure a performance profile on a running endpoint (JSON)")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_profile)
    _add_status_plan(sub)
    _add_simulate(sub)
    p = sub.add_parser("bench", help="run a benchmark (prints JSON and a table)")
    p.add_argument("what", choices=sorted(BENCHMARKS))
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    from deployments.settings import settings

    logging.basicConfig(level=settings().log_level)
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
