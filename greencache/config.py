"""Configuration shared by the CLI, the Serve application and the tests.

One pydantic model per concern; every field says what it is and its unit. Validation errors
name the bad value and the fix, because operators read them at startup.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

from pydantic import BaseModel, Field, field_validator, model_validator

DEFAULT_HOME = Path(os.environ.get("GREENCACHE_HOME", Path.home() / ".greencache"))

# Environment every engine process gets on a CPU-only machine. Values already set in the
# operator's environment win (see `engine_env`).
CPU_ENGINE_ENV = {
    "VLLM_CPU_KVCACHE_SPACE": "1",
    "HF_HUB_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    "TOKENIZERS_PARALLELISM": "false",
}


def engine_env() -> dict[str, str]:
    """Environment variables for engine processes (replica actors, vLLM baseline servers)."""
    env = dict(CPU_ENGINE_ENV)
    if "VLLM_CPU_OMP_THREADS_BIND" not in os.environ:
        env["VLLM_CPU_OMP_THREADS_BIND"] = f"0-{max(0, (os.cpu_count() or 1) - 1)}"
    for k in list(env):
        if k in os.environ:
            env[k] = os.environ[k]
    return env


class KVStoreConfig(BaseModel):
    """The tiered prefix-KV store shared by engines (see cache_store/)."""

    enabled: bool = Field(True, description="Attach the GreenCache KV connector to every engine.")
    chunk_tokens: int = Field(256, ge=16, description="Tokens per stored chunk (multiple of vLLM's block size).")
    memory_capacity_bytes: int = Field(0, ge=0, description="Per-process DRAM tier (bytes); 0 = no memory tier.")
    disk_path: Optional[Path] = Field(None, description="Node-local disk (NVMe) tier directory; default <home>/kv-disk.")
    disk_capacity_bytes: int = Field(4 << 30, ge=0, description="Disk tier limit (bytes on disk); 0 = no disk tier.")
    redis_url: Optional[str] = Field(None, description="Shared Redis tier, e.g. redis://127.0.0.1:6379/0; None = off.")
    redis_capacity_bytes: int = Field(1 << 30, ge=0, description="Redis tier limit enforced by the store (bytes).")
    eviction: str = Field("lru", description="'lru' or 'cost-aware' for the memory and disk tiers.")

    @field_validator("eviction")
    @classmethod
    def _eviction(cls, v: str) -> str:
        if v not in ("lru", "cost-aware"):
            raise ValueError(f"eviction must be 'lru' or 'cost-aware', got {v!r}")
        return v

    def spec(self, home: Path) -> dict[str, Any]:
        """The plain dict passed to the connector (cache_store.store.build_store)."""
        tiers: list[dict[str, Any]] = []
        if self.memory_capacity_bytes:
            tiers.append({"kind": "memory", "capacity_bytes": self.memory_capacity_bytes, "eviction": self.eviction})
        if self.disk_capacity_bytes:
            tiers.append({"kind": "disk", "path": str(self.disk_path or home / "kv-disk"),
                          "capacity_bytes": self.disk_capacity_bytes, "eviction": self.eviction})
        if self.redis_url:
            tiers.append({"kind": "redis", "url": self.redis_url, "capacity_bytes": self.redis_capacity_bytes})
        return {"chunk_tokens": self.chunk_tokens, "tiers": tiers,
                "control_path": str(home / "kv-control.json"), "stats_dir": str(home / "kv-stats")}


def kv_transfer_config(spec: dict[str, Any]) -> dict[str, Any]:
    """vLLM kv_transfer_config that loads GreenCacheConnector with `spec`."""
    return {
        "kv_connector": "GreenCacheConnector",
        "kv_connector_module_path": "cache_store.connector",
        "kv_role": "kv_both",
        "kv_load_failure_policy": "recompute",
        "kv_connector_extra_config": spec,
    }


class EngineConfig(BaseModel):
    """What a replica needs to start its vLLM engine."""

    model: str = Field(description="Path to a local Hugging Face model directory.")
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
    kv_store_spec: Optional[dict[str, Any]] = Field(
        None, description="Store spec for GreenCacheConnector; None = no shared KV store."
    )

    def engine_args(self) -> dict[str, Any]:
        args: dict[str, Any] = dict(
            model=self.model,
            served_model_name=self.served_model_name,
            enforce_eager=self.enforce_eager,
            disable_log_stats=False,
        )
        if self.max_model_len is not None:
            args["max_model_len"] = self.max_model_len
        if self.kv_store_spec is not None and self.kv_store_spec.get("tiers"):
            args["kv_transfer_config"] = kv_transfer_config(self.kv_store_spec)
        args.update(self.engine_kwargs)
        return args


class RoutingConfig(BaseModel):
    """Prefix-affinity routing across replicas (see deployments/routing.py)."""

    block_tokens: int = Field(
        32, ge=1, description="Tokens per prefix block hashed for affinity (tokens)."
    )
    max_blocks: int = Field(
        128, ge=1, description="Most prefix blocks of a prompt considered (bounds hashing cost)."
    )
    imbalance_threshold: int = Field(
        4,
        ge=0,
        description="A prefix owner keeps its requests while its queue is at most this many "
        "requests longer than the least-loaded replica's (requests).",
    )
    table_size: int = Field(
        200_000, ge=1, description="Prefix blocks remembered by the router (LRU entries)."
    )


class ServeConfig(BaseModel):
    """Everything `greencache serve` needs; the defaults are the embedded demo setup."""

    model: Optional[str] = Field(
        None, description="Local HF model directory; None builds and uses the demo model."
    )
    served_model_name: Optional[str] = Field(
        None, description="Name clients pass as `model`; default: 'greencache-demo' or the directory name."
    )
    host: str = Field("127.0.0.1", description="Address the OpenAI API binds to.")
    port: int = Field(8321, ge=1, le=65535, description="HTTP port of the OpenAI API.")
    direct_ingress: bool = Field(
        True,
        description="The ingress replica serves `port` itself (Ray Serve direct ingress), so a "
        "streamed token skips the Serve HTTP proxy's hop; False: Serve's HTTP proxy serves it.",
    )
    num_replicas: int = Field(1, ge=1, description="LLM replicas (each runs one vLLM engine).")
    max_replicas: Optional[int] = Field(
        None, ge=1, description="Upper bound for autoscaling; default: num_replicas."
    )
    max_ongoing_requests: int = Field(
        64, ge=1, description="Requests a replica accepts at once before the router looks elsewhere."
    )
    replica_num_cpus: float = Field(
        1.0, ge=0, description="Logical Ray CPUs reserved per replica (bookkeeping)."
    )
    replica_num_gpus: float = Field(0.0, ge=0, description="GPUs per replica (0 on CPU machines).")
    max_model_len: Optional[int] = Field(None, ge=16, description="Context window (tokens).")
    engine_kwargs: dict[str, Any] = Field(default_factory=dict, description="Extra vLLM engine args.")
    stream_interval_ms: float = Field(
        0.0, ge=0, description="Replica stream coalescing interval (ms); 0 = one message per engine step."
    )
    api_keys: list[str] = Field(
        default_factory=list,
        description="Accepted bearer tokens; empty means no authentication.",
    )
    max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Largest request body accepted (bytes)."
    )
    routing: RoutingConfig = Field(default_factory=RoutingConfig)
    kv_store: KVStoreConfig = Field(default_factory=KVStoreConfig)
    autoscaler: "AutoscalerConfig" = Field(default_factory=lambda: _autoscaler_config())
    home: Path = Field(DEFAULT_HOME, description="Where the demo model and state live.")

    @field_validator("host")
    @classmethod
    def _loopback_warning(cls, v: str) -> str:
        if not v:
            raise ValueError("host must not be empty; use 127.0.0.1 for local-only serving")
        return v

    @model_validator(mode="after")
    def _replica_bounds(self) -> "ServeConfig":
        if self.max_replicas is not None and self.max_replicas < self.num_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) is below num_replicas ({self.num_replicas}); "
                "raise max_replicas or lower num_replicas"
            )
        return self

    def resolved_model(self) -> tuple[str, str]:
        """(model directory, served name), building the demo model if none was given."""
        if self.model is None:
            from greencache.demo_model import build_demo_model

            path = build_demo_model(self.home / "demo-model")
            return str(path), self.served_model_name or "greencache-demo"
        path = Path(self.model).expanduser()
        if not (path / "config.json").exists():
            raise ValueError(
                f"model directory {path} has no config.json; pass a local Hugging Face model "
                "directory, or omit --model to use the demo model"
            )
        return str(path), self.served_model_name or path.name

    def engine_config(self) -> EngineConfig:
        model, name = self.resolved_model()
        return EngineConfig(
            model=model,
            served_model_name=name,
            max_model_len=self.max_model_len,
            engine_kwargs=self.engine_kwargs,
            stream_interval_ms=self.stream_interval_ms,
            kv_store_spec=self.kv_store.spec(Path(self.home)) if self.kv_store.enabled else None,
        )


def _autoscaler_config():
    from autoscaler.actor import AutoscalerConfig

    return AutoscalerConfig()


from autoscaler.actor import AutoscalerConfig  # noqa: E402  (resolves the forward reference)

ServeConfig.model_rebuild()
