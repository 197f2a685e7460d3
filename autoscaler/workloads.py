"""Request workloads for the simulator and live replay, built from the bundled real traces.

A `Trace` is columnar: arrival time, prompt and output tokens, and each request's *full*
512-token prefix blocks as chunk ids (`blocks[block_ptr[i]:block_ptr[i+1]]`). Two requests
whose block lists share a leading run share that many cached prefix blocks; a partial last
block is never cached (the store keeps whole chunks only).

Workloads (`load_trace(name, days=..., rps=..., seed=...)`):
- `mooncake-conversation`, `mooncake-synthetic`: Mooncake FAST'25 traces. Prefix reuse comes
  from the trace's own `hash_ids` (512-token blocks).
- `azure-conv`, `azure-code`: Azure LLM inference 2023 (timings and token counts only). Multi-turn
  reuse is synthesised by an MT-Bench-style session model (below).

Time scaling and repetition: each source covers about one hour. Arrivals are stretched so the
mean rate is `rps`, and the stretched trace is repeated back to back until it spans `days`.
Every copy gets fresh chunk ids, so copies are new conversations (no reuse across copies).
Carbon intensity then varies over the days while the request mix stays the trace's own.

Diurnal load (optional, `diurnal=A` with 0 ≤ A < 1; default 0): the recorded hours carry no
day/night cycle, so a repeated trace has a flat rate. With A > 0 the arrival times are warped
so the rate follows rps·(1 + A·sin(2π(t − 8 h)/24 h)): peak at 14:00, trough at 02:00 (UTC of
the simulation clock), peak/trough = (1+A)/(1−A). Order, lengths and prefix sharing are kept;
only the gaps stretch or shrink. This is a synthetic modulation, labelled as such in results.

Session model for Azure (documented, seeded): MT-Bench questions are two user turns, the second
building on the first and its answer. So each request is, with probability `follow_p` (0.5:
half of all requests are second turns, as in MT-Bench), the second turn of a uniformly chosen
session whose first turn arrived in the last `max_gap_s` (600 s) and has no second turn yet;
otherwise it starts a new session. A second turn shares the first turn's full prompt blocks,
up to its own length (the trace fixes both lengths); the rest of its blocks are new. The first
turn's answer is not shared: engines save prompt KV only.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Optional

import numpy as np

DATA = Path(__file__).parent / "data" / "traces"
BLOCK_TOKENS = 512
TRACES = {
    "mooncake-conversation": "mooncake_conversation_trace.jsonl.gz",
    "mooncake-synthetic": "mooncake_synthetic_trace.jsonl.gz",
    "azure-conv": "AzureLLMInferenceTrace_conv.csv.gz",
    "azure-code": "AzureLLMInferenceTrace_code.csv.gz",
}


@dataclass
class Trace:
    name: str
    arrival_s: np.ndarray  # float64, non-decreasing
    prompt_tokens: np.ndarray  # int64
    output_tokens: np.ndarray  # int64
    block_ptr: np.ndarray  # int64, len n + 1
    blocks: np.ndarray  # int64 chunk ids of full prefix blocks
    block_tokens: int = BLOCK_TOKENS

    def __len__(self) -> int:
        return len(self.arrival_s)

    def request_blocks(self, i: int) -> np.ndarray:
        return self.blocks[self.block_ptr[i]:self.block_ptr[i + 1]]

    @property
    def duration_s(self) -> float:
        return float(self.arrival_s[-1]) if len(self) else 0.0

    def head(self, n: int) -> "Trace":
        return Trace(self.name, self.arrival_s[:n], self.prompt_tokens[:n], self.output_tokens[:n],
                     self.block_ptr[:n + 1], self.blocks[:self.block_ptr[n]], self.block_tokens)

    def summary(self) -> dict:
        n = len(self)
        blocks = len(self.blocks)
        uniq = len(np.unique(self.blocks)) if blocks else 0
        return {"requests": n, "days": self.duration_s / 86400, "mean_rps": n / max(self.duration_s, 1e-9),
                "mean_prompt_tokens": float(self.prompt_tokens.mean()) if n else 0.0,
                "mean_output_tokens": float(self.output_tokens.mean()) if n else 0.0,
                "full_blocks": blocks, "repeated_block_fraction": 1 - uniq / blocks if blocks else 0.0}


MT_BENCH = DATA / "mt_bench_question.jsonl"


def mt_bench_questions() -> list[dict]:
    """The 80 MT-Bench questions: `{"question_id", "category", "turns": [first, second]}`."""
    with open(MT_BENCH, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _read(name: str) -> str:
    path = DATA / TRACES[name]
    with gzip.open(path, "rt", encoding="utf-8", newline="") as f:
        return f.read()


def _base(name: str):
    """One copy of the source: arrival (s from start), prompt, output, list of full-block ids."""
    if name.startswith("mooncake"):
        arr, pr, out, blocks = [], [], [], []
        for line in _read(name).splitlines():
            if not line.strip():
                continue
            r = json.loads(line)
            arr.append(r["timestamp"] / 1000.0)
            pr.append(int(r["input_length"]))
            out.append(max(1, int(r["output_length"])))
            blocks.append(r["hash_ids"][: int(r["input_length"]) // BLOCK_TOKENS])
        return np.array(arr), np.array(pr), np.array(out), blocks
    if name.startswith("azure"):
        rows = list(csv.DictReader(io.StringIO(_read(name))))
        t = [datetime.fromisoformat(r["TIMESTAMP"].strip()[:26]) for r in rows]
        t0 = t[0]
        arr = np.array([(x - t0).total_seconds() for x in t])
        pr = np.array([max(1, int(r["ContextTokens"])) for r in rows])
        out = np.array([max(1, int(r["GeneratedTokens"])) for r in rows])
        return arr, pr, out, None
    raise ValueError(f"unknown trace {name!r}; choose from {sorted(TRACES)}")


def diurnal_warp(t: np.ndarray, amplitude: float) -> np.ndarray:
    """Map uniform-rate times to times whose rate follows 1 + A·sin(2π(t − 8 h)/24 h)."""
    if amplitude <= 0:
        return t
    if amplitude >= 1:
        raise ValueError("diurnal amplitude must be < 1")
    day, phase = 86400.0, 8 * 3600.0
    end = float(t.max()) if len(t) else 0.0
    grid = np.linspace(0.0, end + day, int((end + day) / 60) + 2)  # one-minute resolution
    w = 2 * np.pi / day
    # Λ(x) = x + A/w·(cos(w·(0 − phase)) − cos(w·(x − phase))): expected arrivals by x at unit mean rate
    lam = grid + amplitude / w * (np.cos(-w * phase) - np.cos(w * (grid - phase)))
    return np.interp(t, lam, grid)


def load_trace(name: str, *, days: float = 1.0, rps: Optional[float] = 1.0, seed: int = 0,
               follow_p: float = 0.5, max_gap_s: float = 600.0, diurnal: float = 0.0) -> Trace:
    """The named trace stretched to `rps` (None: as recorded), repeated to span `days`, and
    optionally given a diurnal rate cycle of amplitude `diurnal`."""
    tr = _load(name, days, rps, seed, follow_p, max_gap_s, diurnal)
    if diurnal:
        tr.name = f"{name}+diurnal{diurnal:g}"
    return tr


def _load(name, days, rps, seed, follow_p, max_gap_s, diurnal) -> Trace:
    arr, pr, out, blocks = _base(name)
    n0 = len(arr)
    gap = float(np.mean(np.diff(arr))) if n0 > 1 else 1.0
    span = float(arr[-1] - arr[0]) + gap
    stretch = 1.0 if rps is None else (n0 / span) / rps
    span_s = span * stretch
    copies = max(1, math.ceil(days * 86400 / span_s))
    arrival = np.concatenate([(arr - arr[0]) * stretch + k * span_s for k in range(copies + 1)])
    arrival = diurnal_warp(arrival, diurnal)
    copies += 1
    keep = arrival < days * 86400
    prompt = np.tile(pr, copies)[keep]
    output = np.tile(out, copies)[keep]
    arrival = arrival[keep]
    n = len(arrival)
    if blocks is not None:
        lens = np.array([len(b) for b in blocks], dtype=np.int64)
        flat = np.fromiter((x for b in blocks for x in b), dtype=np.int64, count=int(lens.sum()))
        stride = int(flat.max()) + 1 if len(flat) else 1
        all_lens = np.tile(lens, copies)[:n]
        ptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(all_lens, out=ptr[1:])
        parts = [flat + k * stride for k in range(copies)]
        ids = np.concatenate(parts)[: ptr[-1]]
        return Trace(name, arrival, prompt, output, ptr, ids)
    return _sessions(name, arrival, prompt, output, seed, follow_p, max_gap_s)


def _sessions(name, arrival, prompt, output, seed, follow_p, max_gap_s) -> Trace:
    rng = np.random.default_rng(seed)
    n = len(arrival)
    coin = rng.random(n)
    pick = rng.random(n)
    open_first: list[tuple[float, int]] = []  # (arrival, request index) of first turns awaiting a second
    next_id = 0
    req_blocks: list[np.ndarray] = []
    head = 0
    for i in range(n):
        t = arrival[i]
        while head < len(open_first) and open_first[head][0] < t - max_gap_s:
            head += 1
        full = int(prompt[i]) // BLOCK_TOKENS
        eligible = len(open_first) - head
        if coin[i] < follow_p and eligible > 0:
            j = head + int(pick[i] * eligible)
            _, first = open_first.pop(j)
            shared = req_blocks[first][:full]
            fresh = np.arange(next_id, next_id + full - len(shared), dtype=np.int64)
            next_id += len(fresh)
            req_blocks.append(np.concatenate([shared, fresh]))
        else:
            req_blocks.append(np.arange(next_id, next_id + full, dtype=np.int64))
            next_id += full
            open_first.append((t, i))
        if head > 4096:  # keep the list short
            open_first = open_first[head:]
            head = 0
    lens = np.array([len(b) for b in req_blocks], dtype=np.int64)
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lens, out=ptr[1:])
    ids = np.concatenate(req_blocks) if n else np.zeros(0, dtype=np.int64)
    return Trace(name, arrival, prompt, output, ptr, ids)
