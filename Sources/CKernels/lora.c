// LoRA over adapter segments: for each segment (a run of batch tokens that share one adapter and scale),
// y[t] += scale * B * (A * x[t]). Many small segments (one token each, 32 adapters in a batch of 32) are
// split over the pool in one contiguous part per thread, so a step pays one thread hand-off per matrix
// instead of two per segment; few large segments parallelise inside the matmuls instead. Either way each
// output element is computed in the same order: results do not depend on the split.
//
// Segments of up to 8 tokens (decode) are cut into pieces of up to 4 tokens, and each piece takes a kernel
// of its own, the grouped shrink/expand (Punica's BGMV), which streams the adapter's bytes once per piece
// with the weights converted to f32 in registers, once for all the piece's tokens:
//
//   u[t, j]  = lanes(A[j, :] · x[t])     j < prank, t < T: R rows x T tokens at a time (R·T = 16
//                                         accumulators: 16 rows for one token; a piece of 4 tokens
//                                         takes 4 rows x 4 tokens, smaller pieces token by token)
//   u[t, j] *= gate(t, j)                 MoLE only
//   for each token t of the piece:
//     p[o]  = lanes(B[o, :] · u[t])       o < out, 32 outputs at a time (expand512)
//     y[t, o] += scale * p[o]
//
// lanes(·) is matmul_dq.c's order: 16 lanes (k mod 16) accumulated by FMA in increasing k, then the fixed
// pairwise tree 16 → 8 → 4 → 2 → 1. The shrink's tile evaluates its 16 (row, token) trees together by a
// transpose network that performs exactly those additions (dl_lane_sums16, simd.h). The expand's K is the rank (16 for
// most adapters), so there a tree per 16 weights would be most of the work: B is held transposed in groups of
// 32 outputs (dl_lora_b_pack), each lane is a vector over 32 outputs, and the tree is 15 vector additions per
// 32 outputs in the same association, no transposes (a call of 32 one-token rank-16 segments, 576 → 1536, from cache:
// 25 µs against 43 for 16-row tiles with dl_lane_sums16; docs/design/lora-kernels.md). So this kernel
// gives the same bits as dl_matmul_dq followed by dl_add_scaled; segments of 9 or more tokens take
// dl_matmul_dq for the shrink and the same expand (ReferenceOps.loraApplyLanes is the twin).
// While it works on one segment it prefetches the next segment's A and B (a few lines per 16-weight step)
// into L2: one token's A and B are 18-66 KB read as 16 interleaved short streams, which the hardware
// prefetcher does not ramp up on in time (measured: 15 → 19-23 GB/s for 32 distinct rank-16 adapters).
// L2, not L1: a whole next segment does not fit in L1 beside the current one, and prefetching it there
// evicted the current segment's lines (T0 → T1: 12.1-12.5 → 10.4-11.1 ms for one step's 313 MB).
// Before this kernel a decode token's expand went through dl_matmul_dq with K = prank (16): a panel refill
// and a scalar dequantization call per row of 16 weights (docs/design/lora-kernels.md).
// Int8 adapters (wtype Q8_0, AVX-512 VNNI only; AdapterPrecision.int8, the choice beside int8 products): the shrink
// is dl_matmul_q8's (the token's activations quantized to int8 per 32, A's packed Q8_0 codes, exact int32 sums), a
// piece's on the calling thread, a long segment's over the pool; the expand (expand_vnni) quantizes u per 16 and
// takes B's codes with VPDPBUSD, 256 multiply-adds per four instructions. About half a BF16 adapter's bytes per step
// (docs/design/lora-kernels.md, "int8 adapters"). Int4 adapters (wtype Q4_0, AdapterPrecision.int4) take the same
// paths with A in Q4_0 and B's codes in nibbles: 0.54× an int8 adapter's bytes ("int4 adapters" below and in the doc).
// Without AVX-512 the AVX2 twin runs R·T ≤ 8 (row, token) pairs at a time, each 16-lane accumulator held as
// two 8-lane halves (lo lanes over all of K, then hi), reduced by the same tree (lane_sums8): the same bits.
#include "ckernels.h"
#include "simd.h"
#include "fatal.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

// Segments of fewer than SPLIT_BELOW tokens are cut into pieces of at most PIECE tokens, and each piece
// takes the grouped kernel; longer segments (prefill) take dl_matmul_dq.
enum { PIECE = 4, SPLIT_BELOW = 9 };

static _Thread_local void *tl_buf;
static _Thread_local int64_t tl_buf_bytes;

static float *lora_scratch(int64_t floats) {
    return (float *)dl_grow_buffer(&tl_buf, &tl_buf_bytes, floats * (int64_t)sizeof(float), "the LoRA shrink/expand scratch");
}

static _Thread_local void *tl_qu;
static _Thread_local int64_t tl_qu_bytes;

// ------------------------------------------------------------------ int8 adapters (Q8_0): B's layout and the expand
// B (out x prank) in groups of 16 outputs; per block of 16 rank indices (prank / 16 of them) qb_block_bytes(Q8_0) bytes: the 16
// outputs' f16 scales (output l's 16 values quantized as ggml's Q8_0 does: d = max|v| / 127, q = round(v / d)), then
// 4 vectors of 16 dwords, lane l of vector m holding output l's codes for the block's rank indices 4m..4m+3, each
// plus 128 (the unsigned bytes VPDPBUSD takes). The expand quantizes the token's u per block of 16 the way
// matmul_q8.c quantizes activations (du = max|u| / 127, qu = round-half-even(u · (1 / du)); below 1e-30 zero; an
// infinity or NaN gives du = NaN) and computes, per output o,
//     acc = fma(d[o, b] · du[b], (float)Σ_j q[o, j] · qu[j], acc)     over the blocks b in order, from +0
//     y[o] = y[o] + scale · acc                                     (the product and the sum rounded apart)
// the integer sums exact in int32 (started from −128 · Σ qu to take the +128 back out).
//
// Int4 adapters (wtype Q4_0; AdapterPrecision.int4): A is Q4_0 (ggml's rounding per 32 inputs), packed by dl_pack_q8
// for dl_matmul_q8's shrink; B is quantized per output and block of 16 rank indices by ggml's Q4_0 rule (d = m / −8
// where m is the value of largest magnitude, q = min(15, ⌊v / d + 8.5⌋) − 8, the f16 scale), in the same groups of 16
// outputs: per block the 16 scales, then two vectors of 16 dwords whose lane l holds output l's codes plus 8, rank
// indices 8h + i (i < 4) in byte i's low nibble and 8h + 4 + i in its high nibble. The expand is the same
// specification with q in −8..7 (the integer sums started from −8 · Σ qu). 10 bytes per 16 values instead of 18.
static inline int qb_is_quantized(int type) { return type == DL_Q8_0 || type == DL_Q4_0; }
static inline int64_t qb_block_bytes(int type) { return type == DL_Q4_0 ? 32 + 2 * 64 : 32 + 4 * 64; }
static inline int64_t qb_group_bytes(int type, int64_t prank) { return prank / 16 * qb_block_bytes(type); }
static inline int64_t qb_scale_offset(int type, int64_t prank, int64_t o, int64_t j) {
    return o / 16 * qb_group_bytes(type, prank) + j / 16 * qb_block_bytes(type) + 2 * (o % 16);
}
// The byte holding B[o, j]'s code (Q4_0: in the low nibble when (j mod 8) < 4, else the high one).
static inline int64_t qb_code_offset(int type, int64_t prank, int64_t o, int64_t j) {
    const int64_t vec = type == DL_Q4_0 ? (j % 16) / 8 : (j % 16) / 4;
    return o / 16 * qb_group_bytes(type, prank) + j / 16 * qb_block_bytes(type) + 32 + vec * 64 + (o % 16) * 4 + j % 4;
}
// The integer sum's start for a block of u whose −128 · Σ qu is `aux`: it takes the codes' offset back out (128 for
// Q8_0; 8 for Q4_0, −8 · Σ qu = aux / 16, exact).
static inline int32_t qb_start(int type, int32_t aux) { return type == DL_Q4_0 ? aux / 16 : aux; }

