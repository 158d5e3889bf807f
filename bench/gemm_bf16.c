// Training's frozen products side by side: dl_gemm_bf16 (bf16 operands, f32 sums; AVX-512 BF16) against
// OpenBLAS cblas_sgemm (f32) on SmolLM2-135M's shapes at 8 x 256 tokens, the same operands, best of REPS
// calls each. Built and run by bench/gemm_bf16.sh; prints one markdown table row per shape.
#include "ckernels.h"
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static float uniform(unsigned long long *s) { // SplitMix64, in [-1, 1)
    unsigned long long z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) / (float)(1 << 24) * 2 - 1;
}

int main(int argc, char **argv) {
    if (argc != 7) { fprintf(stderr, "usage: %s NAME M N K TRANSPOSED REPS\n", argv[0]); return 2; }
    const char *name = argv[1];
    const long M = atol(argv[2]), N = atol(argv[3]), K = atol(argv[4]);
    const int trans = atoi(argv[5]), reps = atoi(argv[6]);
    if (getenv("THREADS")) dl_set_num_threads(atoi(getenv("THREADS")));
    float *A = malloc(sizeof(float) * M * K), *W = malloc(sizeof(float) * N * K);
    float *C = malloc(sizeof(float) * M * N), *R = malloc(sizeof(float) * M * N);
    uint16_t *P = malloc(2 * dl_pack_bf16_elements(K, N));
    if (!A || !W || !C || !R || !P) { fprintf(stderr, "out of memory\n"); return 1; }
    unsigned long long s = 1;
    for (long i = 0; i < M * K; i++) A[i] = uniform(&s);
    for (long i = 0; i < N * K; i++) W[i] = uniform(&s);
    // trans: W is N x K (the forward, y = x·Wᵀ); else K x N (the input gradient, dx = dy·W).
    double t0 = now();
    dl_pack_bf16(W, trans ? K : N, trans, K, N, P);
    const double pack = now() - t0;
    // Each side's calls back to back (best of reps after a warm-up call): alternating single calls would
    // time our pool's wake-up beside OpenBLAS's workers, which spin on sched_yield for a while after a call.
    double best_bf16 = 1e30, best_f32 = 1e30;
    for (int r = 0; r <= reps; r++) {
        t0 = now();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, trans ? CblasTrans : CblasNoTrans, M, N, K, 1, A, K, W, trans ? K : N, 0, R, N);
        double t = now() - t0;
        if (r > 0 && t < best_f32) best_f32 = t;
    }
    for (int r = 0; r <= reps; r++) {
        t0 = now();
        dl_gemm_bf16(M, N, K, A, K, P, C, N, 0);
        double t = now() - t0;
        if (r > 0 && t < best_bf16) best_bf16 = t;
    }
    // How far bf16 rounding moves the result: max |bf16 - f32| relative to the largest |f32|.
    double err = 0, mag = 0;
    for (long i = 0; i < M * N; i++) {
        if (fabs(C[i] - R[i]) > err) err = fabs(C[i] - R[i]);
        if (fabs(R[i]) > mag) mag = fabs(R[i]);
    }
    const double flop = 2.0 * M * N * K;
    printf("| %s | %ld×%ld×%ld | %.2f | %.1f | %.2f | %.1f | %.2f× | %.0f | %.1e |\n", name, M, N, K, best_f32 * 1e3,
           flop / best_f32 / 1e9, best_bf16 * 1e3, flop / best_bf16 / 1e9, best_f32 / best_bf16, pack * 1e3, err / mag);
    return 0;
}
