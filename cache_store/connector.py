"""GreenCacheConnector: vLLM KV connector that loads and saves prefix chunks through KVStore.

Load with `kv_transfer_config={"kv_connector": "GreenCacheConnector",
"kv_connector_module_path": "cache_store.connector", "kv_role": "kv_both",
"kv_load_failure_policy": "recompute", "kv_connector_extra_config": <store spec>}`
(see `store.build_store` for the spec; `chunk_tokens` sets the chunk size).

Scheduler side (EngineCore process):
    get_num_new_matched_tokens  hash the prompt into chunk keys, ask the store for the longest
                                cached prefix; at least one prompt token is always left to
                                compute (it yields the first output's logits).
    update_state_after_alloc    remember which requests load, and from which token.
    build_connector_meta        per step: load items (new requests with external hits) and
                                save items (prompt chunks whose tokens are now all computed
                                and that the store did not already have).
    request_finished            forget the request.
Worker side (model-runner process):
    start_load_kv               read, validate and copy each chunk into the paged KV cache.
                                A corrupt, truncated or foreign chunk is deleted from the
                                store; its blocks, and a missing chunk's, are reported through
                                `get_block_ids_with_load_errors`; vLLM then recomputes them
                                (policy "recompute"), so a bad chunk costs time, never tokens.
    save_kv_layer               copy this step's chunks' blocks out of each layer.
    wait_for_save               assemble [layers, tokens, kv_heads, 2*head_size] chunks and
                                hand them to a background writer (bounded queue; when full,
                                saves are dropped and counted, never blocking the engine).

Value layout per chunk: all layers of one chunk in one value, so one GET loads a chunk.
"""

from __future__ import annotations

import ctypes
import functools
import json
import logging
import os
import queue
import threading
import time
import warnings
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import torch

from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)

from cache_store.format import ChunkError, Namespace, chunk_keys, decode_chunk, encode_chunk
from cache_store.keys import read_mac_key, weights_fingerprint
from cache_store.local import atomic_write_text, private_dir
from cache_store.store import KVStore, build_store

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.request import Request

logger = logging.getLogger("greencache.connector")

# A load's chunks are read (one store call) and checked this many at a time (`_read_batches`).
READ_BATCH = 8

_TORCH_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

# Live connectors in this process (for in-process engines: tests, benchmarks, introspection).
_INSTANCES: "weakref.WeakSet[GreenCacheConnector]"


def instances() -> list["GreenCacheConnector"]:
    return list(_INSTANCES)


@dataclass
class ChunkTransfer:
    """One request's chunks to load or save in this step."""

    req_id: str
    keys: list[str]
    chunk_indices: list[int]
    # per chunk: the KV cache blocks that hold its tokens (chunk_tokens / block_size of them), and
    # from which of its tokens to write on load (tokens already computed locally are skipped,
    # never overwritten)
    blocks: list[list[int]]
    write_from: list[int] = field(default_factory=list)


@dataclass
class GreenCacheMeta(KVConnectorMetadata):
    loads: list[ChunkTransfer] = field(default_factory=list)
    saves: list[ChunkTransfer] = field(default_factory=list)


@dataclass
class _ReqState:
    keys: list[str]
    prompt_len: int
    block_ids: list[int]
    saved_chunks: int  # chunks [0, saved_chunks) are in the store or queued for it
    load_from: int = 0  # first token to load (tokens before are local prefix-cache hits)
    load_upto: int = 0  # tokens [load_from, load_upto) come from the store


def model_config_digest(hf_config: dict) -> str:
    """A digest of the model's configuration, without where it was loaded from (`_name_or_path`
    and other private keys), so the same model at different paths on different nodes has one
    namespace and shares chunks."""
    import hashlib

    public = {k: v for k, v in hf_config.items() if not k.startswith("_")}
    return hashlib.blake2b(json.dumps(public, sort_keys=True, default=str).encode(), digest_size=6).hexdigest()


