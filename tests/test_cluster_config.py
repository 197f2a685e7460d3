"""The files an operator deploys with: every cluster YAML passes the checks `ray up` makes before
it calls a cloud, and names only files and commands the repository has; the Serve config passes
Serve's schema with no key Serve (or GreenCache) would silently ignore."""

from __future__ import annotations

import copy
import re
import subprocess
from pathlib import Path
from typing import Any, get_args, get_origin

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER_YAMLS = sorted(p.name for p in REPO.glob("cluster*.yaml"))


def _prepared(cfg: dict) -> dict:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cfg))
    validate_config(prepared)
    return prepared


def test_there_is_a_cluster_yaml_per_cloud():
    assert {"cluster.yaml", "cluster-gcp.yaml"} <= set(CLUSTER_YAMLS)


@pytest.mark.parametrize("name", CLUSTER_YAMLS)
def test_cluster_yaml_passes_ray_ups_checks(name):
    cfg = yaml.safe_load((REPO / name).read_text())
    prepared = _prepared(cfg)
    types = prepared["available_node_types"]
    head = types[prepared["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # the head runs no replica
    gpu_types = {t: v for t, v in types.items() if v.get("resources", {}).get("GPU")}
    assert sorted(v["resources"]["GPU"] for v in gpu_types.values()) == [1, 8, 8]
    # a mixed fleet's types: nodes declare one `gpu_<type>` per GPU, for every type the
    # catalogue has, which is what each type's LLM deployment asks for
    from autoscaler.gpu_types import load_catalogue
    from deployments.app import fleet_resource

    for gpu in load_catalogue():
        holders = [v for v in gpu_types.values() if fleet_resource(gpu) in v["resources"]]
        assert len(holders) == 1, gpu
        assert holders[0]["resources"][fleet_resource(gpu)] == holders[0]["resources"]["GPU"]
    for t, v in types.items():  # Ray checks sum(min) <= max_workers, not min <= max per type
        assert v.get("min_workers", 0) <= v.get("max_workers", 0) or t == prepared["head_node_type"], t
    assert prepared["docker"]["image"].startswith("rayproject/ray:2.60")


@pytest.mark.parametrize("mutation, match", [
    (lambda c: c.update(head_node_typo="x"), "head_node_typo"),
    (lambda c: c.update(head_node_type="no-such-type"), "head_node_type"),
    (lambda c: c.update(max_workers=0), "max_workers"),
    (lambda c: c["available_node_types"]["gpu_1x"].update(mni_workers=1), "mni_workers"),
])
def test_the_checks_do_catch_mistakes(mutation, match):
    cfg = yaml.safe_load((REPO / "cluster.yaml").read_text())
    mutation(cfg)
    with pytest.raises(Exception, match=match):
        _prepared(cfg)


@pytest.mark.parametrize("name", CLUSTER_YAMLS)
def test_cluster_yaml_names_only_what_the_repo_has(name, tmp_path):
    cfg = yaml.safe_load((REPO / name).read_text())
    # secrets come from the repo's script, into .secrets/ (never committed)
    secrets = tmp_path / ".secrets"
    subprocess.run(["bash", str(REPO / "scripts/cluster/make_secrets.sh"), str(secrets)], check=True,
                   capture_output=True)
    for remote, local in cfg["file_mounts"].items():
        if local.startswith(".secrets/"):
            path = secrets / local[len(".secrets/"):]
            assert path.exists() and path.stat().st_mode & 0o077 == 0, local  # made, and owner-only
        else:
            assert (REPO / local).exists(), local
    commands = "\n".join(cfg.get(k) and "\n".join(cfg[k]) or "" for k in (
        "initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
        "head_start_ray_commands", "worker_start_ray_commands"))
    repo_mount = next(r for r, local in cfg["file_mounts"].items() if local == ".")
    for path in re.findall(re.escape(repo_mount) + r"/([\w./-]+)", commands):
        assert (REPO / path).exists(), path
    for secret in re.findall(r"(~/\.greencache-secrets/\w+|\$HOME/\.greencache-secrets/\w+)", commands):
        assert secret.replace("$HOME", "~") in cfg["file_mounts"], secret
    extras = re.findall(r'"\.\[(\w+)\]"', commands)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert extras and all(re.search(rf"^{e} = ", pyproject, re.M) for e in extras), extras
    for var in ("RAY_worker_niceness=0", "RAY_AUTH_MODE=token", "RAY_AUTH_TOKEN_PATH="):
        for key in ("head_start_ray_commands", "worker_start_ray_commands"):
            assert var in "\n".join(cfg[key]), (key, var)
    assert "GREENCACHE_KV_DISK_PATH=/mnt/nvme" in "\n".join(cfg["worker_start_ray_commands"])
    assert "start_redis.sh" in "\n".join(cfg["head_start_ray_commands"])


def test_start_redis_script_keeps_the_password_off_the_command_line(tmp_path):
    from cache_store.local import free_port

    pw = tmp_path / "pw"
    pw.write_text("s3cret-for-test\n")
    port = free_port()
    script = REPO / "scripts/cluster/start_redis.sh"
    subprocess.run(["bash", str(script), str(pw), str(port), "64mb"], check=True, timeout=30)
    try:
        import redis

        with pytest.raises(redis.AuthenticationError):
            redis.Redis(port=port).ping()
        assert redis.Redis(port=port, password="s3cret-for-test").ping()
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        assert "s3cret-for-test" not in ps
        subprocess.run(["bash", str(script), str(pw), str(port)], check=True, timeout=30)  # idempotent
    finally:
        subprocess.run(["redis-cli", "-p", str(port), "--no-auth-warning", "-a", "s3cret-for-test", "shutdown",
                        "nosave"], capture_output=True)


# ---- Serve config ----------------------------------------------------------------------------
def _unknown_keys(model_cls, data: Any, path: str = "") -> list[str]:
    """Keys in `data` that `model_cls` (a pydantic v2 model) has no field for, recursively."""
    if not isinstance(data, dict):
        return []
    fields = model_cls.model_fields
    names = {n: f for n, f in fields.items()} | {f.alias: f for f in fields.values() if f.alias}
    out = []
    for key, value in data.items():
        if key not in names:
            out.append(f"{path}{key}")
            continue
        for sub in _models_in(names[key].annotation):
            if isinstance(value, list):
                for i, item in enumerate(value):
                    out += _unknown_keys(sub, item, f"{path}{key}[{i}].")
            else:
                out += _unknown_keys(sub, value, f"{path}{key}.")
    return out


def _models_in(annotation) -> list:
    from pydantic import BaseModel

    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in get_args(annotation) for m in _models_in(a)] if get_origin(annotation) else []


SERVE_CONFIGS = sorted(p.name for p in REPO.glob("serve_config*.yaml"))


def _serve_config(name: str = "serve_config.yaml") -> dict:
    return yaml.safe_load((REPO / name).read_text())


def test_there_is_a_serve_config_for_one_type_and_for_a_fleet():
    assert {"serve_config.yaml", "serve_config_fleet.yaml"} <= set(SERVE_CONFIGS)


@pytest.mark.parametrize("name", SERVE_CONFIGS)
def test_serve_config_passes_serves_schema_with_no_ignored_key(name):
    from ray.serve.schema import ServeDeploySchema

    data = _serve_config(name)
    schema = ServeDeploySchema.model_validate(data)
    assert _unknown_keys(ServeDeploySchema, data) == []
    (app,) = schema.applications
    assert app.import_path == "deployments.app:build"
    typo = copy.deepcopy(data)
    typo["applications"][0]["route_prefixx"] = "/"  # Serve accepts this silently...
    ServeDeploySchema.model_validate(typo)
    assert _unknown_keys(ServeDeploySchema, typo) == ["applications[0].route_prefixx"]  # ...we don't


def test_serve_config_args_build_the_application(greencache_home):
    from ray.serve.schema import ServeDeploySchema

    from deployments.app import build
    from deployments.config import ServeConfig

    args = ServeDeploySchema.model_validate(_serve_config()).applications[0].args
    cfg = ServeConfig.model_validate(args)
    assert cfg.kv_store.redis_url == "redis://{head}:6380/0" and cfg.max_replicas_per_node == 1
    fleet_args = ServeDeploySchema.model_validate(_serve_config("serve_config_fleet.yaml")).applications[0].args
    fleet = ServeConfig.model_validate(fleet_args).autoscaler.fleet_types()
    assert [t.name for t in fleet] == ["a100", "h100"] and fleet[0].past_lifetime
    # every type the fleet names is a resource some node of the cluster declares
    from deployments.app import fleet_resource

    declared = {r for v in yaml.safe_load((REPO / "cluster.yaml").read_text())["available_node_types"].values()
                for r in v.get("resources", {})}
    assert {fleet_resource(t.name) for t in fleet} <= declared
    assert type(build(fleet_args)).__name__ == "Application"
    app = build(args)
    assert type(app).__name__ == "Application"
    with pytest.raises(Exception, match="kv_stor"):
        build({**args, "kv_stor": {}})  # a misspelt key is an error, not a default
    with pytest.raises(Exception, match="disk_capacity_byte"):
        build({**args, "kv_store": {"disk_capacity_byte": 1}})
