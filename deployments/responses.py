"""OpenAI response bodies and stream chunks: one renderer per endpoint.

The replica streams `GenerationChunk` dicts (`text` delta, `num_tokens`, `finish_reason`, ...);
a renderer turns them into what the endpoint's OpenAI clients parse:
- `chunks(chunk, first)`: the SSE payloads for one engine chunk (possibly none);
- `usage_chunk(usage)`: the final chunk of a stream with `stream_options.include_usage`;
- `final(text, finish_reason, usage)`: the whole (non-streamed) response.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Optional


def sse(payload: dict) -> bytes:
    """One server-sent event."""
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


class _Renderer:
    object_final = ""
    object_chunk = ""
    id_prefix = ""

    def __init__(self, model: str) -> None:
        self.id = f"{self.id_prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model

    def _base(self, obj: str) -> dict[str, Any]:
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def usage_chunk(self, usage: dict) -> dict:
        return {**self._base(self.object_chunk), "choices": [], "usage": usage}


class CompletionRenderer(_Renderer):
    object_final = object_chunk = "text_completion"
    id_prefix = "cmpl"

    def chunks(self, chunk: dict, first: bool) -> list[dict]:
        if not chunk.get("text") and not chunk.get("finish_reason"):
            return []
        return [{**self._base(self.object_chunk),
                 "choices": [{"index": 0, "text": chunk.get("text", ""), "logprobs": None,
                              "finish_reason": chunk.get("finish_reason")}]}]

    def final(self, text: str, finish: Optional[str], usage: dict) -> dict:
        return {**self._base(self.object_final),
                "choices": [{"index": 0, "text": text, "logprobs": None, "finish_reason": finish}], "usage": usage}


class ChatRenderer(_Renderer):
    object_final = "chat.completion"
    object_chunk = "chat.completion.chunk"
    id_prefix = "chatcmpl"

    def _delta(self, delta: dict, finish: Optional[str] = None) -> dict:
        return {**self._base(self.object_chunk),
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

    def chunks(self, chunk: dict, first: bool) -> list[dict]:
        out = []
        if first:
            out.append(self._delta({"role": "assistant", "content": ""}))
        if chunk.get("text"):
            out.append(self._delta({"content": chunk["text"]}))
        if chunk.get("finish_reason"):
            out.append(self._delta({}, chunk["finish_reason"]))
        return out

    def final(self, text: str, finish: Optional[str], usage: dict) -> dict:
        return {**self._base(self.object_final),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                             "finish_reason": finish}], "usage": usage}
