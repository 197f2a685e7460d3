"""What every request passes before the OpenAI endpoints see it (an ASGI middleware).

In order, each refusal an OpenAI-shaped error:
1. authentication (401): `Authorization: Bearer <key>`, compared in constant time against every
   configured key, for `/v1/*` and `/greencache/*` (`/health` and `/metrics` stay open);
2. admission (429 with `Retry-After`): at most `max_queued_requests` generation requests are in
   the ingress at once; beyond that a client is told to come back rather than queued unbounded;
3. the body, read before anything parses it: at most `max_body_bytes` (413, also when no
   Content-Length is sent), valid UTF-8 (400), JSON no deeper than Python's parser can take
   (400: a 5,000-deep prompt would otherwise surface as a RecursionError, a 500).
The body is then handed on unchanged, and FastAPI validates it against the request models.
"""

from __future__ import annotations

import asyncio
import hmac
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

GENERATION_PATHS = ("/v1/completions", "/v1/chat/completions")
AUTH_PREFIXES = ("/v1/", "/greencache/")


@dataclass
class GuardConfig:
    api_keys: list[str] = field(default_factory=list)
    max_body_bytes: int = 4 * 1024 * 1024
    max_queued_requests: int = 256
    on_refusal: Optional[Callable[[str, int], None]] = None  # (path, status): for metrics


_config = GuardConfig()
_in_flight = {"n": 0}


def configure(cfg: GuardConfig) -> None:
    """Set by the ingress replica when it starts (one ingress per process)."""
    global _config
    _config = cfg


def key_matches(token: str, keys: list[str]) -> bool:
    """Constant-time comparison against every key (no early exit that times which one failed)."""
    ok = False
    for k in keys:
        ok |= hmac.compare_digest(token.encode(), k.encode())
    return ok


def check_body(body: bytes) -> Optional[str]:
    """Why `body` is not acceptable JSON text, or None. Parsing a deeply nested document makes
    Python's parser raise RecursionError (which FastAPI would turn into a 500); here it is a
    refusal. Runs off the event loop: a 4 MB body takes milliseconds to decode and parse."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"request body is not valid UTF-8: {e.reason} at byte {e.start}"
    try:
        json.loads(text)
    except RecursionError:
        return "request JSON is nested too deeply"
    except ValueError:
        return None  # malformed JSON: FastAPI reports it, naming the position
    return None


def _error_body(status: int, message: str, code: str, type_: str = "invalid_request_error") -> bytes:
    return json.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}}).encode()


class RequestGuard:
    """ASGI middleware (see module docstring)."""

    def __init__(self, app) -> None:
        self.app = app

    async def _refuse(self, send, path: str, status: int, message: str, code: str, type_: str = "invalid_request_error",
                      headers: Optional[list] = None) -> None:
        if _config.on_refusal is not None:
            _config.on_refusal(path, status)
        body = _error_body(status, message, code, type_)
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                    + (headers or [])})
        await send({"type": "http.response.body", "body": body})

    def _authorized(self, scope) -> bool:
        if not _config.api_keys or not scope["path"].startswith(AUTH_PREFIXES):
            return True
        auth = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
        scheme, _, token = auth.partition(" ")
        return scheme.lower() == "bearer" and key_matches(token.strip(), _config.api_keys)

    async def _read_body(self, scope, receive, send) -> Optional[bytes]:
        """The whole body, or None after answering 413/400."""
        path, limit = scope["path"], _config.max_body_bytes
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            await self._refuse(send, path, 413, f"request body of {int(declared)} bytes exceeds the limit of {limit} bytes",
                               "request_too_large")
            return None
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            part = message.get("body", b"")
            size += len(part)
            if size > limit:
                await self._refuse(send, path, 413, f"request body exceeds the limit of {limit} bytes",
                                   "request_too_large")
                return None
            chunks.append(part)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        problem = await asyncio.to_thread(check_body, body)
        if problem is not None:
            await self._refuse(send, path, 400, problem, "invalid_json")
            return None
        return body

    async def __call__(self, scope, receive, send) -> Any:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if not self._authorized(scope):
            return await self._refuse(send, path, 401, "Incorrect or missing API key. Send 'Authorization: Bearer <key>'.",
                                      "invalid_api_key")
        if scope.get("method") != "POST":
            return await self.app(scope, receive, send)
        generation = path in GENERATION_PATHS
        if generation:  # admission: checked and taken with no await in between
            if _in_flight["n"] >= _config.max_queued_requests:
                return await self._refuse(send, path, 429, f"{_in_flight['n']} requests are already in; retry shortly",
                                          "rate_limit_exceeded", "requests", headers=[(b"retry-after", b"1")])
            _in_flight["n"] += 1
        try:
            body = await self._read_body(scope, receive, send)
            if body is None:
                return
            replayed = {"done": False}

            async def replay():
                if not replayed["done"]:
                    replayed["done"] = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            return await self.app(scope, replay, send)
        finally:
            if generation:
                _in_flight["n"] -= 1
