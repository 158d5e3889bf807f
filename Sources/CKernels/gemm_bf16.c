// BF16 products with f32 accumulation, for training over frozen weights (what torch's bf16 autocast does
// for a linear layer): C (M x N) (+)= bf16(A) (M x K) · bf16(B) (K x N), each product of two bf16 values
// exact in f32 and the sums kept in f32.
//
// B is a frozen weight, packed once (dl_pack_bf16) into panels of 32 columns; in a panel, step kp holds the
// pairs (B[2kp][n], B[2kp+1][n]) for its 32 columns n, 128 bytes: two 512-bit vectors whose 32-bit lanes are
// one column's pair, the operand layout of AVX-512 BF16's VDPBF16PS (lane n += a0·b0[n] + a1·b1[n]). A odd K
// gets a zero row. A is converted per call (round to nearest even), MB rows at a time into a per-thread
// buffer, in chunks of KC pairs so that a panel's chunk stays in L1 while the block's tiles pass over it; an
// MR x 32 register tile (2·MR accumulators) takes one broadcast pair of A per row and the panel's two
// vectors per step.
//
// Where the CPU lacks AVX-512 BF16 the same packed operands go through a portable loop (dl_gemm_bf16_ref,
// also the parity tests' twin): the same products, summed in a different order, so the two agree to f32
// rounding, not bit for bit. Callers that want speed check dl_has_bf16_dot() first.
#include "ckernels.h"
#include "simd.h"
#include "fatal.h"
#include "prefetch.h"
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <time.h>

// PANEL columns per packed panel, MR rows per register tile, KC pairs of k per chunk, MB rows per block.
enum { PANEL = 32, MR = 8, KC = 128, MB = 16 * MR };

int64_t dl_pack_bf16_elements(int64_t K, int64_t N) {
    return (N + PANEL - 1) / PANEL * PANEL * ((K + 1) / 2 * 2);
}

typedef struct {
    const float *src;
    int64_t ld, K, N;
    int trans;
    uint16_t *dst;
} pack_ctx;

// Panels [p0, p1). For a transposed source (a weight, n x K rows) a panel's 32 rows are read row by row, each
// pair of k written to its step: contiguous reads, one 4-byte store per pair.
static void pack_panels(void *vctx, int64_t p0, int64_t p1) {
    const pack_ctx *c = (const pack_ctx *)vctx;
    const int64_t kp_count = (c->K + 1) / 2;
    for (int64_t p = p0; p < p1; p++) {
        uint16_t *panel = c->dst + p * kp_count * 2 * PANEL;
        for (int64_t col = 0; col < PANEL; col++) {
            const int64_t n = p * PANEL + col;
            for (int64_t kp = 0; kp < kp_count; kp++)
                for (int64_t j = 0; j < 2; j++) {
                    const int64_t k = 2 * kp + j;
                    float v = 0;
                    if (n < c->N && k < c->K) v = c->trans ? c->src[n * c->ld + k] : c->src[k * c->ld + n];
                    panel[kp * 2 * PANEL + 2 * col + j] = dl_bf16_round(v);
                }
        }
    }
}

// B(k, n) = trans ? src[n * ld + k] : src[k * ld + n]. Split over the panels on the kernel thread pool.
void dl_pack_bf16(const float *src, int64_t ld, int trans, int64_t K, int64_t N, uint16_t *dst) {
    pack_ctx c = { src, ld, K, N, trans, dst };
    dl_parallel_for((N + PANEL - 1) / PANEL, 1, pack_panels, &c);
}

void dl_gemm_bf16_ref(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const uint16_t *Bp,
                      float *C, int64_t ldc, int accumulate) {
    const int64_t kp_count = (K + 1) / 2;
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            const uint16_t *panel = Bp + (n / PANEL) * kp_count * 2 * PANEL + 2 * (n % PANEL);
            float acc = 0;
            for (int64_t kp = 0; kp < kp_count; kp++) {
                const float a0 = dl_bf16_value(dl_bf16_round(A[m * lda + 2 * kp]));
                const float a1 = 2 * kp + 1 < K ? dl_bf16_value(dl_bf16_round(A[m * lda + 2 * kp + 1])) : 0;
                acc += a0 * dl_bf16_value(panel[kp * 2 * PANEL]);
                acc += a1 * dl_bf16_value(panel[kp * 2 * PANEL + 1]);
            }
            C[m * ldc + n] = accumulate ? C[m * ldc + n] + acc : acc;
        }
}

