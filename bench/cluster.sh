#!/usr/bin/env bash
# dLoRA's cluster-level experiment on one machine: `dlora cluster` (REPLICAS replicas of SmolLM2-135M Q4_1 behind
# the router, THREADS threads split between them, ADAPTER_SLOTS adapter slots each) serving 32 random PEFT
# adapters (q/v, rank 16, tools/make_bench_adapters.py) under an open-loop, trace-driven load, once per
# configuration of the global scheduler:
#   round-robin | least-loaded | lora-affinity | dlora (proactive dispatch, migration off)
#   | dlora + migration recompute | dlora + migration kv
#   (and, named in CONFIGS: dlora-slots, dlora-slots+kv: dLoRA dispatch with --dispatch-slot-bound --placement-hysteresis 0.2)
#
# What it measures, and how:
# - Load: tools/cluster_load.py (raw HTTP/1.1 + SSE on asyncio, one connection per request). Arrivals: the Azure
#   LLM inference trace 2023 (conversation trace, ../shared/data/azure-llm-2023, CC-BY-4.0, read in place),
#   inter-arrival gaps scaled to each rate in RATES; a bursty variant at BURST_RATE divides the gaps of the
#   middle fifth of the run by BURST (same requests, same makespan, bunched). Prompt/response lengths: ShareGPT
#   (tools/extract_sharegpt.py; tokens ≈ chars/4, prompts cut to MAX_PROMPT, outputs to MAX_OUTPUT, exact
#   through ignore_eos). Adapters adapter-0..31 with popularity P(k) ∝ (k+1)^-ALPHA. Temperature 0. The same
#   seed gives every configuration the same request stream.
# - Per run: throughput (generated tokens / makespan), throughput under the SLO (tokens of requests whose
#   latency per generated token ≤ SLO, / makespan), SLO attainment, avg latency per token (Σ latency / Σ
#   tokens, dLoRA's metric; latency = scheduled arrival → last token) and its P90, TTFT P50/P99, queueing
#   delay (TTFT P50 minus the unloaded TTFT measured on that cluster right after it starts, with 4 requests
#   2 s apart, which also warms it), errors and lost requests, the largest inter-token gap seen.
# - From the router's /metrics, scraped before and after each run (the difference): migrations
#   (dlora_router_migrations_total), their stall (dlora_router_migration_stall_seconds: mean = Δsum/Δcount,
#   max ≈ the smallest histogram bucket holding them all), redispatches, and the dispatch split per replica.
#   A series the router does not export counts as 0.
# - Each configuration gets a fresh cluster (started with --port 0, ready when it prints
#   `dlora: router on http://127.0.0.1:PORT`, stopped with SIGTERM), runs every rate in turn, then the bursty
#   variant. REPEATS rounds rotate the configuration order (round i starts with the i-th); tables give means.
# - "KV migration stall vs sequence length" (also alone: `bash bench/cluster.sh stall`): a fresh 2-replica
#   cluster, one long request (token-id prompts of STALL_LENGTHS tokens, STALL_OUTPUT generated) per length,
#   first without migration (control), then asking the router mid-stream (after STALL_AFTER tokens) to move it
#   to the other replica, POST /admin/migrate {"request": id, "to": replica, "mode": kv|recompute} with the
#   admin key; stall = the request's largest inter-token gap − its median gap. "n/a" where the endpoint is 404.
# Everything is bounded: the cluster's start (STARTUP_TIMEOUT), each load run (RUN_TIMEOUT), the stop (30 s,
# then SIGKILL to the cluster's process group); an EXIT trap stops every process the script started.
# Writes bench/results/cluster.md, cluster-goodput.svg and cluster-latency.svg (RESULTS=dir to write elsewhere);
# `stall` mode writes bench/results/cluster-stall.md.
# Knobs (environment): REPLICAS THREADS SLOTS ADAPTERS ALPHA RATES BURST BURST_RATE REQUESTS MAX_PROMPT MAX_OUTPUT SLO
# SEED REPEATS CONFIGS STARTUP_TIMEOUT RUN_TIMEOUT STALL_LENGTHS STALL_OUTPUT STALL_AFTER STALL_MIGRATION ADMIN TRACE
# WORKLOAD RESULTS (defaults below). A run with the defaults takes about 20 minutes.
# CLUSTER_FLAGS adds flags to every `dlora cluster` (e.g. "--kv-cache-mb 720"). Its default scales dLoRA's
# migration triggers to this cluster's size: checked every 2 s (the paper's 10 s would not fire once in a run of
# a few seconds) and fired by 4 requests above the average (the paper's 16 is for 32 GPUs and large batches); the
# KV trigger stays at 90 %.
# DLORA="python3 tools/fake_openai_server.py" SKIP_BUILD=1 WORKLOAD=file.jsonl checks the script itself against
# the fake server (its numbers mean nothing: write them elsewhere with RESULTS).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${1:-all}  # all | stall
REPLICAS=${REPLICAS:-2}
THREADS=${THREADS:-2}
SLOTS=${SLOTS:-4}
ADAPTERS=${ADAPTERS:-32}
ALPHA=${ALPHA:-1}
RATES=${RATES:-"1 2 4 8"}
BURST=${BURST:-4}
BURST_RATE=${BURST_RATE:-2}
REQUESTS=${REQUESTS:-48}
MAX_PROMPT=${MAX_PROMPT:-128}
MAX_OUTPUT=${MAX_OUTPUT:-32}
SLO=${SLO:-0.25}  # s per generated token: a choice, ≈ 5–10× an unloaded 1-thread replica's figure on SmolLM2
SEED=${SEED:-1}
REPEATS=${REPEATS:-1}
CONFIGS=${CONFIGS:-"round-robin least-loaded lora-affinity dlora dlora+recompute dlora+kv"}
STARTUP_TIMEOUT=${STARTUP_TIMEOUT:-180}
RUN_TIMEOUT=${RUN_TIMEOUT:-300}
STALL_LENGTHS=${STALL_LENGTHS:-"64,256,1024"}
STALL_OUTPUT=${STALL_OUTPUT:-256}  # long enough that a 1,024-token request still runs when the staged copy ends (at 96 it finished first with bf16 products)
STALL_AFTER=${STALL_AFTER:-32}
STALL_MIGRATION=${STALL_MIGRATION:-kv}  # the probe cluster's own --migration (the probe asks for each mode itself)
TRACE=${TRACE:-../shared/data/azure-llm-2023/AzureLLMInferenceTrace_conv.csv}
RESULTS=${RESULTS:-bench/results}
CLUSTER_FLAGS=${CLUSTER_FLAGS:-"--migration-interval 2 --migration-request-excess 4"}
read -ra DLORA <<< "${DLORA:-.build/release/dlora}"
case "$MODE" in all|stall) ;; *) echo "usage: bench/cluster.sh [all|stall]" >&2; exit 2 ;; esac
mkdir -p "$RESULTS"
OUT="$RESULTS/cluster.md"
[ "$MODE" = stall ] && OUT="$RESULTS/cluster-stall.md"  # the stall probe alone leaves cluster.md alone

