// LoRA over adapter segments: for each segment (a run of batch tokens that share one adapter and scale),
// y[t] += scale * B * (A * x[t]). Many small segments (one token each, 32 adapters in a batch of 32) are
// split over the pool in one contiguous part per thread, so a step pays one thread hand-off per matrix
// instead of two per segment; few large segments parallelise inside the matmuls instead. Either way each output element
// is computed in the same order: results do not depend on the split.
//
// Small segments (under SMALL_SEGMENT tokens: decode tokens) take a kernel of their own, the grouped
// shrink/expand (Punica's BGMV), which streams each adapter's bytes once per token with the weights
// converted to f32 in registers:
//
//   for each token t of the segment:
//     u[j]  = lanes(A[j, :] · x[t])       j < prank, 16 rows at a time (16 accumulators, one x load)
//     u[j] *= gate(t, j)                  MoLE only
//     p[o]  = lanes(B[o, :] · u)          o < out, 16 rows at a time
//     y[t, o] += scale * p[o]
//
// lanes(·) is matmul_dq.c's order: 16 lanes (k mod 16) accumulated by FMA in increasing k, then the fixed
// pairwise tree 16 → 8 → 4 → 2 → 1. The 16 rows' trees are evaluated together by a transpose network that
// performs exactly those additions (lane_sums16), so this kernel gives the same bits as dl_matmul_dq
// followed by dl_add_scaled, the path larger segments take (ReferenceOps.loraApplyLanes is the twin).
// While it works on one segment it prefetches the next segment's A and B (a few lines per 16-weight step)
// into L2: one token's A and B are 18-66 KB read as 16 interleaved short streams, which the hardware
// prefetcher does not ramp up on in time (measured: 15 → 19-23 GB/s for 32 distinct rank-16 adapters).
// L2, not L1: a whole next segment does not fit in L1 beside the current one, and prefetching it there
// evicted the current segment's lines (T0 → T1: 12.1-12.5 → 10.4-11.1 ms for one step's 313 MB).
// Before this kernel a decode token's expand went through dl_matmul_dq with K = prank (16): a panel refill
// and a scalar dequantization call per row of 16 weights (docs/design/lora-kernels.md).
// Without AVX-512 the AVX2 twin runs 8 rows at a time, each 16-lane accumulator held as two 8-lane halves
// (lo lanes over all of K, then hi), reduced by the same tree (lane_sums8): the same bits again.
#include "ckernels.h"
#include "simd.h"
#include "fatal.h"
#include <stdlib.h>

enum { SMALL_SEGMENT = 4 };

static _Thread_local float *tl_buf;
static _Thread_local int64_t tl_buf_floats;

static float *lora_scratch(int64_t floats) {
    if (floats > tl_buf_floats) {
        size_t bytes = (size_t)((floats + 15) / 16 * 16) * sizeof(float);
        free(tl_buf);
        tl_buf = (float *)aligned_alloc(64, bytes);
        if (!tl_buf) dl_fatal_alloc("the LoRA shrink/expand scratch", bytes);
        tl_buf_floats = floats;
    }
    return tl_buf;
}

typedef struct {
    const dl_lora_seg *segs;
    int64_t in, out;
    const float *x;
    int64_t ldx;
    float *y;
    int64_t ldy;
} lora_ctx;

// MoLE: each rank column scaled by its expert's gate for the token (exact products, so the order of the
// sums that follow is unchanged). u: the token's prank shrunk values; g: its gate row.
static void gate_columns(const dl_lora_seg *s, float *u, const float *g) {
    for (int64_t j = 0; j < s->prank; j++) {
        int32_t e = s->gate_col[j];
        u[j] = e >= 0 ? u[j] * g[e] : 0.0f;
    }
}

#if defined(__x86_64__)
// Software prefetch of the next segment's adapter bytes (A, then B), per_step cache lines per 16-weight
// step of this segment's first token, so they arrive spread over its work.
typedef struct {
    const char *p, *end, *p2, *end2;
    int64_t per_step;
} prefetcher;

