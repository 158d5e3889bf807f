#!/usr/bin/env python3
"""The unmerged decode step's overhead (the simulator's γ and δ) on a GPU with a multi-adapter LoRA kernel built
for the job (tools/lora_triton.py: Punica BGMV / vLLM-style shrink and expand, q and v in one launch each), beside
the gathered batched products of tools/gpu_profile.py (PyTorch's generic ops, which copy each token's A and B).

Same model as tools/gpu_profile.py: Llama-2-7B's (GPU_PROFILE_MODEL=13b: 13B's) shapes, random FP16 weights, dense
K/V, context 512; every step captured in a CUDA graph and replayed (as vLLM runs decode batches); medians of REPS
replays after warm-up, CUDA events. Measured side by side in one run:
- merged steps (base weights only) at batch 32 and 64;
- unmerged, rank-16 q/v LoRA: batch 32 with 1/8/32 distinct adapters and batch 64 with 1/16/64, by the Triton
  kernels and by the gathered products; the Triton kernels with no token holding an adapter (their launches
  alone); rank 64 at batch 32 with 32 adapters;
- parity: one layer's q/v LoRA by the Triton kernels against the gathered products at full shape.

    python3 tools/gpu_profile_lora.py --out DIR                 # DIR/gpu-profile-lora-7b.json
    python3 tools/gpu_profile_lora.py --report A.json [B.json]  # markdown to stdout
    python3 tools/gpu_profile_lora.py --knobs A.json OUT.json   # γ and δ from the Triton points at batch 32
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpu_profile_report import delta_7b_a800, unmerged_line, use_gpu  # noqa: E402


def measure(args):
    import torch
    import gpu_profile as gp
    from lora_triton import BGMV

    # GPU_PROFILE_SMOKE=1 TRITON_INTERPRET=1: tiny shapes on the CPU, no graphs (checks the script, not a profile).
    dev = torch.device("cpu" if gp.SMOKE else "cuda")
    L, H = gp.L, gp.H
    kw = dict(split_k=1, block_k=64, block_n=64) if gp.SMOKE else {}
    res = {"date": time.strftime("%Y-%m-%d"), "gpu": "cpu smoke" if gp.SMOKE else torch.cuda.get_device_name(0), "torch": torch.__version__, "cuda": torch.version.cuda,
           "model": gp.MODEL, "context": 512, "runs": [], "parity": None}
    t0 = time.time()

    def adapters(n, rank):
        g = torch.Generator(device=dev).manual_seed(1)
        A = torch.randn(n, L, 2, rank, H, device=dev, dtype=torch.float16, generator=g) * 0.01
        Bm = torch.randn(n, L, 2, H, rank, device=dev, dtype=torch.float16, generator=g) * 0.01
        return A, Bm

    def triton_lora(A, Bm, idx, Bsz, rank):
        k = BGMV(Bsz, 2, rank, H, dev, **kw)

        def f(li, h, qkv):
            # q at columns [0, H), v at [2H, 3H) of the fused QKV output: slices 2H apart, added in place.
            k(h.view(Bsz, H), A[:, li], Bm[:, li], idx, qkv.view(Bsz, 3 * H), 2 * H, 2.0)
            return None
        return f

    with torch.inference_mode():
        m = gp.Model(dev)
        # Parity at full shape, one layer: Triton against the gathered products (both FP16 in, FP32 sums).
        Bsz = 32
        A, Bm = adapters(32, 16)
        idx = torch.arange(Bsz, device=dev, dtype=torch.int32)
        h = torch.randn(Bsz, 1, H, device=dev, dtype=torch.float16)
        want = gp.gathered_lora(A, Bm, idx.long())(0, h, None).view(Bsz, 3 * H)
        got = torch.zeros(Bsz, 3 * H, device=dev, dtype=torch.float16)
        BGMV(Bsz, 2, 16, H, dev, **kw)(h.view(Bsz, H), A[:, 0], Bm[:, 0], idx, got, 2 * H, 2.0)
        res["parity"] = {"max_abs_diff": (got.float() - want.float()).abs().max().item(),
                         "max_abs": want.float().abs().max().item()}
        print("parity", res["parity"], flush=True)
        del A, Bm
        plan = [(32, 0, 16, "merged"), (32, 1, 16, "triton"), (32, 8, 16, "triton"), (32, 32, 16, "triton"),
                (32, 32, 16, "triton-none"), (32, 1, 16, "gathered"), (32, 8, 16, "gathered"), (32, 32, 16, "gathered"),
                (32, 32, 64, "triton"), (64, 0, 16, "merged"), (64, 1, 16, "triton"), (64, 16, 16, "triton"),
                (64, 64, 16, "triton"), (64, 64, 16, "gathered"), (32, 0, 16, "merged")]
        for Bsz, n, rank, how in plan:
            kv = [(torch.randn(Bsz, gp.NH, 512, gp.D, device=dev, dtype=torch.float16),
                   torch.randn(Bsz, gp.NH, 512, gp.D, device=dev, dtype=torch.float16)) for _ in range(L)]
            x = torch.randn(Bsz, 1, H, device=dev, dtype=torch.float16)
            lora = None
            if how != "merged":
                A, Bm = adapters(n, rank)
                idx, _ = (torch.arange(Bsz, device=dev, dtype=torch.int32) % n).sort()
                if how == "triton-none":
                    idx = torch.full_like(idx, -1)
                lora = gp.gathered_lora(A, Bm, idx.long()) if how == "gathered" else triton_lora(A, Bm, idx, Bsz, rank)
            ms = gp.graph_ms(lambda: m.step(x, kv, lora), args.reps)
            res["runs"].append({"batch": Bsz, "adapters": n, "rank": rank, "how": how, "ms": ms})
            print(how, Bsz, n, rank, round(ms, 3), flush=True)
            del kv, lora
            if not gp.SMOKE:
                torch.cuda.empty_cache()
        # Prefill: B prompts of 512 tokens, one adapter per prompt, each prompt's q/v LoRA as two products over its
        # own segment of tokens added into the QKV output in place (SGMV's arithmetic; prompts sharing an adapter
        # would share a segment), captured in a graph like the decode steps.
        for Bsz in (1, 8):
            x = torch.randn(Bsz, 512, H, device=dev, dtype=torch.float16)
            A, Bm = adapters(Bsz, 16)

            def seg(li, h, qkv, A=A, Bm=Bm, Bsz=Bsz):
                for b in range(Bsz):
                    for j, col in ((0, 0), (1, 2 * H)):
                        qkv[b, :, col:col + H].add_((h[b] @ A[b, li, j].t()) @ Bm[b, li, j].t(), alpha=2.0)
                return None
            for how, lora in (("prefill-merged", None), ("prefill-segments", seg)):
                ms = gp.graph_ms(lambda: m.step(x, None, lora), args.reps)
                res["runs"].append({"batch": Bsz, "prompt": 512, "adapters": Bsz if lora else 0, "rank": 16, "how": how, "ms": ms})
                print(how, Bsz, round(ms, 3), flush=True)
            del A, Bm
    res["seconds"] = time.time() - t0
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"gpu-profile-lora-{gp.MODEL}.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    print("wrote", path, "in", round(res["seconds"], 1), "s", flush=True)


def merged_ms(r, batch, how="merged"):
    ms = [x["ms"] for x in r["runs"] if x["how"] == how and x["batch"] == batch]
    return sum(ms) / len(ms)


def fit(r, how, batch=32, rank=16):
    """γ and δ (seconds per distinct adapter) of step = merged·(1 + γ) + δ·n, least squares over n."""
    pts = [(x["adapters"], x["ms"] / 1e3) for x in r["runs"] if x["how"] == how and x["batch"] == batch and x["rank"] == rank]
    return unmerged_line(merged_ms(r, batch) / 1e3, pts)


def report(paths):
    out = []
    p = out.append
    first = json.load(open(paths[0]))
    p(f"# The unmerged step on one {use_gpu(first['gpu'])} with a multi-adapter LoRA kernel (Punica BGMV-style, in Triton)")
    p("")
    p(f"Measured by `python3 tools/gpu_profile_lora.py` through the session's device tool, {first.get('date', '2026-12-04')}; this file by")
    p("`python3 tools/gpu_profile_lora.py --report`. Llama-2 shapes with random FP16 weights, dense K/V, 512 tokens of")
    p("context per sequence, every step captured in a CUDA graph and replayed; medians of the timed replays, CUDA events.")
    p("\"triton\": tools/lora_triton.py, a shrink and an expand kernel per layer serving q and v in one launch each, each")
    p("token reading its own adapter's A and B in place (the arithmetic and access pattern of Punica's BGMV and vLLM's")
    p("LoRA kernels, our own code). \"gathered\": tools/gpu_profile.py's batched products over gathered copies of each")
    p(f"token's A and B (PyTorch's generic ops; what bench/results/gpu-profile-{use_gpu(first['gpu']).lower()}.md measured). \"triton, none\": the")
    p("kernels launched with no token holding an adapter (their launch and masking alone). Adapters: rank 16 (one row")
    p("rank 64) on q and v of every layer; the batch's tokens spread evenly over the distinct adapters.")
    for path in paths:
        r = json.load(open(path))
        name = r["model"].upper()
        p("")
        p(f"## Llama-2-{name} on {r['gpu']} (torch {r['torch']}, CUDA {r['cuda']})")
        p("")
        par = r["parity"]
        p(f"Parity, one layer at batch 32 with 32 adapters: largest difference between the Triton kernels and the gathered")
        p(f"products {par['max_abs_diff']:.2e}, against outputs up to {par['max_abs']:.2e} (FP16 results of FP32 sums).")
        p("")
        p("| batch | distinct adapters | rank | how | step ms | over merged |")
        p("|---:|---:|---:|---|---:|---:|")
        for x in r["runs"]:
            if x["how"].startswith("prefill"):
                continue
            base = merged_ms(r, x["batch"])
            over = "" if x["how"] == "merged" else f"{x['ms'] / base - 1:+.1%}"
            how = {"triton-none": "triton, none"}.get(x["how"], x["how"])
            p(f"| {x['batch']} | {x['adapters'] if x['how'] != 'merged' else ''} | {x['rank'] if x['how'] != 'merged' else ''} | {how} | {x['ms']:.2f} | {over} |")
        p("")
        merged_runs = [x["ms"] for x in r["runs"] if x["how"] == "merged" and x["batch"] == 32]
        p(f"The merged step at batch 32 was timed first and last ({', '.join(f'{v:.2f}' for v in merged_runs)} ms); the")
        p("overheads use their mean.")
        p("")
        pre = [x for x in r["runs"] if x["how"] == "prefill-segments"]
        if pre:
            p("Prefill, 512 tokens per prompt, one adapter per prompt (SGMV's arithmetic: each prompt's segment through its")
            p("adapter's A and B, added in place; graph-captured):")
            p("")
            p("| prompts | merged ms | unmerged ms | over merged |")
            p("|---:|---:|---:|---:|")
            for x in pre:
                base = merged_ms(r, x["batch"], "prefill-merged")
                p(f"| {x['batch']} | {base:.2f} | {x['ms']:.2f} | {x['ms'] / base - 1:+.1%} |")
            p("")
        for how in ("triton", "gathered"):
            g, d = fit(r, how)
            p(f"- {how}: step = merged · (1 + γ) + δ · n at batch 32 with γ = {g:.3f}, δ = {d * 1e3:.4f} ms per distinct adapter.")
    p("")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--report", nargs="+")
    ap.add_argument("--knobs", nargs=2, metavar=("PROFILE", "OUT"))
    args = ap.parse_args()
    if args.report:
        print(report(args.report))
    elif args.knobs:
        r = json.load(open(args.knobs[0]))
        base = json.load(open(args.knobs[1])) if os.path.exists(args.knobs[1]) else {}
        use_gpu(r["gpu"])
        g, d = fit(r, "triton")
        note = "; γ and δ: tools/gpu_profile_lora.py (Triton BGMV-style kernels) --knobs"
        source = base.get("source", "")
        base.update({"source": source if source.endswith(note) else source + note,
                     "unmerged_gamma": round(g, 4), "per_adapter_seconds_7b": delta_7b_a800(d, r["model"])})
        with open(args.knobs[1], "w") as f:
            json.dump(base, f, indent=1)
            f.write("\n")
        print(json.dumps(base, indent=1))
    elif args.out:
        measure(args)
    else:
        ap.error("one of --out, --report, --knobs")


if __name__ == "__main__":
    main()