// B[o, j]'s signed code.
static inline int qb_code(int type, const uint8_t *packed, int64_t prank, int64_t o, int64_t j) {
    const uint8_t c = packed[qb_code_offset(type, prank, o, j)];
    if (type == DL_Q4_0) return ((j % 8) < 4 ? c & 15 : c >> 4) - 8;
    return c - 128;
}

// One output's 16 values of a block as ggml quantizes a Q8_0 block (d rounded to f16 after q is formed with the f32
// d): the f16 scale, and the codes into q.
static uint16_t quantize_b16(const float *v, int8_t *q) {
    float amax = 0.0f;
    for (int i = 0; i < 16; i++) amax = fabsf(v[i]) > amax ? fabsf(v[i]) : amax;
    const float d = amax / 127.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int i = 0; i < 16; i++) q[i] = (int8_t)roundf(v[i] * id);
    uint16_t h;
    dl_f32_to_f16(&d, &h, 1);
    return h;
}

// The same for ggml's Q4_0 rule over 16 values: q in −8..7.
static uint16_t quantize_b16_q4(const float *v, int8_t *q) {
    float amax = 0.0f, max = 0.0f;
    for (int i = 0; i < 16; i++)
        if (fabsf(v[i]) > amax) { amax = fabsf(v[i]); max = v[i]; }
    const float d = max / -8.0f, id = d != 0.0f ? 1.0f / d : 0.0f;
    for (int i = 0; i < 16; i++) {
        const int c = (int)(v[i] * id + 8.5f);
        q[i] = (int8_t)((c > 15 ? 15 : c) - 8);
    }
    uint16_t h;
    dl_f32_to_f16(&d, &h, 1);
    return h;
}

static void pack_quantized(int type, const float *b, int64_t out, int64_t prank, uint8_t *d) {
    float v[16];
    int8_t q[16];
    memset(d, 0, (size_t)((out + 15) / 16 * qb_group_bytes(type, prank))); // Q4_0's nibbles are OR-ed in
    for (int64_t o = 0; o < (out + 15) / 16 * 16; o++)
        for (int64_t j0 = 0; j0 < prank; j0 += 16) {
            for (int i = 0; i < 16; i++) v[i] = o < out ? b[o * prank + j0 + i] : 0.0f;
            const uint16_t h = type == DL_Q4_0 ? quantize_b16_q4(v, q) : quantize_b16(v, q);
            memcpy(d + qb_scale_offset(type, prank, o, j0), &h, 2);
            for (int i = 0; i < 16; i++) {
                uint8_t *c = d + qb_code_offset(type, prank, o, j0 + i);
                if (type == DL_Q4_0) *c |= (uint8_t)((q[i] + 8) << (i % 8 < 4 ? 0 : 4));
                else *c = (uint8_t)(q[i] + 128);
            }
        }
}

// A token's u (prank values) quantized per block of 16 as the activations are (dl_quantize_i8_block): qu[prank],
// du[prank / 16], and aux[prank / 16] = −128 · Σ qu.
static void quantize_u(const float *u, int64_t prank, int8_t *qu, float *du, int32_t *aux) {
    for (int64_t b = 0; b < prank / 16; b++) {
        int8_t *q = qu + 16 * b;
        du[b] = dl_quantize_i8_block(u + 16 * b, 16, q);
        int32_t sum = 0;
        for (int i = 0; i < 16; i++) sum += q[i];
        aux[b] = -128 * sum;
    }
}

#if defined(__x86_64__)
// quantize_u on AVX-512 (expand_vnni's; the same bytes, scales and sums): a block of 16 is one vector, its max |u| bits
// by an unsigned reduction, the scale by the shared rule (dl_i8_scales16), the codes rounded as the portable form does.
DL_VNNI static void quantize_u_avx512(const float *u, int64_t prank, int8_t *qu, float *du, int32_t *aux) {
    for (int64_t b = 0; b < prank / 16; b++) {
        const __m512 v = _mm512_loadu_ps(u + 16 * b);
        const uint32_t bits = _mm512_reduce_max_epu32(_mm512_and_si512(_mm512_castps_si512(v), _mm512_set1_epi32(0x7fffffff)));
        __m512 id;
        __mmask16 zero;
        du[b] = _mm512_cvtss_f32(dl_i8_scales16(_mm512_set1_epi32((int)bits), &id, &zero));
        const __m512i c = zero ? _mm512_setzero_si512() : dl_i8_codes16(v, id);
        _mm_storeu_si128((__m128i *)(qu + 16 * b), _mm512_cvtsepi32_epi8(c));
        aux[b] = -128 * _mm512_reduce_add_epi32(c);
    }
}
#endif

// The scratch for a token's quantized u: prank codes, then prank / 16 scales and integer starts (4-byte aligned).
typedef struct { int8_t *qu; float *du; int32_t *aux; } qu_scratch;

