#!/usr/bin/env bash
# Fig 9's dLoRA / PEFT ratio on the simulator with the PEFT-like system priced as HF transformers + PEFT measured on
# an H100 (bench/results/gpu-profile-peft-h100-{7b,13b}.knobs.json, tools/gpu_profile_peft.py --knobs). Writes
# bench/results/simulator-peft-measured.md. JOBS (default: the cores), QUICK=1 (600 requests, one rate: checks the script).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/simulator-peft-measured.md}
. bench/simulator-inputs.sh
python3 tools/sim_peft_profile.py .build/release/dlora "$TRACE" "$WORKLOAD" bench/results/gpu-profile-peft-h100-7b.knobs.json \
    bench/results/gpu-profile-peft-h100-13b.knobs.json --jobs "$JOBS" ${QUICK:+--quick} > "$OUT"
cat "$OUT"
