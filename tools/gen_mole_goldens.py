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


def build(base: str):
    root = L.OUT / base
    model = PeftModel.from_pretrained(L.load_base(base), str(root / EXPERTS[0]), adapter_name=EXPERTS[0])
    for name in EXPERTS[1:]:
        model.load_adapter(str(root / name), adapter_name=name)
    model.eval()
    return model


def install(model, weights, temps, mask):
    """Replaces every LoRA layer's forward with the gated mixture and hooks each decoder layer's gate."""
    state = {"g": None}
    layers = model.base_model.model.model.layers

    def pre_hook(li):
        def hook(module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            xn = module.input_layernorm(h).float()
            logits = xn @ weights[li].T / temps[li]
            logits = logits.masked_fill(~mask, float("-inf"))
            state["g"] = torch.softmax(logits, dim=-1)
        return hook

    for li, layer in enumerate(layers):
        layer.register_forward_pre_hook(pre_hook(li), with_kwargs=True)

    from peft.tuners.lora import Linear as LoraLinear
    for module in model.modules():
        if not isinstance(module, LoraLinear):
            continue

        def forward(x, *args, _m=module, **kwargs):
            y = _m.base_layer(x)
            g = state["g"]
            for i, name in enumerate(EXPERTS):
                if name not in _m.lora_A:
                    continue
                delta = _m.lora_B[name](_m.lora_A[name](x.float())) * _m.scaling[name]
                y = y + g[..., i:i + 1] * delta
            return y
        module.forward = forward


@torch.no_grad()
def main():
    base = "tiny-llama"
    model = build(base)
    cfg = model.base_model.model.config
    n, h, layers = len(EXPERTS), cfg.hidden_size, cfg.num_hidden_layers
    gen = torch.Generator().manual_seed(SEED)
    weights = [torch.randn(n, h, generator=gen) * (3.0 / math.sqrt(h)) for _ in range(layers)]
    temps = [float(0.5 + torch.rand(1, generator=gen)) for _ in range(layers)]

    out_dir = L.OUT / base / NAME
    out_dir.mkdir(exist_ok=True)
    tensors = {}
    for li in range(layers):
        tensors[f"layers.{li}.gate.weight"] = weights[li].contiguous()
        tensors[f"layers.{li}.gate.temperature"] = torch.tensor([temps[li]], dtype=torch.float32)
    save_file(tensors, str(out_dir / "gates.safetensors"), metadata={"format": "pt"})
    config = {"format": "dlora-mole", "version": 1, "granularity": "block", "gate_input": "token",
              "experts": [{"name": e, "path": e} for e in EXPERTS], "balance_weight": 0.0,
              "num_layers": layers, "hidden_size": h, "base_model": f"Tests/Fixtures/models/{base}/hf"}
    with open(out_dir / "mole_config.json", "w") as f:
        json.dump(config, f, indent=1, sort_keys=True)
        f.write("\n")

    for suffix, keep in [("", EXPERTS), ("__experts-ac", ["a-qv-r4", "c-kod-r2"])]:
        model = build(base)
        mask = torch.tensor([e in keep for e in EXPERTS])
        install(model, weights, temps, mask)
        cases, base_diff = L.full_cases(model, base)
        golden = dict(base=base, adapter=NAME, scale=1.0, experts=EXPERTS, mole_experts=keep,
                      reference=f"transformers {G.transformers.__version__} float32 eager + peft {peft.__version__} LoRA layers, "
                                "gated per token by hooks (tools/gen_mole_goldens.py)",
                      note="steps[0] = last prompt position, steps[1..] after feeding greedy tokens; greedy_ids: "
                           f"{L.N_GREEDY} argmax tokens, no EOS stop",
                      base_max_abs_diff=G.r6(base_diff), cases=cases)
        G.dump_json(L.OUT / "goldens" / f"{base}__{NAME}{suffix}.json", golden)
        print(NAME + suffix, "base_max_abs_diff", G.r6(base_diff), "min margin", min(c["min_greedy_margin"] for c in cases))


if __name__ == "__main__":
    main()
