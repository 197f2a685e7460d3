"""`greencache bench cluster`: the KV store across nodes, and a node lost under load, on a local
multi-node Ray (benchmarks/local_cluster.py: every node on 127.0.0.1 with its own home).

Topology: a 0-CPU head (ingress, Serve controller, Redis), worker node A with two LLM replicas
and worker node B with one; Redis shared by both nodes, a disk tier per node. vLLM's own
prefix cache is off, so every reuse goes through GreenCache's store, and routing is by load
only, so the benchmark reaches a replica by asking until it answers.

1. KV reuse, for each of `--prompts` fresh ~`--prompt-tokens`-token prompts: TTFT cold on node A;
   once its chunks are in Redis (saving runs after the answer; `save_to_redis_s`), on node B (a
   cross-node hit: the chunks come from Redis); then on A's other replica (a same-node hit: from
   A's disk tier). Greedy outputs must equal the cold one.
2. Node loss: `--clients` closed-loop clients send greedy requests whose outputs were recorded
   before; after `--kill-after-s` node B is killed (no graceful shutdown) and a fresh node C
   joins. `recovery_s`: from the kill until the last failed request (0 if none failed);
   `replacement_s`: until node C runs the replacement replica.
Targets: both speedups >= 5x, wrong_outputs 0, recovery_s <= 30.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import threading
import time

import httpx

from benchmarks.loadgen import stream_completion

MODEL = "demo"
# Pause before each timed request. Three engines share this machine's two cores, and after each
# step a vLLM worker keeps polling its shared-memory queue for 1 s (busy_loop_s in vLLM's
# shm_broadcast.SpinCondition): without the pause, a measured request competes with the spinning
# of whichever engine ran last, which engines on separate machines never do.
SETTLE_S = 1.5


def _prompt(seed: int, n: int) -> list[int]:
    r = random.Random(seed)
    return [r.randrange(10, 2000) for _ in range(n)]


def _ask(url: str, prompt: list[int], max_tokens: int = 4) -> tuple[str, float, str, int]:
    """(replica, TTFT s, text, cached prompt tokens) of one streamed greedy request."""
    time.sleep(SETTLE_S)

    async def go():
        async with httpx.AsyncClient(timeout=300) as client:
            return await stream_completion(client, url, MODEL, prompt, max_tokens,
                                           extra={"stream_options": {"include_usage": True}})

    res = asyncio.run(go())
    if not res.ok:
        raise RuntimeError(res.error)
    return res.replica, res.ttft_s, res.text, res.cached_tokens


def _until(url: str, prompt: list[int], replicas: set[str], tries: int = 40):
    for _ in range(tries):
        rid, ttft, text, cached = _ask(url, prompt)
        if rid in replicas:
            return rid, ttft, text, cached
    raise RuntimeError(f"none of {replicas} answered in {tries} tries")


def _setup(args):
    from benchmarks.local_cluster import LocalCluster, replica_nodes
    from cache_store.config import KVStoreConfig
    from cache_store.local import free_port
    from cache_store.redis_server import RedisServer
    from deployments.config import RoutingConfig, ServeConfig
    from deployments.launch import deploy
    from autoscaler.config import AutoscalerConfig

    lc = LocalCluster()
    lc.add_node("a", num_cpus=2)
    lc.add_node("b", num_cpus=1)
    lc.connect()
    redis_srv = RedisServer(password=True, secrets_dir=lc.root / "secrets")
    config = ServeConfig(
        model=args.model, served_model_name=MODEL, port=free_port(), direct_ingress=False, num_replicas=3,
        max_replicas_per_node=2, max_model_len=args.prompt_tokens + 256, routing=RoutingConfig(prefix_affinity=False),
        engine_kwargs={"enable_prefix_caching": False},
        kv_store=KVStoreConfig(redis_url=redis_srv.url, redis_password_file=redis_srv.password_file,
                               disk_capacity_bytes=8 * 10**9, redis_capacity_bytes=4 * 10**9),
        autoscaler=AutoscalerConfig(enabled=False))
    url = deploy(config, address=lc.address)
    names = {n.node_id: name for name, n in lc.nodes.items()}
    by_node: dict[str, set[str]] = {}
    deadline = time.monotonic() + 300
    while sorted(len(v) for v in by_node.values()) != [1, 2] and time.monotonic() < deadline:
        by_node = {}
        for rid, node_id in replica_nodes().items():
            by_node.setdefault(names.get(node_id, node_id), set()).add(rid)
        time.sleep(1)
    return lc, redis_srv, url, by_node


def _chunks_in_redis(redis_srv) -> int:
    r = redis_srv.client()
    return sum(1 for k in r.scan_iter(count=1000) if not k.startswith(b"gc:"))


def _wait_saved(redis_srv, want: int, timeout_s: float = 30.0) -> float:
    """Seconds until Redis holds `want` chunks: saving runs behind the response, off the engine's
    path, and a cross-node hit can only find what has landed."""
    t0 = time.monotonic()
    while _chunks_in_redis(redis_srv) < want and time.monotonic() - t0 < timeout_s:
        time.sleep(0.05)
    return time.monotonic() - t0


def measure_reuse(url: str, by_node: dict, redis_srv, args) -> dict:
    cold, cross, same, saved, identical = [], [], [], [], True
    chunks = (args.prompt_tokens - 1) // 256
    for i in range(args.prompts):
        for k in range(40):  # a fresh prompt until its first (cold) answer comes from node A
            before = _chunks_in_redis(redis_srv)
            p = _prompt(1000 * i + k, args.prompt_tokens)
            rid, t_cold, text, cached = _ask(url, p)
            if rid in by_node["a"]:
                break
        assert cached == 0
        saved.append(_wait_saved(redis_srv, before + chunks))
        _, t_cross, text_b, cached_b = _until(url, p, by_node["b"])
        other = by_node["a"] - {rid}
        _, t_same, text_a2, cached_a2 = _until(url, p, other)
        identical &= text == text_b == text_a2 and cached_b > 0 and cached_a2 > 0
        cold.append(t_cold)
        cross.append(t_cross)
        same.append(t_same)
        print(f"[bench cluster] prompt {i}: cold {t_cold:.3f}s cross-node {t_cross:.3f}s ({cached_b} cached) "
              f"same-node {t_same:.3f}s ({cached_a2} cached)", file=sys.stderr, flush=True)
    c, x, s = statistics.median(cold), statistics.median(cross), statistics.median(same)
    return {"ttft_cold_s": c, "ttft_cross_node_hit_s": x, "ttft_same_node_hit_s": s,
            "speedup_cross_node": c / x, "speedup_same_node": c / s, "outputs_identical": identical,
            "chunks_per_prompt": chunks, "save_to_redis_s": statistics.median(saved)}


def measure_node_loss(lc, url: str, args) -> dict:
    from benchmarks.local_cluster import replica_nodes

    prompts = [_prompt(90_000 + i, 300) for i in range(8)]
    body = lambda p: {"model": MODEL, "prompt": p, "max_tokens": 8, "temperature": 0, "ignore_eos": True}  # noqa: E731
    expected = [httpx.post(url + "/v1/completions", json=body(p), timeout=300).json()["choices"][0]["text"]
                for p in prompts]
    results: list[tuple[float, float, str]] = []  # (start, end, outcome)
    stop = time.monotonic() + args.load_s

    def client(k: int) -> None:
        http = httpx.Client(timeout=120)
        while time.monotonic() < stop:
            i = k % len(prompts)
            k += args.clients
            t0 = time.monotonic()
            try:
                r = http.post(url + "/v1/completions", json=body(prompts[i]))
                ok = r.status_code == 200
                outcome = ("ok" if r.json()["choices"][0]["text"] == expected[i] else "wrong") if ok else "failed"
            except httpx.HTTPError:
                outcome = "failed"
            results.append((t0, time.monotonic(), outcome))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
    for t in threads:
        t.start()
    time.sleep(args.kill_after_s)
    killed = time.monotonic()
    lc.kill_node("b")
    new = lc.add_node("c", num_cpus=1)
    replacement_s = None
    while any(t.is_alive() for t in threads) or replacement_s is None:
        if replacement_s is None and new.node_id in replica_nodes().values():
            replacement_s = time.monotonic() - killed
        if replacement_s is None and time.monotonic() - killed > 300:
            break
        time.sleep(0.5)
    for t in threads:
        t.join()
    failures = [end for _, end, o in results if o != "ok"]
    return {"requests": len(results), "failed": sum(o == "failed" for _, _, o in results),
            "wrong_outputs": sum(o == "wrong" for _, _, o in results),
            "recovery_s": max(failures) - killed if failures else 0.0, "replacement_s": replacement_s,
            "load_s": args.load_s, "clients": args.clients}


def _table(out: dict) -> str:
    rows = [("measure", "value"),
            ("TTFT cold (node A)", f"{out['ttft_cold_s']:.3f} s"),
            ("chunks in Redis after the cold answer", f"{out['save_to_redis_s']:.2f} s"),
            ("TTFT cross-node hit (Redis)", f"{out['ttft_cross_node_hit_s']:.3f} s  ({out['speedup_cross_node']:.1f}x)"),
            ("TTFT same-node hit (disk)", f"{out['ttft_same_node_hit_s']:.3f} s  ({out['speedup_same_node']:.1f}x)"),
            ("outputs identical", str(out["outputs_identical"])),
            ("requests during node loss", str(out["requests"])),
            ("failed / wrong", f"{out['failed']} / {out['wrong_outputs']}"),
            ("recovery", f"{out['recovery_s']:.1f} s"),
            ("replacement replica on a new node", f"{out['replacement_s']:.1f} s" if out["replacement_s"] else "-")]
    w = max(len(r[0]) for r in rows)
    return "\n".join(f"{a:<{w}}  {b}" for a, b in rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="greencache bench cluster", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true")
    p.add_argument("--model", default=None, help="model directory (default: the demo model, built on each node)")
    p.add_argument("--prompt-tokens", type=int, default=4000)
    p.add_argument("--prompts", type=int, default=5)
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--load-s", type=float, default=45.0, help="length of the steady load (s)")
    p.add_argument("--kill-after-s", type=float, default=10.0, help="when node B is killed (s into the load)")
    args = p.parse_args(argv)
    from benchmarks.report import clean_stdout
    from deployments.launch import stop_all

    lc = redis_srv = None
    with clean_stdout() as emit:
        try:
            lc, redis_srv, url, by_node = _setup(args)
            out = {**measure_reuse(url, by_node, redis_srv, args), **measure_node_loss(lc, url, args),
                   "prompt_tokens": args.prompt_tokens, "prompts": args.prompts,
                   "targets": {"speedup_min": 5.0, "wrong_outputs": 0, "recovery_s_max": 30.0}}
        finally:
            stop_all()
            if lc is not None:
                lc.shutdown()
            if redis_srv is not None:
                redis_srv.stop()
        print(_table(out), file=sys.stderr)
        if args.json:
            emit(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
