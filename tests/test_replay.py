"""Live trace replay against the session's GreenCache deployment (2 real vLLM replicas)."""

from __future__ import annotations

import json
import subprocess
import sys

from autoscaler.workloads import load_trace
from benchmarks.replay import build_requests


def test_replay_prompts_share_prefixes_as_the_trace_says():
    tr = load_trace("mooncake-conversation", days=0.01, rps=2.0)
    reqs = build_requests(tr, duration_s=60, block_tokens=32, max_prompt_tokens=10_000, max_output_tokens=32,
                          vocab=250, seed=0)
    assert len(reqs) == int((tr.arrival_s < 60).sum()) > 50
    for i in range(1, len(reqs)):
        a, b = tr.request_blocks(0).tolist(), tr.request_blocks(i).tolist()
        shared = 0
        while shared < min(len(a), len(b)) and a[shared] == b[shared]:
            shared += 1
        common = 0
        pa, pb = reqs[0]["prompt"], reqs[i]["prompt"]
        while common < min(len(pa), len(pb)) and pa[common] == pb[common]:
            common += 1
        assert common >= shared * 32  # every shared trace block is a shared token prefix
        assert common < (shared + 1) * 32 + 2  # and the tails differ (up to chance token matches)
        assert len(pb) == max(1, round(int(tr.prompt_tokens[i]) * 32 / 512))


def test_replay_against_a_running_endpoint(greencache_server):
    s = greencache_server
    out = subprocess.run(
        [sys.executable, "-m", "greencache.cli", "bench", "replay", "--trace", "mooncake-conversation", "--url", s.url,
         "--api-key", s.api_key, "--rps", "2", "--duration-s", "8", "--max-prompt-tokens", "600",
         "--max-output-tokens", "8", "--block-tokens", "256", "--json", "--quiet"],
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    expected = int((load_trace("mooncake-conversation", days=68 / 86400, rps=2.0).arrival_s < 8).sum())
    assert r["requests"] == expected and r["failed"] == 0
    assert r["ttft_p50_ms"] > 0 and r["ttft_p90_ms"] >= r["ttft_p50_ms"]
    assert 0.0 <= r["slo_attainment"] <= 1.0
    # every Mooncake request starts with the same block: the server sees shared prefixes
    assert r["cached_prompt_tokens"] > 0
    bad = subprocess.run([sys.executable, "-m", "greencache.cli", "bench", "replay", "--url", "http://127.0.0.1:9"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "cannot list models" in bad.stderr
