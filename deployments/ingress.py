"""OpenAI-compatible HTTP ingress (a Ray Serve FastAPI deployment).

Owns everything between HTTP and token ids: authentication, body limits, request validation,
chat templates and tokenization, context-window checks, prefix hashing for routing, SSE
streaming, usage accounting and Prometheus metrics. LLM replicas see only token ids.

Every client error is an OpenAI-style error body with a 4xx status (see protocol.APIError);
server faults are 500 with the same shape. The ingress never lets one bad request affect
others: all state it keeps is per request, except metrics and the router's prefix table.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any, AsyncIterator, Optional

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException

from deployments.metrics import ServingMetrics
from deployments.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    parse_request,
)
from deployments.routing import prefix_block_hashes

logger = logging.getLogger("greencache.ingress")

app = FastAPI(title="GreenCache OpenAI-compatible API")


def _sse(payload: dict) -> bytes:
    """One server-sent event."""
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


@app.exception_handler(APIError)
async def _api_error_handler(request: Request, exc: APIError) -> JSONResponse:
    return _error_response(exc)


@app.exception_handler(StarletteHTTPException)
async def _http_error_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return _error_response(
        APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=code)
    )


class OpenAIIngress:
    """Serve deployment class; wrapped by `serve.deployment` + `serve.ingress` in app.py."""

    def __init__(
        self,
        llm,  # DeploymentHandle to LLMReplica
        served_model_name: str,
        model_path: str,
        max_model_len: int,
        api_keys: list[str],
        max_body_bytes: int,
        routing: dict[str, Any],
    ):
        from transformers import AutoTokenizer

        # `_by_reference=False`: token chunks come back over Serve's gRPC channel to the replica
        # instead of as Ray objects (one owner RPC and object-store entry per chunk). That is
        # what RAY_SERVE_USE_GRPC_BY_DEFAULT selects, but Serve reads the variable when it is
        # imported, and the handle's options come from the driver, which imported Serve before
        # starting Ray. Measured: ingress CPU 11% -> 5% of a core, replica 8.8% -> 5.2%, and
        # throughput 0.86 -> 1.0 of vLLM's own server on 2 cores (benchmarks/results/README.md).
        self.llm_stream = llm.options(stream=True, _by_reference=False)
        self.llm = llm
        self.model_name = served_model_name
        self.max_model_len = max_model_len
        self.api_keys = set(api_keys)
        self.max_body_bytes = max_body_bytes
        self.block_tokens = routing.get("block_tokens", 64)
        self.max_blocks = routing.get("max_blocks", 64)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.vocab_size = len(self.tokenizer)
        self.created = int(time.time())
        self.metrics = ServingMetrics()
        from deployments.stats_hub import StoreMetricsCollector

        self.store_metrics = StoreMetricsCollector()
        self.metrics.registry.register(self.store_metrics)
        self.requests_total = 0  # generation requests accepted (the autoscaler's load signal)
        self._publisher = asyncio.get_event_loop().create_task(self._publish_load())

    async def _publish_load(self, every_s: float = 2.0) -> None:
        """Push the accepted-request count to the StatsHub; the autoscaler derives the rate."""
        from deployments.stats_hub import get_or_create_hub

        hub = None
        while True:
            await asyncio.sleep(every_s)
            try:
                hub = hub or get_or_create_hub()
                hub.report.remote("__ingress__", {"time": time.time(), "requests_total": self.requests_total})
            except Exception:
                hub = None

    # ---- plumbing -------------------------------------------------------------------

    def _authenticate(self, request: Request) -> None:
        if not self.api_keys:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or token.strip() not in self.api_keys:
            raise APIError(
                401,
                "Incorrect or missing API key. Send 'Authorization: Bearer <key>'.",
                code="invalid_api_key",
            )

    async def _read_json(self, request: Request) -> Any:
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise APIError(
                413,
                f"request body of {declared} bytes exceeds the limit of {self.max_body_bytes} bytes",
                code="request_too_large",
            )
        body = bytearray()
        async for part in request.stream():
            body.extend(part)
            if len(body) > self.max_body_bytes:
                raise APIError(
                    413,
                    f"request body exceeds the limit of {self.max_body_bytes} bytes",
                    code="request_too_large",
                )
        try:
            return json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None

    async def _accept(self, request: Request, model_cls):
        """Authenticate, read and validate the body, and check the model: the common preamble."""
        self._authenticate(request)
        req = parse_request(model_cls, await self._read_json(request))
        self._check_model(req.model)
        return req

    def _check_model(self, model: str) -> None:
        if model != self.model_name:
            raise APIError(
                404,
                f"The model '{model}' does not exist. Available: '{self.model_name}'.",
                param="model",
                code="model_not_found",
            )

    def _check_length(self, prompt_tokens: int, max_tokens: int, param: str, prompt_param: str) -> None:
        if prompt_tokens >= self.max_model_len or prompt_tokens + max_tokens > self.max_model_len:
            raise APIError(
                400,
                f"This model's maximum context length is {self.max_model_len} tokens. However, "
                f"you requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the "
                f"prompt, {max_tokens} for the completion). Shorten the prompt or lower {param}.",
                param=param if prompt_tokens < self.max_model_len else prompt_param,
                code="context_length_exceeded",
            )

    @staticmethod
    def _sampling(req, max_tokens: int) -> dict[str, Any]:
        s: dict[str, Any] = dict(
            max_tokens=max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            ignore_eos=req.ignore_eos,
        )
        if req.top_k is not None and req.top_k > 0:
            s["top_k"] = req.top_k
        if req.seed is not None:
            s["seed"] = req.seed
        stops = req.stop_list()
        if stops:
            s["stop"] = stops
        return s

    def _engine_request(self, request_id: str, token_ids: list[int], sampling: dict) -> dict:
        return {
            "request_id": request_id,
            "prompt_token_ids": token_ids,
            "sampling": sampling,
            "prefix_hashes": prefix_block_hashes(token_ids, self.block_tokens, self.max_blocks),
        }

    async def _run(
        self,
        engine_req: dict,
        req,  # the validated CompletionRequest / ChatCompletionRequest
        *,
        endpoint: str,
        render_chunk,  # (chunk dict, first: bool) -> list[dict] of SSE payloads
        render_final,  # (text, finish_reason, usage) -> dict response body
        arrival: float,
    ) -> Response:
        self.requests_total += 1
        stream = req.stream
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        gen = self.llm_stream.generate.remote(engine_req)
        it = gen.__aiter__()
        try:
            first = await it.__anext__()
        except StopAsyncIteration:
            gen.cancel()
            raise APIError(500, "engine returned no output", type="server_error", code="internal_error")
        except APIError:
            raise
        except Exception as e:
            gen.cancel()
            logger.exception("generation failed")
            self.metrics.requests.labels(endpoint, "500").inc()
            raise APIError(500, f"generation failed: {type(e).__name__}: {e}", type="server_error",
                           code="internal_error") from None
        replica_id = first.get("replica_id", "")
        headers = {"x-greencache-replica": replica_id}
        m = self.metrics
        model = self.model_name

        state = {"text": [], "tokens": 0, "finish": None, "cached": 0, "prompt": first.get("prompt_tokens", 0),
                 "t_last": None, "stop_reason": None}

        def account(chunk: dict) -> None:
            now = time.monotonic()
            k = chunk.get("num_tokens", 0)
            if k:
                if state["t_last"] is None:
                    m.ttft.labels(model).observe(now - arrival)
                else:
                    per = (now - state["t_last"]) / k
                    for _ in range(k):
                        m.itl.labels(model).observe(per)
                state["t_last"] = now
            state["tokens"] += k
            state["text"].append(chunk.get("text", ""))
            if chunk.get("finish_reason"):
                state["finish"] = chunk["finish_reason"]
            if "cached_tokens" in chunk:
                state["cached"] = chunk["cached_tokens"]

        def usage() -> dict:
            return {
                "prompt_tokens": state["prompt"],
                "completion_tokens": state["tokens"],
                "total_tokens": state["prompt"] + state["tokens"],
                "prompt_tokens_details": {"cached_tokens": state["cached"]},
            }

        def finish_metrics(status: str) -> None:
            m.e2e.labels(model).observe(time.monotonic() - arrival)
            m.prompt_tokens.labels(model).inc(state["prompt"])
            m.generation_tokens.labels(model).inc(state["tokens"])
            m.cached_tokens.labels(model).inc(state["cached"])
            m.requests.labels(endpoint, status).inc()

        if not stream:
            try:
                account(first)
                async for chunk in it:
                    account(chunk)
            except Exception as e:
                logger.exception("generation failed")
                finish_metrics("500")
                raise APIError(500, f"generation failed: {type(e).__name__}: {e}", type="server_error",
                               code="internal_error") from None
            finish_metrics("200")
            body = render_final("".join(state["text"]), state["finish"], usage())
            return JSONResponse(body, headers=headers)

        # Chunks that arrive while the previous write is in flight go out together: one write
        # (to the socket, or to Serve's proxy without direct ingress) instead of one per
        # chunk, and no timer, so nothing waits.
        pending: asyncio.Queue = asyncio.Queue()

        async def pump() -> None:
            try:
                async for chunk in it:
                    pending.put_nowait(chunk)
                pending.put_nowait(None)
            except asyncio.CancelledError:
                raise
            except BaseException as e:  # surfaced to the client by sse()
                pending.put_nowait(e if isinstance(e, Exception) else RuntimeError(repr(e)))

        async def sse() -> AsyncIterator[bytes]:
            status = "200"
            pumper = asyncio.get_running_loop().create_task(pump())
            try:
                batch, is_first, done = [first], True, False
                while not done:
                    out = []
                    for chunk in batch:
                        if chunk is None:
                            done = True
                            break
                        if isinstance(chunk, Exception):
                            raise chunk
                        account(chunk)
                        out += [_sse(p) for p in render_chunk(chunk, is_first)]
                        is_first = False
                    if out:
                        yield b"".join(out)
                    if not done:
                        batch = [await pending.get()]
                        while not pending.empty():
                            batch.append(pending.get_nowait())
                if include_usage:
                    yield _sse(render_chunk(None, False, usage())[0])
            except asyncio.CancelledError:
                status = "499"  # client went away
                pumper.cancel()
                gen.cancel()
                raise
            except Exception as e:
                status = "500"
                logger.exception("stream failed")
                err = APIError(500, f"generation failed: {type(e).__name__}: {e}", type="server_error",
                               code="internal_error")
                yield _sse(err.body())
            finally:
                finish_metrics(status)
            yield b"data: [DONE]\n\n"

        return StreamingResponse(sse(), media_type="text/event-stream", headers=headers)

    # ---- endpoints --------------------------------------------------------------------

    @app.get("/health")
    async def health(self) -> JSONResponse:
        try:
            info = await asyncio.wait_for(self.llm.health.remote(), timeout=10)
            return JSONResponse({"status": "ok", "replica": info})
        except Exception as e:
            return JSONResponse(
                APIError(503, f"no healthy replica: {type(e).__name__}: {e}", type="server_error",
                         code="unhealthy").body(),
                status_code=503,
            )

    @app.get("/metrics")
    async def metrics(self) -> Response:
        try:
            from deployments.stats_hub import get_or_create_hub

            self.store_metrics.snapshot = await asyncio.wait_for(get_or_create_hub().snapshot.remote(), timeout=2)
        except Exception:  # keep serving the serving metrics; store metrics stay at last value
            logger.debug("stats hub unavailable", exc_info=True)
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        self._authenticate(request)
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    @app.get("/v1/models/{model_id:path}")
    async def model(self, model_id: str, request: Request) -> JSONResponse:
        self._authenticate(request)
        self._check_model(model_id)
        return JSONResponse(self._model_card())

    def _model_card(self) -> dict:
        return {
            "id": self.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "greencache",
            "max_model_len": self.max_model_len,
        }

    @app.post("/v1/completions")
    async def completions(self, request: Request) -> Response:
        arrival = time.monotonic()
        endpoint = "/v1/completions"
        try:
            req: CompletionRequest = await self._accept(request, CompletionRequest)
            if isinstance(req.prompt, str):
                token_ids = self.tokenizer.encode(req.prompt, add_special_tokens=False)
            else:
                bad = next((t for t in req.prompt if not 0 <= t < self.vocab_size), None)
                if bad is not None:
                    raise APIError(400, f"token id {bad} is outside the vocabulary [0, {self.vocab_size})",
                                   param="prompt", code="invalid_value")
                token_ids = list(req.prompt)
            max_tokens = req.max_tokens if req.max_tokens is not None else 16
            self._check_length(len(token_ids), max_tokens, "max_tokens", "prompt")
        except APIError as e:
            self.metrics.requests.labels(endpoint, str(e.status)).inc()
            raise
        rid = f"cmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        model = self.model_name

        def render_chunk(chunk, first, usage=None):
            if chunk is None:
                return [{"id": rid, "object": "text_completion", "created": created, "model": model,
                         "choices": [], "usage": usage}]
            if not chunk.get("text") and not chunk.get("finish_reason"):
                return []
            return [{"id": rid, "object": "text_completion", "created": created, "model": model,
                     "choices": [{"index": 0, "text": chunk.get("text", ""), "logprobs": None,
                                  "finish_reason": chunk.get("finish_reason")}]}]

        def render_final(text, finish, usage):
            return {"id": rid, "object": "text_completion", "created": created, "model": model,
                    "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}],
                    "usage": usage}

        return await self._run(
            self._engine_request(rid, token_ids, self._sampling(req, max_tokens)), req,
            endpoint=endpoint, render_chunk=render_chunk, render_final=render_final, arrival=arrival,
        )

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> Response:
        arrival = time.monotonic()
        endpoint = "/v1/chat/completions"
        try:
            req: ChatCompletionRequest = await self._accept(request, ChatCompletionRequest)
            messages = [{"role": m.role if m.role != "developer" else "system", "content": m.text()}
                        for m in req.messages]
            try:
                token_ids = self.tokenizer.apply_chat_template(
                    messages, add_generation_prompt=True, tokenize=True, return_dict=False
                )
            except Exception as e:
                raise APIError(400, f"could not apply the chat template: {e}", param="messages",
                               code="invalid_value") from None
            if isinstance(token_ids, dict):  # some tokenizer versions return a BatchEncoding
                token_ids = token_ids["input_ids"]
            token_ids = list(token_ids)
            requested = req.max_completion_tokens or req.max_tokens
            param = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
            if requested is None:
                if len(token_ids) >= self.max_model_len:
                    self._check_length(len(token_ids), 1, param, "messages")
                max_tokens = self.max_model_len - len(token_ids)
            else:
                max_tokens = requested
            self._check_length(len(token_ids), max_tokens, param, "messages")
        except APIError as e:
            self.metrics.requests.labels(endpoint, str(e.status)).inc()
            raise
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        model = self.model_name

        def base():
            return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model}

        def render_chunk(chunk, first, usage=None):
            if chunk is None:
                return [{**base(), "choices": [], "usage": usage}]
            out = []
            if first:
                out.append({**base(), "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                   "logprobs": None, "finish_reason": None}]})
            if chunk.get("text"):
                out.append({**base(), "choices": [{"index": 0, "delta": {"content": chunk["text"]},
                                                   "logprobs": None, "finish_reason": None}]})
            if chunk.get("finish_reason"):
                out.append({**base(), "choices": [{"index": 0, "delta": {}, "logprobs": None,
                                                   "finish_reason": chunk["finish_reason"]}]})
            return out

        def render_final(text, finish, usage):
            return {"id": rid, "object": "chat.completion", "created": created, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "logprobs": None, "finish_reason": finish}],
                    "usage": usage}

        return await self._run(
            self._engine_request(rid, token_ids, self._sampling(req, max_tokens)), req,
            endpoint=endpoint, render_chunk=render_chunk, render_final=render_final, arrival=arrival,
        )
