#!/usr/bin/env bash
# MoLE evaluation (issue #15, deliver 6): on the BIG-bench task suite (tools/build_mole_tasks.py), train one
# rank-8 q/v LoRA expert per task on SmolLM2-135M-Instruct, then compose them four ways —
#   NLA      normalized linear arithmetic (composition.json, cat, weights 1, normalize);
#   LoRAHub  `dlora train lorahub` (CMA-ES over per-expert weights on few-shot examples of every task);
#   MoLE     `dlora train mole` on the mixed training set: block gates with the balance loss and without, and
#            layer, network and matrix gates;
# and score every configuration (base, each expert alone, NLA, LoRAHub, MoLE ×5) with `dlora eval` on the
# held-out splits. Writes bench/results/mole.md, bench/results/mole.json and bench/results/mole-gates.svg.
#
# Work directory: $MOLE_DIR (default ~/.cache/dlora/mole-eval); trained adapters there are reused (delete the
# directory to retrain). Knobs: EXPERTS="task:steps:batch …", MOLE_STEPS, MOLE_BATCH, LIMIT (prompts per
# task), THREADS. Needs a quiet machine for the timings; the scores do not depend on it.
set -euo pipefail
cd "$(dirname "$0")/.."
THREADS=${THREADS:-$(nproc)}
EXPERTS=${EXPERTS:-"arithmetic:150:16 negation:120:8 sentiment:100:8 word_sorting:100:8 e2e:80:8 sql:60:8"}
MOLE_STEPS=${MOLE_STEPS:-120}
MOLE_BATCH=${MOLE_BATCH:-8}
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

# MoLE gates on the mixed training set: block gates with the balance loss (α = 0.1) and without; layer,
# network and matrix gates with it.
for variant in mole:0.1:block mole-nobal:0:block mole-layer:0.1:layer mole-network:0.1:network mole-matrix:0.1:matrix; do
    IFS=: read -r name alpha granularity <<< "$variant"
    [ -f "$ROOT/$name/gates.safetensors" ] && continue
    log "training MoLE gates $name ($granularity, α = $alpha)"
    "$DLORA" train mole --model "$MODEL" --experts "$list" --adapter-root "$ROOT" --data "$TASKS/mixed_train.jsonl" \
        --granularity "$granularity" --balance "$alpha" --steps "$MOLE_STEPS" --batch "$MOLE_BATCH" --lr 1e-2 --max-length 160 \
        --seed 1 --out "$ROOT/$name" --log-every 10 --threads "$THREADS" 2> "$WORK/train-$name.log"
done

log "evaluating"
"$DLORA" eval --model "$MODEL" --tasks "$TASKS" --only "$list" --adapter-root "$ROOT" --limit "$LIMIT" --threads "$THREADS" \
    --adapters "base,$list,nla,lorahub,mole,mole-nobal,mole-layer,mole-network,mole-matrix" --out bench/results/mole.json 2> "$WORK/eval.log"
cat "$WORK/eval.log" >&2
log "gate cost inside a decode batch"
"$DLORA" bench mole --model "$MODEL" --threads "$THREADS" --experts "${#names[@]}" --rank 8 --rounds 5 > "$WORK/bench-mole.md"
"$DLORA" bench mole --model "$MODEL" --threads "$THREADS" --experts "${#names[@]}" --rank 8 --rounds 5 --granularity matrix \
    > "$WORK/bench-mole-matrix.md"

python3 - bench/results/mole.json "$WORK" "$EXPERTS" "$MOLE_STEPS" "$MOLE_BATCH" <<'PY'
import datetime, json, os, platform, re, sys
r = json.load(open(sys.argv[1])); work = sys.argv[2]
tasks = r["tasks"]; res = {x["adapter"]: x for x in r["results"]}
def f(v): return f"{v:.3f}"
def losses(name):
    p = os.path.join(work, f"train-{name}.log")
    if not os.path.exists(p): return ""
    vals = [float(m.group(1)) for m in re.finditer(r"loss ([0-9.]+)", open(p).read())]
    return f"{vals[0]:.3f} → {vals[-1]:.3f}" if vals else ""
order = ["base"] + tasks + ["nla", "lorahub", "mole", "mole-nobal", "mole-layer", "mole-network", "mole-matrix"]
label = {"base": "base (no adapter)", "nla": "NLA (normalized linear, cat)", "lorahub": "LoRAHub (CMA-ES, 5-shot per task)",
         "mole": "MoLE b (block gates, α = 0.1)", "mole-nobal": "MoLE b (no balance loss)",
         "mole-layer": "MoLE l (sub-layer gates, α = 0.1)", "mole-network": "MoLE n (one network gate, α = 0.1)",
         "mole-matrix": "MoLE m (a gate per adapted matrix, α = 0.1)"}
out = []
out.append("# MoLE against its baselines on the BIG-bench task suite\n")
out.append(f"Generated by `bash bench/mole.sh` on {datetime.date.today()} — {platform.processor() or platform.machine()}, "
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
    name = label.get(k, f"expert `{k}` alone")
    out.append(f"| {name} | " + " | ".join(f(x["tasks"][t]) for t in tasks) + f" | **{f(x['mean'])}** | {x['seconds']:.0f} |")
out.append("")
diag = [res[t]["tasks"][t] for t in tasks if t in res]
out.append(f"Each expert on its own task (the diagonal): mean {f(sum(diag) / len(diag))}; base {f(res['base']['mean'])}.\n")
out.append("Training losses (first → last logged step): " + "; ".join(f"{n} {losses(n)}" for n in tasks + ["mole", "mole-nobal", "mole-layer", "mole-network", "mole-matrix"]) + ".\n")
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
    out.append("**Mean gate per expert, by task** (MoLE α = 0.1; averaged over blocks and tokens; `bench/results/mole-gates.svg`):\n")
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
    open("bench/results/mole-gates.svg", "w").write("\n".join(svg) + "\n")
open("bench/results/mole.md", "w").write("\n".join(out) + "\n")
print("\n".join(out))
PY