def namespace_for(vllm_config: "VllmConfig", chunk_tokens: int, rank: int = 0) -> Namespace:
    mc = vllm_config.model_config
    pc = vllm_config.parallel_config
    cc = vllm_config.cache_config
    dtype = str(mc.dtype).replace("torch.", "") if cc.cache_dtype in (None, "auto") else str(cc.cache_dtype)
    extra = vllm_config.kv_transfer_config
    model_id = extra.get_from_extra_config("namespace_model", None) or mc.model
    weights = extra.get_from_extra_config("weights_fingerprint", None) or weights_fingerprint(mc.model)
    try:
        model_id = f"{model_id}#{model_config_digest(mc.hf_config.to_dict())}"
    except Exception:
        pass
    return Namespace(
        weights=weights,
        model=model_id,
        dtype=dtype,
        num_layers=mc.get_num_layers(pc),
        num_kv_heads=mc.get_num_kv_heads(pc),
        head_size=mc.get_head_size(),
        block_size=cc.block_size,
        chunk_tokens=chunk_tokens,
        rank=rank,
    )


_INSTANCES = weakref.WeakSet()


def _runs(blocks: list[int], start: int) -> list[tuple[int, int, int]]:
    """(index into `blocks`, first block id, length) of each run of consecutive block ids in
    `blocks[start:]`."""
    runs: list[tuple[int, int, int]] = []
    for j in range(start, len(blocks)):
        if runs and blocks[j] == runs[-1][1] + runs[-1][2]:
            runs[-1] = (runs[-1][0], runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((j, blocks[j], 1))
    return runs


class _Missing(str):
    """Why a chunk the lookup found could not be read (not a corrupt value: nothing to delete)."""


@functools.lru_cache(maxsize=None)
def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory in the process (once per process).

    A load holds a batch of chunk values (hundreds of KiB each for the demo model, MiBs for a
    real one) and frees them when they are copied in. With glibc's defaults such blocks are
    mapped fresh from the kernel, or the heap's top is returned to it when they are freed, so
    every load faults in and zeroes new pages: reading 31 chunks (7.75 MiB) from the disk tier
    in batches of 8 took 3.9 ms, 0.7 ms with these settings. Blocks up to 32 MiB (glibc's
    maximum) come from the heap, and up to 256 MiB of free heap is kept for reuse. False
    where the C library is not glibc (nothing changes)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3  # malloc.h
        return bool(libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 256 << 20))
    except (OSError, AttributeError):
        return False


# The payload tensors below are read-only views of the bytes a tier returned; torch warns
# (once per process) that it cannot mark them so. The connector only ever reads them.
warnings.filterwarnings("ignore", message="The given buffer is not writable", category=UserWarning)


def _payload_tensor(payload: memoryview, dtype: torch.dtype, shape: tuple[int, ...]) -> torch.Tensor:
    """A read-only tensor over a chunk's payload, without copying it when its address is aligned
    for `dtype` (the connector only reads it, into the KV cache); a copy otherwise."""
    t = torch.frombuffer(payload, dtype=torch.uint8)
    if t.data_ptr() % dtype.itemsize:
        t = t.clone()
    return t.view(dtype).view(shape)


class GreenCacheConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config: "VllmConfig", role: KVConnectorRole, kv_cache_config=None):
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        extra = dict(self._kv_transfer_config.kv_connector_extra_config or {})
        self.block_size = vllm_config.cache_config.block_size
        self.chunk_tokens = int(extra.get("chunk_tokens", 128))
        if self.chunk_tokens % self.block_size:
            raise ValueError(
                f"chunk_tokens ({self.chunk_tokens}) must be a multiple of vLLM's block size "
                f"({self.block_size}); set kv store chunk_tokens accordingly"
            )
        rank = 0
        if role == KVConnectorRole.WORKER:
            try:
                from vllm.distributed.parallel_state import get_tensor_model_parallel_rank

                rank = get_tensor_model_parallel_rank()
            except Exception:
                rank = 0
        self.ns = namespace_for(vllm_config, self.chunk_tokens, rank)
        if not extra.get("mac_key_file"):
            raise ValueError("the KV store spec names no mac_key_file: chunks must be MAC'd with the deployment's "
                             "secret (cache_store/keys.py)")
        self.mac_key = read_mac_key(extra["mac_key_file"])
        self.store: KVStore = build_store(extra)
        self.stats_path = Path(extra["stats_dir"]) / f"stats-{role.name.lower()}-{os.getpid()}.json" \
            if extra.get("stats_dir") else None
        self._stats_written = 0.0
        # scheduler state
        self._reqs: dict[str, _ReqState] = {}
        self._pending_lookup: dict[str, tuple[list[str], int]] = {}
        # worker state
        self._kv_caches: dict[str, torch.Tensor] = {}
        self._layer_names: list[str] = []
        self._save_buf: dict[str, dict[str, torch.Tensor]] = {}
        self._load_errors: set[int] = set()
        self.loaded_chunks = 0
        self.saved_chunks = 0
        self.failed_chunks = 0
        self.dropped_saves = 0
        # Where a load's time goes (cumulative seconds; `timing()`): the scheduler's prefix
        # lookup, and on the worker reading the chunks from the tiers, checking them (MAC,
        # header) and copying them into the paged KV cache.
        self.lookup_s = self.read_s = self.verify_s = self.copy_s = 0.0
        self._queue: "queue.Queue[Optional[list]]" = queue.Queue(maxsize=int(extra.get("save_queue", 64)))
        self._writer: Optional[threading.Thread] = None
        if role == KVConnectorRole.WORKER:
            self._writer = threading.Thread(target=self._write_loop, name="greencache-kv-writer", daemon=True)
            self._writer.start()
        keep_freed_memory()
        _INSTANCES.add(self)
        logger.info("GreenCacheConnector %s: namespace %s, chunk %d tokens, tiers %s", role.name, self.ns.id,
                    self.chunk_tokens, [t.name for t in self.store.tiers])

    # ================================================================== scheduler side
    def get_num_new_matched_tokens(self, request: "Request", num_computed_tokens: int) -> tuple[Optional[int], bool]:
        prompt = list(request.prompt_token_ids or [])
        # Leave at least one token to compute: its logits produce the first output token.
        t0 = time.perf_counter()
        all_keys = chunk_keys(self.ns, prompt)
        keys = all_keys[:(len(prompt) - 1) // self.chunk_tokens]
        hit = self.store.lookup_prefix(keys) if keys else 0
        self.lookup_s += time.perf_counter() - t0
        self._pending_lookup[request.request_id] = (all_keys, hit)
        self._maybe_write_stats()
        hit_tokens = hit * self.chunk_tokens
        if hit_tokens <= num_computed_tokens:
            return 0, False
        return hit_tokens - num_computed_tokens, False

    def update_state_after_alloc(self, request: "Request", blocks: "KVCacheBlocks", num_external_tokens: int):
        all_keys, hit = self._pending_lookup.pop(request.request_id, (None, 0))
        if all_keys is None:
            all_keys = chunk_keys(self.ns, list(request.prompt_token_ids or []))
        st = _ReqState(keys=all_keys, prompt_len=len(request.prompt_token_ids or []), block_ids=[],
                       saved_chunks=hit)
        if num_external_tokens > 0:
            st.load_upto = hit * self.chunk_tokens
            st.load_from = st.load_upto - num_external_tokens
        self._reqs[request.request_id] = st

    def _blocks(self, block_ids: list[int], chunk: int) -> list[int]:
        per = self.chunk_tokens // self.block_size
        return block_ids[chunk * per:(chunk + 1) * per]

    def build_connector_meta(self, scheduler_output: "SchedulerOutput") -> KVConnectorMetadata:
        meta = GreenCacheMeta()
        c = self.chunk_tokens
        progress: list[tuple[str, int]] = []
        for new in scheduler_output.scheduled_new_reqs:
            st = self._reqs.get(new.req_id)
            if st is None:
                prompt = list(new.prompt_token_ids or [])
                st = _ReqState(keys=chunk_keys(self.ns, prompt), prompt_len=len(prompt), block_ids=[], saved_chunks=0)
                self._reqs[new.req_id] = st
            st.block_ids = list(new.block_ids[0])
            if st.load_upto > st.load_from:
                first = st.load_from // c
                last = st.load_upto // c
                idx = list(range(first, last))
                meta.loads.append(ChunkTransfer(
                    req_id=new.req_id,
                    keys=[st.keys[i] for i in idx],
                    chunk_indices=idx,
                    blocks=[self._blocks(st.block_ids, i) for i in idx],
                    write_from=[max(0, st.load_from - i * c) for i in idx],
                ))
                st.load_from = st.load_upto = 0
            progress.append((new.req_id, new.num_computed_tokens + scheduler_output.num_scheduled_tokens.get(new.req_id, 0)))
        cached = scheduler_output.scheduled_cached_reqs
        for i, req_id in enumerate(cached.req_ids):
            st = self._reqs.get(req_id)
            if st is None:
                continue
            nb = cached.new_block_ids[i]
            if req_id in cached.resumed_req_ids:
                st.block_ids = list(nb[0]) if nb is not None else []
            elif nb is not None:
                st.block_ids.extend(nb[0])
            progress.append((req_id, cached.num_computed_tokens[i] + scheduler_output.num_scheduled_tokens.get(req_id, 0)))
        for req_id, covered in progress:
            st = self._reqs[req_id]
            ready = min(covered, st.prompt_len) // c
            if ready > st.saved_chunks and ready * c <= len(st.block_ids) * self.block_size:
                idx = list(range(st.saved_chunks, ready))
                meta.saves.append(ChunkTransfer(
                    req_id=req_id,
                    keys=[st.keys[j] for j in idx],
                    chunk_indices=idx,
                    blocks=[self._blocks(st.block_ids, j) for j in idx],
                ))
                st.saved_chunks = ready
        return meta

    def request_finished(self, request: "Request", block_ids: list[int]) -> tuple[bool, Optional[dict[str, Any]]]:
        self._reqs.pop(request.request_id, None)
        self._pending_lookup.pop(request.request_id, None)
        return False, None

    # ===================================================================== worker side
    def register_kv_caches(self, kv_caches: dict[str, torch.Tensor]):
        self._kv_caches = dict(kv_caches)
        self._layer_names = list(kv_caches)

    def _layers(self, forward_context: "ForwardContext") -> dict[str, torch.Tensor]:
        if self._kv_caches:
            return self._kv_caches
        layers = {}
        for name, layer in forward_context.no_compile_layers.items():
            kv = getattr(layer, "kv_cache", None)
            if isinstance(kv, torch.Tensor):
                layers[name] = kv
            elif isinstance(kv, (list, tuple)) and kv and isinstance(kv[0], torch.Tensor):
                layers[name] = kv[0]
        self._kv_caches = layers
        self._layer_names = list(layers)
        return layers

    def _chunk_shape(self, layer: torch.Tensor) -> tuple[int, ...]:
        # CPU/GPU paged layout seen per layer: [num_blocks, num_kv_heads, block_size, C]
        return (len(self._layer_names), self.chunk_tokens, layer.shape[1], layer.shape[3])

    def start_load_kv(self, forward_context: "ForwardContext", **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        if not isinstance(meta, GreenCacheMeta) or not meta.loads:
            return
        layers = self._layers(forward_context)
        if not layers:
            return
        first = next(iter(layers.values()))
        want = (self._chunk_shape(first), str(first.dtype).replace("torch.", ""), first.dtype)
        bs = self.block_size
        for item in meta.loads:
            failed_from: Optional[int] = None
            for n, key, chunk in self._read_batches(item, want):
                if not isinstance(chunk, torch.Tensor):
                    logger.warning("chunk %s unusable (%s): recomputing", key, chunk)
                    if not isinstance(chunk, _Missing):
                        self.store.invalidate([key])
                    failed_from = n
                    break
                t0 = time.perf_counter()
                self._copy_in(layers, chunk, item.blocks[n], item.write_from[n])
                self.copy_s += time.perf_counter() - t0
                self.loaded_chunks += 1
            if failed_from is not None:
                # Report every block of the failed chunk and all later ones of this request.
                for n in range(failed_from, len(item.keys)):
                    self.failed_chunks += 1
                    self._load_errors.update(item.blocks[n][item.write_from[n] // bs:])

    def _read_batches(self, item: ChunkTransfer, want: tuple):
        """(index, key, tensor or the reason it is unusable) for `item`'s chunks in order, read
        and checked READ_BATCH at a time (one store call per batch; at most a batch's values
        held at once), in the engine's thread. A reader thread one batch ahead, reading or
        reading and checking, was slower on the 2-CPU test machine (paired hits: 13.6 ms here
        vs 14.9 ms): at these chunk sizes the threads mostly hand the GIL to each other."""
        for i in range(0, len(item.keys), READ_BATCH):
            chunks = self._read_checked(item.keys[i:i + READ_BATCH], item.chunk_indices[i:i + READ_BATCH], want)
            for j, chunk in enumerate(chunks):
                yield i + j, item.keys[i + j], chunk

    def _read_checked(self, keys: list[str], indices: list[int], want: tuple) -> list:
        """Read `keys` from the store (`read_s`) and check each value (`verify_s`): a tensor over
        its checked payload, or the reason it must not be used (a `_Missing` or a `ChunkError`)."""
        shape, dtype, torch_dtype = want
        t0 = time.perf_counter()
        try:
            values = self.store.get_many(keys, indices)
        except Exception as e:  # a store must never take the engine down: every chunk is a miss
            values = [None] * len(keys)
            logger.warning("reading %d chunks failed: %r", len(keys), e)
        t1 = time.perf_counter()
        self.read_s += t1 - t0
        out: list = []
        for key, value in zip(keys, values):
            if value is None:
                out.append(_Missing("missing (evicted or tier down since lookup)"))
                continue
            try:
                _, vshape, payload = decode_chunk(self.ns, key, value, expect_shape=shape, expect_dtype=dtype,
                                                  mac_key=self.mac_key)
                out.append(_payload_tensor(payload, torch_dtype, vshape))
            except (ChunkError, RuntimeError, ValueError) as e:
                out.append(e)
        self.verify_s += time.perf_counter() - t1
        return out

    def _copy_in(self, layers: dict[str, torch.Tensor], t: torch.Tensor, blocks: list[int], w: int) -> None:
        """Write chunk `t` ([layers, tokens, heads, C]) from its token `w` on into the paged KV
        cache's `blocks` ([num_blocks, heads, block_size, C] per layer). On CPU one plain copy
        per run of consecutive block ids (a fresh request's blocks mostly are; 31 chunks of 8
        blocks in 4 layers on one thread: 4.0 ms block by block, 0.75 ms by runs; inside the
        engine, whose torch has threads of its own, ~0.9 ms either way); on an accelerator one
        indexed copy per layer (one launch). `w` is block-aligned but for a prefix the engine
        computed to mid-block: that block is written from its offset on."""
        bs = self.block_size
        nb = len(blocks)
        # [layers, nb·bs, heads, C] → [layers, nb, heads, bs, C]: the paged layout's blocks
        src = t.reshape(t.shape[0], nb, bs, t.shape[2], t.shape[3]).transpose(2, 3)
        j0, off = divmod(w, bs)
        if off:
            for li, name in enumerate(self._layer_names):
                layers[name][blocks[j0], :, off:] = src[li, j0, :, off:].to(layers[name].device)
            j0 += 1
        if j0 >= nb:
            return
        runs = _runs(blocks, j0)
        for li, name in enumerate(self._layer_names):
            dst = layers[name]
            if dst.device.type == "cpu":
                for j, b, n in runs:
                    dst[b:b + n].copy_(src[li, j:j + n])
            else:
                dst.index_copy_(0, torch.tensor(blocks[j0:], device=dst.device), src[li, j0:].to(dst.device))

    def wait_for_layer_load(self, layer_name: str) -> None:
        return

    def save_kv_layer(self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any) -> None:
        meta = self._get_connector_metadata()
        if not isinstance(meta, GreenCacheMeta) or not meta.saves:
            return
        if not self._layer_names:
            self._kv_caches = {}
        _, heads, bs, c = kv_layer.shape
        for item in meta.saves:
            for key, blocks in zip(item.keys, item.blocks):
                # blocks [nb, heads, bs, C] → the chunk's layout [nb·bs, heads, C], one copy
                # (to host memory) per run of consecutive blocks
                out = torch.empty((len(blocks), bs, heads, c), dtype=kv_layer.dtype)
                for j, b, n in _runs(blocks, 0):
                    out[j:j + n].copy_(kv_layer[b:b + n].transpose(1, 2))
                self._save_buf.setdefault(key, {})[layer_name] = out.view(-1, heads, c)

    def wait_for_save(self):
        meta = self._get_connector_metadata()
        if not isinstance(meta, GreenCacheMeta) or not meta.saves:
            self._save_buf.clear()
            return
        batch = []
        for item in meta.saves:
            for key, idx in zip(item.keys, item.chunk_indices):
                per_layer = self._save_buf.pop(key, None)
                if not per_layer:
                    continue
                names = self._layer_names or list(per_layer)
                if not self._layer_names:
                    self._layer_names = names
                if any(n not in per_layer for n in names):
                    continue  # incomplete (should not happen): skip rather than store garbage
                batch.append((key, idx, torch.stack([per_layer[n] for n in names])))
        self._save_buf.clear()
        if batch:
            try:
                self._queue.put_nowait(batch)
            except queue.Full:
                self.dropped_saves += len(batch)

    def _write_loop(self) -> None:
        while True:
            try:
                batch = self._queue.get(timeout=1.0)
            except queue.Empty:
                # Idle: still publish, so capacity changes and evictions show while no
                # request arrives.
                self._maybe_write_stats()
                continue
            if batch is None:
                return
            items = []
            for key, idx, t in batch:
                t = t.contiguous()
                payload = t.view(torch.uint8).numpy().tobytes()
                items.append((key, encode_chunk(self.ns, key, str(t.dtype).replace("torch.", ""), tuple(t.shape), payload,
                                                mac_key=self.mac_key), idx))
            try:
                self.store.put_many(items)
                self.saved_chunks += len(items)
            except Exception:  # a store must never take the engine down
                logger.exception("saving %d chunks failed", len(items))
            self._maybe_write_stats()

    def get_block_ids_with_load_errors(self) -> set[int]:
        errors, self._load_errors = self._load_errors, set()
        if errors or self.loaded_chunks:
            self._maybe_write_stats()
        return errors

    # ======================================================================== stats
    def chunk_bytes(self) -> int:
        itemsize = _TORCH_DTYPES.get(self.ns.dtype, torch.bfloat16).itemsize
        return self.ns.num_layers * self.chunk_tokens * self.ns.num_kv_heads * 2 * self.ns.head_size * itemsize

    def timing(self) -> dict[str, float]:
        """Cumulative seconds per stage of a load (this role's stages; the others stay 0)."""
        return {"lookup_s": self.lookup_s, "read_s": self.read_s, "verify_s": self.verify_s, "copy_s": self.copy_s}

    def connector_stats(self) -> dict:
        return {"namespace": self.ns.id, "role": self._role.name, "loaded_chunks": self.loaded_chunks,
                "chunk_bytes": self.chunk_bytes(), "access_sample": self.store.sampler.snapshot(),
                "access_sample_rate": self.store.sampler.rate,
                "saved_chunks": self.saved_chunks, "failed_chunks": self.failed_chunks,
                "dropped_saves": self.dropped_saves, "chunk_tokens": self.chunk_tokens, "store": self.store.stats(),
                "timing": self.timing()}

    def _maybe_write_stats(self, every_s: float = 1.0) -> None:
        """Publish stats for the replica (the store lives in engine processes it can't call)."""
        if self.stats_path is None or time.monotonic() - self._stats_written < every_s:
            return
        self._stats_written = time.monotonic()
        try:
            private_dir(self.stats_path.parent)
            atomic_write_text(self.stats_path, json.dumps(self.connector_stats()))
        except OSError:
            pass

    def shutdown(self):
        if self._writer is not None:
            self._queue.put(None)
            self._writer.join(timeout=10)
        self._maybe_write_stats(every_s=0)
        self.store.close()
