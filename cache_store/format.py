"""KV chunk keys and the on-store value format.

Key = `<namespace>:<chain hash>` where `h_i = H(h_{i-1} ‖ token ids of chunk i)`. The namespace
hashes everything that makes KV bytes mean something (model identity, a fingerprint of its
weights, dtype, layers, KV heads, head size, block size, chunk size, parallel rank, format
version), so one model's KV can never be loaded into another, nor a changed checkpoint's into
the new one: a different namespace is simply a different key.

Value = fixed header + shape + raw tensor bytes:

    magic "GCKV" | version u16 | dtype u8 | ndim u8 | namespace digest 16B | key digest 16B
    | payload length u64 | MAC 16B | shape: ndim × u32 | payload

MAC = keyed BLAKE3(K, every header field before it ‖ shape ‖ payload), first 16 bytes, where
K = BLAKE3 derive-key("GreenCache 2026 KV chunk MAC", deployment secret). Keyed BLAKE3 is a PRF,
so a valid MAC cannot be made without K; it was chosen over HMAC-SHA256 (format version 2) for
speed, since every byte of every loaded chunk is checked before the engine may use it: 7.5 MiB
took 3.8 ms with HMAC-SHA256 and 0.8 ms with BLAKE3 on this project's 2-core test machine, and
a real model's KV is a hundred times larger per token. The secret lives outside the store (a file only the deployment's processes read), so
whoever can write to the Redis or a disk directory but lacks the secret cannot make an engine
load KV of their choosing: a forged, corrupt, truncated or foreign value fails the check. The
header repeats the namespace and key digests so a value written under one key and found under
another is rejected too. Nothing is pickled: a shared Redis must never be able to run code in a
replica. `decode_chunk` raises `ChunkError` for any mismatch; callers treat that as a miss.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import struct
from dataclasses import dataclass
from typing import Sequence

import numpy as np

MAGIC = b"GCKV"
FORMAT_VERSION = 3  # 1: CRC32 instead of the MAC; 2: HMAC-SHA256
_PREFIX = struct.Struct("<4sHBB16s16sQ")  # everything before the MAC
MAC_BYTES = 16
_HEADER_SIZE = _PREFIX.size + MAC_BYTES
PREFIX_BYTES = _PREFIX.size  # header bytes the MAC covers before the shape
MIN_MAC_KEY_BYTES = 16

# Stable codes; never renumber.
DTYPE_CODES = {"bfloat16": 1, "float16": 2, "float32": 3, "float8_e4m3fn": 4, "uint8": 5}
CODE_DTYPES = {v: k for k, v in DTYPE_CODES.items()}


class ChunkError(ValueError):
    """A stored value that must not be used (corrupt, truncated, foreign or mismatched)."""


@dataclass(frozen=True)
class Namespace:
    """Everything that fixes the meaning of KV bytes."""

    model: str
    dtype: str
    num_layers: int
    num_kv_heads: int
    head_size: int
    block_size: int
    chunk_tokens: int
    rank: int = 0
    weights: str = ""  # fingerprint of the weight files (keys.py: weights_fingerprint)

    @functools.cached_property
    def id(self) -> str:
        spec = (
            f"v{FORMAT_VERSION}|{self.model}|W{self.weights}|{self.dtype}|L{self.num_layers}|H{self.num_kv_heads}|"
            f"D{self.head_size}|B{self.block_size}|C{self.chunk_tokens}|R{self.rank}"
        )
        return hashlib.blake2b(spec.encode(), digest_size=8).hexdigest()

    @functools.cached_property
    def digest(self) -> bytes:
        return bytes.fromhex(self.id).ljust(16, b"\0")


def chunk_keys(namespace: Namespace, token_ids: Sequence[int], max_tokens: int | None = None) -> list[str]:
    """Keys of the full chunks of `token_ids` (only the first `max_tokens` tokens count)."""
    return chunk_keys_in(namespace.id, namespace.chunk_tokens, token_ids, max_tokens)


def chunk_keys_in(ns: str, chunk_tokens: int, token_ids: Sequence[int], max_tokens: int | None = None) -> list[str]:
    """`chunk_keys` for a namespace known only by its id (the part of a stored key before ':'),
    as a tool outside the engine sees it."""
    n = len(token_ids) if max_tokens is None else min(len(token_ids), max_tokens)
    c = chunk_tokens
    keys = []
    prev = b""
    arr = np.asarray(token_ids[: (n // c) * c], dtype=np.int64)
    for i in range(n // c):
        h = hashlib.blake2b(prev, digest_size=16)
        h.update(arr[i * c : (i + 1) * c].tobytes())
        prev = h.digest()
        keys.append(f"{ns}:{prev.hex()}")
    return keys


def _key_digest(key: str) -> bytes:
    return hashlib.blake2b(key.encode(), digest_size=16).digest()


MAC_CONTEXT = "GreenCache 2026 KV chunk MAC"


@functools.lru_cache(maxsize=8)
def _blake3_key(mac_key: bytes) -> bytes:
    """The 32-byte BLAKE3 key derived from a deployment secret of any length (≥ 16 bytes)."""
    from blake3 import blake3

    return blake3(mac_key, derive_key_context=MAC_CONTEXT).digest()


def chunk_mac(mac_key: bytes, prefix: bytes, shape_bytes: bytes, payload) -> bytes:
    """The MAC a chunk carries over its header prefix, shape and payload (module docstring)."""
    from blake3 import blake3

    if len(mac_key) < MIN_MAC_KEY_BYTES:
        raise ValueError(f"the chunk MAC key must be at least {MIN_MAC_KEY_BYTES} bytes")
    m = blake3(prefix, key=_blake3_key(bytes(mac_key)))
    m.update(shape_bytes)
    m.update(payload)
    return m.digest(MAC_BYTES)


def encode_chunk(namespace: Namespace, key: str, dtype: str, shape: Sequence[int], payload: bytes, *,
                 mac_key: bytes) -> bytes:
    """Header + payload. `payload` is the tensor's raw bytes in C order; `mac_key` the
    deployment's secret."""
    if dtype not in DTYPE_CODES:
        raise ValueError(f"unsupported dtype {dtype!r}; known: {sorted(DTYPE_CODES)}")
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, DTYPE_CODES[dtype], len(shape), namespace.digest, _key_digest(key),
                          len(payload))
    shape_bytes = struct.pack(f"<{len(shape)}I", *shape)
    return prefix + chunk_mac(mac_key, prefix, shape_bytes, payload) + shape_bytes + payload


