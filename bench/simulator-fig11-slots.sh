#!/usr/bin/env bash
# Fig 11-style dispatch and migration when adapter slots are scarce (SLOTS per replica, default 8): round-robin,
# round-robin under a static placement, dLoRA's proactive dispatch with and without the adapter-slot bound and the
# placement hysteresis, each also with K/V migration, at RATES, without and with per-adapter bursts
# (tools/sim_fig11_slots.py). Writes bench/results/simulator-fig11-slots.md and its SVG plots (RESULTS=dir to write
# elsewhere). About 7 minutes two at a time.
set -euo pipefail
cd "$(dirname "$0")/.."
RESULTS=${RESULTS:-bench/results}
source bench/simulator-inputs.sh
mkdir -p "$RESULTS"
python3 tools/sim_fig11_slots.py .build/release/dlora "$TRACE" "$WORKLOAD" "$RESULTS" --jobs "$JOBS" \
    --slots "${SLOTS:-8}" --rates "${RATES:-150,200,250}" --sigmas "${SIGMAS:-0,1.5}"
