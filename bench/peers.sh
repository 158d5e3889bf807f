#!/usr/bin/env bash
# Real peers, one run, same workload: dlora serve, llama.cpp's llama-server and a transformers+PEFT server serve
# ONE trace-driven multi-adapter workload, one after another, through the same client with the same SLO.
#
#   bash bench/peers.sh                                  # full run: ≈ 20 min on 2 quiet cores, writes
#                                                        # bench/results/peers.md and bench/results/peers.svg
#   SYSTEMS="dlora llama peft" RATES=1 REQUESTS=6 ADAPTERS=8 OUT=/tmp/peers.md bash bench/peers.sh   # smoke (≈ 3 min)
# The first run also makes its cached inputs (≈ 3 min: HF config, 32 adapters and their GGUF conversions) and, when
# missing, builds dlora (≈ 20 min) and llama-server (≈ 10 min). The full run's time is mostly arrival spans
# (REQUESTS / rate per run) plus drains; PEFT's and llama-server's overloaded rates are skipped (SKIP_BELOW).
#
# Systems (all on 127.0.0.1, THREADS=2 compute threads each, one at a time):
#   dlora  `dlora serve` (swift build -c release --product dlora) with the PEFT adapters under --adapters, the
#          engine sized as in bench/replica.sh (720 MiB KV, 256 tokens and 32 sequences per iteration, dLoRA policy).
#   dlorabf16  the same with --matmul-precision bf16 (the base model's products in bf16; not in the default SYSTEMS;
#              on a CPU with AVX-512 BF16 and this Q4_1 model that is dlora's own default, `auto`).
#   llama  llama-server from llama-cpp-python 0.3.36's vendored llama.cpp (built by ../shared/tools/build-llama-cpp,
#          or LLAMA_CPP_BIN=dir), the same adapters converted to GGUF LoRA (F16) by llama.cpp's own
#          convert_lora_to_gguf.py, all loaded at start with --lora-init-without-apply; each request picks its
#          adapter with `"lora": [{"id": k, "scale": 1.0}]` (unlisted adapters get scale 0 and are skipped).
#          32 slots, a unified 8,192-token KV cache, prompt-cache RAM off. llama-server batches only slots whose
#          LoRA sets are equal in one decode step (server-context.cpp, can_batch_with): with many adapters it
#          runs one adapter's slots per step, the others wait for later steps.
#   peft   tools/peers/peft_server.py: transformers 5.24 + PEFT 0.21.2 on torch 2.13 (CPU), the base dequantized
#          to F32 from the same GGUF, every adapter a named PEFT adapter; the PEFT baseline of dLoRA's paper: a
#          FIFO queue, each round runs the oldest request's adapter with up to PEFT_BATCH (32) of its waiting
#          requests in one `generate` call to completion (request-level batching, one adapter per batch).
#   Same adapters, checked: greedy completions of adapter-k (dlora, PEFT) and LoRA id k (llama-server) agree
#   token for token on an F32 base (tools/gguf_to_f32.py); on the Q4_1 base llama.cpp's quantized path (Q8_1
#   activations) puts some of these random adapters' greedy choices elsewhere, so the texts may differ there.
#   llama.cpp's worker threads spin while waiting: on a machine with other load its times collapse (seen at
#   0.1–1.4 s per token with 2 busy cores) while the others degrade gently, so run this on a quiet machine.
#   LLAMA_ARGS adds llama-server flags (e.g. "--poll 0"; it did not help under that load).
# Workload (tools/peers/trace_client.py, the one `dlora bench replica` builds): REQUESTS requests whose arrivals
# are the Azure LLM inference trace 2023's first inter-arrival gaps (conversation trace, CC-BY-4.0, read in
# place from ../shared/data/azure-llm-2023) scaled to each rate in RATES; ShareGPT prompt/response lengths
# (~/.cache/dlora/sharegpt-2000.jsonl from tools/extract_sharegpt.py; prompts cut to 128 tokens and sent as
# token ids, max_tokens = the response length cut to 32, ignore_eos); ADAPTERS (8 and 32) random q/v adapters of
# ranks 8/16/32/64 in bf16 (tools/make_bench_adapters.py) with popularity P(k) ∝ (k+1)^-ALPHA, ALPHA = 1.
# The client streams every request (SSE) and records arrival, first and last token and tokens; a request not
# finished DRAIN (30) s after the last arrival fails. SLO: latency per generated token ≤ SLO (0.1) s. Once a
# system meets the SLO for less than SKIP_BELOW (50 %) of a rate's requests, its higher rates are skipped.
# Each server is started here, checked, and stopped by PID (trap on EXIT), and its log kept in the runs folder
# (RUNS, default a temporary folder; the per-request JSON records stay there when RUNS is given).
# A fresh Debian machine needs: scripts/setup.sh's packages, Swift, cmake/ninja for llama.cpp (the build script
# installs them), and pip (tools/peers/requirements.txt is installed when its packages are missing).
# Not part of the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
SYSTEMS=${SYSTEMS:-"dlora llama peft"}
RATES=${RATES:-"0.5 1 2 4 8"}
REQUESTS=${REQUESTS:-32}
ADAPTERS=${ADAPTERS:-"8 32"}
ALPHA=${ALPHA:-1}
SLO=${SLO:-0.1}
THREADS=${THREADS:-2}
DRAIN=${DRAIN:-30}
SKIP_BELOW=${SKIP_BELOW:-0.5}
PEFT_BATCH=${PEFT_BATCH:-32}
START_TIMEOUT=${START_TIMEOUT:-300}
OUT=${OUT:-bench/results/peers.md}
SVG=${OUT%.md}.svg
TRACE=${TRACE:-../shared/data/azure-llm-2023/AzureLLMInferenceTrace_conv.csv}
LLAMA_CPP_VERSION=0.3.36
for s in $SYSTEMS; do case $s in dlora|dlorabf16|llama|peft) ;; *) echo "bench/peers.sh: unknown system $s" >&2; exit 2 ;; esac; done

