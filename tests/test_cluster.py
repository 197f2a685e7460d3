"""GreenCache on a real multi-node Ray: three raylets on this machine (a 0-CPU head and workers
"a" and "b"), every node on 127.0.0.1 with its own GreenCache home and disk directory, deployed
with `deploy(..., address=...)`, the code path of `greencache serve --address`.

Three LLM replicas, at most two per node: one worker node holds two, the other one. Routing is
by load only here (prefix affinity off), so a test reaches a particular replica by asking until
that replica answers (`x-greencache-replica`)."""

from __future__ import annotations

import concurrent.futures as cf
import random
import time

import httpx
import pytest
import ray
from ray import serve

from conftest import free_port, hold_ray, release_ray, wait_until

CHUNK = 256
CAPACITY_OPTIONS_GB = [0.0, 0.004]  # 4 MB: eight 512 KiB chunks of the demo model


def _wait(pred, timeout_s: float, what: str, every_s: float = 0.5):
    return wait_until(pred, timeout_s, what, every_s)


def _prompt(seed: int, n: int) -> list[int]:
    r = random.Random(seed)
    return [r.randrange(10, 2000) for _ in range(n)]


class Client:
    def __init__(self, url: str):
        self.url = url
        self.http = httpx.Client(timeout=120)

    def complete(self, prompt: list[int], max_tokens: int = 8) -> httpx.Response:
        return self.http.post(self.url + "/v1/completions", json={
            "model": "demo", "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True})

    def cold_on(self, replicas: set[str], n_tokens: int, tries: int = 40) -> tuple[list[int], dict]:
        """A fresh prompt whose first (cold) answer came from one of `replicas`."""
        for k in range(tries):
            p = _prompt(10_000 + k + int(time.time() * 1000) % 100_000, n_tokens)
            r = self.complete(p)
            assert r.status_code == 200, r.text
            if r.headers["x-greencache-replica"] in replicas:
                return p, {"replica": r.headers["x-greencache-replica"], **r.json()}
        raise AssertionError(f"none of {replicas} answered first in {tries} tries")

    def until_served_by(self, prompt: list[int], replicas: set[str], tries: int = 40) -> dict:
        """Send `prompt` until one of `replicas` answers it; that answer."""
        for _ in range(tries):
            r = self.complete(prompt)
            assert r.status_code == 200, r.text
            if r.headers["x-greencache-replica"] in replicas:
                return {"replica": r.headers["x-greencache-replica"], **r.json()}
        raise AssertionError(f"none of {replicas} answered in {tries} tries")


@pytest.fixture(scope="module")
def cluster(demo_model):
    from autoscaler.config import AutoscalerConfig
    from benchmarks.local_cluster import LocalCluster
    from cache_store.config import KVStoreConfig
    from cache_store.redis_server import RedisServer
    from deployments.config import RoutingConfig, ServeConfig
    from deployments.launch import deploy, stop_all

    lc = None

    def stop():
        stop_all()
        if lc is not None:
            lc.shutdown()

    hold_ray("cluster", stop)
    lc = LocalCluster()
    lc.add_node("a", num_cpus=2)
    lc.add_node("b", num_cpus=2)
    lc.connect()
    redis_srv = RedisServer(password=True, secrets_dir=lc.root / "secrets")
    config = ServeConfig(
        model=str(demo_model), served_model_name="demo", port=free_port(), direct_ingress=False,
        num_replicas=3, max_replicas_per_node=2, max_model_len=2048, routing=RoutingConfig(prefix_affinity=False),
        kv_store=KVStoreConfig(redis_url=redis_srv.url, redis_password_file=redis_srv.password_file,
                               disk_capacity_bytes=1 << 30),
        autoscaler=AutoscalerConfig(min_replicas=3, max_replicas=3, interval_s=5.0, trace_hours_per_interval=1.0,
                                    horizon_slots=4, capacities_gb=CAPACITY_OPTIONS_GB),
    )
    url = deploy(config, address=lc.address)
    try:
        yield lc, Client(url), redis_srv
    finally:
        stop()
        release_ray("cluster")
        redis_srv.stop()


def _nodes_by_name(lc) -> dict[str, str]:
    return {n.node_id: name for name, n in lc.nodes.items()}


def _replicas_by_node(lc) -> dict[str, set[str]]:
    from benchmarks.local_cluster import replica_nodes

    names = _nodes_by_name(lc)
    out: dict[str, set[str]] = {}
    for rid, node_id in replica_nodes().items():
        out.setdefault(names.get(node_id, node_id), set()).add(rid)
    return out


def _node_disk_capacity(node) -> int:
    from cache_store.tiers import DiskTier

    t = DiskTier(node.home / "kv-disk", None)
    try:
        return t.capacity_bytes
    finally:
        t.close()


def _chunk_bytes(node) -> int:
    return sum(p.stat().st_size for p in (node.home / "kv-disk").glob("*.kv"))


def test_replicas_spread_over_the_nodes_and_control_runs_on_the_head(cluster):
    from benchmarks.local_cluster import replica_nodes

    lc, client, _ = cluster
    by_node = _wait(lambda: (lambda m: m if sorted(len(v) for v in m.values()) == [1, 2] else None)(
        _replicas_by_node(lc)), 120, "three replicas over two nodes")
    assert set(by_node) == {"a", "b"}
    head = lc.head.node_id
    for deployment in ("OpenAIIngress", "CarbonAutoscaler"):
        assert set(replica_nodes(deployment=deployment).values()) == {head}, deployment


def test_a_capacity_decision_reaches_every_node_within_one_interval(cluster):
    """The autoscaler publishes its disk capacity in Ray's KV; every replica applies it to its
    node's tier, whose engines follow it (no file crosses nodes)."""
    from deployments.app import autoscaler_handle

    lc, client, _ = cluster
    auto = autoscaler_handle()
    auto.set_overrides.remote(load_rps=0.0, intensity_g_per_kwh=900.0).result()
    low = auto.step.remote().result()["decision"]["capacity_gb"]
    assert low == 0.0  # no load: a cache only costs carbon
    _wait(lambda: all(_node_disk_capacity(n) == 0 for n in lc.nodes.values()), 5, "0 B on every node")
    auto.set_overrides.remote(load_rps=50.0).result()
    t0 = time.monotonic()
    high = auto.step.remote().result()["decision"]["capacity_gb"]
    want = int(high * 1e9)
    assert want == 4_000_000  # heavy load on a dirty grid: the cache pays
    _wait(lambda: all(_node_disk_capacity(n) == want for n in lc.nodes.values()), 5.0, f"{want} B on every node")
    took = time.monotonic() - t0
    assert took <= 5.0  # the autoscaler's interval

    def engines_report():
        from autoscaler.telemetry import get_or_create_hub

        snap = ray.get(get_or_create_hub().snapshot.remote(), timeout=5)
        caps = {p["store"]["tiers"]["disk"]["capacity_bytes"] for k, rep in snap.items() if not k.startswith("__")
                for p in rep.get("processes", []) if str(p.get("role")).lower() == "worker"}
        return caps == {want} and len([k for k in snap if not k.startswith("__")]) == 3

    _wait(engines_report, 20, "every engine to report the new capacity")


def test_replicas_on_one_node_share_its_disk_tier_within_one_capacity(cluster):
    lc, client, _ = cluster
    by_node = _replicas_by_node(lc)
    pair_node = next(n for n, rs in by_node.items() if len(rs) == 2)
    node = lc.nodes[pair_node]
    p, cold = client.cold_on(by_node[pair_node], 4 * CHUNK + 10)  # computed on the pair's node
    assert cold["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    (second,) = by_node[pair_node] - {cold["replica"]}
    hit = client.until_served_by(p, {second})  # the pair's other replica never saw the prompt
    assert hit["usage"]["prompt_tokens_details"]["cached_tokens"] >= 3 * CHUNK
    assert hit["choices"][0]["text"] == cold["choices"][0]["text"]  # greedy: same tokens

    def disk_hits() -> float:  # the second replica's engine found the chunks in the node's disk tier
        text = httpx.get(client.url + "/metrics", timeout=30).text
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("greencache_kv_tier_hits_total{") and f'replica="{second}"' in line
                   and 'tier="disk"' in line and 'role="worker"' in line)

    _wait(lambda: disk_hits() >= 3, 20, "disk-tier hits reported by the second replica")
    # both replicas write into the node's one tier, concurrently, and it keeps one capacity
    cap = _node_disk_capacity(node)
    assert cap == 4_000_000
    with cf.ThreadPoolExecutor(4) as pool:
        for r in pool.map(lambda i: client.complete(_prompt(100 + i, 3 * CHUNK + 5), max_tokens=2), range(16)):
            assert r.status_code == 200
    assert 0 < _chunk_bytes(node) <= cap
    for other in lc.nodes.values():
        assert _chunk_bytes(other) <= cap


def test_a_prompt_computed_on_one_node_is_a_hit_on_another_through_redis(cluster):
    lc, client, redis_srv = cluster
    by_node = _replicas_by_node(lc)
    p, cold = client.cold_on(by_node["a"] | by_node["b"], 5 * CHUNK + 7)  # the first answer, wherever
    assert cold["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    there = next(n for n, rs in by_node.items() if cold["replica"] in rs)
    other = next(n for n in by_node if n != there)
    hit = client.until_served_by(p, by_node[other])  # the other node never saw the prompt
    assert hit["usage"]["prompt_tokens_details"]["cached_tokens"] >= 4 * CHUNK  # so: from Redis
    assert hit["choices"][0]["text"] == cold["choices"][0]["text"]
    assert redis_srv.client().dbsize() > 0


def test_losing_a_worker_node(cluster):
    """Kill node b under steady load: answers keep coming from node a, requests caught on b end
    with an OpenAI-shaped error (never a hang), nothing wrong is served, the autoscaler (on the
    head) carries on, and a new node gets the missing replica back."""
    from deployments.app import autoscaler_handle

    lc, client, _ = cluster
    auto = autoscaler_handle()
    cycles_before = auto.status.remote().result()["cycles"]
    prompts = [_prompt(500 + i, 300) for i in range(6)]
    expected = {}
    for i, p in enumerate(prompts):  # known outputs, computed before the fault
        r = client.complete(p)
        assert r.status_code == 200
        expected[i] = r.json()["choices"][0]["text"]
    results: list[tuple[float, str, object]] = []
    stop = time.monotonic() + 40
    killed_at = None

    def load(worker: int) -> None:
        k = worker
        http = httpx.Client(timeout=60)
        while time.monotonic() < stop:
            i = k % len(prompts)
            k += 3
            t = time.monotonic()
            try:
                r = http.post(client.url + "/v1/completions", json={
                    "model": "demo", "prompt": prompts[i], "max_tokens": 8, "temperature": 0, "ignore_eos": True})
            except httpx.TimeoutException:
                results.append((t, "hang", None))
                continue
            except httpx.TransportError as e:  # a connection dropped without an answer
                results.append((t, "dropped", repr(e)))
                continue
            if r.status_code == 200:
                results.append((t, "ok" if r.json()["choices"][0]["text"] == expected[i] else "wrong", None))
            else:
                results.append((t, "error", (r.status_code, r.json())))

    with cf.ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(load, w) for w in range(3)]
        time.sleep(8)
        killed_at = time.monotonic()
        lc.kill_node("b")
        for f in futures:
            f.result()
    kinds = [k for _, k, _ in results]
    assert not {"wrong", "hang", "dropped"} & set(kinds), results
    for _, kind, detail in results:
        if kind == "error":
            status, body = detail
            assert status >= 500 and set(body["error"]) == {"message", "type", "param", "code"}, detail
    after = [k for t, k, _ in results if t > killed_at + 10]
    assert after and all(k == "ok" for k in after), after  # node a answers everything
    # the autoscaler lives on the head: still the same one, still planning
    _wait(lambda: auto.status.remote().result()["cycles"] > cycles_before + 2, 30, "autoscaler cycles")
    # a new node gets the third replica back
    lc.add_node("c", num_cpus=2)
    _wait(lambda: len(_replicas_by_node(lc).get("c", ())) == 1, 180, "a replica on the new node")
    st = serve.status().applications["greencache"].deployments["LLMReplica"]
    _wait(lambda: serve.status().applications["greencache"].deployments["LLMReplica"].replica_states.get("RUNNING")
          == 3, 120, "three running replicas")
    assert st is not None
    r = client.complete(prompts[0])
    assert r.status_code == 200 and r.json()["choices"][0]["text"] == expected[0]


def test_greencache_serve_address_deploys_onto_the_running_cluster(cluster, demo_model):
    """`greencache serve --address` deploys onto a cluster it did not start, and Ctrl-C removes
    only its application: the cluster (and its nodes) keep running."""
    import os
    import signal
    import subprocess
    import sys

    lc, client, _ = cluster
    port = free_port()  # Serve already runs on this cluster: its port stays, and the CLI says so
    proc = subprocess.Popen(
        [sys.executable, "-m", "greencache.cli", "serve", "--address", lc.address, "--port", str(port),
         "--model", str(demo_model), "--served-model-name", "demo", "--max-model-len", "512", "--no-autoscaler",
         "--no-kv-store"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        env=dict(os.environ, RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"))
    lines = []
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "GreenCache is serving" in line:
                break
        assert any(f"at {client.url}/v1" in ln for ln in lines), "".join(lines)
        assert any(f"port {port} is ignored" in ln for ln in lines), "".join(lines)
        r = httpx.post(f"{client.url}/v1/completions",
                       json={"model": "demo", "prompt": "hello cluster", "max_tokens": 3}, timeout=120)
        assert r.status_code == 200, r.text
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out
        assert "greencache" not in serve.status().applications  # its application is gone
        assert len([n for n in ray.nodes() if n["Alive"]]) == 1 + len(lc.nodes)  # the cluster is not
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
