// Causal multi-head attention reading K/V straight from the paged cache (block tables, as vLLM's
// PagedAttention). One task = one (query token, head): scores over the visible positions, a max-shifted
// softmax, and the weighted sum of V rows (with AVX-512 and head_dim 64, a part's heads that share a kv head
// run together, each computed as alone). Each head's arithmetic order is fixed, so a token's output does not
// depend on the batch it is computed in or on the split over threads. The cache holds f32 or f16 values
// (kv_f16): an f16 row is widened to f32 as it is loaded (exact), and every path then does the f32 path's
// arithmetic, so attention over an f16 cache gives the bits of the f32 cache holding the same rounded values.
#include "ckernels.h"
#include "simd.h"
#include "fatal.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

// One part's partial result for one head (the split path, below): its max score, Σ exp(s - m) and Σ exp(s - m)·V.
typedef struct { float m; double l; float o[64]; } part_t;

// The f16 cache's largest finite value: rows are clamped to ±F16_MAX before rounding (round to nearest
// even), so a K/V value beyond f16's range is stored as the largest one rather than as infinity, which
// would turn its scores into NaN. NaN stays NaN (each max/min returns its second operand, x, on NaN).
#define F16_MAX 65504.0f

#if defined(__x86_64__)
// f32 -> f16 of the first n - n % 16 (n - n % 8) values, clamped to ±F16_MAX, rounded to nearest even;
// returns how many were converted.
DL_AVX512 static int64_t row_to_f16_avx512(uint16_t *dst, const float *src, int64_t n) {
    const __m512 lo = _mm512_set1_ps(-F16_MAX), hi = _mm512_set1_ps(F16_MAX);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 x = _mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_loadu_ps(src + i)));
        _mm256_storeu_si256((__m256i *)(dst + i), _mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    return i;
}
DL_AVX2 static int64_t row_to_f16_avx2(uint16_t *dst, const float *src, int64_t n) {
    const __m256 lo = _mm256_set1_ps(-F16_MAX), hi = _mm256_set1_ps(F16_MAX);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 x = _mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_loadu_ps(src + i)));
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    return i;
}

// 16 (8) values of a K/V row from element i: loaded (f32) or loaded and widened (f16), exactly.
DL_AVX512 static inline __attribute__((always_inline)) __m512 kv_load16(const void *row, int64_t i, const int f16) {
    return f16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)row + i)))
               : _mm512_loadu_ps((const float *)row + i);
}
DL_AVX2 static inline __attribute__((always_inline)) __m256 kv_load8(const void *row, int64_t i, const int f16) {
    return f16 ? _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + i)))
               : _mm256_loadu_ps((const float *)row + i);
}
// f16 -> f32 of the first n - n % 8 values; returns how many.
DL_AVX2 static int64_t widen_avx2(const uint16_t *h, float *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, kv_load8(h, i, 1));
    return i;
}
#endif

// Where element e of a K/V cache of f32 or f16 values lies.
static inline const void *kv_at(const void *cache, int64_t e, int f16) { return (const char *)cache + e * (f16 ? 2 : 4); }

void dl_kv_to_f16(uint16_t *dst, const float *src, int64_t n) {
    int64_t i = 0;
#if defined(__x86_64__)
    if (dl_has_avx512()) i = row_to_f16_avx512(dst, src, n);
    else if (dl_has_avx2()) i = row_to_f16_avx2(dst, src, n);
#endif
    for (; i < n; i++) {
        float x = src[i];
        x = x > F16_MAX ? F16_MAX : (x < -F16_MAX ? -F16_MAX : x);
        dl_f32_to_f16(&x, dst + i, 1);
    }
}

void dl_kv_to_f32(float *dst, const uint16_t *src, int64_t n) {
    int64_t i = 0;
#if defined(__x86_64__)
    if (dl_has_avx2()) i = widen_avx2(src, dst, n);
#endif
    if (i < n) dl_f16_to_f32(src + i, dst + i, n - i);
}

void dl_kv_write(void *kcache, void *vcache, int kv_f16, const int64_t *slots, int64_t ntok, int64_t row,
                 const float *k, int64_t ldk, const float *v, int64_t ldv) {
    for (int64_t t = 0; t < ntok; t++) {
        if (kv_f16) {
            dl_kv_to_f16((uint16_t *)kcache + slots[t] * row, k + t * ldk, row);
            dl_kv_to_f16((uint16_t *)vcache + slots[t] * row, v + t * ldv, row);
        } else {
            memcpy((float *)kcache + slots[t] * row, k + t * ldk, (size_t)row * sizeof(float));
            memcpy((float *)vcache + slots[t] * row, v + t * ldv, (size_t)row * sizeof(float));
        }
    }
}

