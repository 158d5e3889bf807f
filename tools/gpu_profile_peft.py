#!/usr/bin/env python3
"""The paper's PEFT baseline measured as it runs: Hugging Face transformers + PEFT, eager, one GPU, Llama-2-7B's
(GPU_PROFILE_MODEL=13b: 13B's) shapes with random FP16 weights (nothing downloaded). The simulator's PEFT-like
system is priced by the roofline, i.e. at the speed of a graph-captured step (tools/gpu_profile.py); this measures
what HF's own LlamaForCausalLM with PEFT's LoRA layers costs per step instead, so the Fig 9 comparison with the
paper's "dLoRA / PEFT up to 26×" can price PEFT as PEFT runs (docs/design/simulator.md, "HF PEFT measured").

Measured, medians of REPS runs after warm-up (CUDA events around each forward; the Python in between counts, as it
does in PEFT's serving loop):
- a decode forward (one token per sequence over a 512-token cache) at batch 1/8/32: with a rank-16 q/v adapter
  active (PEFT's unmerged LoRA layers), with the adapter disabled (the base alone), and with it merged;
- PEFT's own switch: merge_adapter / unmerge_adapter, and set_adapter between two loaded adapters;
- `generate` with the adapter active: 8 prompts of 512 tokens, 64 new tokens, greedy; its time per new token.

    python3 tools/gpu_profile_peft.py --out DIR       # DIR/gpu-profile-peft-7b.json
    python3 tools/gpu_profile_peft.py --report A.json [B.json]   # markdown to stdout
    python3 tools/gpu_profile_peft.py --knobs A.json [A2.json] OUT.json   # the PEFT system's knobs for dlora simulate
GPU_PROFILE_SMOKE=1: tiny shapes on the CPU (checks the script, not a profile).
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

SHAPES = {"7b": (32, 4096, 32, 11008), "13b": (40, 5120, 40, 13824)}
MODEL = os.environ.get("GPU_PROFILE_MODEL", "7b")
SMOKE = os.environ.get("GPU_PROFILE_SMOKE") == "1"
CONTEXT, RANK = 512, 16


def measure(args):
    import torch
    from gpu_profile import timed  # medians of CUDA-event-timed runs (wall clock on the CPU smoke run)
    from peft import LoraConfig, get_peft_model
    from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM
    import transformers
    import peft

    layers, hidden, heads, ff = (2, 64, 4, 128) if SMOKE else SHAPES[MODEL]
    dev = torch.device("cpu" if SMOKE else "cuda")
    t0 = time.time()
    res = {"date": time.strftime("%Y-%m-%d"), "gpu": "cpu smoke" if SMOKE else torch.cuda.get_device_name(0),
           "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
           "peft": peft.__version__, "model": MODEL, "context": CONTEXT, "rank": RANK, "decode": [], "generate": None}
    print(json.dumps({k: res[k] for k in ("gpu", "torch", "transformers", "peft")}), flush=True)
    cfg = LlamaConfig(hidden_size=hidden, intermediate_size=ff, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=heads, vocab_size=32000, max_position_embeddings=4096)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    dtype = torch.float32 if SMOKE else torch.float16
    torch.set_default_dtype(dtype)
    with dev:
        base = LlamaForCausalLM(cfg)
    torch.set_default_dtype(torch.float32)
    base.eval()
    lcfg = dict(r=RANK, lora_alpha=2 * RANK, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, init_lora_weights=False)
    model = get_peft_model(base, LoraConfig(**lcfg), adapter_name="a")
    model.add_adapter("b", LoraConfig(**lcfg))
    model.set_adapter("a")
    model.to(dev)
    model.eval()

    g = torch.Generator(device="cpu").manual_seed(1)
    with torch.inference_mode():
        for B in (1, 8, 32):
            ids = torch.randint(0, 32000, (B, CONTEXT), generator=g).to(dev)
            cache = DynamicCache()
            model(input_ids=ids, past_key_values=cache, use_cache=True)
            tok = torch.randint(0, 32000, (B, 1), generator=g).to(dev)

            def step():
                model(input_ids=tok, past_key_values=cache, use_cache=True)
                cache.crop(-1)  # drop the token just added: every timed step attends the same 512 positions

            row = {"batch": B}
            row["unmerged_ms"] = timed(step, args.reps)
            with model.disable_adapter():
                row["base_ms"] = timed(step, args.reps)
            model.merge_adapter()
            row["merged_ms"] = timed(step, args.reps)
            model.unmerge_adapter()
            res["decode"].append(row)
            print("decode", row, flush=True)
            del cache
        res["merge_ms"] = timed(lambda: (model.merge_adapter(), model.unmerge_adapter()), args.reps)
        res["set_adapter_ms"] = timed(lambda: (model.set_adapter("b"), model.set_adapter("a")), args.reps) / 2
        print("merge+unmerge", res["merge_ms"], "set_adapter", res["set_adapter_ms"], flush=True)
        B, new = 8, 64
        ids = torch.randint(0, 32000, (B, CONTEXT), generator=g).to(dev)
        gen = lambda n: model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                                       min_new_tokens=n, do_sample=False, pad_token_id=0)
        reps = max(3, args.reps // 4)
        full = timed(lambda: gen(new), reps, warmup=1)
        one = timed(lambda: gen(1), reps, warmup=1)
        res["generate"] = {"batch": B, "prompt": CONTEXT, "new_tokens": new, "ms": full, "one_token_ms": one,
                           "per_token_ms": (full - one) / (new - 1)}
        print("generate", res["generate"], flush=True)
    res["seconds"] = time.time() - t0
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"gpu-profile-peft-{MODEL}.json")
    with open(path, "w") as f:
        json.dump(res, f, indent=1)
    print("wrote", path, "in", round(res["seconds"], 1), "s", flush=True)


def peft_fixed_seconds(r):
    """PEFT's step as the roofline's form: the bytes/FLOPs term of the profiled GPU plus a fixed time, fitted (mean
    over the batches) to the unmerged steps. What HF's eager forward and PEFT's LoRA layers add per step."""
    import gpu_profile_report as rep
    rep.use_gpu(r["gpu"])
    gaps = [row["unmerged_ms"] / 1e3 - rep.merged(row["batch"], CONTEXT, model=r["model"], fixed=False) for row in r["decode"]]
    return sum(gaps) / len(gaps)


def report(paths):
    import gpu_profile_report as rep
    out = []
    p = out.append
    first = json.load(open(paths[0]))
    gpu = rep.use_gpu(first["gpu"])
    p(f"# HF transformers + PEFT on one {gpu}: the paper's PEFT baseline, measured as it runs")
    p("")
    p(f"Measured by `python3 tools/gpu_profile_peft.py` through the session's device tool, {first['date']}; this file by")
    p("`python3 tools/gpu_profile_peft.py --report`. `LlamaForCausalLM` (SDPA attention) with Llama-2 shapes and random FP16")
    p("weights, PEFT's LoRA layers (rank 16, q and v, α = 32), eager as HF runs it. Medians of the timed forwards")
    p("(CUDA events). Decode: one token per sequence over a 512-token `DynamicCache`. Roofline: the simulator's")
    p("merged step for this GPU and model (docs/design/simulator.md, \"GPU replicas\"), which prices the PEFT-like system today.")
    for path in paths:
        r = json.load(open(path))
        rep.use_gpu(r["gpu"])
        name = r["model"].upper()
        p("")
        p(f"## Llama-2-{name} on {r['gpu']} (torch {r['torch']}, transformers {r['transformers']}, peft {r['peft']}): {path}")
        p("")
        p("| batch | PEFT, adapter active ms | adapter disabled ms | adapter merged ms | roofline ms | PEFT / roofline |")
        p("|---:|---:|---:|---:|---:|---:|")
        for row in r["decode"]:
            rl = rep.merged(row["batch"], CONTEXT, model=r["model"]) * 1e3
            p(f"| {row['batch']} | {row['unmerged_ms']:.2f} | {row['base_ms']:.2f} | {row['merged_ms']:.2f} | {rl:.2f} | "
              f"{row['unmerged_ms'] / rl:.2f}× |")
        p("")
        gen = r["generate"]
        p(f"- `generate`, {gen['batch']} prompts × {gen['prompt']} tokens, {gen['new_tokens']} new tokens, greedy: {gen['ms']:.0f} ms; "
          f"{gen['per_token_ms']:.2f} ms per new token beyond the first (the decode forward plus `generate`'s own work).")
        p(f"- PEFT's switch between adapters: `merge_adapter` + `unmerge_adapter` {r['merge_ms']:.2f} ms; `set_adapter` "
          f"{r['set_adapter_ms']:.3f} ms (what a PEFT server switching unmerged adapters pays).")
        p(f"- As the roofline's form: the bytes/FLOPs term plus a fixed {peft_fixed_seconds(r) * 1e3:.2f} ms per step "
          f"(the simulator's assumption: 1.5 ms).")
    p("")
    return "\n".join(out)


def knobs(paths, out):
    """The PEFT-like system's knob file from one or more runs of one model: the roofline's fixed time per step replaced
    by PEFT's (the mean of the runs' fits), and the switch by PEFT's own set_adapter (its unmerged layers switch
    without a merge). set_adapter is Python walking the modules, not HBM traffic, so it is not scaled by bandwidth:
    it is referred to 7B by the roofline's elements ratio only, so that the model it was measured at gets it back on
    any GPU model whose HBM is the A800's (`--cost a800-*`, the paper's figures)."""
    import gpu_profile_report as rep
    runs = [json.load(open(p)) for p in paths]
    if len({r["model"] for r in runs}) != 1:
        sys.exit("gpu_profile_peft.py --knobs: the runs must profile one model")
    r = runs[0]
    k = {"source": f"tools/gpu_profile_peft.py on {r['gpu']} (transformers {r['transformers']}, peft {r['peft']}), "
                   f"Llama-2-{r['model'].upper()} shapes, {len(runs)} run(s); --knobs",
         "fixed_seconds": round(sum(peft_fixed_seconds(x) for x in runs) / len(runs), 6),
         "switch_seconds_7b_a800": round(sum(x["set_adapter_ms"] for x in runs) / len(runs) / 1e3 / rep.elements_ratio(r["model"]), 6)}
    with open(out, "w") as f:
        json.dump(k, f, indent=1)
        f.write("\n")
    print(json.dumps(k, indent=1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--report", nargs="+")
    ap.add_argument("--knobs", nargs="+", metavar="PROFILE... OUT")
    args = ap.parse_args()
    if args.report:
        print(report(args.report))
    elif args.knobs:
        if len(args.knobs) < 2:
            ap.error("--knobs PROFILE... OUT")
        knobs(args.knobs[:-1], args.knobs[-1])
    elif args.out:
        measure(args)
    else:
        ap.error("one of --out, --report, --knobs")


if __name__ == "__main__":
    main()
