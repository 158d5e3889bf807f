#!/usr/bin/env python3
"""Regenerate the training fixtures under Tests/Fixtures/training/ (developers only; CI never runs this).

    python3 -m pip install torch==2.13.0 transformers peft safetensors
    swift build --product dlora            # part 2 runs `dlora train lora`
    python3 tools/gen_training_goldens.py [--dlora .build/debug/dlora]
    tools/update_fixture_manifest.sh

1. goldens.json — torch + PEFT on the tiny-llama hf/ checkpoint (float32, eager attention): a LoRA adapter
   (r 4, alpha 8, all seven projections) with given A and B (B non-zero, else every dA is zero), a padded
   batch of two sequences with prompt and padding positions ignored (-100), the loss and the gradient of
   every lora_A / lora_B after one backward, then the loss before each of K AdamW steps on that batch and
   the final A and B. TrainingGoldenTests replays it in Swift.
2. peft-roundtrip/ — an adapter trained by `dlora train lora` on the tiny-llama F32 GGUF (Q/K rows in the
   llama.cpp layout, so the writer's permutation back to the Hugging Face layout is exercised), loaded by
   peft.PeftModel.from_pretrained on the hf/ checkpoint; PEFT's logits for two prompts are recorded and
   the Swift test checks that our engine gives the same logits with the same adapter.
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import torch
import transformers
import peft
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "Tests" / "Fixtures" / "training"
HF = ROOT / "Tests" / "Fixtures" / "models" / "tiny-llama" / "hf"
GGUF = ROOT / "Tests" / "Fixtures" / "models" / "tiny-llama" / "tiny-llama.F32.gguf"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
RANK, ALPHA = 4, 8
K_STEPS, LR, WEIGHT_DECAY = 5, 1e-2, 0.01


def load_base():
    m = AutoModelForCausalLM.from_pretrained(str(HF), dtype=torch.float32, attn_implementation="eager")
    m.eval()
    return m


def floats(t: torch.Tensor) -> list[float]:
    # float32 values written as the doubles they are: exact in JSON, exact when read back as Float.
    return [float(x) for x in t.detach().to(torch.float32).reshape(-1).tolist()]


def lora_modules(model):
    """(layer, target, module) in the order layer, then TARGETS."""
    out = []
    for li, layer in enumerate(model.base_model.model.model.layers):
        for t in TARGETS:
            parent = layer.self_attn if t in ("q_proj", "k_proj", "v_proj", "o_proj") else layer.mlp
            out.append((li, t, getattr(parent, t)))
    return out


def goldens() -> dict:
    torch.manual_seed(0)
    model = get_peft_model(load_base(), LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, lora_dropout=0.0))
    g = torch.Generator().manual_seed(1234)
    modules = []
    with torch.no_grad():
        for li, t, m in lora_modules(model):
            a, b = m.lora_A["default"].weight, m.lora_B["default"].weight
            a.copy_(torch.empty_like(a).uniform_(-1, 1, generator=g) / math.sqrt(a.shape[1]))
            b.copy_(torch.empty_like(b).uniform_(-0.3, 0.3, generator=g))
            modules.append({"layer": li, "target": t, "a": floats(a), "b": floats(b)})

    # Two sequences, the second padded (token 0) to the first's length; HF labels are the tokens themselves
    # (the model shifts them), -100 where no loss is taken: prompt positions and padding.
    vocab = model.config.vocab_size
    tokens = [[int(x) for x in torch.randint(0, vocab, (n,), generator=g)] for n in (10, 7)]
    starts = [4, 2]
    length = max(map(len, tokens))
    ids = torch.zeros(2, length, dtype=torch.long)
    labels = torch.full((2, length), -100, dtype=torch.long)
    for b, (seq, s) in enumerate(zip(tokens, starts)):
        ids[b, :len(seq)] = torch.tensor(seq)
        labels[b, s:len(seq)] = torch.tensor(seq[s:])

    model.train()  # dropout is 0: train mode only enables autograd bookkeeping
    loss = model(input_ids=ids, labels=labels).loss
    loss.backward()
    for (li, t, m), entry in zip(lora_modules(model), modules):
        entry["grad_a"] = floats(m.lora_A["default"].weight.grad)
        entry["grad_b"] = floats(m.lora_B["default"].weight.grad)
    loss0 = float(loss.detach())

    params = [p for n, p in model.named_parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    opt.zero_grad()
    losses = []
    for _ in range(K_STEPS):
        opt.zero_grad()
        l = model(input_ids=ids, labels=labels).loss
        losses.append(float(l))
        l.backward()
        opt.step()
    with torch.no_grad():
        final_loss = float(model(input_ids=ids, labels=labels).loss)
    for (li, t, m), entry in zip(lora_modules(model), modules):
        entry["final_a"] = floats(m.lora_A["default"].weight)
        entry["final_b"] = floats(m.lora_B["default"].weight)
    return {
        "model": "tiny-llama/hf", "rank": RANK, "alpha": ALPHA, "targets": TARGETS,
        "reference": "transformers LlamaForCausalLM float32 eager + peft get_peft_model (unmerged), torch.optim.AdamW",
        "tokens": tokens, "completion_starts": starts, "pad_token": 0,
        "loss": loss0, "modules": modules,
        "adamw": {"lr": LR, "weight_decay": WEIGHT_DECAY, "betas": [0.9, 0.999], "eps": 1e-8, "steps": K_STEPS},
        "losses_before_step": losses, "final_loss": final_loss,
    }


PROMPTS = [[5, 17, 200, 3, 9, 44, 61], [100, 101, 102, 7]]


def roundtrip(dlora: Path) -> dict:
    out = OUT / "peft-roundtrip"
    adapter = out / "adapter"
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    data = out / "train.jsonl"
    words = ["red", "blue", "green", "gold", "gray", "pink", "teal", "navy"]
    data.write_text("".join(json.dumps({"prompt": f"color {i}:", "completion": f" {w}"}) + "\n" for i, w in enumerate(words)))
    cmd = [str(dlora), "train", "lora", "--model", str(GGUF), "--data", str(data), "--targets", "q_proj,k_proj,v_proj,o_proj",
           "--rank", "4", "--alpha", "8", "--steps", "30", "--lr", "2e-2", "--batch", "8", "--max-length", "32", "--seed", "3",
           "--threads", "1", "--out", str(adapter)]
    run = subprocess.run(cmd, capture_output=True, text=True, check=True)
    log = [line.replace(str(ROOT) + "/", "") for line in run.stderr.strip().splitlines()]
    # The committed adapter names the fixture's path relative to the repository, not this machine's.
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg["base_model_name_or_path"] = "Tests/Fixtures/models/tiny-llama/tiny-llama.F32.gguf"
    (adapter / "adapter_config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")

    base = load_base()
    with torch.no_grad():
        base_logits = [base(input_ids=torch.tensor([p])).logits[0] for p in PROMPTS]
    model = PeftModel.from_pretrained(load_base(), str(adapter))
    model.eval()
    with torch.no_grad():
        logits = [model(input_ids=torch.tensor([p])).logits[0] for p in PROMPTS]
    result = {
        "reference": "peft.PeftModel.from_pretrained on Tests/Fixtures/models/tiny-llama/hf, float32 eager",
        "command": " ".join(["dlora"] + cmd[1:]).replace(str(ROOT) + "/", ""),
        "train_log_last": log[-1] if log else "",
        "prompts": PROMPTS,
        "logits": [[floats(row) for row in l] for l in logits],
        "max_abs_diff_from_base": max(float((a - b).abs().max()) for a, b in zip(logits, base_logits)),
    }
    (out / "peft_logits.json").write_text(json.dumps(result) + "\n")
    return {"train_log_last": result["train_log_last"], "max_abs_diff_from_base": result["max_abs_diff_from_base"]}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dlora", default=str(ROOT / ".build" / "debug" / "dlora"))
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    gold = goldens()
    (OUT / "goldens.json").write_text(json.dumps(gold) + "\n")
    summary = {
        "versions": {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__},
        "goldens": {"loss": gold["loss"], "losses_before_step": gold["losses_before_step"], "final_loss": gold["final_loss"]},
        "peft_roundtrip": roundtrip(Path(args.dlora)),
    }
    (OUT / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
