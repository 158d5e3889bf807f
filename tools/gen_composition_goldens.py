#!/usr/bin/env python3
"""Golden for a static LoRA composition served from a manifest (Tests/Fixtures/lora/tiny-llama/mix-cat).

How to run (developers only; CI never runs this; needs the packages of tools/gen_lora_goldens.py):

    python3 tools/gen_composition_goldens.py              # mix-cat
    python3 tools/gen_composition_goldens.py --same-rank  # e-all-r4, mix-linear, mix-ties
    tools/update_fixture_manifest.sh

The reference is Hugging Face PEFT itself: the three tiny-llama fixture adapters (a-qv-r4, b-all-r8-rslora,
c-kod-r2: different ranks, targets and an rsLoRA one) loaded into one PeftModel and combined with
`add_weighted_adapter(..., combination_type="cat")` at weights 0.7, -0.4, 1.3; then transformers float32
eager logits (unmerged) in the format of the other LoRA goldens. The manifest lists the same adapters and
weights; dlora composes them when the adapter is loaded (docs/design/compositions.md).
"""
from __future__ import annotations

import json
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
]


@torch.no_grad()
def weighted(name: str, combination: str, parts, options: dict):
    """PEFT's add_weighted_adapter(combination) of `parts` on tiny-llama: its golden and its manifest."""
    base = "tiny-llama"
    root = L.OUT / base
    model = PeftModel.from_pretrained(L.load_base(base), str(root / parts[0][0]), adapter_name=parts[0][0])
    for n, _ in parts[1:]:
        model.load_adapter(str(root / n), adapter_name=n)
    model.add_weighted_adapter([n for n, _ in parts], [w for _, w in parts], name, combination_type=combination, **options)
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
        L.make_adapter(*EXTRA)
        for name, combination, parts, options in SAME_RANK:
            weighted(name, combination, parts, options)
        return
    weighted(NAME, "cat", PARTS, {})


if __name__ == "__main__":
    main()
