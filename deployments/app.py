"""The Ray Serve application: OpenAI ingress → LLM replicas (prefix-affinity routed), plus the
carbon autoscaler, as one application that `serve run` / `serve deploy` accept:

    import_path: deployments.app:build          args: the fields of `ServeConfig`

Placement: the LLM replicas go wherever Serve finds room (`max_replicas_per_node` spreads
them). With a mixed GPU fleet (`autoscaler.fleet`, e.g. "h100:2,a100:4"), there is one LLM
deployment per GPU type, `LLMReplica-<type>`, whose replicas ask for the custom resource
`gpu_<type>` (one unit per GPU of a replica), which the nodes holding that type declare
(cluster.yaml); each follows its type's count in the carbon plan, from zero to the type's count. The ingress and the autoscaler are pinned to the Ray head node (`node:__internal_head__`,
0 CPUs): the head holds the cluster's control plane (GCS, Serve controller), so a worker node
that dies never takes the endpoint's entry point or the autoscaler's state with it.
"""

from __future__ import annotations

import uuid
from typing import Any, Optional

from ray import serve
from ray.serve.config import RequestRouterConfig

from autoscaler.control_plane import ON_HEAD
from autoscaler.config import AutoscalerConfig
from deployments.config import ServeConfig, engine_env
from deployments.demo_model import resolve_model

INGRESS_NAME = "OpenAIIngress"
LLM_NAME = "LLMReplica"
AUTOSCALER_NAME = "CarbonAutoscaler"
APP_NAME = "greencache"
# Serve's health check of an engine replica: a loaded CPU engine can take long to answer.
HEALTH_CHECK_PERIOD_S = 10
HEALTH_CHECK_TIMEOUT_S = 60


def resolve_max_model_len(model_path: str, configured: Optional[int]) -> int:
    """The context window vLLM will use: the configured one, else the model's own."""
    if configured is not None:
        return configured
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_path)
    for attr in ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return 2048


def fleet_deployment_name(gpu_type: str) -> str:
    return f"{LLM_NAME}-{gpu_type}"


def fleet_resource(gpu_type: str) -> str:
    """The custom Ray resource a node declares per GPU of `gpu_type` it holds."""
    return f"gpu_{gpu_type}"


def _replica_options(config: ServeConfig, app: str, autoscaling_config: Optional[dict], gpu_type=None) -> dict:
    """Serve options of the LLM deployment (of one fleet type, `gpu_type` a `GPUType`)."""
    resources = {fleet_resource(gpu_type.name): float(gpu_type.carbon.gpus_per_replica)} if gpu_type else {}
    options: dict[str, Any] = dict(
        name=fleet_deployment_name(gpu_type.name) if gpu_type else LLM_NAME,
        max_ongoing_requests=config.max_ongoing_requests,
        ray_actor_options={
            "num_cpus": config.replica_num_cpus,
            "num_gpus": config.replica_num_gpus,
            "runtime_env": {"env_vars": engine_env(config.engine_kwargs)},
            **({"resources": resources} if resources else {}),
        },
        request_router_config=RequestRouterConfig(
            request_router_class="deployments.routing:PrefixAffinityRouter",
            request_router_kwargs={"imbalance_threshold": config.routing.imbalance_threshold,
                                   "table_size": config.routing.table_size,
                                   "prefix_affinity": config.routing.prefix_affinity},
        ),
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
        health_check_timeout_s=HEALTH_CHECK_TIMEOUT_S,
        graceful_shutdown_timeout_s=5,
    )
    if config.max_replicas_per_node is not None:
        options["max_replicas_per_node"] = config.max_replicas_per_node
    if autoscaling_config is None and config.autoscaler.enabled:
        autoscaling_config = plan_following_autoscaling(config, app, gpu_type)
    if autoscaling_config is not None:
        options["autoscaling_config"] = autoscaling_config
    else:
        options["num_replicas"] = config.num_replicas
    return options


_status_pool = None


def fleet_running_counts(app: str, gpu_types: list[str], timeout_s: float = 5.0) -> dict[str, int]:
    """Replicas RUNNING in each GPU type's deployment of `app` (Serve's status; raises if Serve
    does not answer within `timeout_s`, so a stalled controller never stalls the autoscaler)."""
    import concurrent.futures

    global _status_pool
    _status_pool = _status_pool or concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="serve-status")
    status = _status_pool.submit(serve.status).result(timeout=timeout_s)
    if app not in status.applications:
        raise LookupError(f"Serve runs no application {app!r}")
    deployments = status.applications[app].deployments
    out = {}
    for t in gpu_types:
        d = deployments.get(fleet_deployment_name(t))
        if d is None:  # unknown is not zero: make-before-break must not take it for "gone"
            raise LookupError(f"application {app!r} has no deployment {fleet_deployment_name(t)!r}")
        out[t] = int(d.replica_states.get("RUNNING", 0))
    return out


