// Matmul over quantized (or half-precision) weights with f32 activations: dequantize a group of 4 weight
// rows into per-thread scratch (it stays in L1), then run register-tiled FMA micro-kernels over it.
//
//   for each token block TB (X block stays in L2):
//     for each group of 4 rows (this thread's share):
//       Wf[4][K] = dequantize(W[rows])                  // d*q (+m), exactly as the reference does
//       for tokens t in TB, 4 at a time:                // 4x4 tile: 16 accumulators of 16 lanes
//         acc[r][t] += Wf[r][k:k+16] * X[t][k:k+16]     // k = 0, 16, 32, ...
//       Y[t][r] = reduce(acc[r][t])                     // fixed tree over the 16 lanes
//
// Every (r, t) pair owns one accumulator and sees the same operations in the same order in every tile
// shape (4x4, 4x1, 1x1), so results do not depend on the batch or the thread split. A single token
// (batch-1 decode) skips the panel: each row's blocks are dequantized in registers to the same values and
// fed to the same FMA order (fused_tile), so it too gives those bits (ReferenceOps.matmulLanes is the twin).
#include "ckernels.h"
#include "simd.h"
#include "fatal.h"
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

enum { ROWS_PER_GROUP = 4, TOKEN_BLOCK = 64 };
// The AVX-512 fused kernels take products of up to FUSED_TOKENS tokens in one pass (the largest NT of
// fused_tokens_typed's switch); larger ones dequantize into the panel, whose 4x4 tiles reuse each converted
// row over 4 tokens (measured crossover: docs/design/core-engine.md, "Small decode batches").
enum { FUSED_TOKENS = 8 };
// Blocks whose scales fused_tile converts ahead of its FMA loop (a stack buffer of 8 rows x 2 floats each); a
// multiple of chunk_scales' groups (6 Q4_1 blocks, 4 Q8_0), so SmolLM2's 18 and 48 blocks per row leave few tails.
enum { SCALE_CHUNK = 24 };
// The AVX2 twins take up to FUSED_TOKENS2, 4 at a time (measured: docs/design/core-engine.md, as above).
enum { FUSED_TOKENS2 = 8 };

// ------------------------------------------------------------------ dequantization of one row

static inline float half_to_float(uint16_t h) {
    float f;
    dl_f16_to_f32(&h, &f, 1);
    return f;
}

static void dequant_row_scalar(int type, const uint8_t *p, float *dst, int64_t n) {
    switch (type) {
    case DL_Q4_0:
        for (int64_t b = 0; b < n / 32; b++, p += 18) {
            float d = half_to_float((uint16_t)(p[0] | p[1] << 8));
            for (int j = 0; j < 16; j++) {
                dst[b * 32 + j] = d * (float)((p[2 + j] & 0x0f) - 8);
                dst[b * 32 + j + 16] = d * (float)((p[2 + j] >> 4) - 8);
            }
        }
        return;
    case DL_Q4_1:
        for (int64_t b = 0; b < n / 32; b++, p += 20) {
            float d = half_to_float((uint16_t)(p[0] | p[1] << 8)), m = half_to_float((uint16_t)(p[2] | p[3] << 8));
            for (int j = 0; j < 16; j++) {
                float lo = d * (float)(p[4 + j] & 0x0f), hi = d * (float)(p[4 + j] >> 4);
                dst[b * 32 + j] = lo + m;
                dst[b * 32 + j + 16] = hi + m;
            }
        }
        return;
    case DL_Q8_0:
        for (int64_t b = 0; b < n / 32; b++, p += 34) {
            float d = half_to_float((uint16_t)(p[0] | p[1] << 8));
            for (int j = 0; j < 32; j++) dst[b * 32 + j] = d * (float)(int8_t)p[2 + j];
        }
        return;
    default:
        dl_dequantize_row(type, p, dst, n);
        return;
    }
}

#if defined(__x86_64__)

// Blocks 0..nb-1 of a row as the fused kernels decode them (block_slices, below), stored to the panel.
DL_AVX512_F16 static void dequant_blocks512(const int type, const uint8_t *row, float *dst, int64_t nb);

DL_AVX512_F16 static void dequant_row_avx512(int type, const uint8_t *p, float *dst, int64_t n) {
    if ((type == DL_Q4_0 || type == DL_Q4_1 || type == DL_Q8_0) && n % 32 != 0) { dequant_row_scalar(type, p, dst, n); return; }
    switch (type) {
    case DL_Q4_0: dequant_blocks512(DL_Q4_0, p, dst, n / 32); return;
    case DL_Q4_1: dequant_blocks512(DL_Q4_1, p, dst, n / 32); return;
    case DL_Q8_0: dequant_blocks512(DL_Q8_0, p, dst, n / 32); return;
    case DL_F16: {
        const uint16_t *h = (const uint16_t *)p;
        int64_t i = 0;
        for (; i + 16 <= n; i += 16) _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + i))));
        if (i < n) dl_f16_to_f32(h + i, dst + i, n - i);
        return;
    }
    case DL_BF16: { // LoRA adapters: the top half of an f32, widened and shifted (exact)
        const uint16_t *h = (const uint16_t *)p;
        int64_t i = 0;
        for (; i + 16 <= n; i += 16)
            _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(
                _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(h + i))), 16)));
        if (i < n) dl_bf16_to_f32(h + i, dst + i, n - i);
        return;
    }
    default:
        dl_dequantize_row(type, p, dst, n);
        return;
    }
}

// ------------------------------------------------------------------ AVX-512 micro-kernels


// ------------------------------------------------------------------ AVX-512 single-token kernels

// One token (batch-1 decode): dequantizing into the panel and reading it back costs more than the FMAs
// it feeds, so these kernels dequantize each 16-element slice in registers and multiply it right away.
// The slice's values are computed exactly as dequant_row_avx512 computes them and meet the token in the
// same FMA order as tile_4x1 / tile_1x1 (lane k mod 16, increasing k, the shared lane tree), so the
// results are bit-identical to the panel path: a token's outputs do not depend on the batch around it.

