"""`greencache bench kv-reuse`: TTFT of a long prompt, cold vs loaded from each store tier.

One engine per system, all started first: per tier (disk, Redis) a fresh engine with only that
tier (vLLM's own prefix cache off, so reuse goes through the store), and the reference, an
engine with vLLM's own in-memory prefix cache and no connector. After a warm-up prompt each,
the same `--prompts` fresh ~`--prompt-tokens`-token prompts go to every system in turn (the
order rotating per prompt), each twice: TTFT cold (max_tokens=1; a tier's engine saves the
chunks) and TTFT again (a tier's engine loads them; the reference finds the KV still in its
memory: `ttft_engine_hit_s`, the limit a store hit is held against). Interleaved so that the
machine's drift over the run (large on a small shared machine) falls on every system alike.

Reported per tier: median cold and hit TTFT, the speedup (target >= 3x), where a hit's time
goes (`hit_stages_s`), whether a 16-token greedy continuation after a hit equals the cold one,
and `hit_vs_engine_ratio`, the median hit TTFT over the reference's (target <= 1.5).
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


def _cold_then_hit(eng, pr: list[int]) -> tuple[float, float, int, dict]:
    """TTFT of `pr` cold, TTFT again, the cached tokens in the second run and its connector
    stages (seconds; empty without a connector)."""
    c, _ = eng.timed_generate(pr)
    h, out = eng.timed_generate(pr)
    return c, h, out["num_cached_tokens"], {**out["stages"], "ttft_s": h} if out["stages"] else {}


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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="greencache bench kv-reuse", description=__doc__)
    p.add_argument("--json", action="store_true")
    p.add_argument("--model", default=None, help="model directory (default: the demo model)")
    p.add_argument("--prompt-tokens", type=int, default=4000)
    p.add_argument("--prompts", type=int, default=7)
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
    max_len = max(8192, args.prompt_tokens + 64)
    work = Path(tempfile.mkdtemp(prefix="gc-kv-reuse-"))
    tiers = args.tiers.split(",")
    redis = None
    engines: dict = {}
    try:
        if not args.no_engine_reference:
            engines["engine"] = KVEngine(model, None, max_model_len=max_len)
        for tier in tiers:
            if tier == "disk":
                spec = [{"kind": "disk", "path": str(work / "disk"), "capacity_bytes": 8 << 30}]
            elif tier == "redis":
                redis = redis or RedisServer()
                spec = [{"kind": "redis", "url": redis.url, "capacity_bytes": 8 << 30}]
            else:
                raise SystemExit(f"unknown tier {tier!r}")
            engines[tier] = KVEngine(model, {"chunk_tokens": chunk_tokens, "tiers": spec}, max_model_len=max_len)
        for eng in engines.values():
            eng.timed_generate(_prompt(999, args.prompt_tokens, vocab))  # warm-up
        runs: dict = {name: [] for name in engines}
        names = list(engines)
        for i in range(args.prompts):
            pr = _prompt(1000 + i, args.prompt_tokens, vocab)
            for name in names[i % len(names):] + names[:i % len(names)]:
                runs[name].append(_cold_then_hit(engines[name], pr))
                c, h, cached, st = runs[name][-1]
                print(f"[kv-reuse] {name}: cold {c:.3f}s hit {h:.3f}s cached {cached} "
                      + " ".join(f"{k} {v * 1000:.1f}ms" for k, v in st.items() if k != "ttft_s"),
                      file=sys.stderr, flush=True)
        results = {}
        for ti, tier in enumerate(tiers):
            eng = engines[tier]
            pr = _prompt(5000 + ti, args.prompt_tokens, vocab)
            ref = eng.generate([pr], max_tokens=16)[0]
            again = eng.generate([pr], max_tokens=16)[0]
            st = eng.stats()
            cold, hit = (statistics.median(r[k] for r in runs[tier]) for k in (0, 1))
            results[tier] = {
                "ttft_cold_s": cold,
                "ttft_hit_s": hit,
                "speedup": cold / hit,
                "cached_tokens": statistics.median(r[2] for r in runs[tier]),
                "outputs_identical": ref["token_ids"] == again["token_ids"] and again["num_cached_tokens"] > 0,
                "hit_stages_s": _stages([r[3] for r in runs[tier]]),
                "loaded_chunks": st["loaded_chunks"],
                "failed_chunks": st["failed_chunks"],
            }
        engine = None
        if "engine" in runs:
            engine = {"ttft_engine_cold_s": statistics.median(r[0] for r in runs["engine"]),
                      "ttft_engine_hit_s": statistics.median(r[1] for r in runs["engine"]),
                      "engine_cached_tokens": statistics.median(r[2] for r in runs["engine"])}
            for r in results.values():
                r["hit_vs_engine_ratio"] = r["ttft_hit_s"] / engine["ttft_engine_hit_s"]
    finally:
        for eng in engines.values():
            eng.close()
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
