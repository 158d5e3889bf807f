#!/usr/bin/env bash
# Fig 11-style dispatch and migration at 32 × A800 / 128 adapters / Llama-2-7B on the simulator, with and without
# adapter file loads and bounded host caches (tools/sim_file_loads.py). Writes bench/results/simulator-file-loads.md.
# RATES (default 150,250), LOAD_MS (10), GBPS (2), CACHES (none,inf,256,64: MB), JOBS (default: the cores),
# QUICK=1 (600 requests per run: checks the script).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/simulator-file-loads.md}
. bench/simulator-inputs.sh
python3 tools/sim_file_loads.py .build/release/dlora "$TRACE" "$WORKLOAD" --rates "${RATES:-150,250}" --load-ms "${LOAD_MS:-10}" \
    --gbps "${GBPS:-2}" --caches "${CACHES:-none,inf,256,64}" --jobs "$JOBS" ${QUICK:+--quick} > "$OUT"
cat "$OUT"
