// bf16 products straight from quantized weights (Q4_0, Q4_1, Q8_0): y = x · Wᵀ with W's integer codes fed to
// AVX-512 BF16's VDPBF16PS as exact bf16 values and the block scales applied in f32, so a decode step reads
// the checkpoint's bytes per weight (0.625 for Q4_1, 1.0625 for Q8_0) rather than a dense bf16 copy's 2.
//
// A Q8_0 block holds 32 weights w = d·q (q in -127..127, exact in bf16); for one output column and block,
//     Σ_k bf16(x_k)·w_k = d · Σ_k bf16(x_k)·q_k                      (acc = fma(T, d, acc))
// A Q4_1 block holds w = d·q + m (q in 0..15). Its codes go in as the bf16 values 1 + q/16 (bits
// 0x3F80 | q << 3: a mask, a shift and an OR from the nibble, no table), so T = Σ_k bf16(x_k)·(1 + q_k/16) and
//     Σ_k bf16(x_k)·w_k = 16d · T + (m − 16d) · sx                   (acc = fma(T, 16d, acc); fma(m', sx, acc))
// with sx the block's sum of the rounded activations (once per row) and m' = m − 16d rounded to f32 once. A
// Q4_0 block (w = d·(q − 8)) is the same with m' = −24d, exact. T
// on VDPBF16PS (products exact, sums f32). The weights are therefore used as the checkpoint defines them up
// to one f32 rounding of m' (the f32 kernels round d·q + m twice); the activations are rounded to bf16 (8
// significant bits per value, finer than the Q8_1 blocks llama.cpp quantizes activations to).
//
// Packed layout (dl_pack_q_bf16): panels of 32 output columns; per panel, per block of 32 k, a record
//   Q4_0, Q4_1: d[32] f16, m[32] f16 (zero for Q4_0), then 8 steps of 64 bytes, one per two pairs of k (kp = 2s, 2s + 1): 16-bit
//         word j holds in bits 0-3 / 4-7 / 8-11 / 12-15 the codes of operand element j of (kp 2s, columns
//         0-15), (2s, 16-31), (2s+1, 0-15), (2s+1, 16-31); element j of an operand is column j/2 (+16) at
//         k = 2·kp + j%2                                                                       (640 bytes)
//   Q8_0: d[32] f16, then 16 steps of 64 bytes, one per pair kp: byte j < 32 is column j/2's code at
//         k = 2·kp + j%2, byte 32 + j column 16 + j/2's                                         (1088 bytes)
// so that a step widens into the VDPBF16PS operands whose 32-bit lane n is column n's pair (16 + n for the
// second): a Q4 step is one 64-byte load and two integer ops per operand; a Q8 step is sign-extensions and
// conversions.
//
// Batch invariance: every row count runs the same register tile (1-6 rows; the rows split into tiles of
// near-equal height) decoding each step in registers (measured faster than decoding a chunk once into an L1
// buffer and re-reading it, at every batch from 4 to 128 rows, for the Q4 codes). Q8_0's widening costs 2.5×
// a Q4 step's, so from two row tiles on (7+ rows) a chunk's Q8_0 operands are widened once into an L1 buffer
// that every tile loads: the same operand values, so the same sums. Each output is a lane whose sum sees the
// same operations in the same order (pairs in order within a block, then
// acc = fma(T, d', acc), acc = fma(m', sx, acc), blocks in order), so a row's result never depends on how many
// rows run with it or how the panels are split over threads. dl_matmul_q_bf16_ref is the portable twin
// (the same per-block formula; sums in another order, so it agrees to f32 rounding).
#include "ckernels.h"
#include "simd.h"
#include "fatal.h"
#include "prefetch.h"
#include <stdlib.h>
#include <string.h>

enum { QP = 32, QB = 32, QKP = QB / 2 };  // columns per panel, k per block, pair steps per block

