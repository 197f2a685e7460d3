"""`greencache bench kv-reuse`: TTFT of a long prompt, cold vs loaded from each store tier.

For each tier (disk, Redis) a fresh engine with only that tier (vLLM's own prefix cache off,
so reuse goes through the store): a warm-up prompt, then for each of `--prompts` fresh
~`--prompt-tokens`-token prompts, TTFT cold (max_tokens=1, the chunks get saved) and TTFT again
(chunks loaded from the tier). Reported per tier: median cold and hit TTFT and the speedup, and
whether a 16-token greedy continuation after a hit equals the cold one. Target: speedup >= 3x.

The limit a store hit is held against: the same prompts on an engine with vLLM's own in-memory
prefix cache and no connector, cold and again (`ttft_engine_hit_s`: the KV is already in the
engine's memory, nothing to load). Each tier's `hit_vs_engine_ratio` is its hit TTFT over that;
target <= 1.5.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
from pathlib import Path


def _prompt(seed: int, n: int, vocab: int) -> list[int]:
    r = random.Random(seed)
    return [r.randrange(10, vocab) for _ in range(n)]


def _cold_then_hit(eng, seed: int, args, vocab: int, label: str) -> tuple[float, float, float, dict]:
    """After a warm-up prompt, each of `args.prompts` fresh prompts twice: median TTFT cold,
    median TTFT again (its prefix now cached), median cached tokens on the second run, and the
    median seconds of each connector stage in the second run (`_stages`)."""
    eng.timed_generate(_prompt(seed - 1, args.prompt_tokens, vocab))  # warm-up
    cold, hit, cached, stages = [], [], [], []
    for i in range(args.prompts):
        pr = _prompt(seed + i, args.prompt_tokens, vocab)
        c, _ = eng.timed_generate(pr)
        h, out = eng.timed_generate(pr)
        cold.append(c)
        hit.append(h)
        cached.append(out["num_cached_tokens"])
        stages.append({**out["stages"], "ttft_s": h})
        print(f"[kv-reuse] {label}: cold {c:.3f}s hit {h:.3f}s cached {out['num_cached_tokens']} "
              + " ".join(f"{k} {v * 1000:.1f}ms" for k, v in out["stages"].items()), file=sys.stderr, flush=True)
    return statistics.median(cold), statistics.median(hit), statistics.median(cached), _stages(stages)


def _stages(runs: list[dict]) -> dict:
    """Where a hit's TTFT goes, median over the hits: the connector's stages (lookup in the
    scheduler; read, verify, copy in the worker) and the rest (the engine's step: prefill of the
    uncached tail, sampling, scheduling)."""
    if not runs or len(runs[0]) <= 1:
        return {}
    keys = [k for k in runs[0] if k != "ttft_s"]
    out = {k: statistics.median(r[k] for r in runs) for k in keys}
    out["engine_and_rest_s"] = statistics.median(r["ttft_s"] - sum(r[k] for k in keys) for r in runs)
    return out


def _engine_hit(model: str, args, vocab: int) -> dict:
    """vLLM's own prefix cache, no connector: TTFT cold and with the prompt's KV in memory."""
    from benchmarks.kv_engine import KVEngine

    eng = KVEngine(model, None, max_model_len=max(8192, args.prompt_tokens + 64))
    try:
        cold, hit, cached, _ = _cold_then_hit(eng, 900, args, vocab, "engine prefix cache")
    finally:
        eng.close()
    return {"ttft_engine_cold_s": cold, "ttft_engine_hit_s": hit, "engine_cached_tokens": cached}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="greencache bench kv-reuse", description=__doc__)
    p.add_argument("--json", action="store_true")
    p.add_argument("--model", default=None, help="model directory (default: the demo model)")
    p.add_argument("--prompt-tokens", type=int, default=4000)
    p.add_argument("--prompts", type=int, default=3)
    p.add_argument("--tiers", default="disk,redis")
    p.add_argument("--chunk-tokens", type=int, default=None, help="the store's chunk size (default: KVStoreConfig's)")
    p.add_argument("--no-engine-reference", action="store_true", help="skip the engine-only prefix-cache run")
    args = p.parse_args(argv)

    from transformers import AutoTokenizer

    from benchmarks.kv_engine import KVEngine
    from cache_store.redis_server import RedisServer
    from deployments.config import ServeConfig
    from deployments.demo_model import resolve_model

    model = args.model or resolve_model(ServeConfig())[0]
    chunk_tokens = args.chunk_tokens or ServeConfig().kv_store.chunk_tokens
    vocab = len(AutoTokenizer.from_pretrained(model))
    work = Path(tempfile.mkdtemp(prefix="gc-kv-reuse-"))
    results = {}
    redis = None
    engine = None if args.no_engine_reference else _engine_hit(model, args, vocab)
    try:
        for ti, tier in enumerate(args.tiers.split(",")):
            if tier == "disk":
                tiers = [{"kind": "disk", "path": str(work / "disk"), "capacity_bytes": 8 << 30}]
            elif tier == "redis":
                redis = redis or RedisServer()
                tiers = [{"kind": "redis", "url": redis.url, "capacity_bytes": 8 << 30}]
            else:
                raise SystemExit(f"unknown tier {tier!r}")
            eng = KVEngine(model, {"chunk_tokens": chunk_tokens, "tiers": tiers}, max_model_len=max(8192, args.prompt_tokens + 64))
            try:
                cold, hit, cached, stages = _cold_then_hit(eng, 1000 * (ti + 1), args, vocab, tier)
                pr = _prompt(5000 + ti, args.prompt_tokens, vocab)
                ref = eng.generate([pr], max_tokens=16)[0]
                again = eng.generate([pr], max_tokens=16)[0]
                st = eng.stats()
            finally:
                eng.close()
            results[tier] = {
                "ttft_cold_s": cold,
                "ttft_hit_s": hit,
                "speedup": cold / hit,
                "cached_tokens": cached,
                "outputs_identical": ref["token_ids"] == again["token_ids"] and again["num_cached_tokens"] > 0,
                "hit_stages_s": stages,
                "loaded_chunks": st["loaded_chunks"],
                "failed_chunks": st["failed_chunks"],
            }
            if engine is not None:
                results[tier]["hit_vs_engine_ratio"] = results[tier]["ttft_hit_s"] / engine["ttft_engine_hit_s"]
    finally:
        if redis:
            redis.stop()
        shutil.rmtree(work, ignore_errors=True)
    out = {
        "prompt_tokens": args.prompt_tokens,
        "chunk_tokens": chunk_tokens,
        "model": model,
        "ttft_cold_s": statistics.median(r["ttft_cold_s"] for r in results.values()),
        "ttft_hit_s": {t: r["ttft_hit_s"] for t, r in results.items()},
        "speedup": {t: r["speedup"] for t, r in results.items()},
        "outputs_identical": all(r["outputs_identical"] for r in results.values()),
        "tiers": results,
        "target_speedup_min": 3.0,
    }
    if engine is not None:
        out.update(engine)
        out["hit_vs_engine_ratio"] = {t: r["hit_vs_engine_ratio"] for t, r in results.items()}
        out["target_hit_vs_engine_max"] = 1.5
    rows = [("tier", "TTFT cold s", "TTFT hit s", "speedup", "cached tokens", "identical", "hit / engine hit")]
    for t, r in results.items():
        rows.append((t, f"{r['ttft_cold_s']:.3f}", f"{r['ttft_hit_s']:.3f}", f"{r['speedup']:.1f}x",
                     f"{r['cached_tokens']:.0f}", str(r["outputs_identical"]),
                     f"{r['hit_vs_engine_ratio']:.2f}x" if "hit_vs_engine_ratio" in r else "-"))
    if engine is not None:
        rows.append(("engine", f"{engine['ttft_engine_cold_s']:.3f}", f"{engine['ttft_engine_hit_s']:.3f}",
                     f"{engine['ttft_engine_cold_s'] / engine['ttft_engine_hit_s']:.1f}x",
                     f"{engine['engine_cached_tokens']:.0f}", "-", "1.00x"))
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    print("\n".join("  ".join(x.ljust(k) for x, k in zip(r, w)) for r in rows), file=sys.stderr)
    for t, r in results.items():
        if r["hit_stages_s"]:
            print(f"{t} hit, where the time goes (median ms): "
                  + ", ".join(f"{k[:-2]} {v * 1000:.1f}" for k, v in r["hit_stages_s"].items()), file=sys.stderr)
    if args.json:
        print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
