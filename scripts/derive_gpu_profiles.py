"""Derive the simulator's GPU profiles from public measurements (run once; outputs are shipped).

    python scripts/derive_gpu_profiles.py --data ../shared/data/profiles --out autoscaler/data/profiles

Writes `PerfModel` profiles (the format `greencache profile` measures on a live endpoint):
    prefill: [[prompt_tokens, seconds]]               TTFT of one request on an idle replica
    decode:  [[batch, step_seconds, context_tokens]]  time per decode step
    kv_load_s_per_token: {"disk": s}                   loading cached KV from node-local NVMe

Llama-3-70B on 4×H100 (TP4), *measured end to end*: Splitwise's `perf_model.csv` (Llama-2-70B,
H100-80GB, TP4; identical layer shapes to Llama-3-70B, only the vocabulary differs). Prefill =
median `prompt_time` at batch 1 for prompts 128–8,192; decode = median `token_time` at batch
1–64 with 512-token prompts. Longer contexts add vidur's attention-decode cost (legacy A100
table, 70B geometry at TP2; ×1/2 for TP4, ×1/1.6 for H100's HBM bandwidth).

Llama-3-8B on 1×H100 (TP1), *measured* when `benchmarks/results/gpu/` holds runs of
scripts/gpu_measure_llama8b.py (it does: H100 80GB HBM3, Llama-3-8B shapes, random weights,
PyTorch): per point the median over runs. The kernel-derived profile below is then written to
benchmarks/results/gpu/llama3-8b-h100x1-kernel-derived.json for comparison (it overestimates the
measurement by ~1.3× on prefill and ~1.2× on decode; benchmarks/results/gpu/README.md).

Llama-3-8B, *derived* (the fallback; no end-to-end measurement exists in ../shared/data): vidur's
H100 Llama-2-7B per-layer linear/norm kernel medians × the A100 Llama-3-8B / Llama-2-7B ratio at
the same token count, plus attention from the legacy A100 table (same q-head geometry at TP1;
prefill ×1/2 for H100 FLOPs, decode ×2 for 8 KV heads and ×1/1.6 for bandwidth), × 32 layers.
Kernel times miss the LM head, sampling and CPU overhead, so the 8B figures are scaled by the
ratio measured/derived that the same recipe shows on 70B (prefill and decode separately,
printed below).

KV load: bytes per token (8B 128 KiB, 70B 320 KiB, bf16) over 12 GB/s, a node-local NVMe array
(a DGX H100 carries 8 U.2 NVMe drives; ~12 GB/s is a conservative aggregate read rate). This is
an assumption, stated in the profile's meta.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path

import numpy as np

LIN_OPS = ("attn_pre_proj", "attn_rope", "attn_post_proj", "input_layernorm", "post_attention_layernorm",
           "mlp_up_proj", "mlp_act", "mlp_down_proj", "add")
NVME_BYTES_PER_S = 12e9
MEASURED_8B_DIR = Path("benchmarks/results/gpu")


def lin_ms(path: Path, tp: int) -> dict[int, float]:
    """num_tokens → per-layer linear+norm kernel time (ms), medians summed."""
    out = {}
    for r in csv.DictReader(open(path)):
        if int(r["num_tensor_parallel_workers"]) != tp:
            continue
        out[int(r["num_tokens"])] = sum(float(r[f"time_stats.{op}.median"]) for op in LIN_OPS)
    return out


def interp(table: dict[int, float], n: float) -> float:
    xs = sorted(table)
    return float(np.interp(n, xs, [table[x] for x in xs]))


def attention_fits(path: Path):
    """Legacy A100 table (32 q / 4 kv heads per GPU): prefill(n) = quadratic fit over chunk size
    with an empty cache; decode(B, kv) = a + b·B·kv (ms per layer)."""
    pre, dec = defaultdict(list), []
    for r in csv.DictReader(open(path)):
        if r["is_prefill"] == "True":
            if int(r["kv_cache_size"]) == 0:
                pre[int(r["prefill_chunk_size"])].append(float(r["time_stats.attn_prefill.median"]))
        else:
            dec.append((int(r["batch_size"]), int(r["kv_cache_size"]), float(r["time_stats.attn_decode.median"])))
    n = np.array(sorted(pre), dtype=float)
    t = np.array([statistics.median(pre[int(k)]) for k in n])
    pc = np.polyfit(n, t, 2)
    d = np.array(dec, dtype=float)
    A = np.stack([np.ones(len(d)), d[:, 0] * d[:, 1]], axis=1)
    dc, *_ = np.linalg.lstsq(A, d[:, 2], rcond=None)
    return (lambda x: float(np.polyval(pc, x))), (lambda b, kv: float(dc[0] + dc[1] * b * kv)), dc


def splitwise(path: Path, hardware: str = "h100-80gb"):
    pre, dec = defaultdict(list), defaultdict(list)
    for r in csv.DictReader(open(path)):
        if r["model"] != "llama2-70b" or r["hardware"] != hardware or int(r["tensor_parallel"]) != 4:
            continue
        p, b, o = int(r["prompt_size"]), int(r["batch_size"]), int(r["token_size"])
        if b == 1 and o == 128:
            pre[p].append(float(r["prompt_time"]) / 1000)
        if p == 512 and o == 128:
            dec[b].append(float(r["token_time"]) / 1000)
    return ({p: statistics.median(v) for p, v in sorted(pre.items())},
            {b: statistics.median(v) for b, v in sorted(dec.items())})


def measured_8b(paths: list[str], derived_meta: dict) -> dict:
    """The 8B profile from H100 measurements: per point, the median over runs of each run's median."""
    runs = [json.loads(Path(p).read_text()) for p in paths]
    pre, dec = defaultdict(list), defaultdict(list)
    for r in runs:
        for p in r["prefill"]:
            pre[p["tokens"]].append(p["latency_s"])
        for p in r["decode"]:
            dec[(p["batch"], p["context"])].append(p["latency_s"])
    meta = dict(derived_meta)
    meta.pop("calibration", None)
    meta.update(source=f"measured on {runs[0]['meta']['gpu']} ({runs[0]['meta']['nvidia_smi']}), PyTorch "
                f"{runs[0]['meta']['torch']}, Llama-3-8B shapes with random bf16 weights, "
                "scripts/gpu_measure_llama8b.py (prefill eager SDPA, decode in a CUDA graph); "
                f"median of {len(runs)} runs", measurements=paths)
    return {"prefill": [[n, statistics.median(v)] for n, v in sorted(pre.items())],
            "decode": [[b, statistics.median(v), ctx] for (b, ctx), v in sorted(dec.items(), key=lambda kv: kv[0][::-1])],
            "kv_load_s_per_token": {"disk": derived_meta["kv_bytes_per_token"] / NVME_BYTES_PER_S}, "meta": meta}


