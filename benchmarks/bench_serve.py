"""`greencache bench serve`: GreenCache vs vLLM's own OpenAI server, same engine, same load.

Both servers run the same model with the same engine settings and environment, and are up at
the same time; rounds alternate (GreenCache, vLLM, GreenCache, ...) so drift on a shared
machine hits both alike. Each round sends fresh prompts (no cross-round prefix-cache hits).
Reported per system: requests/s and TTFT p50 over all measured rounds (a warm-up round each is
discarded). Targets: throughput_ratio >= 0.9, p50 TTFT overhead <= 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from benchmarks.loadgen import LoadResult, percentile, random_token_prompts, run_closed_loop
from benchmarks.report import table
from cache_store.local import free_port
from deployments.settings import settings

MODEL_NAME = "greencache-demo"
# Pause before switching systems: a CPU engine's OpenMP threads keep spinning for a while
# after its last step and would slow whichever system is measured next.
SETTLE_S = 1.0


def _wait_ready(url: str, proc: subprocess.Popen | None, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode}")
        try:
            if httpx.get(url + "/v1/models", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise TimeoutError(f"{url} not ready after {timeout_s}s")


def start_vllm_server(model: str, port: int, max_model_len: int, log_path: Path,
                      stream_interval: int = 1) -> subprocess.Popen:
    from deployments.config import engine_env

    env = dict(os.environ, **engine_env())
    cmd = [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", model, "--served-model-name", MODEL_NAME,
        "--host", "127.0.0.1", "--port", str(port),
        "--enforce-eager", "--max-model-len", str(max_model_len),
        "--uvicorn-log-level", "warning", "--stream-interval", str(stream_interval),
    ]
    log = open(log_path, "w")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="greencache bench serve", description=__doc__)
    p.add_argument("--json", action="store_true", help="print the JSON result on stdout")
    p.add_argument("--model", default=None, help="model directory (default: the demo model)")
    p.add_argument("--requests", type=int, default=48, help="requests per round")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--prompt-tokens", type=int, default=256)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3, help="measured rounds per system")
    p.add_argument("--max-model-len", type=int, default=2048)
    p.add_argument("--stream-interval-ms", type=float, default=0.0,
                   help="GreenCache replica stream coalescing (0 = one message per engine step, like vLLM)")
    p.add_argument("--engine-stream-interval", type=int, default=1,
                   help="vLLM's --stream-interval (tokens per streamed output after the first), set on BOTH engines")
    p.add_argument("--no-direct-ingress", action="store_true",
                   help="GreenCache through Ray Serve's HTTP proxy (one more process per streamed token)")
    p.add_argument("--probe-requests", type=int, default=24,
                   help="requests per system at concurrency 1 (pure path latency, no queueing)")
    return p.parse_args(argv)


def _greencache_config(args: argparse.Namespace):
    """GreenCache with the baseline's engine: no autoscaler, no KV connector (vLLM's server has neither)."""
    from autoscaler.config import AutoscalerConfig
    from cache_store.config import KVStoreConfig
    from deployments.config import ServeConfig
    from deployments.demo_model import resolve_model

    config = ServeConfig(model=args.model, port=free_port(), num_replicas=1, max_model_len=args.max_model_len,
                         stream_interval_ms=args.stream_interval_ms, direct_ingress=not args.no_direct_ingress,
                         engine_kwargs={"stream_interval": args.engine_stream_interval},
                         autoscaler=AutoscalerConfig(enabled=False), kv_store=KVStoreConfig(enabled=False))
    model_dir, _ = resolve_model(config)
    return config.model_copy(update={"model": model_dir, "served_model_name": MODEL_NAME})


def _run_rounds(args, systems: dict[str, str], vocab: int) -> tuple[dict, dict]:
    """Alternating measured rounds (round 0 warms both systems up and is discarded)."""
    rounds: dict[str, list[dict]] = {"greencache": [], "vllm": []}
    merged: dict[str, LoadResult] = {"greencache": LoadResult(), "vllm": LoadResult()}
    seed = 0
    for r in range(args.rounds + 1):
        for name in ("greencache", "vllm") if r % 2 == 0 else ("vllm", "greencache"):
            seed += 1
            time.sleep(SETTLE_S)
            prompts = random_token_prompts(args.requests, args.prompt_tokens, vocab, seed)
            res = asyncio.run(run_closed_loop(systems[name], MODEL_NAME, prompts,
                                              concurrency=args.concurrency, max_tokens=args.max_tokens))
            s = res.summary()
            print(f"[bench serve] round {r} {name:10s} rps={s['rps']:.2f} ttft_p50={s['ttft_p50_ms']:.1f}ms "
                  f"failed={s['failed']}", file=sys.stderr, flush=True)
            if r > 0:
                rounds[name].append(s)
                merged[name].results.extend(res.results)
                merged[name].wall_s += res.wall_s
    return rounds, merged


def _probe(args, systems: dict[str, str], vocab: int) -> dict[str, list[float]]:
    """Unloaded probe: one request at a time, systems interleaved request by request, so TTFT
    differences are the serving path's own latency rather than queueing."""
    probe: dict[str, list[float]] = {"greencache": [], "vllm": []}
    for i, prompt in enumerate(random_token_prompts(args.probe_requests, args.prompt_tokens, vocab, 10_000)):
        for name in ("greencache", "vllm") if i % 2 == 0 else ("vllm", "greencache"):
            time.sleep(SETTLE_S)
            res = asyncio.run(run_closed_loop(systems[name], MODEL_NAME, [prompt], concurrency=1,
                                              max_tokens=args.max_tokens))
            probe[name].extend(x.ttft_s for x in res.ok)
    return probe


