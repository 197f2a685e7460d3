"""`greencache bench overload`: does one huge prompt stall everyone else's stream?

GreenCache (one replica, the demo model) serves 8 concurrent streams of 200 tokens each. In
three phases, alternating, one more request arrives a second into the streams:
- `none`: nothing (the baseline);
- `4mb`: a 4 MB prompt (refused with a 400 from its length, before any tokenizing);
- `tokenized`: the longest prompt the length check lets through (it must be tokenized to learn
  that it does not fit; the tokenizer runs off the event loop).
Reported per phase: p99 and max inter-token latency across the 8 streams, and the extra
request's status and time. Target: the 4 MB prompt moves the p99 inter-token latency by less
than 50 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import time

import httpx

MODEL = "greencache-demo"


async def _stream(client: httpx.AsyncClient, url: str, seed: int, max_tokens: int) -> list[float]:
    """Event arrival times of one streamed completion."""
    r = random.Random(seed)
    body = {"model": MODEL, "prompt": [r.randrange(10, 2000) for _ in range(64)], "max_tokens": max_tokens,
            "stream": True, "ignore_eos": True, "temperature": 0}
    times = []
    async with client.stream("POST", url + "/v1/completions", json=body) as resp:
        async for line in resp.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                times.append(time.perf_counter())
    return times


async def _extra(client: httpx.AsyncClient, url: str, prompt: str) -> tuple[int, float]:
    t0 = time.perf_counter()
    r = await client.post(url + "/v1/completions", content=json.dumps({"model": MODEL, "prompt": prompt,
                                                                        "max_tokens": 1}).encode(),
                          headers={"Content-Type": "application/json"})
    return r.status_code, time.perf_counter() - t0


async def _phase(url: str, extra: str | None, streams: int, max_tokens: int, seed: int) -> dict:
    async with httpx.AsyncClient(timeout=600) as client:
        tasks = [asyncio.create_task(_stream(client, url, seed + i, max_tokens)) for i in range(streams)]
        status, took = None, None
        if extra is not None:
            await asyncio.sleep(1.0)
            status, took = await _extra(client, url, extra)
        gaps = []
        for times in await asyncio.gather(*tasks):
            gaps += [b - a for a, b in zip(times[1:], times[2:])]  # after the first token
    gaps.sort()
    return {"itl_p99_ms": gaps[int(0.99 * (len(gaps) - 1))] * 1e3, "itl_max_ms": gaps[-1] * 1e3,
            "itl_p50_ms": statistics.median(gaps) * 1e3, "gaps": len(gaps), "extra_status": status,
            "extra_s": took}


def _words(n_chars: int, seed: int) -> str:
    r = random.Random(seed)
    words = "the model cache carbon grid request token prefix replica energy".split()
    out, size = [], 0
    while size < n_chars:
        w = r.choice(words)
        out.append(w)
        size += len(w) + 1
    return " ".join(out)[:n_chars]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="greencache bench overload", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the three phases")
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=200)
    args = p.parse_args(argv)
    from autoscaler.config import AutoscalerConfig
    from benchmarks.report import clean_stdout
    from cache_store.config import KVStoreConfig
    from cache_store.local import free_port
    from deployments.config import ServeConfig
    from deployments.launch import start_serve, stop_all

    config = ServeConfig(port=free_port(), max_model_len=2048, autoscaler=AutoscalerConfig(enabled=False),
                         kv_store=KVStoreConfig(enabled=False), max_body_bytes=5 * 10**6)
    with clean_stdout() as emit:
        try:
            url = start_serve(config)
            from transformers import AutoTokenizer

            from deployments.demo_model import resolve_model
            from deployments.ingress import _max_token_chars

            m = _max_token_chars(AutoTokenizer.from_pretrained(resolve_model(config)[0]))
            extras = {"none": None, "4mb": _words(4_000_000, 1), "tokenized": _words(2048 * m, 2)}
            phases: dict[str, list[dict]] = {k: [] for k in extras}
            asyncio.run(_phase(url, None, args.streams, 32, 0))  # warm-up
            for r in range(args.rounds):
                for name, extra in extras.items():
                    time.sleep(1.5)
                    res = asyncio.run(_phase(url, extra, args.streams, args.max_tokens, 100 * r))
                    phases[name].append(res)
                    print(f"[bench overload] round {r} {name:9s} ITL p99 {res['itl_p99_ms']:.1f} ms max "
                          f"{res['itl_max_ms']:.1f} ms extra {res['extra_status']} in "
                          f"{(res['extra_s'] or 0) * 1e3:.0f} ms", file=sys.stderr, flush=True)
        finally:
            stop_all()
        med = {k: {f: statistics.median(x[f] for x in v) for f in ("itl_p50_ms", "itl_p99_ms", "itl_max_ms")}
               for k, v in phases.items()}
        out = {"phases": phases, "median": med, "max_token_chars": m,
               "tokenized_prompt_chars": len(extras["tokenized"]),
               "itl_p99_delta_4mb_ms": med["4mb"]["itl_p99_ms"] - med["none"]["itl_p99_ms"],
               "itl_p99_delta_tokenized_ms": med["tokenized"]["itl_p99_ms"] - med["none"]["itl_p99_ms"],
               "target_delta_ms": 50.0}
        rows = [("phase", "ITL p50 ms", "ITL p99 ms", "ITL max ms")] + [
            (k, f"{v['itl_p50_ms']:.1f}", f"{v['itl_p99_ms']:.1f}", f"{v['itl_max_ms']:.1f}") for k, v in med.items()]
        from benchmarks.report import table

        print(table(rows), file=sys.stderr)
        print(f"p99 ITL moved by {out['itl_p99_delta_4mb_ms']:.1f} ms (4 MB prompt), "
              f"{out['itl_p99_delta_tokenized_ms']:.1f} ms (tokenized prompt); target < 50", file=sys.stderr)
        if args.json:
            emit(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