// Q4_0 and Q4_1 share the nibble layout (Q4_0's min slot stays zero); Q8_0 has bytes.
static inline int q_nibbles(int type) { return type == DL_Q4_1 || type == DL_Q4_0; }
static inline int q_record_bytes(int type) { return q_nibbles(type) ? 64 + 64 + QKP * 32 : 64 + QKP * 64; }

int64_t dl_q_bf16_bytes(int type, int64_t K, int64_t N) {
    if ((type != DL_Q4_0 && type != DL_Q4_1 && type != DL_Q8_0) || K % QB || K <= 0 || N <= 0) return -1;
    return (N + QP - 1) / QP * (K / QB) * q_record_bytes(type);
}

// Where the code of column c (0..31) at k (0..31) sits in a record: byte offset and shift (Q4) or byte (Q8).
static inline void q_slot(int type, int c, int k, int *byte, int *shift) {
    const int kp = k / 2, j = 2 * (c % 16) + k % 2;
    if (q_nibbles(type)) {
        const int nib = (kp % 2) * 2 + (c >= 16);  // 0..3 within the word
        *byte = 128 + (kp / 2) * 64 + 2 * j + nib / 2;
        *shift = (nib % 2) * 4;
    } else {
        *byte = 64 + kp * 64 + (c >= 16 ? 32 : 0) + j;
        *shift = 0;
    }
}

typedef struct {
    int type;
    const uint8_t *w;
    int64_t row_bytes, K, N;
    uint8_t *dst;
} qpack_ctx;

// Panels [p0, p1): each block of each of the panel's 32 rows into its record.
static void qpack_panels(void *vctx, int64_t p0, int64_t p1) {
    const qpack_ctx *x = (const qpack_ctx *)vctx;
    const int type = x->type;
    const int64_t nblocks = x->K / QB;
    const int rec = q_record_bytes(type), src_block = type == DL_Q4_1 ? 20 : type == DL_Q4_0 ? 18 : 34;
    const int qs = type == DL_Q4_1 ? 4 : 2;  // where the block's codes start
    for (int64_t p = p0; p < p1; p++)
        for (int64_t b = 0; b < nblocks; b++) {
            uint8_t *r = x->dst + (p * nblocks + b) * rec;
            memset(r, 0, (size_t)rec);
            for (int c = 0; c < QP; c++) {
                const int64_t n = p * QP + c;
                if (n >= x->N) continue;  // padding columns: zero codes and scales
                const uint8_t *blk = x->w + n * x->row_bytes + b * src_block;
                memcpy(r + 2 * c, blk, 2);                               // d
                if (type == DL_Q4_1) memcpy(r + 64 + 2 * c, blk + 2, 2); // m
                for (int k = 0; k < QB; k++) {
                    int byte, shift;
                    q_slot(type, c, k, &byte, &shift);
                    if (q_nibbles(type)) r[byte] |= (uint8_t)((k < 16 ? blk[qs + k] & 0x0f : blk[qs + k - 16] >> 4) << shift);
                    else r[byte] = blk[qs + k];
                }
            }
        }
}

// W (N rows of K weights in the checkpoint's block layout, row stride row_bytes) into panels, split over the
// panels on the kernel thread pool.
void dl_pack_q_bf16(int type, const uint8_t *w, int64_t row_bytes, int64_t K, int64_t N, uint8_t *dst) {
    qpack_ctx x = { type, w, row_bytes, K, N, dst };
    dl_parallel_for((N + QP - 1) / QP, 1, qpack_panels, &x);
}

static inline float half(const uint8_t *p) {
    const uint16_t h = (uint16_t)(p[0] | p[1] << 8);
    float f;
    dl_f16_to_f32(&h, &f, 1);
    return f;
}

// The value a code goes in as: 1 + q/16 for Q4_0 and Q4_1, q for Q8_0.
static inline float q_operand(int type, const uint8_t *r, int c, int k) {
    int byte, shift;
    q_slot(type, c, k, &byte, &shift);
    if (q_nibbles(type)) return 1.0f + (float)((r[byte] >> shift) & 0x0f) / 16.0f;
    return (float)(int8_t)r[byte];
}

