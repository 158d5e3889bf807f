#!/usr/bin/env python3
"""bench/results/gpu-profile-{h200,h100}*.md from a tools/gpu_profile.py JSON: the measured steps beside what the
simulator's roofline (docs/design/simulator.md, "GPU replicas"; Sources/Simulator/RooflineCostModel.swift)
predicts for the profiled Llama-2 shapes on the profiled GPU, with the roofline's constants restated here.

    python3 tools/gpu_profile_report.py bench/results/gpu-profile-h200.json > bench/results/gpu-profile-h200.md
    python3 tools/gpu_profile_report.py PROFILE.json --knobs KNOBS.json   # also: the roofline knobs it measures,
                                                                          # for `dlora simulate --cost h200-7b --cost-profile KNOBS.json`
"""
import json
import sys

# The roofline's vendor figures per GPU (HBM bytes/s, FP16 dense FLOP/s, PCIe bytes/s per direction), as
# RooflineCostModel states them; the profile's device name picks the row (an "H100 80GB HBM3" is the SXM5 part).
GPUS = {"H200": ("H200 SXM", 4800e9, 989e12, 64e9), "H100": ("H100 SXM5", 3350e9, 989e12, 64e9),
        "A800": ("A800 80GB SXM", 2039e9, 312e12, 32e9), "A100": ("A100 80GB SXM", 2039e9, 312e12, 32e9)}
GPU_LABEL, HBM, PEAK, PCIE = GPUS["H200"]
MODELS = {"7b": (6.74e9, 32, 4096), "13b": (13.0e9, 40, 5120)}  # parameters, layers, hidden (Llama-2, no GQA)
PARAMS, LAYERS, HIDDEN = MODELS["7b"]
KV_PER_TOKEN = 2 * LAYERS * HIDDEN * 2
MBU, MFU, FIXED = 0.8, 0.6, 0.0015
GAMMA, DELTA_7B_A800, SWITCH_7B_A800, A800_HBM = 0.6, 1e-4, 0.020, 2039e9


def merged(batch, context, tokens=None, model=None, fixed=True):
    """The roofline's merged step in seconds for `model`'s shapes (default: the report's) on the GPU `use_gpu` set;
    `fixed=False`: its bytes/FLOPs term alone."""
    params, layers, hidden = MODELS[model] if model else (PARAMS, LAYERS, HIDDEN)
    tokens = tokens if tokens is not None else batch
    bytes_ = 2 * params + batch * context * 2 * layers * hidden * 2
    flops = 2 * params * tokens + 4 * layers * hidden * batch * context
    return (FIXED if fixed else 0.0) + max(bytes_ / (HBM * MBU), flops / (PEAK * MFU))


def elements_ratio(model):
    """The elements a q/v merge rewrites at `model`'s shapes over 7B's: how the roofline scales the switch."""
    _, layers, hidden = MODELS[model]
    return (layers * hidden * hidden) / (32 * 4096 * 4096)


def unmerged_line(merged_seconds, pts):
    """γ and δ (seconds per distinct adapter) of step = merged·(1 + γ) + δ·n: a least-squares line through the
    (n, step seconds) points, neither below 0."""
    n_mean = sum(n for n, _ in pts) / len(pts)
    y_mean = sum(y for _, y in pts) / len(pts)
    slope = max(0.0, sum((n - n_mean) * (y - y_mean) for n, y in pts) / sum((n - n_mean) ** 2 for n, _ in pts))
    return max(0.0, (y_mean - slope * n_mean) / merged_seconds - 1), slope


def use_gpu(device_name):
    """Sets the roofline's figures to the GPU a profile names (H200 when it names none we know)."""
    global GPU_LABEL, HBM, PEAK, PCIE
    key = next((k for k in GPUS if k in device_name), "H200")
    GPU_LABEL, HBM, PEAK, PCIE = GPUS[key]
    return key


def delta_7b_a800(delta, model):
    """δ measured on the profiled GPU (`use_gpu`) with `model`'s shapes, referred to 7B on an A800 as the roofline
    scales it (by layers · hidden, and by HBM bandwidth)."""
    _, layers, hidden = MODELS[model]
    return delta * (HBM / A800_HBM) / (layers * hidden / (32 * 4096))


