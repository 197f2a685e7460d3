"""Configuration of the serving side: engines, routing, and the whole Serve deployment.

One pydantic model per concern; every field says what it is and its unit. Validation errors
name the bad value and the fix, because operators read them at startup. `ServeConfig` is what
`greencache serve` and the Serve application builder (`deployments.app:build`) take; it holds
the store's and the autoscaler's configurations, which live next to their own code. Importing
this module imports no Ray.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from autoscaler.config import AutoscalerConfig
from cache_store.config import KVStoreConfig

DEMO_MODEL_NAME = "greencache-demo"

# Environment every engine process gets on a CPU-only machine. Values already set in the
# operator's environment win (see `engine_env`).
CPU_ENGINE_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "HF_HUB_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    "TOKENIZERS_PARALLELISM": "false",
}


def engine_env(engine_kwargs: Optional[dict[str, Any]] = None) -> dict[str, str]:
    """Environment variables for engine processes (replica actors, vLLM baseline servers).

    With `kv_cache_memory_bytes` among the engine's arguments, VLLM_CPU_KVCACHE_SPACE is left
    out: on CPU, vLLM lets the variable (whole GiB, even "0") override the argument. The
    variable must then be absent from the engine's environment altogether (the caller's too)."""
    env = dict(CPU_ENGINE_ENV)
    if engine_kwargs and engine_kwargs.get("kv_cache_memory_bytes"):
        env.pop("VLLM_CPU_KVCACHE_SPACE")
    if "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        env["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{max(0, (os.cpu_count() or 1) - 1)}"
    for k in list(env):
        if k in os.environ:
            env[k] = os.environ[k]
    return env


class EngineConfig(BaseModel):
    """What a replica needs to start its vLLM engine."""

    model_config = ConfigDict(extra="forbid")

    model: Optional[str] = Field(None, description="Local Hugging Face model directory (the same path on every "
                                 "node); None = the demo model, built on each node.")
    served_model_name: str = Field(description="Name clients pass as `model`.")
    max_model_len: Optional[int] = Field(
        None, ge=16, description="Context window in tokens; default: the model's own."
    )
    enforce_eager: bool = Field(True, description="Skip graph capture (faster start, CPU-friendly).")
    engine_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra vLLM `AsyncEngineArgs` fields, e.g. {'max_num_seqs': 64}.",
    )
    stream_interval_ms: float = Field(
        0.0, ge=0, description="Coalesce streamed tokens: at most one message per interval after the first (ms); 0 = every step."
    )
    kv_store: Optional[KVStoreConfig] = Field(
        None, description="The KV store the engine's connector uses (resolved on the replica's node); None = none."
    )
    home: Optional[Path] = Field(None, description="GreenCache home on every node; None = each node's own.")

    def engine_args(self, model_dir: str, kv_store_spec: Optional[dict[str, Any]] = None) -> dict[str, Any]:
        """vLLM `AsyncEngineArgs` fields for the model at `model_dir` (resolved on this node);
        `kv_store_spec` is the store spec resolved for this node."""
        from cache_store.config import kv_transfer_config

        args: dict[str, Any] = dict(
            model=model_dir,
            served_model_name=self.served_model_name,
            enforce_eager=self.enforce_eager,
            disable_log_stats=False,
        )
        if self.max_model_len is not None:
            args["max_model_len"] = self.max_model_len
        if kv_store_spec is not None and kv_store_spec.get("tiers"):
            args["kv_transfer_config"] = kv_transfer_config(kv_store_spec)
        args.update(self.engine_kwargs)
        return args


class RoutingConfig(BaseModel):
    """Prefix-affinity routing across replicas (see deployments/routing.py)."""

    model_config = ConfigDict(extra="forbid")

    block_tokens: int = Field(32, ge=1, description="Tokens per prefix block hashed for affinity (tokens).")
    max_blocks: int = Field(128, ge=1, description="Most prefix blocks of a prompt considered (bounds hashing cost).")
    imbalance_threshold: int = Field(
        4,
        ge=0,
        description="A prefix owner keeps its requests while its queue is at most this many "
        "requests longer than the least-loaded replica's (requests).",
    )
    table_size: int = Field(200_000, ge=1, description="Prefix blocks remembered by the router (LRU entries).")
    prefix_affinity: bool = Field(True, description="Route by remembered prefixes; False: only by load (the "
                                  "least-loaded replica, ties broken at random).")


class ServeConfig(BaseModel):
    """Everything a GreenCache deployment needs; the defaults are the embedded demo setup.
    Unknown fields are errors: a misspelt key in a Serve config must not be silently ignored."""

    model_config = ConfigDict(extra="forbid")

    model: Optional[str] = Field(
        None, description="Local HF model directory; None builds and uses the demo model."
    )
    served_model_name: Optional[str] = Field(
        None, description=f"Name clients pass as `model`; default: '{DEMO_MODEL_NAME}' or the directory name."
    )
    host: str = Field("127.0.0.1", description="Address the OpenAI API binds to.")
    port: int = Field(8321, ge=1, le=65535, description="HTTP port of the OpenAI API.")
    direct_ingress: bool = Field(
        True,
        description="The ingress replica serves `port` itself (Ray Serve direct ingress), so a "
        "streamed token skips the Serve HTTP proxy's hop; False: Serve's HTTP proxy serves it.",
    )
    num_replicas: int = Field(1, ge=1, description="LLM replicas (each runs one vLLM engine).")
    max_ongoing_requests: int = Field(
        64, ge=1, description="Requests a replica accepts at once before the router looks elsewhere."
    )
    replica_num_cpus: float = Field(1.0, ge=0, description="Logical Ray CPUs reserved per replica (bookkeeping).")
    replica_num_gpus: float = Field(0.0, ge=0, description="GPUs per replica (0 on CPU machines).")
    max_replicas_per_node: Optional[int] = Field(None, ge=1, description="Most LLM replicas Serve places on one node "
                                                 "(1 spreads them over nodes); None = no limit.")
    max_model_len: Optional[int] = Field(None, ge=16, description="Context window (tokens).")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra vLLM engine args.")
    stream_interval_ms: float = Field(
        0.0, ge=0, description="Replica stream coalescing interval (ms); 0 = one message per engine step."
    )
    api_keys: list[str] = Field(
        default_factory=list,
        description="Accepted bearer tokens; empty means no authentication.",
    )
    allow_unauthenticated: bool = Field(
        False, description="Serve without API keys on an address other than loopback (otherwise refused).")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest request body accepted (bytes).")
    max_queued_requests: int = Field(256, ge=1, description="Generation requests the ingress holds at once; beyond "
                                     "that clients get 429 with Retry-After (requests).")
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    kv_store: KVStoreConfig = Field(default_factory=KVStoreConfig)
    autoscaler: AutoscalerConfig = Field(default_factory=AutoscalerConfig)
    home: Optional[Path] = Field(None, description="GreenCache home (demo model, disk tier, state), the same path on "
                                 "every node; None = each node's GREENCACHE_HOME.")

    @field_validator("host")
    @classmethod
    def _host_not_empty(cls, v: str) -> str:
        if not v:
            raise ValueError("host must not be empty; use 127.0.0.1 for local-only serving")
        return v

    @model_validator(mode="after")
    def _no_open_door(self) -> "ServeConfig":
        if self.host not in ("127.0.0.1", "localhost", "::1") and not self.api_keys and not self.allow_unauthenticated:
            raise ValueError(
                f"host {self.host!r} exposes the API beyond this machine, and no API key is set: give keys "
                "(--api-key or GREENCACHE_API_KEYS) or say --allow-unauthenticated"
            )
        return self

    @model_validator(mode="after")
    def _replica_bounds(self) -> "ServeConfig":
        a = self.autoscaler
        if a.enabled and a.max_replicas < a.min_replicas:
            raise ValueError(
                f"autoscaler.max_replicas ({a.max_replicas}) is below autoscaler.min_replicas ({a.min_replicas}); "
                "raise max_replicas or lower min_replicas"
            )
        return self

    @model_validator(mode="after")
    def _fleet_needs_the_autoscaler(self) -> "ServeConfig":
        if self.autoscaler.fleet and not self.autoscaler.enabled:
            raise ValueError("autoscaler.fleet needs the carbon autoscaler: the plan sizes each GPU type's deployment "
                             "(set autoscaler.enabled, or drop autoscaler.fleet to serve one GPU type)")
        return self

    def engine_config(self, served_model_name: str) -> EngineConfig:
        """The engine configuration for serving the model under `served_model_name`."""
        return EngineConfig(
            model=self.model,
            home=self.home,
            served_model_name=served_model_name,
            max_model_len=self.max_model_len,
            engine_kwargs=self.engine_kwargs,
            stream_interval_ms=self.stream_interval_ms,
            kv_store=self.kv_store if self.kv_store.enabled else None,
        )