static inline __attribute__((always_inline)) void prefetch_step(prefetcher *f) {
    for (int64_t i = 0; i < f->per_step; i++) {
        if (f->p >= f->end) {
            if (f->p2 >= f->end2) return;
            f->p = f->p2; f->end = f->end2; f->p2 = f->end2;
        }
        _mm_prefetch(f->p, _MM_HINT_T1);
        f->p += 64;
    }
}

// The prefetch of `next`'s A then B (nothing when next is NULL), spread over the 16-weight steps of s's
// first token as the AVX-512 kernel counts them (the AVX2 kernel, which takes twice the steps, finishes it
// halfway through).
static prefetcher next_segment_prefetch(const lora_ctx *c, const dl_lora_seg *s, const dl_lora_seg *next) {
    if (!next) return (prefetcher){ 0 };
    const int64_t in = c->in, out = c->out, prank = s->prank;
    int64_t na = next->prank * dl_row_bytes(next->wtype, in), nb = out * dl_row_bytes(next->wtype, next->prank);
    int64_t steps = prank / 16 * (in / 16) + (out + 15) / 16 * (prank / 16);
    return (prefetcher){ (const char *)next->a, (const char *)next->a + na, (const char *)next->b, (const char *)next->b + nb,
                         ((na + nb) / 64 + steps - 1) / steps };
}

// 16 consecutive weights of a row from element i, converted exactly to f32 (type F32, F16 or BF16; a
// constant at every call site). BF16 is the top half of an f32: widen and shift.
DL_AVX512_F16 static inline __attribute__((always_inline)) __m512 load16(const int type, const uint8_t *row, int64_t i) {
    if (type == DL_BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(
            _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)((const uint16_t *)row + i))), 16));
    if (type == DL_F16) return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)row + i)));
    return _mm512_loadu_ps((const float *)row + i);
}


// lane_sum of 16 vectors at once: lane m of the result is dl_lane_sum(v[m]), bit for bit. Each level adds
// lane i to lane i + h (h = 8, 4, 2, 1) of every vector, as lane_sum does, with two vectors' halves
// packed into one register so a level costs half the additions of the one before (15 vector additions
// for 16 trees instead of 64 scalar-ish ones); IEEE addition is commutative, so operand order is free.
DL_AVX512 static inline __attribute__((always_inline)) __m512 lane_sums16(const __m512 v[16]) {
    __m512 s8[8], s4[4], s2[2];
    // h = 8: s8[m] lanes 0-7 = v[2m] halves summed, lanes 8-15 = v[2m+1]'s.
    for (int m = 0; m < 8; m++)
        s8[m] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * m], v[2 * m + 1], 0x44),
                              _mm512_shuffle_f32x4(v[2 * m], v[2 * m + 1], 0xee));
    // h = 4: 128-bit lane q of s4[n] = 4 partial sums of v[4n + q].
    for (int n = 0; n < 4; n++)
        s4[n] = _mm512_add_ps(_mm512_shuffle_f32x4(s8[2 * n], s8[2 * n + 1], 0x88),
                              _mm512_shuffle_f32x4(s8[2 * n], s8[2 * n + 1], 0xdd));
    // h = 2: 128-bit lane q of s2[n] = [v[8n + q] (2 sums), v[8n + 4 + q] (2 sums)].
    for (int n = 0; n < 2; n++)
        s2[n] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(s4[2 * n]), _mm512_castps_pd(s4[2 * n + 1]))),
                              _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(s4[2 * n]), _mm512_castps_pd(s4[2 * n + 1]))));
    // h = 1: lane 4q + r holds v[4r + q]'s sum; the permutation puts it at lane 4r + q.
    __m512 s1 = _mm512_add_ps(_mm512_shuffle_ps(s2[0], s2[1], 0x88), _mm512_shuffle_ps(s2[0], s2[1], 0xdd));
    const __m512i order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    return _mm512_permutexvar_ps(order, s1);
}

// 16 rows (row_bytes apart) x one token over K (a multiple of 16): lane m = lanes(W[m] · x).
DL_AVX512_F16 static inline __attribute__((always_inline))
__m512 rows16(const int type, const uint8_t *w, int64_t row_bytes, int64_t K, const float *x, prefetcher *f) {
    __m512 acc[16];
    for (int r = 0; r < 16; r++) acc[r] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 16) {
        if (f) prefetch_step(f);
        __m512 xv = _mm512_loadu_ps(x + k);
        for (int r = 0; r < 16; r++) acc[r] = _mm512_fmadd_ps(load16(type, w + r * row_bytes, k), xv, acc[r]);
    }
    return lane_sums16(acc);
}

