"""Shared fixtures: the demo model, one real GreenCache deployment shared by the API tests, and
the rule for who holds this test process's Ray connection.

A Ray session with two vLLM replicas costs ~30 s here, so every API test shares one
(`greencache_server`). It runs with an API key and small limits so the error paths are cheap
to reach. This process can be connected to one Ray at a time: a fixture that needs its own
(the autoscaler's deployment, the multi-node cluster) calls `hold_ray`, which first stops
whatever held it; the shared server starts again, lazily, when a later test asks for it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from cache_store.local import free_port  # noqa: F401  (tests import it from here)
from deployments.launch import use_loopback_ray

use_loopback_ray()  # before any test module imports Ray: every test Ray stays on 127.0.0.1

API_KEY = "test-key-123"
MAX_MODEL_LEN = 1024
MAX_BODY_BYTES = 64 * 1024


@pytest.fixture(scope="session")
def greencache_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("gchome")
    os.environ["GREENCACHE_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def demo_model(greencache_home) -> Path:
    from deployments.demo_model import build_demo_model

    return build_demo_model(greencache_home / "demo-model")


@dataclass
class Server:
    url: str
    model: str
    api_key: str
    max_model_len: int
    max_body_bytes: int


def wait_until(pred, timeout_s: float, what: str, every_s: float = 1.0):
    """`pred()`'s first truthy value, polling every `every_s`; an AssertionError naming `what`
    (and the last value seen) after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what} (last: {last!r})")


_ray_holder: dict = {"name": None, "stop": None}


def hold_ray(name: str, stop) -> None:
    """Make `name` the holder of this process's Ray connection; `stop()` releases it later."""
    if _ray_holder["name"] not in (None, name):
        _ray_holder["stop"]()
    _ray_holder.update(name=name, stop=stop)


def release_ray(name: str) -> None:
    if _ray_holder["name"] == name:
        _ray_holder.update(name=None, stop=None)


_shared: dict = {"server": None}


def _stop_shared_server() -> None:
    from deployments.launch import stop_all

    _shared["server"] = None
    stop_all()


@pytest.fixture
def greencache_server(demo_model, greencache_home):
    """The shared deployment: 2 replicas, API key, small limits (started on first use)."""
    if _shared["server"] is not None and _ray_holder["name"] == "shared-server":
        return _shared["server"]
    from autoscaler.config import AutoscalerConfig
    from deployments.config import ServeConfig
    from deployments.launch import start_serve

    hold_ray("shared-server", _stop_shared_server)
    # An earlier run's autoscaler left this node's disk tier at 0 bytes; this deployment has no
    # autoscaler and must serve with its configured capacity (test_store_metrics_exposed).
    from cache_store.tiers import DiskTier

    DiskTier(greencache_home / "kv-disk", 0).close()
    config = ServeConfig(
        autoscaler=AutoscalerConfig(enabled=False),  # fixed size: routing tests need 2 replicas
        model=str(demo_model),
        served_model_name="greencache-demo",
        port=free_port(),
        num_replicas=2,
        max_model_len=MAX_MODEL_LEN,
        api_keys=[API_KEY],
        max_body_bytes=MAX_BODY_BYTES,
        home=greencache_home,
    )
    url = start_serve(config)
    _shared["server"] = Server(url, "greencache-demo", API_KEY, MAX_MODEL_LEN, MAX_BODY_BYTES)
    return _shared["server"]


@pytest.fixture(scope="session", autouse=True)
def _stop_ray_at_exit():
    yield
    if _ray_holder["stop"] is not None:
        _ray_holder["stop"]()


@pytest.fixture(scope="session")
def redis_server():
    """A private redis-server on a free loopback port for the whole session."""
    from cache_store.redis_server import RedisServer

    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server):
    """The session Redis, flushed before each test so tests don't see each other's chunks."""
    import redis

    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    redis.Redis.from_url(redis_server.url).flushall()
    return redis_server.url
