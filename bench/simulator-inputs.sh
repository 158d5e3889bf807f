# Sourced by the simulator benchmarks (bench/simulator-gpu-profile.sh, bench/simulator-file-loads.sh,
# bench/simulator-fig11-slots.sh), from the
# repository root: the release build (unless SKIP_BUILD), the Azure trace (TRACE), the ShareGPT workload
# (WORKLOAD, extracted once into the user cache) and the simulations at a time (JOBS, default: the cores).
TRACE=${TRACE:-../shared/data/azure-llm-2023/AzureLLMInferenceTrace_conv.csv}
JOBS=${JOBS:-$(nproc)}
[ -n "${SKIP_BUILD:-}" ] || swift build -c release --product dlora >&2
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/dlora"
WORKLOAD=${WORKLOAD:-$CACHE/sharegpt-2000.jsonl}
[ -s "$WORKLOAD" ] || python3 tools/extract_sharegpt.py "$WORKLOAD" 2000
[ -f "$TRACE" ] || { echo "$0: trace $TRACE not found" >&2; exit 1; }