// One row x one token (the expand's last out % 16 rows).
DL_AVX512_F16 static inline __attribute__((always_inline))
float row1(const int type, const uint8_t *w, int64_t K, const float *x) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 16) acc = _mm512_fmadd_ps(load16(type, w, k), _mm512_loadu_ps(x + k), acc);
    return dl_lane_sum(acc);
}

DL_AVX512_F16 static inline __attribute__((always_inline))
void small_segment_typed(const int type, const lora_ctx *c, const dl_lora_seg *s, const dl_lora_seg *next, float *u) {
    const uint8_t *a = (const uint8_t *)s->a, *b = (const uint8_t *)s->b;
    const int64_t in = c->in, out = c->out, prank = s->prank;
    const int64_t a_row = dl_row_bytes(type, in), b_row = dl_row_bytes(type, prank);
    const __m512 scale = _mm512_set1_ps(s->scale);
    prefetcher pf = next_segment_prefetch(c, s, next), *f = next ? &pf : NULL;
    for (int64_t t = 0; t < s->count; t++, f = NULL) {
        const float *x = c->x + (s->start + t) * c->ldx;
        float *y = c->y + (s->start + t) * c->ldy;
        for (int64_t j = 0; j < prank; j += 16) _mm512_storeu_ps(u + j, rows16(type, a + j * a_row, a_row, in, x, f));
        if (s->gates) gate_columns(s, u, s->gates + t * s->ldg);
        int64_t o = 0;
        // y + scale * p: a product, then a sum, as dl_add_scaled rounds them.
        for (; o + 16 <= out; o += 16)
            _mm512_storeu_ps(y + o, _mm512_add_ps(_mm512_loadu_ps(y + o),
                                                  _mm512_mul_ps(scale, rows16(type, b + o * b_row, b_row, prank, u, f))));
        for (; o < out; o++) y[o] += s->scale * row1(type, b + o * b_row, prank, u);
    }
}

DL_AVX512_F16 static void small_segment(const lora_ctx *c, const dl_lora_seg *s, const dl_lora_seg *next) {
    float *u = lora_scratch(s->prank);
    switch (s->wtype) {
    case DL_BF16: small_segment_typed(DL_BF16, c, s, next, u); return;
    case DL_F16: small_segment_typed(DL_F16, c, s, next, u); return;
    default: small_segment_typed(DL_F32, c, s, next, u); return;
    }
}

// ------------------------------------------------------------------ AVX2 (same bits)

// 8 consecutive weights of a row from element i, converted exactly to f32.
DL_AVX2 static inline __attribute__((always_inline)) __m256 load8(const int type, const uint8_t *row, int64_t i) {
    if (type == DL_BF16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + i))), 16));
    if (type == DL_F16) return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)row + i)));
    return _mm256_loadu_ps((const float *)row + i);
}

// The rest of dl_lane_sum2's tree for 8 vectors at once: a[r] is row r's lo + hi (the tree's first level);
// lane r of the result is row r's sum. Level h = 4 adds the 128-bit halves of two vectors at a time,
// h = 2 and h = 1 pair lanes inside 128-bit halves, and a final permutation restores row order.
DL_AVX2 static inline __attribute__((always_inline)) __m256 lane_sums8(const __m256 a[8]) {
    __m256 s4[4], s2[2];
    for (int m = 0; m < 4; m++) // lanes 0-3: row 2m's b0..b3, lanes 4-7: row 2m+1's
        s4[m] = _mm256_add_ps(_mm256_permute2f128_ps(a[2 * m], a[2 * m + 1], 0x20),
                              _mm256_permute2f128_ps(a[2 * m], a[2 * m + 1], 0x31));
    for (int n = 0; n < 2; n++) // half 0: rows 4n, 4n+2 as (c0, c1); half 1: rows 4n+1, 4n+3
        s2[n] = _mm256_add_ps(_mm256_shuffle_ps(s4[2 * n], s4[2 * n + 1], 0x44),
                              _mm256_shuffle_ps(s4[2 * n], s4[2 * n + 1], 0xee));
    // half 0: rows 0, 2, 4, 6; half 1: rows 1, 3, 5, 7.
    __m256 s1 = _mm256_add_ps(_mm256_shuffle_ps(s2[0], s2[1], 0x88), _mm256_shuffle_ps(s2[0], s2[1], 0xdd));
    return _mm256_permutevar8x32_ps(s1, _mm256_set_epi32(7, 3, 6, 2, 5, 1, 4, 0));
}

