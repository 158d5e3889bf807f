#!/usr/bin/env bash
# MoLE evaluation (issue #15, deliver 6): on the BIG-bench task suite (tools/build_mole_tasks.py), train one
# rank-8 q/v LoRA expert per task on SmolLM2-135M-Instruct, then compose them four ways —
#   NLA      normalized linear arithmetic (composition.json, cat, weights 1, normalize);
#   LoRAHub  `dlora train lorahub` (CMA-ES over per-expert weights) on few-shot examples of every task, and per
#            task on 5 examples of that task (the paper's protocol), with every expert and without the task's own;
#   MoLE     `dlora train mole` on the mixed training set: block gates with the balance loss and without, and
#            layer, network and matrix gates;
# and score every configuration (base, each expert alone, NLA, LoRAHub, MoLE ×5) with `dlora eval` on the
# held-out splits. Writes $OUT.md, $OUT.json and $OUT-gates.svg (OUT=bench/results/mole by default).
#
# Work directory: $MOLE_DIR (default ~/.cache/dlora/mole-eval); trained adapters there are reused (delete the
# directory to retrain). Knobs: EXPERTS="task:steps:batch …", MOLE_STEPS, MOLE_BATCH, MOLE_SEEDS, MOLE_VARIANTS (a
# subset of mole mole-nobal mole-layer mole-network mole-matrix; mole is always trained), OUT, LIMIT (prompts per
# task), THREADS, REUSE_EVAL (set: score only the configurations $OUT.json lacks, e.g. new seeds, and keep the rest).
# Needs a quiet machine for the timings; the scores do not depend on it.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-$(nproc)}
EXPERTS=${EXPERTS:-"arithmetic:150:16 negation:120:8 sentiment:100:8 word_sorting:100:8 e2e:80:8 sql:60:8"}
MOLE_STEPS=${MOLE_STEPS:-120}
MOLE_BATCH=${MOLE_BATCH:-8}
MOLE_SEEDS=${MOLE_SEEDS-"2 3"}
MOLE_VARIANTS=${MOLE_VARIANTS:-"mole mole-nobal mole-layer mole-network mole-matrix"}
OUT=${OUT:-bench/results/mole}
LIMIT=${LIMIT:-60}
WORK=${MOLE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/dlora/mole-eval}
TASKS=${MOLE_TASKS:-${XDG_CACHE_HOME:-$HOME/.cache}/dlora/mole-tasks}
ROOT=$WORK/root
mkdir -p "$ROOT" bench/results

scripts/setup.sh
MODEL=$(scripts/fetch-model.sh)
[ -f "$TASKS/manifest.json" ] || python3 tools/build_mole_tasks.py "$TASKS"
swift build -c release --product dlora >&2
cp .build/release/dlora "$WORK/dlora"   # a copy: rebuilding meanwhile does not change the binary under a run
DLORA="$WORK/dlora"
log() { echo "mole: $*" >&2; }

names=()
for spec in $EXPERTS; do
    IFS=: read -r task steps batch <<< "$spec"
    names+=("$task")
    [ -f "$ROOT/$task/adapter_model.safetensors" ] && continue
    log "training expert $task ($steps steps × batch $batch)"
    "$DLORA" train lora --model "$MODEL" --data "$TASKS/$task/train.jsonl" --rank 8 --alpha 16 --targets q_proj,v_proj \
        --steps "$steps" --lr 2e-3 --batch "$batch" --max-length 160 --seed 1 --out "$ROOT/$task" --log-every 10 \
        --threads "$THREADS" 2> "$WORK/train-$task.log"
done
list=$(IFS=,; echo "${names[*]}")

# NLA: every expert at weight 1, normalised (the MoLE paper's linear-arithmetic baseline).
mkdir -p "$ROOT/nla"
python3 - "$ROOT/nla/composition.json" "${names[@]}" <<'PY'
import json, sys
json.dump({"combination": "cat", "normalize": True, "adapters": [{"name": n, "weight": 1} for n in sys.argv[2:]]},
          open(sys.argv[1], "w"), indent=1)
PY

# LoRAHub: 5 few-shot examples of every task (the first of each train split).
if [ ! -f "$ROOT/lorahub/adapter_model.safetensors" ]; then
    for task in "${names[@]}"; do head -n 5 "$TASKS/$task/train.jsonl"; done > "$WORK/fewshot.jsonl"
    log "LoRAHub search"
    "$DLORA" train lorahub --model "$MODEL" --experts "$list" --adapter-root "$ROOT" --data "$WORK/fewshot.jsonl" \
        --max-length 160 --seed 1 --out "$ROOT/lorahub" --threads "$THREADS" 2> "$WORK/lorahub.log"
