#!/usr/bin/env bash
# dLoRA's adapter placement under sustained load (tools/sim_placement.py): static placement (the oracle) against dLoRA's
# dispatch with the router's placement settings (slot bound, hysteresis, slack, rate memory), 8 adapter slots per
# replica, DURATION s of arrivals (default 180) at RATES, without and with per-adapter bursts, for each of SEEDS. Writes
# bench/results/simulator-placement.md and its SVG plots (RESULTS=dir to write elsewhere). About 6 minutes two at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-bench/results}
source bench/simulator-inputs.sh
mkdir -p "$RESULTS"
python3 tools/sim_placement.py .build/release/dlora "$TRACE" "$WORKLOAD" "$RESULTS" --jobs "$JOBS" \
    --slots "${SLOTS:-8}" --duration "${DURATION:-180}" --rates "${RATES:-200,250}" --sigmas "${SIGMAS:-0,1.5}" --seeds "${SEEDS:-1,2}"