def decode_chunk(namespace: Namespace, key: str, value: bytes, expect_shape: Sequence[int] | None = None,
                 expect_dtype: str | None = None, *, mac_key: bytes) -> tuple[str, tuple[int, ...], memoryview]:
    """Validate `value` as the chunk stored under `key`; return (dtype, shape, payload view)."""
    if len(value) < _HEADER_SIZE:
        raise ChunkError(f"truncated header ({len(value)} bytes)")
    magic, version, dcode, ndim, ns_digest, key_digest, plen = _PREFIX.unpack_from(value, 0)
    if magic != MAGIC:
        raise ChunkError("bad magic: not a GreenCache chunk")
    if version != FORMAT_VERSION:
        raise ChunkError(f"format version {version}, expected {FORMAT_VERSION}")
    if ns_digest != namespace.digest:
        raise ChunkError("chunk belongs to another namespace (model/weights/dtype/shape)")
    if key_digest != _key_digest(key):
        raise ChunkError("chunk was stored under another key")
    off = _HEADER_SIZE
    if len(value) < off + 4 * ndim:
        raise ChunkError("truncated shape")
    shape_bytes = bytes(value[off:off + 4 * ndim])
    shape = struct.unpack(f"<{ndim}I", shape_bytes)
    off += 4 * ndim
    payload = memoryview(value)[off:]
    if len(payload) != plen:
        raise ChunkError(f"payload is {len(payload)} bytes, header says {plen}")
    expected = chunk_mac(mac_key, bytes(value[:_PREFIX.size]), shape_bytes, payload)
    if not hmac.compare_digest(expected, bytes(value[_PREFIX.size:_HEADER_SIZE])):
        raise ChunkError("MAC mismatch: corrupt, or not written with this deployment's secret")
    dtype = CODE_DTYPES.get(dcode)
    if dtype is None:
        raise ChunkError(f"unknown dtype code {dcode}")
    if expect_shape is not None and tuple(expect_shape) != tuple(shape):
        raise ChunkError(f"shape {shape}, expected {tuple(expect_shape)}")
    if expect_dtype is not None and expect_dtype != dtype:
        raise ChunkError(f"dtype {dtype}, expected {expect_dtype}")
    return dtype, tuple(shape), payload
