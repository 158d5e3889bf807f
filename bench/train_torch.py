#!/usr/bin/env python3
"""torch + PEFT LoRA training throughput on the CPU, the configuration `bench/train.sh` runs ours with:
SmolLM2-135M-Instruct (the default model's Q4_1 GGUF, dequantized to float32 by transformers), LoRA r 8,
alpha 16 on q_proj/v_proj, batch 8 × 256 tokens (every position labelled), AdamW lr 2e-4. Prints one JSON
line: tokens/s in float32 and under bf16 autocast (mean over the timed steps, after warm-up steps).

    python3 bench/train_torch.py MODEL.gguf [--threads N] [--steps 5] [--warmup 2]
"""
import argparse
import json
import sys
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM


def run(model_path: Path, autocast: bool, steps: int, warmup: int, batch: int, length: int) -> float:
    m = AutoModelForCausalLM.from_pretrained(str(model_path.parent), gguf_file=model_path.name, dtype=torch.float32,
                                             attn_implementation="eager")
    m = get_peft_model(m, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    m.train()
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=2e-4)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, m.config.vocab_size, (batch, length), generator=g)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        opt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = m(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        dt = time.perf_counter() - t0
        print(f"torch {'bf16 autocast' if autocast else 'f32'} step {i + 1}/{warmup + steps}: {dt:.1f} s "
              f"({batch * length / dt:.1f} tok/s)", file=sys.stderr, flush=True)
        if i >= warmup:
            times.append(dt)
    return batch * length / (sum(times) / len(times))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model", type=Path)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    f32 = run(a.model, False, a.steps, a.warmup, 8, 256)
    bf16 = run(a.model, True, a.steps, a.warmup, 8, 256)
    print(json.dumps({"torch": torch.__version__, "threads": a.threads, "f32_tok_s": round(f32, 1), "bf16_autocast_tok_s": round(bf16, 1)}))


if __name__ == "__main__":
    main()