fi

# LoRAHub per task: 5 examples of the task choose the weights, over every expert (its own included) and over
# the others only (the task unseen, as in LoRAHub's and MoLE's evaluations); scored on that task only.
for task in "${names[@]}"; do
    head -n 5 "$TASKS/$task/train.jsonl" > "$WORK/fewshot-$task.jsonl"
    others=$(printf '%s\n' "${names[@]}" | grep -vx "$task" | paste -sd, -)
    for variant in "lorahub-$task:$list" "lorahub-loo-$task:$others"; do
        IFS=: read -r name experts <<< "$variant"
        [ -f "$ROOT/$name/adapter_model.safetensors" ] && continue
        log "LoRAHub search $name"
        "$DLORA" train lorahub --model "$MODEL" --experts "$experts" --adapter-root "$ROOT" --data "$WORK/fewshot-$task.jsonl" \
            --max-length 160 --seed 1 --out "$ROOT/$name" --threads "$THREADS" 2> "$WORK/$name.log"
    done
done

# MoLE gates on the mixed training set: block gates with the balance loss (α = 0.1) and without; layer,
# network and matrix gates with it; the block gates again with the sampling seeds in $MOLE_SEEDS (the spread of
# a rerun).
variants="mole:0.1:block:1"
chosen="mole"
for variant in mole-nobal:0:block:1 mole-layer:0.1:layer:1 mole-network:0.1:network:1 mole-matrix:0.1:matrix:1; do
    [[ " $MOLE_VARIANTS " == *" ${variant%%:*} "* ]] && variants="$variants $variant" && chosen="$chosen,${variant%%:*}"
done
reruns=""
for seed in $MOLE_SEEDS; do variants="$variants mole-s$seed:0.1:block:$seed"; reruns="$reruns,mole-s$seed"; done
for variant in $variants; do
    IFS=: read -r name alpha granularity seed <<< "$variant"
    [ -f "$ROOT/$name/gates.safetensors" ] && continue
    log "training MoLE gates $name ($granularity, α = $alpha)"
    "$DLORA" train mole --model "$MODEL" --experts "$list" --adapter-root "$ROOT" --data "$TASKS/mixed_train.jsonl" \
        --granularity "$granularity" --balance "$alpha" --steps "$MOLE_STEPS" --batch "$MOLE_BATCH" --lr 1e-2 --max-length 160 \
        --seed "$seed" --out "$ROOT/$name" --log-every 10 --threads "$THREADS" 2> "$WORK/train-$name.log"
done