void dl_matmul_q_bf16_ref(int type, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const uint8_t *Wp,
                          float *C, int64_t ldc) {
    const int64_t nblocks = K / QB;
    const int rec = q_record_bytes(type);
    for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
            const int64_t p = n / QP;
            const int c = (int)(n % QP);
            float acc = 0;
            for (int64_t b = 0; b < nblocks; b++) {
                const uint8_t *r = Wp + (p * nblocks + b) * rec;
                float dot = 0, sx = 0;
                for (int k = 0; k < QB; k++) {
                    const float a = dl_bf16_value(dl_bf16_round(A[m * lda + b * QB + k]));
                    dot += a * q_operand(type, r, c, k);
                    sx += a;
                }
                if (q_nibbles(type)) {
                    const float d = half(r + 2 * c), d16 = 16.0f * d;
                    const float mp = type == DL_Q4_1 ? half(r + 64 + 2 * c) - d16 : -24.0f * d;
                    acc = __builtin_fmaf(dot, d16, acc);
                    acc = __builtin_fmaf(mp, sx, acc);
                } else {
                    acc = __builtin_fmaf(dot, half(r + 2 * c), acc);
                }
            }
            C[m * ldc + n] = acc;
        }
}

#if defined(__x86_64__)
#include <immintrin.h>
#define DL_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

// Rows per register tile (2 accumulators and 2 block sums each); blocks per chunk, whose codes stay in L1
// while the row tiles pass over them.
enum { QMR = 6, QCHUNK = 8 };

// Converted rows: per row, K bf16 values (pairs read as uint32), and per row K/32 block sums of the rounded
// values (f32, one fixed order).
DL_AVX512_BF16 static void convert_row(const float *a, int64_t K, uint16_t *dst, float *sums) {
    for (int64_t b = 0; b < K / QB; b++) {
        const __m512 lo = _mm512_loadu_ps(a + b * QB), hi = _mm512_loadu_ps(a + b * QB + 16);
        const __m512bh v = _mm512_cvtne2ps_pbh(hi, lo);
        _mm512_storeu_si512((void *)(dst + b * QB), (__m512i)v);
        const __m512i vi = (__m512i)v;
        const __m512 rl = _mm512_castsi512_ps(_mm512_slli_epi32(vi, 16));
        const __m512 rh = _mm512_castsi512_ps(_mm512_and_si512(vi, _mm512_set1_epi32((int)0xffff0000u)));
        sums[b] = _mm512_reduce_add_ps(_mm512_add_ps(rl, rh));
    }
}

// (v & 0x0078) | 0x3F80 per 16-bit word: the nibble at bits 3-6 as the bf16 value 1 + q/16.
#define Q4_OPERAND(v) ((__m512bh)_mm512_ternarylogic_epi32((v), _mm512_set1_epi16(0x78), _mm512_set1_epi16(0x3f80), 0xea))

DL_AVX512_BF16 static inline __attribute__((always_inline)) __m512bh widen8(const uint8_t *p) {
    const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
    const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 16))));
    return _mm512_cvtne2ps_pbh(hi, lo);
}

// A nibble block's scales as the tiles apply them, columns 0-15 and 16-31: d' = 16d, and m' = m − 16d (Q4_1)
// or −24d (Q4_0, whose w = d·(q − 8)); 16d and 24d are exact in f32, m − 16d is rounded once.
DL_AVX512_BF16 static inline __attribute__((always_inline))
void nibble_scales(int type, const uint8_t *r, __m512 *d0, __m512 *d1, __m512 *m0, __m512 *m1) {
    const __m512 h0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)r));
    const __m512 h1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(r + 32)));
    *d0 = _mm512_mul_ps(_mm512_set1_ps(16.0f), h0);
    *d1 = _mm512_mul_ps(_mm512_set1_ps(16.0f), h1);
    if (type == DL_Q4_1) {
        *m0 = _mm512_sub_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(r + 64))), *d0);
        *m1 = _mm512_sub_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(r + 96))), *d1);
    } else {
        *m0 = _mm512_mul_ps(_mm512_set1_ps(-24.0f), h0);
        *m1 = _mm512_mul_ps(_mm512_set1_ps(-24.0f), h1);
    }
}

