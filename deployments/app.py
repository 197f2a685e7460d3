"""Assemble the Ray Serve application: OpenAI ingress → LLM replicas (prefix-affinity routed)."""

from __future__ import annotations

from typing import Optional

from ray import serve
from ray.serve.config import RequestRouterConfig

from cache_store.local import HomeLayout
from deployments.config import ServeConfig, engine_env
from deployments.demo_model import resolve_model

INGRESS_NAME = "OpenAIIngress"
LLM_NAME = "LLMReplica"
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


def _replica_options(config: ServeConfig, autoscaling_config: Optional[dict]) -> dict:
    options = dict(
        name=LLM_NAME,
        max_ongoing_requests=config.max_ongoing_requests,
        ray_actor_options={
            "num_cpus": config.replica_num_cpus,
            "num_gpus": config.replica_num_gpus,
            "runtime_env": {"env_vars": engine_env()},
        },
        request_router_config=RequestRouterConfig(
            request_router_class="deployments.routing:PrefixAffinityRouter",
            request_router_kwargs={"imbalance_threshold": config.routing.imbalance_threshold,
                                   "table_size": config.routing.table_size},
        ),
        health_check_period_s=HEALTH_CHECK_PERIOD_S,
        health_check_timeout_s=HEALTH_CHECK_TIMEOUT_S,
        graceful_shutdown_timeout_s=5,
    )
    if autoscaling_config is None and config.autoscaler.enabled:
        autoscaling_config = plan_following_autoscaling(config)
    if autoscaling_config is not None:
        options["autoscaling_config"] = autoscaling_config
    else:
        options["num_replicas"] = config.num_replicas
    return options


def build_app(config: ServeConfig, *, autoscaling_config: Optional[dict] = None):
    """Return a bound Serve application for `config` (pass it to `serve.run`)."""
    from deployments.ingress import OpenAIIngress, app
    from deployments.replica import LLMReplica

    engine = config.engine_config(*resolve_model(config))
    max_model_len = resolve_max_model_len(engine.model, engine.max_model_len)
    engine = engine.model_copy(update={"max_model_len": max_model_len})
    llm = serve.deployment(LLMReplica).options(**_replica_options(config, autoscaling_config)).bind(engine.model_dump())
    ingress_cls = serve.ingress(app)(OpenAIIngress)
    return serve.deployment(ingress_cls).options(
        name=INGRESS_NAME,
        num_replicas=1,
        max_ongoing_requests=4096,
        ray_actor_options={"num_cpus": 0.5},
    ).bind(
        llm,
        engine.served_model_name,
        engine.model,
        max_model_len,
        list(config.api_keys),
        config.max_body_bytes,
        config.routing.model_dump(),
        config.autoscaler.carbon.model_dump(),
    )


def plan_following_autoscaling(config: ServeConfig) -> dict:
    """Serve autoscaling config whose policy follows the carbon plan (see autoscaling_policy.py)."""
    a = config.autoscaler
    initial = max(a.min_replicas, min(a.max_replicas, config.num_replicas))
    return {
        "min_replicas": a.min_replicas,
        "max_replicas": a.max_replicas,
        "initial_replicas": initial,
        "upscale_delay_s": 0,
        "downscale_delay_s": 5,
        "policy": {
            "policy_function": "deployments.autoscaling_policy:PlanFollowingPolicy",
            "policy_kwargs": {"plan_path": str(HomeLayout(config.home).plan),
                              "burst_ongoing_per_replica": float(config.max_ongoing_requests)},
        },
    }
