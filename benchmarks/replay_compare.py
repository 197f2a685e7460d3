"""`greencache bench replay --compare`: GreenCache, Ray Serve LLM and one bare vLLM server on the
same multi-turn replay, each started and stopped here.

    greencache bench replay --compare [--traces mooncake-conversation,mt-bench] [--rounds 2] [--json]

Systems (each in its own process tree; the two Ray ones each on their own loopback Ray):
  greencache  2 replicas, disk tier and Redis tier (a Redis started for it), prefix-affinity
              routing, autoscaler off (the replica count is fixed for the comparison);
  ray-llm     Ray Serve LLM (`ray.serve.llm.build_openai_app`), 2 replicas behind its
              PrefixCacheAffinityRouter; needs the `bench` extra (pyarrow, pandas, jsonref);
  vllm        `python -m vllm.entrypoints.openai.api_server`, one engine, for reference.

Same engine for all: the same model directory, `enforce_eager`, `max_model_len`, prefix caching
on, and the same KV memory per engine, `--kv-tokens` × the model's KV bytes per token, passed as
vLLM's `kv_cache_memory_bytes` (the environment's VLLM_CPU_KVCACHE_SPACE, which would override it,
is left out of every engine's environment). The replay's working set (distinct prompt-prefix tokens) is reported beside it: it
should be several times one engine's KV memory, as a day's conversations are to a GPU's HBM.

All systems get the same requests as text prompts (benchmarks/replay.py `WordPrompts`: one word
per token, so the Ray router's text-prefix matching sees the same prefixes the engines do).
Rounds alternate the systems' order; each round uses a fresh seed (no reuse across rounds), and
`--settle-s` separates runs (CPU engines' threads keep spinning for a while after their last
step). Each system gets `--warmup-requests` unrelated requests first.

Reported per trace and system: TTFT and TPOT p50/p99, throughput, SLO attainment, cached prompt
tokens, failures; ratios GreenCache / Ray Serve LLM (`ttft_p50_ratio_vs_ray_llm`, ...) and
GreenCache / vLLM; for GreenCache, the store's hits by tier during the measured rounds.
Targets (issue #15): TTFT p50 ≤ 0.6× and p99 ≤ 0.8× Ray Serve LLM's, throughput ≥ 1.0×.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx

from benchmarks.report import clean_stdout, table

SYSTEMS = ("greencache", "ray-llm", "vllm")
# Not in the default set: GreenCache without its KV store (engines' own prefix caches only), to
# tell the store's share of GreenCache's time apart from the rest of its serving path.
EXTRA_SYSTEMS = ("greencache-nostore",)
MODEL = "greencache-demo"


def add_compare_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--systems", default=",".join(SYSTEMS),
                    help="comma-separated, from " + ",".join(SYSTEMS + EXTRA_SYSTEMS))
    ap.add_argument("--traces", default="mooncake-conversation,mt-bench", help="comma-separated workloads")
    ap.add_argument("--rounds", type=int, default=2, help="measured rounds per trace and system")
    ap.add_argument("--kv-tokens", type=int, default=4096, help="KV memory per engine, in tokens of the model")
    ap.add_argument("--max-model-len", type=int, default=1024)
    ap.add_argument("--replicas", type=int, default=2, help="replicas of GreenCache and of Ray Serve LLM")
    ap.add_argument("--disk-mb", type=float, default=1024, help="GreenCache disk tier capacity (MB)")
    ap.add_argument("--redis-mb", type=float, default=256, help="GreenCache Redis tier capacity (MB)")
    ap.add_argument("--warmup-requests", type=int, default=8)
    ap.add_argument("--settle-s", type=float, default=3.0)
    ap.add_argument("--start-timeout-s", type=float, default=600.0)
    ap.add_argument("--work-dir", default=None, help="logs and per-system Ray directories (default: a temp dir)")


# -- the engine every system runs ------------------------------------------------------------

def kv_bytes_per_token(model_dir: str) -> int:
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    dtype = {"float32": 4}.get(str(cfg.get("torch_dtype") or cfg.get("dtype")), 2)
    return 2 * cfg["num_hidden_layers"] * cfg.get("num_key_value_heads", cfg["num_attention_heads"]) * head_dim * dtype


def engine_kwargs(spec: dict) -> dict:
    return {"max_model_len": spec["max_model_len"], "enforce_eager": True, "enable_prefix_caching": True,
            "kv_cache_memory_bytes": spec["kv_bytes"]}


# -- the systems, each run as `python -m benchmarks.replay_compare --serve SYSTEM SPEC` ------

def _serve_greencache(spec: dict) -> None:
    from autoscaler.config import AutoscalerConfig
    from cache_store.config import KVStoreConfig
    from deployments.config import ServeConfig
    from deployments.launch import start_serve, stop_all

    home = Path(spec["dir"]) / ("greencache-home" if spec.get("store", True) else "greencache-nostore-home")
    config = ServeConfig(
        model=spec["model_dir"], served_model_name=MODEL, port=spec["port"], num_replicas=spec["replicas"], home=home,
        max_model_len=spec["max_model_len"], engine_kwargs=engine_kwargs(spec),
        kv_store=KVStoreConfig(redis_url="local", disk_path=home / "kv-disk",
                               disk_capacity_bytes=int(spec["disk_mb"] * 1e6),
                               redis_capacity_bytes=int(spec["redis_mb"] * 1e6))
        if spec.get("store", True) else KVStoreConfig(enabled=False),
        autoscaler=AutoscalerConfig(enabled=False))
    start_serve(config)
    _block_until_terminated(stop_all)


def _serve_ray_llm(spec: dict) -> None:
    from deployments.config import engine_env
    from deployments.launch import use_loopback_ray

    use_loopback_ray()
    import ray
    from ray import serve
    from ray.serve.llm import LLMConfig, LLMServingArgs, build_openai_app

    ray.init(address="local", num_cpus=16, include_dashboard=False, _node_ip_address="127.0.0.1",
             logging_level="WARNING", log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": spec["port"]})
    kwargs = engine_kwargs(spec)
    kwargs["enable_prompt_tokens_details"] = True  # usage.prompt_tokens_details.cached_tokens, as the others
    cfg = LLMConfig(
        model_loading_config={"model_id": MODEL, "model_source": spec["model_dir"]},
        accelerator_config={"kind": "cpu"},
        placement_group_config={"bundles": [{"CPU": 1}], "strategy": "PACK"},
        engine_kwargs=kwargs,
        deployment_config={
            "num_replicas": spec["replicas"], "ray_actor_options": {"num_cpus": 0},
            "request_router_config": {
                "request_router_class": "ray.serve.llm.request_router:PrefixCacheAffinityRouter"},
        },
        runtime_env={"env_vars": engine_env(kwargs)},
        experimental_configs={"stream_batching_interval_ms": 0},
        log_engine_metrics=False,
    )
    app = build_openai_app(LLMServingArgs(llm_configs=[cfg],
                                          ingress_deployment_config={"num_replicas": 1,
                                                                     "ray_actor_options": {"num_cpus": 0}}))
    serve.run(app, name="ray-llm", route_prefix="/", blocking=False)

    def stop() -> None:
        serve.shutdown()
        ray.shutdown()

    _block_until_terminated(stop)


def _block_until_terminated(stop) -> None:
    done = []
    signal.signal(signal.SIGTERM, lambda *_: done.append(1))
    while not done:
        time.sleep(0.5)
    stop()


def _vllm_cmd(spec: dict) -> list[str]:
    return [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", spec["model_dir"],
            "--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(spec["port"]),
            "--enforce-eager", "--max-model-len", str(spec["max_model_len"]), "--enable-prefix-caching",
            "--kv-cache-memory-bytes", str(spec["kv_bytes"]), "--enable-prompt-tokens-details",
            "--uvicorn-log-level", "warning"]


class System:
    """One system's process tree: started in its own session, stopped with SIGTERM, then SIGKILL."""

    def __init__(self, name: str, spec: dict, work: Path) -> None:
        from deployments.config import engine_env

        self.name = name
        self.url = f"http://127.0.0.1:{spec['port']}"
        ray_tmp = work / f"ray-{name}"
        (ray_tmp / "ray").mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, **engine_env(engine_kwargs(spec)), RAY_TMPDIR=str(ray_tmp), PYTHONUNBUFFERED="1")
        cmd = (_vllm_cmd(spec) if name == "vllm" else
               [sys.executable, "-m", "benchmarks.replay_compare", "--serve", name.split("-nostore")[0], json.dumps(spec)])
        self.log_path = work / f"{name}.log"
        self.proc = subprocess.Popen(cmd, stdout=open(self.log_path, "w"), stderr=subprocess.STDOUT, env=env,
                                     start_new_session=True)

    def wait_ready(self, timeout_s: float) -> float:
        """Seconds until a completion is answered (the engines are up, not just the front door)."""
        t0 = time.monotonic()
        body = {"model": MODEL, "prompt": "ready", "max_tokens": 1}
        while time.monotonic() - t0 < timeout_s:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with code {self.proc.returncode}; see {self.log_path}")
            try:
                if httpx.post(self.url + "/v1/completions", json=body, timeout=30).status_code == 200:
                    return time.monotonic() - t0
            except httpx.HTTPError:
                pass
            time.sleep(2)
        raise TimeoutError(f"{self.name} not ready after {timeout_s:.0f} s; see {self.log_path}")

    def stop(self, timeout_s: float = 90.0) -> None:
        if self.proc.poll() is None:
            try:  # the leader first: it stops its own children in order (Serve, engines, Ray)
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout_s)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # whatever the tree left behind
        except ProcessLookupError:
            pass

    def store_counts(self) -> Counter:
        """GreenCache only, cumulative (from its /metrics): chunks asked for (`lookup_chunks`),
        found (`hit_chunks`) and read from each tier (`tier_hits:<tier>`)."""
        from prometheus_client.parser import text_string_to_metric_families

        names = {"greencache_kv_lookup_chunks_total": "lookup_chunks", "greencache_kv_hit_chunks_total": "hit_chunks"}
        out: Counter = Counter()
        for fam in text_string_to_metric_families(httpx.get(self.url + "/metrics", timeout=10).text):
            for s in fam.samples:
                if s.name in names:
                    out[names[s.name]] += s.value
                elif s.name == "greencache_kv_tier_hits_total":
                    out["tier_hits:" + s.labels.get("tier", "?")] += s.value
        return out


