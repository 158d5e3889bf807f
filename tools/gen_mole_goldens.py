#!/usr/bin/env python3
"""Goldens for a MoLE composition served from mole_config.json + gates.safetensors
(Tests/Fixtures/lora/tiny-llama/mole-abc).

How to run (developers only; CI never runs this; needs the packages of tools/gen_lora_goldens.py):

    python3 tools/gen_mole_goldens.py
    tools/update_fixture_manifest.sh

The experts are the three tiny-llama fixture adapters (a-qv-r4, b-all-r8-rslora, c-kod-r2: different ranks,
targets, one rsLoRA), loaded by Hugging Face PEFT into one PeftModel. The gates are seeded random: per decoder
layer l, W_l (N x H) and a temperature tau_l. The reference forward is transformers float32 eager with each
PEFT LoRA layer's forward replaced by

    y = base(x) + sum_i g[t, i] * scaling_i * B_i(A_i(x[t]))

and g[t] = softmax(input_layernorm_l(h[t]) @ W_l^T / tau_l) over the experts in use (the others 0), computed by
a pre-hook on each decoder layer from that layer's input: MoLE's block gate with the per-token gate input that
dlora trains and serves (docs/design/mole-serving.md). Written: the composition's files, the full composition's
golden (tiny-llama__mole-abc.json) and one with the experts masked to a and c (the `mole_experts` extension,
tiny-llama__mole-abc__experts-ac.json), in the format of the other LoRA goldens.

The same experts are also composed with the other two granularities dlora serves, each with its own seeded gates:
mole-abc-layer (two units per block: the attention's from input_layernorm's output, the MLP's from the MLP's
input, i.e. post_attention_layernorm's output) and mole-abc-net (one unit from block 0's input_layernorm output,
whose gates weigh every block). And mole-ac-matrix composes a-qv-r4 and c-kod-r2 with one gate per adapted
projection (m-MoLE), computed inside each LoRA layer from that layer's own input x (q, k, v: input_layernorm's
output; o: the attention output; down: the SwiGLU activation); gate_proj and up_proj, which neither expert adapts,
have none. `python3 tools/gen_mole_goldens.py NAME ...` rewrites only the named variants.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen_lora_goldens as L  # noqa: E402
import gen_model_goldens as G  # noqa: E402

import peft  # noqa: E402
import torch  # noqa: E402
from peft import PeftModel  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

EXPERTS = ["a-qv-r4", "b-all-r8-rslora", "c-kod-r2"]
NAME = "mole-abc"
SEED = 4242


def build(base: str, experts):
    root = L.OUT / base
    model = PeftModel.from_pretrained(L.load_base(base), str(root / experts[0]), adapter_name=experts[0])
    for name in experts[1:]:
        model.load_adapter(str(root / name), adapter_name=name)
    model.eval()
    return model


def install(model, granularity, gates, mask, experts):
    """Replaces every LoRA layer's forward with the gated mixture and hooks the gate units: `gates` maps a unit
    key ("net", ("attn", l), ("mlp", l), ("block", l), ("matrix", l, "q_proj")) to (W, tau)."""
    state = {}
    layers = model.base_model.model.model.layers

    def gate(key, xn):
        w, tau = gates[key]
        logits = xn.float() @ w.T / tau
        return torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)

    def block_hook(li):
        def hook(module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            xn = module.input_layernorm(h)
            if granularity == "block":
                state["attn"] = state["mlp"] = gate(("block", li), xn)
            elif granularity == "layer":
                state["attn"] = gate(("attn", li), xn)
            elif granularity == "network" and li == 0:  # network: one unit at block 0's attention input weighs every block
                state["attn"] = state["mlp"] = gate("net", xn)
        return hook

    def mlp_hook(li):
        def hook(module, args):
            # the MLP's input is the second RMSNorm's output
            state["mlp"] = gate(("mlp", li), args[0])
        return hook

    for li, layer in enumerate(layers):
        layer.register_forward_pre_hook(block_hook(li), with_kwargs=True)
        if granularity == "layer":
            layer.mlp.register_forward_pre_hook(mlp_hook(li))

    from peft.tuners.lora import Linear as LoraLinear
    for qualified, module in model.named_modules():
        if not isinstance(module, LoraLinear):
            continue
        site = "mlp" if ".mlp." in qualified else "attn"
        parts = qualified.split(".")
        key = ("matrix", int(parts[parts.index("layers") + 1]), parts[-1])

        def forward(x, *args, _m=module, _site=site, _key=key, **kwargs):
            y = _m.base_layer(x)
            # matrix: the projection's own gate from its own input
            g = gate(_key, x) if granularity == "matrix" else state[_site]
            for i, name in enumerate(experts):
                if name not in _m.lora_A:
                    continue
                delta = _m.lora_B[name](_m.lora_A[name](x.float())) * _m.scaling[name]
                y = y + g[..., i:i + 1] * delta
            return y
        module.forward = forward


# (directory name, granularity, seed, experts): block's seed and draw order are those the committed block fixture
# was made with.
VARIANTS = [(NAME, "block", SEED, EXPERTS), (NAME + "-layer", "layer", SEED + 1, EXPERTS),
            (NAME + "-net", "network", SEED + 2, EXPERTS),
            ("mole-ac-matrix", "matrix", SEED + 3, ["a-qv-r4", "c-kod-r2"])]
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def draw_gates(granularity, seed, n, h, layers, model=None):
    """Seeded gate weights (N x the unit's input width, scaled 3/sqrt(width)) and temperatures in [0.5, 1.5) per
    unit, and their tensors. Matrix units: one per projection that some expert of `model` adapts."""
    gen = torch.Generator().manual_seed(seed)
    widths = {}
    if granularity == "block":
        keys = [("block", li) for li in range(layers)]
    elif granularity == "layer":
        keys = [(site, li) for li in range(layers) for site in ("attn", "mlp")]
    elif granularity == "matrix":
        from peft.tuners.lora import Linear as LoraLinear
        adapted = {}
        for qualified, module in model.named_modules():
            if isinstance(module, LoraLinear):
                parts = qualified.split(".")
                adapted[(int(parts[parts.index("layers") + 1]), parts[-1])] = module.base_layer.in_features
        keys = [("matrix", li, p) for li in range(layers) for p in PROJECTIONS if (li, p) in adapted]
        widths = {k: adapted[(k[1], k[2])] for k in keys}
    else:
        keys = ["net"]
    if granularity == "block":  # all weights first, then all temperatures (the committed fixture's order)
        ws = [torch.randn(n, h, generator=gen) * (3.0 / math.sqrt(h)) for _ in keys]
        ts = [float(0.5 + torch.rand(1, generator=gen)) for _ in keys]
    else:
        ws, ts = [], []
        for k in keys:
            width = widths.get(k, h)
            ws.append(torch.randn(n, width, generator=gen) * (3.0 / math.sqrt(width)))
            ts.append(float(0.5 + torch.rand(1, generator=gen)))
    gates = dict(zip(keys, zip(ws, ts)))
    tensors = {}
    for key, (w, t) in gates.items():
        prefix = ("gate" if key == "net" else f"layers.{key[1]}.gate" if key[0] == "block"
                  else f"layers.{key[1]}.{key[2]}.gate" if key[0] == "matrix"
                  else f"layers.{key[1]}.{key[0]}_gate")
        tensors[prefix + ".weight"] = w.contiguous()
        tensors[prefix + ".temperature"] = torch.tensor([t], dtype=torch.float32)
    return gates, tensors


@torch.no_grad()
def main():
    base = "tiny-llama"
    only = sys.argv[1:]  # optional: the variant names to (re)write
    for name, granularity, seed, experts in VARIANTS:
        if only and name not in only:
            continue
        model = build(base, experts)
        cfg = model.base_model.model.config
        n, h, layers = len(experts), cfg.hidden_size, cfg.num_hidden_layers
        gates, tensors = draw_gates(granularity, seed, n, h, layers, model)
        out_dir = L.OUT / base / name
        out_dir.mkdir(exist_ok=True)
        save_file(tensors, str(out_dir / "gates.safetensors"), metadata={"format": "pt"})
        config = {"format": "dlora-mole", "version": 1, "granularity": granularity, "gate_input": "token",
                  "experts": [{"name": e, "path": e} for e in experts], "balance_weight": 0.0,
                  "num_layers": layers, "hidden_size": h, "base_model": f"Tests/Fixtures/models/{base}/hf"}
        with open(out_dir / "mole_config.json", "w") as f:
            json.dump(config, f, indent=1, sort_keys=True)
            f.write("\n")

        masks = [("", experts)] + ([("__experts-ac", ["a-qv-r4", "c-kod-r2"])] if granularity == "block" else [])
        for suffix, keep in masks:
            model = build(base, experts)
            mask = torch.tensor([e in keep for e in experts])
            install(model, granularity, gates, mask, experts)
            cases, base_diff = L.full_cases(model, base)
            which = "" if granularity == "block" else f" ({granularity} gates)"
            golden = dict(base=base, adapter=name, scale=1.0, experts=experts, mole_experts=keep,
                          reference=f"transformers {G.transformers.__version__} float32 eager + peft {peft.__version__} LoRA layers, "
                                    f"gated per token{which} by hooks (tools/gen_mole_goldens.py)",
                          note="steps[0] = last prompt position, steps[1..] after feeding greedy tokens; greedy_ids: "
                               f"{L.N_GREEDY} argmax tokens, no EOS stop",
                          base_max_abs_diff=G.r6(base_diff), cases=cases)
            G.dump_json(L.OUT / "goldens" / f"{base}__{name}{suffix}.json", golden)
            print(name + suffix, "base_max_abs_diff", G.r6(base_diff), "min margin", min(c["min_greedy_margin"] for c in cases))


if __name__ == "__main__":
    main()