// A K/V row as f32: the row itself in an f32 cache, else widened into tmp (n floats).
static const float *row_f32(const void *cache, int64_t element, int64_t n, int kv_f16, float *tmp) {
    if (!kv_f16) return (const float *)cache + element;
    dl_kv_to_f32(tmp, (const uint16_t *)cache + element, n);
    return tmp;
}

static float dot_scalar(const float *a, const float *b, int64_t n) {
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += a[i + j] * b[i + j];
    float s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static void axpy_scalar(float *y, float a, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += a * x[i];
}

#if defined(__x86_64__)
DL_AVX512 static float dot_avx512(const float *a, const float *b, int64_t n) {
    __m512 acc = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
    float s = _mm512_reduce_add_ps(acc);
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}
DL_AVX512 static void axpy_avx512(float *y, float a, const float *x, int64_t n) {
    __m512 va = _mm512_set1_ps(a);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(y + i, _mm512_fmadd_ps(va, _mm512_loadu_ps(x + i), _mm512_loadu_ps(y + i)));
    for (; i < n; i++) y[i] += a * x[i];
}

// o = Σ_p w[p] · V[p] for NV·16 = head_dim with o kept in registers: the same fused multiply-add per
// element, in the same position order, as axpy_avx512 into a zeroed o, without the store and reload of o
// between positions (that round trip made each position wait on the previous one).
DL_AVX512 static inline __attribute__((always_inline))
void weighted_values_regs(const int NV, const int f16, float *o, const float *w, float inv, int64_t n, const int32_t *table,
                          int64_t block_size, const void *vcache, int64_t row, int64_t offset) {
    __m512 acc[8];
    for (int j = 0; j < NV; j++) acc[j] = _mm512_setzero_ps();
    for (int64_t p = 0, blk = 0, off = 0; p < n; p++) {
        const void *vr = kv_at(vcache, ((int64_t)table[blk] * block_size + off) * row + offset, f16);
        if (++off == block_size) { off = 0; blk++; }
        __m512 a = _mm512_set1_ps(w[p] * inv);
        for (int j = 0; j < NV; j++) acc[j] = _mm512_fmadd_ps(a, kv_load16(vr, 16 * j, f16), acc[j]);
    }
    for (int j = 0; j < NV; j++) _mm512_storeu_ps(o + 16 * j, acc[j]);
}

// scores[p] = (q · K[p]) * scale for p < n, returning their max: the loop in one AVX-512 function so the
// dot product inlines (a call per position from the dispatching code cost more than the dot itself).
DL_AVX512 static float scores_avx512(const float *qv, float *scores, float scale, int64_t n, const int32_t *table,
                                     int64_t block_size, const void *kcache, int kv_f16, float *tmp, int64_t row,
                                     int64_t offset, int64_t head_dim) {
    float mx = -INFINITY;
    for (int64_t p = 0, blk = 0, off = 0; p < n; p++) {
        const float *kr = row_f32(kcache, ((int64_t)table[blk] * block_size + off) * row + offset, head_dim, kv_f16, tmp);
        if (++off == block_size) { off = 0; blk++; }
        float s = dot_avx512(qv, kr, head_dim) * scale;
        scores[p] = s;
        if (s > mx) mx = s;
    }
    return mx;
}

DL_AVX2 static float dot_avx2(const float *a, const float *b, int64_t n) {
    __m256 lo = _mm256_setzero_ps(), hi = lo;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        lo = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), lo);
        hi = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), hi);
    }
    float s = dl_lane_sum2(lo, hi);
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

DL_AVX2 static float scores_avx2(const float *qv, float *scores, float scale, int64_t n, const int32_t *table,
                                 int64_t block_size, const void *kcache, int kv_f16, float *tmp, int64_t row,
                                 int64_t offset, int64_t head_dim) {
    float mx = -INFINITY;
    for (int64_t p = 0, blk = 0, off = 0; p < n; p++) {
        const float *kr = row_f32(kcache, ((int64_t)table[blk] * block_size + off) * row + offset, head_dim, kv_f16, tmp);
        if (++off == block_size) { off = 0; blk++; }
        float s = dot_avx2(qv, kr, head_dim) * scale;
        scores[p] = s;
        if (s > mx) mx = s;
    }
    return mx;
}