typedef struct {
    int type;
    int64_t M, N, K, ldc;
    const uint16_t *a;    // converted rows, K values each
    const float *sums;    // K/32 per row
    const uint8_t *Wp;
} qmm_ctx;

// A row's pair of activations at pair step kp, broadcast to every lane.
DL_AVX512_BF16 static inline __attribute__((always_inline)) __m512bh pair_at(const uint16_t *row, int kp) {
    int32_t v;
    memcpy(&v, row + 2 * kp, 4);
    return (__m512bh)_mm512_set1_epi32(v);
}
#define PAIR(i, kp) pair_at(arow[i], (kp))

typedef struct {
    qmm_ctx q;
    float *C;
    dl_pf_plan pf;       // the prefetch plan (no spans: none)
} qmm_call;

// R rows from row0 x panel p over blocks [blk0, blk1): accumulators from C (zero at block 0), back to C; each
// pair step decoded in registers from the records.
DL_AVX512_BF16 static inline __attribute__((always_inline))
void qrows(const int R, const int type, const qmm_ctx *c, float *C, int64_t row0, int64_t p, int64_t blk0, int64_t blk1,
           const uint8_t *dec, dl_pf *f) {
    const int64_t nblocks = c->K / QB, n0 = p * QP, ncols = c->N - n0 < QP ? c->N - n0 : QP;
    const int rec = q_record_bytes(type);
    const __mmask16 k0 = ncols >= 16 ? 0xffff : (__mmask16)((1u << ncols) - 1);
    const __mmask16 k1 = ncols >= 32 ? 0xffff : ncols <= 16 ? 0 : (__mmask16)((1u << (ncols - 16)) - 1);
    __m512 acc0[QMR], acc1[QMR];
    for (int i = 0; i < R; i++) {
        float *y = C + (row0 + i) * c->ldc + n0;
        acc0[i] = blk0 ? _mm512_maskz_loadu_ps(k0, y) : _mm512_setzero_ps();
        acc1[i] = blk0 ? _mm512_maskz_loadu_ps(k1, y + 16) : _mm512_setzero_ps();
    }
    for (int64_t b = blk0; b < blk1; b++) {
        dl_pf_step(f);
        const uint8_t *r = c->Wp + (p * nblocks + b) * rec;
        const uint16_t *arow[QMR];
        for (int i = 0; i < R; i++) arow[i] = c->a + (row0 + i) * c->K + b * QB;
        __m512 t0[QMR], t1[QMR];
        for (int i = 0; i < R; i++) t0[i] = t1[i] = _mm512_setzero_ps();
        if (q_nibbles(type)) {
            for (int s = 0; s < QKP / 2; s++) {
                const __m512i w = _mm512_loadu_si512((const void *)(r + 128 + s * 64));
                const __m512bh w00 = Q4_OPERAND(_mm512_slli_epi16(w, 3)), w01 = Q4_OPERAND(_mm512_srli_epi16(w, 1));
                for (int i = 0; i < R; i++) {
                    const __m512bh av = PAIR(i, 2 * s);
                    t0[i] = _mm512_dpbf16_ps(t0[i], av, w00);
                    t1[i] = _mm512_dpbf16_ps(t1[i], av, w01);
                }
                const __m512bh w10 = Q4_OPERAND(_mm512_srli_epi16(w, 5)), w11 = Q4_OPERAND(_mm512_srli_epi16(w, 9));
                for (int i = 0; i < R; i++) {
                    const __m512bh av = PAIR(i, 2 * s + 1);
                    t0[i] = _mm512_dpbf16_ps(t0[i], av, w10);
                    t1[i] = _mm512_dpbf16_ps(t1[i], av, w11);
                }
            }
            __m512 d0, d1, m0, m1;
            nibble_scales(type, r, &d0, &d1, &m0, &m1);
            for (int i = 0; i < R; i++) {
                const __m512 sx = _mm512_set1_ps(c->sums[(row0 + i) * nblocks + b]);
                acc0[i] = _mm512_fmadd_ps(m0, sx, _mm512_fmadd_ps(t0[i], d0, acc0[i]));
                acc1[i] = _mm512_fmadd_ps(m1, sx, _mm512_fmadd_ps(t1[i], d1, acc1[i]));
            }
        } else {
// Pair step kp of a Q8_0 block: operands W0 (columns 0-15) and W1 (16-31) into every row's two sums.
#define Q8_STEP(kp, W0, W1)                                         \
    do {                                                            \
        const __m512bh w0 = (W0), w1 = (W1);                        \
        for (int i = 0; i < R; i++) {                               \
            const __m512bh av = PAIR(i, (kp));                      \
            t0[i] = _mm512_dpbf16_ps(t0[i], av, w0);                \
            t1[i] = _mm512_dpbf16_ps(t1[i], av, w1);                \
        }                                                           \
    } while (0)
            if (dec) {
                // The chunk's operands, widened once by q8_decode_chunk (the same values widen8 gives).
                const uint8_t *dk = dec + (b - blk0) * (QKP * 128);
                for (int kp = 0; kp < QKP; kp++)
                    Q8_STEP(kp, (__m512bh)_mm512_load_si512((const void *)(dk + kp * 128)),
                            (__m512bh)_mm512_load_si512((const void *)(dk + kp * 128 + 64)));
            } else {
                for (int kp = 0; kp < QKP; kp++) Q8_STEP(kp, widen8(r + 64 + kp * 64), widen8(r + 64 + kp * 64 + 32));
            }
#undef Q8_STEP
            const __m512 d0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)r));
            const __m512 d1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(r + 32)));
            for (int i = 0; i < R; i++) {
                acc0[i] = _mm512_fmadd_ps(t0[i], d0, acc0[i]);
                acc1[i] = _mm512_fmadd_ps(t1[i], d1, acc1[i]);
            }
        }
    }
    for (int i = 0; i < R; i++) {
        float *y = C + (row0 + i) * c->ldc + n0;
        _mm512_mask_storeu_ps(y, k0, acc0[i]);
        _mm512_mask_storeu_ps(y + 16, k1, acc1[i]);
    }
}