scripts/setup.sh
MODEL=$(scripts/fetch-model.sh)
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}"
PEERS="$CACHE/dlora-peers"
WORKLOAD="$CACHE/dlora/sharegpt-2000.jsonl"
[ -s "$WORKLOAD" ] || python3 tools/extract_sharegpt.py "$WORKLOAD" 2000
[ -f "$TRACE" ] || { echo "bench/peers.sh: trace $TRACE not found" >&2; exit 1; }
python3 -c "import torch, transformers, peft, gguf, safetensors" 2>/dev/null ||
    python3 -m pip install -q --disable-pip-version-check -r tools/peers/requirements.txt >&2
mkdir -p "$PEERS" "$(dirname "$OUT")"

# Inputs, each made once and cached: the HF config/tokenizer of the GGUF's model (for the client's token counts
# and llama.cpp's converter), the PEFT adapters, their GGUF conversions.
HF="$PEERS/smollm2-135m-instruct-hf"
python3 tools/peers/prepare.py hf-config "$MODEL" "$HF" 2> "$PEERS/prepare.log" ||
    { tail -20 "$PEERS/prepare.log" >&2; echo "bench/peers.sh: could not write the HF config" >&2; exit 1; }
max_n=0; for n in $ADAPTERS; do [ "$n" -gt "$max_n" ] && max_n=$n; done
key=$(sha256sum tools/make_bench_adapters.py | cut -c1-12)
ADIR="$PEERS/adapters-qv-r8-64-bf16-$key"
if [ ! -f "$ADIR/adapter-$((max_n - 1))/adapter_config.json" ]; then
    python3 tools/make_bench_adapters.py "$ADIR.tmp" "$max_n" 8,16,32,64 bf16 && rm -rf "$ADIR" && mv "$ADIR.tmp" "$ADIR"
fi
case " $SYSTEMS " in *" llama "*)
    if [ -z "${LLAMA_CPP_BIN:-}" ] && [ ! -x ../shared/tools/build-llama-cpp ]; then
        echo "bench/peers.sh: set LLAMA_CPP_BIN to llama.cpp's bin folder (../shared/tools/build-llama-cpp not found)" >&2; exit 1
    fi
    LLAMA_BIN=${LLAMA_CPP_BIN:-$(../shared/tools/build-llama-cpp | tail -1)}
    [ -x "$LLAMA_BIN/llama-server" ] || { echo "bench/peers.sh: no llama-server in $LLAMA_BIN" >&2; exit 1; }
    SRC="$PEERS/src/llama_cpp_python-$LLAMA_CPP_VERSION/vendor/llama.cpp"
    if [ ! -f "$SRC/convert_lora_to_gguf.py" ]; then
        mkdir -p "$PEERS/src"
        python3 -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_VERSION" -d "$PEERS/src" >&2
        tar -xzf "$PEERS/src/llama_cpp_python-$LLAMA_CPP_VERSION.tar.gz" -C "$PEERS/src" --wildcards \
            "*/vendor/llama.cpp/convert_*.py" "*/vendor/llama.cpp/conversion/*" "*/vendor/llama.cpp/gguf-py/*"
    fi
    GDIR="$ADIR-gguf"
    python3 tools/peers/prepare.py convert-loras "$SRC" "$HF" "$GDIR" $(seq -f "$ADIR/adapter-%g" 0 $((max_n - 1))) 2>&1 |
        grep -v '^INFO' >&2 || true
    [ -f "$GDIR/adapter-$((max_n - 1)).gguf" ] || { echo "bench/peers.sh: LoRA conversion failed" >&2; exit 1; }
    ;;
