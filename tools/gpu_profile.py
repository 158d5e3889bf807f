#!/usr/bin/env python3
"""A measured GPU profile for the simulator's GPU cost model (docs/design/simulator.md, "GPU replicas"):
Llama-2-7B's (or 13B's) shapes with random FP16 weights (nothing to download), one GPU, plain PyTorch eager ops (no CUDA
graphs, no fused kernels: vLLM-0.2-era execution, as the roofline assumes).

Measures, median of REPS timed runs after warm-up (CUDA events):
- decode step (merged: base weights only) by batch B and context C: RMSNorm, fused QKV, SDPA over a dense
  K/V cache of C tokens per sequence, O, gate/up, SiLU·up, down, per layer; the LM head at the end;
- the same step unmerged with rank-16 LoRA on q and v for n distinct adapters in the batch, two ways:
  gathered (each token's A and B gathered, batched bmm: Punica BGMV's arithmetic) and per adapter (a segment
  of the batch per adapter: PEFT-like);
- prefill of B prompts of P tokens;
- merge and unmerge of one rank-16 q/v adapter (W += s·B·A over 32 layers, then W −= s·B·A);
- an adapter's load from pinned and from pageable host memory (rank 16, q/v, 32 layers); host <-> device rates;
- a graph-replayed decode step (batch 32, context 512) alone and while K/V streams device -> host beside it.

    python3 tools/gpu_profile.py --out DIR        # writes DIR/gpu-profile.json (GPU_PROFILE_MODEL=13b: 13B's shapes)
"""
import argparse
import json
import math
import os
import platform
import time

import torch
import torch.nn.functional as F

SHAPES = {"7b": (32, 4096, 32, 128, 11008, 32000), "13b": (40, 5120, 40, 128, 13824, 32000)}
MODEL = os.environ.get("GPU_PROFILE_MODEL", "7b")  # Llama-2 7B or 13B shapes
L, H, NH, D, FF, V = SHAPES[MODEL]
RANK = 16
SMOKE = os.environ.get("GPU_PROFILE_SMOKE") == "1"  # tiny shapes on the CPU: checks the script, not a profile
if SMOKE:
    L, H, NH, D, FF, V = 2, 64, 4, 16, 128, 100