def _store_report(counts: Counter) -> dict:
    return {"lookup_chunks": counts["lookup_chunks"], "hit_chunks": counts["hit_chunks"],
            "tier_hits": {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("tier_hits:")}}


# -- the comparison ----------------------------------------------------------------------------

def _warm_up(system: System, words, n: int, vocab: int) -> None:
    import asyncio

    from benchmarks.loadgen import random_token_prompts, run_closed_loop

    prompts = [words.text(p) for p in random_token_prompts(n, 200, vocab, seed=99)]
    asyncio.run(run_closed_loop(system.url, MODEL, prompts, concurrency=4, max_tokens=8))


def _ratios(gc: dict, peer: dict, suffix: str) -> dict:
    def r(key: str) -> float:
        return gc[key] / peer[key] if peer.get(key) else float("nan")

    return {f"ttft_p50_ratio_vs_{suffix}": r("ttft_p50_ms"), f"ttft_p99_ratio_vs_{suffix}": r("ttft_p99_ms"),
            f"tpot_p50_ratio_vs_{suffix}": r("tpot_p50_ms"), f"tpot_p99_ratio_vs_{suffix}": r("tpot_p99_ms"),
            f"throughput_ratio_vs_{suffix}": r("throughput_rps")}


def _measure(a, systems: dict[str, System], words) -> dict:
    from benchmarks.loadgen import RequestResult
    from benchmarks.replay import Workload, summarize

    out: dict = {}
    for trace in a.traces.split(","):
        merged: dict[str, tuple[list[RequestResult], float]] = {n: ([], 0.0) for n in systems}
        store: Counter = Counter()  # GreenCache's store during the measured runs
        sizes = []
        for r in range(a.rounds):
            w = Workload.build(a, trace, seed=a.seed + 1 + r)
            sizes.append((len(w), w.working_set_tokens, w.mean_prompt_tokens()))
            order = list(systems) if r % 2 == 0 else list(systems)[::-1]
            for name in order:
                s = systems[name]
                time.sleep(a.settle_s)
                before = s.store_counts() if name == "greencache" else None
                res, wall = w.run(s.url, MODEL, a, api_key=None, words=words)
                if before is not None:
                    store += s.store_counts() - before
                one = summarize(res, wall, a.ttft_slo_s, a.tpot_slo_s)
                print(f"[compare] {trace} round {r} {name:10s} ttft p50/p99 {one['ttft_p50_ms']:.0f}/"
                      f"{one['ttft_p99_ms']:.0f} ms  cached {one['cached_fraction']:.0%}  failed {one['failed']}",
                      file=sys.stderr, flush=True)
                merged[name] = (merged[name][0] + res, merged[name][1] + wall)
        per = {n: summarize(res, wall, a.ttft_slo_s, a.tpot_slo_s) for n, (res, wall) in merged.items()}
        entry: dict = {"systems": per, "requests_per_round": sizes[0][0],
                       "working_set_tokens": max(s[1] for s in sizes),
                       "mean_prompt_tokens": sum(s[2] for s in sizes) / len(sizes),
                       "slo_attainment": {n: v["slo_attainment"] for n, v in per.items()}}
        entry["working_set_vs_engine_kv"] = entry["working_set_tokens"] / a.kv_tokens
        if "greencache" in systems:
            entry["greencache_store"] = _store_report(store)
        if "greencache" in per and "ray-llm" in per:
            entry.update(_ratios(per["greencache"], per["ray-llm"], "ray_llm"))
        if "greencache" in per and "vllm" in per:
            entry.update(_ratios(per["greencache"], per["vllm"], "vllm"))
        out[trace] = entry
    return out