// 0, 1, ..., 15 as floats: the values a nibble can take.
DL_AVX512 static inline __m512 nibble_values(void) {
    return _mm512_set_ps(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
}

// Q4_1_EXACT_PRODUCT: a Q4_1 weight is d * q + m with d an f16 value (11 significant bits) and q a nibble (4
// bits), so d * q has at most 15 significant bits and is exact in f32 (f16's range times 15 stays far inside
// f32's normal range; an infinite or NaN d gives NaN or infinity either way). The reference rounds d * q, then
// d * q + m; the first rounding does nothing, so fma(d, q, m), one rounding, gives the same value in one
// instruction instead of two (QuantParityTests and MatmulDQTests check every path against the reference twin).

// The 16 values a 4-bit block's weights can take, from its scales as f32 (d, and m for Q4_1): d * (j - 8) for Q4_0
// and d * j + m for Q4_1, the same products and sums the reference computes, one multiply (Q4_1: a fused
// multiply-add, Q4_1_EXACT_PRODUCT) per block instead of per element.
DL_AVX512 static inline __attribute__((always_inline)) __m512 q4_table(const int type, float d, float m) {
    return type == DL_Q4_0
        ? _mm512_mul_ps(_mm512_set1_ps(d), _mm512_sub_ps(nibble_values(), _mm512_set1_ps(8.0f)))
        : _mm512_fmadd_ps(_mm512_set1_ps(d), nibble_values(), _mm512_set1_ps(m));
}

// The 16 nibble bytes of block b of a 4-bit row.
static inline const __m128i *q4_nibbles(const int type, const uint8_t *row, int64_t b) {
    return (const __m128i *)(row + b * (type == DL_Q4_0 ? 18 : 20) + (type == DL_Q4_0 ? 2 : 4));
}

// Block b of a 4-bit row (Q4_0: 18 bytes, Q4_1: 20) as two 16-lane slices, lo = elements 0..15, hi = 16..31: the
// block's table looked up by nibble (vpermps reads an index's low 4 bits).
DL_AVX512 static inline __attribute__((always_inline))
void q4_slices(const int type, const uint8_t *row, int64_t b, float d, float m, __m512 *lo, __m512 *hi) {
    const __m512 table = q4_table(type, d, m);
    __m512i q = _mm512_cvtepu8_epi32(_mm_loadu_si128(q4_nibbles(type, row, b)));
    *lo = _mm512_permutexvar_ps(q, table);
    *hi = _mm512_permutexvar_ps(_mm512_srli_epi32(q, 4), table);
}

// The fused kernels' lane order for 4-bit blocks: lane i of a slice holds element e(i) = 4 (i mod 4) + i / 4 of
// its 16 (a 4x4 transpose, its own inverse). The block's 16 nibble bytes are broadcast to the four 128-bit lanes
// (a load, no shuffle) and lane i shifted right by 8 (i / 4) bits, which brings byte e(i) to its low 8 bits; so
// the nibbles are widened by shifts instead of vpmovzxbd, which competes with the two table lookups for the one
// port that runs 512-bit shuffles. The token's slices are read in the same order (transposed_x) and each
// accumulator is put back in lane order before its lane sum (transposed_lanes), so every lane sums the same
// products in the same order as the panel path, and the bits are unchanged.
DL_AVX512 static inline __m512i transposed_lanes(void) {
    return _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
}

DL_AVX512 static inline __attribute__((always_inline))
void q4_slices_transposed(const int type, const uint8_t *row, int64_t b, float d, float m, __m512 *lo, __m512 *hi) {
    const __m512 table = q4_table(type, d, m);
    const __m512i shift = _mm512_set_epi32(24, 24, 24, 24, 16, 16, 16, 16, 8, 8, 8, 8, 0, 0, 0, 0);
    __m512i q = _mm512_broadcast_i32x4(_mm_loadu_si128(q4_nibbles(type, row, b)));
    *lo = _mm512_permutexvar_ps(_mm512_srlv_epi32(q, shift), table);
    *hi = _mm512_permutexvar_ps(_mm512_srlv_epi32(q, _mm512_add_epi32(shift, _mm512_set1_epi32(4))), table);
}

// The scales of block b of a row: d (converted from f16) into dm[0], and for Q4_1 m into dm[1].
DL_AVX512_F16 static inline __attribute__((always_inline))
void block_scales(const int type, const uint8_t *row, int64_t b, float *dm) {
    if (type == DL_Q4_1) {
        int32_t bits;
        memcpy(&bits, row + b * 20, 4);
        _mm_storel_pi((__m64 *)dm, _mm_cvtph_ps(_mm_cvtsi32_si128(bits)));
    } else {
        const uint8_t *p = row + b * (type == DL_Q4_0 ? 18 : 34);
        dm[0] = _cvtsh_ss((uint16_t)(p[0] | p[1] << 8));
    }
}

// The 32 weights of block b of a row as two 16-lane slices, lo = elements 0..15, hi = 16..31, from the block's
// scales as chunk_scales converts them (dm: d, and m for Q4_1; F16 blocks have none).
DL_AVX512_F16 static inline __attribute__((always_inline))
void block_slices(const int type, const uint8_t *row, int64_t b, const float *dm, __m512 *lo, __m512 *hi) {
    switch (type) {
    case DL_Q4_0:
    case DL_Q4_1:
        q4_slices(type, row, b, dm[0], dm[1], lo, hi);
        return;
    case DL_Q8_0: {
        const uint8_t *p = row + b * 34;
        const __m512 d = _mm512_set1_ps(dm[0]);
        *lo = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 2)))));
        *hi = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 18)))));
        return;
    }
    default: { // DL_F16
        const uint16_t *h = (const uint16_t *)row + b * 32;
        *lo = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)h));
        *hi = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + 16)));
        return;
    }
    }
}

// The scales of blocks b0..b0+n-1 of a 4-bit row, [d, m] per block, into dm. Q4_1 keeps each block's two f16
// scales in one dword, 5 dwords apart: six blocks' dwords are gathered from two loads by one vpermt2d and
// converted by one vcvtph2ps (per block one-by-one, a scalar move and a conversion are two more uops on the
// shuffle port the table lookups need). The values are the same conversions.
DL_AVX512_F16 static inline __attribute__((always_inline))
void chunk_scales(const int type, const uint8_t *row, int64_t b0, int n, float *dm) {
    int i = 0;
    if (type == DL_Q4_1) {
        const __m512i pick = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 25, 20, 15, 10, 5, 0);
        for (; i + 6 <= n; i += 6) {
            const int32_t *p = (const int32_t *)(row + (b0 + i) * 20);
            __m512i a = _mm512_loadu_si512(p), c = _mm512_maskz_loadu_epi32(0x3fff, p + 16);
            __m512i dms = _mm512_permutex2var_epi32(a, pick, c);
            _mm512_mask_storeu_ps(dm + i * 2, 0x0fff, _mm512_cvtph_ps(_mm512_castsi512_si256(dms)));
        }
    }
    if (type == DL_Q8_0) {
        // Q8_0: the f16 scale of block i is word 17 i; four blocks' scales from two loads (the four blocks' own bytes).
        const __m512i pick = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                              0, 0, 0, 0, 0, 0, 0, 0, 0, 51, 0, 34, 0, 17, 0, 0);
        for (; i + 4 <= n; i += 4) {
            const uint8_t *p = row + (b0 + i) * 34;
            __m512i a = _mm512_loadu_si512(p), c = _mm512_loadu_si512(p + 64);
            __m512i ds = _mm512_permutex2var_epi16(a, pick, c);
            _mm256_storeu_ps(dm + i * 2, _mm256_cvtph_ps(_mm512_castsi512_si128(ds)));
        }
    }
    for (; i < n; i++) block_scales(type, row, b0 + i, dm + i * 2);
}

