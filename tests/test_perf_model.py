"""The performance model: fitted from a profile, it predicts replicas for an SLO; `greencache
profile` measures one on a live server; the planner uses it."""

from __future__ import annotations

import json

import pytest

from autoscaler.perf_model import SLO, PerfModel


def _synthetic_profile():
    a, b, c, d, e = 0.02, 1e-4, 2e-8, 0.01, 0.002
    return {"prefill": [[n, a + b * n + c * n * n] for n in (64, 256, 1024, 4096)],
            "decode": [[B, d + e * B] for B in (1, 4, 16)], "kv_load_s_per_token": {"disk": 1e-6}}


def test_perf_model_fit_recovers_coefficients():
    m = PerfModel.fit(_synthetic_profile())
    assert (m.a, m.b, m.c) == pytest.approx((0.02, 1e-4, 2e-8), rel=1e-3)
    assert (m.d, m.e) == pytest.approx((0.01, 0.002), rel=1e-3)


def test_rmin_grows_with_load_and_shrinks_with_hits():
    m = PerfModel.fit(_synthetic_profile())
    slo = SLO(ttft_s=2.0, tpot_s=0.2)
    loads = [0.5, 2, 8, 32]
    rs = [m.rmin(lam, 2048, 200, 0.0, slo) for lam in loads]
    assert rs == sorted(rs) and rs[-1] > rs[0]
    assert m.rmin(32, 2048, 200, 0.8, slo) <= m.rmin(32, 2048, 200, 0.0, slo)
    assert m.rmin(10_000, 2048, 200, 0.0, slo, max_replicas=4) == 5  # none meets it


def test_profile_command_on_live_server(greencache_server, tmp_path):
    from benchmarks.profiler import main

    out = tmp_path / "profile.json"
    rc = main(["--url", greencache_server.url, "--model", greencache_server.model, "--api-key",
               greencache_server.api_key, "--out", str(out), "--lengths", "32,256,768", "--batches", "1,4",
               "--repeats", "2"])
    assert rc == 0
    prof = json.loads(out.read_text())
    assert [p[0] for p in prof["prefill"]] == [32, 256, 768]
    assert prof["prefill"][-1][1] > prof["prefill"][0][1]  # longer prompts take longer to prefill
    assert all(s > 0 for _, s in prof["decode"])
    m = PerfModel.load(out)
    assert m.prefill_s(768) > m.prefill_s(32)


def test_planner_uses_the_measured_profile_for_rmin():
    from datetime import datetime, timezone

    from autoscaler.carbon_sources import TraceSource
    from autoscaler.planner import plan
    from autoscaler.scenario import build_problem

    m = PerfModel.fit(_synthetic_profile())
    slo = SLO(ttft_s=2.0, tpot_s=0.2)
    start = datetime(2023, 6, 1, tzinfo=timezone.utc)
    p = build_problem(TraceSource.grid("DE"), start, 6, perf=m, slo=slo, load_rps=[0.5, 2, 4, 4, 2, 0.5],
                      prompt_tokens=2048, output_tokens=200, replica_options=list(range(1, 33)))
    for t, lam in enumerate([0.5, 2, 4, 4, 2, 0.5]):
        for c, opt in enumerate(p.caches):
            assert p.rmin[t, c] == m.rmin(lam, 2048, 200, opt.hit_ratio, slo, max_replicas=32)
    out = plan(p, time_limit_s=5)
    assert out.replicas[2] >= out.replicas[0]  # busier slots run more replicas
    assert all(r >= p.rmin[t, c] for t, (r, c) in enumerate(zip(out.replicas, out.cache)))