def _measure(args, config, model_dir: str, vocab: int) -> tuple[dict, dict, dict]:
    """Start both systems, run the rounds and the probe, stop both."""
    from deployments.launch import start_serve, stop_all

    log_dir = Path(config.home or settings().home) / "bench"
    log_dir.mkdir(parents=True, exist_ok=True)
    vllm_port = free_port()
    vllm_proc = start_vllm_server(model_dir, vllm_port, args.max_model_len, log_dir / "vllm_server.log",
                                  stream_interval=args.engine_stream_interval)
    try:
        systems = {"greencache": start_serve(config), "vllm": f"http://127.0.0.1:{vllm_port}"}
        _wait_ready(systems["vllm"], vllm_proc)
        _wait_ready(systems["greencache"], None)
        rounds, merged = _run_rounds(args, systems, vocab)
        probe = _probe(args, systems, vocab)
    finally:
        vllm_proc.terminate()
        try:
            vllm_proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(vllm_proc.pid, 9)
        stop_all()
    return rounds, merged, probe


def _stats(res: LoadResult) -> dict:
    ttft = sorted(x.ttft_s for x in res.ok)
    return {"rps": len(res.ok) / res.wall_s, "ttft_p50_ms": percentile(ttft, 50) * 1e3,
            "ttft_p90_ms": percentile(ttft, 90) * 1e3, "failed": len(res.results) - len(res.ok)}


def _result(args, model_dir: str, rounds: dict, merged: dict, probe: dict) -> dict:
    g, v = _stats(merged["greencache"]), _stats(merged["vllm"])
    # Round r of each system ran back to back, so per-round ratios cancel slow drift on a
    # shared machine; their medians are a cross-check on the pooled figures.
    pairs = list(zip(rounds["greencache"], rounds["vllm"]))
    pair_ratio = sorted(a["rps"] / b["rps"] for a, b in pairs if b["rps"])
    pair_ttft = sorted(a["ttft_p50_ms"] - b["ttft_p50_ms"] for a, b in pairs)
    return {
        "greencache_rps": g["rps"],
        "vllm_rps": v["rps"],
        "throughput_ratio": g["rps"] / v["rps"] if v["rps"] else float("nan"),
        "ttft_p50_ms_greencache": g["ttft_p50_ms"],
        "ttft_p50_ms_vllm": v["ttft_p50_ms"],
        "ttft_p50_overhead_ms": g["ttft_p50_ms"] - v["ttft_p50_ms"],
        "ttft_p90_ms_greencache": g["ttft_p90_ms"],
        "ttft_p90_ms_vllm": v["ttft_p90_ms"],
        "ttft_p50_ms_c1_greencache": percentile(sorted(probe["greencache"]), 50) * 1e3,
        "ttft_p50_ms_c1_vllm": percentile(sorted(probe["vllm"]), 50) * 1e3,
        "paired_rounds": {"pairs": len(pairs), "throughput_ratio_median": percentile(pair_ratio, 50),
                          "ttft_p50_overhead_ms_median": percentile(pair_ttft, 50)},
        "failed_greencache": g["failed"],
        "failed_vllm": v["failed"],
        "targets": {"throughput_ratio_min": 0.9, "ttft_p50_overhead_ms_max": 10.0},
        "config": {"direct_ingress": not args.no_direct_ingress, "stream_interval_ms": args.stream_interval_ms,
                   "engine_stream_interval": args.engine_stream_interval,
                   "requests_per_round": args.requests, "concurrency": args.concurrency,
                   "prompt_tokens": args.prompt_tokens, "max_tokens": args.max_tokens,
                   "rounds": args.rounds, "model": model_dir, "cpus": os.cpu_count()},
        "rounds": rounds,
    }


def _print_table(out: dict) -> None:
    rows = [("system", "req/s", "TTFT p50 ms", "TTFT p90 ms", "failed")]
    for name in ("greencache", "vllm"):
        rows.append((name, f"{out[f'{name}_rps']:.2f}", f"{out[f'ttft_p50_ms_{name}']:.1f}",
                     f"{out[f'ttft_p90_ms_{name}']:.1f}", str(out[f"failed_{name}"])))
    for name in ("greencache", "vllm"):
        rows.append((f"(c=1) {name}", "", f"{out[f'ttft_p50_ms_c1_{name}']:.1f}", "", ""))
    print(table(rows), file=sys.stderr)
    print(f"throughput_ratio={out['throughput_ratio']:.3f} (target >= 0.9)  "
          f"TTFT p50 overhead={out['ttft_p50_overhead_ms']:.1f} ms (target <= 10)", file=sys.stderr)
    pr = out["paired_rounds"]
    print(f"median over {pr['pairs']} round pairs: throughput_ratio={pr['throughput_ratio_median']:.3f}  "
          f"TTFT p50 overhead={pr['ttft_p50_overhead_ms_median']:.1f} ms", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    from transformers import AutoTokenizer

    from benchmarks.report import clean_stdout

    with clean_stdout() as emit:  # Ray's C++ workers write log lines to fd 1 (e.g. at shutdown)
        config = _greencache_config(args)
        vocab = len(AutoTokenizer.from_pretrained(config.model))
        rounds, merged, probe = _measure(args, config, config.model, vocab)
        out = _result(args, config.model, rounds, merged, probe)
        _print_table(out)
        if args.json:
            emit(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