def timed(fn, reps, warmup=3):
    for _ in range(warmup):
        fn()
    if SMOKE:
        out = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t) * 1e3)
        return sorted(out)[len(out) // 2]
    torch.cuda.synchronize()
    out = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(a.elapsed_time(b))
    out.sort()
    return out[len(out) // 2]


def graph_ms(step, reps):
    """`step` captured in a CUDA graph (after two warm-up runs on a side stream, as capture needs) and timed by its
    replays: the GPU's own time for it, with no Python or launch cost per kernel. On the CPU smoke run: timed as is."""
    if SMOKE:
        return timed(step, reps, warmup=1)
    graph = capture(step)
    ms = timed(graph.replay, reps)
    del graph
    return ms


def capture(step):
    """`step` captured in a CUDA graph, after two warm-up runs on a side stream (as capture needs)."""
    s_ = torch.cuda.Stream()
    s_.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s_):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(s_)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    return graph


def rms(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w


class Model:
    def __init__(self, dev):
        g = torch.Generator(device=dev).manual_seed(0)
        s = 0.02
        mk = lambda *shape: (torch.randn(*shape, device=dev, generator=g, dtype=torch.float16) * s)
        self.layers = [dict(qkv=mk(3 * H, H), o=mk(H, H), gu=mk(2 * FF, H), down=mk(H, FF),
                            n1=torch.ones(H, device=dev, dtype=torch.float16), n2=torch.ones(H, device=dev, dtype=torch.float16))
                       for _ in range(L)]
        self.head = mk(V, H)
        self.dev = dev

    def step(self, x, kv, lora=None):
        """x: (B, T, H); kv: per layer (K, V) of (B, NH, C, D) or None (prefill: causal over x itself)."""
        B, T, _ = x.shape
        for li, w in enumerate(self.layers):
            h = rms(x, w["n1"])
            qkv = h @ w["qkv"].t()
            if lora is not None:
                extra = lora(li, h, qkv)  # None: the LoRA path added itself into qkv in place
                if extra is not None:
                    qkv = qkv + extra
            q, k, v = qkv.split(H, dim=-1)
            q = q.view(B, T, NH, D).transpose(1, 2)
            if kv is None:
                k = k.view(B, T, NH, D).transpose(1, 2)
                v = v.view(B, T, NH, D).transpose(1, 2)
                a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                K, Vc = kv[li]
                a = F.scaled_dot_product_attention(q, K, Vc)
            a = a.transpose(1, 2).reshape(B, T, H)
            x = x + a @ w["o"].t()
            h = rms(x, w["n2"])
            gu = h @ w["gu"].t()
            gt, up = gu.split(FF, dim=-1)
            x = x + (F.silu(gt) * up) @ w["down"].t()
        return x[:, -1] @ self.head.t()


def adapters(n, dev):
    g = torch.Generator(device=dev).manual_seed(1)
    A = torch.randn(n, L, 2, RANK, H, device=dev, dtype=torch.float16, generator=g) * 0.01
    Bm = torch.randn(n, L, 2, H, RANK, device=dev, dtype=torch.float16, generator=g) * 0.01
    return A, Bm


def gathered_lora(A, Bm, idx):
    """Per token its adapter's A and B (BGMV's arithmetic): q and v columns of the fused QKV output."""
    def f(li, h, _qkv):  # h: (B, 1, H)
        Bsz = h.shape[0]
        out = torch.zeros(Bsz, 1, 3 * H, device=h.device, dtype=h.dtype)
        for j, col in ((0, 0), (1, 2 * H)):
            a = A[idx, li, j]            # (B, r, H)
            b = Bm[idx, li, j]           # (B, H, r)
            u = torch.bmm(h, a.transpose(1, 2))        # (B, 1, r)
            out[:, :, col:col + H] = torch.bmm(u, b.transpose(1, 2)) * 2.0
        return out
    return f


def segment_lora(A, Bm, segments):
    """A segment of the batch per adapter (PEFT-like): one pair of products per adapter and module."""
    def f(li, h, _qkv):
        out = torch.zeros(h.shape[0], h.shape[1], 3 * H, device=h.device, dtype=h.dtype)
        for ad, (s0, s1) in enumerate(segments):
            hs = h[s0:s1]
            for j, col in ((0, 0), (1, 2 * H)):
                out[s0:s1, :, col:col + H] = (hs @ A[ad, li, j].t()) @ Bm[ad, li, j].t() * 2.0
        return out
    return f


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    dev = torch.device("cpu" if SMOKE else "cuda")
    t0 = time.time()
    res = {"date": time.strftime("%Y-%m-%d"), "gpu": "cpu smoke" if SMOKE else torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
           "python": platform.python_version(), "model": MODEL, "weights": "Llama-2 shapes, random FP16", "rank": RANK,
           "decode": [], "unmerged": [], "prefill": [], "graphs": []}
    print(json.dumps({k: res[k] for k in ("gpu", "torch", "cuda")}), flush=True)
    with torch.inference_mode():
        m = Model(dev)
        pieces = []

        def kv_cache(Bsz, C):
            return [(torch.randn(Bsz, NH, C, D, device=dev, dtype=torch.float16),
                     torch.randn(Bsz, NH, C, D, device=dev, dtype=torch.float16)) for _ in range(L)]

        for Bsz, C in ((1, 512), (8, 512), (32, 512), (64, 512), (32, 128), (32, 2048)):
            kv = kv_cache(Bsz, C)
            x = torch.randn(Bsz, 1, H, device=dev, dtype=torch.float16)
            ms = timed(lambda: m.step(x, kv), args.reps)
            res["decode"].append({"batch": Bsz, "context": C, "ms": ms})
            print("decode", Bsz, C, round(ms, 3), flush=True)
            if (Bsz, C) == (32, 512):
                for n in (1, 8, 32):
                    A, Bm = adapters(n, dev)
                    idx = torch.arange(Bsz, device=dev) % n
                    idx, _ = idx.sort()
                    per = Bsz // n
                    segs = [(i * per, (i + 1) * per) for i in range(n)]
                    g = timed(lambda: m.step(x, kv, gathered_lora(A, Bm, idx)), args.reps)
                    s = timed(lambda: m.step(x, kv, segment_lora(A, Bm, segs)), args.reps)
                    res["unmerged"].append({"batch": Bsz, "context": C, "adapters": n, "gathered_ms": g, "segments_ms": s})
                    print("unmerged", n, round(g, 3), round(s, 3), flush=True)
                    del A, Bm
            del kv
            if not SMOKE:
                torch.cuda.empty_cache()
        # The same decode steps captured in a CUDA graph (replayed: no Python or launch cost per kernel), which
        # is what vLLM does for decode batches since 0.2.x: the GPU's own time for the step.
        if not SMOKE:
            for Bsz, C, n in ((1, 512, 0), (8, 512, 0), (32, 512, 0), (64, 512, 0), (32, 2048, 0), (32, 512, 1), (32, 512, 8), (32, 512, 32)):
                kv = kv_cache(Bsz, C)
                x = torch.randn(Bsz, 1, H, device=dev, dtype=torch.float16)
                lora = None
                if n:
                    A, Bm = adapters(n, dev)
                    idx, _ = (torch.arange(Bsz, device=dev) % n).sort()
                    lora = gathered_lora(A, Bm, idx)
                ms = graph_ms(lambda: m.step(x, kv, lora), args.reps)
                res["graphs"].append({"batch": Bsz, "context": C, "adapters": n, "ms": ms})
                print("graph", Bsz, C, n, round(ms, 3), flush=True)
                del kv
                torch.cuda.empty_cache()
        for Bsz, P in ((1, 512), (8, 512)):
            x = torch.randn(Bsz, P, H, device=dev, dtype=torch.float16)
            ms = timed(lambda: m.step(x, None), max(3, args.reps // 2))
            res["prefill"].append({"batch": Bsz, "prompt": P, "ms": ms})
            print("prefill", Bsz, P, round(ms, 3), flush=True)
        # Merge / unmerge of one rank-16 q/v adapter into the fused QKV weights.
        A, Bm = adapters(1, dev)

        def merge(sign):
            for li, w in enumerate(m.layers):
                for j, row in ((0, 0), (1, 2 * H)):
                    w["qkv"][row:row + H].add_(Bm[0, li, j] @ A[0, li, j], alpha=2.0 * sign)
        res["merge_ms"] = timed(lambda: merge(1), args.reps)
        res["unmerge_ms"] = timed(lambda: merge(-1), args.reps)
        print("merge", res["merge_ms"], "unmerge", res["unmerge_ms"], flush=True)
        # Adapter load: its bytes host -> device.
        host = torch.randn(L, 2, 2 * RANK * H, dtype=torch.float16)
        pinned = host if SMOKE else host.pin_memory()
        dst = torch.empty_like(host, device=dev)
        res["adapter_bytes"] = host.numel() * 2
        res["load_pinned_ms"] = timed(lambda: dst.copy_(pinned, non_blocking=True), args.reps)
        res["load_pageable_ms"] = timed(lambda: dst.copy_(host), args.reps)
        big = torch.empty((1 << 20) if SMOKE else (256 << 20), dtype=torch.uint8)
        big = big if SMOKE else big.pin_memory()
        bigd = torch.empty_like(big, device=dev)
        ms = timed(lambda: bigd.copy_(big, non_blocking=True), args.reps)
        res["h2d_GBps"] = big.numel() / (ms / 1e3) / 1e9
        # The other direction (a preempted request's K/V swapped out, a migration's stages leaving the GPU).
        ms = timed(lambda: big.copy_(bigd, non_blocking=True), args.reps)
        res["d2h_GBps"] = big.numel() / (ms / 1e3) / 1e9
        print("load", res["load_pinned_ms"], res["load_pageable_ms"], "h2d GB/s", res["h2d_GBps"], "d2h GB/s", res["d2h_GBps"], flush=True)
        # A decode step while K/V streams out over PCIe on a side stream (a migration's stages copied while the
        # request keeps decoding, as Llumnix does): the step's replays timed alone and beside the copies.
        if not SMOKE:
            Bsz, C = 32, 512
            kv = kv_cache(Bsz, C)
            x = torch.randn(Bsz, 1, H, device=dev, dtype=torch.float16)
            graph = capture(lambda: m.step(x, kv))
            side = torch.cuda.Stream()

            def replays(n, copies):
                torch.cuda.synchronize()
                if copies:
                    with torch.cuda.stream(side):
                        for _ in range(copies):
                            big.copy_(bigd, non_blocking=True)
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                for _ in range(n):
                    graph.replay()
                b.record()
                b.synchronize()
                torch.cuda.synchronize()
                return a.elapsed_time(b) / n
            n = 20
            alone, beside = [], []
            for _ in range(5):
                alone.append(replays(n, 0))
                per_copy = big.numel() / (res["d2h_GBps"] * 1e9) * 1e3
                beside.append(replays(n, int(alone[-1] * n / per_copy) + 2))
            res["decode_under_d2h"] = {"batch": Bsz, "context": C, "alone_ms": sorted(alone)[2], "beside_copy_ms": sorted(beside)[2]}
            print("decode under d2h", res["decode_under_d2h"], flush=True)
            del graph, kv
    res["seconds"] = time.time() - t0
    with open(os.path.join(args.out, "gpu-profile.json"), "w") as f:
        json.dump(res, f, indent=1)
    print("done in", round(res["seconds"], 1), "s", flush=True)


if __name__ == "__main__":
    main()
