#!/usr/bin/env bash
# The Fig 9 systems at 32 × H200 / 128 adapters / Llama-2-7B on the simulator with the roofline's assumed knobs and
# with the knobs measured on an H200 (bench/results/gpu-profile-h200-7b.knobs.json: PyTorch's gathered products;
# gpu-profile-h200-7b-bgmv.knobs.json: the Triton BGMV-style kernels of tools/lora_triton.py). Writes
# bench/results/simulator-h200-knobs.md. RATES (default 150,300,450,600), JOBS (default: the cores), QUICK=1 (600
# requests per run: checks the script).
set -euo pipefail
cd "$(dirname "$0")/.."
# COST=h100-7b: the same on 32 × H100 with the knobs measured on an H100 (→ bench/results/simulator-h100-knobs.md).
COST=${COST:-h200-7b}
GPU=${COST%%-*}
OUT=${OUT:-bench/results/simulator-$GPU-knobs.md}
. bench/simulator-inputs.sh
python3 tools/sim_gpu_profile.py .build/release/dlora "$TRACE" "$WORKLOAD" bench/results/gpu-profile-$GPU-7b.knobs.json \
    bench/results/gpu-profile-$GPU-7b-bgmv.knobs.json --cost "$COST" \
    --rates "${RATES:-150,300,450,600}" --jobs "$JOBS" ${QUICK:+--quick} > "$OUT"
cat "$OUT"
