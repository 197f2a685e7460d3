"""Start and stop a local GreenCache deployment (Ray on loopback + Serve app + autoscaler).

Used by `greencache serve`, the tests and the benchmarks, so all three run the same code. It
lives in the Serve app's package (not the CLI's) because benchmarks start deployments too, and
they sit below the CLI.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Optional

from cache_store.local import free_port, loopback_host
from deployments.config import ServeConfig
from deployments.settings import settings

logger = logging.getLogger("deployments.launch")

# Ray Serve's throughput settings (RAY_SERVE_THROUGHPUT_OPTIMIZED's list; its direct-ingress
# mode is set per deployment by `_ingress_env`). Token streaming makes many small messages per
# request; these cut thread hops and per-request logging on that path. They must be in the
# environment before Ray starts so every Serve process inherits them.
SERVE_PERF_ENV = {
    # Ray starts worker processes at nice 15. The engine restores nice 0 for itself, but the
    # Serve HTTP proxy and the ingress forward every streamed token: at nice 15 they get ~4% of
    # a core next to a busy CPU engine (CFS weights 36 vs 1024), which cost +45 ms p50 TTFT at
    # concurrency 1 on 2 cores (benchmarks/results/README.md). Ray Jobs do the same for drivers.
    "RAY_worker_niceness": "0",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0",
    # Proxy -> ingress over gRPC. Handles created in a process that imported Serve before this
    # was set (the driver) stay on Ray object references; the ingress asks for gRPC itself.
    "RAY_SERVE_USE_GRPC_BY_DEFAULT": "1",
    "RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE": "1000",
    "RAY_SERVE_LOG_TO_STDERR": "0",
    "RAY_SERVE_FREEZE_GC_ON_STARTUP": "1",
}


def use_loopback_ray() -> None:
    """Make this process, and every Ray process it starts, keep Ray on 127.0.0.1.

    Ray reads `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER` when it is imported: 0 makes it a one-machine
    Ray that advertises and dials 127.0.0.1 instead of the machine's interface address. The
    variable is inherited by the daemons and workers started afterwards; if this process
    imported Ray already, its constant is corrected too. Only for Rays GreenCache starts here:
    a real cluster needs Ray's default.
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import sys

    if "ray" in sys.modules:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False


# Variables start_local_ray set for the Ray it starts, with their values before: stop_all puts
# them back, so processes this one starts later do not inherit Serve settings meant for replicas
# (a driver that inherits RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0 cannot call a handle from sync code).
_env_before: dict[str, Optional[str]] = {}


def _restore_env() -> None:
    for k, v in _env_before.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    _env_before.clear()


def start_local_ray(num_cpus: Optional[int] = None, env: Optional[dict[str, str]] = None,
                    resources: Optional[dict[str, float]] = None) -> bool:
    """Start a single-node Ray bound to 127.0.0.1; False (and nothing done) if Ray is already up.

    `env` is set (overriding) before Ray starts, so every Ray process inherits it; `resources`
    are custom resources the node declares (a mixed fleet's `gpu_<type>` stand-ins).

    Ray's CPU count is bookkeeping: we declare at least 4 logical CPUs so an engine replica,
    the ingress and the autoscaler all get scheduled on a 2-core machine.
    """
    use_loopback_ray()
    import ray

    if ray.is_initialized():
        return False
    wanted = {**{k: v for k, v in SERVE_PERF_ENV.items() if k not in os.environ}, **(env or {})}
    for k, v in wanted.items():
        _env_before.setdefault(k, os.environ.get(k))
        os.environ[k] = v
    logical = num_cpus or max(4, (os.cpu_count() or 1) * 2)
    ray.init(
        address="local",
        num_cpus=logical,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        resources=resources or None,
        configure_logging=True,
        logging_level=logging.WARNING,
        log_to_driver=settings().ray_logs,
    )
    return True


