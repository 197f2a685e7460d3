"""The LLM replica: one Ray Serve replica hosting one vLLM `AsyncLLM` engine.

The ingress does all HTTP and OpenAI work (validation, tokenization, chat templates, SSE);
the replica only turns token ids into a stream of `GenerationChunk` dicts. Keeping the
replica's interface small (token ids in, token deltas out) makes routing and the KV store
independent of the API surface.

Failure semantics: a request error raises inside `generate` and reaches the ingress as an
exception (rendered as a 500 there); an engine that died makes `check_health` raise, so Serve
replaces the replica.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Optional

from ray import serve

logger = logging.getLogger("greencache.replica")


def _restore_engine_priority() -> None:
    """Run the engine at normal CPU priority (nice 0, or `GREENCACHE_ENGINE_NICE`).

    Ray starts worker processes at nice 15 so its daemons win the CPU. For the process that
    hosts a vLLM engine that is wrong: the engine's scheduler loop and (on CPU) its OpenMP
    threads then lose to every normal-priority process on the node, and on a small machine
    that costs throughput and latency. Engine processes spawned afterwards inherit this value.
    Lowering niceness needs CAP_SYS_NICE; without it we keep Ray's value and say so.
    `greencache serve` also starts Ray with `RAY_worker_niceness=0` (greencache/server.py), which
    covers the proxy and ingress too; this stays for clusters started without it.
    """
    from deployments.settings import settings

    target = settings().engine_nice
    try:
        current = os.getpriority(os.PRIO_PROCESS, 0)
        if current != target:
            os.setpriority(os.PRIO_PROCESS, 0, target)
    except (PermissionError, OSError) as e:
        logger.warning("could not set engine niceness to %d (%s); keeping Ray's", target, e)


def _sampling_param(message: str, sampling: dict) -> Optional[str]:
    """The request field a vLLM sampling error is about, when its message names one."""
    for name in sampling:
        if name in message:
            return name
    return None


class LLMReplica:
    """Serve deployment class; `deployments.app.build_app` wraps it with `serve.deployment`."""

    def __init__(self, engine_config: dict[str, Any], app_name: str = "greencache"):
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        from deployments.config import EngineConfig
        from deployments.logs import to_replica_log

        to_replica_log()
        self.config = EngineConfig.model_validate(engine_config)
        try:
            self.replica_id = serve.get_replica_context().replica_id.unique_id
        except Exception:  # constructed outside Serve (unit use)
            self.replica_id = uuid.uuid4().hex[:8]
        _restore_engine_priority()
        from deployments.demo_model import local_model_dir
        from deployments.settings import settings

        self.home = Path(self.config.home or settings().home)
        self.stats_dir: Optional[str] = None
        self.store_control = None
        model_dir = local_model_dir(self.config.model, self.home)
        spec = self._start_store(app_name, model_dir) if self.config.kv_store is not None else None
        t0 = time.monotonic()
        self.engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**self.config.engine_args(model_dir, spec)))
        logger.info("replica %s: engine ready in %.1fs", self.replica_id, time.monotonic() - t0)
        self._tasks = []
        if spec is not None:
            loop = asyncio.get_event_loop()
            self._tasks = [loop.create_task(self._publish_store_stats()), loop.create_task(self._follow_capacity())]

    def _start_store(self, app_name: str, model_dir: str) -> dict[str, Any]:
        """Resolve the store for this node and set the node's disk capacity before the engine
        (whose processes follow it) starts; returns the spec for the engine's connector."""
        from deployments.settings import settings
        from deployments.store_control import NodeStoreControl, node_spec

        node = settings()
        spec = node_spec(self.config.kv_store, node, self.config.served_model_name, self.home, model_dir, app_name)
        spec["stats_dir"] = self.stats_dir = os.path.join(spec["stats_dir"], self.replica_id)
        disk = next((t for t in spec["tiers"] if t["kind"] == "disk"), None)
        self.store_control = NodeStoreControl(self.config.kv_store, Path(disk["path"]) if disk else None, app_name)
        return spec

    async def _publish_store_stats(self, every_s: float = 2.0) -> None:
        """Push this replica's store stats to the telemetry hub (for /metrics and the autoscaler)."""
        from autoscaler.telemetry import get_or_create_hub

        hub = None
        while True:
            await asyncio.sleep(every_s)
            try:
                hub = hub or get_or_create_hub()
                hub.report.remote(self.replica_id, await self.store_stats())
            except Exception:  # a missing hub must never hurt serving
                hub = None
                logger.debug("store stats publish failed", exc_info=True)

    async def _follow_capacity(self, every_s: float = 1.0) -> None:
        """Apply the autoscaler's published store capacity to this node (see store_control.py)."""
        while True:
            await asyncio.sleep(every_s)
            try:
                await asyncio.to_thread(self.store_control.poll)
            except Exception:  # the control plane must never hurt serving
                logger.warning("applying the store capacity failed", exc_info=True)

    async def generate(self, request: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """Stream generation for one request.

        `request` keys: `request_id`, `prompt_token_ids`, `sampling` (SamplingParams kwargs),
        and `prefix_hashes` (used only by the router). Yields dicts with `text` (delta),
        `num_tokens` (delta), `finish_reason`, and on the first chunk `replica_id`,
        `prompt_tokens`; on the last, `cached_tokens`. Sampling parameters vLLM refuses give
        one chunk `{"error": {"message", "param"}}` instead: the client's mistake, a 400.
        """
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        try:
            params = SamplingParams(output_kind=RequestOutputKind.DELTA, **request["sampling"])
        except (ValueError, TypeError) as e:
            yield {"error": {"message": str(e), "param": _sampling_param(str(e), request["sampling"])}}
            return
        interval_s = self.config.stream_interval_ms / 1000.0
        first = True
        shown = False  # has visible text gone out yet? (a first token can detokenize to "")
        async for out in self.engine.generate(
            {"prompt_token_ids": request["prompt_token_ids"]},
            params,
            request["request_id"],
        ):
            comp = out.outputs[0]
            chunk: dict[str, Any] = {
                "text": comp.text,
                "num_tokens": len(comp.token_ids),
                "finish_reason": comp.finish_reason,
            }
            if first:
                chunk["replica_id"] = self.replica_id
                chunk["prompt_tokens"] = len(out.prompt_token_ids or request["prompt_token_ids"])
                first = False
            if out.finished:
                chunk["cached_tokens"] = int(out.num_cached_tokens or 0)
            yield chunk
            shown = shown or bool(comp.text)
            if interval_s and shown and not out.finished:
                # Coalesce: vLLM's DELTA collector merges the tokens produced while we wait, so
                # each Ray/SSE message carries several tokens. Never before the first visible
                # text: a first token that is an incomplete UTF-8 byte detokenizes to "", and
                # delaying the next one would delay what the user first sees.
                await asyncio.sleep(interval_s)

    async def store_stats(self) -> dict[str, Any]:
        """KV-store stats published by this replica's engine processes (scheduler, worker)."""
        import glob
        import json

        out: dict[str, Any] = {"replica_id": self.replica_id, "processes": []}
        if self.stats_dir:
            for path in sorted(glob.glob(os.path.join(self.stats_dir, "stats-*.json"))):
                try:
                    with open(path) as f:
                        out["processes"].append(json.load(f))
                except (OSError, ValueError):
                    pass
        return out

    async def health(self) -> dict[str, Any]:
        await self.engine.check_health()
        return {"replica_id": self.replica_id, "status": "ok"}

    async def check_health(self) -> None:
        """Called by Serve's controller; raising marks the replica unhealthy."""
        if self.engine.errored:
            raise RuntimeError(f"vLLM engine of replica {self.replica_id} has errored")

    def __del__(self):
        engine = getattr(self, "engine", None)
        if engine is not None:
            try:
                engine.shutdown()
            except Exception:
                pass
