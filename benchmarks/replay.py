"""Live trace replay: send a trace's requests to a running endpoint on the trace's schedule.

    greencache bench replay --trace mooncake-conversation --url http://127.0.0.1:PORT \\
        [--rps 2] [--duration-s 60] [--block-tokens 256] [--json]

Open loop: request i is sent at its (time-scaled) arrival time whether or not earlier ones have
finished, as real clients do. Prompts are token ids, so lengths and prefix sharing are exact:
each 512-token block id of the trace becomes `--block-tokens` fixed token ids (the same ids
wherever the block recurs, so requests share prefixes exactly as the trace says), then a
request-unique tail brings the prompt to its recorded length × block-tokens/512, capped at
`--max-prompt-tokens`. Outputs are the recorded length × the same scale, capped at
`--max-output-tokens`, with `ignore_eos`. A CPU demo model cannot serve Mooncake's 12k-token
prompts; the scale keeps the trace's shape and sharing at a size it can.

Reports TTFT/TPOT percentiles, SLO attainment (TTFT ≤ --ttft-slo-s and TPOT ≤ --tpot-slo-s),
throughput, and the prompt tokens the server reported as cached (usage.prompt_tokens_details).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from typing import Optional

import httpx

from benchmarks.loadgen import RequestResult, percentile, stream_completion


def build_requests(trace, *, duration_s: float, block_tokens: int, max_prompt_tokens: int, max_output_tokens: int,
                   vocab: int, seed: int) -> list[dict]:
    scale = block_tokens / trace.block_tokens
    out = []
    block_cache: dict[int, list[int]] = {}
    for i in range(len(trace)):
        t = float(trace.arrival_s[i])
        if t >= duration_s:
            break
        ids: list[int] = []
        for b in trace.request_blocks(i).tolist():
            toks = block_cache.get(b)
            if toks is None:
                r = random.Random(b * 1_000_003 + seed)
                toks = block_cache[b] = [r.randrange(10, vocab) for _ in range(block_tokens)]
            ids.extend(toks)
        want = max(1, round(int(trace.prompt_tokens[i]) * scale))
        r = random.Random(-(i + 1) * 7_919 - seed)
        while len(ids) < want:
            ids.append(r.randrange(10, vocab))
        ids = ids[:max_prompt_tokens]
        n_out = max(1, min(max_output_tokens, round(int(trace.output_tokens[i]) * scale)))
        out.append({"t": t, "prompt": ids, "max_tokens": n_out})
    return out


async def replay(url: str, model: str, requests: list[dict], *, api_key: Optional[str], progress=None,
                 timeout_s: float = 600.0) -> tuple[list[RequestResult], float]:
    results: list[Optional[RequestResult]] = [None] * len(requests)
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        t0 = time.perf_counter()

        async def one(k: int, req: dict) -> None:
            delay = req["t"] - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            results[k] = await stream_completion(client, url, model, req["prompt"], req["max_tokens"], api_key=api_key,
                                                 extra={"stream_options": {"include_usage": True}})
            if progress:
                progress()

        await asyncio.gather(*(one(k, r) for k, r in enumerate(requests)))
        wall = time.perf_counter() - t0
    return [r for r in results if r is not None], wall


def summarize(results: list[RequestResult], wall_s: float, ttft_slo_s: float, tpot_slo_s: float) -> dict:
    ok = [r for r in results if r.ok]
    ttft = sorted(r.ttft_s for r in ok)
    tpot = sorted(r.tpot_s for r in ok if r.tpot_s == r.tpot_s)
    met = [r for r in ok if r.ttft_s <= ttft_slo_s and (r.tpot_s != r.tpot_s or r.tpot_s <= tpot_slo_s)]
    prompt = sum(r.prompt_tokens for r in ok)
    return {
        "requests": len(results), "failed": len(results) - len(ok), "wall_s": wall_s,
        "throughput_rps": len(ok) / wall_s if wall_s else 0.0,
        "output_tok_s": sum(r.output_tokens for r in ok) / wall_s if wall_s else 0.0,
        "ttft_p50_ms": percentile(ttft, 50) * 1e3, "ttft_p90_ms": percentile(ttft, 90) * 1e3,
        "ttft_p99_ms": percentile(ttft, 99) * 1e3,
        "tpot_p50_ms": percentile(tpot, 50) * 1e3, "tpot_p90_ms": percentile(tpot, 90) * 1e3,
        "tpot_p99_ms": percentile(tpot, 99) * 1e3,
        "slo_attainment": len(met) / len(results) if results else 0.0,
        "ttft_slo_s": ttft_slo_s, "tpot_slo_s": tpot_slo_s,
        "prompt_tokens": prompt, "cached_prompt_tokens": sum(r.cached_tokens for r in ok),
        "cached_fraction": sum(r.cached_tokens for r in ok) / prompt if prompt else 0.0,
        "errors": sorted({r.error for r in results if not r.ok})[:5],
    }


def main(argv=None) -> int:
    from tqdm import tqdm

    from autoscaler.workloads import TRACES, load_trace

    ap = argparse.ArgumentParser(prog="greencache bench replay", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trace", default="mooncake-conversation", choices=sorted(TRACES))
    ap.add_argument("--url", required=True, help="base URL of an OpenAI-compatible server")
    ap.add_argument("--model", default=None, help="model name (default: the server's first)")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--rps", type=float, default=2.0, help="mean request rate after time-scaling")
    ap.add_argument("--duration-s", type=float, default=60.0, help="replay this many seconds of the scaled trace")
    ap.add_argument("--block-tokens", type=int, default=256,
                    help="replay tokens per 512-token trace block (>= the store chunk, 256, to see store hits)")
    ap.add_argument("--max-prompt-tokens", type=int, default=900)
    ap.add_argument("--max-output-tokens", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=250, help="token ids are drawn from [10, vocab)")
    ap.add_argument("--ttft-slo-s", type=float, default=2.0)
    ap.add_argument("--tpot-slo-s", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    a = ap.parse_args(argv)
    if not a.url.startswith(("http://127.", "http://localhost")):
        print("note: replaying to a non-loopback URL", file=sys.stderr)
    model = a.model
    headers = {"Authorization": f"Bearer {a.api_key}"} if a.api_key else {}
    try:
        if model is None:
            model = httpx.get(a.url.rstrip("/") + "/v1/models", headers=headers, timeout=10).json()["data"][0]["id"]
    except (httpx.HTTPError, KeyError, IndexError, ValueError) as e:
        print(f"error: cannot list models at {a.url}: {e}", file=sys.stderr)
        return 2
    days = (a.duration_s + 60) / 86400
    trace = load_trace(a.trace, days=days, rps=a.rps, seed=a.seed)
    reqs = build_requests(trace, duration_s=a.duration_s, block_tokens=a.block_tokens,
                          max_prompt_tokens=a.max_prompt_tokens, max_output_tokens=a.max_output_tokens,
                          vocab=a.vocab, seed=a.seed)
    bar = tqdm(total=len(reqs), desc=f"replay {a.trace}", unit="req", file=sys.stderr, disable=a.quiet)
    results, wall = asyncio.run(replay(a.url.rstrip("/"), model, reqs, api_key=a.api_key, progress=lambda: bar.update(1)))
    bar.close()
    s = summarize(results, wall, a.ttft_slo_s, a.tpot_slo_s)
    s.update({"trace": a.trace, "rps": a.rps, "duration_s": a.duration_s, "block_tokens": a.block_tokens,
              "mean_prompt_tokens": sum(len(r["prompt"]) for r in reqs) / max(len(reqs), 1)})
    if a.json:
        print(json.dumps(s))
    else:
        print(f"{s['requests']} requests ({s['failed']} failed) in {s['wall_s']:.1f} s: {s['throughput_rps']:.2f} req/s, "
              f"{s['output_tok_s']:.0f} tok/s")
        print(f"TTFT p50/p90/p99 {s['ttft_p50_ms']:.0f}/{s['ttft_p90_ms']:.0f}/{s['ttft_p99_ms']:.0f} ms; "
              f"TPOT p50/p90/p99 {s['tpot_p50_ms']:.1f}/{s['tpot_p90_ms']:.1f}/{s['tpot_p99_ms']:.1f} ms")
        print(f"SLO attainment {s['slo_attainment']:.3f} (TTFT ≤ {a.ttft_slo_s} s, TPOT ≤ {a.tpot_slo_s} s); "
              f"cached prompt tokens {s['cached_fraction']:.1%}")
    return 0 if s["failed"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