def _ingress_env(config: ServeConfig) -> tuple[dict[str, str], int]:
    """(Serve's ingress settings, the port the Serve HTTP proxy binds).

    Direct ingress: the ingress replica runs its own HTTP server and clients reach it without
    the Serve proxy, which otherwise relays every streamed token through one more process and
    RPC. Measured at 8 concurrent streams on 2 cores: the proxy and the ingress used 6.0% and
    8.5% of a core, the ingress alone 4.8% (benchmarks/results/README.md).
    Serve gives a direct-ingress replica the lowest free port of [MIN, MAX): a one-port range
    puts our single ingress replica on the public port. Serve still starts its proxy on the
    head node; it gets a free port and serves the same app there.
    """
    if not config.direct_ingress:
        return {"RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}, config.port
    return {
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(config.port),
        "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(config.port + 1),
        # No external load balancer has to see a draining replica go: stop at once, and let
        # a restarted ingress replica take the port straight back.
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0",
        "RAY_SERVE_PORT_QUARANTINE_S": "0",
    }, free_port(config.host)


def _wait_http(url: str, timeout_s: float = 60.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url + "/health", timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} did not answer /health within {timeout_s:.0f}s")
        time.sleep(0.2)


_owned_redis = None
_attached_app: Optional[str] = None  # the app this process deployed onto a cluster it did not start
# Redis needs memory beyond the stored bytes (keys, LRU index, allocator overhead).
REDIS_MAXMEMORY_OVERHEAD = 1.25
REDIS_MAXMEMORY_BASE_BYTES = 64 << 20


def _maybe_start_owned_redis(config: ServeConfig) -> ServeConfig:
    """`kv_store.redis_url == "local"`: start our own redis-server on a free loopback port with a
    random password (in a 0600 file under the home's `secrets/`, never on a command line),
    `maxmemory` (capacity + 25% for bookkeeping) and allkeys-lru as a backstop to the store's
    own limit; it is stopped with the deployment."""
    global _owned_redis
    if config.kv_store.redis_url != "local":
        return config
    from cache_store.local import HomeLayout
    from cache_store.redis_server import RedisServer

    cap = config.kv_store.redis_capacity_bytes
    _owned_redis = RedisServer(maxmemory_bytes=int(cap * REDIS_MAXMEMORY_OVERHEAD) + REDIS_MAXMEMORY_BASE_BYTES,
                               password=True, secrets_dir=HomeLayout(config.home or settings().home).secrets)
    kv = config.kv_store.model_copy(update={"redis_url": _owned_redis.url,
                                            "redis_password_file": _owned_redis.password_file})
    logger.info("started redis-server for the KV store at %s", _owned_redis.url)
    return config.model_copy(update={"kv_store": kv})


def _local_mac_key(config: ServeConfig) -> ServeConfig:
    """On one machine the chunk MAC key is a file in the home, made once and kept: a restarted
    local deployment still reads the chunks it saved before."""
    if config.kv_store.mac_key_file is not None or settings().kv_mac_key_file is not None:
        return config
    from cache_store.keys import ensure_mac_key
    from cache_store.local import HomeLayout

    path = ensure_mac_key(HomeLayout(config.home or settings().home).secrets / "kv-mac.key")
    return config.model_copy(update={"kv_store": config.kv_store.model_copy(update={"mac_key_file": path})})


def local_fleet_resources(config: ServeConfig) -> dict[str, float]:
    """With a mixed fleet on a local Ray: this machine declares every type's resource
    (`gpu_<type>`, one unit per GPU of the fleet), standing in for the nodes that hold them, so
    the demo and the tests can run each type's deployment here. On a cluster the nodes declare
    their own (cluster.yaml)."""
    from deployments.app import fleet_resource

    if not (config.autoscaler.enabled and config.autoscaler.fleet):
        return {}
    resources = {fleet_resource(t.name): float(t.count * t.carbon.gpus_per_replica)
                 for t in config.autoscaler.fleet_types() if t.count > 0}
    logger.info("local Ray stands in for the fleet's GPUs: %s", resources)
    return resources


def _connect(config: ServeConfig, address: Optional[str]) -> int:
    """Start a local Ray (address None) or connect to a running cluster; returns the port
    Serve's HTTP proxy binds."""
    if address is None:
        env, proxy_port = _ingress_env(config)
        if not start_local_ray(env=env, resources=local_fleet_resources(config)) and config.direct_ingress:
            raise RuntimeError(
                "direct ingress needs GreenCache to start Ray (Serve reads its settings when Ray "
                "starts); call stop_all() first, or set direct_ingress=False"
            )
        return proxy_port
    if config.direct_ingress:
        raise ValueError("direct ingress is configured when Ray starts; on a running cluster use "
                         "direct_ingress=False (--no-direct-ingress): Serve's proxy on the head serves the port")
    import ray

    if not ray.is_initialized():
        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=settings().ray_logs)
    return config.port