#define QROWS_SWITCH(T, ROWS, ...)                      \
    switch (ROWS) {                                     \
    case 1: qrows(1, T, __VA_ARGS__); break;            \
    case 2: qrows(2, T, __VA_ARGS__); break;            \
    case 3: qrows(3, T, __VA_ARGS__); break;            \
    case 4: qrows(4, T, __VA_ARGS__); break;            \
    case 5: qrows(5, T, __VA_ARGS__); break;            \
    case 6: qrows(6, T, __VA_ARGS__); break;            \
    }

// Q8_0 blocks [b0, b1) of panel p widened to their VDPBF16PS operands (128 bytes per pair step: columns 0-15,
// then 16-31), for the row tiles to load instead of each widening them again.
DL_AVX512_BF16 static void q8_decode_chunk(const qmm_ctx *c, int64_t p, int64_t b0, int64_t b1, uint8_t *dst) {
    const int64_t nblocks = c->K / QB;
    const int rec = q_record_bytes(DL_Q8_0);
    for (int64_t b = b0; b < b1; b++) {
        const uint8_t *r = c->Wp + (p * nblocks + b) * rec;
        uint8_t *d = dst + (b - b0) * (QKP * 128);
        for (int kp = 0; kp < QKP; kp++) {
            _mm512_store_si512((void *)(d + kp * 128), (__m512i)widen8(r + 64 + kp * 64));
            _mm512_store_si512((void *)(d + kp * 128 + 64), (__m512i)widen8(r + 64 + kp * 64 + 32));
        }
    }
}