esac
case " $SYSTEMS " in *" dlora "*|*" dlorabf16 "*) swift build -c release --product dlora >&2 ;; esac

if [ -n "${RUNS:-}" ]; then  # a given runs folder: this run's results replace earlier ones there
    mkdir -p "$RUNS"; tmp=""
    rm -f "$RUNS"/*-*-*.json "$RUNS"/*-*-*.skipped
else
    tmp=$(mktemp -d); RUNS="$tmp"
fi
server=""
client=""
cleanup() {
    if [ -n "$client" ]; then kill "$client" 2>/dev/null || true; wait "$client" 2>/dev/null || true; fi
    if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
    [ -z "$tmp" ] || rm -rf "$tmp"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'; }
stop_server() {
    [ -n "$server" ] || return 0
    kill -TERM "$server" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$server" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    server=""
}
start_server() {  # system, adapter count, port; sets $server
    local s=$1 n=$2 port=$3 adir="$RUNS/adapters-$2" log="$RUNS/$1-$2.log"
    mkdir -p "$adir"
    # Hard links where the file system allows (128 adapters are ≈ 450 MB), copies otherwise.
    for i in $(seq 0 $((n - 1))); do
        [ -e "$adir/adapter-$i" ] || cp -rl "$ADIR/adapter-$i" "$adir/" 2>/dev/null || cp -r "$ADIR/adapter-$i" "$adir/"
    done
    case $s in
        dlora|dlorabf16)
            .build/release/dlora serve --model "$MODEL" --adapters "$adir" --host 127.0.0.1 --port "$port" --threads "$THREADS" \
                --kv-cache-mb 720 --max-batch-tokens 256 --max-batch-sequences 32 \
                $([ "$s" = dlorabf16 ] && echo --matmul-precision bf16) > "$log" 2>&1 &
            ;;
        llama)
            # One --lora with comma-separated files: this version warns that repeated --lora flags are deprecated
            # ("only last value will be used").
            local loras
            loras=$(seq -f "$GDIR/adapter-%g.gguf" 0 $((n - 1)) | paste -sd,)
            "$LLAMA_BIN/llama-server" -m "$MODEL" --host 127.0.0.1 --port "$port" -t "$THREADS" -tb "$THREADS" -np 32 -c 8192 -kvu \
                -cram 0 --lora "$loras" --lora-init-without-apply ${LLAMA_ARGS:-} > "$log" 2>&1 &
            ;;
        peft)
            OMP_NUM_THREADS=$THREADS python3 tools/peers/peft_server.py --model-dir "$(dirname "$MODEL")" --gguf-file "$(basename "$MODEL")" \
                --adapters "$adir" --port "$port" --threads "$THREADS" --max-batch "$PEFT_BATCH" > "$log" 2>&1 &
            ;;
    esac
    server=$!
    local deadline=$((SECONDS + START_TIMEOUT))
    until curl -sf -m 2 "http://127.0.0.1:$port/health" >/dev/null; do
        if ! kill -0 "$server" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
            echo "bench/peers.sh: $s did not start; its log:" >&2; tail -20 "$log" >&2; stop_server; return 1
        fi
        sleep 1
    done
    if [ "$s" = llama ]; then  # a request naming a LoRA id that was not loaded silently runs the base: check all are there
        local loaded
        loaded=$(curl -sf -m 5 "http://127.0.0.1:$port/lora-adapters" | python3 -c 'import json, sys; print(len(json.load(sys.stdin)))')
        [ "$loaded" = "$n" ] || { echo "bench/peers.sh: llama-server loaded ${loaded:-no} LoRA adapters, not $n" >&2; stop_server; return 1; }
    fi
}

for n in $ADAPTERS; do
    for s in $SYSTEMS; do
        port=$(free_port)
        echo "bench: peers, $s with $n adapters (port $port)" >&2
        t0=$SECONDS
        start_server "$s" "$n" "$port" || continue
        echo "bench: peers, $s started in $((SECONDS - t0)) s" >&2
        skip=0
        for r in $RATES; do
            if [ $skip = 1 ]; then touch "$RUNS/$s-$n-$r.skipped"; continue; fi
            # The client stops itself DRAIN s after the last arrival (≤ REQUESTS / rate); timeout is the backstop. It runs
            # in the background so that a signal to this script ends the wait at once and cleanup stops it by PID.
            timeout "$(awk -v n="$REQUESTS" -v r="$r" -v d="$DRAIN" 'BEGIN { printf "%d", n / r + d + 120 }')" python3 tools/peers/trace_client.py \
                --url "http://127.0.0.1:$port" --system "$s" --tokenizer-dir "$HF" --workload "$WORKLOAD" --trace "$TRACE" \
                --adapters "$n" --alpha "$ALPHA" --rate "$r" --requests "$REQUESTS" --slo "$SLO" --drain "$DRAIN" --below "$SKIP_BELOW" \
                --out "$RUNS/$s-$n-$r.json" > "$RUNS/$s-$n-$r.client.out" 2> "$RUNS/$s-$n-$r.client.log" &
            client=$!
            rc=0
            wait "$client" || rc=$?
            client=""
            sed 's/^/bench: peers, /' "$RUNS/$s-$n-$r.client.out" >&2
            case $rc in
                0) ;;
                3) skip=1 ;;
                *) echo "bench/peers.sh: client failed ($rc) for $s, $n adapters, rate $r:" >&2; tail -5 "$RUNS/$s-$n-$r.client.log" >&2 ;;
            esac
            kill -0 "$server" 2>/dev/null || { echo "bench/peers.sh: $s exited during the run" >&2; tail -20 "$RUNS/$s-$n.log" >&2; break; }
        done
        stop_server
    done
done

header="$RUNS/header.md"
{
    echo "# Peers: dlora serve, llama-server and transformers+PEFT on one trace-driven multi-adapter workload"
    echo
    echo "Generated by \`bash bench/peers.sh\` on $(date -u +%Y-%m-%d) — $(lscpu | sed -n 's/^Model name: *//p' | head -1), $(nproc) cores,"
    echo "$THREADS threads per server, one server at a time on 127.0.0.1. Model: SmolLM2-135M-Instruct Q4_1 (dlora, llama-server;"
    echo "the PEFT server dequantizes the same GGUF to F32). Adapters: q/v, ranks 8/16/32/64, bf16 (llama-server: converted to"
    echo "F16 GGUF LoRA by llama.cpp's convert_lora_to_gguf.py), popularity P(k) ∝ (k+1)^-$ALPHA."
    echo "Settings: SYSTEMS=\"$SYSTEMS\" ADAPTERS=\"$ADAPTERS\" RATES=\"$RATES\" REQUESTS=$REQUESTS ALPHA=$ALPHA SLO=$SLO DRAIN=$DRAIN SKIP_BELOW=$SKIP_BELOW PEFT_BATCH=$PEFT_BATCH."
    echo "Workload: $REQUESTS requests per run; arrivals from the Azure LLM inference trace 2023 (conversation trace, gaps scaled"
    echo "to the rate; CC-BY-4.0); ShareGPT prompt/response lengths (prompts ≤ 128 tokens, responses ≤ 32, ignore_eos). Every"
    echo "request streams; latency = arrival to last token; avg latency per token = Σ latencies / Σ generated tokens over the"
    echo "completed requests; SLO attainment = share of all requests whose latency per generated token is ≤ $SLO s; a request"
    echo "not done $DRAIN s after the last arrival fails. Throughput = generated tokens (or completed requests) / time to the last"
    echo "completion (the deadline when some failed). A system's higher rates are skipped once it meets the SLO for < $(python3 -c "print(f'{$SKIP_BELOW * 100:g}')") % of a rate's requests."
    echo
    echo "Batching: dlora — iteration-level, dLoRA's dynamic merged/unmerged policy, up to 32 sequences and 256 tokens per"
    echo "iteration. llama-server — 32 slots, continuous batching, but one decode step batches only slots with the same LoRA set"
    echo "(per-request \`lora\`), so different adapters take turns. transformers+PEFT — one adapter per batch: the oldest waiting"
    echo "request's adapter with up to $PEFT_BATCH of its waiting requests, \`generate\` to completion, then the next batch."
    case " $SYSTEMS " in *" dlorabf16 "*)
        echo "dlora serve, bf16 products — the same server with \`--matmul-precision bf16\` (weights and activations rounded to bf16,"
        echo "sums in f32; docs/design/core-engine.md \"bf16 products\")." ;;
    esac
} > "$header"
python3 tools/peers/report.py "$RUNS" "$OUT" "$SVG" "$header"
cat "$OUT"
