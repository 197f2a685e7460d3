"""Assemble the Ray Serve application: OpenAI ingress → LLM replicas (prefix-affinity routed)."""

from __future__ import annotations

from typing import Optional

from ray import serve
from ray.serve.config import RequestRouterConfig

from greencache.config import ServeConfig, engine_env

INGRESS_NAME = "OpenAIIngress"
LLM_NAME = "LLMReplica"
APP_NAME = "greencache"


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


def build_app(config: ServeConfig, *, autoscaling_config: Optional[dict] = None):
    """Return a bound Serve application for `config` (pass it to `serve.run`)."""
    from deployments.ingress import OpenAIIngress
    from deployments.replica import LLMReplica

    engine = config.engine_config()
    max_model_len = resolve_max_model_len(engine.model, engine.max_model_len)
    engine = engine.model_copy(update={"max_model_len": max_model_len})

    replica_options = dict(
        name=LLM_NAME,
        max_ongoing_requests=config.max_ongoing_requests,
        ray_actor_options={
            "num_cpus": config.replica_num_cpus,
            "num_gpus": config.replica_num_gpus,
            "runtime_env": {"env_vars": engine_env()},
        },
        request_router_config=RequestRouterConfig(
            request_router_class="deployments.routing:PrefixAffinityRouter",
            request_router_kwargs={
                "imbalance_threshold": config.routing.imbalance_threshold,
                "table_size": config.routing.table_size,
            },
        ),
        health_check_period_s=10,
        health_check_timeout_s=60,
        graceful_shutdown_timeout_s=5,
    )
    if autoscaling_config is None and config.autoscaler.enabled:
        autoscaling_config = plan_following_autoscaling(config)
    if autoscaling_config is not None:
        replica_options["autoscaling_config"] = autoscaling_config
    else:
        replica_options["num_replicas"] = config.num_replicas
    llm = serve.deployment(LLMReplica).options(**replica_options).bind(engine.model_dump())

    ingress_cls = serve.ingress(_ingress_app())(OpenAIIngress)
    ingress = serve.deployment(ingress_cls).options(
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
    )
    return ingress


def plan_paths(config: ServeConfig) -> tuple[str, str]:
    """(state dir, plan file) the autoscaler writes and the Serve policy reads."""
    import os

    state = config.autoscaler.state_dir or os.path.join(str(config.home), "autoscaler")
    return state, config.autoscaler.plan_path or os.path.join(state, "plan.json")


def plan_following_autoscaling(config: ServeConfig) -> dict:
    """Serve autoscaling config whose policy follows the carbon plan (see autoscaling_policy.py)."""
    a = config.autoscaler
    _, plan_path = plan_paths(config)
    initial = max(a.min_replicas, min(a.max_replicas, config.num_replicas))
    return {
        "min_replicas": a.min_replicas,
        "max_replicas": a.max_replicas,
        "initial_replicas": initial,
        "upscale_delay_s": 0,
        "downscale_delay_s": 5,
        "policy": {
            "policy_function": "deployments.autoscaling_policy:PlanFollowingPolicy",
            "policy_kwargs": {"plan_path": plan_path,
                              "burst_ongoing_per_replica": float(config.max_ongoing_requests)},
        },
    }


def _ingress_app():
    from deployments.ingress import app

    return app
