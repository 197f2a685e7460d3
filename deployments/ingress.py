"""OpenAI-compatible HTTP ingress (a Ray Serve FastAPI deployment).

Owns everything between HTTP and token ids: authentication, admission and body limits
(http_guard.py), request validation (the models in protocol.py are the endpoints' body types,
so `/openapi.json` documents them), chat templates and tokenization (off the event loop, after
a length check that needs no tokenizer), context-window checks, prefix hashing for routing, SSE
streaming, usage accounting and Prometheus metrics. LLM replicas see only token ids.

Every client error is an OpenAI-style error body with a 4xx status naming the field; a 5xx is
only ever the server's own fault, with a generic message and the request id (the details go
to the log). The ingress never lets one bad request affect others: all state it keeps is per
request, except metrics, the admission count and the router's prefix table.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Any, AsyncIterator, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from autoscaler.carbon import CarbonConfig
from autoscaler.carbon import RequestCarbonRate
from autoscaler.telemetry import AUTOSCALER_KEY, INGRESS_KEY, get_or_create_hub
from deployments import http_guard
from deployments.config import RoutingConfig
from deployments.metrics import ServingMetrics, StoreMetricsCollector
from deployments.protocol import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    ErrorResponse,
    api_error_from_validation,
)
from deployments.responses import SSE_DONE, ChatRenderer, CompletionRenderer, sse
from deployments.route_table import app_routes, choose_deployment
from deployments.routing import prefix_block_hashes

logger = logging.getLogger("greencache.ingress")

app = FastAPI(title="GreenCache OpenAI-compatible API")
app.add_middleware(http_guard.RequestGuard)
PUBLISH_EVERY_S = 2.0  # how often the ingress's request count goes to the telemetry hub
PRICE_POLLS_PER_PUBLISH = 4  # ... and how often in between it reads the autoscaler's carbon price
BODY_MODELS = {"/v1/completions": CompletionRequest, "/v1/chat/completions": ChatCompletionRequest}
_ERR = {"model": ErrorResponse}
ERROR_RESPONSES = {400: {**_ERR, "description": "Invalid request: the message names the field"},
                   401: {**_ERR, "description": "Missing or wrong API key"},
                   404: {**_ERR, "description": "Unknown model"},
                   413: {**_ERR, "description": "Request body too large"},
                   429: {**_ERR, "description": "Too many requests waiting: retry after the Retry-After header"},
                   500: {**_ERR, "description": "Server fault (the message carries the request id)"},
                   503: {**_ERR, "description": "No healthy replica"}}
_metrics: dict = {"serving": None}  # the ingress's ServingMetrics, for errors answered outside an endpoint


def _count(path: str, status: int) -> None:
    m = _metrics["serving"]
    if m is not None and path in BODY_MODELS:
        m.requests.labels(path, str(status)).inc()


def _error_response(err: APIError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers or None)


REPLICA_ATTEMPTS = 3  # replicas a request may be sent to when they die before answering


def _server_error(e: BaseException, request_id: str) -> APIError:
    """A 5xx for the client: what happened stays in the log, under the request id."""
    logger.error("request %s failed: %s: %s", request_id, type(e).__name__, e, exc_info=e)
    return APIError(500, f"The server failed while generating (request id {request_id}).", type="server_error",
                    code="internal_error")


@app.exception_handler(APIError)
async def _api_error_handler(request: Request, exc: APIError) -> JSONResponse:
    return _error_response(exc)


@app.exception_handler(RequestValidationError)
async def _validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    err = api_error_from_validation(list(exc.errors()), BODY_MODELS.get(request.url.path, CompletionRequest))
    _count(request.url.path, err.status)
    return _error_response(err)


@app.exception_handler(StarletteHTTPException)
async def _http_error_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
    return _error_response(
        APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", code=code)
    )


@app.exception_handler(Exception)
async def _unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    err = _server_error(exc, uuid.uuid4().hex)
    _count(request.url.path, 500)
    return _error_response(err)


def _openapi() -> dict:
    """The schema FastAPI generates, without its 422 (GreenCache answers validation with 400)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version="1", routes=app.routes)
        for path in schema.get("paths", {}).values():
            for op in path.values():
                op.get("responses", {}).pop("422", None)
        app.openapi_schema = schema
    return app.openapi_schema


