"""Closed-loop load generator for OpenAI-compatible servers (streaming completions).

Measures what a client sees: time to first token (first SSE event carrying text), time per
output token after it, end-to-end latency, and throughput. Used by `greencache bench serve`
and the trace replay, against GreenCache and vLLM's own server alike, so both are measured by
the same code.
"""

from __future__ import annotations

import asyncio
import json
import random
import statistics
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import httpx


@dataclass
class RequestResult:
    ok: bool
    ttft_s: float = float("nan")
    e2e_s: float = float("nan")
    output_tokens: int = 0
    error: str = ""
    prompt_tokens: int = 0
    cached_tokens: int = 0
    text: str = ""  # the streamed completion
    replica: str = ""  # GreenCache's x-greencache-replica header, when the server sends it

    @property
    def tpot_s(self) -> float:
        if self.output_tokens <= 1:
            return float("nan")
        return (self.e2e_s - self.ttft_s) / (self.output_tokens - 1)


@dataclass
class LoadResult:
    results: list[RequestResult] = field(default_factory=list)
    wall_s: float = 0.0

    @property
    def ok(self) -> list[RequestResult]:
        return [r for r in self.results if r.ok]

    def summary(self) -> dict:
        ok = self.ok
        ttft = sorted(r.ttft_s for r in ok)
        tpot = sorted(r.tpot_s for r in ok if r.tpot_s == r.tpot_s)
        out_tokens = sum(r.output_tokens for r in ok)
        return {
            "requests": len(self.results),
            "failed": len(self.results) - len(ok),
            "wall_s": self.wall_s,
            "rps": len(ok) / self.wall_s if self.wall_s else 0.0,
            "output_tok_s": out_tokens / self.wall_s if self.wall_s else 0.0,
            "ttft_p50_ms": percentile(ttft, 50) * 1e3,
            "ttft_p90_ms": percentile(ttft, 90) * 1e3,
            "tpot_p50_ms": percentile(tpot, 50) * 1e3,
            "e2e_mean_s": statistics.fmean(r.e2e_s for r in ok) if ok else float("nan"),
        }


def percentile(sorted_values: Sequence[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = (len(sorted_values) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def random_token_prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    """`n` distinct prompts of `length` token ids (no shared prefix between them)."""
    rng = random.Random(seed)
    return [[rng.randrange(10, vocab) for _ in range(length)] for _ in range(n)]


async def stream_completion(
    client: httpx.AsyncClient,
    url: str,
    model: str,
    prompt,
    max_tokens: int,
    *,
    api_key: Optional[str] = None,
    extra: Optional[dict] = None,
) -> RequestResult:
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": True,
            "ignore_eos": True, "temperature": 0.0, **(extra or {})}
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    t0 = time.perf_counter()
    ttft = None
    tokens = 0
    prompt_n = cached_n = 0
    parts: list[str] = []
    replica = ""
    try:
        async with client.stream("POST", url + "/v1/completions", json=body, headers=headers) as r:
            if r.status_code != 200:
                return RequestResult(False, error=f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
            replica = r.headers.get("x-greencache-replica", "")
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                payload = json.loads(line[6:])
                if "error" in payload:
                    return RequestResult(False, error=str(payload["error"]))
                for c in payload.get("choices", []):
                    parts.append(c.get("text") or "")
                    if c.get("text"):
                        if ttft is None:
                            ttft = time.perf_counter() - t0
                        tokens += 1  # one SSE event per engine step per request
                usage = payload.get("usage")
                if usage:
                    tokens = usage.get("completion_tokens", tokens)
                    prompt_n = usage.get("prompt_tokens", 0)
                    cached_n = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0) or 0
    except httpx.HTTPError as e:
        return RequestResult(False, error=f"{type(e).__name__}: {e}")
    e2e = time.perf_counter() - t0
    return RequestResult(True, ttft if ttft is not None else e2e, e2e, tokens, prompt_tokens=prompt_n,
                         cached_tokens=cached_n, text="".join(parts), replica=replica)


async def run_closed_loop(
    url: str,
    model: str,
    prompts: Sequence,
    *,
    concurrency: int,
    max_tokens: int,
    api_key: Optional[str] = None,
    timeout_s: float = 600.0,
) -> LoadResult:
    """Send every prompt once, keeping `concurrency` requests in flight."""
    queue: asyncio.Queue = asyncio.Queue()
    for p in prompts:
        queue.put_nowait(p)
    out = LoadResult()
    limits = httpx.Limits(max_connections=concurrency * 2, max_keepalive_connections=concurrency * 2)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:

        async def worker() -> None:
            while True:
                try:
                    p = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                out.results.append(
                    await stream_completion(client, url, model, p, max_tokens, api_key=api_key,
                                            extra={"stream_options": {"include_usage": True}})
                )

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        out.wall_s = time.perf_counter() - t0
    return out