static qu_scratch qu_buffers(int64_t prank) {
    uint8_t *p = (uint8_t *)dl_grow_buffer(&tl_qu, &tl_qu_bytes, prank + prank / 2, "the LoRA expand's quantized u");
    return (qu_scratch){ (int8_t *)p, (float *)(p + prank), (int32_t *)(p + prank + prank / 4) };
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

// ------------------------------------------------------------------ B in the expand's layout
// B (out x prank) is held in groups of 32 outputs (the last group zero-padded), and per rank index j a group's
// 32 values side by side, so the expand of 32 outputs reads prank contiguous 32-value rows: element e of
// row j of group g holds output 32g + i at element lb_slot(type, i). BF16 interleaves the group's halves (element
// 2i is output i, 2i + 1 output 16 + i): one 64-byte load widens to outputs 0-15 by a shift and to 16-31 by a
// mask. F16 and F32 keep output order (their conversions take contiguous values).
static inline int64_t lb_slot(int type, int64_t i) { return type == DL_BF16 ? (i < 16 ? 2 * i : 2 * (i - 16) + 1) : i; }
static inline int64_t lb_elem(int type) { return type == DL_F32 ? 4 : 2; }

// Where B[o, j] sits in the packed layout.
static inline int64_t lb_offset(int type, int64_t prank, int64_t o, int64_t j) {
    return ((o / 32 * prank + j) * 32 + lb_slot(type, o % 32)) * lb_elem(type);
}

int64_t dl_lora_b_bytes(int type, int64_t out, int64_t prank) {
    if ((type != DL_F32 && type != DL_F16 && type != DL_BF16 && !qb_is_quantized(type)) || out <= 0 || prank <= 0 || prank % 16) return -1;
    if (qb_is_quantized(type)) return (out + 15) / 16 * qb_group_bytes(type, prank);
    return (out + 31) / 32 * prank * 32 * lb_elem(type);
}

void dl_lora_b_pack(int type, const void *b, int64_t out, int64_t prank, void *dst) {
    const int64_t es = lb_elem(type);
    const uint8_t *src = (const uint8_t *)b;
    uint8_t *d = (uint8_t *)dst;
    const int64_t bytes = dl_lora_b_bytes(type, out, prank);
    if (bytes < 0) return; // not a type or shape the layout holds (the callers check first)
    if (qb_is_quantized(type)) { pack_quantized(type, (const float *)b, out, prank, d); return; }
    memset(d, 0, (size_t)bytes); // the last group's padding
    for (int64_t o = 0; o < out; o++)
        for (int64_t j = 0; j < prank; j++) memcpy(d + lb_offset(type, prank, o, j), src + (o * prank + j) * es, (size_t)es);
}

// The value of B[o, j] from the packed layout, widened exactly.
static inline float lb_value(int type, const uint8_t *packed, int64_t prank, int64_t o, int64_t j) {
    uint16_t h;
    if (qb_is_quantized(type)) {
        memcpy(&h, packed + qb_scale_offset(type, prank, o, j), 2);
        float d;
        dl_f16_to_f32(&h, &d, 1);
        return d * (float)qb_code(type, packed, prank, o, j); // exact: an 8-bit code times an f16 scale
    }
    const uint8_t *p = packed + lb_offset(type, prank, o, j);
    if (type == DL_F32) { float f; memcpy(&f, p, 4); return f; }
    memcpy(&h, p, 2);
    if (type == DL_BF16) return dl_bf16_value(h);
    float f;
    dl_f16_to_f32(&h, &f, 1);
    return f;
}

void dl_lora_b_unpack(int type, const void *packed, int64_t out, int64_t prank, float *dst) {
    for (int64_t o = 0; o < out; o++)
        for (int64_t j = 0; j < prank; j++) dst[o * prank + j] = lb_value(type, (const uint8_t *)packed, prank, o, j);
}

// y[o] += scale · lanes(B[o, :] · u) for o < out, the portable way: lane l = Σ over j ≡ l (mod 16) of B[o, j]·u[j]
// by FMA in increasing j from +0, then the tree 16 → 8 → 4 → 2 → 1 (dl_lane_tree16), then the
// product and the sum rounded apart, as dl_add_scaled does.
static void expand_scalar(int type, const uint8_t *bp, int64_t out, int64_t prank, const float *u, float scale, float *y) {
    for (int64_t o = 0; o < out; o++) {
        float lanes[16] = { 0 };
        for (int64_t j = 0; j < prank; j++) lanes[j % 16] = fmaf(lb_value(type, bp, prank, o, j), u[j], lanes[j % 16]);
        const float p = scale * dl_lane_tree16(lanes);
        y[o] = y[o] + p;
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
// A segment's A bytes as the kernel reads them (Q8_0, Q4_0: dl_pack_q8's copy, its row blocks padded to even).
static int64_t seg_a_bytes(const dl_lora_seg *s, int64_t in) {
    return qb_is_quantized(s->wtype) ? dl_q8_bytes(s->wtype, in, s->prank) : s->prank * dl_row_bytes(s->wtype, in);
}

static prefetcher next_segment_prefetch(const lora_ctx *c, const dl_lora_seg *s, const dl_lora_seg *next) {
    if (!next) return (prefetcher){ 0 };
    const int64_t in = c->in, out = c->out, prank = s->prank;
    int64_t na = seg_a_bytes(next, in), nb = dl_lora_b_bytes(next->wtype, out, next->prank);
    // A Q8_0 or Q4_0 segment prefetches during its expand only (its shrink is dl_matmul_q8's), a step per 16 × 16 block.
    int64_t steps = qb_is_quantized(s->wtype) ? (out + 15) / 16 * (prank / 16) : prank / 16 * (in / 16) + (out + 31) / 32 * (prank / 8);
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


// R rows (row_bytes apart) x T tokens (x rows ldx apart) over K (a multiple of 16), R * T <= 16: lane
// r * T + t = lanes(W[r] · x_t) (the other lanes 0). Each 16 weights of a row are converted once for the T
// tokens. R and T are constants at every call site.
DL_AVX512_F16 static inline __attribute__((always_inline))
__m512 tile_rt(const int type, const int R, const int T, const uint8_t *w, int64_t row_bytes, int64_t K,
               const float *x, int64_t ldx, prefetcher *f) {
    __m512 acc[16];
    for (int i = 0; i < 16; i++) acc[i] = _mm512_setzero_ps();
    for (int64_t k = 0; k < K; k += 16) {
        if (f) prefetch_step(f);
        __m512 xv[4];
        for (int t = 0; t < T; t++) xv[t] = _mm512_loadu_ps(x + t * ldx + k);
        for (int r = 0; r < R; r++) {
            const __m512 wv = load16(type, w + r * row_bytes, k);
            for (int t = 0; t < T; t++) acc[r * T + t] = _mm512_fmadd_ps(wv, xv[t], acc[r * T + t]);
        }
    }
    return dl_lane_sums16(acc);
}


// The expand of one token, 32 outputs at a time from B's packed layout (dl_lora_b_pack): lane l of output o is
// Σ_{j ≡ l mod 16} B[o, j]·u[j] by FMA in increasing j from +0, as a vector over the 32 outputs, and the lane tree
// 16 → 8 → 4 → 2 → 1 is plain vector additions in the same association (((P0+P8) + (P4+P12)) + ((P2+P10) +
// (P6+P14))) + (((P1+P9) + (P5+P13)) + ((P3+P11) + (P7+P15))) — the bits of lanes(B[o, :] · u), with no
// transposes. Then y[o] += scale · p, the product and the sum rounded apart. Two prefetch steps per 16 rank
// indices of a group, as many as two 16-row tiles took.
typedef struct { __m512 lo, hi; } v32;

// The lane tree 16 → 8 → 4 → 2 → 1 over lane pairs Q(i) = P(i) + P(i + 8), in dl_lane_sum's association; both
// ISA paths spell their sums through it.
#define LANE_TREE(Q, ADD) ADD(ADD(ADD(Q(0), Q(4)), ADD(Q(2), Q(6))), ADD(ADD(Q(1), Q(5)), ADD(Q(3), Q(7))))

DL_AVX512_F16 static inline __attribute__((always_inline)) v32 widen32(const int type, const uint8_t *p) {
    if (type == DL_BF16) {
        const __m512i v = _mm512_loadu_si512((const void *)p);
        return (v32){ _mm512_castsi512_ps(_mm512_slli_epi32(v, 16)),
                      _mm512_castsi512_ps(_mm512_and_si512(v, _mm512_set1_epi32((int)0xffff0000u))) };
    }
    if (type == DL_F16)
        return (v32){ _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p)),
                      _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + 32))) };
    return (v32){ _mm512_loadu_ps((const float *)p), _mm512_loadu_ps((const float *)p + 16) };
}

