"""Many concurrent streams through the ingress all complete, each with every token."""

from __future__ import annotations

import asyncio

import openai


def test_eight_concurrent_streams_complete(greencache_server):
    async def one(client: openai.AsyncOpenAI, i: int) -> tuple[int, str | None, int]:
        stream = await client.chat.completions.create(
            model=greencache_server.model,
            messages=[{"role": "user", "content": f"Stream number {i}: say something long."}],
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        chunks, finish, usage_tokens = 0, None, -1
        async for chunk in stream:
            if chunk.usage is not None:
                usage_tokens = chunk.usage.completion_tokens
            for c in chunk.choices:
                if c.delta.content:
                    chunks += 1
                if c.finish_reason:
                    finish = c.finish_reason
        return chunks, finish, usage_tokens

    async def main():
        client = openai.AsyncOpenAI(base_url=greencache_server.url + "/v1", api_key=greencache_server.api_key,
                                    timeout=120)
        try:
            return await asyncio.gather(*(one(client, i) for i in range(8)))
        finally:
            await client.close()

    results = asyncio.run(main())
    assert len(results) == 8
    for chunks, finish, usage_tokens in results:
        assert finish == "length"
        assert usage_tokens == 24
        assert chunks >= 1


def test_client_that_disconnects_mid_stream_is_counted_and_the_server_keeps_serving(greencache_server):
    import re
    import time

    import httpx

    headers = {"Authorization": f"Bearer {greencache_server.api_key}"}
    body = {"model": greencache_server.model, "prompt": "Tell a very long story.", "max_tokens": 400,
            "stream": True, "ignore_eos": True}

    def disconnected() -> float:
        text = httpx.get(greencache_server.url + "/metrics", headers=headers, timeout=30).text
        m = re.search(r'greencache_requests_total\{endpoint="/v1/completions",status="499"\} ([0-9.e+]+)', text)
        return float(m.group(1)) if m else 0.0

    before = disconnected()
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", greencache_server.url + "/v1/completions", json=body, headers=headers) as r:
            assert r.status_code == 200
            lines = r.iter_lines()
            first = next(line for line in lines if line.startswith("data: "))
            assert '"text"' in first
        # leaving the block closes the connection with ~400 tokens still to come
    deadline = time.monotonic() + 30
    while disconnected() < before + 1 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert disconnected() == before + 1

    # the replica and ingress still serve a complete request afterwards
    client = openai.OpenAI(base_url=greencache_server.url + "/v1", api_key=greencache_server.api_key, timeout=120)
    out = client.completions.create(model=greencache_server.model, prompt="Hello", max_tokens=8,
                                    extra_body={"ignore_eos": True})
    assert out.usage.completion_tokens == 8
