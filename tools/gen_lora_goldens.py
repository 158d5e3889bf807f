#!/usr/bin/env python3
"""Regenerate the LoRA adapter fixtures and Hugging Face PEFT goldens under Tests/Fixtures/lora/.

How to run (from the repository root; developers only, CI never runs this):

    python3 -m pip install torch==2.13.0 transformers==5.23.0 peft gguf==0.19.0 safetensors numpy
    python3 tools/gen_lora_goldens.py            # or: --only NAME… (those adapters only, the rest kept)
    tools/update_fixture_manifest.sh

Adapters are random (fixed seeds; lora_B is overwritten, PEFT would initialise it to zero) and saved with
PEFT's save_pretrained. References are transformers float32 eager + PeftModel (unmerged), on the same base
checkpoints the model goldens use: the tiny models' hf/ directories and SmolLM2 loaded from its GGUF.
Two tiny-llama adapters are also written as llama.cpp GGUF LoRA files (B rows of q/k permuted to the
adjacent-pair layout; rsLoRA folded into alpha). See Tests/Fixtures/README.md, section lora/.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen_model_goldens as G  # noqa: E402  (shared helpers: rounding, JSON, permutation, loaders)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from gguf import GGUFWriter  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
import peft  # noqa: E402

ROOT = G.ROOT
OUT = ROOT / "Tests" / "Fixtures" / "lora"
MODELS = ROOT / "Tests" / "Fixtures" / "models"
N_STEPS = 3      # logits at the last prompt position and after 2 greedy tokens
N_GREEDY = 16

MODULES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate_proj", "up": "up_proj", "down": "down_proj"}
GGUF_STEM = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
             "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}
ALL = list(MODULES)

# (base, name, r, alpha, rslora, targets, save dtype, seed, B std)
ADAPTERS = [
    ("tiny-llama", "a-qv-r4", 4, 8, False, ["q", "v"], "float32", 101, 0.08),
    ("tiny-llama", "b-all-r8-rslora", 8, 16, True, ALL, "float32", 102, 0.04),
    ("tiny-llama", "c-kod-r2", 2, 4, False, ["k", "o", "down"], "float32", 103, 0.1),
    ("tiny-qwen2", "d-all-r4", 4, 4, False, ALL, "float32", 104, 0.08),
    ("smollm2", "s1-qv-r4", 4, 8, False, ["q", "v"], "float16", 105, 0.02),
    ("smollm2", "s2-ko-r8-rslora", 8, 16, True, ["k", "o"], "float16", 106, 0.015),
]
GGUF_LORAS = ["a-qv-r4", "b-all-r8-rslora"]
# Per-module ranks and alphas (PEFT's rank_pattern / alpha_pattern: keys matched as `(.*\.)?(key)$` against the
# module's name), by adapter name. f-pattern: q at rank 8 in both layers, layer 1's down at rank 2, v at alpha 2,
# layer 0's o at alpha 32; every other module r = 4, alpha = 8.
PATTERNS = {
    "f-pattern": ({"q_proj": 8, "model.layers.1.mlp.down_proj": 2}, {"v_proj": 2, "layers.0.self_attn.o_proj": 32}),
}
ADAPTERS.append(("tiny-llama", "f-pattern", 4, 8, False, ALL, "float32", 107, 0.06))


def load_base(base: str):
    if base == "smollm2":
        return G.load_hf(G.SMOL_PATH.parent, G.SMOL_PATH.name)
    return G.load_hf(MODELS / base / "hf")


def prompts(base: str) -> list[list[int]]:
    if base == "smollm2":
        g = json.load(open(MODELS / "smollm2-135m-instruct" / "goldens.json"))
        return [c["prompt_ids"] for c in g["cases"][:2]]
    g = json.load(open(MODELS / base / "goldens" / "hf.json"))
    return [c["prompt_ids"] for c in g["cases"]]


def make_adapter(base: str, name: str, r: int, alpha: float, rslora: bool, targets, dtype: str, seed: int, b_std: float) -> Path:
    model = load_base(base)
    rank_pattern, alpha_pattern = PATTERNS.get(name, ({}, {}))
    cfg = LoraConfig(r=r, lora_alpha=alpha, use_rslora=rslora, target_modules=[MODULES[t] for t in targets],
                     lora_dropout=0.0, bias="none", task_type="CAUSAL_LM", rank_pattern=rank_pattern, alpha_pattern=alpha_pattern)
    pm = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    for mod_name, mod in sorted(pm.named_modules()):
        if hasattr(mod, "lora_A") and "default" in mod.lora_A:
            a = mod.lora_A["default"].weight
            b = mod.lora_B["default"].weight
            a.data = torch.randn(a.shape, generator=gen) / math.sqrt(a.shape[1])
            b.data = torch.randn(b.shape, generator=gen) * b_std
            if dtype == "float16":  # the saved values are what the reference must use
                a.data = a.data.half().float()
                b.data = b.data.half().float()
    out = OUT / base / name
    if out.exists():
        shutil.rmtree(out)
    pm.save_pretrained(str(out), safe_serialization=True)
    if dtype == "float16":
        from safetensors.torch import load_file, save_file
        st = out / "adapter_model.safetensors"
        sd = {k: v.half() for k, v in load_file(str(st)).items()}
        save_file(sd, str(st))
    # Deterministic, path-free config.
    cfgp = out / "adapter_config.json"
    c = json.load(open(cfgp))
    c["base_model_name_or_path"] = base
    for k in ("revision",):
        c.pop(k, None)
    with open(cfgp, "w") as f:
        json.dump(c, f, indent=2, sort_keys=True)
        f.write("\n")
    readme = out / "README.md"
    if readme.exists():
        readme.unlink()
    return out


@torch.no_grad()
def greedy_steps(model, ids: list[int]):
    out = model(torch.tensor([ids]), use_cache=True)
    past = out.past_key_values
    last = out.logits[0, -1].float()
    gen, margins, logits = [], [], []
    for s in range(N_GREEDY):
        logits.append(last)
        margins.append(G.margin(last))
        nxt = int(torch.argmax(last))
        gen.append(nxt)
        if s == N_GREEDY - 1:
            break
        out = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        last = out.logits[0, -1].float()
    return gen, margins, logits


def full_cases(model, base: str):
    """Golden cases of `model` on a tiny base (full logits of the first N_STEPS steps, greedy ids and margins),
    and the largest |logit difference| from the base model at the last prompt position."""
    cases = []
    for p in prompts(base):
        gen, margins, logits = greedy_steps(model, p)
        steps = [dict(argmax=int(torch.argmax(lg)), margin=G.r6(G.margin(lg)), logits=G.r6list(lg.numpy())) for lg in logits[:N_STEPS]]
        cases.append(dict(prompt_ids=p, steps=steps, greedy_ids=gen, greedy_margins=[G.r6(m) for m in margins],
                          min_greedy_margin=G.r6(min(margins))))
    base_model = load_base(base)
    base_diff = max(float((base_model(torch.tensor([p])).logits[0, -1].float() - model(torch.tensor([p])).logits[0, -1].float()).abs().max())
                    for p in prompts(base))
    return cases, base_diff


def write_gguf_lora(base: str, name: str, adapter_dir: Path, r: int, alpha: float, rslora: bool):
    """llama.cpp GGUF LoRA: lora_a = A (ggml [in, r]), lora_b = B (ggml [r, out]); q/k B rows permuted."""
    from safetensors.torch import load_file
    cfg = json.load(open(MODELS / base / "hf" / "config.json"))
    nh, nkv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    sd = load_file(str(adapter_dir / "adapter_model.safetensors"))
    w = GGUFWriter(str(OUT / base / f"{name}.gguf"), "llama")
    w.add_string("general.type", "adapter")
    w.add_string("adapter.type", "lora")
    w.add_float32("adapter.lora.alpha", float(alpha * math.sqrt(r) if rslora else alpha))
    if rslora:
        w.add_bool("adapter.lora.rslora_folded", True)
    for key in sorted(sd, key=lambda k: (int(k.split(".layers.")[1].split(".")[0]), k)):
        if ".lora_A." not in key:
            continue
        layer = int(key.split(".layers.")[1].split(".")[0])
        module = key.split(".lora_A.")[0].split(".")[-1]
        a = sd[key].float().numpy()
        b = sd[key.replace(".lora_A.", ".lora_B.")].float().numpy()
        if module == "q_proj":
            b = G.permute(b, nh, nh)
        elif module == "k_proj":
            b = G.permute(b, nh, nkv)
        stem = f"blk.{layer}.{GGUF_STEM[module]}.weight"
        w.add_tensor(stem + ".lora_a", np.ascontiguousarray(a, dtype=np.float32))
        w.add_tensor(stem + ".lora_b", np.ascontiguousarray(b, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@torch.no_grad()
def goldens_for(base: str, name: str, r: int, alpha: float, rslora: bool, adapter_dir: Path, scale: float = 1.0) -> dict:
    base_model = load_base(base)
    base_first = [base_model(torch.tensor([p])).logits[0, -1].float() for p in prompts(base)]
    model = PeftModel.from_pretrained(load_base(base), str(adapter_dir))
    model.eval()
    if scale != 1.0:
        for mod in model.modules():
            if hasattr(mod, "scaling") and isinstance(mod.scaling, dict) and "default" in mod.scaling:
                mod.scaling["default"] *= scale
    cases, base_diff, merged_diff = [], 0.0, 0.0
    for i, p in enumerate(prompts(base)):
        gen, margins, logits = greedy_steps(model, p)
        steps = []
        for s in range(N_STEPS):
            lg = logits[s]
            if base == "smollm2":
                steps.append(G.logit_summary(lg))
            else:
                steps.append(dict(argmax=int(torch.argmax(lg)), margin=G.r6(G.margin(lg)), logits=G.r6list(lg.numpy())))
        cases.append(dict(prompt_ids=p, steps=steps, greedy_ids=gen, greedy_margins=[G.r6(m) for m in margins],
                          min_greedy_margin=G.r6(min(margins))))
        base_diff = max(base_diff, float((logits[0] - base_first[i]).abs().max()))
    merged = PeftModel.from_pretrained(load_base(base), str(adapter_dir))
    if scale != 1.0:
        for mod in merged.modules():
            if hasattr(mod, "scaling") and isinstance(mod.scaling, dict) and "default" in mod.scaling:
                mod.scaling["default"] *= scale
    merged = merged.merge_and_unload()
    for i, p in enumerate(prompts(base)):
        ml = merged(torch.tensor([p])).logits[0, -1].float()
        ul = model(torch.tensor([p])).logits[0, -1].float()
        merged_diff = max(merged_diff, float((ml - ul).abs().max()))
    out = dict(base=base, adapter=name, r=r, alpha=alpha, use_rslora=rslora, scale=scale,
               reference=f"transformers {G.transformers.__version__} float32 eager + peft {peft.__version__} PeftModel (unmerged)",
               note="steps[0] = last prompt position, steps[1..] after feeding greedy tokens; greedy_ids: "
                    f"{N_GREEDY} argmax tokens, no EOS stop" + ("; scale: PEFT's scaling multiplied by this factor" if scale != 1 else ""),
               base_max_abs_diff=G.r6(base_diff), merged_max_abs_diff=G.r6(merged_diff), cases=cases)
    if base == "smollm2":
        out["spread_ids"] = G.SMOL_SPREAD_IDS
    return out


@torch.no_grad()
def numpy_check(name: str, r: int, alpha: float, rslora: bool, golden: dict) -> float:
    """Independent float64 forward of the tiny-llama F32 GGUF (permuted layout, adjacent-pair RoPE) with the
    GGUF LoRA folded in as W + (alpha'/r)·B·A: validates the B-row permutation against PEFT."""
    import gguf as ggufpy
    base_path = MODELS / "tiny-llama" / "tiny-llama.F32.gguf"
    lora = ggufpy.GGUFReader(str(OUT / "tiny-llama" / f"{name}.gguf"))
    alpha_eff = float(lora.fields["adapter.lora.alpha"].parts[-1][0])
    deltas = {}
    for t in lora.tensors:
        if t.name.endswith(".lora_a"):
            a = np.array(t.data, dtype=np.float64).reshape(int(t.shape[1]), int(t.shape[0]))
            bt = next(x for x in lora.tensors if x.name == t.name[:-1] + "b")
            b = np.array(bt.data, dtype=np.float64).reshape(int(bt.shape[1]), int(bt.shape[0]))
            deltas[t.name[: -len(".lora_a")]] = (alpha_eff / r) * (b @ a)
    orig = G.GGUFReader
    # Patch the reader's tensors: numpy_gguf_forward reads tensors by name through GGUFReader.
    reader = orig(str(base_path))

    class Patched:
        def __init__(self, path):
            self.fields = reader.fields
            self.tensors = []
            for t in reader.tensors:
                d = deltas.get(t.name)
                if d is None:
                    self.tensors.append(t)
                else:
                    data = np.array(t.data, dtype=np.float64).reshape(d.shape) + d
                    self.tensors.append(type("T", (), dict(name=t.name, data=data.astype(np.float32), shape=t.shape,
                                                            tensor_type=t.tensor_type, n_elements=t.n_elements))())
    G.GGUFReader = Patched
    try:
        err = 0.0
        for c in golden["cases"]:
            lg = G.numpy_gguf_forward(base_path, c["prompt_ids"])[-1]
            err = max(err, float(np.abs(lg - np.array(c["steps"][0]["logits"])).max()))
        return err
    finally:
        G.GGUFReader = orig


def main():
    # --only NAME…: regenerate those adapters and their goldens, keeping the others (and their summary lines).
    only = sys.argv[sys.argv.index("--only") + 1:] if "--only" in sys.argv else None
    OUT.mkdir(parents=True, exist_ok=True)
    summary = dict(versions=dict(torch=torch.__version__, transformers=G.transformers.__version__, peft=peft.__version__))
    if only and (OUT / "summary.json").exists():
        summary = json.load(open(OUT / "summary.json"))
    for base, name, r, alpha, rslora, targets, dtype, seed, b_std in ADAPTERS:
        if only and name not in only:
            continue
        if base == "smollm2" and not G.SMOL_PATH.exists():
            print(f"!! {G.SMOL_PATH} missing: skipping {name}")
            continue
        d = make_adapter(base, name, r, alpha, rslora, targets, dtype, seed, b_std)
        g = goldens_for(base, name, r, alpha, rslora, d)
        G.dump_json(OUT / "goldens" / f"{base}__{name}.json", g)
        line = dict(base_max_abs_diff=g["base_max_abs_diff"], merged_max_abs_diff=g["merged_max_abs_diff"],
                    min_greedy_margin=min(c["min_greedy_margin"] for c in g["cases"]))
        if base == "tiny-llama" and name in GGUF_LORAS:
            write_gguf_lora(base, name, d, r, alpha, rslora)
            line["numpy_gguf_lora_vs_peft"] = G.r6(numpy_check(name, r, alpha, rslora, g))
        if name == "a-qv-r4":
            g2 = goldens_for(base, name, r, alpha, rslora, d, scale=0.5)
            G.dump_json(OUT / "goldens" / f"{base}__{name}__scale0.5.json", g2)
        summary[f"{base}/{name}"] = line
        print(base, name, line, flush=True)
    with open(OUT / "summary.json", "w") as f:
        json.dump(summary, f, indent=1, sort_keys=True)
        f.write("\n")
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"Tests/Fixtures/lora: {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
