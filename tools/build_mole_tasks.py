#!/usr/bin/env python3
"""Build a small multi-task suite (train/test JSONL per task + a mixed training file) for training and
evaluating LoRA experts and MoLE gates, from BIG-bench's task JSON in the `bigbench==1.0.0` sdist on PyPI.

    python3 tools/build_mole_tasks.py                  # → $XDG_CACHE_HOME/dlora/mole-tasks (downloads the sdist once)
    python3 tools/build_mole_tasks.py --out DIR --archive path/to/bigbench-1.0.0.tar.gz
    python3 tools/build_mole_tasks.py --self-test      # splitting/formatting/archive-reading checks, no network

The sdist (a .tar.gz, ~358 MB, sha256 pinned below) is fetched with `pip download --no-deps --no-binary :all:`
under a hash-pinned requirement into the cache dir and read with `tarfile` without installing or extracting
it: only regular-file members whose names are exactly the chosen task paths are read, each capped in size.

Per task the output holds train.jsonl / test.jsonl (`{"prompt": ..., "completion": ...}` per line, what
`dlora train lora --data` takes; the completion starts with a space) and test_eval.jsonl (prompt, every
reference, the choices where the metric is accuracy over choices). Train and test share no input, nor a
group where the task has one (Spider: database schema; E2E: meaning representation). Design and measured
counts: docs/design/mole-tasks.md. Standard library only.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import random
import re
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
from pathlib import Path

SDIST_NAME = "bigbench"
SDIST_VERSION = "1.0.0"
SDIST_FILE = f"{SDIST_NAME}-{SDIST_VERSION}.tar.gz"
SDIST_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
TASKS_PREFIX = f"{SDIST_NAME}-{SDIST_VERSION}/bigbench/benchmark_tasks/"
MAX_MEMBER_BYTES = 50 * 1024 * 1024
LICENCE = ("BIG-bench (github.com/google/BIG-bench) is Apache-2.0; the sdist's PKG-INFO says 'License: UNKNOWN' and "
           "ships no LICENSE file. Upstream datasets keep their own terms (see docs/design/mole-tasks.md).")

DEFAULT_SEED = 0
DEFAULT_TRAIN_CAP = 2000
DEFAULT_TEST_CAP = 300
DEFAULT_TEST_FRACTION = 0.3
DEFAULT_MAX_PROMPT = 512
MAX_COMPLETION = 256


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dlora"


# ----------------------------------------------------------------------------------------------------------
# Task definitions: how each BIG-bench example becomes records. A record is
#   {"input": normalized input (the dedup/split key), "group": split group, "prompt": str,
#    "targets": [str, ...] (first = the training/test completion), "choices": [str] or None}
# ----------------------------------------------------------------------------------------------------------

def normalize(s: str) -> str:
    s = unicodedata.normalize("NFKC", s).lower()
    return re.sub(r"\s+", " ", s).strip()


def _target_list(ex: dict) -> list[str]:
    t = ex.get("target")
    if isinstance(t, str):
        return [t]
    if isinstance(t, list) and all(isinstance(x, str) for x in t):
        return list(t)
    return []


def _best_choice(ex: dict) -> tuple[str | None, list[str]]:
    ts = ex.get("target_scores")
    if not isinstance(ts, dict) or not ts:
        return None, []
    if not all(isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool) for k, v in ts.items()):
        return None, []
    top = max(ts.values())
    best = [k for k, v in ts.items() if v == top]
    return (best[0] if len(best) == 1 and top > 0 else None), sorted(ts)


def fmt_arithmetic(ex):
    tg = _target_list(ex)
    if not tg:
        return None
    q = ex["input"].strip()
    return {"prompt": f"{q}\nAnswer:", "targets": [" " + t.strip() for t in tg]}


def fmt_negation(ex):
    tg = _target_list(ex)
    if not tg:
        return None
    return {"prompt": f"Negate the sentence: {ex['input'].strip()}\nNegation:", "targets": [" " + t.strip() for t in tg]}


def fmt_sentiment(ex):
    best, labels = _best_choice(ex)
    if best is None:
        return None
    return {"prompt": ("Is the sentiment of this opinion positive, negative, neutral or ambivalent?\n"
                       f"Opinion: {ex['input'].strip()}\nSentiment:"),
            "targets": [" " + best], "choices": [" " + c for c in labels]}


def fmt_e2e(ex):
    tg = _target_list(ex)
    if not tg:
        return None
    return {"prompt": f"Describe the restaurant.\nAttributes: {ex['input'].strip()}\nDescription:",
            "targets": [" " + re.sub(r"\s+", " ", t).strip() for t in tg]}


def spider_schema(inp: str) -> tuple[str, str]:
    """'question | * | t.a | t.b | u.c | t.* | u.*' → (question, 't(a, b); u(c)')."""
    parts = [p.strip() for p in inp.split(" | ")]
    question, cols = parts[0], parts[1:]
    tables: dict[str, list[str]] = {}
    for c in cols:
        if "." not in c:
            continue
        t, col = c.split(".", 1)
        tables.setdefault(t, [])
        if col != "*":
            tables[t].append(col)
    return question, "; ".join(f"{t}({', '.join(cs)})" for t, cs in tables.items())


def fmt_spider(ex):
    tg = _target_list(ex)
    if not tg:
        return None
    question, schema = spider_schema(ex["input"])
    return {"prompt": (f"Schema: {schema}\nQuestion: {question}\n"
                       "SQL (values replaced by 'value'):"),
            "targets": [" " + t.strip() for t in tg], "group": "schema:" + schema}


def fmt_word_sorting(ex):
    tg = _target_list(ex)
    if not tg:
        return None
    return {"prompt": f"Sort these words alphabetically: {ex['input'].strip()}\nSorted:",
            "targets": [" " + t.strip() for t in tg]}


# name, member path under benchmark_tasks/, formatter, metric, why
TASKS = [
    ("arithmetic", "arithmetic/2_digit_addition/task.json", fmt_arithmetic, "exact_match",
     "2-digit addition; one short numeric answer"),
    ("negation", "linguistic_mappings/sentence_negation_json/task.json", fmt_negation, "exact_match",
     "sentence negation across tense/number; short rewrite"),
    ("sentiment", "multiemo/products_sentence_en/task.json", fmt_sentiment, "choice_accuracy",
     "MultiEmo product-review sentences (English), 4 labels"),
    ("e2e", "gem/e2e_nlg/task.json", fmt_e2e, "rougeL_max_ref",
     "GEM E2E NLG data-to-text: restaurant attributes → one sentence"),
    ("sql", "semantic_parsing_spider/task.json", fmt_spider, "exact_match",
     "Spider text-to-SQL (values masked), split by database schema"),
    ("word_sorting", "word_sorting/task.json", fmt_word_sorting, "exact_match",
     "sort a short list of words; algorithmic"),
]

METRIC_NOTES = {
    "exact_match": "greedy completion, stripped, equals any reference (whitespace-normalised)",
    "choice_accuracy": "argmax of the completion log-likelihood over `choices` equals the reference "
                       "(or: greedy completion's first word equals it)",
    "rougeL_max_ref": "ROUGE-L F1 of the greedy completion against each reference, max over references "
                      "(exact match is meaningless for free text)",
}


# ----------------------------------------------------------------------------------------------------------
# Splitting: dedup by normalized input, group, hash-order groups, fill test, rest train. Deterministic.
# ----------------------------------------------------------------------------------------------------------

def _h(seed: int, task: str, key: str) -> str:
    return hashlib.sha256(f"{seed}\x00{task}\x00{key}".encode()).hexdigest()


def make_records(task: str, examples: list, fmt, max_prompt: int) -> tuple[list[dict], dict]:
    stats = {"examples": len(examples), "malformed": 0, "too_long": 0, "duplicates_merged": 0, "conflicting": 0}
    by_input: dict[str, dict] = {}
    order: list[str] = []
    conflicted: set[str] = set()
    for ex in examples:
        if not isinstance(ex, dict) or not isinstance(ex.get("input"), str):
            stats["malformed"] += 1
            continue
        r = fmt(ex)
        if r is None or not r["targets"]:
            stats["malformed"] += 1
            continue
        if len(r["prompt"]) > max_prompt or len(r["targets"][0]) > MAX_COMPLETION:
            stats["too_long"] += 1
            continue
        key = normalize(ex["input"])
        rec = {"input": key, "group": r.get("group", key), "prompt": r["prompt"],
               "targets": [t for t in r["targets"] if len(t) <= MAX_COMPLETION] or r["targets"][:1],
               "choices": r.get("choices")}
        if key in by_input:
            old = by_input[key]
            stats["duplicates_merged"] += 1
            if old["choices"] is not None and old["targets"][0] != rec["targets"][0]:
                conflicted.add(key)            # same sentence, different label: ambiguous, drop it
            for t in rec["targets"]:
                if t not in old["targets"]:
                    old["targets"].append(t)
            continue
        by_input[key] = rec
        order.append(key)
    stats["conflicting"] = len(conflicted)
    return [by_input[k] for k in order if k not in conflicted], stats


def split_records(task: str, records: list[dict], seed: int, test_fraction: float, test_cap: int,
                  train_cap: int, all_refs: bool = False) -> tuple[list[dict], list[dict]]:
    """Returns (train examples, test examples) as {"prompt","completion","references","choices","input","group"}.
    Test: whole groups in hash order until ≥ min(test_cap, test_fraction·inputs) inputs, never over test_cap.
    Train: one example per remaining input (its first reference), or with all_refs one per reference
    (E2E: several human descriptions per input); shuffled, capped."""
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(r["group"], []).append(r)
    ordered = sorted(groups, key=lambda g: _h(seed, task, g))
    want = min(test_cap, max(1, round(test_fraction * len(records)))) if records else 0
    test_groups: set[str] = set()
    n_test = 0
    for g in ordered:
        if n_test >= want:
            break
        size = len(groups[g])
        if n_test + size > test_cap:
            continue
        test_groups.add(g)
        n_test += size
    if len(test_groups) == len(groups) and len(groups) > 1:      # never leave train empty
        test_groups.discard(ordered[-1])
    train, test = [], []
    for g in ordered:
        for r in groups[g]:
            base = {"prompt": r["prompt"], "references": r["targets"], "choices": r["choices"],
                    "input": r["input"], "group": g}
            if g in test_groups:
                test.append(dict(base, completion=r["targets"][0]))
            else:
                for t in (r["targets"] if all_refs else r["targets"][:1]):
                    train.append(dict(base, completion=t))
    rng = random.Random(_h(seed, task, "shuffle"))
    rng.shuffle(train)
    rng.shuffle(test)
    return train[:train_cap], test[:test_cap]


def check_split(train: list[dict], test: list[dict]) -> None:
    tr_in, te_in = {e["input"] for e in train}, {e["input"] for e in test}
    assert not tr_in & te_in, f"input overlap: {sorted(tr_in & te_in)[:3]}"
    tr_g, te_g = {e["group"] for e in train}, {e["group"] for e in test}
    assert not tr_g & te_g, f"group overlap: {sorted(tr_g & te_g)[:3]}"


def jsonl_pc(rows: list[dict]) -> str:
    return "".join(json.dumps({"prompt": r["prompt"], "completion": r["completion"]}, ensure_ascii=False) + "\n"
                   for r in rows)


def jsonl_eval(rows: list[dict], metric: str) -> str:
    out = []
    for r in rows:
        o = {"prompt": r["prompt"], "references": r["references"], "metric": metric}
        if r["choices"] is not None:
            o["choices"] = r["choices"]
        out.append(json.dumps(o, ensure_ascii=False) + "\n")
    return "".join(out)


def build_task_files(task: str, examples: list, fmt, metric: str, args,
                     all_refs: bool = False) -> tuple[dict[str, str], dict, list, list]:
    records, stats = make_records(task, examples, fmt, args.max_prompt_chars)
    train, test = split_records(task, records, args.seed, args.test_fraction, args.test_cap, args.train_cap, all_refs)
    check_split(train, test)
    files = {"train.jsonl": jsonl_pc(train), "test.jsonl": jsonl_pc(test), "test_eval.jsonl": jsonl_eval(test, metric)}
    stats.update(unique_inputs=len(records), groups=len({r["group"] for r in records}),
                 train=len(train), test=len(test),
                 train_inputs=len({e["input"] for e in train}), test_groups=len({e["group"] for e in test}))
    return files, stats, train, test


def mixed(per_task: dict[str, list[dict]], seed: int) -> tuple[str, str]:
    rows = [(t, e) for t, es in per_task.items() for e in es]
    random.Random(_h(seed, "mixed", "shuffle")).shuffle(rows)
    return jsonl_pc([e for _, e in rows]), "".join(t + "\n" for t, _ in rows)


# ----------------------------------------------------------------------------------------------------------
# The archive: untrusted. Stream it, read only exact-name regular files, cap sizes, never extract.
# ----------------------------------------------------------------------------------------------------------

def sha256_file(p: Path) -> str:
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def check_archive(p: Path, expect_sha: str | None = SDIST_SHA256) -> None:
    with open(p, "rb") as f:
        if f.read(2) != b"\x1f\x8b":
            raise SystemExit(f"{p}: not a gzip file")
    if expect_sha is not None:
        got = sha256_file(p)
        if got != expect_sha:
            raise SystemExit(f"{p}: sha256 {got} != pinned {expect_sha}")


def fetch_sdist(cache: Path) -> Path:
    target = cache / SDIST_FILE
    if target.exists():
        check_archive(target)
        return target
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache) as tmp:
        req = Path(tmp) / "requirements.txt"
        req.write_text(f"{SDIST_NAME}=={SDIST_VERSION} --hash=sha256:{SDIST_SHA256}\n")
        dl = Path(tmp) / "dl"
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--require-hashes",
               "-r", str(req), "-d", str(dl)]
        print("+ " + " ".join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True)
        got = dl / SDIST_FILE
        if not got.is_file():
            raise SystemExit(f"pip did not produce {SDIST_FILE} (got {sorted(os.listdir(dl))})")
        check_archive(got)
        os.replace(got, target)
    return target


def read_task_json(fileobj, wanted: set[str], prefix: str = TASKS_PREFIX,
                   max_bytes: int = MAX_MEMBER_BYTES) -> dict[str, dict]:
    """Stream a tar.gz; return {relative task path: parsed JSON} for regular-file members named exactly
    prefix + one of `wanted`. Anything else (links, devices, other names, '..' tricks) is skipped unread."""
    full = {prefix + w: w for w in wanted}
    found: dict[str, dict] = {}
    with tarfile.open(fileobj=fileobj, mode="r|gz") as tar:
        for m in tar:
            rel = full.get(m.name)
            if rel is None:
                continue
            if not m.isreg():
                raise SystemExit(f"archive member {m.name!r} is not a regular file")
            if rel in found:
                raise SystemExit(f"archive member {m.name!r} appears twice")
            if m.size > max_bytes:
                raise SystemExit(f"archive member {m.name!r} is {m.size} bytes (cap {max_bytes})")
            f = tar.extractfile(m)
            data = f.read(max_bytes + 1)
            if len(data) > max_bytes:
                raise SystemExit(f"archive member {m.name!r} over {max_bytes} bytes")
            doc = json.loads(data.decode("utf-8"))
            if not isinstance(doc, dict) or not isinstance(doc.get("examples"), list):
                raise SystemExit(f"{m.name}: no 'examples' list")
            found[rel] = doc
    missing = wanted - set(found)
    if missing:
        raise SystemExit(f"archive lacks {sorted(missing)}")
    return found


# ----------------------------------------------------------------------------------------------------------

def write_files(out: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = out / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, p)


def build(args) -> dict:
    cache = Path(args.cache)
    archive = Path(args.archive) if args.archive else fetch_sdist(cache)
    check_archive(archive)
    with open(archive, "rb") as f:
        docs = read_task_json(f, {path for _, path, _, _, _ in TASKS})
    out = Path(args.out)
    files: dict[str, str] = {}
    manifest_tasks = []
    trains, tests = {}, {}
    for name, path, fmt, metric, why in TASKS:
        doc = docs[path]
        tf, stats, train, test = build_task_files(name, doc["examples"], fmt, metric, args, all_refs=(name == "e2e"))
        for k, v in tf.items():
            files[f"{name}/{k}"] = v
        trains[name], tests[name] = train, test
        entry = {"name": name, "source": f"{SDIST_FILE}:{TASKS_PREFIX}{path}", "bigbench_name": doc.get("name"),
                 "why": why, "metric": metric, "metric_definition": METRIC_NOTES[metric],
                 "bigbench_preferred_score": doc.get("preferred_score"),
                 "split_key": "database schema" if name == "sql" else
                              ("meaning representation (the input)" if name == "e2e" else "normalized input"),
                 "files": {k: f"{name}/{k}" for k in tf}, **stats}
        for k in ("canary", "license", "licence"):
            if k in doc:
                entry[k] = doc[k]
        manifest_tasks.append(entry)
        print(f"{name:14s} train {stats['train']:5d}  test {stats['test']:4d}  (inputs {stats['unique_inputs']}, "
              f"groups {stats['groups']}, too long {stats['too_long']}, dup {stats['duplicates_merged']}, "
              f"conflicting {stats['conflicting']})", file=sys.stderr)
    files["mixed_train.jsonl"], files["mixed_train_tasks.txt"] = mixed(trains, args.seed)
    files["mixed_test.jsonl"], files["mixed_test_tasks.txt"] = mixed(tests, args.seed + 1)
    manifest = {
        "generator": "tools/build_mole_tasks.py",
        "source": {"pypi": f"{SDIST_NAME}=={SDIST_VERSION}", "file": SDIST_FILE, "sha256": SDIST_SHA256},
        "licence": LICENCE,
        "note": "BIG-bench task data carries a canary string: keep it out of pre-training corpora; do not republish.",
        "seed": args.seed, "train_cap": args.train_cap, "test_cap": args.test_cap,
        "test_fraction": args.test_fraction, "max_prompt_chars": args.max_prompt_chars,
        "format": {"train.jsonl/test.jsonl": '{"prompt": str, "completion": str} (dlora train lora --data)',
                   "test_eval.jsonl": '{"prompt", "references": [str], "metric", "choices"?: [str]}',
                   "mixed_train.jsonl": "every task's train.jsonl, shuffled; mixed_train_tasks.txt names the task per line",
                   "mixed_test.jsonl": "every task's test.jsonl, shuffled; mixed_test_tasks.txt likewise"},
        "tasks": manifest_tasks,
        "mixed_train": sum(len(v) for v in trains.values()), "mixed_test": sum(len(v) for v in tests.values()),
    }
    files["manifest.json"] = json.dumps(manifest, indent=2, ensure_ascii=False) + "\n"
    write_files(out, files)
    print(f"wrote {out} (mixed train {manifest['mixed_train']}, mixed test {manifest['mixed_test']})", file=sys.stderr)
    return manifest


# ----------------------------------------------------------------------------------------------------------

def self_test() -> None:
    ns = argparse.Namespace(seed=7, train_cap=50, test_cap=12, test_fraction=0.3, max_prompt_chars=200)
    rng = random.Random(1)
    # A synthetic generation task with exact and case/space-variant duplicates, multi-reference inputs, an
    # over-long prompt and malformed rows.
    gen = []
    for i in range(80):
        a, b = rng.randrange(10, 100), rng.randrange(10, 100)
        gen.append({"input": f"What is {a} plus {b}?", "target": str(a + b)})
    gen += [{"input": "what is  10 PLUS 11?", "target": "21"}, {"input": "What is 10 plus 11?", "target": "21"},
            {"input": "x" * 500, "target": "1"}, {"input": 3, "target": "1"}, {"input": "no target"}]
    # A choice task with a conflicting duplicate.
    ch = [{"input": f"review {i}", "target_scores": {"positive": int(i % 2 == 0), "negative": int(i % 2 == 1)}}
          for i in range(40)]
    ch.append({"input": "Review 3", "target_scores": {"positive": 1, "negative": 0}})
    # A grouped task (Spider-like): 6 schemas, questions per schema.
    sp = [{"input": f"q{i} about t{i % 6} | * | t{i % 6}.a | t{i % 6}.b | t{i % 6}.*", "target": ["select a from t"]}
          for i in range(36)]
    for name, exs, fmt, metric in [("gen", gen, fmt_arithmetic, "exact_match"),
                                   ("choice", ch, fmt_sentiment, "choice_accuracy"),
                                   ("grouped", sp, fmt_spider, "exact_match")]:
        f1, st1, tr, te = build_task_files(name, exs, fmt, metric, ns)
        f2, st2, _, _ = build_task_files(name, exs, fmt, metric, ns)
        assert f1 == f2 and st1 == st2, f"{name}: not deterministic"
        ns_other = argparse.Namespace(**dict(vars(ns), seed=8))
        f3, _, _, _ = build_task_files(name, exs, fmt, metric, ns_other)
        assert f3 != f1, f"{name}: seed has no effect"
        check_split(tr, te)
        assert tr and te and len(te) <= ns.test_cap and len(tr) <= ns.train_cap, (name, len(tr), len(te))
        tr_prompts = {json.loads(l)["prompt"] for l in f1["train.jsonl"].splitlines()}
        te_prompts = {json.loads(l)["prompt"] for l in f1["test.jsonl"].splitlines()}
        assert not tr_prompts & te_prompts, f"{name}: prompt overlap"
        for fn in ("train.jsonl", "test.jsonl"):
            for line in f1[fn].splitlines():
                o = json.loads(line)
                assert set(o) == {"prompt", "completion"}, o
                assert isinstance(o["prompt"], str) and isinstance(o["completion"], str)
                assert o["completion"].startswith(" ") and len(o["prompt"]) <= ns.max_prompt_chars, o
        for line in f1["test_eval.jsonl"].splitlines():
            o = json.loads(line)
            assert o["metric"] == metric and o["references"], o
            assert ("choices" in o) == (metric == "choice_accuracy")
        if name == "gen":
            assert st1["duplicates_merged"] >= 1 and st1["too_long"] == 1 and st1["malformed"] == 2, st1
        if name == "choice":
            assert st1["conflicting"] == 1 and st1["unique_inputs"] == 39, st1
        if name == "grouped":
            assert st1["groups"] == 6 and len({e["group"] for e in te}) >= 1, st1
            assert "t0(a, b)" in spider_schema(sp[0]["input"])[1]
    multi = [{"input": f"mr {i}", "target": f"desc {i} {j}"} for i in range(10) for j in range(3)]
    _, st, tr, _ = build_task_files("multi", multi, fmt_e2e, "rougeL_max_ref", ns, all_refs=True)
    assert st["duplicates_merged"] == 20 and len(tr) == 3 * st["train_inputs"], st
    _, st, tr, _ = build_task_files("multi", multi, fmt_e2e, "rougeL_max_ref", ns)
    assert len(tr) == st["train_inputs"], st
    m1 = mixed({"a": [{"prompt": "p1", "completion": " c"}] * 3, "b": [{"prompt": "p2", "completion": " d"}] * 2}, 0)
    assert m1 == mixed({"a": [{"prompt": "p1", "completion": " c"}] * 3,
                        "b": [{"prompt": "p2", "completion": " d"}] * 2}, 0)
    assert m1[1].count("a\n") == 3 and len(m1[0].splitlines()) == 5

    # The archive reader: only the exact regular-file member is read; links, traversal names and oversized
    # members are refused or ignored; nothing is written to disk.
    def tgz(members):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as t:
            for name, data, kind in members:
                ti = tarfile.TarInfo(name)
                if kind == "sym":
                    ti.type, ti.linkname = tarfile.SYMTYPE, "/etc/passwd"
                    t.addfile(ti)
                else:
                    ti.size = len(data)
                    t.addfile(ti, io.BytesIO(data))
        buf.seek(0)
        return buf
    good = json.dumps({"examples": [{"input": "a", "target": "b"}]}).encode()
    pre = TASKS_PREFIX
    arc = tgz([(pre + "../evil/task.json", good, "f"), ("/abs/task.json", good, "f"),
               (pre + "other/task.json", b"not json", "f"), (pre + "mine/task.json", good, "f")])
    got = read_task_json(arc, {"mine/task.json"})
    assert list(got) == ["mine/task.json"] and got["mine/task.json"]["examples"][0]["target"] == "b"
    for bad in ([(pre + "mine/task.json", b"", "sym")],
                [(pre + "mine/task.json", b"x" * 100, "f")],
                [(pre + "mine/task.json", good, "f"), (pre + "mine/task.json", good, "f")],
                [(pre + "other/task.json", good, "f")]):
        try:
            read_task_json(tgz(bad), {"mine/task.json"}, max_bytes=50)
        except SystemExit:
            pass
        else:
            raise AssertionError(f"accepted {[(n, k) for n, _, k in bad]}")
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.tar.gz"
        p.write_bytes(gzip.compress(b"hello"))
        check_archive(p, expect_sha=None)
        try:
            check_archive(p)
        except SystemExit:
            pass
        else:
            raise AssertionError("hash mismatch accepted")
        p.write_bytes(b"PK\x03\x04")
        try:
            check_archive(p, expect_sha=None)
        except SystemExit:
            pass
        else:
            raise AssertionError("non-gzip accepted")
    print("self-test ok", file=sys.stderr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", default=None, help="output dir (default $XDG_CACHE_HOME/dlora/mole-tasks)")
    ap.add_argument("--out", dest="out_opt", default=None, help="same as the positional argument")
    ap.add_argument("--cache", default=str(cache_root() / "bigbench"), help="where the sdist is kept")
    ap.add_argument("--archive", default=None, help=f"use this {SDIST_FILE} (sha256 still checked)")
    ap.add_argument("--seed", type=int, default=DEFAULT_SEED)
    ap.add_argument("--train-cap", type=int, default=DEFAULT_TRAIN_CAP)
    ap.add_argument("--test-cap", type=int, default=DEFAULT_TEST_CAP)
    ap.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION)
    ap.add_argument("--max-prompt-chars", type=int, default=DEFAULT_MAX_PROMPT)
    ap.add_argument("--self-test", action="store_true")
    args = ap.parse_args()
    if args.self_test:
        self_test()
        return
    args.out = args.out_opt or args.out or str(cache_root() / "mole-tasks")
    build(args)


if __name__ == "__main__":
    main()