def a100_profiles(data: Path, attn_pre, attn_dec, kv70: int, kv8: int, ref_ctx: int, contexts) -> tuple[dict, dict]:
    """The same two models on A100-80GB (SXM), by the same recipes with A100 data throughout.

    70B, 4×A100 (TP4), measured end to end: Splitwise's a100-80gb TP4 rows; longer contexts add
    the legacy A100 attention-decode cost ×1/2 for TP4 (the table is A100's own: no bandwidth
    factor). 8B, 1×A100 (TP1), derived: vidur's A100 Meta-Llama-3-8B linear/norm kernels (the
    model itself, no proxy ratio) + legacy A100 attention (prefill as is; decode ×2 for 8 KV
    heads), × 32 layers, × the measured/kernel ratio the A100 70B shows. No A100 8B measurement
    exists here; on H100 the same kind of derivation overestimated the measurement by ~1.2-1.3×.
    """
    vid = data / "vidur/compute/a100/meta-llama"
    sw_pre, sw_dec = splitwise(data / "splitwise_sim/data/perf_model.csv", "a100-80gb")
    L70, L8 = 80, 32
    ar = {int(r["size"]): float(r["time_stats.all_reduce.median"])
          for r in csv.DictReader(open(data / "vidur/network/a100_dgx/all_reduce.csv"))
          if int(r["num_workers"]) == 4 and int(r["devices_per_node"]) == 4}
    lin70 = lin_ms(vid / "Meta-Llama-3-70B/mlp.csv", 4)
    lin8 = lin_ms(vid / "Meta-Llama-3-8B/mlp.csv", 1)

    def derived70_prefill(n: int) -> float:
        return L70 * (interp(lin70, n) + attn_pre(n) / 2 + 2 * interp(ar, n * 8192 * 2) + 0.04) / 1000

    def derived70_decode(b: int, kv: int) -> float:
        return L70 * (interp(lin70, b) + attn_dec(b, kv) / 2 + 2 * interp(ar, b * 8192 * 2) + 0.04) / 1000

    dec70 = [[b, s, ref_ctx] for b, s in sw_dec.items()]
    for kv in contexts:
        for b, s in sw_dec.items():
            dec70.append([b, s + L70 * (attn_dec(b, kv) - attn_dec(b, ref_ctx)) / 2 / 1000, kv])
    pre_cal = statistics.median(sw_pre[n] / derived70_prefill(n) for n in sw_pre if n <= 4096)
    dec_cal = statistics.median(sw_dec[b] / derived70_decode(b, ref_ctx) for b in sw_dec)
    print(f"A100 70B: measured/derived prefill {pre_cal:.2f}, decode {dec_cal:.2f} (calibration applied to A100 8B)")
    common = {"gpu": "A100-80GB", "nvme_bytes_per_s": NVME_BYTES_PER_S, "derived_by": "scripts/derive_gpu_profiles.py",
              "calibration": {"prefill_measured_over_kernel": pre_cal, "decode_measured_over_kernel": dec_cal}}
    prof70 = {"prefill": [[n, s] for n, s in sw_pre.items()], "decode": dec70,
              "kv_load_s_per_token": {"disk": kv70 / NVME_BYTES_PER_S},
              "meta": {"model": "Llama-3-70B", "gpus_per_replica": 4, "tensor_parallel": 4, "kv_bytes_per_token": kv70,
                       "source": "Splitwise perf_model.csv (Llama-2-70B, A100-80GB TP4, measured end to end, "
                       "medians) + vidur legacy A100 attention for contexts beyond 576 tokens", **common}}
    pre8 = [[n, pre_cal * L8 * (interp(lin8, n) + attn_pre(n)) / 1000] for n in (128, 256, 512, 1024, 2048, 3072, 4096)]
    dec8 = [[b, dec_cal * L8 * (interp(lin8, b) + attn_dec(b, kv) * 2) / 1000, kv]
            for kv in (ref_ctx,) + tuple(contexts) for b in (1, 2, 4, 8, 16, 32, 64)]
    prof8 = {"prefill": pre8, "decode": dec8, "kv_load_s_per_token": {"disk": kv8 / NVME_BYTES_PER_S},
             "meta": {"model": "Llama-3-8B", "gpus_per_replica": 1, "tensor_parallel": 1, "kv_bytes_per_token": kv8,
                      "source": "vidur A100 Meta-Llama-3-8B kernels + vidur legacy A100 attention, × A100 70B "
                      "measured/kernel calibration (derived, not measured)", **common}}
    return prof70, prof8