#if defined(__x86_64__)
#define DL_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

int dl_has_bf16_dot(void) {
    static int cached = -1;
    if (cached < 0) cached = __builtin_cpu_supports("avx512bf16") && dl_cpu_simd_level() >= 2;
    return cached && dl_has_avx512();
}

// The two instruction rates dl_bf16_dot_rate_ratio compares: `rounds` × 12 independent chains (more than either
// instruction's latency × its issue rate, so each loop runs at the instruction's throughput), the accumulators
// kept live through an empty asm so the loop is not folded. Seconds.
enum { RATE_CHAINS = 12 };
static double dl_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}
// `rounds` × RATE_CHAINS instances of STEP (which updates acc[i]), timed; the chains' sum kept live afterwards.
#define TIME_CHAINS(rounds, STEP)                                     \
    __m512 acc[RATE_CHAINS];                                          \
    for (int i = 0; i < RATE_CHAINS; i++) acc[i] = _mm512_setzero_ps(); \
    const double t0 = dl_seconds();                                   \
    for (int64_t r = 0; r < (rounds); r++)                            \
        for (int i = 0; i < RATE_CHAINS; i++) {                       \
            STEP;                                                     \
            __asm__ volatile("" : "+v"(acc[i]));                      \
        }                                                             \
    const double t = dl_seconds() - t0;                               \
    __m512 s = acc[0];                                                \
    for (int i = 1; i < RATE_CHAINS; i++) s = _mm512_add_ps(s, acc[i]); \
    __asm__ volatile("" : : "v"(s));                                  \
    return t

DL_AVX512_BF16 static double time_dpbf16(int64_t rounds) {
    const __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f803f80), y = (__m512bh)_mm512_set1_epi32(0x3c003c00);
    TIME_CHAINS(rounds, acc[i] = _mm512_dpbf16_ps(acc[i], x, y));
}

DL_AVX512 static double time_fma(int64_t rounds) {
    const __m512 x = _mm512_set1_ps(1.0f), y = _mm512_set1_ps(0x1p-7f);
    TIME_CHAINS(rounds, acc[i] = _mm512_fmadd_ps(x, y, acc[i]));
}
#undef TIME_CHAINS

static double rate_ratio;
static pthread_once_t rate_once = PTHREAD_ONCE_INIT;

// Each instruction's best time over 7 alternating runs of 100,000 rounds (1.2 M instructions, about 1 ms of
// VDPBF16PS where it is slow), so a run that another process interrupts is outvoted. A VDPBF16PS does 32
// multiply-adds, an FMA 16.
static void measure_rate_ratio(void) {
    if (!dl_has_bf16_dot()) { rate_ratio = 0; return; }
    const int64_t rounds = 100000;
    double bf = 1e30, f = 1e30;
    (void)time_dpbf16(rounds / 10); (void)time_fma(rounds / 10);  // warm up: the core's 512-bit units, its clock
    for (int k = 0; k < 7; k++) {
        const double a = time_dpbf16(rounds), b = time_fma(rounds);
        if (a < bf) bf = a;
        if (b < f) f = b;
    }
    rate_ratio = bf > 0 ? (32.0 / bf) / (16.0 / f) : 0;
}

double dl_bf16_dot_rate_ratio(void) {
    pthread_once(&rate_once, measure_rate_ratio);
    return rate_ratio;
}

// Rows of A as bf16 pairs, kp_count pairs per row (a zero pair member past an odd K).
DL_AVX512_BF16 static void convert_rows(const float *A, int64_t lda, int64_t rows, int64_t K, uint16_t *dst, int64_t ld) {
    for (int64_t r = 0; r < rows; r++) {
        const float *a = A + r * lda;
        uint16_t *d = dst + r * ld;
        int64_t k = 0;
        for (; k + 32 <= K; k += 32) {
            __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(a + k + 16), _mm512_loadu_ps(a + k));
            _mm512_storeu_si512((void *)(d + k), (__m512i)v);
        }
        for (; k < K; k++) d[k] = dl_bf16_round(a[k]);
        if (K % 2) d[K] = 0;
    }
}