DL_AVX512_F16 static inline __attribute__((always_inline)) v32 v32_add(v32 a, v32 b) {
    return (v32){ _mm512_add_ps(a.lo, b.lo), _mm512_add_ps(a.hi, b.hi) };
}

// Lane l over the group's rows (row j at grp + j · row).
DL_AVX512_F16 static inline __attribute__((always_inline))
v32 lane32(const int type, const uint8_t *grp, int64_t row, int64_t prank, const float *u, int l) {
    v32 a = { _mm512_setzero_ps(), _mm512_setzero_ps() };
    for (int64_t j = l; j < prank; j += 16) {
        const v32 w = widen32(type, grp + j * row);
        const __m512 uj = _mm512_set1_ps(u[j]);
        a.lo = _mm512_fmadd_ps(w.lo, uj, a.lo);
        a.hi = _mm512_fmadd_ps(w.hi, uj, a.hi);
    }
    return a;
}

#define LANE_Q(i) v32_add(lane32(type, grp, row, prank, u, (i)), lane32(type, grp, row, prank, u, (i) + 8))

// y[o, o + 16) += scale · p for the outputs of o below out (the product and the sum rounded apart).
DL_AVX512_F16 static inline __attribute__((always_inline)) void add_scaled16(float *y, int64_t o, int64_t out, __m512 vs, __m512 p) {
    const int64_t n = out - o;
    const __mmask16 k = n >= 16 ? 0xffff : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
    _mm512_mask_storeu_ps(y + o, k, _mm512_add_ps(_mm512_maskz_loadu_ps(k, y + o), _mm512_mul_ps(vs, p)));
}

// y[o, o + 32) += scale · t for the outputs of o below out.
DL_AVX512_F16 static inline __attribute__((always_inline)) void add_scaled32(float *y, int64_t o, int64_t out, __m512 vs, v32 t) {
    add_scaled16(y, o, out, vs, t.lo);
    add_scaled16(y, o + 16, out, vs, t.hi);
}

DL_AVX512_F16 static inline __attribute__((always_inline))
void expand512(const int type, const uint8_t *bp, int64_t out, int64_t prank, const float *u, float scale, float *y, prefetcher *f) {
    const int64_t row = 32 * lb_elem(type);
    const __m512 vs = _mm512_set1_ps(scale);
    for (int64_t o = 0; o < out; o += 32) {
        const uint8_t *grp = bp + o / 32 * prank * row;
        if (f)
            for (int64_t i = 0; i < prank / 8; i++) prefetch_step(f);
        add_scaled32(y, o, out, vs, LANE_TREE(LANE_Q, v32_add));
    }
}
#undef LANE_Q

// A block of the token's quantized u as the expand takes it: its 16 codes as four broadcast dwords, du, the integer start.
typedef struct { __m512i q[4]; __m512 du; __m512i aux; } qu_block;

// type Q8_0 or Q4_0: the integer start as qb_start gives it.
DL_VNNI static inline __attribute__((always_inline)) qu_block qu_block_of(const int type, qu_scratch s, int64_t b) {
    qu_block k;
    for (int m = 0; m < 4; m++) {
        int32_t q4;
        memcpy(&q4, s.qu + 16 * b + 4 * m, 4);
        k.q[m] = _mm512_set1_epi32(q4);
    }
    k.du = _mm512_set1_ps(s.du[b]);
    k.aux = _mm512_set1_epi32(qb_start(type, s.aux[b]));
    return k;
}

// acc + (d · du) · Σ q·qu for one block of 16 outputs (blk: its scales, then its code vectors: four of bytes for
// Q8_0, two of nibbles for Q4_0).
DL_VNNI static inline __attribute__((always_inline)) __m512 qb_block_fma(const int type, const uint8_t *blk, qu_block k, __m512 acc) {
    __m512i isum = k.aux;
    if (type == DL_Q4_0) {
        const __m512i low = _mm512_set1_epi8(15);
        for (int h = 0; h < 2; h++) {
            const __m512i v = _mm512_loadu_si512((const void *)(blk + 32 + 64 * h));
            isum = _mm512_dpbusd_epi32(isum, _mm512_and_si512(v, low), k.q[2 * h]);
            isum = _mm512_dpbusd_epi32(isum, _mm512_and_si512(_mm512_srli_epi16(v, 4), low), k.q[2 * h + 1]);
        }
    } else {
        for (int m = 0; m < 4; m++) isum = _mm512_dpbusd_epi32(isum, _mm512_loadu_si512((const void *)(blk + 32 + 64 * m)), k.q[m]);
    }
    const __m512 dd = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)blk)), k.du);
    return _mm512_fmadd_ps(dd, _mm512_cvtepi32_ps(isum), acc);
}