// AVX2: 64 dimensions of o (from dim) in eight registers, as weighted_values_regs.
DL_AVX2 static void weighted_values64_avx2(float *o, const float *w, float inv, int64_t n, const int32_t *table,
                                           int64_t block_size, const void *vcache, int kv_f16, int64_t row, int64_t offset) {
    __m256 acc[8];
    for (int j = 0; j < 8; j++) acc[j] = _mm256_setzero_ps();
    for (int64_t p = 0, blk = 0, off = 0; p < n; p++) {
        const void *vr = kv_at(vcache, ((int64_t)table[blk] * block_size + off) * row + offset, kv_f16);
        if (++off == block_size) { off = 0; blk++; }
        __m256 a = _mm256_set1_ps(w[p] * inv);
        if (kv_f16) for (int j = 0; j < 8; j++) acc[j] = _mm256_fmadd_ps(a, kv_load8(vr, 8 * j, 1), acc[j]);
        else for (int j = 0; j < 8; j++) acc[j] = _mm256_fmadd_ps(a, kv_load8(vr, 8 * j, 0), acc[j]);
    }
    for (int j = 0; j < 8; j++) _mm256_storeu_ps(o + 8 * j, acc[j]);
}

// A head's softmax terms in place: e_p = exp(s_p − mx) for p < n by simd.h's polynomial (a score more than 87.3 below
// mx, or −∞, gives 0; NaN stays NaN, as expf keeps it), returning Σ e_p in double: per block of 16 positions, lane l
// of a0 takes position l and lane l of a1 position 8 + l (a short last block adds zeros), then v = a0 + a1 is summed
// by dl_sum_lanes8's tree. An order set by n alone, so a head's bits do not depend on its batch, and the AVX2 form
// below keeps the same order, so the paths agree bit for bit. (A scalar expf per position, and a double sum carried
// from one position to the next, cost more than the head's dot products.)

DL_AVX512 static double softmax_terms_avx512(float *sc, int64_t n, float mx) {
    const __m512 mv = _mm512_set1_ps(mx), lo = _mm512_set1_ps(-87.3f);
    __m512d a0 = _mm512_setzero_pd(), a1 = a0;
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = dl_mask16(n - i);
        const __m512 y = _mm512_sub_ps(_mm512_maskz_loadu_ps(m, sc + i), mv);
        const __m512 e = _mm512_maskz_mov_ps(_mm512_mask_cmp_ps_mask(m, y, lo, _CMP_NLT_UQ), dl_exp_neg16(y));
        _mm512_mask_storeu_ps(sc + i, m, e);
        a0 = _mm512_add_pd(a0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        a1 = _mm512_add_pd(a1, _mm512_cvtps_pd(_mm512_extractf32x8_ps(e, 1)));
    }
    double v[8];
    _mm512_storeu_pd(v, _mm512_add_pd(a0, a1));
    return dl_sum_lanes8(v);
}

// sc[p] *= inv for p < n (the weights' normalisation, the same float product the weighted sum took per position).
DL_AVX512 static void scale_avx512(float *sc, int64_t n, float inv) {
    const __m512 v = _mm512_set1_ps(inv);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = dl_mask16(n - i);
        _mm512_mask_storeu_ps(sc + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, sc + i), v));
    }
}