def gpu_catalogue(data: Path) -> dict:
    """The GPU types the planner can mix (autoscaler/fleet.py), from the same public data:

    - power (prefill / decode / idle W per GPU): Splitwise's constant power model;
    - memory: Splitwise's processor configs;
    - embodied carbon per GPU: EcoServe's per-scale `summary.csv`, GPU column of the one-GPU row
      (A100 112 kg; H100HGX 150 kg), lifetime: EcoServe's `gpuconfigs.json` (4 years both);
    - host share per GPU: 135 kg for both (a DGX-class 8-GPU host, `CarbonConfig`'s default). A
      stated assumption: EcoServe's A100 rows charge a CPU per GPU (203 kg), a PCIe server layout;
      an 8-GPU SXM host is the same class of machine for both generations.
    """
    import yaml

    power = yaml.safe_load(open(data / "splitwise_sim/configs/power_model/constant.yaml"))
    emb = {r["GPU Type"]: r for r in csv.DictReader(open(data / "eserve/config/summary.csv")) if r["Scale"] == "1"}
    life = json.loads((data / "eserve/config/gpuconfigs.json").read_text())
    mem = {n: yaml.safe_load(open(data / f"splitwise_sim/configs/hardware_repo/processors/{n}.yaml"))["memory_size"]
           for n in ("a100-80gb", "h100-80gb")}
    types = {}
    for name, sw, eco, cfg, label in (("h100", "h100-80gb", "H100HGX", "H100HGX", "H100-80GB SXM"),
                                      ("a100", "a100-80gb", "A100", "A100SXM", "A100-80GB SXM")):
        types[name] = {
            "label": label, "power_key": name.upper(), "memory_gb": mem[sw] / 2**30,
            "power_w": {"prefill": power["prompt_power"][sw], "decode": power["token_power"][sw],
                        "idle": power["idle_power"][sw]},
            "gpu_embodied_kg": float(emb[eco]["GPU"]), "host_embodied_kg_per_gpu": 135.0,
            "lifetime_years": life[cfg]["lifetime_years"],
            "gpus_per_replica": {"llama3-8b": 1, "llama3-70b": 4},
            "profiles": {"llama3-8b": f"llama3-8b-{name}x1.json", "llama3-70b": f"llama3-70b-{name}x4.json"}}
    return {"types": types, "derived_by": "scripts/derive_gpu_profiles.py",
            "sources": {"power": "Splitwise configs/power_model/constant.yaml",
                        "memory": "Splitwise configs/hardware_repo/processors",
                        "gpu_embodied_kg": "EcoServe config/summary.csv (GPU column, Scale 1)",
                        "lifetime_years": "EcoServe config/gpuconfigs.json",
                        "host_embodied_kg_per_gpu": "stated: CarbonConfig default (EcoServe 8-GPU host), same "
                        "for both types"}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/profiles")
    ap.add_argument("--out", default="autoscaler/data/profiles")
    ap.add_argument("--measured-8b", nargs="*", default=sorted(str(p) for p in MEASURED_8B_DIR.glob(
        "llama3-8b-h100-pytorch-run*.json")), help="H100 measurements from scripts/gpu_measure_llama8b.py; "
        "when given, the 8B profile is built from them and the kernel-derived one is kept for comparison")
    a = ap.parse_args()
    data, out = Path(a.data), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    vid = data / "vidur/compute"
    attn_pre, attn_dec, dec_coef = attention_fits(data / "vidur/legacy/a100/attention.csv")
    sw_pre, sw_dec = splitwise(data / "splitwise_sim/data/perf_model.csv")
    contexts = (1024, 4096, 8192, 16384, 32768)

    # ---- 70B, 4×H100: measured, plus attention for longer contexts ---------------------------
    L70 = 80
    ar = {}  # all-reduce, 4 GPUs, by bytes (ms)
    for r in csv.DictReader(open(data / "vidur/network/h100_dgx/all_reduce.csv")):
        if int(r["num_workers"]) == 4 and int(r["devices_per_node"]) == 4:
            ar[int(r["size"])] = float(r["time_stats.all_reduce.median"])
    lin70 = lin_ms(vid / "h100/meta-llama/Llama-2-70b-hf/mlp.csv", 4)

    def derived70_prefill(n: int) -> float:
        return L70 * (interp(lin70, n) + attn_pre(n) / 2 / 2 + 2 * interp(ar, n * 8192 * 2) + 0.04) / 1000

    def derived70_decode(b: int, kv: int) -> float:
        return L70 * (interp(lin70, b) + attn_dec(b, kv) / 2 / 1.6 + 2 * interp(ar, b * 8192 * 2) + 0.04) / 1000

    ref_ctx = 512 + 64  # Splitwise decode rows: 512-token prompt, mid-way through 128 outputs
    dec70 = [[b, s, ref_ctx] for b, s in sw_dec.items()]
    for kv in contexts:
        for b, s in sw_dec.items():
            extra = L70 * (attn_dec(b, kv) - attn_dec(b, ref_ctx)) / 2 / 1.6 / 1000
            dec70.append([b, s + extra, kv])
    pre_cal = statistics.median(sw_pre[n] / derived70_prefill(n) for n in sw_pre if n <= 4096)
    dec_cal = statistics.median(sw_dec[b] / derived70_decode(b, ref_ctx) for b in sw_dec)
    print(f"70B: measured/derived prefill {pre_cal:.2f}, decode {dec_cal:.2f} (calibration applied to 8B)")
    print("70B prefill (s) measured vs derived:",
          {n: (round(sw_pre[n], 4), round(derived70_prefill(n), 4)) for n in sw_pre if n <= 4096})
    kv70 = 2 * 80 * 8 * 128 * 2  # K and V × layers × kv heads × head dim × bf16 bytes = 320 KiB
    prof70 = {
        "prefill": [[n, s] for n, s in sw_pre.items()], "decode": dec70,
        "kv_load_s_per_token": {"disk": kv70 / NVME_BYTES_PER_S},
        "meta": {"model": "Llama-3-70B", "gpu": "H100-80GB", "gpus_per_replica": 4, "tensor_parallel": 4,
                 "kv_bytes_per_token": kv70, "source": "Splitwise perf_model.csv (Llama-2-70B, H100 TP4, measured "
                 "end to end, medians) + vidur legacy attention for contexts beyond 576 tokens",
                 "calibration": {"prefill_measured_over_kernel": pre_cal, "decode_measured_over_kernel": dec_cal},
                 "nvme_bytes_per_s": NVME_BYTES_PER_S, "derived_by": "scripts/derive_gpu_profiles.py"}}

    # ---- 8B, 1×H100: derived from kernel profiles, calibrated with 70B -------------------------
    L8 = 32
    lin7_h = lin_ms(vid / "h100/meta-llama/Llama-2-7b-hf/mlp.csv", 1)
    lin7_a = lin_ms(vid / "a100/meta-llama/Llama-2-7b-hf/mlp.csv", 1)
    lin8_a = lin_ms(vid / "a100/meta-llama/Meta-Llama-3-8B/mlp.csv", 1)

    def lin8_h(n: int) -> float:
        return interp(lin7_h, n) * interp(lin8_a, n) / interp(lin7_a, n)

    pre8 = [[n, pre_cal * L8 * (lin8_h(n) + attn_pre(n) / 2) / 1000] for n in (128, 256, 512, 1024, 2048, 3072, 4096)]
    dec8 = [[b, dec_cal * L8 * (lin8_h(b) + attn_dec(b, kv) * 2 / 1.6) / 1000, kv]
            for kv in (ref_ctx,) + contexts for b in (1, 2, 4, 8, 16, 32, 64)]
    kv8 = 2 * 32 * 8 * 128 * 2  # 128 KiB
    prof8 = {
        "prefill": pre8, "decode": dec8, "kv_load_s_per_token": {"disk": kv8 / NVME_BYTES_PER_S},
        "meta": {"model": "Llama-3-8B", "gpu": "H100-80GB", "gpus_per_replica": 1, "tensor_parallel": 1,
                 "kv_bytes_per_token": kv8, "source": "vidur H100 Llama-2-7B kernels × A100 Llama-3-8B/Llama-2-7B "
                 "ratio + vidur legacy A100 attention, × 70B measured/kernel calibration (proxy, not measured)",
                 "calibration": {"prefill_measured_over_kernel": pre_cal, "decode_measured_over_kernel": dec_cal},
                 "nvme_bytes_per_s": NVME_BYTES_PER_S, "derived_by": "scripts/derive_gpu_profiles.py"}}
    if a.measured_8b:
        (MEASURED_8B_DIR / "llama3-8b-h100x1-kernel-derived.json").write_text(json.dumps(prof8, indent=1) + "\n")
        prof8 = measured_8b(a.measured_8b, prof8["meta"])
    prof70_a, prof8_a = a100_profiles(data, attn_pre, attn_dec, kv70, kv8, ref_ctx, contexts)
    for name, prof in (("llama3-8b-h100x1", prof8), ("llama3-70b-h100x4", prof70),
                       ("llama3-8b-a100x1", prof8_a), ("llama3-70b-a100x4", prof70_a)):
        (out / f"{name}.json").write_text(json.dumps(prof, indent=1) + "\n")
        print(f"wrote {out / name}.json: 2048-token prefill "
              f"{np.interp(2048, [p[0] for p in prof['prefill']], [p[1] for p in prof['prefill']]) * 1000:.1f} ms")

    (out / "gpu_types.json").write_text(json.dumps(gpu_catalogue(data), indent=1) + "\n")
    print(f"wrote {out / 'gpu_types.json'}")


if __name__ == "__main__":
    main()