// The expand of a Q8_0 B on AVX-512 VNNI (the specification above): per group of 16 outputs and block of 16 rank
// indices, four VPDPBUSD of the outputs' codes against the block's qu broadcast a dword at a time, then one FMA with
// the outputs' scales times du. Needs dl_has_vnni512.
DL_VNNI static inline __attribute__((always_inline))
void expand_vnni_typed(const int type, const uint8_t *bp, int64_t out, int64_t prank, const float *u, float scale, float *y,
                       prefetcher *f) {
    const qu_scratch s = qu_buffers(prank);
    quantize_u_avx512(u, prank, s.qu, s.du, s.aux);
    const __m512 vs = _mm512_set1_ps(scale);
    const int64_t nb = prank / 16, block = qb_block_bytes(type);
    // The first block's qu (all of a rank-16 adapter's u) broadcast once for every group; the others' per group.
    const qu_block first = qu_block_of(type, s, 0);
    for (int64_t o = 0; o < out; o += 16) {
        const uint8_t *grp = bp + o / 16 * qb_group_bytes(type, prank);
        __m512 acc = _mm512_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            if (f) prefetch_step(f);
            acc = qb_block_fma(type, grp + b * block, b == 0 ? first : qu_block_of(type, s, b), acc);
        }
        add_scaled16(y, o, out, vs, acc);
    }
}

DL_VNNI static void expand_vnni(int type, const uint8_t *bp, int64_t out, int64_t prank, const float *u, float scale, float *y, prefetcher *f) {
    if (type == DL_Q4_0) expand_vnni_typed(DL_Q4_0, bp, out, prank, u, scale, y, f);
    else expand_vnni_typed(DL_Q8_0, bp, out, prank, u, scale, y, f);
}

// T tokens (1 or 4) of segment s from its token t0: shrink into u (token t's prank values at u + t * prank),
// gate, expand into y. The shrink's rows per tile: 16 for one token, 4 for four.
DL_AVX512_F16 static inline __attribute__((always_inline))
void piece_typed(const int type, const int T, const lora_ctx *c, const dl_lora_seg *s, int64_t t0, float *u, prefetcher *f) {
    const int R = T == 1 ? 16 : 4;
    const uint8_t *a = (const uint8_t *)s->a, *b = (const uint8_t *)s->b;
    const int64_t in = c->in, out = c->out, prank = s->prank, ldy = c->ldy;
    const int64_t a_row = dl_row_bytes(type, in);
    const float *x = c->x + (s->start + t0) * c->ldx;
    float *y = c->y + (s->start + t0) * ldy;
    float v[16];
    for (int64_t j = 0; j < prank; j += R) {
        _mm512_storeu_ps(v, tile_rt(type, R, T, a + j * a_row, a_row, in, x, c->ldx, f));
        for (int r = 0; r < R; r++)
            for (int t = 0; t < T; t++) u[t * prank + j + r] = v[r * T + t];
    }
    if (s->gates)
        for (int t = 0; t < T; t++) gate_columns(s, u + t * prank, s->gates + (t0 + t) * s->ldg);
    // The expand token by token (expand512); B is read from memory for the first token, from cache for the others.
    for (int t = 0; t < T; t++, f = NULL) expand512(type, b, out, prank, u + t * prank, s->scale, y + t * ldy, f);
}

// One piece (T = 1 or PIECE tokens of segment s from its token t0), specialised by weight type and T.
DL_AVX512_F16 static void piece512(const lora_ctx *c, const dl_lora_seg *s, int64_t t0, int T, float *u, prefetcher *f) {
    switch (s->wtype) {
    case DL_BF16: if (T == PIECE) piece_typed(DL_BF16, PIECE, c, s, t0, u, f); else piece_typed(DL_BF16, 1, c, s, t0, u, f); return;
    case DL_F16: if (T == PIECE) piece_typed(DL_F16, PIECE, c, s, t0, u, f); else piece_typed(DL_F16, 1, c, s, t0, u, f); return;
    default: if (T == PIECE) piece_typed(DL_F32, PIECE, c, s, t0, u, f); else piece_typed(DL_F32, 1, c, s, t0, u, f); return;
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

// R rows (row_bytes apart) x T tokens over K (a multiple of 16), R * T <= 8: lane r * T + t = lanes(W[r] · x_t)
// (the other lanes 0). The lo lanes (k mod 16 < 8) run over all of K, then the hi lanes: 8 accumulators a
// pass fit the 16 registers beside the tokens' x and one weight vector.
DL_AVX2 static inline __attribute__((always_inline))
__m256 tile2_rt(const int type, const int R, const int T, const uint8_t *w, int64_t row_bytes, int64_t K,
                const float *x, int64_t ldx, prefetcher *f) {
    __m256 lo[8], acc[8];
    for (int half = 0; half < 2; half++) {
        for (int i = 0; i < 8; i++) acc[i] = _mm256_setzero_ps();
        for (int64_t k = half * 8; k < K; k += 16) {
            if (f && half == 0) prefetch_step(f);
            __m256 xv[4];
            for (int t = 0; t < T; t++) xv[t] = _mm256_loadu_ps(x + t * ldx + k);
            for (int r = 0; r < R; r++) {
                const __m256 wv = load8(type, w + r * row_bytes, k);
                for (int t = 0; t < T; t++) acc[r * T + t] = _mm256_fmadd_ps(wv, xv[t], acc[r * T + t]);
            }
        }
        if (half == 0)
            for (int i = 0; i < 8; i++) lo[i] = acc[i];
    }
    for (int i = 0; i < 8; i++) acc[i] = _mm256_add_ps(lo[i], acc[i]);
    return lane_sums8(acc);
}

// expand512's twin, 16 packed elements (half h of a group's row) at a time as two 8-lane vectors: v0, v1 hold
// outputs 8h..8h+7 and 16+8h..16+8h+7 (BF16, interleaved) or 16h..16h+7 and 16h+8..16h+15 (F16, F32).
typedef struct { __m256 v0, v1; } v16;

DL_AVX2 static inline __attribute__((always_inline)) v16 widen16(const int type, const uint8_t *p) {
    if (type == DL_BF16) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)p);
        return (v16){ _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)),
                      _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32((int)0xffff0000u))) };
    }
    if (type == DL_F16)
        return (v16){ _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)), _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p + 16))) };
    return (v16){ _mm256_loadu_ps((const float *)p), _mm256_loadu_ps((const float *)p + 8) };
}