def run_compare(a: argparse.Namespace) -> int:
    from benchmarks.replay import WordPrompts
    from deployments.demo_model import local_model_dir

    names = [n.strip() for n in a.systems.split(",") if n.strip()]
    unknown = set(names) - set(SYSTEMS + EXTRA_SYSTEMS)
    if unknown:
        print(f"error: unknown systems {sorted(unknown)}; choose from {SYSTEMS + EXTRA_SYSTEMS}", file=sys.stderr)
        return 2
    if "ray-llm" in names:
        import importlib.util

        if importlib.util.find_spec("pyarrow") is None:  # ray.serve.llm needs it; the `bench` extra has it
            print("error: Ray Serve LLM needs the bench extra: pip install -e '.[bench]'", file=sys.stderr)
            return 2
    model_dir = local_model_dir(a.tokenizer, None)
    words = WordPrompts.for_model(model_dir)
    work = Path(a.work_dir or tempfile.mkdtemp(prefix="gc-compare-"))
    work.mkdir(parents=True, exist_ok=True)
    per_token = kv_bytes_per_token(model_dir)
    # It would override kv_cache_memory_bytes (vllm/platforms/cpu.py): no engine may inherit it.
    os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)
    from cache_store.local import free_port

    base = {"model_dir": model_dir, "max_model_len": a.max_model_len, "kv_bytes": a.kv_tokens * per_token,
            "replicas": a.replicas, "disk_mb": a.disk_mb, "redis_mb": a.redis_mb, "dir": str(work)}
    systems: dict[str, System] = {}
    result: dict = {"engine": {"model_dir": model_dir, "kv_tokens_per_engine": a.kv_tokens,
                               "kv_bytes_per_engine": base["kv_bytes"], "kv_bytes_per_token": per_token,
                               "max_model_len": a.max_model_len, "replicas": {n: (1 if n == "vllm" else a.replicas)
                                                                             for n in names}},
                    "startup_s": {}, "work_dir": str(work)}
    with clean_stdout() as emit:
        try:
            for name in names:  # one at a time: two engines starting at once on 2 cores take longer than in turn
                systems[name] = System(name, dict(base, port=free_port(), store=name != "greencache-nostore"), work)
                result["startup_s"][name] = systems[name].wait_ready(a.start_timeout_s)
                print(f"[compare] {name} ready in {result['startup_s'][name]:.0f} s at {systems[name].url}",
                      file=sys.stderr, flush=True)
                _warm_up(systems[name], words, a.warmup_requests, a.vocab)
            result["traces"] = _measure(a, systems, words)
        finally:
            for s in systems.values():
                s.stop()
        result.update({"rps": a.rps, "duration_s": a.duration_s, "rounds": a.rounds, "block_tokens": a.block_tokens,
                       "ttft_slo_s": a.ttft_slo_s, "tpot_slo_s": a.tpot_slo_s})
        _print_table(result)
        if a.json:
            emit(result)
    failed = sum(v["failed"] for t in result["traces"].values() for v in t["systems"].values())
    return 0 if failed == 0 else 1