log "evaluating"
wanted="base,$list,nla,lorahub,$chosen$reruns"
if [ -n "${REUSE_EVAL:-}" ] && [ -f "$OUT.json" ]; then
    # Score only the configurations $OUT.json lacks (greedy decoding makes the others' scores the same on a rerun)
    # and merge them in; the per-task LoRAHub scores and the gate-cost tables in $WORK are kept when present.
    missing=$(python3 -c 'import json, sys; have = {x["adapter"] for x in json.load(open(sys.argv[1]))["results"]}
print(",".join(a for a in sys.argv[2].split(",") if a not in have))' "$OUT.json" "$wanted")
    if [ -n "$missing" ]; then
        "$DLORA" eval --model "$MODEL" --tasks "$TASKS" --only "$list" --adapter-root "$ROOT" --limit "$LIMIT" --threads "$THREADS" \
            --adapters "$missing" --out "$WORK/eval-new.json" 2> "$WORK/eval.log"
        python3 - "$OUT.json" "$WORK/eval-new.json" "$wanted" <<'PY'
import json, sys
old, new = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
assert old["tasks"] == new["tasks"] and old["limit"] == new["limit"], "the kept scores were made with other tasks or limit"
by = {x["adapter"]: x for x in old["results"] + new["results"]}
old["results"] = [by[a] for a in sys.argv[3].split(",") if a in by]
text = json.dumps(old, indent=2, sort_keys=True, separators=(",", " : "), ensure_ascii=False).replace("/", "\\/")  # as dlora eval writes it
open(sys.argv[1], "w").write(text)
PY
    fi
else
    "$DLORA" eval --model "$MODEL" --tasks "$TASKS" --only "$list" --adapter-root "$ROOT" --limit "$LIMIT" --threads "$THREADS" \
        --adapters "$wanted" --out "$OUT.json" 2> "$WORK/eval.log"
fi
cat "$WORK/eval.log" >&2
for task in "${names[@]}"; do
    [ -n "${REUSE_EVAL:-}" ] && [ -f "$WORK/eval-lorahub-$task.json" ] && continue
    "$DLORA" eval --model "$MODEL" --tasks "$TASKS" --only "$task" --adapter-root "$ROOT" --limit "$LIMIT" --threads "$THREADS" \
        --adapters "lorahub-$task,lorahub-loo-$task" --out "$WORK/eval-lorahub-$task.json" 2>> "$WORK/eval.log"
done
if [ -z "${REUSE_EVAL:-}" ] || [ ! -f "$WORK/bench-mole.md" ] || [ ! -f "$WORK/bench-mole-matrix.md" ]; then
    log "gate cost inside a decode batch"
    "$DLORA" bench mole --model "$MODEL" --threads "$THREADS" --experts "${#names[@]}" --rank 8 --rounds 5 > "$WORK/bench-mole.md"
    "$DLORA" bench mole --model "$MODEL" --threads "$THREADS" --experts "${#names[@]}" --rank 8 --rounds 5 --granularity matrix \
        > "$WORK/bench-mole-matrix.md"
fi

python3 - "$OUT" "$WORK" "$EXPERTS" "$MOLE_STEPS" "$MOLE_BATCH" "$MOLE_VARIANTS" "$MOLE_SEEDS" <<'PY'
import datetime, json, os, platform, re, sys
prefix = sys.argv[1]; r = json.load(open(prefix + ".json")); work = sys.argv[2]
tasks = r["tasks"]; res = {x["adapter"]: x for x in r["results"]}
def f(v): return f"{v:.3f}"
def losses(name):
    p = os.path.join(work, f"train-{name}.log")
    if not os.path.exists(p): return ""
    vals = [float(m.group(1)) for m in re.finditer(r"loss ([0-9.]+)", open(p).read())]
    return f"{vals[0]:.3f} → {vals[-1]:.3f}" if vals else ""
reruns = sorted((k for k in res if re.fullmatch(r"mole-s\d+", k)), key=lambda k: int(k[6:]))
order = ["base"] + tasks + ["nla", "lorahub", "mole"] + reruns + ["mole-nobal", "mole-layer", "mole-network", "mole-matrix"]
label = {"base": "base (no adapter)", "nla": "NLA (normalized linear, cat)", "lorahub": "LoRAHub (CMA-ES, 5-shot per task)",
         "mole": "MoLE b (block gates, α = 0.1)", "mole-nobal": "MoLE b (no balance loss)",
         "mole-layer": "MoLE l (sub-layer gates, α = 0.1)", "mole-network": "MoLE n (one network gate, α = 0.1)",
         "mole-matrix": "MoLE m (a gate per adapted matrix, α = 0.1)"}
out = []
out.append("# MoLE against its baselines on the BIG-bench task suite\n")
knobs = f"MOLE_VARIANTS=\"{sys.argv[6]}\" MOLE_SEEDS=\"{sys.argv[7]}\" " + ("REUSE_EVAL=1 " if os.environ.get("REUSE_EVAL") else "") + f"OUT={prefix} "
out.append(f"Generated by `{knobs}bash bench/mole.sh` on {datetime.date.today()} — {platform.processor() or platform.machine()}, "
           f"{r['threads']} threads. Model: SmolLM2-135M-Instruct (Q4_1 GGUF; training on its f32 dequantization). "
           f"Held-out prompts per task: first {r['limit']} of test_eval.jsonl (docs/design/mole-tasks.md); greedy, cut at a newline.\n")
out.append(f"Experts: rank 8, α 16, q/v, lr 2e-3 (task:steps:batch = `{sys.argv[3]}`). MoLE gates: {sys.argv[4]} steps × batch "
           f"{sys.argv[5]} on mixed_train.jsonl, lr 1e-2, τ₀ = 1 (learned). Scores: exact match (arithmetic, negation, sql, "
           "word_sorting), accuracy (sentiment), ROUGE-L F1 (e2e).\n")
out.append("| configuration | " + " | ".join(tasks) + " | mean | run s |")
out.append("|---|" + "---:|" * (len(tasks) + 2))
for k in order:
    if k not in res: continue
    x = res[k]
    name = label.get(k, f"MoLE b (α = 0.1), sampling seed {k[6:]}" if k in reruns else f"expert `{k}` alone")
    out.append(f"| {name} | " + " | ".join(f(x["tasks"][t]) for t in tasks) + f" | **{f(x['mean'])}** | {x['seconds']:.0f} |")
seeds = [res[k] for k in ["mole"] + reruns]
if len(seeds) > 1:
    lo = {t: min(x["tasks"][t] for x in seeds) for t in tasks}; hi = {t: max(x["tasks"][t] for x in seeds) for t in tasks}
    means = [x["mean"] for x in seeds]
    out.append(f"| MoLE b over {len(seeds)} seeds: mean [min–max] | " + " | ".join(
        f"{sum(x['tasks'][t] for x in seeds) / len(seeds):.3f} [{lo[t]:.2f}–{hi[t]:.2f}]" for t in tasks)
        + f" | **{sum(means) / len(means):.3f}** [{min(means):.3f}–{max(means):.3f}] | |")
# LoRAHub per task: each task's score from the composition its own few-shot examples chose.
per_task = {}
for t in tasks:
    p = os.path.join(work, f"eval-lorahub-{t}.json")
    if os.path.exists(p):
        for x in json.load(open(p))["results"]:
            per_task.setdefault(x["adapter"].replace(f"-{t}", ""), {})[t] = (x["tasks"][t], x["seconds"])
for k, name in [("lorahub", "LoRAHub per task (5-shot of that task, every expert)"),
                ("lorahub-loo", "LoRAHub per task (5-shot, the task's own expert left out)")]:
    row = per_task.get(k, {})
    if len(row) == len(tasks):
        mean = sum(row[t][0] for t in tasks) / len(tasks)
        out.append(f"| {name} | " + " | ".join(f(row[t][0]) for t in tasks) + f" | **{f(mean)}** | {sum(row[t][1] for t in tasks):.0f} |")
out.append("")
diag = [res[t]["tasks"][t] for t in tasks if t in res]
out.append(f"Each expert on its own task (the diagonal): mean {f(sum(diag) / len(diag))}; base {f(res['base']['mean'])}.\n")
out.append("Training losses (first → last logged step): " + "; ".join(f"{n} {losses(n)}" for n in tasks + ["mole"] + reruns + ["mole-nobal", "mole-layer", "mole-network", "mole-matrix"] if losses(n)) + ".\n")
bench = os.path.join(work, "bench-mole.md")
if os.path.exists(bench):
    out.append("## Gate cost inside a decode batch (`dlora bench mole`)\n")
    out.append("The same experts stacked as a static `cat` (NLA's execution, no gates) and as a MoLE composition (the same "
               "stack plus per-token block gates): the difference is the gates. Random weights of the same shapes as the "
               "trained experts; percentages against base-only steps of the same run.\n")
    out.append(open(bench).read().strip() + "\n")
    matrix = os.path.join(work, "bench-mole-matrix.md")
    if os.path.exists(matrix):
        out.append("With matrix gates (m-MoLE: one gate per adapted projection, from that projection's input — here q and v, "
                   "so two gate products per block instead of one):\n")
        out.append("\n".join(l for l in open(matrix).read().strip().splitlines() if l.startswith("|")) + "\n")
if "mole" in res and res["mole"].get("gates"):
    out.append(f"**Mean gate per expert, by task** (MoLE α = 0.1; averaged over blocks and tokens; `{prefix}-gates.svg`):\n")
    ex = res["mole"]["experts"]
    out.append("| task | " + " | ".join(ex) + " |")
    out.append("|---|" + "---:|" * len(ex))
    for t in tasks:
        g = res["mole"]["gates"].get(t, [])
        out.append(f"| {t} | " + " | ".join(f(v) for v in g) + " |")
    out.append("")
    # SVG: one row of bars per task.
    W, H, rowH, left = 640, 40 + 30 * len(tasks), 30, 110
    colors = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7"]
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H + 30}" font-family="sans-serif" font-size="12">',
           f'<text x="{left}" y="16">MoLE mean gate per expert, by task (each row sums to 1)</text>']
    for i, t in enumerate(tasks):
        y = 28 + i * rowH
        svg.append(f'<text x="{left - 6}" y="{y + 16}" text-anchor="end">{t}</text>')
        x = left
        for j, v in enumerate(res["mole"]["gates"].get(t, [])):
            w = v * (W - left - 20)
            svg.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{rowH - 6}" fill="{colors[j % len(colors)]}"><title>{ex[j]} {v:.3f}</title></rect>')
            x += w
    for j, e in enumerate(ex):
        svg.append(f'<rect x="{left + j * 85}" y="{H}" width="10" height="10" fill="{colors[j % len(colors)]}"/>'
                   f'<text x="{left + j * 85 + 14}" y="{H + 10}">{e}</text>')
    svg.append("</svg>")
    open(prefix + "-gates.svg", "w").write("\n".join(svg) + "\n")
open(prefix + ".md", "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY
