#!/usr/bin/env python3
"""Golden for a static LoRA composition served from a manifest (Tests/Fixtures/lora/tiny-llama/mix-cat).

How to run (developers only; CI never runs this; needs the packages of tools/gen_lora_goldens.py):

    python3 tools/gen_composition_goldens.py              # mix-cat
    python3 tools/gen_composition_goldens.py --same-rank  # e-all-r4, mix-linear, mix-ties, mix-dare-linear, mix-dare-ties
    python3 tools/gen_composition_goldens.py --same-rank mix-dare-linear  # only the named ones (e-all-r4 is kept)
    tools/update_fixture_manifest.sh

The reference is Hugging Face PEFT itself: the three tiny-llama fixture adapters (a-qv-r4, b-all-r8-rslora,
c-kod-r2: different ranks, targets and an rsLoRA one) loaded into one PeftModel and combined with
`add_weighted_adapter(..., combination_type="cat")` at weights 0.7, -0.4, 1.3; then transformers float32
eager logits (unmerged) in the format of the other LoRA goldens. The manifest lists the same adapters and
weights; dlora composes them when the adapter is loaded (docs/design/compositions.md).

DARE (dare_linear, dare_ties) drops entries at random: PEFT draws its masks with torch.bernoulli, dlora with its
own seeded generator (LoRAComposition.dareMask: SplitMix64, one stream per layer, projection, part and A/B, in PEFT's
layout), so a composition is reproducible. Here PEFT's random_pruning is replaced by one that applies dlora's mask
(drawn by `dare_mask`, the same algorithm) and is otherwise PEFT's; everything else is PEFT's own code.
"""
from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gen_lora_goldens as L  # noqa: E402
import gen_model_goldens as G  # noqa: E402

import peft  # noqa: E402
import torch  # noqa: E402
from peft import PeftModel  # noqa: E402

PARTS = [("a-qv-r4", 0.7), ("b-all-r8-rslora", -0.4), ("c-kod-r2", 1.3)]
NAME = "mix-cat"
# PEFT's linear and ties need equal ranks: a-qv-r4 with a second rank-4 tiny-llama adapter on every target
# (e-all-r4, made here), at weights 0.7 and -0.4 (linear) and 0.8 and 0.6 with density 0.5 (ties).
EXTRA = ("tiny-llama", "e-all-r4", 4, 8, False, L.ALL, "float32", 105, 0.08)
SAME_RANK = [
    ("mix-linear", "linear", [("a-qv-r4", 0.7), ("e-all-r4", -0.4)], {}),
    ("mix-ties", "ties", [("a-qv-r4", 0.8), ("e-all-r4", 0.6)], {"density": 0.5, "majority_sign_method": "total"}),
    ("mix-dare-linear", "dare_linear", [("a-qv-r4", 0.8), ("e-all-r4", -0.5)], {"density": 0.6, "seed": 7}),
    ("mix-dare-ties", "dare_ties", [("a-qv-r4", 0.8), ("e-all-r4", 0.6)],
     {"density": 0.5, "majority_sign_method": "frequency", "seed": 11}),
]
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
M64 = (1 << 64) - 1


def dare_mask(seed, layer, target, part, is_b, count, density):
    """dlora's DARE keep mask (LoRAComposition.dareMask): SplitMix64 seeded by seed + key * golden gamma."""
    key = ((layer * len(PROJECTIONS) + target) * 64 + part) * 2 + (1 if is_b else 0)
    state = (seed + key * 0x9E3779B97F4A7C15) & M64
    d32 = struct.unpack("f", struct.pack("f", density))[0]  # dlora compares in float32
    out = []
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & M64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
        z ^= z >> 31
        out.append(1.0 if (z >> 40) / float(1 << 24) < d32 else 0.0)
    return out


_DARE = {"names": {}, "seed": 0, "queue": [], "installed": False}


def install_dare_masks(model, seed):
    """Makes PEFT's add_weighted_adapter on `model` prune with dlora's masks: for each LoRA layer it merges, the
    masks of the parts that adapt it (A's, then B's, in part order) are queued for PEFT's random_pruning."""
    import peft.tuners.lora.model as lora_model
    import peft.utils.merge_utils as merge_utils
    _DARE["names"] = {id(m): q for q, m in model.named_modules()}
    _DARE["seed"] = seed
    if _DARE["installed"]:
        return
    _DARE["installed"] = True
    queue = _DARE["queue"]
    original = lora_model.LoraModel._generalized_task_arithmetic_weighted_adapter

    def wrapped(self, combination_type, adapters, weights, target, density, majority_sign_method):
        qualified = _DARE["names"][id(target)].split(".")
        layer, proj = int(qualified[qualified.index("layers") + 1]), PROJECTIONS.index(qualified[-1])
        present = [(i, a) for i, a in enumerate(adapters) if a in target.lora_A]
        for is_b in (False, True):
            for i, a in present:
                w = (target.lora_B if is_b else target.lora_A)[a].weight
                queue.append(torch.tensor(dare_mask(_DARE["seed"], layer, proj, i, is_b, w.numel(), density)).reshape(w.shape))
        out = original(self, combination_type, adapters, weights, target, density, majority_sign_method)
        assert not queue, "PEFT pruned fewer tensors than queued"
        return out

    def random_pruning(tensor, density, rescale):
        mask = queue.pop(0)
        assert mask.shape == tensor.shape
        pruned = tensor * mask
        return pruned / density if rescale else pruned

    lora_model.LoraModel._generalized_task_arithmetic_weighted_adapter = wrapped
    merge_utils.random_pruning = random_pruning


@torch.no_grad()
def weighted(name: str, combination: str, parts, options: dict):
    """PEFT's add_weighted_adapter(combination) of `parts` on tiny-llama: its golden and its manifest."""
    base = "tiny-llama"
    root = L.OUT / base
    model = PeftModel.from_pretrained(L.load_base(base), str(root / parts[0][0]), adapter_name=parts[0][0])
    for n, _ in parts[1:]:
        model.load_adapter(str(root / n), adapter_name=n)
    peft_options = {k: v for k, v in options.items() if k != "seed"}
    if combination.startswith("dare_"):
        install_dare_masks(model, options["seed"])
    model.add_weighted_adapter([n for n, _ in parts], [w for _, w in parts], name, combination_type=combination, **peft_options)
    model.set_adapter(name)
    model.eval()
    cases, base_diff = L.full_cases(model, base)
    cfg = model.peft_config[name]
    out = dict(base=base, adapter=name, r=cfg.r, alpha=cfg.lora_alpha, use_rslora=cfg.use_rslora, scale=1.0,
               parts=[dict(name=n, weight=w) for n, w in parts], combination=combination)
    if options:
        out["options"] = options
    out.update(reference=f"transformers {G.transformers.__version__} float32 eager + peft {peft.__version__} add_weighted_adapter({combination}) (unmerged)",
               note="steps[0] = last prompt position, steps[1..] after feeding greedy tokens; greedy_ids: "
                    f"{L.N_GREEDY} argmax tokens, no EOS stop",
               base_max_abs_diff=G.r6(base_diff), merged_max_abs_diff=0.0, cases=cases)
    G.dump_json(L.OUT / "goldens" / f"{base}__{name}.json", out)
    manifest = root / name
    manifest.mkdir(exist_ok=True)
    with open(manifest / "composition.json", "w") as f:
        json.dump(dict(combination=combination, adapters=[dict(name=n, weight=w) for n, w in parts], **options), f, indent=1)
        f.write("\n")
    print(name, "r", cfg.r, "alpha", cfg.lora_alpha, "base_max_abs_diff", G.r6(base_diff),
          "min margin", min(c["min_greedy_margin"] for c in cases))


def main():
    if "--same-rank" in sys.argv:
        only = [a for a in sys.argv[1:] if a != "--same-rank"]
        if not only:
            L.make_adapter(*EXTRA)
        for name, combination, parts, options in SAME_RANK:
            if not only or name in only:
                weighted(name, combination, parts, options)
        return
    weighted(NAME, "cat", PARTS, {})


if __name__ == "__main__":
    main()
