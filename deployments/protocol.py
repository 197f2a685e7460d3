"""OpenAI request schemas (the subset GreenCache serves) and OpenAI-style errors.

Every client mistake becomes an `APIError`, rendered as
`{"error": {"message", "type", "param", "code"}}` with a 4xx status, the shape the official
OpenAI SDKs parse. Unknown request fields are ignored, as vLLM's own server does, so clients
that send newer parameters keep working.
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


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
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class StreamOptions(BaseModel):
    include_usage: bool = Field(False, description="Send a final chunk with token usage.")


class _SamplingFields(BaseModel):
    """Fields shared by completions and chat completions."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(description="Served model name, as listed by /v1/models.")
    max_tokens: Optional[int] = Field(None, description="Most tokens to generate.")
    temperature: float = Field(1.0, ge=0.0, le=2.0, description="Sampling temperature; 0 is greedy.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    top_k: Optional[int] = Field(None, description="vLLM extension: top-k sampling (-1 or None = off).")
    n: int = Field(1, description="Number of choices; GreenCache serves n=1.")
    stream: bool = Field(False, description="Stream server-sent events.")
    stream_options: Optional[StreamOptions] = None
    stop: Optional[Union[str, list[str]]] = Field(None, description="Up to 4 stop strings.")
    seed: Optional[int] = Field(None, description="Sampling seed.")
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    ignore_eos: bool = Field(False, description="vLLM extension: keep generating past EOS.")
    user: Optional[str] = None

    @field_validator("n")
    @classmethod
    def _n_is_one(cls, v: int) -> int:
        if v != 1:
            raise ValueError("only n=1 is supported; send several requests for more choices")
        return v

    @field_validator("max_tokens")
    @classmethod
    def _max_tokens_positive(cls, v: Optional[int]) -> Optional[int]:
        if v is not None and v < 1:
            raise ValueError(f"max_tokens must be at least 1, got {v}")
        return v

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v):
        if isinstance(v, list) and len(v) > 4:
            raise ValueError("at most 4 stop sequences are allowed")
        return v

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class CompletionRequest(_SamplingFields):
    prompt: Union[str, list[int], list[str]] = Field(
        description="A string, a list of token ids, or a list holding one string."
    )
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _one_prompt(cls, v):
        if isinstance(v, list):
            if len(v) == 0:
                raise ValueError("prompt must not be empty")
            if all(isinstance(x, str) for x in v):
                if len(v) != 1:
                    raise ValueError("batched prompts are not supported; send one prompt per request")
                return v[0]
        if isinstance(v, str) and v == "":
            raise ValueError("prompt must not be empty")
        return v

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, v: bool) -> bool:
        if v:
            raise ValueError("echo is not supported")
        return v


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[TextPart], None] = None
    name: Optional[str] = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, description="The conversation so far.")
    max_completion_tokens: Optional[int] = Field(None, description="Newer name for max_tokens.")

    @field_validator("max_completion_tokens")
    @classmethod
    def _mct_positive(cls, v: Optional[int]) -> Optional[int]:
        if v is not None and v < 1:
            raise ValueError(f"max_completion_tokens must be at least 1, got {v}")
        return v


def parse_request(model_cls: type[BaseModel], payload: Any) -> Any:
    """Validate `payload` into `model_cls`, turning the first problem into a 400 APIError."""
    if not isinstance(payload, dict):
        raise APIError(400, "request body must be a JSON object", code="invalid_request_body")
    try:
        return model_cls.model_validate(payload)
    except ValidationError as e:
        err = e.errors()[0]
        param = ".".join(str(p) for p in err.get("loc", ())) or None
        msg = err.get("msg", "invalid value")
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        accepted = ""
        # Pydantic names Union branches in the location ("prompt.str", "stop.list[str]");
        # report the field a client can fix and what it accepts.
        if param and "." in param:
            head, _, rest = param.partition(".")
            if not rest[:1].isdigit() and head != "messages":
                field = model_cls.model_fields.get(head)
                accepted = field.description if field is not None and field.description else ""
                param = head
        if err.get("type") == "missing":
            msg = f"missing required parameter '{param}'"
            code = "missing_required_parameter"
        else:
            msg = f"invalid value for '{param}': {msg}" + (f" (accepted: {accepted})" if accepted else "")
            code = "invalid_value"
        raise APIError(400, msg, param=param, code=code) from None