app.openapi = _openapi


@dataclass
class LoadCounters:
    """Cumulative counts this ingress replica publishes for the autoscaler (telemetry.py): it
    derives the request rate, token mix and latencies of each interval from their differences."""

    requests_total: int = 0  # generation requests accepted
    finished: int = 0  # ... and answered whole (the sums below are over these)
    prompt_tokens: int = 0
    prompt_tokens_sq: float = 0.0  # Σ n²: prefill is quadratic in n (effective prompt length)
    cached_tokens: int = 0  # prompt tokens a prefix cache (engine or store) served
    output_tokens: int = 0
    ttft_s: float = 0.0
    tpot_s: float = 0.0
    tpot_count: int = 0  # requests with at least two tokens

    def finished_request(self, prompt: int, output: int, ttft_s: Optional[float], tpot_s: Optional[float],
                         cached: int = 0) -> None:
        self.finished += 1
        self.prompt_tokens += prompt
        self.cached_tokens += cached
        self.prompt_tokens_sq += float(prompt) * prompt
        self.output_tokens += output
        self.ttft_s += ttft_s or 0.0
        if tpot_s is not None:
            self.tpot_s += tpot_s
            self.tpot_count += 1


class Generation:
    """One request's output as it arrives: text, token counts, latency metrics, usage and carbon."""

    def __init__(self, metrics: ServingMetrics, model: str, endpoint: str, arrival: float, first: dict,
                 counters: Optional[LoadCounters] = None, carbon_rate: Optional[RequestCarbonRate] = None) -> None:
        self.m, self.model, self.endpoint, self.arrival = metrics, model, endpoint, arrival
        self.counters = counters
        self.carbon_rate = carbon_rate
        self._t_first: Optional[float] = None
        self.replica_id = first.get("replica_id", "")
        self.prompt_tokens = first.get("prompt_tokens", 0)
        self.text: list[str] = []
        self.tokens = 0
        self.cached = 0
        self.finish_reason = None
        self._t_last = None

    def account(self, chunk: dict) -> None:
        now = time.monotonic()
        k = chunk.get("num_tokens", 0)
        if k:
            if self._t_last is None:
                self._t_first = now
                self.m.ttft.labels(self.model).observe(now - self.arrival)
            else:
                per = (now - self._t_last) / k
                for _ in range(k):
                    self.m.itl.labels(self.model).observe(per)
            self._t_last = now
        self.tokens += k
        self.text.append(chunk.get("text", ""))
        if chunk.get("finish_reason"):
            self.finish_reason = chunk["finish_reason"]
        if "cached_tokens" in chunk:
            self.cached = chunk["cached_tokens"]

    def carbon(self) -> Optional[dict]:
        """This request's estimated carbon (`usage.carbon`), once the autoscaler has priced a slot."""
        if self.carbon_rate is None:
            return None
        return self.carbon_rate.estimate(self.prompt_tokens, self.cached, self.tokens)

    def usage(self) -> dict:
        u = {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.tokens,
            "total_tokens": self.prompt_tokens + self.tokens,
            "prompt_tokens_details": {"cached_tokens": self.cached},
        }
        carbon = self.carbon()
        if carbon is not None:
            u["carbon"] = carbon
        return u

    def finish(self, status: str) -> None:
        m = self.m
        m.e2e.labels(self.model).observe(time.monotonic() - self.arrival)
        m.prompt_tokens.labels(self.model).inc(self.prompt_tokens)
        m.generation_tokens.labels(self.model).inc(self.tokens)
        m.cached_tokens.labels(self.model).inc(self.cached)
        m.requests.labels(self.endpoint, status).inc()
        if status == "200" and self.counters is not None:
            ttft = None if self._t_first is None else self._t_first - self.arrival
            tpot = (self._t_last - self._t_first) / (self.tokens - 1) if self.tokens > 1 and self._t_first else None
            self.counters.finished_request(self.prompt_tokens, self.tokens, ttft, tpot, self.cached)
        carbon = self.carbon() if status == "200" else None
        if carbon is not None:
            m.carbon.labels("operational").inc(carbon["operational_g_co2e"])
            m.carbon.labels("embodied").inc(carbon["embodied_g_co2e"])


