"""A replica's part in the KV store: resolve the store for its node, and apply capacity decisions.

Each LLM replica runs on some node. Before its engine starts it
- resolves the store spec for that node (`node_spec`): the node's home, its disk directory
  (`GREENCACHE_KV_DISK_PATH`), the Redis address (`{head}` → the Ray head node's address) and
  where the Redis password is on this node;
- opens the node's shared disk tier and sets the node's capacity to the autoscaler's published
  decision, or to the configured capacity if there is none (`NodeStoreControl`).
While serving, `NodeStoreControl.poll` (every second, off the event loop) applies a newly
published decision. Every replica on a node applies the same value, so the node has one
capacity; the engine processes follow it through the tier's index.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

from autoscaler import control_plane
from autoscaler.control_plane import HEAD_RESOURCE
from cache_store.config import KVStoreConfig
from deployments.settings import REDIS_PASSWORD_ENV, Settings

logger = logging.getLogger("greencache.replica")


def head_address() -> str:
    """The Ray head node's IP address, as the cluster knows it."""
    import ray

    for node in ray.nodes():
        if node.get("Alive") and HEAD_RESOURCE in node.get("Resources", {}):
            return node["NodeManagerAddress"]
    raise RuntimeError("no live Ray head node found")


def mac_key_file(kv: KVStoreConfig, node: Settings, home: Path, app: str) -> str:
    """Where this node's engines read the chunk MAC key: the configured file, this node's
    GREENCACHE_KV_MAC_KEY_FILE, or the application's key from Ray's KV written to a 0600 file
    in the node's home."""
    from cache_store.keys import read_mac_key
    from cache_store.local import HomeLayout, atomic_write_text, private_dir

    path = kv.mac_key_file or node.kv_mac_key_file
    if path is None:
        path = private_dir(HomeLayout(home).secrets) / f"kv-mac-{app}.key"
        atomic_write_text(path, control_plane.deployment_secret(app).decode() + "\n")
    read_mac_key(path)  # refuse to start with an unreadable or short key
    return str(path)


def node_spec(kv: KVStoreConfig, node: Settings, served_model_name: str, home: Path, model_dir: str,
              app: str) -> dict[str, Any]:
    """The store spec for the engine processes on this node (see `KVStoreConfig.spec`); `home`
    is the GreenCache home in force on this node, `model_dir` the model's directory here."""
    from cache_store.keys import weights_fingerprint
    from cache_store.local import HomeLayout

    url = kv.redis_url
    if url and "{head}" in url:
        url = url.replace("{head}", head_address())
    spec = kv.spec(home, node_disk_path=node.kv_disk_path, node_managed_disk=True, redis_url=url,
                   password_file=str(node.redis_password_file) if node.redis_password_file else None,
                   password_env=REDIS_PASSWORD_ENV, mac_key_file=mac_key_file(kv, node, home, app))
    # Chunk keys name the model by its served name and a fingerprint of its weights, not by its
    # path: nodes that keep the same weights at different paths share chunks, and a checkpoint
    # replaced in place never meets its predecessor's KV.
    spec["namespace_model"] = served_model_name
    spec["weights_fingerprint"] = weights_fingerprint(model_dir, HomeLayout(home).home / "cache")
    return spec


class NodeStoreControl:
    """Applies store capacity decisions to this node's shared disk tier."""

    def __init__(self, kv: KVStoreConfig, disk_path: Optional[Path], app: str) -> None:
        from cache_store.tiers import DiskTier

        self.kv = kv
        self.app = app
        self.disk = DiskTier(disk_path, None) if disk_path is not None else None
        self.reader = control_plane.PollingReader(lambda: control_plane.read_capacities(app), every_s=1.0)
        self.applied: Optional[int] = None
        published = self.reader.get()
        self._apply((published or {}).get("disk", kv.disk_capacity_bytes))

    def _apply(self, disk_bytes: int) -> None:
        if self.disk is None or disk_bytes == self.applied:
            return
        self.disk.set_capacity(int(disk_bytes))
        self.applied = int(disk_bytes)
        logger.info("node disk tier %s: capacity %d bytes", self.disk.path, disk_bytes)

    def poll(self) -> None:
        """Apply the published decision if it changed (blocking: call it off the event loop)."""
        caps = self.reader.get()
        if caps and "disk" in caps:
            self._apply(caps["disk"])

    def close(self) -> None:
        if self.disk is not None:
            self.disk.close()
