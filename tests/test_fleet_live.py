"""A mixed GPU fleet, live: one Serve deployment per GPU type, pinned by the type's custom Ray
resource (this machine declares `gpu_a100` and `gpu_h100` as stand-ins), each following its
count in the carbon plan; the live autoscaler moves the replica from one type to the other when
the grid's carbon intensity changes which is cheaper, make-before-break, while a client's
requests are all answered."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import ray
from ray import serve

from conftest import free_port, hold_ray, release_ray, wait_until

FLEET = "a100:1:reuse,h100:1"  # A100s past their lifetime (embodied paid for) and fresh H100s
LOAD_RPS = 1.5  # the load the plan is told to serve (the flip's precondition is checked offline below)
CLEAN, DIRTY = 20.0, 600.0  # g/kWh
PROMPT, OUTPUT = 2048, 256  # the token mix the plan prices (the autoscaler's defaults)


def _running() -> dict[str, int]:
    deps = serve.status().applications["greencache"].deployments
    return {t: deps[f"LLMReplica-{t}"].replica_states.get("RUNNING", 0) for t in ("a100", "h100")}


def _config(demo_model, home, port=0):
    from autoscaler.config import AutoscalerConfig
    from deployments.config import ServeConfig

    return ServeConfig(
        model=str(demo_model), served_model_name="demo", port=port or free_port(), num_replicas=1, max_model_len=512,
        home=home,
        autoscaler=AutoscalerConfig(enabled=True, grid="FR", min_replicas=1, interval_s=2.0,
                                    trace_hours_per_interval=1.0, horizon_slots=6, fleet=FLEET))


def test_the_plan_flips_between_types_with_the_grid(tmp_path):
    """The precondition of the live test, on the live actor's own policy: at this load a clean
    grid makes the paid-for A100 cheapest, a dirty one the more efficient H100."""
    from datetime import datetime

    from autoscaler.policies import FleetPlannerPolicy, Observation

    cfg = _config("unused", tmp_path).autoscaler
    assert (cfg.prompt_tokens, cfg.output_tokens) == (PROMPT, OUTPUT)
    policy = FleetPlannerPolicy.from_autoscaler_config(cfg)

    def counts(ci, current):
        return policy.decide(Observation(trace_time=datetime(2023, 6, 1), intensity_forecast=[ci] * cfg.horizon_slots,
                                         arrival_rps=LOAD_RPS, current_counts=current, mean_prompt_tokens=PROMPT,
                                         mean_output_tokens=OUTPUT)).counts

    assert counts(CLEAN, {"a100": 1, "h100": 0}) == {"a100": 1, "h100": 0}
    assert counts(DIRTY, {"a100": 1, "h100": 0}) == {"a100": 0, "h100": 1}
    assert counts(CLEAN, {"a100": 0, "h100": 1}) == {"a100": 1, "h100": 0}


def test_make_before_break_targets():
    from autoscaler.actor import transition_targets

    a_to_h = {"a100": 0, "h100": 1}
    # the H100 is not up yet: the A100 keeps running
    assert transition_targets(a_to_h, {"a100": 1, "h100": 0}) == {"a100": 1, "h100": 1}
    # it is up: now the A100 goes
    assert transition_targets(a_to_h, {"a100": 1, "h100": 1}) == a_to_h
    # growing one type and shrinking another by several: nothing shrinks until the growth is done
    assert transition_targets({"a100": 1, "h100": 3}, {"a100": 4, "h100": 1}) == {"a100": 4, "h100": 3}
    assert transition_targets({"a100": 1, "h100": 3}, {"a100": 4, "h100": 3}) == {"a100": 1, "h100": 3}
    # shrinking only: at once
    assert transition_targets({"a100": 1, "h100": 0}, {"a100": 2, "h100": 1}) == {"a100": 1, "h100": 0}
    # Serve did not answer: nothing below what was published before
    assert transition_targets(a_to_h, None, {"a100": 1, "h100": 0}) == {"a100": 1, "h100": 1}
    assert transition_targets(a_to_h, None, None) == a_to_h


def test_the_ingress_picks_the_deployment_by_prefix_then_load():
    from deployments.route_table import AppRoutes, choose_deployment

    routes = AppRoutes()
    routes.replicas = {"LLMReplica-a100": {"a1"}, "LLMReplica-h100": {"h1", "h2"}}
    names = ["LLMReplica-a100", "LLMReplica-h100"]

    class Router:  # queue lengths as a deployment's router last saw them
        def __init__(self, q):
            self.q = q

        def queue_len(self, rid):
            return self.q.get(rid, 0)

    routes.routers = {"LLMReplica-a100": Router({"a1": 3}), "LLMReplica-h100": Router({"h1": 1, "h2": 1})}
    routes.owner.update({"p1": "a1", "p2": "a1", "q1": "h2"})
    # the longest remembered prefix's owner wins while it is within the imbalance threshold
    assert choose_deployment(routes, names, ["p1", "p2", "x"], 4) == "LLMReplica-a100"
    assert choose_deployment(routes, names, ["q1"], 4) == "LLMReplica-h100"
    # ... and loses to the less loaded deployment beyond it (3 vs 1 per replica)
    assert choose_deployment(routes, names, ["p1", "p2"], 1) == "LLMReplica-h100"
    # no remembered prefix: the least load per replica
    assert choose_deployment(routes, names, ["new"], 4) == "LLMReplica-h100"
    # the plan drains a type: no new request goes there, even for its own prefix
    assert choose_deployment(routes, names, ["p1"], 4, allowed=["LLMReplica-h100"]) == "LLMReplica-h100"
    # a type the plan grows but that runs no replica yet gets nothing until it does
    routes.replicas["LLMReplica-h100"] = set()
    assert choose_deployment(routes, names, ["q1"], 4, allowed=names) == "LLMReplica-a100"
    assert choose_deployment(routes, names, ["q1"], 4, allowed=["LLMReplica-h100"]) == "LLMReplica-a100"
    # nothing runs at all: the first planned type (Serve queues the request for its replica)
    routes.replicas = {}
    assert choose_deployment(routes, names, [], 4, allowed=["LLMReplica-h100"]) == "LLMReplica-h100"


def test_fleet_configuration_errors_name_the_fix():
    from autoscaler.config import AutoscalerConfig
    from deployments.config import ServeConfig

    with pytest.raises(ValueError, match="unknown GPU type 'v100'"):
        AutoscalerConfig(fleet="v100:2")
    with pytest.raises(ValueError, match="needs a count"):
        AutoscalerConfig(fleet="h100")
    with pytest.raises(ValueError, match="fewer replicas in all than min_replicas"):
        AutoscalerConfig(fleet="h100:1,a100:0", min_replicas=2)
    with pytest.raises(ValueError, match="needs the carbon autoscaler"):
        ServeConfig(autoscaler=AutoscalerConfig(enabled=False, fleet="h100:1"))


def test_each_type_gets_its_own_deployment_resource_and_plan_share():
    from autoscaler.config import AutoscalerConfig
    from deployments.app import _replica_options
    from deployments.config import ServeConfig

    config = ServeConfig(num_replicas=1, autoscaler=AutoscalerConfig(fleet="a100:3:reuse,h100:2", fleet_model="llama3-70b"))
    a100, h100 = config.autoscaler.fleet_types()
    oa, oh = _replica_options(config, "app", None, a100), _replica_options(config, "app", None, h100)
    assert (oa["name"], oh["name"]) == ("LLMReplica-a100", "LLMReplica-h100")
    # a 70B replica takes 4 GPUs of its type
    assert oa["ray_actor_options"]["resources"] == {"gpu_a100": 4.0}
    assert oh["ray_actor_options"]["resources"] == {"gpu_h100": 4.0}
    for o, t, n0 in ((oa, "a100", 1), (oh, "h100", 0)):
        auto = o["autoscaling_config"]
        assert (auto["min_replicas"], auto["initial_replicas"]) == (0, n0)
        assert auto["max_replicas"] == {"a100": 3, "h100": 2}[t]
        assert auto["policy"]["policy_kwargs"]["gpu_type"] == t


@pytest.fixture(scope="module")
def fleet_app(demo_model, tmp_path_factory):
    from deployments.app import autoscaler_handle
    from deployments.launch import start_serve, stop_all

    hold_ray("fleet-live", stop_all)
    home = tmp_path_factory.mktemp("fleet-home")
    url = start_serve(_config(demo_model, home))
    try:
        yield url, autoscaler_handle(), home
    finally:
        stop_all()
        release_ray("fleet-live")


class Client(threading.Thread):
    """Sequential requests until stopped: (start time, status, GPU type, seconds) each."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.results, self.stop = url, [], threading.Event()

    def run(self) -> None:
        i = 0
        with httpx.Client(timeout=120) as c:
            while not self.stop.is_set():
                t0 = time.monotonic()
                try:
                    r = c.post(self.url + "/v1/completions", json={
                        "model": "demo", "prompt": list(range(100 + i % 7, 300 + i % 7)), "max_tokens": 8,
                        "ignore_eos": True})
                    self.results.append((t0, r.status_code, r.headers.get("x-greencache-gpu-type"),
                                         time.monotonic() - t0))
                except httpx.HTTPError as e:
                    self.results.append((t0, type(e).__name__, None, time.monotonic() - t0))
                i += 1
                time.sleep(0.2)


