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