// 8 rows (row_bytes apart) x one token over K (a multiple of 16): lane m = lanes(W[m] · x). The lo lanes
// (k mod 16 < 8) run over all of K, then the hi lanes: 8 accumulators a pass fit the 16 registers.
DL_AVX2 static inline __attribute__((always_inline))
__m256 rows8(const int type, const uint8_t *w, int64_t row_bytes, int64_t K, const float *x, prefetcher *f) {
    __m256 lo[8], acc[8];
    for (int half = 0; half < 2; half++) {
        for (int r = 0; r < 8; r++) acc[r] = _mm256_setzero_ps();
        for (int64_t k = half * 8; k < K; k += 16) {
            if (f && half == 0) prefetch_step(f);
            __m256 xv = _mm256_loadu_ps(x + k);
            for (int r = 0; r < 8; r++) acc[r] = _mm256_fmadd_ps(load8(type, w + r * row_bytes, k), xv, acc[r]);
        }
        if (half == 0)
            for (int r = 0; r < 8; r++) lo[r] = acc[r];
    }
    for (int r = 0; r < 8; r++) acc[r] = _mm256_add_ps(lo[r], acc[r]);
    return lane_sums8(acc);
}

DL_AVX2 static inline __attribute__((always_inline))
float row1_2(const int type, const uint8_t *w, int64_t K, const float *x) {
    __m256 lo = _mm256_setzero_ps(), hi = lo;
    for (int64_t k = 0; k < K; k += 16) {
        lo = _mm256_fmadd_ps(load8(type, w, k), _mm256_loadu_ps(x + k), lo);
        hi = _mm256_fmadd_ps(load8(type, w, k + 8), _mm256_loadu_ps(x + k + 8), hi);
    }
    return dl_lane_sum2(lo, hi);
}

DL_AVX2 static inline __attribute__((always_inline))
void small_segment2_typed(const int type, const lora_ctx *c, const dl_lora_seg *s, const dl_lora_seg *next, float *u) {
    const uint8_t *a = (const uint8_t *)s->a, *b = (const uint8_t *)s->b;
    const int64_t in = c->in, out = c->out, prank = s->prank;
    const int64_t a_row = dl_row_bytes(type, in), b_row = dl_row_bytes(type, prank);
    const __m256 scale = _mm256_set1_ps(s->scale);
    prefetcher pf = next_segment_prefetch(c, s, next), *f = next ? &pf : NULL;
    for (int64_t t = 0; t < s->count; t++, f = NULL) {
        const float *x = c->x + (s->start + t) * c->ldx;
        float *y = c->y + (s->start + t) * c->ldy;
        for (int64_t j = 0; j < prank; j += 8) _mm256_storeu_ps(u + j, rows8(type, a + j * a_row, a_row, in, x, f));
        if (s->gates) gate_columns(s, u, s->gates + t * s->ldg);
        int64_t o = 0;
        for (; o + 8 <= out; o += 8)
            _mm256_storeu_ps(y + o, _mm256_add_ps(_mm256_loadu_ps(y + o),
                                                  _mm256_mul_ps(scale, rows8(type, b + o * b_row, b_row, prank, u, f))));
        for (; o < out; o++) y[o] += s->scale * row1_2(type, b + o * b_row, prank, u);
    }
}

DL_AVX2 static void small_segment2(const lora_ctx *c, const dl_lora_seg *s, const dl_lora_seg *next) {
    float *u = lora_scratch(s->prank);
    switch (s->wtype) {
    case DL_BF16: small_segment2_typed(DL_BF16, c, s, next, u); return;
    case DL_F16: small_segment2_typed(DL_F16, c, s, next, u); return;
    default: small_segment2_typed(DL_F32, c, s, next, u); return;
    }
}
#endif

