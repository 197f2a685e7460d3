"""A multi-node Ray cluster on this one machine, for the cluster tests and `bench cluster`.

`ray.cluster_utils.Cluster` runs one raylet per node. Here every node binds and advertises
127.0.0.1 (so no traffic leaves loopback), every node gets its own GreenCache home (so nothing
shared through the filesystem hides a bug: each node has its own disk tier, like real machines),
and the cluster gets its own RAY_TMPDIR. Node failure is detected in about 3 s (1 s health
checks, 3 misses) instead of Ray's default 15 s. Never `ray stop` near this: it would kill every
Ray on the host.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

# Serve's throughput settings and worker niceness must be in the environment before the
# raylets start: their workers inherit it.
HEALTH_CHECK = {"health_check_period_ms": 1000, "health_check_failure_threshold": 3}


@dataclass
class LocalNode:
    name: str
    home: Path
    node: object  # ray._private.node.Node

    @property
    def node_id(self) -> str:
        return self.node.node_id


class LocalCluster:
    """Head (0 CPUs, like cluster.yaml's) plus named worker nodes, each with its own home."""

    def __init__(self, root: Optional[Path] = None, *, head_env: Optional[dict] = None) -> None:
        from deployments.launch import SERVE_PERF_ENV, use_loopback_ray

        use_loopback_ray()
        for k, v in SERVE_PERF_ENV.items():
            os.environ.setdefault(k, v)
        # Unix socket paths are limited to ~107 bytes: keep Ray's temp dir short.
        self.root = Path(root) if root else Path(tempfile.mkdtemp(prefix="gcc", dir="/tmp"))
        self.tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))
        (self.tmp / "ray").mkdir(parents=True, exist_ok=True)
        os.environ["RAY_TMPDIR"] = str(self.tmp)
        from ray.cluster_utils import Cluster

        self.nodes: dict[str, LocalNode] = {}
        home = self._home("head")
        self.cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "node_ip_address": "127.0.0.1", "temp_dir": str(self.tmp / "ray"),
            "env_vars": {"GREENCACHE_HOME": str(home), **(head_env or {})}, "_system_config": HEALTH_CHECK,
        })
        self.head = LocalNode("head", home, self.cluster.head_node)

    def _home(self, name: str) -> Path:
        home = self.root / name / "home"
        home.mkdir(parents=True, exist_ok=True)
        return home

    @property
    def address(self) -> str:
        return self.cluster.address

    def add_node(self, name: str, num_cpus: int = 2, env: Optional[dict] = None) -> LocalNode:
        home = self._home(name)
        node = self.cluster.add_node(num_cpus=num_cpus, node_ip_address="127.0.0.1",
                                     env_vars={"GREENCACHE_HOME": str(home), **(env or {})})
        self.nodes[name] = LocalNode(name, home, node)
        return self.nodes[name]

    def kill_node(self, name: str) -> None:
        """Kill a worker node's raylet and workers at once (no graceful shutdown)."""
        self.cluster.remove_node(self.nodes.pop(name).node, allow_graceful=False)

    def connect(self) -> None:
        import ray

        ray.init(address=self.address, logging_level="WARNING", log_to_driver=False)

    def shutdown(self) -> None:
        import shutil

        import ray

        if ray.is_initialized():
            ray.shutdown()
        self.cluster.shutdown()
        shutil.rmtree(self.tmp, ignore_errors=True)


def replica_actors(app: str = "greencache", deployment: str = "LLMReplica") -> dict[str, dict]:
    """Live replicas of a Serve deployment: replica id → {"name", "node_id"} (from the GCS, so
    no dashboard is needed)."""
    from ray._private import state

    out = {}
    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    for info in state.actors(actor_state_name="ALIVE").values():
        name = info.get("Name") or ""
        if name.startswith(prefix):
            out[name[len(prefix):]] = {"name": name, "node_id": info["Address"]["NodeID"]}
    return out


def replica_nodes(app: str = "greencache", deployment: str = "LLMReplica") -> dict[str, str]:
    """Live replicas of a deployment → the id of the node each runs on."""
    return {rid: a["node_id"] for rid, a in replica_actors(app, deployment).items()}
