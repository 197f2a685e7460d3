"""Configuration of the KV store, and the vLLM setting that plugs it into an engine.

`KVStoreConfig` is what an operator sets (tiers, capacities, chunk size); `spec()` turns it
into the plain dict that travels to the engine processes inside vLLM's
`kv_connector_extra_config`, where `store.build_store` reads it. Capacities are in bytes;
the CLI's `--kv-*-gb` flags are decimal gigabytes (1 GB = 10^9 bytes), as the planner's are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator

from cache_store.local import HomeLayout

GB = 10**9


class KVStoreConfig(BaseModel):
    """The tiered prefix-KV store shared by engines (see cache_store/)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Attach the GreenCache KV connector to every engine.")
    chunk_tokens: int = Field(128, ge=16, description="Tokens per stored chunk (a multiple of vLLM's block size). A hit "
                              "covers whole chunks, so the prompt's last partial chunk is always prefilled: 128 "
                              "(vLLM's CPU block) measured 11 ms of engine time after a 4k-token hit where 256 took 17.")
    memory_capacity_bytes: int = Field(0, ge=0, description="Per-engine-process DRAM tier (bytes); 0 = no memory tier.")
    disk_path: Optional[Path] = Field(None, description="Disk (NVMe) tier directory, the same on every node; default: "
                                      "each node's GREENCACHE_KV_DISK_PATH, else <home>/kv-disk.")
    disk_capacity_bytes: int = Field(4 * GB, ge=0, description="Disk tier limit per node (bytes of chunk files); "
                                     "0 = no disk tier.")
    redis_url: Optional[str] = Field(None, description="Shared Redis tier, e.g. redis://10.0.0.5:6380/0 or rediss://...; "
                                     "'{head}' stands for the Ray head node's address; 'local' = start a private "
                                     "redis-server; None = off. Never put the password here.")
    redis_password_file: Optional[Path] = Field(None, description="File holding the Redis password, at this path on "
                                                "every node; default: each node's GREENCACHE_REDIS_PASSWORD_FILE or "
                                                "GREENCACHE_REDIS_PASSWORD.")
    redis_capacity_bytes: int = Field(1 * GB, ge=0, description="Redis tier limit enforced by the store (bytes).")
    mac_key_file: Optional[Path] = Field(None, description="File holding the secret chunks are MAC'd with, at this "
                                         "path on every node; default: each node's GREENCACHE_KV_MAC_KEY_FILE, else a "
                                         "key the deployment keeps in Ray.")
    eviction: Literal["lru", "cost-aware"] = Field("lru", description="Eviction order of the memory and disk tiers.")

    @field_validator("redis_url")
    @classmethod
    def _no_password_in_url(cls, v: Optional[str]) -> Optional[str]:
        from urllib.parse import urlsplit

        if v and v != "local" and urlsplit(v.replace("{head}", "head")).password is not None:
            raise ValueError("the Redis URL carries a password, which would show in logs and `ps`: remove it and "
                             "put it in a file (redis_password_file / GREENCACHE_REDIS_PASSWORD_FILE) or in "
                             "GREENCACHE_REDIS_PASSWORD")
        return v

    def spec(self, home: Path, *, node_disk_path: Optional[Path] = None, node_managed_disk: bool = False,
             redis_url: Optional[str] = None, password_file: Optional[str] = None,
             password_env: Optional[str] = None, mac_key_file: Optional[str] = None) -> dict[str, Any]:
        """The plain dict passed to the connector (`cache_store.store.build_store`), resolved for
        one node: its home, its disk directory, the Redis address and where the password is.
        `node_managed_disk`: the disk tier follows the capacity stored in the node's index
        (a replica sets it) instead of setting its own."""
        layout = HomeLayout(Path(home))
        tiers: list[dict[str, Any]] = []
        if self.memory_capacity_bytes:
            tiers.append({"kind": "memory", "capacity_bytes": self.memory_capacity_bytes, "eviction": self.eviction})
        if self.disk_capacity_bytes:
            tiers.append({"kind": "disk", "path": str(self.disk_path or node_disk_path or layout.kv_disk),
                          "capacity_bytes": None if node_managed_disk else self.disk_capacity_bytes,
                          "eviction": self.eviction})
        url = redis_url or self.redis_url
        if url:
            tiers.append({"kind": "redis", "url": url, "capacity_bytes": self.redis_capacity_bytes,
                          "password_file": str(self.redis_password_file or password_file or "") or None,
                          "password_env": password_env})
        return {"chunk_tokens": self.chunk_tokens, "tiers": tiers, "stats_dir": str(layout.kv_stats),
                "mac_key_file": str(self.mac_key_file or mac_key_file or "") or None}

    def disk_path_on(self, home: Path, node_disk_path: Optional[Path] = None) -> Optional[Path]:
        """The disk tier's directory on a node (None: no disk tier)."""
        if not self.disk_capacity_bytes:
            return None
        return Path(self.disk_path or node_disk_path or HomeLayout(Path(home)).kv_disk)


def kv_transfer_config(spec: dict[str, Any]) -> dict[str, Any]:
    """vLLM's `kv_transfer_config` that loads `GreenCacheConnector` with store `spec`."""
    return {
        "kv_connector": "GreenCacheConnector",
        "kv_connector_module_path": "cache_store.connector",
        "kv_role": "kv_both",
        "kv_load_failure_policy": "recompute",
        "kv_connector_extra_config": spec,
    }