static void one_segment(const lora_ctx *c, const dl_lora_seg *s, const dl_lora_seg *next) {
#if defined(__x86_64__)
    if (s->count < SMALL_SEGMENT) {
        if (dl_has_avx512()) { small_segment(c, s, next); return; }
        if (dl_has_avx2()) { small_segment2(c, s, next); return; }
    }
#endif
    float *tmp = lora_scratch(s->count * (s->prank + c->out));
    float *prod = tmp + s->count * s->prank;
    dl_matmul_dq(s->wtype, s->a, s->prank, c->in, c->x + s->start * c->ldx, c->ldx, s->count, tmp, s->prank);
    if (s->gates)
        for (int64_t t = 0; t < s->count; t++) gate_columns(s, tmp + t * s->prank, s->gates + t * s->ldg);
    dl_matmul_dq(s->wtype, s->b, c->out, s->prank, tmp, s->prank, s->count, prod, c->out);
    dl_add_scaled(c->y + s->start * c->ldy, c->ldy, prod, c->out, s->scale, c->out, s->count);
}

// Many segments are split into one contiguous part per thread, balanced by their cost (below), rather
// than the pool's small chunks: each part's first segment is read without a prefetch, so fewer parts mean
// fewer cold starts (with the L2 prefetch, 4 chunks per thread → 1: 10.4-11.1 → 9.3-9.4 ms per step of
// 32 distinct all-layer rank-16 adapters, 313 MB, 33.5 GB/s of the 35.5 the machine streams).
enum { MAX_PARTS = 64 };

typedef struct {
    const lora_ctx *c;
    int64_t bounds[MAX_PARTS + 1];  // part p is segments [bounds[p], bounds[p + 1])
} lora_parts;

// A segment's cost in bytes streamed: its A and B once per token for the grouped kernel, once per 4 tokens
// for dl_matmul_dq's 4-token tiles.
static int64_t segment_cost(const lora_ctx *c, const dl_lora_seg *s) {
    int64_t bytes = s->prank * dl_row_bytes(s->wtype, c->in) + c->out * dl_row_bytes(s->wtype, s->prank);
    return bytes * (s->count < SMALL_SEGMENT ? s->count : (s->count + 3) / 4);
}

static void part_range(void *ctx, int64_t begin, int64_t end) {
    const lora_parts *p = (const lora_parts *)ctx;
    for (int64_t q = begin; q < end; q++) {
        const int64_t first = p->bounds[q], last = p->bounds[q + 1];
        for (int64_t i = first; i < last; i++)
            one_segment(p->c, &p->c->segs[i], i + 1 < last ? &p->c->segs[i + 1] : NULL);
    }
}

void dl_lora_apply(const dl_lora_seg *segs, int64_t nseg, int64_t in, int64_t out,
                   const float *x, int64_t ldx, float *y, int64_t ldy) {
    lora_ctx c = { segs, in, out, x, ldx, y, ldy };
    int64_t threads = dl_num_threads();
    if (threads > MAX_PARTS) threads = MAX_PARTS;
    if (nseg >= 2 * threads && threads > 1) {
        // Contiguous parts of about equal cost: part p ends at the first segment where the running cost
        // reaches (p + 1) / threads of the total.
        lora_parts parts = { .c = &c };
        int64_t total = 0;
        for (int64_t i = 0; i < nseg; i++) total += segment_cost(&c, &segs[i]);
        int64_t acc = 0, p = 0;
        parts.bounds[0] = 0;
        for (int64_t i = 0; i < nseg && p + 1 < threads; i++) {
            acc += segment_cost(&c, &segs[i]);
            if (acc * threads >= total * (p + 1)) parts.bounds[++p] = i + 1;
        }
        while (p < threads) parts.bounds[++p] = nseg;
        dl_parallel_for(threads, 1, part_range, &parts);
    } else {
        for (int64_t i = 0; i < nseg; i++) one_segment(&c, &segs[i], i + 1 < nseg ? &segs[i + 1] : NULL);
    }
}
