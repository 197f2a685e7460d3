"""Request validation, without a server: the error a client sees names the field to fix."""

from __future__ import annotations

import pytest

from deployments.protocol import APIError, ChatCompletionRequest, CompletionRequest, parse_request


def test_valid_completion_request():
    r = parse_request(CompletionRequest, {"model": "m", "prompt": ["one prompt"], "stop": "x", "unknown": 1})
    assert r.prompt == "one prompt"
    assert r.stop_list() == ["x"]


@pytest.mark.parametrize(
    "payload,param",
    [
        ({"model": "m"}, "prompt"),
        ({"model": "m", "prompt": ["a", "b"]}, "prompt"),
        ({"model": "m", "prompt": ""}, "prompt"),
        ({"model": "m", "prompt": "a", "stop": ["1", "2", "3", "4", "5"]}, "stop"),
        ({"model": "m", "prompt": "a", "top_p": 0}, "top_p"),
        ({"model": "m", "prompt": "a", "echo": True}, "echo"),
    ],
)
def test_invalid_completion_names_param(payload, param):
    with pytest.raises(APIError) as e:
        parse_request(CompletionRequest, payload)
    assert e.value.status == 400
    assert e.value.param == param
    assert param in e.value.message


def test_chat_content_parts_are_joined():
    r = parse_request(ChatCompletionRequest, {
        "model": "m",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}],
    })
    assert r.messages[0].text() == "ab"


def test_body_must_be_object():
    with pytest.raises(APIError) as e:
        parse_request(ChatCompletionRequest, ["x"])
    assert e.value.status == 400
