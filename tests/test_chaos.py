"""The fault-injection suite (`greencache bench chaos`) as a test: one fault at a time under a
steady load of greedy requests whose outputs were recorded first, on a real deployment (two
vLLM replicas, Redis, a disk tier on a small tmpfs, the carbon autoscaler fed by a local fake
of the carbon-intensity API). Shorter windows than the benchmark; the same code.

Each fault must have been on the request path (the bench reports the evidence: the store's
invalid-chunk counter rose, the Redis tier's errors rose, ...), must not produce one wrong
output, must cost no request for store and carbon-source faults and at most the requests in
flight for a process kill, and service must be whole again within 30 s.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.bench_chaos import CARBON_FAULTS, FAULTS, PROCESS_FAULTS, STORE_FAULTS


@pytest.fixture(scope="module")
def chaos(tmp_path_factory, demo_model):
    from conftest import hold_ray, release_ray

    # The suite's own deployments must not run beside the rig: its fault windows are seconds
    # long, and two more engines on the same two cores stretch every one of them.
    hold_ray("chaos", lambda: None)
    ray_tmp = tmp_path_factory.mktemp("ray")
    (ray_tmp / "ray").mkdir()
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "GREENCACHE_LOG_LEVEL": "WARNING"}
    cmd = [sys.executable, "-m", "greencache.cli", "bench", "chaos", "--json", "--model", str(demo_model),
           "--fault-s", "3", "--redis-stop-s", "3", "--warmup-s", "5", "--baseline-s", "5", "--min-window-s", "2",
           "--settle-s", "1", "--after-s", "0", "--recovery-timeout-s", "120"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    finally:
        release_ray("chaos")
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout)
    return {f["fault"]: f for f in out["faults"]}, ray_tmp, proc.stderr


def test_every_fault_ran_and_was_on_the_path(chaos):
    faults, _, log = chaos
    assert faults["none"]["failed"] == 0 and faults["none"]["requests"] > 0
    for name in FAULTS:
        f = faults[name]
        if name == "disk-full" and os.geteuid() != 0:
            assert "root" in f["skipped"]  # a small filesystem to fill needs a mount
            continue
        assert f["exercised"], (name, f, log[-3000:])
        assert f["requests"] > 0, f


def test_no_fault_gives_a_wrong_output(chaos):
    faults, _, _ = chaos
    assert {n: f["wrong_outputs"] for n, f in faults.items() if "skipped" not in f} == \
        {n: 0 for n, f in faults.items() if "skipped" not in f}


def test_store_and_carbon_faults_cost_no_request(chaos):
    faults, _, _ = chaos
    for name in STORE_FAULTS + CARBON_FAULTS:
        if "skipped" in faults[name]:
            continue
        assert faults[name]["failed"] == 0, faults[name]


def test_a_process_kill_costs_at_most_the_requests_in_flight(chaos):
    faults, _, _ = chaos
    kill = faults["replica-kill"]
    assert kill["failed"] <= kill["in_flight_at_kill"], kill
    assert kill["part_back_s"] is not None, "no replacement replica ever answered"
    assert faults["autoscaler-kill"]["failed"] == 0


def test_recovery_within_30_s(chaos):
    faults, _, _ = chaos
    for name in FAULTS:
        f = faults[name]
        if "skipped" in f:
            continue
        assert f["recovery_s"] is not None and f["recovery_s"] <= 30.0, f
    for name in PROCESS_FAULTS:
        assert faults[name]["part_back_s"] is not None, faults[name]


def test_a_failed_requests_detail_is_in_the_ingress_log(chaos):
    """A 5xx tells the client only a request id; the exception is in the ingress replica's log
    file under that id (a Serve replica's stderr is a buffered INFO stream, lost when it dies)."""
    faults, ray_tmp, _ = chaos
    ids = {m for f in faults.values() for e in f.get("errors", []) for m in re.findall(r"cmpl-[0-9a-f]{32}", e)}
    logs = "".join(p.read_text(errors="replace")
                   for p in Path(ray_tmp).glob("ray/session_*/logs/serve/replica_*OpenAIIngress*.log"))
    for rid in ids:
        assert re.search(rf"request {rid} failed: \w+", logs), rid