def _print_table(result: dict) -> None:
    rows = [["trace", "system", "TTFT p50", "TTFT p99", "TPOT p50", "TPOT p99", "req/s", "SLO", "cached", "failed"]]
    for trace, t in result["traces"].items():
        for name, s in t["systems"].items():
            rows.append([trace, name, f"{s['ttft_p50_ms']:.0f} ms", f"{s['ttft_p99_ms']:.0f} ms",
                         f"{s['tpot_p50_ms']:.1f} ms", f"{s['tpot_p99_ms']:.1f} ms", f"{s['throughput_rps']:.2f}",
                         f"{s['slo_attainment']:.3f}", f"{s['cached_fraction']:.0%}", str(s["failed"])])
    print(table(rows), file=sys.stderr)
    for trace, t in result["traces"].items():
        print(f"{trace}: working set {t['working_set_tokens']} tokens = {t['working_set_vs_engine_kv']:.1f}x one "
              f"engine's KV ({result['engine']['kv_tokens_per_engine']} tokens)", file=sys.stderr)
        if "ttft_p50_ratio_vs_ray_llm" in t:
            print(f"  GreenCache / Ray Serve LLM: TTFT p50 {t['ttft_p50_ratio_vs_ray_llm']:.2f}x (target <= 0.6), "
                  f"p99 {t['ttft_p99_ratio_vs_ray_llm']:.2f}x (<= 0.8), throughput "
                  f"{t['throughput_ratio_vs_ray_llm']:.2f}x (>= 1.0)", file=sys.stderr)


def _serve_main(argv: list[str]) -> int:
    name, spec = argv[0], json.loads(argv[1])
    {"greencache": _serve_greencache, "ray-llm": _serve_ray_llm}[name](spec)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        raise SystemExit(_serve_main(sys.argv[2:]))
    from benchmarks.replay import main

    raise SystemExit(main(sys.argv[1:] + ["--compare"]))