// The panel's dequantization uses the same decoding as the fused kernels (the 16-entry table for Q4_0/Q4_1):
// fewer instructions per block than widening and scaling each element, and the same values by construction.
// The scales are converted a chunk at a time (chunk_scales), as in fused_tile: one thread's 16-token products
// ~10 % faster in the C driver, 32 tokens 2-3 %.
DL_AVX512_F16 static inline __attribute__((always_inline))
void dequant_blocks512_typed(const int type, const uint8_t *row, float *dst, int64_t nb) {
    float dm[SCALE_CHUNK * 2];
    for (int64_t b0 = 0; b0 < nb; b0 += SCALE_CHUNK) {
        const int n = nb - b0 < SCALE_CHUNK ? (int)(nb - b0) : SCALE_CHUNK;
        chunk_scales(type, row, b0, n, dm);
        for (int i = 0; i < n; i++) {
            const int64_t b = b0 + i;
            __m512 lo, hi;
            block_slices(type, row, b, dm + i * 2, &lo, &hi);
            _mm512_storeu_ps(dst + b * 32, lo);
            _mm512_storeu_ps(dst + b * 32 + 16, hi);
        }
    }
}

DL_AVX512_F16 static void dequant_blocks512(const int type, const uint8_t *row, float *dst, int64_t nb) {
    switch (type) {
    case DL_Q4_0: dequant_blocks512_typed(DL_Q4_0, row, dst, nb); return;
    case DL_Q4_1: dequant_blocks512_typed(DL_Q4_1, row, dst, nb); return;
    default: dequant_blocks512_typed(DL_Q8_0, row, dst, nb); return;
    }
}

// NR rows x NT tokens over K = 32·nb columns, rows row_bytes apart, tokens ldx floats apart; NR·NT ≤ 16
// accumulators. Each block's slices are made once per row and multiplied into all NT tokens, so a small
// decode batch reads and decodes the weights once, as one token does, instead of dequantizing them into the
// panel and reading them back (the panel's cost is per row, whatever the batch: at 2-8 tokens it made a
// step cost about as much per token as batch 1). One token: eight rows keep eight independent FMA chains in
// flight (one row's chain is latency-bound; eight measured ~1.3x faster than four on the Q8_0 LM head);
// several tokens bring their own chains, so fewer rows suffice (fused_tokens_typed picks NR per NT). Interleaving the rows'
// blocks defeats the hardware prefetcher (four rows read the LM head ~1.7x slower from memory than one), so
// the loop prefetches the next NR rows itself, spread over its blocks. type, NR and NT are constants at
// every call site, so the block decoding is specialised and the accumulators stay in registers.
DL_AVX512_F16 static inline __attribute__((always_inline))
void fused_tile(const int type, const int NR, const int NT, const uint8_t *w, int64_t row_bytes, int64_t nb,
                const float *x, int64_t ldx, float *y, int64_t ldy) {
    __m512 acc[16];
    for (int i = 0; i < NR * NT; i++) acc[i] = _mm512_setzero_ps();
    // Quantized blocks: the scales of SCALE_CHUNK blocks of the NR rows are converted first (chunk_scales),
    // [r][b][d, m], so the block loop broadcasts them from memory (a load) instead of converting and spreading
    // each in registers (three shuffles per block and row, a third of the loop's vector work; measured ~1.2x on
    // one thread, and the gathered conversion another ~1.2x on the Q4_1 rows and the Q8_0 LM head). 4-bit
    // blocks run in the transposed lane order (q4_slices_transposed): x comes in that order, and each
    // accumulator goes back to lane order before its lane sum.
    const int four_bit = type == DL_Q4_0 || type == DL_Q4_1, scaled = four_bit || type == DL_Q8_0;
    float scales[8 * SCALE_CHUNK * 2];
    const char *next = (const char *)w + NR * row_bytes;
    const int64_t lines = (NR * row_bytes + 63) / 64, lines_per_block = (lines + nb - 1) / nb;
    for (int64_t b0 = 0; b0 < nb; b0 += SCALE_CHUNK) {
        const int n = nb - b0 < SCALE_CHUNK ? (int)(nb - b0) : SCALE_CHUNK;
        if (scaled)
            for (int r = 0; r < NR; r++) chunk_scales(type, w + r * row_bytes, b0, n, scales + r * SCALE_CHUNK * 2);
        for (int i = 0; i < n; i++) {
            const int64_t b = b0 + i;
            if (NR > 1)
                for (int64_t j = 0; j < lines_per_block; j++) _mm_prefetch(next + (b * lines_per_block + j) * 64, _MM_HINT_T0);
            for (int r = 0; r < NR; r++) {
                __m512 lo, hi;
                const float *dm = scales + (r * SCALE_CHUNK + i) * 2;
                if (four_bit) q4_slices_transposed(type, w + r * row_bytes, b, dm[0], dm[1], &lo, &hi);
                else block_slices(type, w + r * row_bytes, b, dm, &lo, &hi);
                for (int t = 0; t < NT; t++) {
                    acc[r * NT + t] = _mm512_fmadd_ps(lo, _mm512_loadu_ps(x + t * ldx + b * 32), acc[r * NT + t]);
                    acc[r * NT + t] = _mm512_fmadd_ps(hi, _mm512_loadu_ps(x + t * ldx + b * 32 + 16), acc[r * NT + t]);
                }
            }
        }
    }
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++)
            y[t * ldy + r] = dl_lane_sum(four_bit ? _mm512_permutexvar_ps(transposed_lanes(), acc[r * NT + t]) : acc[r * NT + t]);
}

// Rows [r0, r1) x NT tokens: NR rows at a time (a constant per NT), the last r1 - r0 mod NR one at a time.
DL_AVX512_F16 static inline __attribute__((always_inline))
void fused_rows_nt(const int type, const int NR, const int NT, const uint8_t *W, int64_t row_bytes, int64_t nb,
                   const float *x, int64_t ldx, float *y, int64_t ldy, int64_t r0, int64_t r1) {
    int64_t r = r0;
    for (; r + NR <= r1; r += NR) fused_tile(type, NR, NT, W + r * row_bytes, row_bytes, nb, x, ldx, y + r, ldy);
    for (; r < r1; r++) fused_tile(type, 1, NT, W + r * row_bytes, row_bytes, nb, x, ldx, y + r, ldy);
}

