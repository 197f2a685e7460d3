"""OpenAI request schemas (the subset GreenCache serves) and OpenAI-style errors.

The request models are the FastAPI body types of the endpoints, so `/openapi.json` documents
every body, bound and error. Every client mistake becomes an `APIError`, rendered as
`{"error": {"message", "type", "param", "code"}}` with a 4xx status, the shape the official
OpenAI SDKs parse, naming the field to fix. Bounds follow vLLM's own server (seed within
int64, non-empty stop strings, ...). OpenAI fields GreenCache does not implement (`logprobs`,
`tools`, `response_format`, `logit_bias`, ...) are refused by name when set to anything that
would change the answer; other unknown fields are ignored, as vLLM's server does, so clients
that send newer parameters keep working. Floats must be finite and strings valid Unicode.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_STOP_SEQUENCES = 4


class APIError(Exception):
    """A request error with its HTTP status and OpenAI error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: Optional[str] = None,
        code: Optional[str] = None,
        headers: Optional[dict[str, str]] = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str] = None
    code: Optional[str] = None


class ErrorResponse(BaseModel):
    """What every error answer carries (OpenAI's shape)."""

    error: ErrorDetail


def _valid_unicode(s: str) -> str:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (it holds an unpaired surrogate)") from None
    return s


Text = Annotated[str, AfterValidator(_valid_unicode)]


# OpenAI fields GreenCache does not implement, with the values that mean "not used".
_UNSUPPORTED: dict[str, tuple] = {
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "parallel_tool_calls": (None,),
    "response_format": (None, {"type": "text"}),
    "logit_bias": (None, {}),
    "best_of": (None, 1),
    "suffix": (None, ""),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "guided_json": (None,),
    "guided_regex": (None,),
    "guided_choice": (None,),
    "guided_grammar": (None,),
}


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = Field(False, description="Send a final chunk with token usage.")


class _SamplingFields(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    model: Text = Field(description="Served model name, as listed by /v1/models.")
    max_tokens: Optional[int] = Field(None, ge=1, description="Most tokens to generate.")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: Optional[int] = Field(None, ge=-1, description="vLLM extension: top-k sampling (-1, 0 or None = off).")
    n: Literal[1] = Field(1, description="Number of choices; GreenCache serves n=1 (send several requests).")
    stream: bool = Field(False, description="Stream server-sent events.")
    stream_options: Optional[StreamOptions] = None
    stop: Optional[Union[Text, list[Text]]] = Field(None, description="Up to 4 non-empty stop strings.")
    seed: Optional[int] = Field(None, ge=INT64_MIN, le=INT64_MAX, description="Sampling seed (a 64-bit integer).")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    ignore_eos: bool = Field(False, description="vLLM extension: keep generating past EOS.")
    user: Optional[Text] = None

    @model_validator(mode="before")
    @classmethod
    def _refuse_unimplemented(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for name, unused in _UNSUPPORTED.items():
                if name in data and data[name] not in unused:
                    raise ValueError(f"GreenCache does not implement '{name}'; leave it out [param={name}]")
        return data

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        if any(s == "" for s in stops):
            raise ValueError("stop sequences must not be empty")
        return v

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class CompletionRequest(_SamplingFields):
    prompt: Union[Text, list[int], list[Text]] = Field(
        description="A string, a list of token ids, or a list holding one string."
    )
    echo: Literal[False] = Field(False, description="Not supported: must be false.")

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list):
            if len(v) == 0:
                raise ValueError("prompt must not be empty")
            if all(isinstance(x, str) for x in v):
                if len(v) != 1:
                    raise ValueError("batched prompts are not supported; send one prompt per request")
                v = v[0]
        if isinstance(v, str) and v == "":
            raise ValueError("prompt must not be empty")
        return v


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[Text, list[TextPart], None] = None
    name: Optional[Text] = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, description="The conversation so far.")
    max_completion_tokens: Optional[int] = Field(None, ge=1, description="Newer name for max_tokens.")


def _param_of(err: dict, model_cls: type[BaseModel]) -> tuple[Optional[str], str]:
    """The field a client can fix, and what it accepts, from one pydantic error."""
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    msg = err.get("msg", "")
    if "[param=" in msg:  # set by _refuse_unimplemented
        return msg.rsplit("[param=", 1)[1].rstrip("]"), ""
    param = ".".join(loc) or None
    # Pydantic names Union branches in the location ("prompt.str", "stop.list[str]");
    # report the field and what it accepts.
    if param and "." in param:
        head, _, rest = param.partition(".")
        if not rest[:1].isdigit() and head != "messages":
            field = model_cls.model_fields.get(head)
            return head, field.description if field is not None and field.description else ""
    return param, ""


def api_error_from_validation(errors: list[dict], model_cls: type[BaseModel]) -> APIError:
    """The first validation problem as a 400 APIError that names the field."""
    if not errors:
        return APIError(400, "invalid request", code="invalid_value")
    err = errors[0]
    if err.get("type") == "json_invalid":
        return APIError(400, f"request body is not valid JSON: {err.get('ctx', {}).get('error', err.get('msg'))}",
                        code="invalid_json")
    param, accepted = _param_of(err, model_cls)
    msg = err.get("msg", "invalid value")
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
    msg = msg.split(" [param=")[0]
    if err.get("type") == "missing":
        if not param:
            return APIError(400, "request body must be a JSON object", code="invalid_request_body")
        return APIError(400, f"missing required parameter '{param}'", param=param, code="missing_required_parameter")
    if param is None:
        if err.get("type") in ("model_type", "model_attributes_type", "dict_type"):
            return APIError(400, "request body must be a JSON object", code="invalid_request_body")
        return APIError(400, msg, code="invalid_value")
    return APIError(400, f"invalid value for '{param}': {msg}" + (f" (accepted: {accepted})" if accepted else ""),
                    param=param, code="invalid_value")


def parse_request(model_cls: type[BaseModel], payload: Any) -> Any:
    """Validate `payload` into `model_cls`, turning the first problem into a 400 APIError."""
    if not isinstance(payload, dict):
        raise APIError(400, "request body must be a JSON object", code="invalid_request_body")
    try:
        return model_cls.model_validate(payload)
    except ValidationError as e:
        raise api_error_from_validation(e.errors(), model_cls) from None