// softmax_terms_avx512 in AVX2 registers: eight positions at a time (the last ones masked, their terms 0), accumulated
// into the lanes the AVX-512 form uses (a0 = lanes 0-7 as lo0, hi0; a1 as lo1, hi1).
DL_AVX2 static double softmax_terms_avx2(float *sc, int64_t n, float mx) {
    const __m256 mv = _mm256_set1_ps(mx), lo = _mm256_set1_ps(-87.3f);
    __m256d acc[4] = { _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd() };
    for (int64_t i = 0; i < n; i += 8) {
        const __m256i m = dl_mask8(n - i);
        const __m256 y = _mm256_sub_ps(_mm256_maskload_ps(sc + i, m), mv);
        const __m256 live = _mm256_and_ps(_mm256_cmp_ps(y, lo, _CMP_NLT_UQ), _mm256_castsi256_ps(m));
        const __m256 e = _mm256_and_ps(dl_exp_neg8(y), live);
        _mm256_maskstore_ps(sc + i, m, e);
        const int half = (int)((i / 8) & 1) * 2;  // positions 0-7 of a block of 16 feed a0, 8-15 feed a1
        acc[half] = _mm256_add_pd(acc[half], _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        acc[half + 1] = _mm256_add_pd(acc[half + 1], _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    double v[8];
    _mm256_storeu_pd(v, _mm256_add_pd(acc[0], acc[2]));
    _mm256_storeu_pd(v + 4, _mm256_add_pd(acc[1], acc[3]));
    return dl_sum_lanes8(v);
}

// head_dim 64 or 128 only.
DL_AVX512 static void weighted_values_avx512(int64_t head_dim, float *o, const float *w, float inv, int64_t n,
                                             const int32_t *table, int64_t block_size, const void *vcache, int kv_f16,
                                             int64_t row, int64_t offset) {
    if (kv_f16) {
        if (head_dim == 64) weighted_values_regs(4, 1, o, w, inv, n, table, block_size, vcache, row, offset);
        else weighted_values_regs(8, 1, o, w, inv, n, table, block_size, vcache, row, offset);
    } else {
        if (head_dim == 64) weighted_values_regs(4, 0, o, w, inv, n, table, block_size, vcache, row, offset);
        else weighted_values_regs(8, 0, o, w, inv, n, table, block_size, vcache, row, offset);
    }
}
#endif


#if defined(__x86_64__)
// A token's visible positions beyond SPLIT_POSITIONS are cut into parts of equal size (part c of k: positions
// [c·n/k, (c+1)·n/k)), each computed as a partial softmax, then merged (as flash-decoding does): the parts are
// tasks of their own, so a single long sequence spreads over the threads (SmolLM2's 3 kv heads gave 2 + 1 over
// two threads) without reading a K/V row twice. The cut depends on n alone, so a token's bits do not depend
// on its batch or the thread count; tokens with n ≤ SPLIT_POSITIONS take the whole range at once.
enum { SPLIT_POSITIONS = 1024 };

static int64_t position_parts(int64_t n) { return n <= SPLIT_POSITIONS ? 1 : (n + SPLIT_POSITIONS - 1) / SPLIT_POSITIONS; }

// Prefetches a kv head's 64-value slice of the K or V row at (block *blk, offset *off) of a block table, then steps
// (blk, off) to the next position, as the loops below count theirs.
static inline __attribute__((always_inline))
void prefetch_kv_row(const void *cache, const int f16, const int32_t *table, int64_t block_size, int64_t *blk, int64_t *off,
                     int64_t row, int64_t offset) {
    const char *next = (const char *)kv_at(cache, ((int64_t)table[*blk] * block_size + *off) * row + offset, f16);
    for (int l = 0; l < (f16 ? 2 : 4); l++) _mm_prefetch(next + 64 * l, _MM_HINT_T0);
    if (++*off == block_size) { *off = 0; ++*blk; }
}

// Positions [p0, p1) for the G (≤ 8) query heads that share one kv head, head_dim 64: each position's K row
// is loaded once and dotted with each head's query, each V row once and added into each head's accumulators.
// Per head: the scores and their max, e_p = exp(s_p - max) and their sum (softmax_terms_avx512), then Σ e_p·V in
// position order. With out, the whole range ([0, n)) of a token: e_p is scaled by 1 / Σ e before it meets V, the
// per-head path's operations in its order (scores_avx512, weighted_values_regs), and the result goes to out. With
// res, one part of a split token: Σ e_p·V, the max and Σ e go to res for merge_parts.
DL_AVX512 static inline __attribute__((always_inline))
void group_heads64_kv(const int f16, int G, const float *q, float *scores, float scale, int64_t p0, int64_t p1,
                      const int32_t *table, int64_t block_size, const void *kcache,
                      const void *vcache, int64_t row, int64_t offset, float *out, part_t *res) {
    const int64_t n = p1 - p0;
    float mx[8];
    __m512 qv[8][4];
    for (int g = 0; g < G; g++) { mx[g] = -INFINITY; for (int j = 0; j < 4; j++) qv[g][j] = _mm512_loadu_ps(q + g * 64 + 16 * j); }
    int64_t p = p0, blk = p0 / block_size, off = p0 % block_size;
    // 16 positions at a time: each head's 16 dot products as 16 accumulators (the same FMAs, in the same order, as
    // one position alone), summed together by dl_lane_sums16 (lane i of the result: dl_lane_sum of accumulator i,
    // the tree _mm512_reduce_add_ps performs), scaled and maxed as vectors. One reduction tree per position cost
    // more than its dot product. An f16 cache's 16 rows are widened once into kt for all the heads.
    __m512 mxv[8];
    for (int g = 0; g < G; g++) mxv[g] = _mm512_set1_ps(-INFINITY);
    const __m512 vscale = _mm512_set1_ps(scale);
    float kt[16 * 64] __attribute__((aligned(64)));
    // The next 16 positions' K rows are prefetched while these are dotted (pp, pblk, poff: 16 positions ahead): the
    // rows of a block are a kv head's slice of each slot, 128 of every n_kv · 128 bytes, which the hardware
    // prefetcher did not keep ahead of the loads.
    int64_t pp = p + 16, pblk = pp / block_size, poff = pp % block_size;
    for (; p + 16 <= p1; p += 16) {
        const float *rows[16];
        for (int i = 0; i < 16; i++, pp++) {
            if (pp < p1) prefetch_kv_row(kcache, f16, table, block_size, &pblk, &poff, row, offset);
            const void *kr = kv_at(kcache, ((int64_t)table[blk] * block_size + off) * row + offset, f16);
            if (++off == block_size) { off = 0; blk++; }
            if (f16) {
                for (int j = 0; j < 4; j++) _mm512_store_ps(kt + i * 64 + 16 * j, kv_load16(kr, 16 * j, 1));
                rows[i] = kt + i * 64;
            } else {
                rows[i] = (const float *)kr;
            }
        }
        for (int g = 0; g < G; g++) {
            __m512 acc[16];
            for (int i = 0; i < 16; i++) {
                __m512 a = _mm512_fmadd_ps(qv[g][0], _mm512_loadu_ps(rows[i]), _mm512_setzero_ps());
                a = _mm512_fmadd_ps(qv[g][1], _mm512_loadu_ps(rows[i] + 16), a);
                a = _mm512_fmadd_ps(qv[g][2], _mm512_loadu_ps(rows[i] + 32), a);
                acc[i] = _mm512_fmadd_ps(qv[g][3], _mm512_loadu_ps(rows[i] + 48), a);
            }
            const __m512 sc = _mm512_mul_ps(dl_lane_sums16(acc), vscale);
            _mm512_storeu_ps(scores + g * n + (p - p0), sc);
            mxv[g] = _mm512_max_ps(sc, mxv[g]); // a NaN score is skipped, as the comparison below skips it
        }
    }
    // The max of the lanes and of the scalar positions after them: the same value in any order (a NaN is never
    // taken; of +0 and -0 either may stay, and exp(s - max) is the same for both).
    for (int g = 0; g < G; g++) mx[g] = _mm512_reduce_max_ps(mxv[g]);
    for (; p < p1; p++) {
        const void *kr = kv_at(kcache, ((int64_t)table[blk] * block_size + off) * row + offset, f16);
        if (++off == block_size) { off = 0; blk++; }
        __m512 k0 = kv_load16(kr, 0, f16), k1 = kv_load16(kr, 16, f16), k2 = kv_load16(kr, 32, f16), k3 = kv_load16(kr, 48, f16);
        for (int g = 0; g < G; g++) {
            __m512 acc = _mm512_setzero_ps();
            acc = _mm512_fmadd_ps(qv[g][0], k0, acc); acc = _mm512_fmadd_ps(qv[g][1], k1, acc);
            acc = _mm512_fmadd_ps(qv[g][2], k2, acc); acc = _mm512_fmadd_ps(qv[g][3], k3, acc);
            float sc = _mm512_reduce_add_ps(acc) * scale;
            scores[g * n + (p - p0)] = sc;
            if (sc > mx[g]) mx[g] = sc;
        }
    }
    for (int g = 0; g < G; g++) {
        float *sc = scores + g * n;
        const double sum = softmax_terms_avx512(sc, n, mx[g]);
        if (out) {
            scale_avx512(sc, n, (float)(1.0 / sum));
        } else {
            res[g].m = mx[g];
            res[g].l = sum;
        }
    }
    __m512 acc[8][4];
    for (int g = 0; g < G; g++) for (int j = 0; j < 4; j++) acc[g][j] = _mm512_setzero_ps();
    // V rows likewise, VNEXT positions ahead.
    enum { VNEXT = 8 };
    int64_t vp = p0 + VNEXT, vblk = vp / block_size, voff = vp % block_size;
    for (int64_t p = p0, blk = p0 / block_size, off = p0 % block_size; p < p1; p++, vp++) {
        if (vp < p1) prefetch_kv_row(vcache, f16, table, block_size, &vblk, &voff, row, offset);
        const void *vr = kv_at(vcache, ((int64_t)table[blk] * block_size + off) * row + offset, f16);
        if (++off == block_size) { off = 0; blk++; }
        __m512 v0 = kv_load16(vr, 0, f16), v1 = kv_load16(vr, 16, f16), v2 = kv_load16(vr, 32, f16), v3 = kv_load16(vr, 48, f16);
        for (int g = 0; g < G; g++) {
            __m512 a = _mm512_set1_ps(scores[g * n + (p - p0)]);
            acc[g][0] = _mm512_fmadd_ps(a, v0, acc[g][0]); acc[g][1] = _mm512_fmadd_ps(a, v1, acc[g][1]);
            acc[g][2] = _mm512_fmadd_ps(a, v2, acc[g][2]); acc[g][3] = _mm512_fmadd_ps(a, v3, acc[g][3]);
        }
    }
    for (int g = 0; g < G; g++)
        for (int j = 0; j < 4; j++) _mm512_storeu_ps(out ? out + g * 64 + 16 * j : res[g].o + 16 * j, acc[g][j]);
}

// group_heads64_kv compiled once per cache type.
DL_AVX512 static void group_heads64(int kv_f16, int G, const float *q, float *scores, float scale, int64_t p0, int64_t p1,
                                    const int32_t *table, int64_t block_size, const void *kcache,
                                    const void *vcache, int64_t row, int64_t offset, float *out, part_t *res) {
#define GROUP_HEADS(F, N) group_heads64_kv(F, N, q, scores, scale, p0, p1, table, block_size, kcache, vcache, row, offset, out, res)
#define GROUP_HEADS_OF(F)                                                                                   \
    switch (G) {                                                                                            \
    case 1: GROUP_HEADS(F, 1); return;                                                                      \
    case 2: GROUP_HEADS(F, 2); return;                                                                      \
    case 3: GROUP_HEADS(F, 3); return;                                                                      \
    case 4: GROUP_HEADS(F, 4); return;                                                                      \
    default: GROUP_HEADS(F, G); return;                                                                     \
    }
    if (kv_f16) GROUP_HEADS_OF(1) else GROUP_HEADS_OF(0)
#undef GROUP_HEADS_OF
#undef GROUP_HEADS
}
#endif

typedef struct {
    const float *q; int64_t ldq;
    const int32_t *positions; const int32_t *block_tables; const int64_t *table_offsets; int64_t block_size;
    const void *kcache, *vcache; int kv_f16;
    int64_t n_head, n_kv, head_dim; float scale;
    float *out; int64_t ldo;
    int64_t ntok;
    // Split path only: task_start[t] = the first task of token t (n_kv · parts each, ntok + 1 entries),
    // part_start[t] = its first part_t (n_head · parts, or -1 when it is not split), parts = the results.
    const int64_t *task_start, *part_start; part_t *parts;
} attn_ctx;

// Per-thread score buffer, grown on demand: no allocation once warm.
static __thread void *tl_scores;
static __thread int64_t tl_scores_bytes;

static float *score_buffer(int64_t n) {
    return (float *)dl_grow_buffer(&tl_scores, &tl_scores_bytes, n * (int64_t)sizeof(float), "the attention score buffer");
}

static void attention_range(void *vctx, int64_t begin, int64_t end) {
    const attn_ctx *c = (const attn_ctx *)vctx;
    int use512 = dl_has_avx512(), use256 = !use512 && dl_has_avx2();
    int64_t group = c->n_head / c->n_kv, row = c->n_kv * c->head_dim;
    float tmp[c->head_dim]; // an f16 cache's row, widened
    for (int64_t task = begin; task < end; task++) {
        // Zig-zag token order (0, n-1, 1, n-2, ...): a contiguous range of tasks pairs short and long
        // prefixes, so the pool's equal-count chunks carry about equal work.
        int64_t j = task / c->n_head, h = task % c->n_head, kvh = h / group;
        int64_t t = (j % 2 == 0) ? j / 2 : c->ntok - 1 - j / 2;
        const float *qv = c->q + t * c->ldq + h * c->head_dim;
        float *o = c->out + t * c->ldo + h * c->head_dim;
        const int32_t *table = c->block_tables + c->table_offsets[t];
        int64_t n = (int64_t)c->positions[t] + 1; // visible positions 0 ..< n
        float *scores = score_buffer(n);
        float mx = -INFINITY;
        // Position p lives in slot table[blk] * block_size + off, blk = p / block_size, off = p % block_size
        // (counted along rather than divided: a division per position cost as much as its dot product).
#if defined(__x86_64__)
        if (use512) {
            mx = scores_avx512(qv, scores, c->scale, n, table, c->block_size, c->kcache, c->kv_f16, tmp, row, kvh * c->head_dim,
                               c->head_dim);
        } else if (use256) {
            mx = scores_avx2(qv, scores, c->scale, n, table, c->block_size, c->kcache, c->kv_f16, tmp, row, kvh * c->head_dim,
                             c->head_dim);
        } else
#endif
        for (int64_t p = 0, blk = 0, off = 0; p < n; p++) {
            const float *kr = row_f32(c->kcache, ((int64_t)table[blk] * c->block_size + off) * row + kvh * c->head_dim,
                                      c->head_dim, c->kv_f16, tmp);
            if (++off == c->block_size) { off = 0; blk++; }
            float s = dot_scalar(qv, kr, c->head_dim) * c->scale;
            scores[p] = s;
            if (s > mx) mx = s;
        }
        double sum = 0;
#if defined(__x86_64__)
        if (use512) sum = softmax_terms_avx512(scores, n, mx);
        else if (use256) sum = softmax_terms_avx2(scores, n, mx);
        else
#endif
        for (int64_t p = 0; p < n; p++) { scores[p] = expf(scores[p] - mx); sum += scores[p]; }
        float inv = (float)(1.0 / sum);
#if defined(__x86_64__)
        if (use512 && (c->head_dim == 64 || c->head_dim == 128)) {
            weighted_values_avx512(c->head_dim, o, scores, inv, n, table, c->block_size, c->vcache, c->kv_f16, row,
                                   kvh * c->head_dim);
            continue;
        }
        if (use256 && c->head_dim % 64 == 0) {
            for (int64_t d = 0; d < c->head_dim; d += 64)
                weighted_values64_avx2(o + d, scores, inv, n, table, c->block_size, c->vcache, c->kv_f16, row,
                                       kvh * c->head_dim + d);
            continue;
        }
#endif
        memset(o, 0, (size_t)c->head_dim * sizeof(float));
        for (int64_t p = 0, blk = 0, off = 0; p < n; p++) {
            const float *vr = row_f32(c->vcache, ((int64_t)table[blk] * c->block_size + off) * row + kvh * c->head_dim,
                                      c->head_dim, c->kv_f16, tmp);
            if (++off == c->block_size) { off = 0; blk++; }
#if defined(__x86_64__)
            if (use512) axpy_avx512(o, scores[p] * inv, vr, c->head_dim); else axpy_scalar(o, scores[p] * inv, vr, c->head_dim);
#else
            axpy_scalar(o, scores[p] * inv, vr, c->head_dim);
#endif
        }
    }
}

#if defined(__x86_64__)
// AVX-512 and head_dim 64: the (token, head) tasks of [begin, end) in runs of consecutive query heads of one
// token that share a kv head, each run through group_heads64, so each K and V row is read once per run
// instead of once per query head. At long contexts that is most of a batch-1 step: SmolLM2 at 1,950 positions
// holds 3 MB of K/V per layer, which per-head tasks read three times (9 query heads over 3 kv heads). The
// per-head arithmetic is the per-head path's, so the bits are too, however the tasks are split.
static void attention_runs(void *vctx, int64_t begin, int64_t end) {
    const attn_ctx *c = (const attn_ctx *)vctx;
    int64_t group = c->n_head / c->n_kv, row = c->n_kv * c->head_dim;
    for (int64_t task = begin; task < end;) {
        int64_t j = task / c->n_head, h = task % c->n_head, kvh = h / group;
        int64_t t = (j % 2 == 0) ? j / 2 : c->ntok - 1 - j / 2;
        int64_t last = (kvh + 1) * group; // one past the run's last head
        if (last - h > end - task) last = h + (end - task);
        int64_t n = (int64_t)c->positions[t] + 1;
        float *scores = score_buffer(n * (last - h));
        group_heads64(c->kv_f16, (int)(last - h), c->q + t * c->ldq + h * 64, scores, c->scale, 0, n, c->block_tables + c->table_offsets[t],
                      c->block_size, c->kcache, c->vcache, row, kvh * 64, c->out + t * c->ldo + h * 64, NULL);
        task += last - h;
    }
}

// Tasks [begin, end) of the split path: task i of token t is (kv head, part) = (r / parts, r % parts) for
// r = i - task_start[t]; an unsplit token's task is its kv head's whole group, as attention_runs computes it.
static void attention_split(void *vctx, int64_t begin, int64_t end) {
    const attn_ctx *c = (const attn_ctx *)vctx;
    const int64_t group = c->n_head / c->n_kv, row = c->n_kv * c->head_dim;
    int64_t t = 0;
    for (int64_t task = begin; task < end; task++) {
        while (c->task_start[t + 1] <= task) t++;
        const int64_t n = (int64_t)c->positions[t] + 1, k = position_parts(n), r = task - c->task_start[t];
        const int64_t kvh = r / k, part = r % k;
        const float *q = c->q + t * c->ldq + kvh * group * 64;
        const int32_t *table = c->block_tables + c->table_offsets[t];
        if (k == 1) {
            float *scores = score_buffer(n * group);
            group_heads64(c->kv_f16, (int)group, q, scores, c->scale, 0, n, table, c->block_size, c->kcache, c->vcache, row, kvh * 64,
                          c->out + t * c->ldo + kvh * group * 64, NULL);
        } else {
            const int64_t p0 = part * n / k, p1 = (part + 1) * n / k;
            float *scores = score_buffer((p1 - p0) * group);
            group_heads64(c->kv_f16, (int)group, q, scores, c->scale, p0, p1, table, c->block_size, c->kcache, c->vcache, row, kvh * 64,
                          NULL, c->parts + c->part_start[t] + (kvh * k + part) * group);
        }
    }
}

// The split tokens' heads: m = max of the parts' maxima, o = Σ_c e^(m_c - m)·o_c / Σ_c e^(m_c - m)·l_c, in
// part order, in double.
static void merge_parts(const attn_ctx *c) {
    const int64_t group = c->n_head / c->n_kv;
    for (int64_t t = 0; t < c->ntok; t++) {
        if (c->part_start[t] < 0) continue;
        const int64_t k = position_parts((int64_t)c->positions[t] + 1);
        for (int64_t h = 0; h < c->n_head; h++) {
            const int64_t kvh = h / group, g = h % group;
            const part_t *pp = c->parts + c->part_start[t] + kvh * k * group + g; // part i at pp[i * group]
            double m = pp[0].m, l = 0, o[64] = { 0 };
            for (int64_t i = 1; i < k; i++) if (pp[i * group].m > m) m = pp[i * group].m;
            for (int64_t i = 0; i < k; i++) {
                const double w = exp((double)pp[i * group].m - m);
                l += w * pp[i * group].l;
                for (int d = 0; d < 64; d++) o[d] += w * pp[i * group].o[d];
            }
            float *out = c->out + t * c->ldo + h * 64;
            for (int d = 0; d < 64; d++) out[d] = (float)(o[d] / l);
        }
    }
}

// The split path's bookkeeping (task and part offsets, the parts), grown on demand per calling thread.
static __thread void *tl_split_index, *tl_parts;
static __thread int64_t tl_split_index_bytes, tl_parts_bytes;
#endif

void dl_attention(const float *q, int64_t ldq, int64_t ntok, const int32_t *positions,
                  const int32_t *block_tables, const int64_t *table_offsets, int64_t block_size,
                  const void *kcache, const void *vcache, int kv_f16,
                  int64_t n_head, int64_t n_kv, int64_t head_dim, float scale,
                  float *out, int64_t ldo) {
    attn_ctx c = { q, ldq, positions, block_tables, table_offsets, block_size, kcache, vcache, kv_f16,
                   n_head, n_kv, head_dim, scale, out, ldo, ntok, NULL, NULL, NULL };
    int64_t tasks = ntok * n_head, work = 0, longest = 0;
    for (int64_t t = 0; t < ntok; t++) {
        const int64_t n = (int64_t)positions[t] + 1;
        work += n;
        if (n > longest) longest = n;
    }
    // Little work is cheaper done serially than handed to the pool.
    const int serial = work * n_head * head_dim < 65536;
#if defined(__x86_64__)
    if (dl_has_avx512() && head_dim == 64 && n_head % n_kv == 0 && n_head / n_kv <= 8) {
        if (position_parts(longest) == 1) {
            // Parts of whole groups (the pool's four parts per thread, rounded up to a multiple of the group),
            // so each kv head is read once per token. At batch 1 that leaves SmolLM2's 3 groups unevenly over 2
            // threads; splitting the heads evenly instead (5 and 4, so one kv head read twice) measured no
            // faster at 1,950 positions (6.6-6.8 against 5.9-6.3 ms per token in a C driver).
            const int64_t group = n_head / n_kv, parts = (int64_t)dl_num_threads() * 4;
            const int64_t grain = ((tasks + parts - 1) / parts + group - 1) / group * group;
            if (serial) attention_runs(&c, 0, tasks);
            else dl_parallel_for(tasks, grain, attention_runs, &c);
            return;
        }
        int64_t *task_start = (int64_t *)dl_grow_buffer(&tl_split_index, &tl_split_index_bytes,
                                                        (2 * ntok + 1) * (int64_t)sizeof(int64_t), "the attention split index");
        int64_t *part_start = task_start + ntok + 1, next_task = 0, next_part = 0;
        for (int64_t t = 0; t < ntok; t++) {
            const int64_t k = position_parts((int64_t)positions[t] + 1);
            task_start[t] = next_task;
            part_start[t] = k > 1 ? next_part : -1;
            next_task += n_kv * k;
            if (k > 1) next_part += n_head * k;
        }
        task_start[ntok] = next_task;
        c.task_start = task_start;
        c.part_start = part_start;
        c.parts = (part_t *)dl_grow_buffer(&tl_parts, &tl_parts_bytes, next_part * (int64_t)sizeof(part_t), "the attention split parts");
        dl_parallel_for(next_task, 1, attention_split, &c);
        merge_parts(&c);
        return;
    }
#endif
    if (serial) attention_range(&c, 0, tasks);
    else dl_parallel_for(tasks, 1, attention_range, &c);
}
