"""How the autoscaler's decisions reach the serving side on every node: Ray's internal KV.

The autoscaler publishes two small JSON values per Serve application, in the GCS (which every
node's processes reach, and which lives as long as the cluster):

- `<app>/plan`: `{"target_replicas": N, "updated": t}`, read by the Serve autoscaling policy
  (`deployments/autoscaling_policy.py`) in the Serve controller; with a mixed GPU fleet also
  `"counts": {gpu_type: n}`, each type's LLM deployment following its own count (a step towards
  the plan, make-before-break), and `"planned": {gpu_type: n}`, the plan itself: the ingress
  sends new requests only to planned types that run a replica, so a type being replaced drains;
- `<app>/store_capacity`: `{"capacity_bytes": {"disk": N}, "updated": t}`, read by every LLM
  replica, which applies it to its node's shared disk tier (`deployments/replica.py`).

No file crosses nodes. `clear(app)` runs when an application is deployed, so a decision from an
earlier deployment never overrides the new configuration. Readers validate what they read
(`cache_store.control.parse_capacities`) and keep their last good value on anything malformed or
on a GCS call that fails or times out: a broken control plane freezes decisions, it never breaks
serving.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Optional

from cache_store.control import parse_capacities

logger = logging.getLogger("greencache.control")

KV_NAMESPACE = "greencache"
# Every Ray head node carries this resource; a tiny demand for it pins an actor to the head.
HEAD_RESOURCE = "node:__internal_head__"
ON_HEAD = {"num_cpus": 0, "resources": {HEAD_RESOURCE: 0.001}}
GCS_TIMEOUT_S = 2.0  # a control-plane read or write never blocks longer than this


def _key(app: str, what: str) -> bytes:
    return f"{app}/{what}".encode()


def _gcs():
    from ray.experimental import internal_kv

    if not internal_kv._internal_kv_initialized():
        raise RuntimeError("not connected to Ray")
    return internal_kv.internal_kv_get_gcs_client()


def _put(app: str, what: str, value: dict) -> None:
    _gcs().internal_kv_put(_key(app, what), json.dumps(value).encode(), True, KV_NAMESPACE.encode(),
                           timeout=GCS_TIMEOUT_S)


def _get(app: str, what: str) -> Optional[bytes]:
    return _gcs().internal_kv_get(_key(app, what), KV_NAMESPACE.encode(), timeout=GCS_TIMEOUT_S)


def publish_plan(app: str, target_replicas: int, counts: Optional[dict[str, int]] = None,
                 planned: Optional[dict[str, int]] = None) -> None:
    value: dict = {"target_replicas": int(target_replicas), "updated": time.time()}
    if counts is not None:
        value["counts"] = {str(k): int(v) for k, v in counts.items()}
        value["planned"] = {str(k): int(v) for k, v in (planned if planned is not None else counts).items()}
    _put(app, "plan", value)


def publish_capacities(app: str, capacity_bytes: dict[str, int]) -> None:
    _put(app, "store_capacity", {"capacity_bytes": {k: int(v) for k, v in capacity_bytes.items()},
                                 "updated": time.time()})


def _count(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise ValueError(f"plan {what} must be a non-negative integer, got {v!r}")
    return v


def read_plan(app: str, gpu_type: Optional[str] = None) -> Optional[int]:
    """The published replica target (of `gpu_type`'s deployment, with a mixed fleet); None if
    there is none. Raises on a malformed value or a failed call (callers keep their last good
    value)."""
    if gpu_type is not None:
        counts = read_plan_counts(app)
        return None if counts is None else counts.get(gpu_type, 0)
    raw = _get(app, "plan")
    if raw is None:
        return None
    plan = json.loads(raw)
    return _count(plan.get("target_replicas") if isinstance(plan, dict) else None, "target_replicas")


def read_plan_counts(app: str, which: str = "counts") -> Optional[dict[str, int]]:
    """The published per-GPU-type targets (`which="planned"`: the plan they step towards); None
    if there is no plan or it has no counts (one type). Raises on a malformed value or a failed
    call."""
    raw = _get(app, "plan")
    if raw is None:
        return None
    plan = json.loads(raw)
    counts = plan.get(which, plan.get("counts")) if isinstance(plan, dict) else None
    if counts is None:
        return None
    if not isinstance(counts, dict):
        raise ValueError(f"plan counts must be an object of GPU type to replicas, got {counts!r}")
    return {str(k): _count(v, f"count of {k}") for k, v in counts.items()}


def read_capacities(app: str) -> Optional[dict[str, int]]:
    """The published store capacities (tier → bytes); None if there are none. Raises on a
    malformed value or a failed call."""
    raw = _get(app, "store_capacity")
    return None if raw is None else parse_capacities(raw.decode())


def deployment_secret(app: str) -> bytes:
    """The application's KV MAC key: made by whichever replica asks first (put-if-absent in the
    GCS), the same for every replica on every node, gone with the cluster."""
    import secrets

    _gcs().internal_kv_put(_key(app, "kv_mac_key"), secrets.token_hex(32).encode(), False, KV_NAMESPACE.encode(),
                           timeout=GCS_TIMEOUT_S)
    value = _get(app, "kv_mac_key")
    if not value:
        raise RuntimeError("the KV MAC key could not be read back from Ray's KV")
    return value


def clear(app: str) -> None:
    """Forget every decision published for `app` (a new deployment starts from its config)."""
    gcs = _gcs()
    for what in ("plan", "store_capacity"):
        gcs.internal_kv_del(_key(app, what), False, KV_NAMESPACE.encode(), timeout=GCS_TIMEOUT_S)


class PollingReader:
    """Rate-limited reads of one control value that keep the last good one through failures,
    warning once per episode of trouble."""

    def __init__(self, read, every_s: float = 1.0) -> None:
        self.read = read
        self.every_s = every_s
        self.value = None
        self._t = 0.0
        self._failing = False

    def get(self):
        now = time.monotonic()
        if now - self._t < self.every_s:
            return self.value
        self._t = now
        try:
            v = self.read()
        except Exception as e:  # GCS down or slow, malformed value
            if not self._failing:
                logger.warning("control value unreadable (%s: %s); keeping the last good one", type(e).__name__, e)
            self._failing = True
            return self.value
        self._failing = False
        if v is not None:
            self.value = v
        return self.value
