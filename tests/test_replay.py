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


def test_text_prompts_tokenize_back_to_the_same_ids(demo_model):
    from transformers import AutoTokenizer

    from benchmarks.replay import WordPrompts

    tok = AutoTokenizer.from_pretrained(str(demo_model))
    words = WordPrompts(tok)
    ids = [5, 17, 3, 250, 99] * 40
    text = words.text(ids)
    assert tok.encode(text, add_special_tokens=False) == [words.ids[i % len(words.ids)] for i in ids]
    # a shared id prefix is a shared text prefix and a shared token prefix
    a, b = words.text(ids[:120] + [1, 2]), words.text(ids[:120] + [7, 8])
    assert a[:len(words.text(ids[:120]))] == b[:len(words.text(ids[:120]))]


def test_mt_bench_sessions_are_two_turns_of_real_questions():
    from autoscaler.workloads import mt_bench_questions
    from benchmarks.replay import mt_bench_sessions, session_working_set_tokens

    qs = {q["question_id"]: q for q in mt_bench_questions()}
    assert len(qs) == 80 and all(len(q["turns"]) == 2 for q in qs.values())
    s = mt_bench_sessions(duration_s=120, rps=2.0, system_tokens=128, think_s=5, vocab=250, seed=3)
    assert 80 <= len(s) <= 160  # ~1 session/s, two requests each
    assert all(0 <= x.t < 120 for x in s) and [x.t for x in s] == sorted(x.t for x in s)
    first = s[0]
    q = qs[first.question_id]
    assert len(first.turns[0]) == round(len(q["turns"][0]) / 4) and len(first.turns[1]) == round(len(q["turns"][1]) / 4)
    assert all(x.system == first.system for x in s) and len(first.system) == 128
    # the same question asked in two sessions is the same text; another seed writes other text
    again = next(x for x in s[1:] if x.question_id == first.question_id)
    assert again.turns == first.turns
    other = mt_bench_sessions(duration_s=120, rps=2.0, system_tokens=128, think_s=5, vocab=250, seed=4)
    assert other[0].system != first.system
    assert session_working_set_tokens(s, 64) == 128 + sum(len(x.turns[0]) + 64 + len(x.turns[1]) for x in s)


def test_mt_bench_second_turns_reuse_the_first(greencache_server):
    s = greencache_server
    out = subprocess.run(
        [sys.executable, "-m", "greencache.cli", "bench", "replay", "--trace", "mt-bench", "--url", s.url,
         "--api-key", s.api_key, "--rps", "2", "--duration-s", "6", "--think-s", "0.5", "--system-tokens", "64",
         "--answer-tokens", "16", "--max-output-tokens", "4", "--json", "--quiet"],
        capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r["requests"] % 2 == 0 and r["requests"] >= 4 and r["failed"] == 0
    # second turns resend the first turn and its answer: the server finds those prefixes cached
    assert r["cached_prompt_tokens"] > 0 and r["working_set_tokens"] > 64
