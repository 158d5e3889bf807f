// Microbenchmark of lora.c's dl_lora_apply (bench/lora-kernel.sh): one call's time from DRAM ("cold": a new set
// of adapters from a pool larger than L3 each time) and from cache ("warm": the same call repeated), and the LoRA
// calls of a 30-layer decode step (SmolLM2-135M shapes, all seven targets, 32 one-token segments of distinct
// rank-16 bf16 adapters, batch 32) after Q4_1 bf16 products (dl_matmul_q_bf16) with and without the prefetch plan
// that names the LoRA bytes to the product. Prints markdown rows. Values are not checked here (LoRAApplyTests and
// PrefetchPlanTests do); the weights are arbitrary.
#include "ckernels.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }

// The adapters' type: BF16, Q8_0 with WTYPE=q8 or Q4_0 with WTYPE=q4 (A packed for dl_matmul_q8, B in the expand's
// quantized layout).
static int WT = DL_BF16;
static int quantized(void) { return WT == DL_Q8_0 || WT == DL_Q4_0; }
static size_t a_bytes(int in, int r) { return quantized() ? (size_t)dl_q8_bytes(WT, in, r) : (size_t)r * in * 2; }

static void *fill(size_t bytes, int v) { void *p = aligned_alloc(64, (bytes + 63) / 64 * 64); memset(p, v, bytes); return p; }

static void call(const char *name, int in, int out, int r, int nseg, int per) {
    const int pool = 2048;  // 138 MB of gate adapters at rank 16: well past L3
    const size_t ab = a_bytes(in, r), bb = (size_t)dl_lora_b_bytes(WT, out, r);
    char *A = fill(ab * pool, 0x3c), *B = fill(bb * pool, 0x3c);
    const int tokens = nseg * per;
    float *x = fill(4 * (size_t)tokens * in, 0), *y = fill(4 * (size_t)tokens * out, 0);
    dl_lora_seg segs[64];
    double cold = 1e9, warm = 1e9;
    for (int rep = 0; rep < 100; rep++) {
        const int base = rep * nseg % pool;
        for (int s = 0; s < nseg; s++)
            segs[s] = (dl_lora_seg){ .a = A + (size_t)((base + s) % pool) * ab, .b = B + (size_t)((base + s) % pool) * bb,
                                     .wtype = WT, .prank = r, .start = s * per, .count = per, .scale = 1 };
        const double t0 = now();
        dl_lora_apply(segs, nseg, in, out, x, in, y, out);
        const double t1 = now();
        dl_lora_apply(segs, nseg, in, out, x, in, y, out);
        const double t2 = now();
        if (t1 - t0 < cold) cold = t1 - t0;
        if (t2 - t1 < warm) warm = t2 - t1;
    }
    const double mb = nseg * (ab + bb) / 1e6;
    printf("| %s | %.2f | %.1f | %.1f | %.1f | %.1f |\n", name, mb, cold * 1e6, mb / cold / 1e3, warm * 1e6, mb / warm / 1e3);
    free(A); free(B); free(x); free(y);
}

enum { L = 30, NSEG = 32, R = 16 };
static const int pN[4] = { 960, 576, 3072, 576 }, pK[4] = { 576, 576, 576, 1536 }, ntg[4] = { 3, 1, 2, 1 };
static const int tin[4][3] = { { 576, 576, 576 }, { 576 }, { 576, 576 }, { 1536 } };
static const int tout[4][3] = { { 576, 192, 192 }, { 576 }, { 1536, 1536 }, { 576 } };