def deploy(config: ServeConfig, *, address: Optional[str] = None, app_name: Optional[str] = None,
           autoscaling_config: Optional[dict] = None) -> str:
    """Deploy the GreenCache app and return its base URL once it answers.

    `address` None: on a Ray this process starts on loopback (the local demo, tests). Otherwise
    on the running cluster at `address` ("auto" or "HOST:PORT"), through Serve's proxy on the
    head node, which must be this machine for the readiness check."""
    from ray import serve

    from deployments.app import APP_NAME, build_app

    global _attached_app
    app_name = app_name or APP_NAME
    if address is None:
        config = _maybe_start_owned_redis(_local_mac_key(config))
    elif config.kv_store.redis_url == "local":
        raise ValueError("redis_url 'local' starts a Redis beside a local Ray; on a cluster give the shared "
                         "Redis's URL (e.g. redis://{head}:6380/0)")
    proxy_port = _connect(config, address)
    # Serve's own INFO lines name the proxy's port ("ready at http://...:<proxy port>/"), which
    # with direct ingress is not where clients go; the caller prints the real endpoint.
    serve_log = logging.getLogger("ray.serve")
    level = serve_log.level
    serve_log.setLevel(max(level, logging.WARNING))
    try:
        # One HTTP proxy, on the head, where the ingress runs (deployments/app.py); a proxy on
        # every node would only add a hop, and a worker node's loss would cut its connections.
        serve.start(http_options={"host": config.host, "port": proxy_port}, proxy_location="HeadOnly")
        t0 = time.monotonic()
        serve.run(build_app(config, app_name=app_name, autoscaling_config=autoscaling_config),
                  name=app_name, route_prefix="/", blocking=False)
    finally:
        serve_log.setLevel(level)
    port = config.port
    if address is not None:
        _attached_app = app_name
        port = _running_http_port(port)
    _wait_http(f"http://{loopback_host(config.host)}:{port}")
    logger.info("GreenCache ready in %.1fs", time.monotonic() - t0)
    return f"http://{config.host}:{port}"


def _running_http_port(wanted: int) -> int:
    """The port Serve's proxy really serves: on a cluster where Serve already runs (started by a
    Serve config or an earlier deploy), its HTTP options stay as they were."""
    from ray.serve.context import _get_global_client

    port = int(_get_global_client().http_config.port)
    if port != wanted:
        logger.warning("Serve already serves HTTP on port %d on this cluster; port %d is ignored", port, wanted)
    return port


def start_serve(config: ServeConfig, *, autoscaling_config: Optional[dict] = None) -> str:
    """Deploy on a local loopback Ray (see `deploy`)."""
    return deploy(config, autoscaling_config=autoscaling_config)


def _terminate(processes) -> None:
    """SIGTERM `processes`, then SIGKILL whichever is still alive after 5 s."""
    import psutil

    alive = [p for p in processes if p.is_running()]
    for p in alive:
        try:
            p.terminate()
        except psutil.Error:
            pass
    _, still = psutil.wait_procs(alive, timeout=5)
    for p in still:
        try:
            p.kill()
        except psutil.Error:
            pass


def stop_all(timeout_s: float = 60.0) -> None:
    """Shut Serve (replicas, engines) and the local Ray down, leaving no process behind.

    Serve is asked first, so replicas run their destructors and stop their engines in order.
    If that hangs (e.g. a Ray daemon already died), Ray is shut down anyway and every process
    this driver started (Ray daemons, workers, vLLM engine processes) is terminated. After a
    `deploy` onto a running cluster, only the application is deleted.
    """
    import threading

    import psutil
    import ray
    from ray import serve

    try:
        descendants = psutil.Process().children(recursive=True)
    except psutil.Error:
        descendants = []

    def _serve_shutdown() -> None:
        try:
            serve.shutdown()
        except Exception:  # Serve may not have started
            logger.debug("serve.shutdown failed", exc_info=True)

    global _attached_app
    if _attached_app is not None:  # a cluster we joined: remove our app, leave the cluster running
        try:
            serve.delete(_attached_app)
        except Exception:
            logger.warning("could not delete application %s", _attached_app, exc_info=True)
        _attached_app = None
        ray.shutdown()
        return
    if ray.is_initialized():
        t = threading.Thread(target=_serve_shutdown, daemon=True)
        t.start()
        t.join(timeout_s)
        if t.is_alive():
            logger.warning("serve.shutdown did not finish in %.0fs; stopping Ray anyway", timeout_s)
        ray.shutdown()
    global _owned_redis
    if _owned_redis is not None:
        _owned_redis.stop()
        _owned_redis = None
    _terminate(descendants)
    _restore_env()