pids=()
tmp=$(mktemp -d)
stop_pid() {  # SIGTERM, up to 30 s, then SIGKILL to its process group (setsid made it the leader)
    local pid=$1
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 300); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "bench/cluster.sh: $pid ignored SIGTERM for 30 s, killing its group" >&2
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}
cleanup() {
    for pid in "${pids[@]}"; do stop_pid "$pid"; done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ -z "${SKIP_BUILD:-}" ]; then
    scripts/setup.sh
    swift build -c release --product dlora >&2
fi
MODEL=$(scripts/fetch-model.sh)
BASE_NAME=$(basename "$MODEL" .gguf)
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/dlora"
WORKLOAD=${WORKLOAD:-$CACHE/sharegpt-2000.jsonl}
[ -s "$WORKLOAD" ] || python3 tools/extract_sharegpt.py "$WORKLOAD" 2000
[ -f "$TRACE" ] || { echo "bench/cluster.sh: trace $TRACE not found" >&2; exit 1; }
python3 tools/make_bench_adapters.py "$tmp/adapters" "$ADAPTERS" 16

config_flags() {  # configuration name → dlora cluster flags
    case "$1" in
        round-robin) echo "--dispatch round-robin --migration off" ;;
        least-loaded) echo "--dispatch least-loaded --migration off" ;;
        lora-affinity) echo "--dispatch lora-affinity --migration off" ;;
        dlora) echo "--dispatch dlora --migration off" ;;
        dlora+recompute) echo "--dispatch dlora --migration recompute" ;;
        dlora+kv) echo "--dispatch dlora --migration kv" ;;
        # dLoRA dispatch with the adapter-slot bound and placement hysteresis (docs/design/cluster-policy.md).
        dlora-slots) echo "--dispatch dlora --migration off --dispatch-slot-bound --placement-hysteresis 0.2" ;;
        dlora-slots+kv) echo "--dispatch dlora --migration kv --dispatch-slot-bound --placement-hysteresis 0.2" ;;
        *) echo "bench/cluster.sh: unknown configuration $1" >&2; return 1 ;;
    esac
}