DL_AVX2 static inline __attribute__((always_inline)) v16 v16_add(v16 a, v16 b) {
    return (v16){ _mm256_add_ps(a.v0, b.v0), _mm256_add_ps(a.v1, b.v1) };
}

DL_AVX2 static inline __attribute__((always_inline))
v16 lane16(const int type, const uint8_t *half, int64_t row, int64_t prank, const float *u, int l) {
    v16 a = { _mm256_setzero_ps(), _mm256_setzero_ps() };
    for (int64_t j = l; j < prank; j += 16) {
        const v16 w = widen16(type, half + j * row);
        const __m256 uj = _mm256_set1_ps(u[j]);
        a.v0 = _mm256_fmadd_ps(w.v0, uj, a.v0);
        a.v1 = _mm256_fmadd_ps(w.v1, uj, a.v1);
    }
    return a;
}

#define LANE_Q2(i) v16_add(lane16(type, half, row, prank, u, (i)), lane16(type, half, row, prank, u, (i) + 8))

// y[o, o + 8) += scale · p for the outputs of o below out (a partial vector through a buffer).
DL_AVX2 static inline __attribute__((always_inline)) void add_scaled8(float *y, int64_t o, int64_t out, __m256 vs, __m256 p) {
    if (o >= out) return;
    if (out - o >= 8) { _mm256_storeu_ps(y + o, _mm256_add_ps(_mm256_loadu_ps(y + o), _mm256_mul_ps(vs, p))); return; }
    float buf[8];
    _mm256_storeu_ps(buf, _mm256_mul_ps(vs, p));
    for (int64_t i = 0; o + i < out; i++) y[o + i] = y[o + i] + buf[i];
}

DL_AVX2 static inline __attribute__((always_inline))
void expand256(const int type, const uint8_t *bp, int64_t out, int64_t prank, const float *u, float scale, float *y, prefetcher *f) {
    const int64_t row = 32 * lb_elem(type);
    const __m256 vs = _mm256_set1_ps(scale);
    for (int64_t o = 0; o < out; o += 32) {
        const uint8_t *grp = bp + o / 32 * prank * row;
        if (f)
            for (int64_t i = 0; i < prank / 8; i++) prefetch_step(f);
        for (int h = 0; h < 2; h++) {
            const uint8_t *half = grp + h * 16 * lb_elem(type);
            const v16 t = LANE_TREE(LANE_Q2, v16_add);
            const int64_t o0 = type == DL_BF16 ? o + 8 * h : o + 16 * h, o1 = type == DL_BF16 ? o + 16 + 8 * h : o + 16 * h + 8;
            add_scaled8(y, o0, out, vs, t.v0);
            add_scaled8(y, o1, out, vs, t.v1);
        }
    }
}
#undef LANE_Q2

// piece_typed's twin: the shrink's rows per tile are 8 for one token, 2 for four.
DL_AVX2 static inline __attribute__((always_inline))
void piece2_typed(const int type, const int T, const lora_ctx *c, const dl_lora_seg *s, int64_t t0, float *u, prefetcher *f) {
    const int R = T == 1 ? 8 : 2;
    const uint8_t *a = (const uint8_t *)s->a, *b = (const uint8_t *)s->b;
    const int64_t in = c->in, out = c->out, prank = s->prank, ldy = c->ldy;
    const int64_t a_row = dl_row_bytes(type, in);
    const float *x = c->x + (s->start + t0) * c->ldx;
    float *y = c->y + (s->start + t0) * ldy;
    float v[8];
    for (int64_t j = 0; j < prank; j += R) {
        _mm256_storeu_ps(v, tile2_rt(type, R, T, a + j * a_row, a_row, in, x, c->ldx, f));
        for (int r = 0; r < R; r++)
            for (int t = 0; t < T; t++) u[t * prank + j + r] = v[r * T + t];
    }
    if (s->gates)
        for (int t = 0; t < T; t++) gate_columns(s, u + t * prank, s->gates + (t0 + t) * s->ldg);
    // The expand token by token (expand256).
    for (int t = 0; t < T; t++, f = NULL) expand256(type, b, out, prank, u + t * prank, s->scale, y + t * ldy, f);
}

// piece512's twin.
DL_AVX2 static void piece256(const lora_ctx *c, const dl_lora_seg *s, int64_t t0, int T, float *u, prefetcher *f) {
    switch (s->wtype) {
    case DL_BF16: if (T == PIECE) piece2_typed(DL_BF16, PIECE, c, s, t0, u, f); else piece2_typed(DL_BF16, 1, c, s, t0, u, f); return;
    case DL_F16: if (T == PIECE) piece2_typed(DL_F16, PIECE, c, s, t0, u, f); else piece2_typed(DL_F16, 1, c, s, t0, u, f); return;
    default: if (T == PIECE) piece2_typed(DL_F32, PIECE, c, s, t0, u, f); else piece2_typed(DL_F32, 1, c, s, t0, u, f); return;
    }
}

