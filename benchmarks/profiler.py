"""`greencache profile`: measure a performance profile on a running OpenAI endpoint.

Measures, with the same load generator the benchmarks use:
- prefill: TTFT of single unloaded requests with fresh random prompts of several lengths
  (max_tokens=1), median of `repeats` each;
- decode: time per output token with B concurrent streams (short prompts), B in `batches`;
- prefix hits: TTFT of a repeated prompt (the serving path's cache), per cached token beyond
  the uncached remainder, as `kv_load_s_per_token["engine"]`.
Writes the JSON that `autoscaler.perf_model.PerfModel.load` reads.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import httpx

from benchmarks.loadgen import random_token_prompts, run_closed_loop


def measure(url: str, model: str, *, lengths=(64, 256, 512, 1024), batches=(1, 2, 4, 8), repeats: int = 3,
            output_tokens: int = 32, vocab: int = 2000, api_key: str | None = None, seed: int = 0) -> dict:
    prefill = []
    for i, n in enumerate(lengths):
        samples = []
        for r, p in enumerate(random_token_prompts(repeats, n, vocab, seed * 1000 + i)):
            res = asyncio.run(run_closed_loop(url, model, [p], concurrency=1, max_tokens=1, api_key=api_key))
            if res.ok:
                samples.append(res.ok[0].ttft_s)
        prefill.append([n, statistics.median(samples)])
    decode = []
    for j, b in enumerate(batches):
        prompts = random_token_prompts(b, 16, vocab, seed * 1000 + 500 + j)
        res = asyncio.run(run_closed_loop(url, model, prompts, concurrency=b, max_tokens=output_tokens, api_key=api_key))
        tpots = [x.tpot_s for x in res.ok if x.tpot_s == x.tpot_s]
        decode.append([b, statistics.median(tpots)])
    # prefix hit: the same long prompt twice; the second TTFT minus the prefill of the tokens
    # it still computes, per cached token
    n = max(lengths)
    p = random_token_prompts(1, n, vocab, seed * 1000 + 900)[0]
    cold = asyncio.run(run_closed_loop(url, model, [p], concurrency=1, max_tokens=1, api_key=api_key)).ok[0].ttft_s
    hit = asyncio.run(run_closed_loop(url, model, [p], concurrency=1, max_tokens=1, api_key=api_key)).ok[0].ttft_s
    return {
        "prefill": prefill,
        "decode": decode,
        "prefix_hit": {"prompt_tokens": n, "ttft_cold_s": cold, "ttft_hit_s": hit},
        "kv_load_s_per_token": {"engine": max(0.0, hit - prefill[0][1]) / n},
        "meta": {"url": url, "model": model, "measured_at": time.time(), "output_tokens": output_tokens},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="greencache profile", description=__doc__)
    p.add_argument("--url", default="http://127.0.0.1:8321", help="OpenAI endpoint (GreenCache or vLLM)")
    p.add_argument("--model", default="greencache-demo")
    p.add_argument("--api-key", default=None)
    p.add_argument("--out", default="profile.json")
    p.add_argument("--lengths", default="64,256,512,1024")
    p.add_argument("--batches", default="1,2,4,8")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    try:
        models = httpx.get(args.url + "/v1/models", headers=headers, timeout=10).json()
        max_len = int(models["data"][0].get("max_model_len", 4096))
    except Exception as e:
        print(f"greencache profile: cannot reach {args.url}/v1/models: {e}", file=sys.stderr)
        return 2
    lengths = [n for n in (int(x) for x in args.lengths.split(",")) if n < max_len - 2]
    prof = measure(args.url, args.model, lengths=lengths, batches=[int(x) for x in args.batches.split(",")],
                   repeats=args.repeats, api_key=args.api_key)
    Path(args.out).write_text(json.dumps(prof, indent=2))
    from autoscaler.perf_model import PerfModel

    m = PerfModel.fit(prof)
    print(f"wrote {args.out}: prefill(n) = {m.a:.4f} + {m.b:.2e}·n + {m.c:.2e}·n² s; "
          f"decode_step(B) = {m.d:.4f} + {m.e:.4f}·B s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