// Rows [r0, r1) of y[t][r] = W[r]·x[t] for ntok tokens (1 ≤ ntok ≤ FUSED_TOKENS) in one pass over the rows;
// K a multiple of 32.
DL_AVX512_F16 static inline __attribute__((always_inline))
void fused_tokens_typed(const int type, const uint8_t *W, int64_t row_bytes, int64_t K, const float *x, int64_t ldx,
                        int64_t ntok, float *y, int64_t ldy, int64_t r0, int64_t r1) {
    const int64_t nb = K / 32;
    switch (ntok) {
    case 1: fused_rows_nt(type, 8, 1, W, row_bytes, nb, x, ldx, y, ldy, r0, r1); return;
    case 2: fused_rows_nt(type, 4, 2, W, row_bytes, nb, x, ldx, y, ldy, r0, r1); return;
    case 3: fused_rows_nt(type, 4, 3, W, row_bytes, nb, x, ldx, y, ldy, r0, r1); return;
    case 4: fused_rows_nt(type, 4, 4, W, row_bytes, nb, x, ldx, y, ldy, r0, r1); return;
    case 5: fused_rows_nt(type, 2, 5, W, row_bytes, nb, x, ldx, y, ldy, r0, r1); return;
    case 6: fused_rows_nt(type, 2, 6, W, row_bytes, nb, x, ldx, y, ldy, r0, r1); return;
    case 7: fused_rows_nt(type, 2, 7, W, row_bytes, nb, x, ldx, y, ldy, r0, r1); return;
    default: fused_rows_nt(type, 2, 8, W, row_bytes, nb, x, ldx, y, ldy, r0, r1); return;
    }
}

DL_AVX512_F16 static void fused_tokens(int type, const uint8_t *W, int64_t row_bytes, int64_t K, const float *x, int64_t ldx,
                                       int64_t ntok, float *y, int64_t ldy, int64_t r0, int64_t r1) {
    switch (type) {
    case DL_Q4_0: fused_tokens_typed(DL_Q4_0, W, row_bytes, K, x, ldx, ntok, y, ldy, r0, r1); return;
    case DL_Q4_1: fused_tokens_typed(DL_Q4_1, W, row_bytes, K, x, ldx, ntok, y, ldy, r0, r1); return;
    case DL_Q8_0: fused_tokens_typed(DL_Q8_0, W, row_bytes, K, x, ldx, ntok, y, ldy, r0, r1); return;
    default: fused_tokens_typed(DL_F16, W, row_bytes, K, x, ldx, ntok, y, ldy, r0, r1); return;
    }
}

static int has_fused_token_kernel(int type, int64_t K) {
    return (type == DL_Q4_0 || type == DL_Q4_1 || type == DL_Q8_0 || type == DL_F16) && K % 32 == 0;
}

// 4 rows x 4 tokens.
DL_AVX512 static void tile_4x4(const float *w, int64_t K, const float *x, int64_t ldx, float *y, int64_t ldy) {
    __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;
    __m512 a10 = a00, a11 = a00, a12 = a00, a13 = a00;
    __m512 a20 = a00, a21 = a00, a22 = a00, a23 = a00;
    __m512 a30 = a00, a31 = a00, a32 = a00, a33 = a00;
    const float *x0 = x, *x1 = x + ldx, *x2 = x + 2 * ldx, *x3 = x + 3 * ldx;
    const float *w0 = w, *w1 = w + K, *w2 = w + 2 * K, *w3 = w + 3 * K;
    for (int64_t k = 0; k < K; k += 16) {
        __m512 v0 = _mm512_loadu_ps(w0 + k), v1 = _mm512_loadu_ps(w1 + k);
        __m512 v2 = _mm512_loadu_ps(w2 + k), v3 = _mm512_loadu_ps(w3 + k);
        __m512 t = _mm512_loadu_ps(x0 + k);
        a00 = _mm512_fmadd_ps(v0, t, a00); a10 = _mm512_fmadd_ps(v1, t, a10);
        a20 = _mm512_fmadd_ps(v2, t, a20); a30 = _mm512_fmadd_ps(v3, t, a30);
        t = _mm512_loadu_ps(x1 + k);
        a01 = _mm512_fmadd_ps(v0, t, a01); a11 = _mm512_fmadd_ps(v1, t, a11);
        a21 = _mm512_fmadd_ps(v2, t, a21); a31 = _mm512_fmadd_ps(v3, t, a31);
        t = _mm512_loadu_ps(x2 + k);
        a02 = _mm512_fmadd_ps(v0, t, a02); a12 = _mm512_fmadd_ps(v1, t, a12);
        a22 = _mm512_fmadd_ps(v2, t, a22); a32 = _mm512_fmadd_ps(v3, t, a32);
        t = _mm512_loadu_ps(x3 + k);
        a03 = _mm512_fmadd_ps(v0, t, a03); a13 = _mm512_fmadd_ps(v1, t, a13);
        a23 = _mm512_fmadd_ps(v2, t, a23); a33 = _mm512_fmadd_ps(v3, t, a33);
    }
    y[0] = dl_lane_sum(a00); y[1] = dl_lane_sum(a10); y[2] = dl_lane_sum(a20); y[3] = dl_lane_sum(a30);
    y += ldy;
    y[0] = dl_lane_sum(a01); y[1] = dl_lane_sum(a11); y[2] = dl_lane_sum(a21); y[3] = dl_lane_sum(a31);
    y += ldy;
    y[0] = dl_lane_sum(a02); y[1] = dl_lane_sum(a12); y[2] = dl_lane_sum(a22); y[3] = dl_lane_sum(a32);
    y += ldy;
    y[0] = dl_lane_sum(a03); y[1] = dl_lane_sum(a13); y[2] = dl_lane_sum(a23); y[3] = dl_lane_sum(a33);
}

// 4 rows x NT (2 or 3) tokens: a batch's last tokens after its groups of 4, each weight load shared by the
// NT tokens (one tile_4x1 per token loaded every weight NT times).
DL_AVX512 static inline __attribute__((always_inline))
void tile_4xn(const int NT, const float *w, int64_t K, const float *x, int64_t ldx, float *y, int64_t ldy) {
    __m512 acc[4][3];
    for (int r = 0; r < 4; r++)
        for (int t = 0; t < NT; t++) acc[r][t] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 16) {
        __m512 v[4];
        for (int r = 0; r < 4; r++) v[r] = _mm512_loadu_ps(w + r * K + k);
        for (int t = 0; t < NT; t++) {
            __m512 xt = _mm512_loadu_ps(x + t * ldx + k);
            for (int r = 0; r < 4; r++) acc[r][t] = _mm512_fmadd_ps(v[r], xt, acc[r][t]);
        }
    }
    for (int t = 0; t < NT; t++)
        for (int r = 0; r < 4; r++) y[t * ldy + r] = dl_lane_sum(acc[r][t]);
}