def knobs(r, name):
    """The roofline knobs this measurement gives (RooflineCostModel.profileKeys), referenced as the model is:
    γ and δ from a least-squares line through the graph-replayed unmerged steps (step = merged·(1 + γ) + δ·n),
    δ and the switch converted back to 7B (and A800) by the roofline's own size and bandwidth scaling, the
    load's set-up as the pinned load's time beyond its bytes over PCIe at 80 %."""
    merged = next(g["ms"] for g in r["graphs"] if (g["batch"], g["context"], g["adapters"]) == (32, 512, 0)) / 1e3
    pts = [(g["adapters"], g["ms"] / 1e3) for g in r["graphs"] if g["adapters"] and (g["batch"], g["context"]) == (32, 512)]
    gamma, slope = unmerged_line(merged, pts)
    switch = (r["merge_ms"] + r["unmerge_ms"]) / 1e3
    return {
        "source": f"tools/gpu_profile.py on {r['gpu']} (torch {r['torch']}), Llama-2-{name.upper()} shapes; tools/gpu_profile_report.py --knobs",
        "unmerged_gamma": round(gamma, 4),
        "per_adapter_seconds_7b": delta_7b_a800(slope, name),
        "switch_seconds_7b_a800": switch * (HBM / A800_HBM) / elements_ratio(name),
        "adapter_load_seconds": max(0.0, r["load_pinned_ms"] / 1e3 - r["adapter_bytes"] / (0.8 * PCIE)),
    }


