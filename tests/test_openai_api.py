"""The official OpenAI client against a live GreenCache (real Ray Serve, real vLLM)."""

from __future__ import annotations

import httpx
import openai
import pytest


@pytest.fixture
def client(greencache_server):
    return openai.OpenAI(base_url=greencache_server.url + "/v1", api_key=greencache_server.api_key)


def test_models_lists_the_served_model(client, greencache_server):
    models = client.models.list()
    assert [m.id for m in models.data] == [greencache_server.model]


def test_chat_completion_non_streaming(client, greencache_server):
    r = client.chat.completions.create(
        model=greencache_server.model,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a cache?"}],
        max_tokens=12,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 12
    assert r.usage.prompt_tokens > 5
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12


def test_chat_completion_streaming_matches_non_streaming(client, greencache_server):
    kwargs = dict(
        model=greencache_server.model,
        messages=[{"role": "user", "content": "Tell me about green energy."}],
        max_tokens=16,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    full = client.chat.completions.create(**kwargs)
    stream = client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
    pieces, finish, usage, roles = [], None, None, []
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            if c.delta.role:
                roles.append(c.delta.role)
            if c.delta.content:
                pieces.append(c.delta.content)
            if c.finish_reason:
                finish = c.finish_reason
    assert roles == ["assistant"]
    assert "".join(pieces) == full.choices[0].message.content  # greedy: same text
    assert finish == "length"
    assert usage is not None and usage.completion_tokens == 16


def test_completion_non_streaming_and_streaming(client, greencache_server):
    kwargs = dict(model=greencache_server.model, prompt="The grid is", max_tokens=10, temperature=0,
                  extra_body={"ignore_eos": True})
    full = client.completions.create(**kwargs)
    assert full.object == "text_completion"
    assert full.usage.completion_tokens == 10
    text = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kwargs) if c.choices)
    assert text == full.choices[0].text


def test_completion_accepts_token_ids(client, greencache_server):
    r = client.completions.create(model=greencache_server.model, prompt=[10, 20, 30, 40], max_tokens=3,
                                  extra_body={"ignore_eos": True})
    assert r.usage.prompt_tokens == 4
    assert r.usage.completion_tokens == 3


def test_stop_sequence_and_max_tokens_respected(client, greencache_server):
    r = client.completions.create(model=greencache_server.model, prompt="Carbon", max_tokens=5, temperature=0)
    assert r.usage.completion_tokens <= 5


def test_cached_prompt_tokens_reported(client, greencache_server):
    # The same long prompt twice: the router sends it to the same replica, whose vLLM prefix
    # cache serves the shared blocks; usage must say so.
    prompt = list(range(100, 700))  # 600 tokens, exact
    first = client.completions.create(model=greencache_server.model, prompt=prompt, max_tokens=2)
    second = client.completions.create(model=greencache_server.model, prompt=prompt, max_tokens=2)
    assert first.usage.prompt_tokens == second.usage.prompt_tokens == 600
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert 0 < cached <= second.usage.prompt_tokens


def test_health_and_metrics(client, greencache_server):
    h = httpx.get(greencache_server.url + "/health", timeout=30)
    assert h.status_code == 200 and h.json()["status"] == "ok"
    client.completions.create(model=greencache_server.model, prompt="metrics please", max_tokens=3)
    m = httpx.get(greencache_server.url + "/metrics", timeout=30)
    assert m.status_code == 200
    text = m.text

    def value(name: str) -> float:
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and not line.startswith("#"):
                total += float(line.rsplit(" ", 1)[1])
        return total

    assert value("greencache_time_to_first_token_seconds_count") >= 1
    assert value("greencache_inter_token_latency_seconds_count") >= 1
    assert value("greencache_e2e_request_latency_seconds_count") >= 1
    assert value("greencache_prompt_tokens_total") > 0
    assert value("greencache_generation_tokens_total") > 0
    assert "greencache_prefix_cache_hit_tokens_total" in text
    assert 'greencache_requests_total{endpoint="/v1/completions",status="200"}' in text


def test_store_metrics_exposed(client, greencache_server):
    # Long prompts are saved to the (default) disk tier; replicas publish store stats every
    # 2 s, and /metrics renders them per replica, process role and tier.
    import time

    for i in range(2):
        client.completions.create(model=greencache_server.model, prompt=list(range(1000 + i, 1600 + i)), max_tokens=2)
    deadline = time.monotonic() + 20
    text = ""
    while time.monotonic() < deadline:
        text = httpx.get(greencache_server.url + "/metrics", timeout=30).text
        saved = sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
                    if l.startswith("greencache_kv_saved_chunks_total"))
        if saved >= 4:
            break
        time.sleep(1)
    assert saved >= 4, text[-2000:]
    caps = {float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
            if line.startswith("greencache_kv_tier_capacity_bytes{") and 'tier="disk"' in line}
    assert caps == {4e9}  # the configured capacity, not what an earlier run left in the node's index
    assert "greencache_kv_lookup_chunks_total" in text
    assert "greencache_kv_embodied_carbon_kg_total" in text