class AutoscalerReplica:
    """The carbon autoscaler as a Serve deployment on the head node: Serve starts it with the
    application, replaces it if it dies (it resumes from its last decision) and removes it with
    the application. Its state lives in the head node's GreenCache home."""

    def __init__(self, config: dict, app: str, deployment_id: str, home: Optional[str] = None) -> None:
        from autoscaler.actor import CarbonAutoscaler
        from deployments.logs import to_replica_log
        from deployments.settings import settings

        to_replica_log()
        types = [t.name for t in AutoscalerConfig.model_validate(config).fleet_types() if t.count > 0]
        running = (lambda: fleet_running_counts(app, types)) if types else None
        self._impl = CarbonAutoscaler(config, home or settings().home, app, deployment_id, running)

    def __getattr__(self, name: str):
        return getattr(self.__dict__["_impl"], name)

    async def status(self) -> dict:
        return await self._impl.status()

    async def step(self) -> dict:
        return await self._impl.step()

    async def set_overrides(self, **kw: Any) -> dict:
        return await self._impl.set_overrides(**kw)

    async def decide(self, observation: dict) -> dict:
        return await self._impl.decide(observation)


def _clear_old_decisions(app: str) -> None:
    """A new deployment starts from its configuration, not from decisions published for an
    earlier deployment of the same application (needs a Ray connection; none: nothing to clear)."""
    import ray

    if ray.is_initialized():
        from autoscaler import control_plane

        control_plane.clear(app)


def build_app(config: ServeConfig, *, app_name: str = APP_NAME, autoscaling_config: Optional[dict] = None):
    """Return a bound Serve application for `config` (pass it to `serve.run`)."""
    from deployments.ingress import OpenAIIngress, app
    from deployments.replica import LLMReplica

    _clear_old_decisions(app_name)
    model_dir, served_name = resolve_model(config)  # on this node, for the ingress's tokenizer
    engine = config.engine_config(served_name)
    max_model_len = resolve_max_model_len(model_dir, engine.max_model_len)
    engine = engine.model_copy(update={"max_model_len": max_model_len})
    fleet = [t for t in config.autoscaler.fleet_types() if t.count > 0] if config.autoscaler.enabled else []
    if fleet:  # one deployment per GPU type; the ingress gets {type: handle}
        llm: Any = {t.name: serve.deployment(LLMReplica).options(
            **_replica_options(config, app_name, autoscaling_config, t)).bind(engine.model_dump(), app_name)
            for t in fleet}
    else:
        llm = serve.deployment(LLMReplica).options(**_replica_options(config, app_name, autoscaling_config)).bind(
            engine.model_dump(), app_name)
    autoscaler = None
    if config.autoscaler.enabled:
        autoscaler = serve.deployment(AutoscalerReplica).options(
            name=AUTOSCALER_NAME, num_replicas=1, ray_actor_options=ON_HEAD, max_ongoing_requests=16,
            health_check_period_s=HEALTH_CHECK_PERIOD_S,
        ).bind(config.autoscaler.model_dump(), app_name, uuid.uuid4().hex, str(config.home) if config.home else None)
    ingress_cls = serve.ingress(app)(OpenAIIngress)
    return serve.deployment(ingress_cls).options(
        name=INGRESS_NAME,
        num_replicas=1,
        max_ongoing_requests=4096,
        ray_actor_options=ON_HEAD,
    ).bind(
        llm,
        autoscaler,
        engine.served_model_name,
        config.model,
        str(config.home) if config.home else None,
        max_model_len,
        list(config.api_keys),
        config.max_body_bytes,
        config.routing.model_dump(),
        config.autoscaler.carbon.model_dump(),
        config.max_queued_requests,
        app_name,
    )


def build(args: dict):
    """The application builder for `serve run deployments.app:build` and Serve config files:
    `args` are `ServeConfig` fields (unknown ones are an error)."""
    return build_app(ServeConfig.model_validate(args or {}))


def plan_following_autoscaling(config: ServeConfig, app: str = APP_NAME, gpu_type=None) -> dict:
    """Serve autoscaling config whose policy follows the carbon plan (see autoscaling_policy.py).
    For one type of a mixed fleet (`gpu_type`, a `GPUType`): from 0 to the type's count; the
    first type of the fleet starts with `num_replicas`, the others with none, until the plan says."""
    a = config.autoscaler
    lo, hi = a.min_replicas, a.max_replicas
    initial = max(lo, min(hi, config.num_replicas))
    kwargs: dict[str, Any] = {"app": app, "burst_ongoing_per_replica": float(config.max_ongoing_requests)}
    if gpu_type is not None:
        first = next(t.name for t in a.fleet_types() if t.count > 0) == gpu_type.name
        lo, hi = 0, gpu_type.count
        initial = min(hi, max(a.min_replicas, config.num_replicas)) if first else 0
        kwargs["gpu_type"] = gpu_type.name
    return {
        "min_replicas": lo,
        "max_replicas": hi,
        "initial_replicas": initial,
        "upscale_delay_s": 0,
        "downscale_delay_s": 5,
        "policy": {
            "policy_function": "deployments.autoscaling_policy:PlanFollowingPolicy",
            "policy_kwargs": kwargs,
        },
    }


def autoscaler_handle(app: str = APP_NAME):
    """A handle to the running application's autoscaler (`.status.remote().result()`, ...)."""
    return serve.get_deployment_handle(AUTOSCALER_NAME, app_name=app)