// R rows (R <= MR) of converted A (ld apart) x one panel over kp_count pairs; ncols (<= 32) columns stored.
DL_AVX512_BF16 static inline __attribute__((always_inline))
void tile(const int R, const uint16_t *a, int64_t ld, const uint16_t *panel, int64_t kp_count, float *c, int64_t ldc,
          int64_t ncols, int accumulate) {
    __m512 acc0[MR], acc1[MR];
    for (int r = 0; r < R; r++) acc0[r] = acc1[r] = _mm512_setzero_ps();
    for (int64_t kp = 0; kp < kp_count; kp++) {
        const __m512bh b0 = (__m512bh)_mm512_loadu_si512((const void *)(panel + kp * 2 * PANEL));
        const __m512bh b1 = (__m512bh)_mm512_loadu_si512((const void *)(panel + kp * 2 * PANEL + PANEL));
        for (int r = 0; r < R; r++) {
            int32_t pair;
            memcpy(&pair, a + r * ld + 2 * kp, 4);
            const __m512bh av = (__m512bh)_mm512_set1_epi32(pair);
            acc0[r] = _mm512_dpbf16_ps(acc0[r], av, b0);
            acc1[r] = _mm512_dpbf16_ps(acc1[r], av, b1);
        }
    }
    const __mmask16 m0 = ncols >= 16 ? 0xffff : (__mmask16)((1u << ncols) - 1);
    const __mmask16 m1 = ncols >= 32 ? 0xffff : ncols <= 16 ? 0 : (__mmask16)((1u << (ncols - 16)) - 1);
    for (int r = 0; r < R; r++) {
        float *y = c + r * ldc;
        __m512 v0 = acc0[r], v1 = acc1[r];
        if (accumulate) {
            v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, y));
            v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, y + 16));
        }
        _mm512_mask_storeu_ps(y, m0, v0);
        _mm512_mask_storeu_ps(y + 16, m1, v1);
    }
}

// `rows` rows of converted A (ld apart) x one panel's chunk of `pairs` pairs: MR-row tiles, then the tail.
DL_AVX512_BF16 static inline __attribute__((always_inline))
void tiles(int64_t rows, const uint16_t *a, int64_t ld, const uint16_t *panel, int64_t pairs, float *c, int64_t ldc,
           int64_t ncols, int accumulate) {
    int64_t r = 0;
    for (; r + MR <= rows; r += MR) tile(MR, a + r * ld, ld, panel, pairs, c + r * ldc, ldc, ncols, accumulate);
    switch (rows - r) {
    case 0: break;
#define TAIL(R) case R: tile(R, a + r * ld, ld, panel, pairs, c + r * ldc, ldc, ncols, accumulate); break;
    TAIL(1) TAIL(2) TAIL(3) TAIL(4) TAIL(5) TAIL(6) TAIL(7)
#undef TAIL
    }
}

typedef struct {
    int64_t M, N, K, lda, ldc;
    const float *A;
    const uint16_t *Bp;
    float *C;
    int accumulate;
} gemm_ctx;

static _Thread_local uint16_t *tl_rows;

// Row block b (MB rows): for each chunk of KC pairs, the block's A columns converted once, then every
// panel's chunk (KC x 128 bytes, 16 KB, L1-resident across the block's tiles) against them; the first
// chunk stores (or adds to C when accumulating), the later ones add.
DL_AVX512_BF16 static void row_blocks(void *vctx, int64_t b0, int64_t b1) {
    const gemm_ctx *c = (const gemm_ctx *)vctx;
    const int64_t kp_count = (c->K + 1) / 2, panels = (c->N + PANEL - 1) / PANEL;
    if (!tl_rows) {
        size_t bytes = (size_t)MB * 2 * KC * sizeof(uint16_t);
        tl_rows = (uint16_t *)aligned_alloc(64, bytes);
        if (!tl_rows) dl_fatal_alloc("the bf16 product's row buffer", bytes);
    }
    for (int64_t b = b0; b < b1; b++) {
        const int64_t m0 = b * MB, rows = c->M - m0 < MB ? c->M - m0 : MB;
        for (int64_t kc = 0; kc < kp_count; kc += KC) {
            const int64_t pairs = kp_count - kc < KC ? kp_count - kc : KC, ld = 2 * pairs;
            const int64_t k0 = 2 * kc, kn = c->K - k0 < ld ? c->K - k0 : ld;
            convert_rows(c->A + m0 * c->lda + k0, c->lda, rows, kn, tl_rows, ld);
            const int add = kc > 0 || c->accumulate;
            for (int64_t p = 0; p < panels; p++) {
                const uint16_t *panel = c->Bp + (p * kp_count + kc) * 2 * PANEL;
                const int64_t n0 = p * PANEL, ncols = c->N - n0 < PANEL ? c->N - n0 : PANEL;
                tiles(rows, tl_rows, ld, panel, pairs, c->C + m0 * c->ldc + n0, c->ldc, ncols, add);
            }
        }
    }
}

