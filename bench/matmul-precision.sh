#!/usr/bin/env bash
# The base model's products side by side: `dlora bench core` with --matmul-precision f32 and bf16 (or PRODUCTS, e.g.
# int8), alternating (the order rotates each round), at batches 1 to 32. Per batch: the prefill and decode tok/s of
# each over the rounds and the ratio to BASE of each round's pair (bench/core-ab.sh); the bandwidth bound each reports
# (bf16 and int8 read a quantized checkpoint's own codes, bf16 2 bytes per weight otherwise). Writes
# bench/results/matmul-precision.md.
#   PRODUCTS (bf16), BASE (f32: what PRODUCTS is compared with, e.g. bf16 for int8 against bf16), ROUNDS (3),
#   PROMPT (128), GEN (32), BATCHES (1,2,4,8,16,32), THREADS (all cores), OUT.
set -euo pipefail
cd "$(dirname "$0")/.."
PRODUCTS=${PRODUCTS:-bf16}
BASE=${BASE:-f32}
FLAG=--matmul-precision A=$BASE B=$PRODUCTS TITLE="Products: $PRODUCTS against $BASE" STRIP='s/; products: [a-z0-9]*//' BOUND=1 \
SPECS="${PROMPT:-128}:${BATCHES:-1,2,4,8,16,32}" OUT=${OUT:-bench/results/matmul-precision.md} \
BENCH_SCRIPT=bench/matmul-precision.sh exec bash bench/core-ab.sh
