"""A real vLLM engine with GreenCacheConnector in a subprocess, driven line by line (a harness).

Tests and `greencache bench kv-reuse` start one (`KVEngine(model, spec)`), call `generate` /
`timed_generate` / `stats`, change the store underneath (corrupt files, kill Redis, shrink
capacity) and call again. vLLM's own prefix cache is off, so every reuse goes through the
connector and the store.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

MARK = "@@GC@@"


class KVEngine:
    def __init__(self, model: str, spec: dict | None, *, max_model_len: int = 4096, namespace_model: str | None = None):
        """`spec` None: no connector and vLLM's own prefix cache on (the engine-only reference)."""
        from deployments.config import engine_env

        # The engine runs in this subprocess itself (no EngineCore child), so the connector
        # instances can be inspected in `_serve`.
        env = dict(os.environ, **engine_env(), VLLM_ENABLE_V1_MULTIPROCESSING="0")
        if spec is not None and not spec.get("mac_key_file"):  # a key of its own: engines that share chunks must share one
            import tempfile

            from cache_store.keys import ensure_mac_key

            spec = {**spec, "mac_key_file": str(ensure_mac_key(Path(tempfile.mkdtemp()) / "kv-mac.key"))}
        self.spec = spec
        args = {"model": model, "spec": spec, "max_model_len": max_model_len, "namespace_model": namespace_model}
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.kv_engine", json.dumps(args)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                                     cwd=str(Path(__file__).resolve().parents[1]))
        # ^ the repository root, so GreenCache's packages import in the child
        self._call({"op": "ping"})

    def _call(self, msg: dict) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"engine process exited with {self.proc.wait()}")
            if line.startswith(MARK):
                out = json.loads(line[len(MARK):])
                if "error" in out:
                    raise RuntimeError(out["error"])
                return out

    def generate(self, prompts: list[list[int]], max_tokens: int = 12) -> list[dict]:
        return self._call({"op": "generate", "prompts": prompts, "max_tokens": max_tokens})["outputs"]

    def timed_generate(self, prompt: list[int], max_tokens: int = 1) -> tuple[float, dict]:
        """Wall seconds for one request (with max_tokens=1: time to first token) and its output,
        with `stages`: the seconds the connector spent per load stage in it (empty without one)."""
        out = self._call({"op": "timed", "prompt": prompt, "max_tokens": max_tokens})
        return out["seconds"], {**out["output"], "stages": out.get("stages", {})}

    def stats(self) -> dict:
        """Worker-side connector stats (loads, saves, failures, store tiers)."""
        return self._call({"op": "stats"})

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self._call({"op": "exit"})
            except Exception:
                pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _serve(args: dict) -> None:
    import time
    import traceback

    from vllm import LLM, SamplingParams

    from cache_store.config import kv_transfer_config

    spec = dict(args["spec"]) if args["spec"] is not None else None
    if spec is not None and args.get("namespace_model"):
        spec["namespace_model"] = args["namespace_model"]
    llm = LLM(model=args["model"], enforce_eager=True, max_model_len=args["max_model_len"],
              enable_prefix_caching=spec is None, seed=0,
              kv_transfer_config=kv_transfer_config(spec) if spec is not None else None)
    from cache_store import connector

    def stage_seconds() -> dict:
        """The connectors' load-stage timers (scheduler and worker, both in this process)."""
        out: dict = {}
        for c in connector.instances():
            for k, v in c.timing().items():
                out[k] = out.get(k, 0.0) + v
        return out

    def reply(obj):
        sys.stdout.write(MARK + json.dumps(obj) + "\n")
        sys.stdout.flush()

    for line in sys.stdin:
        msg = json.loads(line)
        try:
            if msg["op"] == "ping":
                reply({"ok": True})
            elif msg["op"] == "exit":
                reply({"ok": True})
                break
            elif msg["op"] == "generate":
                sp = SamplingParams(max_tokens=msg["max_tokens"], temperature=0, ignore_eos=True, logprobs=0)
                outs = llm.generate([{"prompt_token_ids": p} for p in msg["prompts"]], sp, use_tqdm=False)
                time.sleep(0.3)  # let the background writer flush this batch's saves
                reply({"outputs": [{
                    "token_ids": list(o.outputs[0].token_ids),
                    "logprobs": [lp[t].logprob for lp, t in zip(o.outputs[0].logprobs, o.outputs[0].token_ids)],
                    "num_cached_tokens": o.num_cached_tokens,
                } for o in outs]})
            elif msg["op"] == "timed":
                sp = SamplingParams(max_tokens=msg["max_tokens"], temperature=0, ignore_eos=True)
                before = stage_seconds()
                t0 = time.perf_counter()
                o = llm.generate([{"prompt_token_ids": msg["prompt"]}], sp, use_tqdm=False)[0]
                seconds = time.perf_counter() - t0
                stages = {k: v - before.get(k, 0.0) for k, v in stage_seconds().items()}
                time.sleep(0.3)  # let the background writer flush saves before the next call
                reply({"seconds": seconds, "stages": stages, "output": {
                    "token_ids": list(o.outputs[0].token_ids), "num_cached_tokens": o.num_cached_tokens}})
            elif msg["op"] == "stats":
                workers = [c for c in connector.instances() if c._role.name == "WORKER"]
                reply(workers[0].connector_stats() if workers else {})
        except Exception:
            reply({"error": traceback.format_exc()})


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]))