DL_AVX512 static void tile_4x3(const float *w, int64_t K, const float *x, int64_t ldx, float *y, int64_t ldy) {
    tile_4xn(3, w, K, x, ldx, y, ldy);
}

DL_AVX512 static void tile_4x2(const float *w, int64_t K, const float *x, int64_t ldx, float *y, int64_t ldy) {
    tile_4xn(2, w, K, x, ldx, y, ldy);
}

// 4 rows x 1 token.
DL_AVX512 static void tile_4x1(const float *w, int64_t K, const float *x, float *y) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t k = 0; k < K; k += 16) {
        __m512 t = _mm512_loadu_ps(x + k);
        a0 = _mm512_fmadd_ps(_mm512_loadu_ps(w + k), t, a0);
        a1 = _mm512_fmadd_ps(_mm512_loadu_ps(w + K + k), t, a1);
        a2 = _mm512_fmadd_ps(_mm512_loadu_ps(w + 2 * K + k), t, a2);
        a3 = _mm512_fmadd_ps(_mm512_loadu_ps(w + 3 * K + k), t, a3);
    }
    y[0] = dl_lane_sum(a0); y[1] = dl_lane_sum(a1); y[2] = dl_lane_sum(a2); y[3] = dl_lane_sum(a3);
}

// 1 row x 1 token.
DL_AVX512 static float tile_1x1(const float *w, int64_t K, const float *x) {
    __m512 a = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 16) a = _mm512_fmadd_ps(_mm512_loadu_ps(w + k), _mm512_loadu_ps(x + k), a);
    return dl_lane_sum(a);
}

// ------------------------------------------------------------------ AVX2 kernels (same bits as AVX-512)

// A 16-lane accumulator of the AVX-512 kernels is here a pair of 8-lane registers, lo = lanes 0-7 (k mod 16
// in 0-7), hi = lanes 8-15. Each lane sees the same fused multiply-adds in the same increasing-k order and
// the pair is reduced by dl_lane_sum2 (the same tree), so every output is bit-identical to the AVX-512
// path and to ReferenceOps.matmulLanes. Machines without AVX-512 (AMD Zen 1-3, older Intel) take it.

// The 32 weights of block b of a row as four 8-lane slices (elements 0-7, 8-15, 16-23, 24-31), computed
// as dequant_row_scalar computes them (type Q4_0, Q4_1, Q8_0 or F16). The 4-bit blocks widen their 16
// bytes straight from memory to 32-bit lanes (bytes 0-7, then 8-15) and take the nibbles there: element j
// is the low nibble of byte j, element 16 + j its high nibble.
DL_AVX2 static inline __attribute__((always_inline))
void block_slices2(const int type, const uint8_t *row, int64_t b, __m256 v[4]) {
    switch (type) {
    case DL_Q4_0: case DL_Q4_1: {
        const uint8_t *p = row + b * (type == DL_Q4_0 ? 18 : 20), *q = p + (type == DL_Q4_0 ? 2 : 4);
        const __m256i low4 = _mm256_set1_epi32(0x0f);
        __m256i b0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)q));
        __m256i b1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(q + 8)));
        __m256 e0 = _mm256_cvtepi32_ps(_mm256_and_si256(b0, low4)), e1 = _mm256_cvtepi32_ps(_mm256_and_si256(b1, low4));
        __m256 e2 = _mm256_cvtepi32_ps(_mm256_srli_epi32(b0, 4)), e3 = _mm256_cvtepi32_ps(_mm256_srli_epi32(b1, 4));
        if (type == DL_Q4_0) { // (q - 8) is exact in f32, so this equals the reference d * (q - 8)
            __m256 d = _mm256_set1_ps(_cvtsh_ss((uint16_t)(p[0] | p[1] << 8))), eight = _mm256_set1_ps(8.0f);
            v[0] = _mm256_mul_ps(d, _mm256_sub_ps(e0, eight));
            v[1] = _mm256_mul_ps(d, _mm256_sub_ps(e1, eight));
            v[2] = _mm256_mul_ps(d, _mm256_sub_ps(e2, eight));
            v[3] = _mm256_mul_ps(d, _mm256_sub_ps(e3, eight));
        } else {
            // d and m converted together: [d, m] repeated, then each spread over all lanes.
            int32_t dm_bits;
            memcpy(&dm_bits, p, 4);
            __m256 dm = _mm256_cvtph_ps(_mm_set1_epi32(dm_bits));
            __m256 d = _mm256_moveldup_ps(dm), m = _mm256_movehdup_ps(dm);
            // d * q is exact (Q4_1_EXACT_PRODUCT), so one fused multiply-add rounds as d * q + m does.
            v[0] = _mm256_fmadd_ps(d, e0, m);
            v[1] = _mm256_fmadd_ps(d, e1, m);
            v[2] = _mm256_fmadd_ps(d, e2, m);
            v[3] = _mm256_fmadd_ps(d, e3, m);
        }
        return;
    }
    case DL_Q8_0: {
        const uint8_t *p = row + b * 34;
        __m256 d = _mm256_set1_ps(_cvtsh_ss((uint16_t)(p[0] | p[1] << 8)));
        for (int j = 0; j < 4; j++)
            v[j] = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)(p + 2 + 8 * j)))));
        return;
    }
    default: { // DL_F16
        const uint16_t *h = (const uint16_t *)row + b * 32;
        for (int j = 0; j < 4; j++) v[j] = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + 8 * j)));
        return;
    }
    }
}

DL_AVX2 static inline __attribute__((always_inline)) void dequant_blocks2(const int type, const uint8_t *p, float *dst, int64_t nb) {
    for (int64_t b = 0; b < nb; b++) {
        __m256 v[4];
        block_slices2(type, p, b, v);
        for (int j = 0; j < 4; j++) _mm256_storeu_ps(dst + b * 32 + 8 * j, v[j]);
    }
}

