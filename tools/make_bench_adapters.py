#!/usr/bin/env python3
"""Writes random PEFT LoRA adapters for SmolLM2-135M (q_proj/v_proj) for the server load benchmark.

Usage: make_bench_adapters.py OUT_DIR COUNT [RANK] [DTYPE]
Each adapter is OUT_DIR/adapter-<i>/ with adapter_config.json and adapter_model.safetensors, written
with numpy alone (the safetensors layout: 8-byte little-endian header size, JSON header, raw data).
RANK is one rank (default 16) or a comma-separated list cycled over the adapters (e.g. 8,16,32,64: adapter i
gets the (i mod 4)-th rank, like `dlora bench replica`); DTYPE is f16 (default) or bf16.
"""
import json
import os
import struct
import sys

import numpy as np

LAYERS, HIDDEN, KV_DIM = 30, 576, 192  # SmolLM2-135M: 9 heads × 64, 3 KV heads × 64


def to_bf16_bytes(array):
    """bfloat16: the high 16 bits of the float32, rounded to nearest even."""
    bits = np.ascontiguousarray(array, dtype=np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    return rounded.astype("<u2").tobytes()


def write_safetensors(path, tensors, dtype="f16"):
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        data = to_bf16_bytes(array) if dtype == "bf16" else array.astype("<f2").tobytes()
        header[name] = {"dtype": dtype.upper(), "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def main():
    out, count = sys.argv[1], int(sys.argv[2])
    ranks = [int(r) for r in sys.argv[3].split(",")] if len(sys.argv) > 3 else [16]
    dtype = sys.argv[4] if len(sys.argv) > 4 else "f16"
    if dtype not in ("f16", "bf16") or not ranks or min(ranks) < 1:
        sys.exit("make_bench_adapters.py: RANK must be positive integers, DTYPE f16 or bf16")
    for i in range(count):
        rank = ranks[i % len(ranks)]
        rng = np.random.default_rng(1000 + i)
        d = os.path.join(out, f"adapter-{i}")
        os.makedirs(d, exist_ok=True)
        tensors = {}
        for layer in range(LAYERS):
            for proj, out_dim in (("q_proj", HIDDEN), ("v_proj", KV_DIM)):
                prefix = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
                tensors[f"{prefix}.lora_A.weight"] = rng.normal(0, 1 / np.sqrt(HIDDEN), (rank, HIDDEN))
                tensors[f"{prefix}.lora_B.weight"] = rng.normal(0, 0.02, (out_dim, rank))
        write_safetensors(os.path.join(d, "adapter_model.safetensors"), tensors, dtype)
        with open(os.path.join(d, "adapter_config.json"), "w") as f:
            json.dump({"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank,
                       "lora_dropout": 0.0, "bias": "none", "target_modules": ["q_proj", "v_proj"],
                       "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct"}, f, indent=1)


if __name__ == "__main__":
    main()