def main():
    global PARAMS, LAYERS, HIDDEN, KV_PER_TOKEN
    r = json.load(open(sys.argv[1]))
    gpu = use_gpu(r["gpu"])
    name = r.get("model", "7b") if r.get("model") in MODELS else "7b"
    PARAMS, LAYERS, HIDDEN = MODELS[name]
    KV_PER_TOKEN = 2 * LAYERS * HIDDEN * 2
    size = LAYERS * HIDDEN / (32 * 4096)  # the roofline scales δ by layers · hidden, the switch by elements rewritten
    delta = DELTA_7B_A800 * size * A800_HBM / HBM
    half_switch = SWITCH_7B_A800 / 2 * elements_ratio(name) * A800_HBM / HBM
    if "--knobs" in sys.argv:
        with open(sys.argv[sys.argv.index("--knobs") + 1], "w") as f:
            json.dump(knobs(r, name), f, indent=1)
            f.write("\n")
    out = []
    p = out.append
    p(f"# A measured GPU profile: Llama-2-{name.upper()} shapes on one {gpu}, beside the simulator's roofline")
    p("")
    p(f"Measured by `python3 tools/gpu_profile.py` on {r['gpu']} (torch {r['torch']}, CUDA {r['cuda']}) through the")
    p(f"session's device tool, {r.get('date', '2026-12-04')}; this file by `python3 tools/gpu_profile_report.py`. Random FP16 weights of")
    p(f"Llama-2-{name.upper()}'s shapes ({LAYERS} layers, hidden {HIDDEN}, vocabulary 32000; nothing downloaded), dense K/V")
    p("caches (no paging), PyTorch ops (fused QKV and gate/up products, SDPA). Medians of 20 timed runs after")
    p("warm-up, CUDA events. \"graph\": the step captured in a CUDA graph and replayed (the GPU's own time, as")
    p("vLLM runs decode batches); \"eager\": launched op by op from Python. Roofline: docs/design/simulator.md,")
    p(f"\"GPU replicas\", with its constants for {GPU_LABEL} / {name.upper()} (HBM {HBM / 1e9:,.0f} GB/s × 0.8, {PEAK / 1e12:,.0f} TFLOPS × 0.6, 1.5 ms fixed).")
    p("")
    p("## Decode step, base weights only (merged)")
    p("")
    p("| batch | context | graph ms | eager ms | roofline ms | roofline / graph |")
    p("|---:|---:|---:|---:|---:|---:|")
    eager = {(d["batch"], d["context"]): d["ms"] for d in r["decode"]}
    for g in r["graphs"]:
        if g["adapters"]:
            continue
        b, c = g["batch"], g["context"]
        rl = merged(b, c) * 1e3
        e = eager.get((b, c))
        p(f"| {b} | {c} | {g['ms']:.2f} | {'' if e is None else f'{e:.2f}'} | {rl:.2f} | {rl / g['ms']:.2f} |")
    p("")
    p("## Unmerged: rank-16 LoRA on q and v, batch 32, context 512")
    p("")
    base = next(g["ms"] for g in r["graphs"] if (g["batch"], g["context"], g["adapters"]) == (32, 512, 0))
    p("Gathered: each token's A and B gathered and multiplied in a batched product (Punica BGMV's arithmetic,")
    p("not its kernel); per adapter: a segment of the batch per adapter (PEFT-like; eager only).")
    p("")
    p("| distinct adapters | graph gathered ms | γ + δ·n measured (over merged) | eager gathered ms | eager per adapter ms | roofline ms |")
    p("|---:|---:|---:|---:|---:|---:|")
    eager_u = {u["adapters"]: u for u in r["unmerged"]}
    for g in r["graphs"]:
        if not g["adapters"]:
            continue
        n = g["adapters"]
        rl = (merged(32, 512) * (1 + GAMMA) + delta * n) * 1e3
        u = eager_u.get(n, {})
        p(f"| {n} | {g['ms']:.2f} | {g['ms'] / base - 1:+.2f} | {u.get('gathered_ms', float('nan')):.2f} | "
          f"{u.get('segments_ms', float('nan')):.2f} | {rl:.2f} |")
    p("")
    p(f"Roofline: merged × (1 + γ) + δ · n with γ = {GAMMA}, δ = {delta * 1e3:.3f} ms (0.1 ms at 7B/A800 scaled by size and HBM).")
    p("")
    p("## Prefill (eager; compute-bound, so launches matter little)")
    p("")
    p("| prompts × tokens | eager ms | roofline ms |")
    p("|---|---:|---:|")
    for q in r["prefill"]:
        b, t = q["batch"], q["prompt"]
        rl = (FIXED + max((2 * PARAMS + b * t * KV_PER_TOKEN) / (HBM * MBU), (2 * PARAMS * b * t + 4 * LAYERS * HIDDEN * b * t * t / 2) / (PEAK * MFU))) * 1e3
        p(f"| {b} × {t} | {q['ms']:.2f} | {rl:.2f} |")
    p("")
    p(f"## Adapter switch and load (rank 16, q and v, {LAYERS} layers)")
    p("")
    load = (1e-3 + r["adapter_bytes"] / (0.8 * PCIE)) * 1e3
    p("| what | measured ms | roofline ms |")
    p("|---|---:|---:|")
    p(f"| merge (W += s·B·A into the fused QKV rows) | {r['merge_ms']:.2f} | {half_switch * 1e3:.2f} |")
    p(f"| unmerge | {r['unmerge_ms']:.2f} | {half_switch * 1e3:.2f} |")
    p(f"| load {r['adapter_bytes'] / 1e6:.1f} MB from pinned host memory | {r['load_pinned_ms']:.2f} | {load:.2f} |")
    p(f"| load from pageable host memory | {r['load_pageable_ms']:.2f} | |")
    p(f"| host → device, 256 MiB pinned | {r['h2d_GBps']:.1f} GB/s | {0.8 * PCIE / 1e9:.1f} GB/s |")
    if "d2h_GBps" in r:
        p(f"| device → host, 256 MiB pinned (K/V swapped out, a migration's stages) | {r['d2h_GBps']:.1f} GB/s | {0.8 * PCIE / 1e9:.1f} GB/s |")
    u = r.get("decode_under_d2h")
    if u:
        p("")
        p("## A decode step while K/V streams out beside it")
        p("")
        p(f"Graph-replayed decode at batch {u['batch']}, context {u['context']}: {u['alone_ms']:.2f} ms alone, {u['beside_copy_ms']:.2f} ms while")
        p(f"256 MiB device → host copies run back to back on a side stream ({u['beside_copy_ms'] / u['alone_ms'] - 1:+.1%}; medians of")
        p("5 runs of 20 replays each). The simulator lets a migrating request keep decoding at its replica's step time while")
        p("its K/V is copied in stages, which this bears out: the copy engine and the HBM it draws on leave the step nearly whole.")
    print("\n".join(out))


if __name__ == "__main__":
    main()