DL_AVX2 static void dequant_row_avx2(int type, const uint8_t *p, float *dst, int64_t n) {
    if (type == DL_F16 || type == DL_BF16) { // any width (LoRA B rows are rank wide): 8 at a time, then the rest
        const uint16_t *h = (const uint16_t *)p;
        int64_t i = 0;
        for (; i + 8 <= n; i += 8) {
            __m128i v = _mm_loadu_si128((const __m128i *)(h + i));
            _mm256_storeu_ps(dst + i, type == DL_F16 ? _mm256_cvtph_ps(v)
                                                     : _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16)));
        }
        if (i < n) {
            if (type == DL_F16) dl_f16_to_f32(h + i, dst + i, n - i);
            else dl_bf16_to_f32(h + i, dst + i, n - i);
        }
        return;
    }
    if (n % 32 != 0) { dequant_row_scalar(type, p, dst, n); return; }
    switch (type) {
    case DL_Q4_0: dequant_blocks2(DL_Q4_0, p, dst, n / 32); return;
    case DL_Q4_1: dequant_blocks2(DL_Q4_1, p, dst, n / 32); return;
    case DL_Q8_0: dequant_blocks2(DL_Q8_0, p, dst, n / 32); return;
    default: dequant_row_scalar(type, p, dst, n); return;
    }
}

// NR rows x NT tokens (up to 4 tokens: batch-1 decode and small decode batches): each block's slices are
// made in registers and multiplied at once into every token, the lo accumulator taking slices 0 and 2 (k mod
// 16 in 0-7), the hi one slices 1 and 3, as fused_tile does with its 16 lanes. One token takes three rows at
// a time: a row's lane chain is 2·K/32 dependent FMAs, so more rows in flight hide more latency, but with 16
// registers four rows' accumulators, the token's slices and the decoding temporaries spilled to the stack
// (measured: 18 -> 10.5 ms per token from 4 rows with spills to 2 without; 2, 3 and 4 rows within run-to-run
// noise of each other since). More tokens bring their own chains, so fewer rows (rows·tokens ≤ 4, 8 of the 16
// registers accumulating). The next rows are prefetched over the blocks, as there.
enum { FUSED_ROWS2 = 3 };
DL_AVX2 static inline __attribute__((always_inline))
void fused_tile2(const int type, const int NR, const int NT, const uint8_t *w, int64_t row_bytes, int64_t nb,
                 const float *x, int64_t ldx, float *y, int64_t ldy) {
    __m256 lo[FUSED_ROWS2 * 2], hi[FUSED_ROWS2 * 2];
    for (int i = 0; i < NR * NT; i++) lo[i] = hi[i] = _mm256_setzero_ps();
    const char *next = (const char *)w + NR * row_bytes;
    const int64_t lines = (NR * row_bytes + 63) / 64, lines_per_block = (lines + nb - 1) / nb;
    for (int64_t b = 0; b < nb; b++) {
        if (NR > 1)
            for (int64_t j = 0; j < lines_per_block; j++) _mm_prefetch(next + (b * lines_per_block + j) * 64, _MM_HINT_T0);
        for (int r = 0; r < NR; r++) {
            __m256 v[4];
            block_slices2(type, w + r * row_bytes, b, v);
            for (int t = 0; t < NT; t++) {
                const float *xb = x + t * ldx + b * 32;
                const int i = r * NT + t;
                lo[i] = _mm256_fmadd_ps(v[0], _mm256_loadu_ps(xb), lo[i]);
                hi[i] = _mm256_fmadd_ps(v[1], _mm256_loadu_ps(xb + 8), hi[i]);
                lo[i] = _mm256_fmadd_ps(v[2], _mm256_loadu_ps(xb + 16), lo[i]);
                hi[i] = _mm256_fmadd_ps(v[3], _mm256_loadu_ps(xb + 24), hi[i]);
            }
        }
    }
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++) y[t * ldy + r] = dl_lane_sum2(lo[r * NT + t], hi[r * NT + t]);
}

DL_AVX2 static inline __attribute__((always_inline))
void fused_rows_nt2(const int type, const int NR, const int NT, const uint8_t *W, int64_t row_bytes, int64_t nb,
                    const float *x, int64_t ldx, float *y, int64_t ldy, int64_t r0, int64_t r1) {
    int64_t r = r0;
    for (; r + NR <= r1; r += NR) fused_tile2(type, NR, NT, W + r * row_bytes, row_bytes, nb, x, ldx, y + r, ldy);
    for (; r < r1; r++) fused_tile2(type, 1, NT, W + r * row_bytes, row_bytes, nb, x, ldx, y + r, ldy);
}

// Rows [r0, r1) of y[t][r] = W[r]·x[t] for 1 ≤ ntok ≤ FUSED_TOKENS2 tokens, 4 at a time; K a multiple of 32.
DL_AVX2 static inline __attribute__((always_inline))
void fused_tokens2_typed(const int type, const uint8_t *W, int64_t row_bytes, int64_t K, const float *x, int64_t ldx,
                         int64_t ntok, float *y, int64_t ldy, int64_t r0, int64_t r1) {
    const int64_t nb = K / 32;
    for (int64_t t = 0; t < ntok; t += 4) {
        const float *xt = x + t * ldx;
        float *yt = y + t * ldy;
        switch (ntok - t < 4 ? ntok - t : 4) {
        case 1: fused_rows_nt2(type, FUSED_ROWS2, 1, W, row_bytes, nb, xt, ldx, yt, ldy, r0, r1); break;
        case 2: fused_rows_nt2(type, 2, 2, W, row_bytes, nb, xt, ldx, yt, ldy, r0, r1); break;
        case 3: fused_rows_nt2(type, 1, 3, W, row_bytes, nb, xt, ldx, yt, ldy, r0, r1); break;
        default: fused_rows_nt2(type, 1, 4, W, row_bytes, nb, xt, ldx, yt, ldy, r0, r1); break;
        }
    }
}

DL_AVX2 static void fused_tokens2(int type, const uint8_t *W, int64_t row_bytes, int64_t K, const float *x, int64_t ldx,
                                  int64_t ntok, float *y, int64_t ldy, int64_t r0, int64_t r1) {
    switch (type) {
    case DL_Q4_0: fused_tokens2_typed(DL_Q4_0, W, row_bytes, K, x, ldx, ntok, y, ldy, r0, r1); return;
    case DL_Q4_1: fused_tokens2_typed(DL_Q4_1, W, row_bytes, K, x, ldx, ntok, y, ldy, r0, r1); return;
    case DL_Q8_0: fused_tokens2_typed(DL_Q8_0, W, row_bytes, K, x, ldx, ntok, y, ldy, r0, r1); return;
    default: fused_tokens2_typed(DL_F16, W, row_bytes, K, x, ldx, ntok, y, ldy, r0, r1); return;
    }
}

