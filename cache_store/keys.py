"""The two secrets-and-identities a store needs beside its data: the deployment's MAC key, and
a fingerprint of the weights whose KV it holds.

- `ensure_mac_key(path)`: a random 32-byte key in a 0600 file, made once; `read_mac_key(path)`
  reads it. Chunks are MAC'd with it (format.py), so only processes that can read this file can
  write chunks an engine will load.
- `weights_fingerprint(model_dir)`: SHA-256 over the weight files' bytes (safetensors, bin, pt,
  gguf), in name order. A checkpoint changed in place (same path, same config) gets a new
  fingerprint, hence a new namespace, so its engines never load the old weights' KV. Hashing
  a large checkpoint takes a while (about 1-2 GB/s), so the result is cached beside it in
  `cache_dir`, keyed by each file's path, size and modification time.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Optional

from cache_store.local import atomic_write_text, private_dir

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
MAC_KEY_BYTES = 32


def ensure_mac_key(path: str | os.PathLike) -> Path:
    """Create a MAC key file at `path` if there is none (0600, in a 0700 directory)."""
    p = Path(path)
    if not p.exists():
        private_dir(p.parent)
        atomic_write_text(p, secrets.token_hex(MAC_KEY_BYTES) + "\n", durable=True)
    return p


def read_mac_key(path: str | os.PathLike) -> bytes:
    text = Path(path).read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = text.encode()
    if len(key) < 16:
        raise ValueError(f"the MAC key in {path} is too short ({len(key)} bytes; at least 16)")
    return key


def _weight_files(model_dir: Path) -> list[Path]:
    return sorted(p for p in model_dir.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def weights_fingerprint(model_dir: str | os.PathLike, cache_dir: Optional[str | os.PathLike] = None) -> str:
    """16 hex digits identifying the weight files' content (see module docstring)."""
    model_dir = Path(model_dir)
    files = _weight_files(model_dir)
    stamp = [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    cache = Path(cache_dir) / "weights-fingerprints.json" if cache_dir else None
    known: dict = {}
    if cache is not None and cache.exists():
        try:
            known = json.loads(cache.read_text())
        except (OSError, ValueError):
            known = {}
    tag = json.dumps(stamp)
    if tag in known:
        return known[tag]
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            while block := fh.read(8 << 20):
                h.update(block)
    fingerprint = h.hexdigest()[:16]
    if cache is not None:
        try:
            private_dir(cache.parent)
            known[tag] = fingerprint
            atomic_write_text(cache, json.dumps(known))
        except OSError:
            pass
    return fingerprint