// Row tiles from which a Q8_0 chunk is widened once into an L1 buffer rather than in registers by every tile:
// its conversions (two sign extensions, two int→f32 and a bf16 pack per 32 codes) are what a Q8_0 step spends
// beyond a Q4 one, and a batch of 7+ rows runs 2+ tiles over each chunk (docs/design/merge-precision.md).
enum { Q8_SHARED_DECODE_TILES = 2 };
static _Thread_local uint8_t tl_q8_chunk[QCHUNK * QKP * 128] __attribute__((aligned(64)));

// Panels [p0, p1): per chunk of QCHUNK blocks (its codes stay in L1), every row tile over it; the rows split
// into tiles of near-equal height, at most QMR each.
DL_AVX512_BF16 static void q_panels(void *vctx, int64_t p0, int64_t p1) {
    const qmm_call *call = (const qmm_call *)vctx;
    const qmm_ctx *c = &call->q;
    const int64_t nblocks = c->K / QB, tiles = (c->M + QMR - 1) / QMR;
    const int shared = c->type == DL_Q8_0 && tiles >= Q8_SHARED_DECODE_TILES;
    // This task's share of the prefetch plan, a step per block of every tile.
    dl_pf f = dl_pf_share(&call->pf, p0, p1, (c->N + QP - 1) / QP, (p1 - p0) * nblocks * tiles);
    for (int64_t p = p0; p < p1; p++)
        for (int64_t b = 0; b < nblocks; b += QCHUNK) {
            const int64_t be = nblocks - b < QCHUNK ? nblocks : b + QCHUNK;
            const uint8_t *dec = NULL;
            if (shared) {
                q8_decode_chunk(c, p, b, be, tl_q8_chunk);
                dec = tl_q8_chunk;
            }
            for (int64_t t = 0; t < tiles; t++) {
                const int64_t r0 = t * c->M / tiles, r1 = (t + 1) * c->M / tiles;
                if (c->type == DL_Q4_1) { QROWS_SWITCH(DL_Q4_1, r1 - r0, c, call->C, r0, p, b, be, NULL, &f) }
                else if (c->type == DL_Q4_0) { QROWS_SWITCH(DL_Q4_0, r1 - r0, c, call->C, r0, p, b, be, NULL, &f) }
                else { QROWS_SWITCH(DL_Q8_0, r1 - r0, c, call->C, r0, p, b, be, dec, &f) }
            }
        }
}

static _Thread_local void *tl_rows, *tl_sums;
static _Thread_local int64_t tl_rows_bytes, tl_sums_bytes;

void dl_matmul_q_bf16(int type, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const uint8_t *Wp,
                      float *C, int64_t ldc, const dl_span *prefetch, int64_t nprefetch) {
    if (M <= 0 || N <= 0) return;
    if (!dl_has_bf16_dot() || K <= 0) { dl_matmul_q_bf16_ref(type, M, N, K, A, lda, Wp, C, ldc); return; }
    uint16_t *rows = (uint16_t *)dl_grow_buffer(&tl_rows, &tl_rows_bytes, M * K * (int64_t)sizeof(uint16_t),
                                                "the bf16 product's converted rows");
    float *sums = (float *)dl_grow_buffer(&tl_sums, &tl_sums_bytes, M * (K / QB) * (int64_t)sizeof(float),
                                          "the bf16 product's block sums");
    for (int64_t m = 0; m < M; m++) convert_row(A + m * lda, K, rows + m * K, sums + m * (K / QB));
    qmm_call call = { { type, M, N, K, ldc, rows, sums, Wp }, C, dl_pf_plan_of(prefetch, nprefetch) };
    dl_parallel_for((N + QP - 1) / QP, 1, q_panels, &call);
}
#else
void dl_matmul_q_bf16(int type, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const uint8_t *Wp,
                      float *C, int64_t ldc, const dl_span *prefetch, int64_t nprefetch) {
    (void)prefetch; (void)nprefetch;
    dl_matmul_q_bf16_ref(type, M, N, K, A, lda, Wp, C, ldc);
}
#endif
