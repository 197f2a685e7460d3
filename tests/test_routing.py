"""Prefix-affinity routing across two real replicas."""

from __future__ import annotations

from collections import Counter

import httpx

from deployments.routing import prefix_block_hashes


def _chat(server, messages) -> str:
    r = httpx.post(
        server.url + "/v1/chat/completions",
        headers={"Authorization": f"Bearer {server.api_key}"},
        json={"model": server.model, "messages": messages, "max_tokens": 2},
        timeout=60,
    )
    assert r.status_code == 200, r.text
    return r.headers["x-greencache-replica"]


def _system(i: int) -> str:
    return f"Conversation {i}. " + " ".join(f"fact{i}_{k}" for k in range(60))


def test_shared_prefix_sticks_to_one_replica(greencache_server):
    """Four conversations, their turns interleaved: each turn goes to the replica that served
    its conversation's first turn, so the router remembers several prefixes at once."""
    histories = {conv: [{"role": "system", "content": _system(conv)}, {"role": "user", "content": "first turn"}]
                 for conv in range(4)}
    owners = {conv: _chat(greencache_server, h) for conv, h in histories.items()}
    for turn in range(4):
        for conv in range(4):
            histories[conv] = histories[conv] + [
                {"role": "assistant", "content": f"answer {turn}"},
                {"role": "user", "content": f"follow-up {turn}"},
            ]
            replica = _chat(greencache_server, histories[conv])
            assert replica == owners[conv], f"conversation {conv}, turn {turn}: {replica} != {owners[conv]}"


def test_distinct_prefixes_spread_over_replicas(greencache_server):
    # With no shared prefix the router picks the least-loaded replica (random tie-break), so
    # 16 unrelated conversations must not all land on one replica (p = 2^-15 if random).
    replicas = Counter(
        _chat(greencache_server, [{"role": "user", "content": f"unrelated topic {i} " * 20}]) for i in range(16)
    )
    assert len(replicas) == 2, replicas


def test_prefix_hashes_are_a_chain():
    a = prefix_block_hashes(list(range(100)), 32, 16)
    b = prefix_block_hashes(list(range(100)) + [7, 8, 9], 32, 16)
    c = prefix_block_hashes([1] + list(range(1, 100)), 32, 16)
    assert len(a) == 4  # 3 full blocks + the partial one
    assert a[:3] == b[:3]  # shared full blocks hash alike
    assert a[3] != b[3]  # the partial block differs once extended
    assert all(x != y for x, y in zip(a, c))  # a change in block 0 changes every later hash
    assert len(prefix_block_hashes(list(range(10_000)), 32, 16)) == 16  # bounded work