url=""
cluster_pid=""
start_cluster() {  # log file, then extra flags; sets url and cluster_pid
    local log=$1
    shift
    # shellcheck disable=SC2086
    setsid "${DLORA[@]}" cluster --model "$MODEL" --adapters "$tmp/adapters" --port 0 "$@" ${CLUSTER_FLAGS:-} 2> "$log" &
    cluster_pid=$!
    pids+=("$cluster_pid")
    local port=""
    for _ in $(seq 1 $((STARTUP_TIMEOUT * 10))); do
        port=$(sed -n 's/.*dlora: router on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | head -1)
        [ -n "$port" ] && break
        kill -0 "$cluster_pid" 2>/dev/null || break
        sleep 0.1
    done
    if [ -z "$port" ]; then
        echo "bench/cluster.sh: the cluster did not start ($*)" >&2
        tail -20 "$log" >&2
        return 1
    fi
    url="http://127.0.0.1:$port"
}
stop_cluster() {
    stop_pid "$cluster_pid"
    local rest=()
    for pid in "${pids[@]}"; do [ "$pid" != "$cluster_pid" ] && rest+=("$pid"); done
    pids=("${rest[@]+"${rest[@]}"}")
    cluster_pid=""
}
scrape() { curl -s --max-time 5 "$url/metrics" > "$1" || : > "$1"; }
load() {  # output JSON, then cluster_load.py arguments
    local out=$1
    shift
    python3 tools/cluster_load.py --url "$url" --trace "$TRACE" --workload "$WORKLOAD" --adapters "$ADAPTERS" \
        --alpha "$ALPHA" --seed "$SEED" --max-prompt "$MAX_PROMPT" --max-output "$MAX_OUTPUT" --slo "$SLO" \
        --timeout "$RUN_TIMEOUT" --out "$out" "$@" 2> "$out.log" || { echo "bench/cluster.sh: load run failed" >&2; tail -5 "$out.log" >&2; }
}

data="$tmp/data"
mkdir -p "$data"
if [ "$MODE" = all ]; then
    read -ra configs <<< "$CONFIGS"
    for round in $(seq 0 $((REPEATS - 1))); do
        for i in "${!configs[@]}"; do
            c=${configs[$(((i + round) % ${#configs[@]}))]}
            d="$data/$c/r$round"
            mkdir -p "$d"
            echo "bench: cluster, $c (round $((round + 1))/$REPEATS)" >&2
            # shellcheck disable=SC2046
            if ! start_cluster "$d/cluster.log" --replicas "$REPLICAS" --threads "$THREADS" --adapter-slots "$SLOTS" $(config_flags "$c"); then
                stop_cluster
                continue
            fi
            load "$d/unloaded.json" --requests 4 --rate 0.5
            unloaded=$(python3 -c 'import json,sys; v=json.load(open(sys.argv[1])).get("ttft_p50_s"); print(v if v is not None else "")' "$d/unloaded.json" 2>/dev/null || true)
            for run in $RATES burst; do
                if [ "$run" = burst ]; then args=(--rate "$BURST_RATE" --burst "$BURST"); else args=(--rate "$run"); fi
                [ -n "$unloaded" ] && args+=(--unloaded-ttft "$unloaded")
                echo "bench: cluster, $c, ${args[*]}" >&2
                scrape "$d/$run.before.prom"
                load "$d/$run.json" --requests "$REQUESTS" "${args[@]}"
                scrape "$d/$run.after.prom"
            done
            stop_cluster
        done
    done
fi

# KV migration stall vs sequence length.
stall="$data/stall"
mkdir -p "$stall"
echo "bench: cluster, migration stall probe" >&2
if DLORA_ADMIN_KEY=${ADMIN:-bench-admin} start_cluster "$stall/cluster.log" --replicas 2 --threads "$THREADS" \
        --adapter-slots "$SLOTS" --dispatch round-robin --migration "$STALL_MIGRATION"; then
    python3 tools/cluster_load.py --url "$url" --stall-probe "$STALL_LENGTHS" --admin-key "${ADMIN:-bench-admin}" \
        --adapters 0 --base-model "$BASE_NAME" --max-output "$STALL_OUTPUT" --migrate-after "$STALL_AFTER" \
        --replicas 2 --timeout "$RUN_TIMEOUT" --out "$stall/probe.json" 2> "$stall/probe.log" || tail -5 "$stall/probe.log" >&2
    stop_cluster
fi

python3 - "$data" "$OUT" "$RESULTS" "$MODE" "$(date -u +%Y-%m-%d)" "$(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores" \
    "REPLICAS=$REPLICAS THREADS=$THREADS SLOTS=$SLOTS ADAPTERS=$ADAPTERS ALPHA=$ALPHA REQUESTS=$REQUESTS MAX_PROMPT=$MAX_PROMPT MAX_OUTPUT=$MAX_OUTPUT SLO=$SLO BURST=$BURST BURST_RATE=$BURST_RATE REPEATS=$REPEATS SEED=$SEED" \
    "$CONFIGS" "$RATES" "$BURST" <<'PY'
import glob, json, math, os, re, sys
data, out, results, mode, day, cpu, settings, configs, rates, burst = sys.argv[1:11]
configs, rates = configs.split(), rates.split()
runs = rates + ["burst"]

def series(text, name):
    """{labels: value} of one metric name (labels as the raw {...} string, '' when none)."""
    out = {}
    for m in re.finditer(r"^" + re.escape(name) + r"(\{[^}]*\})?\s+([0-9.eE+-]+|\+Inf|NaN)\s*$", text, re.M):
        try:
            out[m.group(1) or ""] = float(m.group(2))
        except ValueError:
            pass
    return out

def delta(before, after, name):
    a, b = series(after, name), series(before, name)
    return {k: v - b.get(k, 0.0) for k, v in a.items()}

def router(d, run):
    try:
        before, after = open(f"{d}/{run}.before.prom").read(), open(f"{d}/{run}.after.prom").read()
    except OSError:
        return None
    mig = sum(delta(before, after, "dlora_router_migrations_total").values())
    s = sum(delta(before, after, "dlora_router_migration_stall_seconds_sum").values())
    n = sum(delta(before, after, "dlora_router_migration_stall_seconds_count").values())
    mx = None
    if n > 0:
        buckets = []
        for labels, v in delta(before, after, "dlora_router_migration_stall_seconds_bucket").items():
            m = re.search(r'le="([^"]+)"', labels)
            if m:
                buckets.append((float(m.group(1)) if m.group(1) != "+Inf" else math.inf, v))
        full = [le for le, v in sorted(buckets) if v >= n]
        mx = full[0] if full else None
    disp = delta(before, after, "dlora_router_dispatch_total")
    split = {re.search(r'replica="([^"]*)"', k).group(1): v for k, v in disp.items() if re.search(r'replica="([^"]*)"', k)}
    return {"migrations": mig, "stall_mean": s / n if n else None, "stall_max_le": mx,
            "redispatches": sum(delta(before, after, "dlora_router_redispatches_total").values()), "split": split}

def mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None

table = {}  # (config, run) -> aggregated cells
for c in configs:
    for run in runs:
        rounds = []
        for d in sorted(glob.glob(f"{data}/{c}/r*")):
            try:
                r = json.load(open(f"{d}/{run}.json"))
            except (OSError, ValueError):
                continue
            rounds.append((r, router(d, run)))
        if not rounds:
            continue
        rs, ms = [r for r, _ in rounds], [m for _, m in rounds if m]
        agg = {k: mean([r.get(k) for r in rs]) for k in ("throughput_tok_s", "goodput_tok_s", "slo_attainment", "avg_latency_per_token_s",
                                                         "p90_latency_per_token_s", "ttft_p50_s", "ttft_p99_s", "queueing_delay_s",
                                                         "max_gap_max_s", "rate")}
        agg["rounds"] = len(rs)
        agg["errors"] = sum(r["errors"] for r in rs)
        agg["lost"] = sum(r["lost"] + r.get("unsent", 0) for r in rs)
        agg["requests"] = sum(r["requests"] for r in rs)
        agg["goodput_range"] = (min(r["goodput_tok_s"] for r in rs), max(r["goodput_tok_s"] for r in rs))
        agg["migrations"] = mean([m["migrations"] for m in ms])
        agg["stall_mean"] = mean([m["stall_mean"] for m in ms])
        maxes = [m["stall_max_le"] for m in ms if m["stall_max_le"] is not None]
        agg["stall_max_le"] = max(maxes) if maxes else None
        agg["redispatches"] = mean([m["redispatches"] for m in ms])
        splits = [m["split"] for m in ms if m["split"]]
        if splits:
            keys = sorted({k for s in splits for k in s}, key=lambda k: (len(k), k))
            agg["split"] = "/".join(f"{mean([s.get(k, 0) for s in splits]):.0f}" for k in keys)
        table[(c, run)] = agg

f3 = lambda v: "—" if v is None else f"{v:.3f}"
f1 = lambda v: "—" if v is None else f"{v:.1f}"
ms_ = lambda v: "—" if v is None else f"{v * 1000:.0f}"
lines = []
if mode == "all":
    lines += [
        "# Cluster: dispatching and migration across replicas",
        "",
        f"Generated by `bash bench/cluster.sh` on {day} — {cpu}. `dlora cluster` (release) on SmolLM2-135M-Instruct Q4_1,",
        "all replicas and the load client on this one machine. Settings: " + settings + ".",
        "Arrivals: Azure LLM inference trace 2023 (conversation; gaps scaled to the rate); lengths: ShareGPT (tokens ≈ chars/4,",
        "exact output lengths through ignore_eos); adapters adapter-0..N-1 (q/v, rank 16) with P(k) ∝ (k+1)^-α; temperature 0;",
        "open loop (tools/cluster_load.py). Latency = scheduled arrival → last token; avg latency per token = Σ latency / Σ tokens;",
        "throughput under SLO = tokens of the requests whose latency per token ≤ SLO, per second of makespan. Queueing delay =",
        "TTFT P50 − the cluster's unloaded TTFT (4 requests 2 s apart at its start). Migrations and stall: the router's /metrics,",
        "the difference across the run (stall max: the smallest histogram bucket that holds every stall); max gap: the largest",
        "inter-token gap any request saw. Bursty: BURST_RATE req/s on average, the middle fifth of the run's gaps divided by BURST.",
        "",
        "| config | rate req/s | throughput under SLO tok/s | SLO attainment | throughput tok/s | avg latency/token s | P90 latency/token s | TTFT P50 / P99 s | queueing delay s | errors / lost | migrations | stall mean / max ms | max gap ms | dispatch split |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        for c in configs:
            a = table.get((c, run))
            if not a:
                lines.append(f"| {c} | {run} | no data (the cluster did not start or the run failed) | | | | | | | | | | | |")
                continue
            label = f"{a['rate']:g} bursty ×{burst}" if run == "burst" else run
            stall = "—" if not a["migrations"] else f"{ms_(a['stall_mean'])} / {'≤ ' + ms_(a['stall_max_le']) if a['stall_max_le'] not in (None, math.inf) else '> last bucket' if a['stall_max_le'] == math.inf else '—'}"
            lines.append(f"| {c} | {label} | {f1(a['goodput_tok_s'])} | {a['slo_attainment'] * 100:.0f} % | {f1(a['throughput_tok_s'])} | "
                         f"{f3(a['avg_latency_per_token_s'])} | {f3(a['p90_latency_per_token_s'])} | {f3(a['ttft_p50_s'])} / {f3(a['ttft_p99_s'])} | "
                         f"{f3(a['queueing_delay_s'])} | {a['errors']} / {a['lost']} | {f1(a['migrations'])} | {stall} | {ms_(a['max_gap_max_s'])} | {a.get('split', '—')} |")
    unloaded = []
    for c in configs:
        vals = []
        for d in sorted(glob.glob(f"{data}/{c}/r*")):
            try:
                vals.append(json.load(open(f"{d}/unloaded.json")).get("ttft_p50_s"))
            except (OSError, ValueError):
                pass
        unloaded.append(f"{c} {f3(mean(vals))}")
    lines += ["", "Unloaded TTFT P50 (s), the base of the queueing delay: " + ", ".join(unloaded) + "."]
    lines += ["", "![throughput under SLO vs rate](cluster-goodput.svg)", "", "![avg latency per token vs rate](cluster-latency.svg)", ""]

    # Plots: one line per configuration over the steady rates.
    colors = ["#7f7f7f", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#d62728", "#8c564b", "#e377c2"]
    def plot(path, title, key):
        W, H, pad = 560, 300, 55
        pts = {c: [(float(r), table[(c, r)][key]) for r in rates if (c, r) in table and table[(c, r)][key] is not None] for c in configs}
        xs = sorted({x for p in pts.values() for x, _ in p}) or [1.0]
        top = max([y for p in pts.values() for _, y in p] or [1.0]) * 1.1 or 1.0
        px = lambda x: pad + 15 + (W - pad - 40) * (xs.index(x) / max(1, len(xs) - 1))  # rates evenly spaced
        py = lambda y: H - (H - 35) * y / top
        s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H + 30 + 18 * ((len(configs) + 2) // 3)}" font-family="sans-serif" font-size="11">',
             f'<text x="{W / 2}" y="15" text-anchor="middle">{title}</text>',
             f'<line x1="{pad}" y1="{H}" x2="{W - 10}" y2="{H}" stroke="black"/><line x1="{pad}" y1="30" x2="{pad}" y2="{H}" stroke="black"/>']
        for k in range(5):
            v = top * k / 4
            s.append(f'<text x="{pad - 4}" y="{py(v) + 4:.1f}" text-anchor="end">{v:.3g}</text>')
            s.append(f'<line x1="{pad}" y1="{py(v):.1f}" x2="{W - 10}" y2="{py(v):.1f}" stroke="#ddd"/>')
        for x in xs:
            s.append(f'<text x="{px(x):.1f}" y="{H + 14}" text-anchor="middle">{x:g}</text>')
        s.append(f'<text x="{W - 10}" y="{H + 26}" text-anchor="end">rate (req/s)</text>')
        for i, c in enumerate(configs):
            col = colors[i % len(colors)]
            if pts[c]:
                s.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>' % (col, " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts[c])))
                s += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.5" fill="{col}"/>' for x, y in pts[c]]
            lx, ly = 10 + (i % 3) * 180, H + 40 + 18 * (i // 3)
            s.append(f'<rect x="{lx}" y="{ly - 10}" width="12" height="12" fill="{col}"/><text x="{lx + 16}" y="{ly}">{c}</text>')
        s.append("</svg>")
        open(path, "w").write("\n".join(s) + "\n")
    plot(os.path.join(results, "cluster-goodput.svg"), "throughput under SLO (tok/s) vs rate", "goodput_tok_s")
    plot(os.path.join(results, "cluster-latency.svg"), "avg latency per token (s) vs rate", "avg_latency_per_token_s")

lines += ["## KV migration stall vs sequence length", "",
          "One request at a time on a fresh 2-replica cluster (round-robin dispatch), token-id prompts of each length; after the",
          "request has streamed some tokens the router is asked to move it to the other replica (`POST /admin/migrate`). Stall =",
          "the request's largest inter-token gap − its median gap; the control run (no migration) shows the gap noise. \"router\" is",
          "the router's own measure of the last stage (source stopped → first token on the destination, the /admin/migrate answer's",
          "stall_seconds): the gap measure also holds the pre-copy's cost to the source (its engine thread copies the blocks it sends).", ""]
try:
    probe = json.load(open(f"{data}/stall/probe.json"))["stall_probe"]
except (OSError, ValueError, KeyError):
    probe = None
if not probe:
    lines.append("n/a — the probe did not run (the cluster did not start; see the script's output).")
else:
    by = {}
    for r in probe:
        by.setdefault(r["prompt_tokens"], {})[r["mode"]] = r
    def cell(r, control=False):
        if r is None:
            return "—"
        if not r["ok"]:
            return f"failed ({(r.get('error') or 'lost')[:40]})"
        if control:
            return f"max gap {ms_(r['max_gap_ms'] / 1000 if r['max_gap_ms'] is not None else None)} (median {ms_(r['median_gap_ms'] / 1000 if r['median_gap_ms'] is not None else None)})"
        if r["result"].startswith("n/a"):
            return "n/a"
        if r["stall_ms"] is None:
            return r["result"]
        router = ""
        try:
            router = f"; router {json.loads(r.get('admin_answer') or '{}')['stall_seconds'] * 1000:.0f}"
        except (ValueError, KeyError, TypeError):
            pass
        return f"{r['stall_ms']:.0f} (max gap {r['max_gap_ms']:.0f}, median {r['median_gap_ms']:.0f}{router})"
    lines += ["| prompt tokens | no migration: gaps ms | kv: stall ms | recompute: stall ms |", "|---:|---|---|---|"]
    for n in sorted(by):
        lines.append(f"| {n} | {cell(by[n].get('none'), True)} | {cell(by[n].get('kv'))} | {cell(by[n].get('recompute'))} |")
open(out, "w").write("\n".join(lines) + "\n")
PY
cat "$OUT"
