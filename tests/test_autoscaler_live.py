"""The carbon autoscaler (a Serve deployment on the head) driving a live Serve app and the
engines' KV store through Ray's internal KV."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta

import pytest
import ray
from ray import serve

from conftest import free_port, hold_ray, release_ray, wait_until


def _call(handle_method, *args, timeout_s: float = 60, **kw):
    return handle_method.remote(*args, **kw).result(timeout_s=timeout_s)


def _running_replicas() -> int:
    st = serve.status().applications["greencache"].deployments["LLMReplica"]
    return st.replica_states.get("RUNNING", 0)


def _disk_caps(hub) -> set:
    snap = ray.get(hub.snapshot.remote())
    caps = set()
    for rid, rep in snap.items():
        if rid.startswith("__"):
            continue
        for p in rep.get("processes", []):
            if str(p.get("role")).lower() == "worker":
                caps.add(p["store"]["tiers"]["disk"]["capacity_bytes"])
    return caps


@pytest.fixture(scope="module")
def live(demo_model, tmp_path_factory):
    from autoscaler.config import AutoscalerConfig
    from deployments.app import autoscaler_handle
    from deployments.config import ServeConfig
    from deployments.launch import start_serve, stop_all

    hold_ray("autoscaler-live", stop_all)
    home = tmp_path_factory.mktemp("autoscale-home")
    config = ServeConfig(
        model=str(demo_model), served_model_name="demo", port=free_port(), num_replicas=1, max_model_len=1024,
        home=home, stream_interval_ms=30.0,  # also exercises stream coalescing
        autoscaler=AutoscalerConfig(enabled=True, grid="FR", min_replicas=1, max_replicas=2, interval_s=2.0,
                                    trace_hours_per_interval=1.0, horizon_slots=6),
    )
    url = start_serve(config)
    try:
        yield url, autoscaler_handle(), home
    finally:
        stop_all()
        release_ray("autoscaler-live")


def test_plans_are_logged_and_followed(live):
    url, actor, home = live
    from autoscaler import control_plane

    wait_until(lambda: _call(actor.status)["cycles"] >= 2, 30, "two planning cycles")
    lines = (home / "autoscaler" / "decisions.jsonl").read_text().splitlines()
    rec = json.loads(lines[-1])
    for key in ("inputs", "plan", "predicted", "decision", "reason", "carbon_so_far_g"):
        assert key in rec
    assert rec["inputs"]["carbon_intensity_g_per_kwh"] > 0
    assert rec["plan"]["objective_g"] == pytest.approx(rec["plan"]["dp_objective_g"], rel=1e-6)
    assert rec["deployment_id"] and rec["app"] == "greencache"
    assert control_plane.read_plan("greencache") == rec["decision"]["replicas"] == 1  # idle: one replica
    assert _running_replicas() == 1


def test_the_live_observation_carries_token_mix_and_latencies(live):
    """The actor observes what the simulator's policies read: request rate, prompt and output
    lengths, mean TTFT and TPOT of the last interval."""
    import httpx

    url, actor, home = live
    t0 = time.time()
    for n in (200, 400, 600):
        r = httpx.post(url + "/v1/completions", json={"model": "demo", "prompt": list(range(100, 100 + n)),
                                                     "max_tokens": 12, "ignore_eos": True}, timeout=120)
        assert r.status_code == 200, r.text

    def observations():  # the loop's own cycles since the requests (they may split them over intervals)
        lines = (home / "autoscaler" / "decisions.jsonl").read_text().splitlines()
        recs = [json.loads(x) for x in lines]
        obs = [r["observation"] for r in recs if r.get("time", 0) > t0 and "observation" in r]
        return [o for o in obs if o["mean_prompt_tokens"] is not None] or None

    seen = wait_until(observations, 30, "a cycle that saw finished requests")
    for obs in seen:
        assert 200 <= obs["mean_prompt_tokens"] <= 600  # the prompts' lengths, not a default
        assert obs["mean_output_tokens"] == pytest.approx(12)
        assert obs["arrival_rps"] > 0
        assert 0 < obs["mean_ttft_s"] < 30 and 0 < obs["mean_tpot_s"] < 5


def test_load_scales_out_to_two_replicas_and_back(live):
    url, actor, home = live
    _call(actor.set_overrides, load_rps=50.0)
    rec = _call(actor.step)
    assert rec["decision"]["replicas"] == 2
    assert "SLO not attainable" in rec["reason"]  # 50 req/s needs more than max_replicas=2
    wait_until(lambda: _running_replicas() == 2, 180, "Serve to run 2 replicas")
    _call(actor.set_overrides, load_rps=0.0)
    assert _call(actor.step)["decision"]["replicas"] == 1
    wait_until(lambda: _running_replicas() == 1, 120, "Serve to scale back to 1 replica")


def test_carbon_intensity_resizes_the_store(live):
    from autoscaler.telemetry import get_or_create_hub

    url, actor, home = live
    hub = get_or_create_hub()
    from autoscaler import control_plane

    _call(actor.set_overrides, load_rps=2.0, intensity_g_per_kwh=1.0)
    clean = _call(actor.step)["decision"]["capacity_gb"]
    _call(actor.set_overrides, intensity_g_per_kwh=900.0)
    dirty = _call(actor.step)["decision"]["capacity_gb"]
    assert dirty > clean  # a dirty grid makes saved prefill worth more cache
    want = int(dirty * 1e9)
    assert control_plane.read_capacities("greencache") == {"disk": want}
    # every replica applies it to its node's disk tier, whose engines report it back
    wait_until(lambda: _disk_caps(hub) == {want}, 30, f"engines' disk tier capacity {want}")
    _call(actor.set_overrides, load_rps=None, intensity_g_per_kwh=None)


def _autoscaler_actor():
    from benchmarks.local_cluster import replica_actors

    alive = replica_actors(deployment="CarbonAutoscaler")
    assert len(alive) == 1, alive
    return ray.get_actor(next(iter(alive.values()))["name"], namespace="serve")


def test_actor_restarts_and_resumes(live):
    """Serve replaces a killed autoscaler; the new one continues from the last decision it
    recorded: the next cycle number, the trace clock one step on, the carbon totals carried."""
    url, actor, home = live
    wait_until(lambda: _call(actor.status)["cycles"] >= 1, 30, "a planning cycle")
    ray.kill(_autoscaler_actor(), no_restart=True)
    killed_at = time.time()
    last = json.loads((home / "autoscaler" / "last.json").read_text())  # what the restarted actor reads

    def first_record_after_restart():
        for line in (home / "autoscaler" / "decisions.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if rec.get("time", 0) > killed_at and "cycle" in rec:
                return rec
        return None

    rec = wait_until(first_record_after_restart, 90, "the replaced autoscaler to plan again")
    assert rec["cycle"] == last["cycle"] + 1
    step = datetime.fromisoformat(rec["trace_time"]) - datetime.fromisoformat(last["trace_time"])
    assert step == timedelta(hours=1)  # trace_hours_per_interval=1: the clock went on, not back to the start
    for kind in ("operational", "embodied"):
        carried = last["carbon_so_far_g"][kind] + rec["predicted"][f"slot_{kind}_g"]
        assert rec["carbon_so_far_g"][kind] == pytest.approx(carried, rel=1e-9)
    assert _status_cycles() >= rec["cycle"]


def _status_cycles() -> int:
    from deployments.app import autoscaler_handle

    try:
        return _call(autoscaler_handle().status, timeout_s=5)["cycles"]
    except Exception:
        return -1


def test_coalesced_stream_carries_every_token(live):
    import openai

    url, _, _ = live
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    kw = dict(model="demo", prompt="coalesce me", max_tokens=40, temperature=0, extra_body={"ignore_eos": True})
    full = client.completions.create(**kw)
    events = [c for c in client.completions.create(stream=True, stream_options={"include_usage": True}, **kw)]
    text = "".join(c.choices[0].text for c in events if c.choices)
    usage = [c.usage for c in events if c.usage is not None][0]
    assert text == full.choices[0].text and usage.completion_tokens == 40
    assert len([c for c in events if c.choices]) < 40  # several tokens per message


def test_simulated_policy_decides_like_the_live_actor(live, tmp_path):
    """The simulator's planner policies and the live actor's take the same decision for the same
    observation: the simulator builds them from the actor's own config, through the same code."""
    from autoscaler.actor import CarbonAutoscaler
    from autoscaler.simulator import SimCache, SimConfig, Simulation
    from autoscaler.workloads import load_trace

    sim = Simulation(load_trace("mooncake-conversation", days=0.3, rps=1.0), SimConfig(grid="DE"))
    reps = sim.new_fleet()
    reps.set_counts({sim.primary: 3}, 0.0, initial=True)
    cache = SimCache(sim.chunk_bytes)
    cache.set_capacity(sim.capacities_gb[3])
    for name in ("joint-milp", "cache-ilp"):
        home = tmp_path / name
        cfg = sim.autoscaler_config(name).model_copy(update={"interval_s": 3600.0})
        actor = ray.remote(CarbonAutoscaler).options(num_cpus=0).remote(cfg.model_dump(), str(home), f"parity-{name}")
        try:
            policy = sim.make_policy(name)
            seen = set()
            for t, scale in ((2 * 3600.0, 1.0), (5 * 3600.0, 1.0), (5 * 3600.0, 3.0)):
                obs = sim.observe(t, 3600.0, reps, cache, 7, want_sample=True)
                obs.arrival_rps *= scale
                assert len(obs.access_sample) >= 200  # the observed-curve path is exercised
                live_d = ray.get(actor.decide.remote(obs.to_json()))
                sim_d = policy.decide(obs)
                assert (live_d["replicas"], live_d["capacity_gb"], live_d["reason"]) == \
                    (sim_d.replicas, sim_d.capacity_gb, sim_d.reason)
                assert "observed hit-rate curve" in sim_d.reason
                seen.add((sim_d.replicas, sim_d.capacity_gb))
            if name == "joint-milp":
                assert len(seen) > 1  # the observations differ enough to change the decision
            else:
                assert {r for r, _ in seen} == {sim.static_replicas}
        finally:
            ray.kill(actor)
