"""Chunk keys and values: a value is only accepted under its own key, namespace and bytes."""

from __future__ import annotations

import numpy as np
import pytest

from cache_store.format import _HEADER_SIZE, MAC_BYTES, ChunkError, Namespace, chunk_keys, decode_chunk, encode_chunk

NS = Namespace("demo", "bfloat16", 4, 2, 128, 16, 256)
KEY = b"k" * 32  # the deployment's MAC key
OTHER_KEY = b"x" * 32


def _chunk(key: str, ns: Namespace = NS, mac_key: bytes = KEY, payload: bytes | None = None) -> bytes:
    payload = payload if payload is not None else np.arange(4 * 256 * 2 * 8, dtype=np.uint16).tobytes()
    return encode_chunk(ns, key, "bfloat16", (4, 256, 2, 8), payload, mac_key=mac_key)


def _decode(ns, key, value, **kw):
    return decode_chunk(ns, key, value, mac_key=KEY, **kw)


def test_keys_are_a_prefix_chain():
    a = chunk_keys(NS, list(range(1000)))
    b = chunk_keys(NS, list(range(768)) + [5] * 300)
    assert len(a) == 3  # only full chunks
    assert a[:3] == b[:3]
    c = chunk_keys(NS, [9] + list(range(1, 1000)))
    assert all(x != y for x, y in zip(a, c))  # a change early changes every later key
    assert chunk_keys(NS, list(range(1000)), max_tokens=600) == a[:2]


def test_namespace_binds_model_shape_and_rank():
    other = [Namespace("other", "bfloat16", 4, 2, 128, 16, 256), Namespace("demo", "float16", 4, 2, 128, 16, 256),
             Namespace("demo", "bfloat16", 5, 2, 128, 16, 256), Namespace("demo", "bfloat16", 4, 2, 128, 16, 256, rank=1)]
    ids = {NS.id} | {o.id for o in other}
    assert len(ids) == 5
    assert chunk_keys(NS, list(range(256))) != chunk_keys(other[0], list(range(256)))


def test_roundtrip():
    key = chunk_keys(NS, list(range(256)))[0]
    dtype, shape, payload = _decode(NS, key, _chunk(key), expect_shape=(4, 256, 2, 8), expect_dtype="bfloat16")
    assert (dtype, shape) == ("bfloat16", (4, 256, 2, 8))
    assert bytes(payload) == np.arange(4 * 256 * 2 * 8, dtype=np.uint16).tobytes()


def test_a_chunk_forged_without_the_secret_is_rejected():
    """Whoever can write to the store but lacks the deployment's key cannot make a value an
    engine accepts, however well-formed: wrong content, wrong shape or another key's MAC."""
    key = chunk_keys(NS, list(range(256)))[0]
    with pytest.raises(ChunkError, match="MAC"):
        _decode(NS, key, _chunk(key, mac_key=OTHER_KEY))
    good = bytearray(_chunk(key))
    forged = bytearray(_chunk(key, payload=b"\x00" * (4 * 256 * 2 * 8 * 2)))  # right layout, wrong KV
    mac = slice(_HEADER_SIZE - MAC_BYTES, _HEADER_SIZE)
    forged[mac] = good[mac]  # even with the MAC lifted from a genuine chunk
    with pytest.raises(ChunkError, match="MAC"):
        _decode(NS, key, bytes(forged))
    reshaped = bytearray(good)
    reshaped[_HEADER_SIZE:_HEADER_SIZE + 4] = (8).to_bytes(4, "little")  # shape changed after the MAC was made
    with pytest.raises(ChunkError):
        _decode(NS, key, bytes(reshaped))


def test_old_format_and_changed_weights_are_other_namespaces():
    key = chunk_keys(NS, list(range(256)))[0]
    v = bytearray(_chunk(key))
    v[4:6] = (1).to_bytes(2, "little")  # a version-1 (CRC) chunk left from before
    with pytest.raises(ChunkError, match="version"):
        _decode(NS, key, bytes(v))
    retrained = Namespace("demo", "bfloat16", 4, 2, 128, 16, 256, weights="0123456789abcdef")
    assert retrained.id != NS.id and chunk_keys(retrained, list(range(256))) != chunk_keys(NS, list(range(256)))


@pytest.mark.parametrize("damage", ["flip", "truncate", "header", "magic", "empty", "append"])
def test_corruption_is_rejected(damage):
    key = chunk_keys(NS, list(range(256)))[0]
    v = bytearray(_chunk(key))
    if damage == "flip":
        v[-100] ^= 0xFF
    elif damage == "truncate":
        v = v[: len(v) // 2]
    elif damage == "header":
        v = v[:20]
    elif damage == "magic":
        v[0:4] = b"PKL\x80"
    elif damage == "empty":
        v = bytearray()
    elif damage == "append":
        v += b"x"
    with pytest.raises(ChunkError):
        _decode(NS, key, bytes(v))


def test_foreign_namespace_and_wrong_key_rejected():
    key0, key1 = chunk_keys(NS, list(range(512)))
    with pytest.raises(ChunkError, match="another key"):
        _decode(NS, key1, _chunk(key0))
    other = Namespace("other-model", "bfloat16", 4, 2, 128, 16, 256)
    with pytest.raises(ChunkError, match="namespace"):
        _decode(NS, key0, _chunk(key0, other))


def test_shape_and_dtype_expectations():
    key = chunk_keys(NS, list(range(256)))[0]
    with pytest.raises(ChunkError, match="shape"):
        _decode(NS, key, _chunk(key), expect_shape=(4, 256, 2, 16))
    with pytest.raises(ChunkError, match="dtype"):
        _decode(NS, key, _chunk(key), expect_dtype="float16")