def test_live_actor_moves_the_replica_between_gpu_types(fleet_app, capsys):
    from autoscaler import control_plane

    url, actor, home = fleet_app
    # The fleet is declared as Ray resources, and each type's deployment asks for its own.
    assert ray.cluster_resources().get("gpu_a100") == 1 and ray.cluster_resources().get("gpu_h100") == 1

    # the plan's inputs pinned: its load, the grid, and the token mix (the configured one, not
    # the test client's short prompts)
    actor.set_overrides.remote(load_rps=LOAD_RPS, intensity_g_per_kwh=CLEAN, prompt_tokens=PROMPT,
                               output_tokens=OUTPUT).result(timeout_s=30)
    rec = actor.step.remote().result(timeout_s=60)
    assert rec["decision"]["counts"] == {"a100": 1, "h100": 0}
    wait_until(lambda: _running() == {"a100": 1, "h100": 0}, 120, "one A100 replica and no H100")

    client = Client(url)
    client.start()
    try:
        wait_until(lambda: len(client.results) >= 3, 60, "requests served on the A100 replica")
        actor.set_overrides.remote(intensity_g_per_kwh=DIRTY).result(timeout_s=30)
        rec = actor.step.remote().result(timeout_s=60)
        t_flip = time.monotonic()
        assert rec["decision"]["counts"] == {"a100": 0, "h100": 1}, rec["reason"]
        # make before break: the A100 stays until the H100 runs
        assert rec["published"]["counts"] == {"a100": 1, "h100": 1}, rec["published"]
        assert rec["published"]["planned"] == {"a100": 0, "h100": 1}
        assert control_plane.read_plan_counts("greencache")["a100"] == 1 or _running()["h100"] == 1
        wait_until(lambda: _running()["h100"] == 1, 240, "the H100 replica to run")
        t_made = time.monotonic()
        wait_until(lambda: _running() == {"a100": 0, "h100": 1}, 120, "the A100 replica to go")
        t_broken = time.monotonic()
        assert control_plane.read_plan_counts("greencache") == {"a100": 0, "h100": 1}
        # the operator's view, from the head's files
        import json

        from greencache import cli

        capsys.readouterr()
        assert cli.main(["status", "--home", str(home), "--json"]) == 0
        st = json.loads(capsys.readouterr().out)
        assert st["replicas_by_gpu_type"] == {"a100": 0, "h100": 1}
        assert st["published_by_gpu_type"] == {"a100": 0, "h100": 1}
        n_done = len(client.results)
        wait_until(lambda: len(client.results) >= n_done + 3, 60, "requests served after the move")
    finally:
        client.stop.set()
        client.join(timeout=130)

    results = client.results
    during = [g for t0, _, g, _ in results if t_flip <= t0 < t_broken]
    print(f"\nfleet move: H100 running {t_made - t_flip:.1f} s after the decision, A100 gone {t_broken - t_flip:.1f} s "
          f"after; {len(results)} requests ({len(during)} during the move: {during.count('a100')} on a100, "
          f"{during.count('h100')} on h100), statuses {sorted(set(r[1] for r in results))}, "
          f"slowest {max(s for *_, s in results):.2f} s")
    assert results and all(status == 200 for _, status, _, _ in results), \
        [r for r in results if r[1] != 200]
    before = [g for t0, _, g, _ in results if t0 < t_flip]
    assert before and set(before) == {"a100"}
    assert results[-1][2] == "h100" and results[-2][2] == "h100"
    # requests kept flowing during the move: no request waited for the new engine to start
    assert max(s for *_, s in results) < 5, max(s for *_, s in results)
    # the decision log and the ledger price the types apart: the A100 charged no embodied carbon
    per_type = rec["predicted"]["per_type"]
    assert per_type["a100"]["embodied_scale"] == 0.0 and per_type["h100"]["embodied_scale"] == 1.0