void dl_gemm_bf16(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const uint16_t *Bp,
                  float *C, int64_t ldc, int accumulate) {
    if (M <= 0 || N <= 0) return;
    if (!dl_has_bf16_dot()) { dl_gemm_bf16_ref(M, N, K, A, lda, Bp, C, ldc, accumulate); return; }
    if (K <= 0) { // an empty sum
        for (int64_t m = 0; m < M; m++)
            if (!accumulate) memset(C + m * ldc, 0, (size_t)N * sizeof(float));
        return;
    }
    gemm_ctx c = { M, N, K, lda, ldc, A, Bp, C, accumulate };
    dl_parallel_for((M + MB - 1) / MB, 1, row_blocks, &c);
}

// Inference's products (y = x · Wᵀ, W packed once): the rows of A are converted once per call (on the calling
// thread, into its own buffer, grown to the largest call and then reused) and the work is split over the
// panels, so that the few rows of a decode step still use every thread. Every output's sum runs over the same
// chunks of KC pairs in the same order whatever M and however the panels are split, so a row's result never
// depends on the other rows (batch invariance).
typedef struct {
    int64_t M, N, K, ld, ldc;
    const uint16_t *a;
    const uint16_t *Bp;
    float *C;
    dl_pf_plan pf;       // the prefetch plan (no spans: none)
} mm_ctx;

DL_AVX512_BF16 static void panel_range(void *vctx, int64_t p0, int64_t p1) {
    const mm_ctx *c = (const mm_ctx *)vctx;
    const int64_t kp_count = (c->K + 1) / 2, ld = c->ld;
    // This task's share of the prefetch plan, a step per chunk of pairs.
    dl_pf f = dl_pf_share(&c->pf, p0, p1, (c->N + PANEL - 1) / PANEL, (p1 - p0) * ((kp_count + KC - 1) / KC));
    for (int64_t p = p0; p < p1; p++) {
        const int64_t n0 = p * PANEL, ncols = c->N - n0 < PANEL ? c->N - n0 : PANEL;
        float *cp = c->C + n0;
        for (int64_t kc = 0; kc < kp_count; kc += KC) {
            const int64_t pairs = kp_count - kc < KC ? kp_count - kc : KC;
            const uint16_t *panel = c->Bp + (p * kp_count + kc) * 2 * PANEL;
            dl_pf_step(&f);
            tiles(c->M, c->a + 2 * kc, ld, panel, pairs, cp, c->ldc, ncols, kc > 0);
        }
    }
}

static _Thread_local void *tl_converted;
static _Thread_local int64_t tl_converted_bytes;

void dl_matmul_bf16(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const uint16_t *Bp, float *C, int64_t ldc,
                    const dl_span *prefetch, int64_t nprefetch) {
    if (M <= 0 || N <= 0) return;
    if (!dl_has_bf16_dot() || K <= 0) { dl_gemm_bf16_ref(M, N, K, A, lda, Bp, C, ldc, 0); return; }
    const int64_t ld = (K + 1) / 2 * 2;
    uint16_t *converted = (uint16_t *)dl_grow_buffer(&tl_converted, &tl_converted_bytes, M * ld * (int64_t)sizeof(uint16_t),
                                                     "the bf16 product's converted rows");
    convert_rows(A, lda, M, K, converted, ld);
    mm_ctx c = { M, N, K, ld, ldc, converted, Bp, C, dl_pf_plan_of(prefetch, nprefetch) };
    dl_parallel_for((N + PANEL - 1) / PANEL, 1, panel_range, &c);
}
#else
int dl_has_bf16_dot(void) { return 0; }
double dl_bf16_dot_rate_ratio(void) { return 0; }
void dl_matmul_bf16(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const uint16_t *Bp, float *C, int64_t ldc,
                    const dl_span *prefetch, int64_t nprefetch) {
    (void)prefetch; (void)nprefetch;
    dl_gemm_bf16_ref(M, N, K, A, lda, Bp, C, ldc, 0);
}
void dl_gemm_bf16(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const uint16_t *Bp,
                  float *C, int64_t ldc, int accumulate) {
    dl_gemm_bf16_ref(M, N, K, A, lda, Bp, C, ldc, accumulate);
}
#endif
