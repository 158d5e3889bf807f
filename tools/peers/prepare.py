#!/usr/bin/env python3
"""Prepares the peers benchmark's inputs (bench/peers.sh), each step only when its output is missing.

Usage: prepare.py hf-config GGUF OUT_DIR
           Writes a Hugging Face config.json (architectures, rope_theta added for llama.cpp's converter) and the
           tokenizer files of the GGUF's model into OUT_DIR, using transformers' GGUF reader.
       prepare.py convert-loras LLAMA_CPP_SRC HF_DIR OUT_DIR ADAPTER_DIR...
           Converts PEFT adapters to GGUF LoRA files OUT_DIR/<name>.gguf (F16) with llama.cpp's own
           convert_lora_to_gguf.py from LLAMA_CPP_SRC (the vendored llama.cpp of the llama-cpp-python sdist), all in
           this one process so that torch and the converter are imported once, not once per adapter.
"""
import json
import os
import runpy
import sys


def hf_config(gguf, out):
    from transformers import AutoConfig, AutoTokenizer
    if os.path.isfile(os.path.join(out, "config.json")) and os.path.isfile(os.path.join(out, "tokenizer.json")):
        return
    d, f = os.path.dirname(os.path.abspath(gguf)), os.path.basename(gguf)
    config = AutoConfig.from_pretrained(d, gguf_file=f)
    tokenizer = AutoTokenizer.from_pretrained(d, gguf_file=f)
    tmp = out + ".tmp"
    os.makedirs(tmp, exist_ok=True)
    config.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    path = os.path.join(tmp, "config.json")
    c = json.load(open(path))
    c["architectures"] = [type(config).__name__.replace("Config", "ForCausalLM")]
    theta = (c.get("rope_parameters") or {}).get("rope_theta")
    if theta is not None and "rope_theta" not in c:
        c["rope_theta"] = theta
    json.dump(c, open(path, "w"), indent=1)
    os.replace(tmp, out)


def convert_loras(src, hf_dir, out, adapters):
    os.makedirs(out, exist_ok=True)
    sys.path[:0] = [src, os.path.join(src, "gguf-py")]
    script = os.path.join(src, "convert_lora_to_gguf.py")
    argv = sys.argv
    for a in adapters:
        target = os.path.join(out, os.path.basename(os.path.normpath(a)) + ".gguf")
        if os.path.isfile(target):
            continue
        sys.argv = [script, "--base", hf_dir, "--outtype", "f16", "--outfile", target + ".tmp", a]
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as e:
            if e.code not in (None, 0):
                raise
        os.replace(target + ".tmp", target)
        print(f"prepare: {target}", file=sys.stderr, flush=True)
    sys.argv = argv


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "hf-config":
        hf_config(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 5 and sys.argv[1] == "convert-loras":
        convert_loras(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
