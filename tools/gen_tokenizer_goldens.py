#!/usr/bin/env python3
"""Regenerate the tokenizer and chat-template fixtures under Tests/Fixtures/tokenizers/.

How to run (from the repository root; developers only, CI never runs this):

    python3 tools/gen_tokenizer_goldens.py                 # everything (~10 s)
    python3 tools/gen_tokenizer_goldens.py --skip-smollm   # tiny tokenizers and templates only
    python3 tools/gen_tokenizer_goldens.py --llama-server http://127.0.0.1:8080
        # also cross-check SmolLM2 ids against a running llama.cpp server (/tokenize) serving the GGUF
    tools/update_fixture_manifest.sh                       # then refresh Tests/Fixtures/MANIFEST.sha256

Needs: python3 with transformers >= 5, tokenizers, sentencepiece, gguf (gguf-py). No network.

What it writes (schema in Tests/Fixtures/tokenizers/README.md):
  smollm2-135m-instruct/goldens.json     ids for the GGUF's tokenizer (the GGUF itself stays in ~/.cache/dlora)
  tiny-spm/                               SentencePiece BPE + byte fallback, Llama-2/TinyLlama-style tokenizer.json
      tokenizer.json tokenizer_config.json gguf_metadata.json goldens.json
  tiny-spm-metaspace/                     same model, Metaspace pre-tokenizer (transformers >= 4.4x style)
      tokenizer.json tokenizer_config.json goldens.json
  tiny-llama3/                            byte-level BPE with the Llama 3 split regex and ignore_merges
      tokenizer.json tokenizer_config.json gguf_metadata.json goldens.json
  tiny-qwen2-style/, tiny-smollm-style/   tiny-llama3's vocabulary with Qwen2's (NFC, single-digit regex) and
      tokenizer.json goldens.json         SmolLM2's (Digits + GPT-2 regex) pipelines
  chat_templates.json                     transformers' apply_chat_template renderings of known templates

Deterministic: the tiny tokenizers are trained single-threaded on a corpus built here; two runs give identical
bytes.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import urllib.request
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAYON_NUM_THREADS", "1")

import sentencepiece as spm
import tokenizers
import transformers
from gguf import GGUFReader
from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import AutoTokenizer, PreTrainedTokenizerFast
from transformers.utils import logging as hf_logging

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "Tests" / "Fixtures" / "tokenizers"
SMOL_PATH = Path.home() / ".cache" / "dlora" / "SmolLM2-135M-Instruct.Q4_1.gguf"

QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Strings every tokenizer is checked on (ASCII, Unicode scripts, digits, whitespace, emoji, code, contractions).
COMMON_STRINGS = [
    "",
    "Hello world",
    "Hello, world! How are you today?",
    " leading space",
    "trailing space ",
    "multiple   spaces    between  words",
    "tabs\tand\ttabs\t\tend",
    "line1\nline2\r\nline3\n\n\nend",
    "   \n\n   \t  ",
    " ",
    "\n",
    "x\n",
    "\nx",
    "The year 2024 had 366 days; pi is about 3.14159",
    "1234567890 12 345 6789 1000000",
    "Price: $1,234,567.89 (approx.)",
    "I'm sure you're right, they've said we'll go; he'd, she's, it'll",
    "DON'T SHOUT, IT'S FINE, I'M OK, THEY'LL SEE",
    "naïve café résumé façade über Straße",
    "Привет, мир! Как дела?",
    "مرحبا بالعالم",
    "你好，世界！今天天气很好。",
    "日本語のテキストとカタカナ",
    "한국어 텍스트",
    "Ελληνικά κείμενο",
    "हिन्दी पाठ",
    "emoji: 😀🎉👍🏽",
    "family: 👨‍👩‍👧‍👦 flag: 🇯🇵 heart: ❤️",
    "def f(x):\n    return x ** 2  # square\n",
    "if (a != b && c <= d) { return [1, 2, 3]; }",
    '<html><body class="main">Hi</body></html>',
    "Mixed123abc456DEF",
    "unicode spaces:\u00a0a\u2003b\u3000c",
    "zero\u200bwidth and combining e\u0301 a\u0308",
    "math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∑∫√∞",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "a" * 64,
    "!!!???...,,,;;; --- ***",
    "URL: https://example.com/path?q=1&r=2#frag",
    "ctrl\u0001chars\u001f and nul\u0000x",
    "'s 's 'S 'll 'LL x's",
    "replacement \ufffd char",
]


def corpus() -> list[str]:
    """A fixed training corpus: English prose, numbers, code, a few accented and Cyrillic words."""
    prose = [
        "The quick brown fox jumps over the lazy dog.",
        "A tokenizer splits text into pieces that a language model can read.",
        "Byte pair encoding merges the most frequent pair of symbols again and again.",
        "The server reads a request, schedules it, runs the model and streams the answer back.",
        "Adapters are small low-rank matrices that change what the base model does.",
        "It's a small world, isn't it? They're here, we've seen them, you'll see.",
        "Numbers like 12, 345 and 6789 appear in tables, prices ($19.99) and dates (2024-05-17).",
        "Whitespace matters:  two spaces,\ttabs,\nnew lines and   runs of spaces.",
        "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
        "for (int i = 0; i < n; i++) { sum += x[i] * y[i]; }",
        "The café served a naïve crème brûlée; the résumé was über good.",
        "Привет мир, это тест.",
        "Hello, hello, hello! How are you? I am fine, thank you, and you?",
        "Streaming detokenizers must never emit half of a UTF-8 character.",
        "The model, the adapter and the scheduler share one step loop.",
    ]
    lines = []
    for rep in range(6):
        for i, line in enumerate(prose):
            lines.append(line if rep % 2 == 0 else line.lower())
            lines.append(f"Line {rep * 100 + i}: {line.split(' ')[0]} and {line.split(' ')[-1]}")
    return lines


def hf_decode(tok: Tokenizer, ids: list[int], skip: bool) -> str:
    return tok.decode(ids, skip_special_tokens=skip)


def cases_for(tok: Tokenizer, strings: list[str], with_special: list[str]) -> list[dict]:
    out = []
    for s in strings + with_special:
        ids = tok.encode(s, add_special_tokens=False).ids
        ids_special = tok.encode(s, add_special_tokens=True).ids
        case = {
            "text": s,
            "ids": ids,
            "ids_add_special": ids_special,
            "decoded": hf_decode(tok, ids, False),
            "decoded_skip_special": hf_decode(tok, ids, True),
        }
        out.append(case)
    return out


def write_json(path: Path, obj, pretty: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        if pretty:
            json.dump(obj, f, ensure_ascii=False, indent=1, sort_keys=False)
        else:
            json.dump(obj, f, ensure_ascii=True, separators=(",", ":"), sort_keys=False)
        f.write("\n")


def tokenizer_json(tok: Tokenizer) -> dict:
    return json.loads(tok.to_str())


# ---------------------------------------------------------------------------------------------------------
# (a) SmolLM2 from the real GGUF


def gguf_field(reader: GGUFReader, key: str):
    f = reader.fields.get(key)
    if f is None:
        return None
    return f.contents()


def smollm2(args, report: dict) -> None:
    if not SMOL_PATH.exists():
        print(f"skipping SmolLM2: {SMOL_PATH} not found", file=sys.stderr)
        return
    reader = GGUFReader(str(SMOL_PATH))
    pre = gguf_field(reader, "tokenizer.ggml.pre")
    template = gguf_field(reader, "tokenizer.chat_template")
    assert pre == "smollm", pre
    assert template == SMOLLM2_TEMPLATE, "SmolLM2 GGUF chat template changed"

    with tempfile.TemporaryDirectory() as d:
        os.symlink(SMOL_PATH, Path(d) / SMOL_PATH.name)
        tf = AutoTokenizer.from_pretrained(d, gguf_file=SMOL_PATH.name)
    # transformers' GGUF converter ignores `tokenizer.ggml.pre` and always uses ByteLevel(GPT-2 regex). The
    # original HF tokenizer.json of SmolLM/SmolLM2 (and llama.cpp's "smollm" pre-type: `\p{N}` then the GPT-2
    # regex) first isolates every digit. Rebuild that original pre-tokenizer on the GGUF's vocab and merges.
    j = tokenizer_json(tf.backend_tokenizer)
    assert j["pre_tokenizer"]["type"] == "ByteLevel", j["pre_tokenizer"]
    j["pre_tokenizer"] = {
        "type": "Sequence",
        "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        ],
    }
    orig = Tokenizer.from_str(json.dumps(j))

    special = [
        "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
        "text<|im_end|>more<|endoftext|>",
        "<repo_name>dlora<file_sep>main.swift",
        "not special: <|im_start| and |im_end|>",
        # Where the digit split matters (transformers' GGUF tokenizer gets these wrong, see the note):
        "spaces  12  34  and  5",
        "a  1",
        "\t\t1\n\n2",
        "  2024  ",
        "version  3.10  and\n\n42",
    ]
    cases = cases_for(orig, COMMON_STRINGS, special)

    # Cross-checks: transformers' own GGUF tokenizer, and llama.cpp when a server is given.
    deviations = []
    for c in cases:
        t_ids = tf.encode(c["text"], add_special_tokens=False)
        if t_ids != c["ids"]:
            c["transformers_gguf_ids"] = t_ids
            deviations.append(c["text"])
        assert tf.decode(c["ids"]) == c["decoded"], c["text"]
        assert tf.decode(c["ids"], skip_special_tokens=True) == c["decoded_skip_special"], c["text"]
    llama_cpp = None
    if args.llama_server:
        agree = 0
        for c in cases:
            req = urllib.request.Request(
                args.llama_server.rstrip("/") + "/tokenize",
                data=json.dumps({"content": c["text"], "add_special": False, "parse_special": True}).encode(),
                headers={"Content-Type": "application/json"},
            )
            ids = json.loads(urllib.request.urlopen(req).read())["tokens"]
            if ids == c["ids"]:
                agree += 1
            else:
                c["llama_cpp_ids"] = ids
        llama_cpp = f"{agree}/{len(cases)} strings identical to llama.cpp's tokenizer (llama-server /tokenize)"

    chats = []
    for conv in CONVERSATIONS[:3]:
        for gen in (True, False):
            rendered = tf.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
            chats.append({"messages": conv, "add_generation_prompt": gen, "rendered": rendered,
                          "ids": orig.encode(rendered, add_special_tokens=False).ids})

    report["smollm2"] = {"transformers_gguf_deviations": len(deviations), "llama_cpp": llama_cpp}
    write_json(OUT / "smollm2-135m-instruct" / "goldens.json", {
        "tokenizer": "smollm2-135m-instruct",
        "source": f"~/.cache/dlora/{SMOL_PATH.name} (tokenizer.ggml.* and tokenizer.chat_template)",
        "reference": "tokenizers " + tokenizers.__version__ + ": the GGUF's vocab and merges with the original HF "
                     "pre-tokenizer Sequence[Digits(individual_digits), ByteLevel(add_prefix_space=false)] "
                     "(= GGUF pre 'smollm'); chat renderings from transformers " + transformers.__version__
                     + " apply_chat_template with the GGUF's template",
        "note": "transformers' GGUF tokenizer ignores tokenizer.ggml.pre and splits digits with the GPT-2 regex; "
                "where its ids differ, they are in transformers_gguf_ids (" + str(len(deviations)) + " strings). "
                "llama.cpp's tokenizer (pre-type SMOLLM) agrees with these ids (see README.md; run with "
                "--llama-server to re-check; disagreements would be written as llama_cpp_ids).",
        "vocab_size": orig.get_vocab_size(),
        "bos_id": 1,
        "eos_id": 2,
        "cases": cases,
        "chat": chats,
    })


# ---------------------------------------------------------------------------------------------------------
# (b) SentencePiece BPE with byte fallback (Llama 2 / TinyLlama style)


def spm_tokenizers(report: dict) -> None:
    with tempfile.TemporaryDirectory() as d:
        prefix = os.path.join(d, "tiny")
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(corpus()), model_prefix=prefix, vocab_size=420, model_type="bpe",
            byte_fallback=True, character_coverage=1.0, num_threads=1, split_digits=True,
            add_dummy_prefix=True, normalization_rule_name="identity", remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2,
        )
        sp = spm.SentencePieceProcessor(model_file=prefix + ".model")
    n = sp.get_piece_size()
    pieces = [sp.id_to_piece(i) for i in range(n)]
    scores = [sp.get_score(i) for i in range(n)]
    vocab = {p: i for i, p in enumerate(pieces)}

    # Merges the way transformers' SentencePieceExtractor derives them: every split of a piece into two pieces,
    # ranked by the merged piece's score (then by the pair's ids).
    merges = []
    for piece, pid in vocab.items():
        if sp.is_byte(pid) or sp.is_control(pid) or sp.is_unknown(pid):
            continue
        for k in range(1, len(piece)):
            left, right = piece[:k], piece[k:]
            if left in vocab and right in vocab:
                merges.append((scores[pid], vocab[left], vocab[right], left, right))
    merges.sort(key=lambda m: (-m[0], m[1], m[2]))
    merge_pairs = [(m[3], m[4]) for m in merges]

    def build(metaspace: bool) -> Tokenizer:
        tok = Tokenizer(BPE(vocab, merge_pairs, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
        tok.add_special_tokens([tokenizers.AddedToken(t, normalized=False, special=True)
                                for t in ("<unk>", "<s>", "</s>")])
        if metaspace:
            tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
        else:
            tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
        tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                         decoders.Strip(" ", 1, 0)])
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                           special_tokens=[("<s>", 1)])
        return tok

    special = ["<s>hi</s> there", "a</s>b", "</s> <s>  x", "<unk> is unknown"]
    for name, metaspace, template in (("tiny-spm", False, ZEPHYR_TEMPLATE),
                                      ("tiny-spm-metaspace", True, LLAMA2_TEMPLATE)):
        tok = build(metaspace)
        cases = cases_for(tok, COMMON_STRINGS, special)
        # sentencepiece is the ground truth for the score-based (GGUF) path; for plain text the legacy
        # Prepend/Replace tokenizer.json must agree with it. Strings with special tokens in them: sentencepiece
        # doesn't parse those, llama.cpp (and HF) do, so the tokenizer.json ids are the reference there.
        agree = 0
        for c in cases:
            if c["text"] in special:
                continue
            sp_ids = sp.encode(c["text"])
            if metaspace:
                c["spm_ids"] = sp_ids
            elif sp_ids == c["ids"]:
                agree += 1
            else:
                c["spm_ids"] = sp_ids
        if not metaspace:
            report[name] = f"{agree}/{len(cases) - len(special)} plain strings: tokenizer.json ids == sentencepiece ids"
        out = OUT / name
        out.mkdir(parents=True, exist_ok=True)
        tok.save(str(out / "tokenizer.json"))
        write_json(out / "tokenizer_config.json", {
            "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
            "unk_token": "<unk>", "legacy": not metaspace, "tokenizer_class": "LlamaTokenizer",
            "model_max_length": 2048, "chat_template": template,
        }, pretty=True)
        write_json(out / "goldens.json", {
            "tokenizer": name,
            "source": "sentencepiece " + spm.__version__ + " BPE (vocab 420, byte_fallback, split_digits, identity "
                      "normalization) trained on the corpus in tools/gen_tokenizer_goldens.py; tokenizer.json built "
                      "with tokenizers " + tokenizers.__version__,
            "reference": "tokenizers Tokenizer.encode/decode of tokenizer.json; spm_ids = sentencepiece's own ids "
                         "where they differ (tiny-spm) or always (tiny-spm-metaspace)",
            "vocab_size": tok.get_vocab_size(), "bos_id": 1, "eos_id": 2,
            "cases": cases,
        })
        if not metaspace:
            # GGUF metadata as convert_hf_to_gguf.py writes it for a SentencePiece model.
            types = []
            for i in range(n):
                if sp.is_unknown(i):
                    types.append(2)
                elif sp.is_control(i):
                    types.append(3)
                elif sp.is_byte(i):
                    types.append(6)
                elif sp.is_unused(i):
                    types.append(5)
                else:
                    types.append(1)
            write_json(out / "gguf_metadata.json", {
                "tokenizer.ggml.model": "llama", "tokenizer.ggml.pre": "default",
                "tokenizer.ggml.tokens": pieces, "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": types,
                "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
                "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.add_bos_token": True,
                "tokenizer.ggml.add_eos_token": False, "tokenizer.ggml.add_space_prefix": True,
                "tokenizer.chat_template": template,
            })


# ---------------------------------------------------------------------------------------------------------
# (c) Byte-level BPE with the Llama 3 regex


def llama3_tokenizer(report: dict) -> None:
    tok = Tokenizer(BPE(ignore_merges=True))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    trainer = BpeTrainer(vocab_size=480, min_frequency=2, show_progress=False,
                         initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[])
    tok.train_from_iterator(corpus(), trainer=trainer)
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tok.add_special_tokens([tokenizers.AddedToken(t, normalized=False, special=True) for t in specials])
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B",
                                      special_tokens=[("<|begin_of_text|>", bos)]),
    ])
    special = ["<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
               "x<|eot_id|> y", "<|start_header_id|", "1234567 12345678"]
    cases = cases_for(tok, COMMON_STRINGS, special)
    out = OUT / "tiny-llama3"
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    write_json(out / "tokenizer_config.json", {
        "bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 8192, "chat_template": LLAMA3_TEMPLATE,
    }, pretty=True)
    write_json(out / "goldens.json", {
        "tokenizer": "tiny-llama3",
        "source": "tokenizers " + tokenizers.__version__ + " BpeTrainer (vocab 480 + 6 specials, ByteLevel alphabet, "
                  "Llama 3 split regex, ignore_merges) on the corpus in tools/gen_tokenizer_goldens.py",
        "reference": "tokenizers Tokenizer.encode/decode of tokenizer.json",
        "vocab_size": tok.get_vocab_size(), "bos_id": bos, "eos_id": tok.token_to_id("<|end_of_text|>"),
        "cases": cases,
    })
    # GGUF metadata as convert_hf_to_gguf.py writes it for a Llama 3 (BPE, pre "llama-bpe") tokenizer.
    j = tokenizer_json(tok)
    size = tok.get_vocab_size()
    tokens = [tok.id_to_token(i) for i in range(size)]
    types = [3 if t in specials else 1 for t in tokens]
    merges = [" ".join(m) if isinstance(m, list) else m for m in j["model"]["merges"]]
    write_json(out / "gguf_metadata.json", {
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "llama-bpe", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": bos, "tokenizer.ggml.eos_token_id": tok.token_to_id("<|end_of_text|>"),
        "tokenizer.ggml.add_bos_token": True, "tokenizer.chat_template": LLAMA3_TEMPLATE,
    })
    report["tiny-llama3"] = f"vocab {size}, {len(merges)} merges"

    # Variants on the same vocabulary and merges, for the other byte-level pipelines tokenizer.json can describe.
    variants = {
        # Qwen2: NFC, the Llama 3 regex with single digits, no ignore_merges, no BOS.
        "tiny-qwen2-style": {
            "normalizer": {"type": "NFC"},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": QWEN2_REGEX}, "behavior": "Isolated", "invert": False},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
            "post_processor": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                               "use_regex": False},
        },
        # SmolLM/SmolLM2 (and StarCoder): every digit isolated, then ByteLevel's GPT-2 regex.
        "tiny-smollm-style": {
            "normalizer": None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
            "post_processor": None,
        },
    }
    for name, parts in variants.items():
        vj = tokenizer_json(tok)
        vj.update(parts)
        vj["model"]["ignore_merges"] = False
        variant = Tokenizer.from_str(json.dumps(vj))
        vcases = cases_for(variant, COMMON_STRINGS, special + ["e\u0301 vs \u00e9, \ufb01 and \u212b", "  2024  x1 "])
        vout = OUT / name
        vout.mkdir(parents=True, exist_ok=True)
        variant.save(str(vout / "tokenizer.json"))
        write_json(vout / "goldens.json", {
            "tokenizer": name,
            "source": "tiny-llama3's vocabulary and merges with another normalizer / pre-tokenizer / post-processor",
            "reference": "tokenizers Tokenizer.encode/decode of tokenizer.json",
            "vocab_size": variant.get_vocab_size(), "bos_id": bos, "eos_id": variant.token_to_id("<|end_of_text|>"),
            "cases": vcases,
        })


# ---------------------------------------------------------------------------------------------------------
# Chat templates

SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + "
    "'\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = "
    "messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}"
)
ZEPHYR_TEMPLATE = (
    "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
    "eos_token }}\n{% elif message['role'] == 'system' %}\n{{ '<|system|>\n' + message['content'] + eos_token }}\n"
    "{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n'  + message['content'] + eos_token }}\n"
    "{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"
)
UNKNOWN_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"}],
    [{"role": "user", "content": "  Hi there  \n"}, {"role": "assistant", "content": " Hello! How can I help? "},
     {"role": "user", "content": "Write \"café\" in Cyrillic: кафе 😀"}],
    [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}],
    [],
]


def chat_templates(report: dict) -> None:
    llama3 = PreTrainedTokenizerFast(tokenizer_file=str(OUT / "tiny-llama3" / "tokenizer.json"),
                                     bos_token="<|begin_of_text|>", eos_token="<|end_of_text|>")
    spm_tok = PreTrainedTokenizerFast(tokenizer_file=str(OUT / "tiny-spm" / "tokenizer.json"),
                                      bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    entries = []
    for name, kind, template, tok in (
        ("smollm2", "chatML", SMOLLM2_TEMPLATE, llama3),
        ("qwen2", "chatML", QWEN2_TEMPLATE, llama3),
        ("chatml", "chatML", CHATML_TEMPLATE, llama3),
        ("llama3", "llama3", LLAMA3_TEMPLATE, llama3),
        ("llama2", "llama2", LLAMA2_TEMPLATE, spm_tok),
        ("zephyr", "zephyr", ZEPHYR_TEMPLATE, spm_tok),
    ):
        cases = []
        for conv in CONVERSATIONS:
            for gen in (True, False):
                case = {"messages": conv, "add_generation_prompt": gen}
                try:
                    case["rendered"] = tok.apply_chat_template(conv, chat_template=template, tokenize=False,
                                                               add_generation_prompt=gen)
                except Exception as e:  # raise_exception in the template
                    case["error"] = str(e)
                cases.append(case)
        entries.append({"name": name, "kind": kind, "template": template, "bos_token": tok.bos_token,
                        "eos_token": tok.eos_token, "cases": cases})
    entries.append({"name": "unknown", "kind": "unrecognizedChatML", "template": UNKNOWN_TEMPLATE,
                    "bos_token": "<s>", "eos_token": "</s>", "cases": []})
    write_json(OUT / "chat_templates.json", {
        "reference": "transformers " + transformers.__version__ + " apply_chat_template(tokenize=False); template "
                     "texts: SmolLM2's from its GGUF, the others as published for Qwen2-Instruct, ChatML models, "
                     "Llama-3-Instruct, Llama-2-chat and TinyLlama/Zephyr",
        "templates": entries,
    }, pretty=True)
    report["chat_templates"] = f"{len(entries)} templates"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-smollm", action="store_true")
    ap.add_argument("--llama-server", help="URL of a llama.cpp server serving the SmolLM2 GGUF, for a cross-check")
    args = ap.parse_args()
    report: dict = {}
    spm_tokenizers(report)
    llama3_tokenizer(report)
    chat_templates(report)
    if not args.skip_smollm:
        smollm2(args, report)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