// NR rows (K floats apart) x NT tokens of the dequantized panel. The lo lanes run over all of K, then the
// hi lanes: each pass holds NR·NT accumulators (12 of the 16 registers at 4 x 3), and a lane's chain is
// the same either way.
DL_AVX2 static inline __attribute__((always_inline))
void tile2(const int NR, const int NT, const float *w, int64_t K, const float *x, int64_t ldx, float *y, int64_t ldy) {
    __m256 lo[12], acc[12];
    for (int half = 0; half < 2; half++) {
        for (int i = 0; i < NR * NT; i++) acc[i] = _mm256_setzero_ps();
        for (int64_t k = half * 8; k < K; k += 16) {
            __m256 xv[3];
            for (int t = 0; t < NT; t++) xv[t] = _mm256_loadu_ps(x + t * ldx + k);
            for (int r = 0; r < NR; r++) {
                __m256 v = _mm256_loadu_ps(w + r * K + k);
                for (int t = 0; t < NT; t++) acc[r * NT + t] = _mm256_fmadd_ps(v, xv[t], acc[r * NT + t]);
            }
        }
        if (half == 0)
            for (int i = 0; i < NR * NT; i++) lo[i] = acc[i];
    }
    for (int t = 0; t < NT; t++)
        for (int r = 0; r < NR; r++) y[t * ldy + r] = dl_lane_sum2(lo[r * NT + t], acc[r * NT + t]);
}

// Tokens [t, t1) of one group of nr rows. 4 rows x 3 tokens, though the compiler spills an accumulator or
// two of the 12: 4 x 2 (no spills, more loads per FMA) measured 5-15 % slower at batch 32.
DL_AVX2 static void group_tokens2(const float *wf, int64_t nr, int64_t K, const float *x, int64_t ldx, int64_t t, int64_t t1,
                                  float *y, int64_t ldy) {
    if (nr == ROWS_PER_GROUP) {
        for (; t + 3 <= t1; t += 3) tile2(4, 3, wf, K, x + t * ldx, ldx, y + t * ldy, ldy);
        for (; t < t1; t++) tile2(4, 1, wf, K, x + t * ldx, ldx, y + t * ldy, ldy);
    } else {
        for (int64_t r = 0; r < nr; r++)
            for (int64_t u = t; u < t1; u++) tile2(1, 1, wf + r * K, K, x + u * ldx, ldx, y + u * ldy + r, ldy);
    }
}
#endif

// ------------------------------------------------------------------ portable fallback (same lane order)

static float dot_lanes_scalar(const float *w, int64_t K, const float *x) {
    float lanes[16] = {0};
    for (int64_t k = 0; k < K; k += 16)
        for (int j = 0; j < 16; j++) lanes[j] = fmaf(w[k + j], x[k + j], lanes[j]);
    return dl_lane_tree16(lanes);
}

// ------------------------------------------------------------------ whole rows (merges, loads)

// A row dequantized with the panel's SIMD conversions: the same values as dl_dequantize_row (the panel path
// is checked bit for bit against the reference twin), for dl_dequantize_rows' callers (the merge's staging
// copy of a base matrix, ~100 M values for an all-layer merge).
void dl_dequantize_row_simd(int type, const void *src, float *dst, int64_t n) {
#if defined(__x86_64__)
    if (dl_has_avx512()) { dequant_row_avx512(type, (const uint8_t *)src, dst, n); return; }
    if (dl_has_avx2()) { dequant_row_avx2(type, (const uint8_t *)src, dst, n); return; }
#endif
    dl_dequantize_row(type, src, dst, n);
}

// ------------------------------------------------------------------ driver

typedef struct {
    int wtype;
    const uint8_t *W;
    int64_t rows, cols, row_bytes;
    const float *X;
    int64_t ldx, ntok;
    float *Y;
    int64_t ldy;
    int fused; // 2: the AVX-512 fused kernels, 1: the AVX2 ones, 0: the panel (decided once per product)
    struct dq_part_s *parts; // the fused products' parts (dq_fused_parts)
    int64_t nparts;
} dq_ctx;

static __thread void *tl_panel;
static __thread int64_t tl_panel_bytes;

static float *panel_buffer(int64_t floats) {
    return (float *)dl_grow_buffer(&tl_panel, &tl_panel_bytes, floats * (int64_t)sizeof(float), "the dequantized weight panel");
}

// The tokens' columns in the fused 4-bit kernels' lane order (q4_slices_transposed), per thread.
static __thread void *tl_xt;
static __thread int64_t tl_xt_bytes;
DL_AVX512 static float *transposed_x(const float *X, int64_t ldx, int64_t ntok, int64_t K) {
    float *xt = (float *)dl_grow_buffer(&tl_xt, &tl_xt_bytes, ntok * K * (int64_t)sizeof(float), "the transposed token columns");
    for (int64_t t = 0; t < ntok; t++)
        for (int64_t k = 0; k < K; k += 16)
            _mm512_storeu_ps(xt + t * K + k, _mm512_permutexvar_ps(transposed_lanes(), _mm512_loadu_ps(X + t * ldx + k)));
    return xt;
}

// Rows [r0, r1) of a fused product (1-8 tokens), x already in the kernel's order (transposed_x for 4-bit rows).
static void fused_range(const dq_ctx *c, const float *x, int64_t ldx, int64_t r0, int64_t r1) {
#if defined(__x86_64__)
    if (c->fused == 2) fused_tokens(c->wtype, c->W, c->row_bytes, c->cols, x, ldx, c->ntok, c->Y, c->ldy, r0, r1);
    else fused_tokens2(c->wtype, c->W, c->row_bytes, c->cols, x, ldx, c->ntok, c->Y, c->ldy, r0, r1);
#else
    (void)c; (void)x; (void)ldx; (void)r0; (void)r1;
#endif
}

// The fused products' rows are split into one contiguous part per thread, in units of STEAL_UNIT rows. A part's
// owner takes its units front to back, STEAL_CLAIM at a time; a thread whose own part is done takes the other
// parts' units from their backs, as long as any are left. Claims are compare-and-swaps on the part's (front,
// back) word, so every unit runs exactly once. One part per thread keeps each thread's rows contiguous, so its
// prefetch of the next rows serves it, and taking the slow part's back means the threads finish together even
// when one core runs slower than the other (a VM beside a busy neighbour: the engine's batch-1 decode spent
// ~11 % of its samples with the caller waiting for the worker's part). Which thread computes a row never
// changes its bits.
enum { STEAL_UNIT = 8, STEAL_CLAIM = 4, MAX_PARTS = 64 };
typedef struct dq_part_s {
    _Alignas(64) _Atomic uint64_t range; // front | back << 32, in units
} dq_part;