class OpenAIIngress:
    """Serve deployment class; wrapped by `serve.deployment` + `serve.ingress` in app.py."""

    def __init__(
        self,
        llm,  # DeploymentHandle to LLMReplica, or {gpu type: handle} with a mixed GPU fleet
        autoscaler,  # DeploymentHandle to the carbon autoscaler, or None
        served_model_name: str,
        model: Optional[str],  # the model directory, or None for the demo model (resolved on this node)
        home: Optional[str],
        max_model_len: int,
        api_keys: list[str],
        max_body_bytes: int,
        routing: dict[str, Any],
        carbon: dict[str, Any],
        max_queued_requests: int = 256,
        app_name: str = "greencache",  # the app the autoscaler publishes its plan for
    ):
        from transformers import AutoTokenizer

        from deployments.logs import to_replica_log

        to_replica_log()

        # `_by_reference=False`: token chunks come back over Serve's gRPC channel to the replica
        # instead of as Ray objects (one owner RPC and object-store entry per chunk). That is
        # what RAY_SERVE_USE_GRPC_BY_DEFAULT selects, but Serve reads the variable when it is
        # imported, and the handle's options come from the driver, which imported Serve before
        # starting Ray. Measured: ingress CPU 11% -> 5% of a core, replica 8.8% -> 5.2%, and
        # throughput 0.86 -> 1.0 of vLLM's own server on 2 cores (benchmarks/results/README.md).
        # With a mixed GPU fleet: one deployment per type; `_choose` picks one per request.
        self.fleet: dict[str, Any] = dict(llm) if isinstance(llm, dict) else {}
        handles = self.fleet or {"": llm}
        self.llm_streams = {t: h.options(stream=True, _by_reference=False) for t, h in handles.items()}
        self.llm_stream = next(iter(self.llm_streams.values()))
        self.llm = next(iter(handles.values()))
        self.planned_types: Optional[set[str]] = None  # fleet types the plan keeps (count > 0); None: all
        self.app_name = app_name
        self.autoscaler = autoscaler
        self.model_name = served_model_name
        self.max_model_len = max_model_len
        self.routing = RoutingConfig.model_validate(routing)
        from deployments.demo_model import local_model_dir

        self.tokenizer = AutoTokenizer.from_pretrained(local_model_dir(model, home))
        self.vocab_size = len(self.tokenizer)
        self.max_token_chars = _max_token_chars(self.tokenizer)
        self.created = int(time.time())
        self.metrics = ServingMetrics()
        _metrics["serving"] = self.metrics
        http_guard.configure(http_guard.GuardConfig(api_keys=list(api_keys), max_body_bytes=max_body_bytes,
                                                    max_queued_requests=max_queued_requests, on_refusal=_count))
        self.store_metrics = StoreMetricsCollector(CarbonConfig.model_validate(carbon))
        self.metrics.registry.register(self.store_metrics)
        self.counters = LoadCounters()
        self.carbon_rate: Optional[RequestCarbonRate] = None  # the autoscaler's latest, see _publish_load
        self._publisher = asyncio.get_event_loop().create_task(self._publish_load())
        if self.fleet:
            self._plan_follower = asyncio.get_event_loop().create_task(self._follow_plan())

    async def _follow_plan(self) -> None:
        """With a mixed fleet: which GPU types the plan keeps (its own counts, not the
        make-before-break step, so a type being replaced gets no new request once its
        successor runs), read every second off the event loop (a slow GCS never holds up a
        request); the last good answer stays."""
        from autoscaler import control_plane

        app = self.app_name
        reader = control_plane.PollingReader(lambda: control_plane.read_plan_counts(app, "planned"), every_s=0.0)
        loop = asyncio.get_running_loop()
        while True:
            counts = await loop.run_in_executor(None, reader.get)
            if counts is not None:
                self.planned_types = {t for t, n in counts.items() if n > 0}
            await asyncio.sleep(1.0)

    def _choose(self, engine_req: dict) -> str:
        """The GPU type (deployment) a request goes to; "" without a fleet (deployments/routing.py)."""
        if not self.fleet:
            return ""
        names = {self.fleet[t].deployment_name: t for t in self.fleet}
        allowed = None if self.planned_types is None else [self.fleet[t].deployment_name for t in self.planned_types
                                                           if t in self.fleet]
        try:
            chosen = choose_deployment(app_routes(self.llm.app_name), list(names), engine_req["prefix_hashes"],
                                       self.routing.imbalance_threshold, allowed)
        except Exception:  # routing state in flux: any type still serves the request right
            logger.warning("choosing a GPU type failed; using the first", exc_info=True)
            chosen = next(iter(names))
        return names[chosen]

    async def _publish_load(self) -> None:
        """Push this replica's load counters to the telemetry hub (see `LoadCounters`), and take
        the autoscaler's latest per-request carbon price from it (kept if the hub is away)."""
        from ray import serve

        try:
            key = f"{INGRESS_KEY}:{serve.get_replica_context().replica_id.unique_id}"
        except Exception:  # constructed outside Serve
            key = INGRESS_KEY
        hub = None
        while True:
            try:
                hub = hub or get_or_create_hub()
                hub.report.remote(key, {"time": time.time(), **asdict(self.counters)})
                for _ in range(PRICE_POLLS_PER_PUBLISH):  # a new plan's price reaches requests within 0.5 s
                    a = await asyncio.wait_for(hub.get.remote(AUTOSCALER_KEY), timeout=PUBLISH_EVERY_S)
                    self.carbon_rate = RequestCarbonRate.from_json((a or {}).get("request_carbon")) or self.carbon_rate
                    await asyncio.sleep(PUBLISH_EVERY_S / PRICE_POLLS_PER_PUBLISH)
            except Exception:
                hub = None
                await asyncio.sleep(PUBLISH_EVERY_S)

    # ---- request preamble ---------------------------------------------------------------

    def _check_model(self, model: str) -> None:
        if model != self.model_name:
            raise APIError(
                404,
                f"The model '{model}' does not exist. Available: '{self.model_name}'.",
                param="model",
                code="model_not_found",
            )

    def _check_chars(self, chars: int, param: str) -> None:
        """Refuse, before tokenizing, a text that must be longer than the context window: no
        token of this tokenizer covers more than `max_token_chars` characters."""
        if chars > self.max_model_len * self.max_token_chars:
            raise APIError(400, f"This model's maximum context length is {self.max_model_len} tokens; the "
                                f"{chars:,}-character prompt is longer than that whatever its tokens. "
                                "Shorten the prompt.", param=param, code="context_length_exceeded")

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
            "prefix_hashes": prefix_block_hashes(token_ids, self.routing.block_tokens, self.routing.max_blocks),
        }

    # ---- generation ---------------------------------------------------------------------

    async def _first_chunk(self, engine_req: dict, endpoint: str, request_id: str):
        """(generator, iterator, first chunk) from a replica. A replica that dies before its
        first chunk (killed, its node lost) has sent the client nothing, so the request goes to
        another one, up to REPLICA_ATTEMPTS times; any other failure before the first chunk is a
        500. Sampling parameters the engine refuses are the client's 400."""
        from ray.exceptions import ActorUnavailableError, RayActorError

        for attempt in range(1, REPLICA_ATTEMPTS + 1):
            gpu_type = self._choose(engine_req)  # again on a retry: the plan may have moved on
            gen = self.llm_streams[gpu_type].generate.remote(engine_req)
            it = gen.__aiter__()
            try:
                first = await it.__anext__()
                break
            except StopAsyncIteration:
                gen.cancel()
                raise _server_error(RuntimeError("the engine returned no output"), request_id) from None
            except (RayActorError, ActorUnavailableError) as e:
                gen.cancel()
                if attempt < REPLICA_ATTEMPTS:
                    logger.warning("request %s: its replica was lost before answering (%s); sending it to another",
                                   request_id, type(e).__name__)
                    continue
                self.metrics.requests.labels(endpoint, "500").inc()
                raise _server_error(e, request_id) from None
            except Exception as e:
                gen.cancel()
                self.metrics.requests.labels(endpoint, "500").inc()
                raise _server_error(e, request_id) from None
        if "error" in first:
            self.metrics.requests.labels(endpoint, "400").inc()
            raise APIError(400, f"invalid sampling parameters: {first['error']['message']}",
                           param=first["error"].get("param"), code="invalid_value")
        if gpu_type:
            first["gpu_type"] = gpu_type
        return gen, it, first

    async def _run(self, engine_req: dict, req, *, endpoint: str, renderer, arrival: float) -> Response:
        """Send `engine_req` to a replica and answer with the whole response or an SSE stream."""
        self.counters.requests_total += 1
        gen, it, first = await self._first_chunk(engine_req, endpoint, renderer.id)
        out = Generation(self.metrics, self.model_name, endpoint, arrival, first, self.counters, self.carbon_rate)
        headers = {"x-greencache-replica": out.replica_id, "x-request-id": renderer.id}
        if first.get("gpu_type"):
            headers["x-greencache-gpu-type"] = first["gpu_type"]
        if not req.stream:
            return await self._whole(it, first, out, renderer, headers)
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(self._stream(gen, it, first, out, renderer, include_usage),
                                 media_type="text/event-stream", headers=headers)

    @staticmethod
    async def _whole(it, first: dict, out: Generation, renderer, headers: dict) -> Response:
        try:
            out.account(first)
            async for chunk in it:
                out.account(chunk)
        except Exception as e:
            out.finish("500")
            raise _server_error(e, renderer.id) from None
        out.finish("200")
        return JSONResponse(renderer.final("".join(out.text), out.finish_reason, out.usage()), headers=headers)

    @staticmethod
    async def _pump(it, pending: asyncio.Queue) -> None:
        """Move the replica's chunks into `pending`; end with None, or the exception that ended it."""
        try:
            async for chunk in it:
                pending.put_nowait(chunk)
            pending.put_nowait(None)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # surfaced to the client by _stream
            pending.put_nowait(e if isinstance(e, Exception) else RuntimeError(repr(e)))

    async def _stream(self, gen, it, first: dict, out: Generation, renderer,
                      include_usage: bool) -> AsyncIterator[bytes]:
        """SSE for one request. Chunks that arrive while the previous write is in flight go out
        together: one write (to the socket, or to Serve's proxy without direct ingress) instead
        of one per chunk, and no timer, so nothing waits."""
        pending: asyncio.Queue = asyncio.Queue()
        status = "200"
        pumper = asyncio.get_running_loop().create_task(self._pump(it, pending))
        try:
            batch, is_first, done = [first], True, False
            while not done:
                payloads = []
                for chunk in batch:
                    if chunk is None:
                        done = True
                        break
                    if isinstance(chunk, Exception):
                        raise chunk
                    out.account(chunk)
                    payloads += [sse(p) for p in renderer.chunks(chunk, is_first)]
                    is_first = False
                if payloads:
                    yield b"".join(payloads)
                if not done:
                    batch = [await pending.get()]
                    while not pending.empty():
                        batch.append(pending.get_nowait())
            if include_usage:
                yield sse(renderer.usage_chunk(out.usage()))
        except asyncio.CancelledError:
            status = "499"  # client went away
            pumper.cancel()
            gen.cancel()
            raise
        except Exception as e:
            status = "500"
            yield sse(_server_error(e, renderer.id).body())
        finally:
            out.finish(status)
        yield SSE_DONE

    # ---- endpoints --------------------------------------------------------------------

    @app.get("/health")
    async def health(self) -> JSONResponse:
        try:
            gpu_type = self._choose({"prefix_hashes": []})
            info = await asyncio.wait_for((self.fleet.get(gpu_type) or self.llm).health.remote(), timeout=10)
            return JSONResponse({"status": "ok", "replica": info})
        except Exception as e:
            return JSONResponse(
                APIError(503, f"no healthy replica: {type(e).__name__}: {e}", type="server_error",
                         code="unhealthy").body(),
                status_code=503,
            )

    @app.get("/greencache/status", responses=ERROR_RESPONSES)
    async def status(self) -> JSONResponse:
        """The carbon autoscaler's last decision and totals (an operator's view; API key applies)."""
        if self.autoscaler is None:
            raise APIError(404, "this deployment runs without the carbon autoscaler", code="not_found")
        try:
            st = await asyncio.wait_for(self.autoscaler.status.remote(), timeout=10)
        except Exception as e:
            raise APIError(503, f"the autoscaler did not answer: {type(e).__name__}", type="server_error",
                           code="unavailable") from None
        return JSONResponse({"last": st["last"], "cycles": st["cycles"]})

    @app.get("/metrics")
    async def metrics(self) -> Response:
        try:
            self.store_metrics.snapshot = await asyncio.wait_for(get_or_create_hub().snapshot.remote(), timeout=2)
        except Exception:  # keep serving the serving metrics; store metrics stay at last value
            logger.debug("telemetry hub unavailable", exc_info=True)
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/v1/models", responses=ERROR_RESPONSES)
    async def models(self) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [self._model_card()]})

    @app.get("/v1/models/{model_id:path}", responses=ERROR_RESPONSES)
    async def model(self, model_id: str) -> JSONResponse:
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

    def _completion_tokens(self, req: CompletionRequest) -> tuple[list[int], int]:
        """(prompt token ids, max_tokens) of a completion request, length-checked."""
        if isinstance(req.prompt, str):
            self._check_chars(len(req.prompt), "prompt")
            token_ids = self.tokenizer.encode(req.prompt, add_special_tokens=False)
        else:
            bad = next((t for t in req.prompt if not 0 <= t < self.vocab_size), None)
            if bad is not None:
                raise APIError(400, f"token id {bad} is outside the vocabulary [0, {self.vocab_size})",
                               param="prompt", code="invalid_value")
            token_ids = list(req.prompt)
        max_tokens = req.max_tokens if req.max_tokens is not None else 16
        self._check_length(len(token_ids), max_tokens, "max_tokens", "prompt")
        return token_ids, max_tokens

    def _chat_tokens(self, req: ChatCompletionRequest) -> tuple[list[int], int]:
        """(prompt token ids through the chat template, max_tokens) of a chat request, length-checked."""
        messages = [{"role": m.role if m.role != "developer" else "system", "content": m.text()}
                    for m in req.messages]
        self._check_chars(sum(len(m["content"]) for m in messages), "messages")
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
        return token_ids, max_tokens

    async def _generate(self, req, endpoint: str, tokens, renderer_cls) -> Response:
        """The shared body of the generation endpoints: check the model, tokenize (off the event
        loop: a large prompt must not stall other streams), run."""
        arrival = time.monotonic()
        try:
            self._check_model(req.model)
            token_ids, max_tokens = await asyncio.to_thread(tokens, req)
        except APIError as e:
            self.metrics.requests.labels(endpoint, str(e.status)).inc()
            raise
        renderer = renderer_cls(self.model_name)
        return await self._run(
            self._engine_request(renderer.id, token_ids, self._sampling(req, max_tokens)), req,
            endpoint=endpoint, renderer=renderer, arrival=arrival,
        )

    @app.post("/v1/completions", responses=ERROR_RESPONSES)
    async def completions(self, body: CompletionRequest) -> Response:
        return await self._generate(body, "/v1/completions", self._completion_tokens, CompletionRenderer)

    @app.post("/v1/chat/completions", responses=ERROR_RESPONSES)
    async def chat_completions(self, body: ChatCompletionRequest) -> Response:
        return await self._generate(body, "/v1/chat/completions", self._chat_tokens, ChatRenderer)


def _max_token_chars(tokenizer) -> int:
    """The most characters any single token of `tokenizer` decodes to (at least 1)."""
    longest = 1
    for i in range(len(tokenizer)):
        try:
            longest = max(longest, len(tokenizer.decode([i])))
        except Exception:  # ids the tokenizer cannot decode alone
            continue
    return longest
