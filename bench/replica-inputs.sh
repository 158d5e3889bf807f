# Sourced by the replica benchmarks (replica.sh, replica-merge.sh, replica-switch-prior.sh) after they set TRACE: the
# set-up they share. Installs what scripts/setup.sh installs and sets MODEL (the default Q4_1 GGUF), CACHE and
# WORKLOAD (ShareGPT conversations, extracted once); stops when the trace is missing. `f32_model` prints the path of
# an F32 copy of MODEL (tools/gguf_to_f32.py), converting it once.
scripts/setup.sh
MODEL=$(scripts/fetch-model.sh)
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/dlora"
WORKLOAD="$CACHE/sharegpt-2000.jsonl"
[ -s "$WORKLOAD" ] || python3 tools/extract_sharegpt.py "$WORKLOAD" 2000
[ -f "$TRACE" ] || { echo "$0: trace $TRACE not found" >&2; exit 1; }
f32_model() {
    local f32="$CACHE/SmolLM2-135M-Instruct.F32.gguf"
    if [ ! -s "$f32" ]; then
        python3 -m pip install -q --disable-pip-version-check -r tools/requirements-bench.txt >&2
        python3 tools/gguf_to_f32.py "$MODEL" "$f32.tmp" >&2 && mv "$f32.tmp" "$f32"
    fi
    echo "$f32"
}