static int claim_units(dq_part *p, int from_back, int64_t *u0, int64_t *u1) {
    uint64_t v = atomic_load_explicit(&p->range, memory_order_relaxed);
    for (;;) {
        const uint32_t lo = (uint32_t)v, hi = (uint32_t)(v >> 32);
        if (lo >= hi) return 0;
        const uint32_t n = hi - lo < STEAL_CLAIM ? hi - lo : STEAL_CLAIM;
        const uint32_t nlo = from_back ? lo : lo + n, nhi = from_back ? hi - n : hi;
        if (atomic_compare_exchange_weak_explicit(&p->range, &v, (uint64_t)nhi << 32 | nlo, memory_order_relaxed,
                                                  memory_order_relaxed)) {
            *u0 = from_back ? nhi : lo;
            *u1 = from_back ? hi : nlo;
            return 1;
        }
    }
}

static void dq_fused_parts(void *vctx, int64_t k0, int64_t k1) {
    const dq_ctx *c = (const dq_ctx *)vctx;
    const float *x = c->X;
    int64_t ldx = c->ldx;
#if defined(__x86_64__)
    if (c->fused == 2 && (c->wtype == DL_Q4_0 || c->wtype == DL_Q4_1)) {
        x = transposed_x(c->X, c->ldx, c->ntok, c->cols);
        ldx = c->cols;
    }
#endif
    int64_t u0, u1;
    for (int64_t k = k0; k < k1; k++) {
        while (claim_units(&c->parts[k], 0, &u0, &u1))
            fused_range(c, x, ldx, u0 * STEAL_UNIT, u1 * STEAL_UNIT < c->rows ? u1 * STEAL_UNIT : c->rows);
        for (int64_t j = 1; j < c->nparts; j++)
            while (claim_units(&c->parts[(k + j) % c->nparts], 1, &u0, &u1))
                fused_range(c, x, ldx, u0 * STEAL_UNIT, u1 * STEAL_UNIT < c->rows ? u1 * STEAL_UNIT : c->rows);
    }
}

static void dq_groups(void *vctx, int64_t g0, int64_t g1) {
    const dq_ctx *c = (const dq_ctx *)vctx;
    const int64_t K = c->cols;
    int use512 = dl_has_avx512(), use256 = !use512 && dl_has_avx2();
    float *panel = NULL;
    if (c->wtype != DL_F32) {
        panel = panel_buffer(ROWS_PER_GROUP * K);
    }
    for (int64_t t0 = 0; t0 < c->ntok; t0 += TOKEN_BLOCK) {
        int64_t t1 = t0 + TOKEN_BLOCK < c->ntok ? t0 + TOKEN_BLOCK : c->ntok;
        for (int64_t g = g0; g < g1; g++) {
            int64_t r0 = g * ROWS_PER_GROUP;
            int64_t nr = c->rows - r0 < ROWS_PER_GROUP ? c->rows - r0 : ROWS_PER_GROUP;
            const float *wf;
            if (c->wtype == DL_F32) {
                wf = (const float *)(c->W + r0 * c->row_bytes);
            } else {
                for (int64_t r = 0; r < nr; r++) {
#if defined(__x86_64__)
                    if (use512) dequant_row_avx512(c->wtype, c->W + (r0 + r) * c->row_bytes, panel + r * K, K);
                    else if (use256) dequant_row_avx2(c->wtype, c->W + (r0 + r) * c->row_bytes, panel + r * K, K);
                    else
#endif
                    dequant_row_scalar(c->wtype, c->W + (r0 + r) * c->row_bytes, panel + r * K, K);
                }
                wf = panel;
            }
            int64_t t = t0;
#if defined(__x86_64__)
            if (use512) {
                if (nr == ROWS_PER_GROUP) {
                    for (; t + 4 <= t1; t += 4) tile_4x4(wf, K, c->X + t * c->ldx, c->ldx, c->Y + t * c->ldy + r0, c->ldy);
                    if (t1 - t == 3) tile_4x3(wf, K, c->X + t * c->ldx, c->ldx, c->Y + t * c->ldy + r0, c->ldy);
                    else if (t1 - t == 2) tile_4x2(wf, K, c->X + t * c->ldx, c->ldx, c->Y + t * c->ldy + r0, c->ldy);
                    else if (t1 - t == 1) tile_4x1(wf, K, c->X + t * c->ldx, c->Y + t * c->ldy + r0);
                } else {
                    for (; t < t1; t++)
                        for (int64_t r = 0; r < nr; r++) c->Y[t * c->ldy + r0 + r] = tile_1x1(wf + r * K, K, c->X + t * c->ldx);
                }
                continue;
            }
            if (use256) {
                group_tokens2(wf, nr, K, c->X, c->ldx, t, t1, c->Y + r0, c->ldy);
                continue;
            }
#endif
            for (; t < t1; t++)
                for (int64_t r = 0; r < nr; r++) c->Y[t * c->ldy + r0 + r] = dot_lanes_scalar(wf + r * K, K, c->X + t * c->ldx);
        }
    }
}

void dl_matmul_dq(int wtype, const void *W, int64_t rows, int64_t cols,
                  const float *X, int64_t ldx, int64_t ntok,
                  float *Y, int64_t ldy) {
    if (rows <= 0 || ntok <= 0) return;
    dq_ctx c = { wtype, (const uint8_t *)W, rows, cols, dl_row_bytes(wtype, cols), X, ldx, ntok, Y, ldy, .fused = 0 };
#if defined(__x86_64__)
    if (has_fused_token_kernel(wtype, cols)) {
        if (dl_has_avx512()) c.fused = ntok <= FUSED_TOKENS ? 2 : 0;
        else if (dl_has_avx2()) c.fused = ntok <= FUSED_TOKENS2 ? 1 : 0;
    }
#endif
    // Small products are cheaper on the calling thread than handed to the pool.
    const int small = rows * cols * ntok < (1 << 16);
    if (c.fused) {
        const int64_t units = (rows + STEAL_UNIT - 1) / STEAL_UNIT;
        int64_t parts = small ? 1 : dl_num_threads();
        if (parts > units) parts = units;
        if (parts > MAX_PARTS) parts = MAX_PARTS;
        dq_part part[MAX_PARTS];
        for (int64_t k = 0; k < parts; k++)
            atomic_init(&part[k].range, (uint64_t)(units * (k + 1) / parts) << 32 | (uint64_t)(units * k / parts));
        c.parts = part;
        c.nparts = parts;
        if (parts == 1) dq_fused_parts(&c, 0, 1);
        else dl_parallel_for(parts, 1, dq_fused_parts, &c);
        return;
    }
    int64_t groups = (rows + ROWS_PER_GROUP - 1) / ROWS_PER_GROUP;
    if (small) { dq_groups(&c, 0, groups); return; }
    dl_parallel_for(groups, 4, dq_groups, &c);
}
