"""Live trace replay: send a workload's requests to a running endpoint on the trace's schedule.

    greencache bench replay --trace mooncake-conversation --url http://127.0.0.1:PORT \\
        [--rps 2] [--duration-s 60] [--block-tokens 256] [--json]
    greencache bench replay --trace mt-bench --url ...            (two-turn chat sessions)
    greencache bench replay --compare [--trace ...]               (starts GreenCache, Ray Serve LLM
                                                                   and vLLM itself: replay_compare.py)

Open loop: request i is sent at its (time-scaled) arrival time whether or not earlier ones have
finished, as real clients do. Prompts are token ids, so lengths and prefix sharing are exact:
each 512-token block id of the trace becomes `--block-tokens` fixed token ids (the same ids
wherever the block recurs, so requests share prefixes exactly as the trace says), then a
request-unique tail brings the prompt to its recorded length × block-tokens/512, capped at
`--max-prompt-tokens`. Outputs are the recorded length × the same scale, capped at
`--max-output-tokens`, with `ignore_eos`. A CPU demo model cannot serve Mooncake's 12k-token
prompts; the scale keeps the trace's shape and sharing at a size it can.

MT-Bench (`--trace mt-bench`): sessions arrive as a Poisson process at rps/2 (two requests
each) and cycle through the 80 questions. A first turn is a shared system prompt
(`--system-tokens`) and the question; the second turn is sent `--think-s` (exponential mean)
after the first one's answer has streamed back, and carries the first turn, the answer text the
server returned and the follow-up question, as a chat client does. Question lengths are the
text's (characters / 4); answers are `--answer-tokens` long. Session arrivals are open loop, the
second turn waits for the first, as a person does.

Text prompts (`--text`, always for mt-bench and --compare): each token id is written as one word
of the served model's vocabulary that its tokenizer maps back to exactly that one token (checked
when the table is built), so a server that only sees text (and a router that matches text
prefixes, as Ray Serve LLM's does) gets the same lengths and prefixes.

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
from dataclasses import dataclass
from typing import Optional, Sequence

import httpx

from benchmarks.loadgen import RequestResult, percentile, stream_completion

MT_BENCH = "mt-bench"
CHARS_PER_TOKEN = 4  # English text under BPE tokenizers, for the MT-Bench question lengths


class WordPrompts:
    """Token-id prompts as text whose tokenization is exactly one token per id (and so keeps
    every prefix): id k becomes the k-th (mod n) whole-word token of `tokenizer`, with its space."""

    def __init__(self, tokenizer) -> None:
        words = []
        for tok, tid in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
            word = tokenizer.convert_tokens_to_string([tok])
            if (word.startswith(" ") and word[1:].isascii() and word[1:].isalpha()
                    and tokenizer.encode(word, add_special_tokens=False) == [tid]):
                words.append((tid, word))
        if len(words) < 16:
            raise ValueError("the tokenizer has too few whole-word tokens to write token-exact text prompts")
        self.ids = [t for t, _ in words]
        self.words = [w for _, w in words]
        probe = [random.Random(0).randrange(len(words)) for _ in range(64)]
        if tokenizer.encode(self.text(probe), add_special_tokens=False) != [self.ids[k] for k in probe]:
            raise ValueError("this tokenizer merges across words; text prompts would not keep token prefixes")

    @classmethod
    def for_model(cls, model_dir: str) -> "WordPrompts":
        from transformers import AutoTokenizer

        return cls(AutoTokenizer.from_pretrained(model_dir))

    def text(self, ids: Sequence[int]) -> str:
        n = len(self.words)
        return "".join(self.words[i % n] for i in ids)


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


@dataclass
class Session:
    """One MT-Bench conversation: when it starts, its two questions (token ids) and the pause
    between the first answer and the second question."""
    t: float
    system: list[int]
    turns: tuple[list[int], list[int]]
    think_s: float
    question_id: int


def mt_bench_sessions(*, duration_s: float, rps: float, system_tokens: int, think_s: float, vocab: int,
                      seed: int) -> list[Session]:
    from autoscaler.workloads import mt_bench_questions

    rng = random.Random(seed)
    questions = mt_bench_questions()
    rng.shuffle(questions)
    system = [random.Random(seed * 31 + 1).randrange(10, vocab) for _ in range(system_tokens)]

    def ids(q: dict, turn: int) -> list[int]:
        r = random.Random(q["question_id"] * 1_000_003 + turn * 7_919 + seed)
        return [r.randrange(10, vocab) for _ in range(max(1, round(len(q["turns"][turn]) / CHARS_PER_TOKEN)))]

    out: list[Session] = []
    t = 0.0
    while True:
        t += rng.expovariate(rps / 2)
        if t >= duration_s:
            return out
        q = questions[len(out) % len(questions)]
        out.append(Session(t, system, (ids(q, 0), ids(q, 1)), rng.expovariate(1 / think_s) if think_s > 0 else 0.0,
                           q["question_id"]))


def distinct_prefix_tokens(prompts: Sequence[Sequence[int]], granule: int = 16) -> int:
    """Tokens a cache must hold to keep every prompt's prefix: distinct `granule`-token prefix
    steps over all prompts, times `granule`."""
    seen: set[int] = set()
    for p in prompts:
        h = 0
        for k in range(0, len(p) - granule + 1, granule):
            h = hash((h, tuple(p[k:k + granule])))
            seen.add(h)
    return len(seen) * granule


def session_working_set_tokens(sessions: Sequence[Session], answer_tokens: int) -> int:
    """Distinct prompt-prefix tokens of an MT-Bench replay: the shared system prompt once, and per
    session its questions and first answer (the second turn's prompt holds all of them)."""
    if not sessions:
        return 0
    return len(sessions[0].system) + sum(len(s.turns[0]) + answer_tokens + len(s.turns[1]) for s in sessions)


def _client(timeout_s: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=timeout_s, limits=httpx.Limits(max_connections=512, max_keepalive_connections=64))


USAGE = {"stream_options": {"include_usage": True}}


async def replay(url: str, model: str, requests: list[dict], *, api_key: Optional[str], progress=None,
                 timeout_s: float = 600.0, words: Optional[WordPrompts] = None) -> tuple[list[RequestResult], float]:
    """Send `requests` open loop; `words` set: as text prompts."""
    results: list[Optional[RequestResult]] = [None] * len(requests)
    async with _client(timeout_s) as client:
        t0 = time.perf_counter()

        async def one(k: int, req: dict) -> None:
            delay = req["t"] - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            prompt = words.text(req["prompt"]) if words else req["prompt"]
            results[k] = await stream_completion(client, url, model, prompt, req["max_tokens"], api_key=api_key,
                                                 extra=USAGE)
            if progress:
                progress()

        await asyncio.gather(*(one(k, r) for k, r in enumerate(requests)))
        wall = time.perf_counter() - t0
    return [r for r in results if r is not None], wall


async def replay_sessions(url: str, model: str, sessions: list[Session], words: WordPrompts, *, answer_tokens: int,
                          max_tokens: int, api_key: Optional[str], progress=None,
                          timeout_s: float = 600.0) -> tuple[list[RequestResult], float]:
    """Two-turn sessions: the second turn carries the first turn's prompt and returned answer."""
    results: list[RequestResult] = []
    async with _client(timeout_s) as client:
        t0 = time.perf_counter()

        async def one(s: Session) -> None:
            delay = s.t - (time.perf_counter() - t0)
            if delay > 0:
                await asyncio.sleep(delay)
            first = words.text(s.system + s.turns[0])
            r1 = await stream_completion(client, url, model, first, answer_tokens, api_key=api_key, extra=USAGE)
            results.append(r1)
            if progress:
                progress()
            await asyncio.sleep(s.think_s)
            second = first + r1.text + words.text(s.turns[1])
            results.append(await stream_completion(client, url, model, second, max_tokens, api_key=api_key,
                                                   extra=USAGE))
            if progress:
                progress()

        await asyncio.gather(*(one(s) for s in sessions))
        wall = time.perf_counter() - t0
    return results, wall


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


def add_workload_args(ap: argparse.ArgumentParser) -> None:
    from autoscaler.workloads import TRACES

    ap.add_argument("--trace", default="mooncake-conversation", choices=sorted(TRACES) + [MT_BENCH])
    ap.add_argument("--rps", type=float, default=2.0, help="mean request rate after time-scaling")
    ap.add_argument("--duration-s", type=float, default=60.0, help="replay this many seconds of the scaled trace")
    ap.add_argument("--block-tokens", type=int, default=256,
                    help="replay tokens per 512-token trace block (>= the store chunk, 256, to see store hits)")
    ap.add_argument("--max-prompt-tokens", type=int, default=900)
    ap.add_argument("--max-output-tokens", type=int, default=32)
    ap.add_argument("--vocab", type=int, default=250, help="token ids are drawn from [10, vocab)")
    ap.add_argument("--system-tokens", type=int, default=128, help="mt-bench: shared system prompt length")
    ap.add_argument("--answer-tokens", type=int, default=64, help="mt-bench: length of the first turn's answer")
    ap.add_argument("--think-s", type=float, default=5.0, help="mt-bench: mean pause before the second turn")
    ap.add_argument("--ttft-slo-s", type=float, default=2.0)
    ap.add_argument("--tpot-slo-s", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=0)


@dataclass
class Workload:
    """A replayable request stream, built once and sent to any server."""
    name: str
    requests: list[dict]  # open-loop token-id requests (traces)
    sessions: list[Session]  # two-turn sessions (mt-bench)
    working_set_tokens: int
    answer_tokens: int = 0  # mt-bench: the first turn's answer, which the second turn's prompt carries

    @classmethod
    def build(cls, a: argparse.Namespace, trace: str, seed: int) -> "Workload":
        if trace == MT_BENCH:
            sessions = mt_bench_sessions(duration_s=a.duration_s, rps=a.rps, system_tokens=a.system_tokens,
                                         think_s=a.think_s, vocab=a.vocab, seed=seed)
            return cls(trace, [], sessions, session_working_set_tokens(sessions, a.answer_tokens), a.answer_tokens)
        from autoscaler.workloads import load_trace

        tr = load_trace(trace, days=(a.duration_s + 60) / 86400, rps=a.rps, seed=seed)
        reqs = build_requests(tr, duration_s=a.duration_s, block_tokens=a.block_tokens,
                              max_prompt_tokens=a.max_prompt_tokens, max_output_tokens=a.max_output_tokens,
                              vocab=a.vocab, seed=seed)
        return cls(trace, reqs, [], distinct_prefix_tokens([r["prompt"] for r in reqs]))

    def __len__(self) -> int:
        return len(self.requests) + 2 * len(self.sessions)

    def mean_prompt_tokens(self) -> float:
        if self.sessions:  # turn 1: system + q1; turn 2: system + q1 + answer + q2
            return sum(2 * (len(s.system) + len(s.turns[0])) + self.answer_tokens + len(s.turns[1])
                       for s in self.sessions) / len(self)
        return sum(len(r["prompt"]) for r in self.requests) / max(len(self.requests), 1)

    def run(self, url: str, model: str, a: argparse.Namespace, *, api_key: Optional[str], words: Optional[WordPrompts],
            progress=None) -> tuple[list[RequestResult], float]:
        if self.sessions:
            return asyncio.run(replay_sessions(url, model, self.sessions, words, answer_tokens=a.answer_tokens,
                                               max_tokens=a.max_output_tokens, api_key=api_key, progress=progress))
        return asyncio.run(replay(url, model, self.requests, api_key=api_key, progress=progress, words=words))


def main(argv=None) -> int:
    from tqdm import tqdm

    ap = argparse.ArgumentParser(prog="greencache bench replay", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_args(ap)
    ap.add_argument("--url", help="base URL of an OpenAI-compatible server")
    ap.add_argument("--model", default=None, help="model name (default: the server's first)")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--text", action="store_true", help="send text prompts (token-exact, see above)")
    ap.add_argument("--tokenizer", default=None,
                    help="model directory whose tokenizer the server uses, for text prompts (default: the demo model)")
    ap.add_argument("--compare", action="store_true",
                    help="start GreenCache, Ray Serve LLM and vLLM here and replay against each (replay_compare.py)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--quiet", action="store_true")
    if "--compare" in (sys.argv[1:] if argv is None else argv):
        from benchmarks.replay_compare import add_compare_args, run_compare

        add_compare_args(ap)
        return run_compare(ap.parse_args(argv))
    a = ap.parse_args(argv)
    if not a.url:
        ap.error("--url is required (or --compare)")
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
    words = None
    if a.text or a.trace == MT_BENCH:
        from deployments.demo_model import local_model_dir

        words = WordPrompts.for_model(a.tokenizer or local_model_dir(None, None))
    w = Workload.build(a, a.trace, a.seed)
    bar = tqdm(total=len(w), desc=f"replay {a.trace}", unit="req", file=sys.stderr, disable=a.quiet)
    results, wall = w.run(a.url.rstrip("/"), model, a, api_key=a.api_key, words=words, progress=lambda: bar.update(1))
    bar.close()
    s = summarize(results, wall, a.ttft_slo_s, a.tpot_slo_s)
    s.update({"trace": a.trace, "rps": a.rps, "duration_s": a.duration_s, "block_tokens": a.block_tokens,
              "mean_prompt_tokens": w.mean_prompt_tokens(), "working_set_tokens": w.working_set_tokens})
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
