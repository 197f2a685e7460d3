"""GreenCache's environment variables: one settings model, one prefix (`GREENCACHE_`).

These are settings of a *node* (where the home directory is, how nice the engine runs) or
secrets that must not sit in a config file (API keys). They are read where they apply: the CLI
on the machine that runs it, a replica on the node it runs on. Everything else is
configuration (deployments/config.py, cache_store/config.py, autoscaler/config.py).

| variable | meaning |
|---|---|
| `GREENCACHE_HOME` | the node's GreenCache directory (demo model, KV disk tier, state); default `~/.greencache` |
| `GREENCACHE_API_KEYS` | comma-separated bearer tokens the API accepts (adds to `--api-key`) |
| `GREENCACHE_LOG_LEVEL` | the CLI's log level (default WARNING) |
| `GREENCACHE_RAY_LOGS` | 1: show Ray workers' logs on the CLI's console (default 0) |
| `GREENCACHE_ENGINE_NICE` | CPU priority of engine processes (default 0: normal) |
| `GREENCACHE_KV_DISK_PATH` | this node's disk (NVMe) tier directory (default `<home>/kv-disk`) |
| `GREENCACHE_REDIS_PASSWORD_FILE` | file holding the shared Redis tier's password on this node |
| `GREENCACHE_REDIS_PASSWORD` | the password itself (read only by the process that connects) |
| `GREENCACHE_KV_MAC_KEY_FILE` | this node's copy of the secret KV chunks are MAC'd with |
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


# The store reads the Redis password from this variable itself (never from configuration).
REDIS_PASSWORD_ENV = "GREENCACHE_REDIS_PASSWORD"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GREENCACHE_", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".greencache",
                       description="This node's GreenCache directory (demo model, KV disk tier, state).")
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list,
                                                     description="Bearer tokens the API accepts (comma-separated).")
    log_level: str = Field("WARNING", description="Log level of the `greencache` command and of "
                           "GreenCache's lines in Serve replicas' log files.")
    ray_logs: bool = Field(False, description="Show Ray workers' logs on the console of `greencache serve`.")
    engine_nice: int = Field(0, ge=-20, le=19, description="CPU niceness of engine processes (0 = normal priority).")
    kv_disk_path: Optional[Path] = Field(None, description="This node's disk (NVMe) tier directory.")
    redis_password_file: Optional[Path] = Field(None, description="File holding the Redis tier's password on this node.")
    kv_mac_key_file: Optional[Path] = Field(None, description="This node's copy of the KV chunks' MAC key.")

    @field_validator("api_keys", mode="before")
    @classmethod
    def _comma_separated(cls, v):
        if isinstance(v, str):
            return [k.strip() for k in v.split(",") if k.strip()]
        return v


def settings() -> Settings:
    """The settings from this process's environment now (not cached: tests change it)."""
    return Settings()
