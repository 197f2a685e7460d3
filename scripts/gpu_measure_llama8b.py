"""Measure Llama-3-8B-shaped prefill and decode latency and GPU power in plain PyTorch.

Runs on a machine with one NVIDIA GPU and PyTorch (no vLLM, no downloads): the model has
Llama-3-8B's shapes (32 layers, hidden 4096, 32 query / 8 KV heads of 128, MLP 14336,
vocabulary 128256) with random bf16 weights, so latency and power are those of the real
shapes, not of a real checkpoint. Power comes from NVML's total-energy counter (averaged over
each measured loop), read through ctypes so no Python package is needed.

    python scripts/gpu_measure_llama8b.py --out measured.json

What it approximates and what it does not:
- prefill: one sequence of T tokens through all layers (SDPA causal attention, the flash
  kernel on H100), logits for the last token only, as vLLM does;
- decode: one step for B sequences each holding `ctx` tokens of KV, logits for all B,
  captured in a CUDA graph as vLLM does (without it Python launch overhead dominates);
- no paged KV, no fused RMSNorm/RoPE/SiLU kernels, no tensor-core-friendly padding: vLLM's
  kernels are faster, so read these figures as an upper bound on vLLM's latency.

The result is compared with autoscaler/data/profiles/llama3-8b-h100x1.json by
scripts/compare_gpu_measurement.py, which writes the table in docs/gpu-measurements.md.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import math
import platform
import subprocess
import time

import torch
import torch.nn.functional as F

LAYERS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, MLP, VOCAB = 32, 4096, 32, 8, 128, 14336, 128256
PREFILL_TOKENS = [128, 256, 512, 1024, 2048, 3072, 4096, 8192]
DECODE_BATCHES = [1, 2, 4, 8, 16, 32, 64]
DECODE_CONTEXTS = [576, 1024, 4096, 8192, 16384, 32768]
MAX_KV_TOKENS = 262144  # 32 GiB of bf16 KV at 128 KiB/token


class NVML:
    """Total energy (mJ) and instantaneous power (mW) of GPU 0 through libnvidia-ml."""

    def __init__(self):
        self.lib = ctypes.CDLL("libnvidia-ml.so.1")
        assert self.lib.nvmlInit_v2() == 0
        self.handle = ctypes.c_void_p()
        assert self.lib.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(self.handle)) == 0

    def energy_mj(self) -> int:
        v = ctypes.c_ulonglong()
        rc = self.lib.nvmlDeviceGetTotalEnergyConsumption(self.handle, ctypes.byref(v))
        return v.value if rc == 0 else -1

    def power_w(self) -> float:
        v = ctypes.c_uint()
        rc = self.lib.nvmlDeviceGetPowerUsage(self.handle, ctypes.byref(v))
        return v.value / 1000 if rc == 0 else float("nan")

    def limit_w(self) -> float:
        v = ctypes.c_uint()
        rc = self.lib.nvmlDeviceGetEnforcedPowerLimit(self.handle, ctypes.byref(v))
        return v.value / 1000 if rc == 0 else float("nan")


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : HEAD_DIM // 2], x[..., HEAD_DIM // 2:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def rms(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    if hasattr(F, "rms_norm"):
        return F.rms_norm(x, (HIDDEN,), w, 1e-5)
    return (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + 1e-5)).to(x.dtype) * w


def sdpa(q, k, v, causal: bool) -> torch.Tensor:
    """Grouped-query attention; expands KV heads on PyTorch versions without enable_gqa."""
    try:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)
    except TypeError:
        rep = q.shape[-3] // k.shape[-3]
        return F.scaled_dot_product_attention(q, k.repeat_interleave(rep, -3), v.repeat_interleave(rep, -3),
                                              is_causal=causal)


class Llama8BShape:
    def __init__(self, dev: torch.device):
        g = torch.Generator(device=dev).manual_seed(0)
        mk = lambda *s: (torch.randn(*s, device=dev, dtype=torch.bfloat16, generator=g) * 0.02)  # noqa: E731
        self.layers = [dict(n1=torch.ones(HIDDEN, device=dev, dtype=torch.bfloat16),
                            qkv=mk(HIDDEN, (HEADS + 2 * KV_HEADS) * HEAD_DIM),
                            o=mk(HEADS * HEAD_DIM, HIDDEN),
                            n2=torch.ones(HIDDEN, device=dev, dtype=torch.bfloat16),
                            gu=mk(HIDDEN, 2 * MLP), d=mk(MLP, HIDDEN)) for _ in range(LAYERS)]
        self.norm = torch.ones(HIDDEN, device=dev, dtype=torch.bfloat16)
        self.lm_head = mk(HIDDEN, VOCAB)
        self.embed = mk(VOCAB, HIDDEN)
        self.dev = dev
        inv = 1.0 / (500000 ** (torch.arange(0, HEAD_DIM // 2, device=dev).float() / (HEAD_DIM // 2)))
        ang = torch.arange(40000, device=dev).float()[:, None] * inv[None, :]
        self.cos, self.sin = ang.cos().to(torch.bfloat16), ang.sin().to(torch.bfloat16)

    def _mlp(self, x, L):
        h = rms(x, L["n2"]) @ L["gu"]
        g, u = h.split(MLP, dim=-1)
        return x + (F.silu(g) * u) @ L["d"]

    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        T = ids.shape[0]
        x = self.embed[ids]
        cos, sin = self.cos[:T][None], self.sin[:T][None]
        for L in self.layers:
            qkv = rms(x, L["n1"]) @ L["qkv"]
            q, k, v = qkv.split([HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], dim=-1)
            q = rope(q.view(T, HEADS, HEAD_DIM).transpose(0, 1), cos, sin)
            k = rope(k.view(T, KV_HEADS, HEAD_DIM).transpose(0, 1), cos, sin)
            v = v.view(T, KV_HEADS, HEAD_DIM).transpose(0, 1)
            a = sdpa(q[None], k[None], v[None], True)
            x = x + a[0].transpose(0, 1).reshape(T, HEADS * HEAD_DIM) @ L["o"]
            x = self._mlp(x, L)
        return rms(x[-1:], self.norm) @ self.lm_head

    def decode_step(self, ids, kcache, vcache, pos):
        """ids [B]; kcache/vcache per layer [B, KV_HEADS, ctx, HEAD_DIM]; pos: index to write."""
        B = ids.shape[0]
        x = self.embed[ids]
        cos, sin = self.cos[pos][None, None, None], self.sin[pos][None, None, None]
        for L, kc, vc in zip(self.layers, kcache, vcache):
            qkv = rms(x, L["n1"]) @ L["qkv"]
            q, k, v = qkv.split([HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM], dim=-1)
            q = rope(q.view(B, HEADS, 1, HEAD_DIM), cos, sin)
            k = rope(k.view(B, KV_HEADS, 1, HEAD_DIM), cos, sin)
            kc[:, :, pos: pos + 1] = k
            vc[:, :, pos: pos + 1] = v.view(B, KV_HEADS, 1, HEAD_DIM)
            a = sdpa(q, kc, vc, False)
            x = x + a.reshape(B, HEADS * HEAD_DIM) @ L["o"]
            x = self._mlp(x, L)
        return rms(x, self.norm) @ self.lm_head


def timed(fn, nvml: NVML | None, min_s: float, max_iters: int = 200) -> dict:
    """Median latency of fn() over a loop of at least min_s seconds, plus average power."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    lat = []
    e0 = nvml.energy_mj() if nvml else -1
    t0 = time.perf_counter()
    while (time.perf_counter() - t0 < min_s or len(lat) < 5) and len(lat) < max_iters:
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        lat.append(s.elapsed_time(e) / 1000)
    wall = time.perf_counter() - t0
    e1 = nvml.energy_mj() if nvml else -1
    lat.sort()
    out = {"latency_s": lat[len(lat) // 2], "p10_s": lat[len(lat) // 10], "iters": len(lat),
           "busy_fraction": sum(lat) / wall}
    if e0 >= 0 and e1 >= 0:
        out["avg_power_w"] = (e1 - e0) / 1000 / wall
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--min-s", type=float, default=0.6, help="seconds per measured point")
    ap.add_argument("--power-s", type=float, default=4.0, help="seconds for the power points")
    args = ap.parse_args()

    dev = torch.device("cuda")
    try:
        nvml = NVML()
    except Exception as e:  # noqa: BLE001 - power is optional, latency is not
        print("NVML unavailable:", e)
        nvml = None
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,power.limit,clocks.max.sm",
                          "--format=csv,noheader"], capture_output=True, text=True).stdout.strip()
    result = {"meta": {"gpu": torch.cuda.get_device_name(0), "nvidia_smi": smi, "torch": torch.__version__,
                       "cuda": torch.version.cuda, "python": platform.python_version(),
                       "power_limit_w": nvml.limit_w() if nvml else None,
                       "shape": dict(layers=LAYERS, hidden=HIDDEN, heads=HEADS, kv_heads=KV_HEADS,
                                     head_dim=HEAD_DIM, mlp=MLP, vocab=VOCAB, dtype="bfloat16"),
                       "method": "scripts/gpu_measure_llama8b.py: random weights, SDPA, prefill eager, "
                                 "decode CUDA graph; NVML total-energy counter for power"},
              "prefill": [], "decode": [], "power": {}}
    print(result["meta"], flush=True)

    if nvml:
        time.sleep(3)
        e0, t0 = nvml.energy_mj(), time.perf_counter()
        time.sleep(args.power_s)
        result["power"]["idle_before_load_w"] = (nvml.energy_mj() - e0) / 1000 / (time.perf_counter() - t0)

    model = Llama8BShape(dev)
    torch.cuda.synchronize()
    result["meta"]["weights_gib"] = torch.cuda.memory_allocated() / 2**30
    if nvml:
        e0, t0 = nvml.energy_mj(), time.perf_counter()
        time.sleep(args.power_s)
        result["power"]["idle_weights_loaded_w"] = (nvml.energy_mj() - e0) / 1000 / (time.perf_counter() - t0)

    with torch.inference_mode():
        for T in PREFILL_TOKENS:
            ids = torch.randint(0, VOCAB, (T,), device=dev)
            r = timed(lambda: model.prefill(ids), nvml, args.power_s if T == 2048 else args.min_s)
            r["tokens"] = T
            result["prefill"].append(r)
            print("prefill", r, flush=True)

        for ctx in DECODE_CONTEXTS:
            for B in DECODE_BATCHES:
                if B * ctx > MAX_KV_TOKENS:
                    continue
                kc = [torch.zeros(B, KV_HEADS, ctx, HEAD_DIM, device=dev, dtype=torch.bfloat16) for _ in range(LAYERS)]
                vc = [torch.zeros_like(t) for t in kc]
                ids = torch.randint(0, VOCAB, (B,), device=dev)
                pos = ctx - 1
                graph = None
                try:
                    s = torch.cuda.Stream()
                    s.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(s):
                        for _ in range(2):
                            model.decode_step(ids, kc, vc, pos)
                    torch.cuda.current_stream().wait_stream(s)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph):
                        model.decode_step(ids, kc, vc, pos)
                    fn = graph.replay
                except Exception as e:  # noqa: BLE001 - fall back to eager, recorded in the output
                    print("CUDA graph capture failed, eager:", e)
                    graph = None
                    fn = lambda: model.decode_step(ids, kc, vc, pos)  # noqa: E731
                power_point = (B, ctx) in {(64, 1024), (1, 1024), (32, 4096)}
                r = timed(fn, nvml, args.power_s if power_point else args.min_s, max_iters=2000)
                r.update(batch=B, context=ctx, cuda_graph=graph is not None)
                result["decode"].append(r)
                print("decode", r, flush=True)
                del kc, vc, graph
                torch.cuda.empty_cache()

    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
