"""The connector's copies between chunks and vLLM's paged KV cache, on real tensors.

A chunk is [layers, tokens, kv_heads, C]; each layer of the paged cache is
[num_blocks, kv_heads, block_size, C]. The engine tests (test_kv_reuse.py) see the blocks a
fresh request gets, which are mostly consecutive, and loads that start at a block boundary;
these cover the other cases against a token-by-token reference: scattered blocks, and a load
that starts mid-block (a prefix the engine computed itself), which must leave the tokens before
it untouched.
"""

from __future__ import annotations

import pytest
import torch

from cache_store.connector import GreenCacheConnector, GreenCacheMeta, ChunkTransfer, _runs

LAYERS, HEADS, BS, C, CHUNK = 3, 2, 4, 6, 12  # 3 blocks per chunk


def _connector() -> GreenCacheConnector:
    # Only the copy geometry is exercised: no engine, no store.
    conn = object.__new__(GreenCacheConnector)
    conn.block_size, conn.chunk_tokens = BS, CHUNK
    conn._layer_names = [f"layer{i}" for i in range(LAYERS)]
    conn._kv_caches, conn._save_buf = {}, {}
    return conn


def _cache(fill: bool) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    make = (lambda: torch.randn(20, HEADS, BS, C, generator=g)) if fill else (lambda: torch.zeros(20, HEADS, BS, C))
    return {f"layer{i}": make() for i in range(LAYERS)}


def _token(layer: torch.Tensor, blocks: list[int], p: int) -> torch.Tensor:
    return layer[blocks[p // BS], :, p % BS]


def test_runs_split_block_ids_into_consecutive_runs():
    assert _runs([4, 5, 6, 9, 10, 2], 0) == [(0, 4, 3), (3, 9, 2), (5, 2, 1)]
    assert _runs([4, 5, 6, 9, 10, 2], 2) == [(2, 6, 1), (3, 9, 2), (5, 2, 1)]
    assert _runs([7], 1) == []


@pytest.mark.parametrize("blocks", [[5, 6, 7], [11, 2, 3], [9, 4, 14]])
def test_save_gathers_each_token_of_the_chunk_in_order(blocks):
    conn, cache = _connector(), _cache(fill=True)
    conn.bind_connector_metadata(GreenCacheMeta(saves=[ChunkTransfer("r", ["k"], [0], [blocks])]))
    for name, layer in cache.items():
        conn.save_kv_layer(name, layer, None)
    chunk = torch.stack([conn._save_buf["k"][n] for n in conn._layer_names])
    assert chunk.shape == (LAYERS, CHUNK, HEADS, C)
    for li, name in enumerate(conn._layer_names):
        for p in range(CHUNK):
            assert torch.equal(chunk[li, p], _token(cache[name], blocks, p))
    cache["layer0"].zero_()  # the saved chunk is a copy, not a view of the cache
    assert chunk[0].abs().sum() > 0


@pytest.mark.parametrize("blocks,write_from", [([5, 6, 7], 0), ([11, 2, 3], 0), ([9, 4, 14], 4), ([9, 4, 14], 6),
                                               ([3, 4, 5], 2)])
def test_load_writes_each_token_from_write_from_on_and_nothing_else(blocks, write_from):
    conn, cache = _connector(), _cache(fill=False)
    chunk = torch.randn(LAYERS, CHUNK, HEADS, C)
    conn._copy_in(cache, chunk, blocks, write_from)
    for li, name in enumerate(conn._layer_names):
        for p in range(CHUNK):
            expect = chunk[li, p] if p >= write_from else torch.zeros(HEADS, C)
            assert torch.equal(_token(cache[name], blocks, p), expect), (name, p)
        others = [b for b in range(20) if b not in blocks]
        assert cache[name][others].abs().sum() == 0


def test_save_then_load_round_trips_between_different_blocks():
    conn, src = _connector(), _cache(fill=True)
    conn.bind_connector_metadata(GreenCacheMeta(saves=[ChunkTransfer("r", ["k"], [0], [[8, 1, 2]])]))
    for name, layer in src.items():
        conn.save_kv_layer(name, layer, None)
    chunk = torch.stack([conn._save_buf["k"][n] for n in conn._layer_names])
    dst = _cache(fill=False)
    conn._copy_in(dst, chunk, [15, 16, 3], 0)
    for name in conn._layer_names:
        assert torch.equal(dst[name][[15, 16, 3]], src[name][[8, 1, 2]])