static void step(int rounds) {
    static uint8_t *W[L][4];
    static char *A[L][4][3][NSEG], *B[L][4][3][NSEG];
    for (int l = 0; l < L; l++)
        for (int p = 0; p < 4; p++) {
            const int64_t rb = dl_row_bytes(DL_Q4_1, pK[p]);
            uint8_t *raw = fill(rb * pN[p], 0);
            for (int64_t i = 0; i < rb * pN[p]; i++) raw[i] = (uint8_t)(i * 37 + l);
            for (int64_t r = 0; r < pN[p]; r++) { const uint16_t d = 0x2000; memcpy(raw + r * rb, &d, 2); memcpy(raw + r * rb + 2, &d, 2); }
            // The products as serve runs them beside such adapters: bf16 products with bf16 adapters, int8 with int8 or int4.
            if (quantized()) {
                W[l][p] = fill((size_t)dl_q8_bytes(DL_Q4_1, pK[p], pN[p]), 0);
                dl_pack_q8(DL_Q4_1, raw, rb, pK[p], pN[p], W[l][p]);
            } else {
                W[l][p] = fill(dl_q_bf16_bytes(DL_Q4_1, pK[p], pN[p]), 0);
                dl_pack_q_bf16(DL_Q4_1, raw, rb, pK[p], pN[p], W[l][p]);
            }
            free(raw);
            for (int t = 0; t < ntg[p]; t++)
                for (int s = 0; s < NSEG; s++) {
                    A[l][p][t][s] = fill(a_bytes(tin[p][t], R), 0x3c);
                    B[l][p][t][s] = fill((size_t)dl_lora_b_bytes(WT, tout[p][t], R), 0x3c);
                }
        }
    float *x = fill(4 * 32 * 1536, 0), *y = fill(4 * 32 * 3072, 0);
    for (int i = 0; i < 32 * 1536; i++) x[i] = 0.001f * (float)(i % 17);
    dl_span spans[3 * NSEG * 2];
    dl_lora_seg segs[NSEG];
    for (int round = 0; round < rounds; round++)
        for (int plan = 0; plan < 2; plan++) {
            double bp = 1e9, bl = 1e9;
            for (int rep = 0; rep < 5; rep++) {
                double tp = 0, tl = 0;
                for (int l = 0; l < L; l++)
                    for (int p = 0; p < 4; p++) {
                        int n = 0;
                        for (int t = 0; t < ntg[p]; t++)
                            for (int s = 0; s < NSEG; s++) {
                                spans[n++] = (dl_span){ A[l][p][t][s], (int64_t)a_bytes(tin[p][t], R) };
                                spans[n++] = (dl_span){ B[l][p][t][s], dl_lora_b_bytes(WT, tout[p][t], R) };
                            }
                        const double t0 = now();
                        if (quantized()) dl_matmul_q8(DL_Q4_1, W[l][p], pN[p], pK[p], x, pK[p], 32, y, pN[p], plan ? spans : NULL, plan ? n : 0);
                        else dl_matmul_q_bf16(DL_Q4_1, 32, pN[p], pK[p], x, pK[p], W[l][p], y, pN[p], plan ? spans : NULL, plan ? n : 0);
                        const double t1 = now();
                        for (int t = 0; t < ntg[p]; t++) {
                            for (int s = 0; s < NSEG; s++)
                                segs[s] = (dl_lora_seg){ .a = A[l][p][t][s], .b = B[l][p][t][s], .wtype = WT, .prank = R,
                                                         .start = s, .count = 1, .scale = 1 };
                            dl_lora_apply(segs, NSEG, tin[p][t], tout[p][t], x, tin[p][t], y, tout[p][t]);
                        }
                        const double t2 = now();
                        tp += t1 - t0;
                        tl += t2 - t1;
                    }
                if (tp + tl < bp + bl) { bp = tp; bl = tl; }
            }
            printf("| %d | %s | %.2f | %.2f | %.2f |\n", round + 1, plan ? "named to the products" : "none", bp * 1e3, bl * 1e3, (bp + bl) * 1e3);
        }
}

int main(int argc, char **argv) {
    const int threads = argc > 1 ? atoi(argv[1]) : 2, rounds = argc > 2 ? atoi(argv[2]) : 2;
    dl_set_num_threads(threads);
    const char *wt = getenv("WTYPE");
    if (wt && !strcmp(wt, "q8")) WT = DL_Q8_0;
    if (wt && !strcmp(wt, "q4")) WT = DL_Q4_0;
    printf("| call | MB | from DRAM µs | GB/s | from cache µs | GB/s |\n|---|---:|---:|---:|---:|---:|\n");
    call("gate 576 → 1536, 32 one-token segments, rank 16", 576, 1536, 16, 32, 1);
    call("down 1536 → 576, 32 × 1, rank 16", 1536, 576, 16, 32, 1);
    call("q 576 → 576, 32 × 1, rank 16", 576, 576, 16, 32, 1);
    call("gate, 32 × 1, rank 64", 576, 1536, 64, 32, 1);
    call("gate, 8 segments of 4 tokens, rank 16", 576, 1536, 16, 8, 4);
    call("gate, one segment of 128 tokens, rank 16", 576, 1536, 16, 1, 128);
    call("down, one segment of 128 tokens, rank 16", 1536, 576, 16, 1, 128);
    printf("\n| round | prefetch plan | products ms | LoRA calls ms | sum ms |\n|---:|---|---:|---:|---:|\n");
    step(rounds);
    return 0;
}
