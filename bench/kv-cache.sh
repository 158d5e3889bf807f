#!/usr/bin/env bash
# The KV cache's element type side by side: `dlora bench core` with --kv-cache-dtype f32 and f16, alternating
# (the order rotates each round), at a short and a long prompt. Per (prompt, batch): the prefill and decode
# tok/s of each cache type over the rounds and the f16/f32 ratio of each round's pair (bench/core-ab.sh). Writes
# bench/results/kv-cache.md.
#   ROUNDS (3), GEN (32), SHORT (128, batches SHORT_BATCHES 1,8,32), LONG (1900, batches LONG_BATCHES 1,4),
#   THREADS (all cores), OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
FLAG=--kv-cache-dtype A=f32 B=f16 TITLE="KV cache: f16 against f32" STRIP='s/; KV cache: f[0-9]*//' \
SPECS="${SHORT:-128}:${SHORT_BATCHES:-1,8,32} ${LONG:-1900}:${LONG_BATCHES:-1,4}" OUT=${OUT:-bench/results/kv-cache.md} \
BENCH_SCRIPT=bench/kv-cache.sh exec bash bench/core-ab.sh