def test_all_traffic_stays_on_loopback(client, greencache_server):
    # Ray, Serve, the engines and the store must only talk over 127.0.0.0/8 (Ray would
    # otherwise advertise the machine's interface address).
    import ipaddress
    import os

    import psutil

    client.completions.create(model=greencache_server.model, prompt="loopback only", max_tokens=2)
    family = {os.getpid()} | {p.pid for p in psutil.Process().children(recursive=True)}
    outside = []
    for c in psutil.net_connections(kind="inet"):
        if c.pid in family and c.raddr:
            ip = ipaddress.ip_address(c.raddr.ip)
            ip = ip.ipv4_mapped or ip if ip.version == 6 else ip
            if not ip.is_loopback:
                outside.append((c.pid, c.laddr, c.raddr, c.status))
    assert not outside, outside


def test_openapi_documents_bodies_statuses_and_the_error_shape(greencache_server):
    spec = httpx.get(greencache_server.url + "/openapi.json", timeout=30).json()
    schemas = spec["components"]["schemas"]
    for path, model in (("/v1/completions", "CompletionRequest"), ("/v1/chat/completions", "ChatCompletionRequest")):
        op = spec["paths"][path]["post"]
        body = op["requestBody"]["content"]["application/json"]["schema"]
        assert body["$ref"].endswith("/" + model) and op["requestBody"]["required"]
        assert {"400", "401", "404", "413", "429", "500"} <= set(op["responses"]) and "422" not in op["responses"]
        assert op["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorResponse")
    seed = schemas["CompletionRequest"]["properties"]["seed"]["anyOf"][0]
    assert seed["maximum"] == pytest.approx(2**63 - 1) and seed["minimum"] == pytest.approx(-(2**63))
    assert "prompt" in schemas["CompletionRequest"]["required"]


def test_server_faults_name_the_request_not_the_exception():
    from deployments.ingress import _server_error

    err = _server_error(RuntimeError("secret internal detail at /srv/x.py:12"), "cmpl-abc123")
    assert err.status == 500 and "cmpl-abc123" in err.message and "secret" not in err.message
    assert err.body()["error"]["type"] == "server_error"


def test_the_detail_of_a_server_fault_reaches_the_replica_log_file_at_once(tmp_path):
    """Inside a Serve replica, stderr is an INFO stream into a buffer of up to
    RAY_SERVE_REQUEST_PATH_LOG_BUFFER_SIZE records in front of the replica's log file: an error
    logged through Python's last-resort handler waited there, and was lost when the replica
    died. `to_replica_log` writes GreenCache's records straight to the file."""
    import logging
    import logging.handlers

    from deployments import logs
    from deployments.ingress import _server_error

    serve_logger, ours = logging.getLogger("ray.serve"), logging.getLogger("greencache")
    file_handler = logging.FileHandler(tmp_path / "replica_greencache_OpenAIIngress_x.log")
    buffered = logging.handlers.MemoryHandler(1000, flushLevel=logging.CRITICAL + 1, target=file_handler)
    serve_logger.addHandler(buffered)  # what Serve sets up in a replica
    saved = (ours.handlers[:], ours.level, ours.propagate, logs._configured)
    try:
        logs._configured = False
        logs.to_replica_log()
        _server_error(RuntimeError("the engine core died"), "cmpl-0123")
        text = (tmp_path / "replica_greencache_OpenAIIngress_x.log").read_text()
        assert "request cmpl-0123 failed: RuntimeError: the engine core died" in text
    finally:
        serve_logger.removeHandler(buffered)
        ours.handlers[:], ours.level, ours.propagate, logs._configured = saved
        file_handler.close()


def test_listeners_are_on_loopback_and_the_replicas_grpc_needs_rays_token(client, greencache_server):
    """Every listening socket of the deployment is on 127.0.0.1, except the one Ray 2.60 binds on
    all interfaces for Serve's replica-to-replica gRPC; that one refuses a call without Ray's
    auth token."""
    import ipaddress
    import os

    import grpc
    import psutil

    family = {os.getpid()} | {p.pid for p in psutil.Process().children(recursive=True)}
    wildcard = []
    for c in psutil.net_connections(kind="inet"):
        if c.pid in family and c.status == psutil.CONN_LISTEN:
            ip = ipaddress.ip_address(c.laddr.ip)
            if ip.is_unspecified:
                wildcard.append((c.pid, c.laddr.port))
            else:
                ip = (ip.ipv4_mapped or ip) if ip.version == 6 else ip
                assert ip.is_loopback, (c.pid, psutil.Process(c.pid).name(), c.laddr)
    for pid, _ in wildcard:
        assert "ServeReplica" in " ".join(psutil.Process(pid).cmdline()), psutil.Process(pid).cmdline()
    assert wildcard, "expected Serve's replica gRPC ports"
    for _, port in wildcard:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/ray.serve.ASGIService/HandleRequest")  # what replicas serve
            with pytest.raises(grpc.RpcError) as e:
                call(b"", timeout=5)
            assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED, e.value