// expand_vnni's twin on AVX-VNNI (the same bits): a group's 16 outputs as two halves of 8 (the first and second 32
// bytes of each 64-byte code vector, the scales' first and second 8), VPDPBUSD's 256-bit VEX form.
DL_AVX2_VNNI static inline __attribute__((always_inline))
void expand_avxvnni_typed(const int type, const uint8_t *bp, int64_t out, int64_t prank, const float *u, float scale, float *y,
                          prefetcher *f) {
    const qu_scratch s = qu_buffers(prank);
    quantize_u(u, prank, s.qu, s.du, s.aux);
    const __m256 vs = _mm256_set1_ps(scale);
    const int64_t nb = prank / 16, block = qb_block_bytes(type);
    for (int64_t o = 0; o < out; o += 16) {
        const uint8_t *grp = bp + o / 16 * qb_group_bytes(type, prank);
        __m256 lo = _mm256_setzero_ps(), hi = _mm256_setzero_ps();
        for (int64_t b = 0; b < nb; b++) {
            if (f) prefetch_step(f);
            const uint8_t *blk = grp + b * block;
            __m256i ilo = _mm256_set1_epi32(qb_start(type, s.aux[b])), ihi = ilo;
            __m256i qm[4];
            for (int m = 0; m < 4; m++) {
                int32_t q4;
                memcpy(&q4, s.qu + 16 * b + 4 * m, 4);
                qm[m] = _mm256_set1_epi32(q4);
            }
            if (type == DL_Q4_0) {
                const __m256i low = _mm256_set1_epi8(15);
                for (int h = 0; h < 2; h++) {
                    const __m256i vl = _mm256_loadu_si256((const __m256i *)(blk + 32 + 64 * h));
                    const __m256i vh = _mm256_loadu_si256((const __m256i *)(blk + 64 + 64 * h));
                    ilo = _mm256_dpbusd_avx_epi32(ilo, _mm256_and_si256(vl, low), qm[2 * h]);
                    ilo = _mm256_dpbusd_avx_epi32(ilo, _mm256_and_si256(_mm256_srli_epi16(vl, 4), low), qm[2 * h + 1]);
                    ihi = _mm256_dpbusd_avx_epi32(ihi, _mm256_and_si256(vh, low), qm[2 * h]);
                    ihi = _mm256_dpbusd_avx_epi32(ihi, _mm256_and_si256(_mm256_srli_epi16(vh, 4), low), qm[2 * h + 1]);
                }
            } else {
                for (int m = 0; m < 4; m++) {
                    ilo = _mm256_dpbusd_avx_epi32(ilo, _mm256_loadu_si256((const __m256i *)(blk + 32 + 64 * m)), qm[m]);
                    ihi = _mm256_dpbusd_avx_epi32(ihi, _mm256_loadu_si256((const __m256i *)(blk + 64 + 64 * m)), qm[m]);
                }
            }
            const __m256 du = _mm256_set1_ps(s.du[b]);
            const __m256 dlo = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)blk)), du);
            const __m256 dhi = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(blk + 16))), du);
            lo = _mm256_fmadd_ps(dlo, _mm256_cvtepi32_ps(ilo), lo);
            hi = _mm256_fmadd_ps(dhi, _mm256_cvtepi32_ps(ihi), hi);
        }
        add_scaled8(y, o, out, vs, lo);
        add_scaled8(y, o + 8, out, vs, hi);
    }
}

DL_AVX2_VNNI static void expand_avxvnni(int type, const uint8_t *bp, int64_t out, int64_t prank, const float *u, float scale,
                                        float *y, prefetcher *f) {
    if (type == DL_Q4_0) expand_avxvnni_typed(DL_Q4_0, bp, out, prank, u, scale, y, f);
    else expand_avxvnni_typed(DL_Q8_0, bp, out, prank, u, scale, y, f);
}
#endif

// Whether this thread can run a Q8_0 or Q4_0 adapter's expand: AVX-512 VNNI, or AVX-VNNI on the AVX2 path.
static int q8_expand_path(void) {
#if defined(__x86_64__)
    return dl_has_vnni512() ? 2 : dl_has_avxvnni() ? 1 : 0;
#else
    return 0;
#endif
}

int dl_has_int8_adapters(void) { return q8_expand_path() != 0; }

// A Q8_0 or Q4_0 B's expand of one token on the path this thread may use (the same bits on each).
static void expand_q8(int type, const uint8_t *bp, int64_t out, int64_t prank, const float *u, float scale, float *y, prefetcher *f) {
#if defined(__x86_64__)
    switch (q8_expand_path()) {
    case 2: expand_vnni(type, bp, out, prank, u, scale, y, f); return;
    case 1: expand_avxvnni(type, bp, out, prank, u, scale, y, f); return;
    }
#endif
    (void)type; (void)bp; (void)out; (void)prank; (void)u; (void)scale; (void)y; (void)f;
    // (Callers hold adapters in Q8_0 or Q4_0 only where the CPU can: AdapterPrecision, LoRAOperands.)
    fprintf(stderr, "dlora kernels: a quantized adapter's expand needs AVX-512 VNNI or AVX-VNNI; aborting\n");
    abort();
}

// A piece of a Q8_0 or Q4_0 segment (T <= PIECE tokens from t0): the shrink with int8 activations (dl_matmul_q8's bits),
// gates, the expand token by token.
static void piece_q8(const lora_ctx *c, const dl_lora_seg *s, int64_t t0, int64_t T, float *u, prefetcher *f) {
    const float *x = c->x + (s->start + t0) * c->ldx;
    float *y = c->y + (s->start + t0) * c->ldy;
    dl_matmul_q8_serial(s->wtype, (const uint8_t *)s->a, s->prank, c->in, x, c->ldx, T, u, s->prank);
    if (s->gates)
        for (int64_t t = 0; t < T; t++) gate_columns(s, u + t * s->prank, s->gates + (t0 + t) * s->ldg);
    for (int64_t t = 0; t < T; t++, f = NULL) expand_q8(s->wtype, (const uint8_t *)s->b, c->out, s->prank, u + t * s->prank, s->scale, y + t * c->ldy, f);
}

// One token's expand on the best path this thread may use (the same bits on each).
#if defined(__x86_64__)
DL_AVX512_F16 static void expand512_any(int type, const uint8_t *bp, int64_t out, int64_t prank, const float *u, float scale, float *y) {
    switch (type) {
    case DL_BF16: expand512(DL_BF16, bp, out, prank, u, scale, y, NULL); return;
    case DL_F16: expand512(DL_F16, bp, out, prank, u, scale, y, NULL); return;
    default: expand512(DL_F32, bp, out, prank, u, scale, y, NULL); return;
    }
}

DL_AVX2 static void expand256_any(int type, const uint8_t *bp, int64_t out, int64_t prank, const float *u, float scale, float *y) {
    switch (type) {
    case DL_BF16: expand256(DL_BF16, bp, out, prank, u, scale, y, NULL); return;
    case DL_F16: expand256(DL_F16, bp, out, prank, u, scale, y, NULL); return;
    default: expand256(DL_F32, bp, out, prank, u, scale, y, NULL); return;
    }
}
#endif

static void expand_one(int type, const uint8_t *bp, int64_t out, int64_t prank, const float *u, float scale, float *y) {
    if (qb_is_quantized(type)) { expand_q8(type, bp, out, prank, u, scale, y, NULL); return; }
#if defined(__x86_64__)
    if (dl_has_avx512()) { expand512_any(type, bp, out, prank, u, scale, y); return; }
    if (dl_has_avx2()) { expand256_any(type, bp, out, prank, u, scale, y); return; }
#endif
    expand_scalar(type, bp, out, prank, u, scale, y);
}

// A long segment's expand, its tokens split over the pool (each token's outputs are computed whole by one thread).
typedef struct {
    const lora_ctx *c;
    const dl_lora_seg *s;
    const float *u;  // the shrunk (and gated) values, prank per token
} expand_job;

