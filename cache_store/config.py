"""Configuration of the KV store, and the vLLM setting that plugs it into an engine.

`KVStoreConfig` is what an operator sets (tiers, capacities, chunk size); `spec()` turns it
into the plain dict that travels to the engine processes inside vLLM's
`kv_connector_extra_config`, where `store.build_store` reads it. Capacities are in bytes;
the CLI's `--kv-*-gb` flags are decimal gigabytes (1 GB = 10^9 bytes), as the planner's are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, Field

from cache_store.local import HomeLayout

GB = 10**9


class KVStoreConfig(BaseModel):
    """The tiered prefix-KV store shared by engines (see cache_store/)."""

    enabled: bool = Field(True, description="Attach the GreenCache KV connector to every engine.")
    chunk_tokens: int = Field(256, ge=16, description="Tokens per stored chunk (a multiple of vLLM's block size).")
    memory_capacity_bytes: int = Field(0, ge=0, description="Per-engine-process DRAM tier (bytes); 0 = no memory tier.")
    disk_path: Optional[Path] = Field(None, description="Node-local disk (NVMe) tier directory; default <home>/kv-disk.")
    disk_capacity_bytes: int = Field(4 * GB, ge=0, description="Disk tier limit (bytes on disk); 0 = no disk tier.")
    redis_url: Optional[str] = Field(None, description="Shared Redis tier, e.g. redis://127.0.0.1:6379/0; None = off; "
                                     "'local' = start a private redis-server.")
    redis_capacity_bytes: int = Field(1 * GB, ge=0, description="Redis tier limit enforced by the store (bytes).")
    eviction: Literal["lru", "cost-aware"] = Field("lru", description="Eviction order of the memory and disk tiers.")

    def spec(self, home: Path) -> dict[str, Any]:
        """The plain dict passed to the connector (`cache_store.store.build_store`)."""
        layout = HomeLayout(Path(home))
        tiers: list[dict[str, Any]] = []
        if self.memory_capacity_bytes:
            tiers.append({"kind": "memory", "capacity_bytes": self.memory_capacity_bytes, "eviction": self.eviction})
        if self.disk_capacity_bytes:
            tiers.append({"kind": "disk", "path": str(self.disk_path or layout.kv_disk),
                          "capacity_bytes": self.disk_capacity_bytes, "eviction": self.eviction})
        if self.redis_url:
            tiers.append({"kind": "redis", "url": self.redis_url, "capacity_bytes": self.redis_capacity_bytes})
        return {"chunk_tokens": self.chunk_tokens, "tiers": tiers,
                "control_path": str(layout.kv_control), "stats_dir": str(layout.kv_stats)}


def kv_transfer_config(spec: dict[str, Any]) -> dict[str, Any]:
    """vLLM's `kv_transfer_config` that loads `GreenCacheConnector` with store `spec`."""
    return {
        "kv_connector": "GreenCacheConnector",
        "kv_connector_module_path": "cache_store.connector",
        "kv_role": "kv_both",
        "kv_load_failure_policy": "recompute",
        "kv_connector_extra_config": spec,
    }
