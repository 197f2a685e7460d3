"""The request guard in front of the endpoints (deployments/http_guard.py), on a real Starlette
app: authentication in constant time, admission with 429 + Retry-After, body limits with and
without Content-Length, invalid UTF-8 and nesting too deep for Python's parser."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from deployments import http_guard


def _app(delay_s: float = 0.0):
    async def echo(request: Request):
        body = await request.body()
        await asyncio.sleep(delay_s)
        return JSONResponse({"bytes": len(body)})

    inner = Starlette(routes=[Route("/v1/completions", echo, methods=["POST"]),
                              Route("/health", echo, methods=["GET"])])
    return http_guard.RequestGuard(inner)


@pytest.fixture
def guard():
    http_guard.configure(http_guard.GuardConfig(api_keys=["k1", "k2"], max_body_bytes=1000, max_queued_requests=2))
    yield
    http_guard.configure(http_guard.GuardConfig())


def _client(app) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def _error(r, status, code):
    assert r.status_code == status, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"} and r.json()["error"]["code"] == code


def test_keys_are_checked_before_anything_else(guard):
    async def go():
        async with _client(_app()) as c:
            ok = await c.post("/v1/completions", content=b"{}", headers={"Authorization": "Bearer k2"})
            assert ok.status_code == 200
            for headers in ({}, {"Authorization": "Bearer k3"}, {"Authorization": "Basic k1"}):
                _error(await c.post("/v1/completions", content=b"{{{{", headers=headers), 401, "invalid_api_key")
            assert (await c.get("/health")).status_code == 200  # open
    asyncio.run(go())
    assert http_guard.key_matches("k1", ["x", "k1"]) and not http_guard.key_matches("k", ["k1"])


def test_bodies_too_large_are_refused_with_or_without_content_length(guard):
    auth = {"Authorization": "Bearer k1"}

    async def chunks():
        for _ in range(5):
            yield b"x" * 400

    async def go():
        async with _client(_app()) as c:
            _error(await c.post("/v1/completions", content=b"x" * 1001, headers=auth), 413, "request_too_large")
            _error(await c.post("/v1/completions", content=chunks(), headers=auth), 413, "request_too_large")
    asyncio.run(go())


@pytest.mark.parametrize("body", [b'{"prompt": "\\xff\\xfe"}'.replace(b"\\xff\\xfe", b"\xff\xfe"),
                                  b"[" * 5000 + b"]" * 5000], ids=["invalid-utf8", "5000-deep"])
def test_undecodable_or_too_deep_bodies_are_a_400(body):
    http_guard.configure(http_guard.GuardConfig(max_body_bytes=1 << 20))

    async def go():
        async with _client(_app()) as c:
            _error(await c.post("/v1/completions", content=body), 400, "invalid_json")
            assert (await c.post("/v1/completions", content=json.dumps({"deep": [[[[1]]]]}).encode())).status_code == 200
    try:
        asyncio.run(go())
    finally:
        http_guard.configure(http_guard.GuardConfig())


def test_admission_beyond_the_queue_limit_is_a_429_with_retry_after(guard):
    auth = {"Authorization": "Bearer k1"}

    async def go():
        async with _client(_app(delay_s=0.5)) as c:
            rs = await asyncio.gather(*(c.post("/v1/completions", content=b"{}", headers=auth) for _ in range(5)))
            statuses = sorted(r.status_code for r in rs)
            assert statuses == [200, 200, 429, 429, 429], statuses
            refused = next(r for r in rs if r.status_code == 429)
            _error(refused, 429, "rate_limit_exceeded")
            assert refused.headers["retry-after"] == "1"
            assert (await c.post("/v1/completions", content=b"{}", headers=auth)).status_code == 200  # freed again
    asyncio.run(go())