static void expand_range(void *vctx, int64_t t0, int64_t t1) {
    const expand_job *e = (const expand_job *)vctx;
    const dl_lora_seg *s = e->s;
    for (int64_t t = t0; t < t1; t++)
        expand_one(s->wtype, (const uint8_t *)s->b, e->c->out, s->prank, e->u + t * s->prank, s->scale,
                   e->c->y + (s->start + t) * e->c->ldy);
}

static void one_segment(const lora_ctx *c, const dl_lora_seg *s, const dl_lora_seg *next) {
#if defined(__x86_64__)
    if (qb_is_quantized(s->wtype) && s->count <= PIECE) {
        prefetcher pf = next_segment_prefetch(c, s, next);
        piece_q8(c, s, 0, s->count, lora_scratch(PIECE * s->prank), next ? &pf : NULL);
        return;
    }
    void (*piece)(const lora_ctx *, const dl_lora_seg *, int64_t, int, float *, prefetcher *) =
        dl_has_avx512() ? piece512 : dl_has_avx2() ? piece256 : NULL;
    if (s->count <= PIECE && piece && !qb_is_quantized(s->wtype)) {
        prefetcher pf = next_segment_prefetch(c, s, next);
        prefetcher *f = next ? &pf : NULL; // the first piece prefetches the next segment
        float *u = lora_scratch(PIECE * s->prank);
        // Four tokens share the shrink's weight loads; fewer run one at a time (measured: blocking two or three
        // tokens did not pay in the engine).
        if (s->count == PIECE) { piece(c, s, 0, PIECE, u, f); return; }
        for (int64_t t = 0; t < s->count; t++, f = NULL) piece(c, s, t, 1, u, f);
        return;
    }
#endif
    // The shrink on dl_matmul_dq (A row-major, split over the pool; Q8_0: dl_matmul_q8 on A's packed copy), the
    // expand token by token from B's packed layout.
    float *tmp = lora_scratch(s->count * s->prank);
    if (qb_is_quantized(s->wtype)) dl_matmul_q8(s->wtype, (const uint8_t *)s->a, s->prank, c->in, c->x + s->start * c->ldx, c->ldx, s->count, tmp, s->prank, NULL, 0);
    else dl_matmul_dq(s->wtype, s->a, s->prank, c->in, c->x + s->start * c->ldx, c->ldx, s->count, tmp, s->prank);
    if (s->gates)
        for (int64_t t = 0; t < s->count; t++) gate_columns(s, tmp + t * s->prank, s->gates + t * s->ldg);
    expand_job job = { c, s, tmp };
    if (s->count * c->out * s->prank < (1 << 16)) expand_range(&job, 0, s->count);
    else dl_parallel_for(s->count, 1, expand_range, &job);
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

// A segment's cost in bytes streamed: a piece (grouped kernel) reads its A and B once, with arithmetic
// growing with its tokens; dl_matmul_dq reads them once per 4-token tile.
static int64_t segment_cost(const lora_ctx *c, const dl_lora_seg *s) {
    int64_t bytes = seg_a_bytes(s, c->in) + dl_lora_b_bytes(s->wtype, c->out, s->prank);
    return s->count <= PIECE ? bytes * (s->count + 1) / 2 : bytes * ((s->count + 3) / 4);
}

static void part_range(void *ctx, int64_t begin, int64_t end) {
    const lora_parts *p = (const lora_parts *)ctx;
    for (int64_t q = begin; q < end; q++) {
        const int64_t first = p->bounds[q], last = p->bounds[q + 1];
        for (int64_t i = first; i < last; i++)
            one_segment(p->c, &p->c->segs[i], i + 1 < last ? &p->c->segs[i + 1] : NULL);
    }
}

static _Thread_local void *tl_pieces;
static _Thread_local int64_t tl_pieces_bytes;

void dl_lora_apply(const dl_lora_seg *segs, int64_t nseg, int64_t in, int64_t out,
                   const float *x, int64_t ldx, float *y, int64_t ldy) {
    // Segments of 5-8 tokens are cut into pieces of at most PIECE tokens (a piece's gates start at its
    // first token's row): the grouped kernel reads a piece's weights once for all its tokens, and the
    // pieces can run on different threads.
    // all_pieces: no segment is long enough for dl_matmul_dq.
    int64_t npieces = 0;
    int all_pieces = 1;
    for (int64_t i = 0; i < nseg; i++) {
        if (segs[i].count < SPLIT_BELOW) {
            npieces += (segs[i].count + PIECE - 1) / PIECE;
        } else {
            npieces++;
            all_pieces = 0;
        }
    }
    const dl_lora_seg *work = segs;
    if (npieces != nseg) {
        dl_lora_seg *pieces = (dl_lora_seg *)dl_grow_buffer(&tl_pieces, &tl_pieces_bytes,
                                                         npieces * (int64_t)sizeof(dl_lora_seg), "the LoRA segment pieces");
        int64_t n = 0;
        for (int64_t i = 0; i < nseg; i++) {
            const dl_lora_seg *s = &segs[i];
            if (s->count >= SPLIT_BELOW) { pieces[n++] = *s; continue; }
            for (int64_t t = 0; t < s->count; t += PIECE) {
                dl_lora_seg q = *s;
                q.start = s->start + t;
                q.count = s->count - t < PIECE ? s->count - t : PIECE;
                if (s->gates) q.gates = s->gates + t * s->ldg;
                pieces[n++] = q;
            }
        }
        work = pieces;
    }
    lora_ctx c = { work, in, out, x, ldx, y, ldy };
    int64_t threads = dl_num_threads();
    if (threads > MAX_PARTS) threads = MAX_PARTS;
    // Pieces only: nothing parallelises inside them, so any count from one per thread up runs in parts. Few
    // long segments instead run one after another, each matmul split over the pool.
    if (threads > 1 && (npieces >= 2 * threads || (all_pieces && npieces >= threads))) {
        // Contiguous parts of about equal cost: part p ends at the first segment where the running cost
        // reaches (p + 1) / threads of the total.
        lora_parts parts = { .c = &c };
        int64_t total = 0;
        for (int64_t i = 0; i < npieces; i++) total += segment_cost(&c, &work[i]);
        int64_t acc = 0, p = 0;
        parts.bounds[0] = 0;
        for (int64_t i = 0; i < npieces && p + 1 < threads; i++) {
            acc += segment_cost(&c, &work[i]);
            if (acc * threads >= total * (p + 1)) parts.bounds[++p] = i + 1;
        }
        while (p < threads) parts.bounds[++p] = npieces;
        dl_parallel_for(threads, 1, part_range, &parts);
    } else {
        for (int64_t i = 0; i < npieces; i++) one_segment(&c, &work[i], i + 1 < npieces ? &work[i + 1] : NULL);
    }
}
