"""Every malformed request gets an OpenAI-style error with a 4xx status that names the field to
fix, and serving goes on: first the validation alone, then against a running server."""

from __future__ import annotations

import json

import httpx
import pytest

from deployments.protocol import APIError, ChatCompletionRequest, CompletionRequest, parse_request


# ---- validation alone (no server) --------------------------------------------------------------
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


# ---- against a running server -------------------------------------------------------------------
def _post(server, path, *, body=None, content=None, headers=None, auth=True):
    h = {"Content-Type": "application/json"}
    if auth:
        h["Authorization"] = f"Bearer {server.api_key}"
    h.update(headers or {})
    return httpx.post(server.url + path, json=body, content=content, headers=h, timeout=60)


def _assert_error(r: httpx.Response, status: int, param=None, code=None):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert isinstance(err["message"], str) and err["message"]
    assert err["type"] == "invalid_request_error"
    if param is not None:
        assert err["param"] == param
    if code is not None:
        assert err["code"] == code


def _still_serving(server):
    r = _post(server, "/v1/completions", body={"model": server.model, "prompt": "still alive?", "max_tokens": 2})
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["completion_tokens"] >= 1


def CASES(server):
    long_prompt = "word " * (server.max_model_len + 50)
    return [
        # (name, path, kwargs, status, param, code)
        ("malformed json", "/v1/completions", dict(content=b'{"model": "x", "prompt": '), 400, None, "invalid_json"),
        ("not an object", "/v1/chat/completions", dict(content=b"[1, 2]"), 400, None, None),
        ("missing prompt", "/v1/completions", dict(body={"model": server.model}), 400, "prompt", "missing_required_parameter"),
        ("missing model", "/v1/completions", dict(body={"prompt": "hi"}), 400, "model", "missing_required_parameter"),
        ("missing messages", "/v1/chat/completions", dict(body={"model": server.model}), 400, "messages", None),
        ("empty messages", "/v1/chat/completions", dict(body={"model": server.model, "messages": []}), 400, "messages", None),
        ("bad role", "/v1/chat/completions",
         dict(body={"model": server.model, "messages": [{"role": "wizard", "content": "x"}]}), 400, "messages.0.role", None),
        ("mistyped prompt", "/v1/completions", dict(body={"model": server.model, "prompt": 42}), 400, "prompt", "invalid_value"),
        ("mistyped max_tokens", "/v1/completions",
         dict(body={"model": server.model, "prompt": "hi", "max_tokens": "ten"}), 400, "max_tokens", "invalid_value"),
        ("mistyped temperature", "/v1/chat/completions",
         dict(body={"model": server.model, "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}),
         400, "temperature", None),
        ("temperature out of range", "/v1/completions",
         dict(body={"model": server.model, "prompt": "hi", "temperature": 7}), 400, "temperature", None),
        ("unknown model", "/v1/completions", dict(body={"model": "gpt-17", "prompt": "hi"}), 404, "model", "model_not_found"),
        ("unknown model chat", "/v1/chat/completions",
         dict(body={"model": "gpt-17", "messages": [{"role": "user", "content": "x"}]}), 404, "model", "model_not_found"),
        ("negative max_tokens", "/v1/completions",
         dict(body={"model": server.model, "prompt": "hi", "max_tokens": -5}), 400, "max_tokens", None),
        ("zero max_tokens", "/v1/chat/completions",
         dict(body={"model": server.model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 0}), 400, "max_tokens", None),
        ("absurd max_tokens", "/v1/completions",
         dict(body={"model": server.model, "prompt": "hi", "max_tokens": 10**15}), 400, "max_tokens", "context_length_exceeded"),
        ("prompt + max_tokens beyond window", "/v1/completions",
         dict(body={"model": server.model, "prompt": [7] * (server.max_model_len // 2), "max_tokens": server.max_model_len}),
         400, "max_tokens", "context_length_exceeded"),
        ("prompt alone beyond window", "/v1/chat/completions",
         dict(body={"model": server.model, "messages": [{"role": "user", "content": long_prompt}]}),
         400, "messages", "context_length_exceeded"),
        ("token id outside vocabulary", "/v1/completions",
         dict(body={"model": server.model, "prompt": [1, 2, 10**9]}), 400, "prompt", "invalid_value"),
        ("n > 1", "/v1/completions", dict(body={"model": server.model, "prompt": "hi", "n": 3}), 400, "n", None),
        ("oversized body", "/v1/completions",
         dict(body={"model": server.model, "prompt": "x" * (server.max_body_bytes + 10)}), 413, None, "request_too_large"),
        # inputs vLLM's own server answers with a 400 and a naive server with a 500
        ("seed beyond int64", "/v1/completions",
         dict(body={"model": server.model, "prompt": "hi", "seed": 18446744073709551617}), 400, "seed", "invalid_value"),
        ("empty stop string", "/v1/completions",
         dict(body={"model": server.model, "prompt": "hi", "stop": [""]}), 400, "stop", "invalid_value"),
        ("prompt nested 5000 deep", "/v1/completions",
         dict(content=b'{"model": "m", "prompt": ' + b"[" * 5000 + b"]" * 5000 + b"}"), 400, None, "invalid_json"),
        ("unpaired surrogate", "/v1/completions",
         dict(content=('{"model": "%s", "prompt": "a\\ud800b"}' % server.model).encode()), 400, "prompt", "invalid_value"),
        ("NaN temperature", "/v1/completions",
         dict(content=('{"model": "%s", "prompt": "hi", "temperature": NaN}' % server.model).encode()),
         400, "temperature", "invalid_value"),
        ("invalid UTF-8", "/v1/completions",
         dict(content=b'{"model": "x", "prompt": "\xff"}'), 400, None, "invalid_json"),
        # fields GreenCache does not implement: refused by name, never silently ignored
        ("logprobs", "/v1/completions", dict(body={"model": server.model, "prompt": "hi", "logprobs": 2}),
         400, "logprobs", "invalid_value"),
        ("tools", "/v1/chat/completions",
         dict(body={"model": server.model, "messages": [{"role": "user", "content": "x"}],
                    "tools": [{"type": "function", "function": {"name": "f"}}]}), 400, "tools", "invalid_value"),
        ("response_format", "/v1/chat/completions",
         dict(body={"model": server.model, "messages": [{"role": "user", "content": "x"}],
                    "response_format": {"type": "json_object"}}), 400, "response_format", "invalid_value"),
        ("logit_bias", "/v1/completions", dict(body={"model": server.model, "prompt": "hi", "logit_bias": {"5": 10}}),
         400, "logit_bias", "invalid_value"),
    ]


N_CASES = 31


@pytest.mark.parametrize("index", range(N_CASES))
def test_bad_request_gets_openai_error(greencache_server, index):
    cases = CASES(greencache_server)
    name, path, kwargs, status, param, code = cases[index]
    r = _post(greencache_server, path, **kwargs)
    _assert_error(r, status, param, code)


def test_case_count_matches():
    class S:  # the parametrisation above must cover every case
        max_model_len, max_body_bytes, model = 1024, 1024, "m"
    assert len(CASES(S)) == N_CASES


def test_oversized_chunked_body_without_content_length(greencache_server):
    big = json.dumps({"model": greencache_server.model, "prompt": "y" * (greencache_server.max_body_bytes * 2)}).encode()

    def chunks():
        for i in range(0, len(big), 8192):
            yield big[i : i + 8192]

    r = httpx.post(
        greencache_server.url + "/v1/completions",
        content=chunks(),
        headers={"Authorization": f"Bearer {greencache_server.api_key}", "Content-Type": "application/json"},
        timeout=60,
    )
    _assert_error(r, 413, code="request_too_large")


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "Basic dGVzdA=="}],
    ids=["missing", "wrong", "not-bearer"],
)
def test_api_key_required(greencache_server, headers):
    for path, method, body in [
        ("/v1/completions", "POST", {"model": greencache_server.model, "prompt": "hi"}),
        ("/v1/chat/completions", "POST", {"model": greencache_server.model, "messages": [{"role": "user", "content": "x"}]}),
        ("/v1/models", "GET", None),
    ]:
        r = httpx.request(method, greencache_server.url + path, json=body, headers=headers, timeout=30)
        _assert_error(r, 401, code="invalid_api_key")


def test_unknown_route_is_openai_404(greencache_server):
    r = httpx.get(greencache_server.url + "/v1/engines", timeout=30,
                  headers={"Authorization": f"Bearer {greencache_server.api_key}"})
    _assert_error(r, 404)
    # without a key, nothing under /v1 tells which routes exist
    _assert_error(httpx.get(greencache_server.url + "/v1/engines", timeout=30), 401, code="invalid_api_key")


def test_server_keeps_serving_after_every_bad_input(greencache_server):
    for name, path, kwargs, status, _, _ in CASES(greencache_server):
        r = _post(greencache_server, path, **kwargs)
        assert r.status_code == status, (name, r.text)
        _still_serving(greencache_server)


def test_client_disconnect_mid_stream_does_not_hurt(greencache_server):
    # Open a long stream, read one event, drop the connection; the engine must abort the
    # request and keep serving others.
    with httpx.stream(
        "POST",
        greencache_server.url + "/v1/completions",
        json={"model": greencache_server.model, "prompt": "go on", "max_tokens": 500, "stream": True,
              "ignore_eos": True},
        headers={"Authorization": f"Bearer {greencache_server.api_key}"},
        timeout=60,
    ) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: "):
                break
    _still_serving(greencache_server)
