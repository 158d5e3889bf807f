// Products of 4- and 8-bit weights with activations quantized to int8 (llama.cpp's Q8 activations), on AVX-512
// VNNI's integer dot products (VPDPBUSD: 64 byte products per instruction, summed exactly in int32 lanes).
//
// The f32 fused kernels (matmul_dq.c) spend ~7 vector operations per 32-weight block and row (two table lookups on
// the one 512-bit shuffle port among them): at batch 1 on a CPU whose L3 holds the model they are bound by those
// instructions, not by memory. Here a row's blocks are repacked (dl_pack_q8, the same bytes per block) so that one
// 64-byte load holds one dword of each of 16 blocks, and a 16-block group costs per row four loads, twelve
// operations to split the nibbles and eight VPDPBUSD, then per token a conversion, a multiply and one or two
// multiply-adds: ~1.6 operations per block and row.
//
// The arithmetic, which every path (the AVX-512 kernel, the portable twin dl_matmul_q8_ref) computes bit for bit:
// - A token's activations, per block of 32: amax = max |x|, dx = amax / 127, qx = round-half-even(x / dx) (as x ·
//   (1 / dx)), int8. A block whose amax is below 1e-30 has dx = 0 and qx = 0; one holding an infinity or a NaN has
//   dx = NaN (its products come out NaN, as the f32 kernels' would).
// - A row's blocks are taken in groups: of 16 while 16 are left, then of 4, then of 2 (the block count padded to an
//   even one with a zero block). A group has 16 lanes; lane l belongs to block l mod p of its p blocks and sums
//   the exact integer products of 4·(8/L) of that block's 32 elements (L = 16/p lanes per block; for p = 2 lanes
//   8-15 hold nothing: their activations and scales are 0). Per lane: isum (exact: the weights' integer codes times
//   qx; Q4_0's codes minus 8, Q8_0's signed), then
//       acc = fma(d · dx, (float)isum, acc)            (d · dx rounded once)
//       acc = fma(m, dx · (float)Σqx_lane, acc)         (Q4_1's min; Σqx over the lane's elements)
//   and the row's result is dl_lane_tree16 of the 16 accumulators. Each token's result depends on its own
//   activations and the weights only, never on the batch: batch invariance by construction.
#include "ckernels.h"
#include "fatal.h"
#include "prefetch.h"
#include "simd.h"
#include <math.h>
#include <stdlib.h>

// ---------------------------------------------------------------- groups and layouts

// Bytes of one block in the checkpoint's layout (and the packed one): Q4_0 18, Q4_1 20, Q8_0 34.
static int q8_block_bytes(int type) { return type == DL_Q4_0 ? 18 : type == DL_Q4_1 ? 20 : 34; }

static int q8_supported(int type) { return type == DL_Q4_0 || type == DL_Q4_1 || type == DL_Q8_0; }

// How many groups of 16, 4 and 2 blocks a row of nb blocks (padded to even) takes, in that order.
typedef struct { int n16, n4, n2; } q8_groups;

static q8_groups groups_of(int64_t nb) {
    const int64_t nbp = nb + (nb & 1);
    q8_groups g = { (int)(nbp / 16), (int)(nbp % 16 / 4), (int)(nbp % 4 / 2) };
    return g;
}

static inline int group_count(q8_groups g) { return g.n16 + g.n4 + g.n2; }

// The size p of group gi.
static inline int group_size(q8_groups g, int gi) { return gi < g.n16 ? 16 : gi < g.n16 + g.n4 ? 4 : 2; }

// Lane l of a group of p blocks, step s of its 8 / L: the block (of the group) and the dword v (elements 4v..4v+3)
// it covers; -1 for the dead lanes of a 2-block group.
static inline int lane_block(int p, int l) { return p == 2 && l >= 8 ? -1 : l % p; }
static inline int lane_dword(int p, int l, int s) {
    const int L = p == 2 ? 4 : 16 / p;
    return s * L + l / p;
}
static inline int group_steps(int p) { return p == 16 ? 8 : 2; }

// A token's packed activations per group: steps × 64 bytes of qx, then dx[16] (f32), then aux[16]: Q4_1 the lane's
// dx · Σqx (f32), Q4_0 and Q8_0 the lane's −8·Σqx or −128·Σqx (int32, the starting value of its integer sum).
static int64_t group_x_bytes(int p) { return group_steps(p) * 64 + 128; }

static int64_t x_pack_bytes(int64_t nb) {
    const q8_groups g = groups_of(nb);
    return g.n16 * group_x_bytes(16) + g.n4 * group_x_bytes(4) + g.n2 * group_x_bytes(2);
}

int64_t dl_q8_bytes(int type, int64_t K, int64_t N) {
    if (!q8_supported(type) || K <= 0 || K % 32 || N < 0) return -1;
    const int64_t nb = K / 32;
    return (nb + (nb & 1)) * q8_block_bytes(type) * N;
}

// ---------------------------------------------------------------- activations

// A block's f16 scale, exactly (the library's conversion).
static inline float half_value(uint16_t h) {
    float f;
    dl_f16_to_f32(&h, &f, 1);
    return f;
}

// A block's scale from the bits of its max |x| (sign cleared), the rule every quantizer of int8 activations shares:
// an infinity or NaN gives d = NaN, below 1e-30 d = 0 (both with q zeroed: returns 0), else d = amax / 127 and its
// reciprocal id (returns 1: q still to be formed).
static inline int i8_block_scale(uint32_t amax_bits, int8_t *q, int n, float *d, float *id) {
    float amax;
    memcpy(&amax, &amax_bits, 4);
    if (amax_bits >= 0x7f800000u) { memset(q, 0, (size_t)n); *d = NAN; return 0; }
    if (amax < 1e-30f) { memset(q, 0, (size_t)n); *d = 0.0f; return 0; }
    *d = amax / 127.0f;
    *id = 1.0f / *d;
    return 1;
}

// n activations quantized as one block (the portable form; matmul_q8.c's blocks of 32, lora.c's expand's of 16): q[n],
// returns the scale d. amax = max |x|; an infinity or NaN gives d = NaN and q = 0, amax below 1e-30 gives d = 0 and
// q = 0; else d = amax / 127 and q = round-half-even(x · (1 / d)), clamped to ±127.
float dl_quantize_i8_block(const float *x, int n, int8_t *q) {
    uint32_t amax_bits = 0;
    for (int j = 0; j < n; j++) {
        uint32_t b;
        memcpy(&b, x + j, 4);
        b &= 0x7fffffffu;
        if (b > amax_bits) amax_bits = b;
    }
    float d, id;
    if (!i8_block_scale(amax_bits, q, n, &d, &id)) return d;
    for (int j = 0; j < n; j++) {
        float v = nearbyintf(x[j] * id);
        v = v > 127.0f ? 127.0f : v < -127.0f ? -127.0f : v;
        q[j] = (int8_t)v;
    }
    return d;
}

#if defined(__x86_64__)

// nb blocks of 32 activations (x[32·nb]) into qx and dx, sixteen blocks at a time: the blocks' max |x| bits by
// dl_lane_umaxes16 (an unsigned max, exact in any order, so an infinity or NaN wins as in the scalar rule), the scales
// by dl_i8_scales16 (vector divisions: the scalar rule's values), then per block the codes as the portable form rounds
// them (dl_i8_codes16). A block's scalar reduction and two divisions had made each block a chain of ~40 cycles, and a
// one-token LoRA shrink quantizes its token's row for every target.
DL_VNNI static void quantize_blocks_avx512(const float *x, int64_t nb, int8_t *qx, float *dx) {
    const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff);
    for (int64_t b0 = 0; b0 < nb; b0 += 16) {
        const int count = nb - b0 < 16 ? (int)(nb - b0) : 16;  // the missing blocks' lanes are 0: never read
        __m512i m[16];
        for (int i = 0; i < 16; i++) {
            const float *xb = x + (b0 + i) * 32;
            m[i] = i < count ? _mm512_max_epu32(_mm512_and_si512(_mm512_castps_si512(_mm512_loadu_ps(xb)), abs_mask),
                                                _mm512_and_si512(_mm512_castps_si512(_mm512_loadu_ps(xb + 16)), abs_mask))
                             : _mm512_setzero_si512();
        }
        __m512 idv;
        __mmask16 zero;
        const __m512 d = dl_i8_scales16(dl_lane_umaxes16(m), &idv, &zero);
        _mm512_mask_storeu_ps(dx + b0, (__mmask16)((1u << count) - 1), d);
        float ids[16];
        _mm512_storeu_ps(ids, idv);
        for (int i = 0; i < count; i++) {
            int8_t *q = qx + (b0 + i) * 32;
            if ((unsigned)zero >> i & 1) { memset(q, 0, 32); continue; }
            const float *xb = x + (b0 + i) * 32;
            const __m512 id = _mm512_set1_ps(ids[i]);
            for (int h = 0; h < 2; h++) _mm_storeu_si128((__m128i *)(q + 16 * h), _mm512_cvtsepi32_epi8(dl_i8_codes16(_mm512_loadu_ps(xb + 16 * h), id)));
        }
    }
}
#endif

#if defined(__x86_64__)
// A 16-block group's lanes (pack_x's layout, lane l = block l, step s = its dword s) by gathers, the lanes' Σqx by
// VPDPBUSD against ones: the scalar loop's bytes (a decode token's shrink of an int8 adapter spent most of its time
// in that loop).
DL_VNNI static void pack_group16(int type, const int8_t *q, const float *dx, uint8_t *o) {
    const __m512i lanes = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15), _mm512_set1_epi32(8));
    const __m512i ones = _mm512_set1_epi8(1);
    __m512i sum = _mm512_setzero_si512();
    for (int s = 0; s < 8; s++) {
        const __m512i v = _mm512_i32gather_epi32(_mm512_add_epi32(lanes, _mm512_set1_epi32(s)), (const void *)q, 4);
        _mm512_storeu_si512((void *)(o + 64 * s), v);
        sum = _mm512_dpbusd_epi32(sum, ones, v);
    }
    const __m512 d = _mm512_loadu_ps(dx);
    _mm512_storeu_ps((float *)(o + 512), d);
    if (type == DL_Q4_1) _mm512_storeu_ps((float *)(o + 576), _mm512_mul_ps(d, _mm512_cvtepi32_ps(sum)));
    else _mm512_storeu_si512((void *)(o + 576), _mm512_mullo_epi32(sum, _mm512_set1_epi32(type == DL_Q4_0 ? -8 : -128)));
}
#endif

#if defined(__x86_64__)
// quantize_block_avx512's twin on AVX2 (the same bytes and scale: the same amax, d, 1 / d, products and rounding).
DL_AVX2 static float quantize_block_avx2(const float *x, int8_t *q) {
    const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff);
    __m256 v[4];
    __m256i m = _mm256_setzero_si256();
    for (int i = 0; i < 4; i++) {
        v[i] = _mm256_loadu_ps(x + 8 * i);
        m = _mm256_max_epu32(m, _mm256_and_si256(_mm256_castps_si256(v[i]), abs_mask));
    }
    __m128i h = _mm_max_epu32(_mm256_castsi256_si128(m), _mm256_extracti128_si256(m, 1));
    h = _mm_max_epu32(h, _mm_shuffle_epi32(h, 0x4e));
    h = _mm_max_epu32(h, _mm_shuffle_epi32(h, 0xb1));
    float d, id;
    if (!i8_block_scale((uint32_t)_mm_cvtsi128_si32(h), q, 32, &d, &id)) return d;
    const __m256 vid = _mm256_set1_ps(id), lim = _mm256_set1_ps(127.0f), nlim = _mm256_set1_ps(-127.0f);
    __m256i c[4];
    for (int i = 0; i < 4; i++)
        c[i] = _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(_mm256_round_ps(_mm256_mul_ps(v[i], vid), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), nlim), lim));
    dl_store_i8x32(q, c);
    return d;
}

// pack_group16's twin on AVX2: each 64-byte step as two gathers of 8 lanes, the lanes' Σqx by VPMADDUBSW and VPMADDWD
// against ones (exact: a pair of codes at most 254).
DL_AVX2 static void pack_group16_avx2(int type, const int8_t *q, const float *dx, uint8_t *o) {
    const __m256i lanes = _mm256_setr_epi32(0, 8, 16, 24, 32, 40, 48, 56);
    const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
    __m256i sum[2] = { _mm256_setzero_si256(), _mm256_setzero_si256() };
    for (int s = 0; s < 8; s++)
        for (int h = 0; h < 2; h++) {
            const __m256i v = _mm256_i32gather_epi32((const int *)(const void *)(q + 256 * h), _mm256_add_epi32(lanes, _mm256_set1_epi32(s)), 4);
            _mm256_storeu_si256((__m256i *)(o + 64 * s + 32 * h), v);
            sum[h] = _mm256_add_epi32(sum[h], _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, v), ones16));
        }
    for (int h = 0; h < 2; h++) {
        const __m256 d = _mm256_loadu_ps(dx + 8 * h);
        _mm256_storeu_ps((float *)(o + 512 + 32 * h), d);
        if (type == DL_Q4_1) _mm256_storeu_ps((float *)(o + 576 + 32 * h), _mm256_mul_ps(d, _mm256_cvtepi32_ps(sum[h])));
        else _mm256_storeu_si256((__m256i *)(o + 576 + 32 * h), _mm256_mullo_epi32(sum[h], _mm256_set1_epi32(type == DL_Q4_0 ? -8 : -128)));
    }
}
#endif

// A token's row of K activations into its packed groups (x_pack_bytes(K / 32) bytes at dst). The quantization
// per block goes to scratch first (qx[nb·32], dx[nb]), then the lanes are laid out per group.
static void pack_x(int type, const float *x, int64_t K, uint8_t *dst, int8_t *qx, float *dx) {
    const int64_t nb = K / 32, nbp = nb + (nb & 1);
#if defined(__x86_64__)
    // The AVX-512 VNNI kernel's activations by AVX-512, the AVX2 kernel's by AVX2 (the same bytes as the portable way).
    const int vnni = dl_has_vnni512(), avx2 = !vnni && dl_has_avx2();
#else
    const int vnni = 0, avx2 = 0;
#endif
#if defined(__x86_64__)
    if (vnni) quantize_blocks_avx512(x, nb, qx, dx);
    else if (avx2) for (int64_t b = 0; b < nb; b++) dx[b] = quantize_block_avx2(x + b * 32, qx + b * 32);
    else
#endif
        for (int64_t b = 0; b < nb; b++) dx[b] = dl_quantize_i8_block(x + b * 32, 32, qx + b * 32);
    if (nbp > nb) { memset(qx + nb * 32, 0, 32); dx[nb] = 0.0f; }
    const q8_groups g = groups_of(nb);
    int64_t b0 = 0;
    uint8_t *o = dst;
    for (int gi = 0; gi < group_count(g); gi++) {
        const int p = group_size(g, gi), S = group_steps(p);
#if defined(__x86_64__)
        if (p == 16 && (vnni || avx2)) {
            if (vnni) pack_group16(type, qx + b0 * 32, dx + b0, o);
            else pack_group16_avx2(type, qx + b0 * 32, dx + b0, o);
            o += group_x_bytes(p);
            b0 += p;
            continue;
        }
#endif
        int32_t sum[16] = { 0 };
        for (int s = 0; s < S; s++)
            for (int l = 0; l < 16; l++) {
                const int blk = lane_block(p, l);
                int8_t *lane = (int8_t *)o + s * 64 + l * 4;
                if (blk < 0) { memset(lane, 0, 4); continue; }
                const int8_t *src = qx + (b0 + blk) * 32 + 4 * lane_dword(p, l, s);
                memcpy(lane, src, 4);
                sum[l] += src[0] + src[1] + src[2] + src[3];
            }
        float *dxs = (float *)(o + S * 64);
        for (int l = 0; l < 16; l++) {
            const int blk = lane_block(p, l);
            dxs[l] = blk < 0 ? 0.0f : dx[b0 + blk];
        }
        uint8_t *aux = o + S * 64 + 64;
        for (int l = 0; l < 16; l++) {
            if (type == DL_Q4_1) {
                const float v = dxs[l] * (float)sum[l];
                memcpy(aux + l * 4, &v, 4);
            } else {
                const int32_t v = -(type == DL_Q4_0 ? 8 : 128) * sum[l];
                memcpy(aux + l * 4, &v, 4);
            }
        }
        o += group_x_bytes(p);
        b0 += p;
    }
}

// ---------------------------------------------------------------- weights

// One group of p blocks from blocks[i] (the checkpoint's layout, bb bytes each) to o; returns the end.
static inline __attribute__((always_inline))
uint8_t *pack_group(const int type, const int p, const uint8_t *const *blocks, uint8_t *o) {
    const int four = type != DL_Q8_0, code_off = type == DL_Q4_1 ? 4 : 2;
    const int L = p == 2 ? 4 : 16 / p, lanes = p == 2 ? 8 : 16, vectors = four ? 8 / L / 2 : 8 / L;
    const uint32_t flip = four ? 0 : 0x80808080u;
    for (int i = 0; i < p; i++) memcpy(o + 2 * i, blocks[i], 2);
    o += 2 * p;
    if (type == DL_Q4_1) {
        for (int i = 0; i < p; i++) memcpy(o + 2 * i, blocks[i] + 2, 2);
        o += 2 * p;
    }
    for (int k = 0; k < vectors; k++) {
        for (int l = 0; l < lanes; l++) {
            uint32_t v;
            memcpy(&v, blocks[l % p] + code_off + 4 * (k * L + l / p), 4);
            v ^= flip;
            memcpy(o + l * 4, &v, 4);
        }
        o += lanes * 4;
    }
    return o;
}

static inline __attribute__((always_inline))
void pack_rows(const int type, const uint8_t *w, int64_t row_bytes, int64_t nb, int64_t N, uint8_t *dst) {
    const int64_t bb = q8_block_bytes(type);
    const q8_groups g = groups_of(nb);
    static const uint8_t zero[34];
    const uint8_t *blocks[16];
    for (int64_t r = 0; r < N; r++) {
        const uint8_t *row = w + r * row_bytes;
        uint8_t *o = dst;
        dst += (nb + (nb & 1)) * bb;
        int64_t b0 = 0;
        for (int gi = 0; gi < group_count(g); gi++) {
            const int p = group_size(g, gi);
            for (int i = 0; i < p; i++) blocks[i] = b0 + i < nb ? row + (b0 + i) * bb : zero;
            o = p == 16 ? pack_group(type, 16, blocks, o) : p == 4 ? pack_group(type, 4, blocks, o) : pack_group(type, 2, blocks, o);
            b0 += p;
        }
    }
}

// Each row's groups in order: the p blocks' f16 d, then (Q4_1) their f16 m, then the codes: a 4-bit group's p·16
// nibble bytes as 8 / L / 2 vectors of 16 dwords (vector k, lane l: the bytes 4v..4v+3, v = k·L + l / p, of block
// l mod p; their low nibbles are step k's elements, their high nibbles step k + S / 2's), an 8-bit group's p·32
// codes as 8 / L vectors (vector s, lane l: dword v = s·L + l / p of block l mod p, each byte XOR 0x80, the
// unsigned code + 128 VPDPBUSD takes). A 2-block group's vectors are 32 bytes (lanes 0-7). The padding block is
// zeros.
typedef struct {
    int type;
    const uint8_t *w;
    int64_t row_bytes, nb;
    uint8_t *dst;
} pack_rows_ctx;

// Rows [r0, r1): each row's packed copy depends on that row alone, at r · (its padded block count) · block bytes.
static void pack_rows_range(void *vctx, int64_t r0, int64_t r1) {
    const pack_rows_ctx *c = (const pack_rows_ctx *)vctx;
    const int64_t prow = (c->nb + (c->nb & 1)) * q8_block_bytes(c->type);
    const uint8_t *w = c->w + r0 * c->row_bytes;
    uint8_t *dst = c->dst + r0 * prow;
    switch (c->type) {
    case DL_Q4_0: pack_rows(DL_Q4_0, w, c->row_bytes, c->nb, r1 - r0, dst); return;
    case DL_Q4_1: pack_rows(DL_Q4_1, w, c->row_bytes, c->nb, r1 - r0, dst); return;
    default: pack_rows(DL_Q8_0, w, c->row_bytes, c->nb, r1 - r0, dst); return;
    }
}

// Over the pool for a large matrix (the model's at load, a Q8_0 merge's at every merge: ~100 M weights for an
// all-layer adapter, which one thread packed in 22-27 ms).
void dl_pack_q8(int type, const uint8_t *w, int64_t row_bytes, int64_t K, int64_t N, uint8_t *dst) {
    pack_rows_ctx c = { type, w, row_bytes, K / 32, dst };
    if (N * K < (1 << 16)) pack_rows_range(&c, 0, N);
    else dl_parallel_for(N, 16, pack_rows_range, &c);
}

// ---------------------------------------------------------------- the portable twin

// From the checkpoint's bytes (not the packed copy), so the tests check the packing too.
void dl_matmul_q8_ref(int type, const uint8_t *w, int64_t row_bytes, int64_t N, int64_t K, const float *X, int64_t ldx,
                      int64_t ntok, float *Y, int64_t ldy) {
    const int64_t nb = K / 32, nbp = nb + (nb & 1), bb = q8_block_bytes(type);
    int8_t *qx = malloc((size_t)nbp * 32);
    float *dx = malloc((size_t)nbp * sizeof(float));
    if (!qx || !dx) dl_fatal_alloc("the q8 reference's activations", (size_t)nbp * 36);
    const q8_groups g = groups_of(nb);
    for (int64_t t = 0; t < ntok; t++) {
        for (int64_t b = 0; b < nb; b++) dx[b] = dl_quantize_i8_block(X + t * ldx + b * 32, 32, qx + b * 32);
        if (nbp > nb) { memset(qx + nb * 32, 0, 32); dx[nb] = 0.0f; }
        for (int64_t r = 0; r < N; r++) {
            const uint8_t *row = w + r * row_bytes;
            float acc[16] = { 0 };
            int64_t b0 = 0;
            for (int gi = 0; gi < group_count(g); gi++) {
                const int p = group_size(g, gi), S = group_steps(p);
                for (int l = 0; l < 16; l++) {
                    const int blk = l % p; // a dead lane (p = 2) reads its block's scales, as the broadcast does
                    const int64_t b = b0 + blk;
                    const int live = lane_block(p, l) >= 0 && b < nb;
                    float d = 0.0f, m = 0.0f;
                    if (b < nb) {
                        const uint8_t *blkp = row + b * bb;
                        d = half_value((uint16_t)(blkp[0] | blkp[1] << 8));
                        if (type == DL_Q4_1) m = half_value((uint16_t)(blkp[2] | blkp[3] << 8));
                    }
                    int32_t isum = 0, sq = 0;
                    if (live) {
                        const uint8_t *blkp = row + b * bb;
                        for (int s = 0; s < S; s++) {
                            const int v = lane_dword(p, l, s);
                            for (int j = 4 * v; j < 4 * v + 4; j++) {
                                int code;
                                if (type == DL_Q8_0) code = (int8_t)blkp[2 + j];
                                else {
                                    const uint8_t byte = blkp[(type == DL_Q4_1 ? 4 : 2) + (j & 15)];
                                    code = j < 16 ? byte & 15 : byte >> 4;
                                    if (type == DL_Q4_0) code -= 8;
                                }
                                isum += code * qx[b * 32 + j];
                                sq += qx[b * 32 + j];
                            }
                        }
                    }
                    const float dxl = live ? dx[b] : 0.0f;
                    acc[l] = fmaf(d * dxl, (float)isum, acc[l]);
                    if (type == DL_Q4_1) acc[l] = fmaf(m, dxl * (float)sq, acc[l]);
                }
                b0 += p;
            }
            Y[t * ldy + r] = dl_lane_tree16(acc);
        }
    }
    free(qx);
    free(dx);
}

// ---------------------------------------------------------------- the AVX-512 VNNI kernel

#if defined(__x86_64__)
#ifndef Q8_PREFETCH_TILES
#define Q8_PREFETCH_TILES 1
#endif
int dl_has_vnni512(void) {
    static int cached = -1;
    if (cached < 0) cached = __builtin_cpu_supports("avx512vnni") ? 1 : 0;
    return cached && dl_has_avx512();
}

// A group's p f16 scales spread over the 16 lanes (lane l: block l mod p's), with loads and one conversion.
DL_VNNI static inline __attribute__((always_inline)) __m512 group_scales(const int p, const uint8_t *h) {
    if (p == 16) return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)h));
    if (p == 4) { int64_t v; memcpy(&v, h, 8); return _mm512_cvtph_ps(_mm256_set1_epi64x(v)); }
    int32_t v;
    memcpy(&v, h, 4);
    return _mm512_cvtph_ps(_mm256_set1_epi32(v));
}

// One group of NR rows × NT tokens: w points at row 0's group, rows prow bytes apart; xg at token 0's group,
// tokens xstride bytes apart.
DL_VNNI static inline __attribute__((always_inline))
void group_tile(const int type, const int p, const int NR, const int NT, const uint8_t *w, int64_t prow,
                const uint8_t *xg, int64_t xstride, __m512 *acc) {
    const int S = group_steps(p), four = type != DL_Q8_0;
    const __mmask16 live = p == 2 ? 0x00ff : 0xffff;
    for (int r = 0; r < NR; r++) {
        const uint8_t *g = w + r * prow;
        const __m512 d = group_scales(p, g), m = type == DL_Q4_1 ? group_scales(p, g + 2 * p) : _mm512_setzero_ps();
        g += (type == DL_Q4_1 ? 4 : 2) * p;
        __m512i codes[8];
        const int vbytes = p == 2 ? 32 : 64;
        if (four) {
            const __m512i lo4 = _mm512_set1_epi8(0x0f);
            for (int k = 0; k < S / 2; k++) {
                const __m512i nib = _mm512_maskz_loadu_epi32(live, g + k * vbytes);
                codes[k] = _mm512_and_si512(nib, lo4);
                codes[k + S / 2] = _mm512_and_si512(_mm512_srli_epi16(nib, 4), lo4);
            }
        } else {
            for (int s = 0; s < S; s++) codes[s] = _mm512_maskz_loadu_epi32(live, g + s * vbytes);
        }
        for (int t = 0; t < NT; t++) {
            const uint8_t *x = xg + t * xstride;
            __m512i isum = type == DL_Q4_1 ? _mm512_setzero_si512() : _mm512_loadu_si512(x + S * 64 + 64);
            for (int s = 0; s < S; s++) isum = _mm512_dpbusd_epi32(isum, codes[s], _mm512_loadu_si512(x + s * 64));
            const __m512 dx = _mm512_loadu_ps((const float *)(x + S * 64));
            __m512 a = _mm512_fmadd_ps(_mm512_mul_ps(d, dx), _mm512_cvtepi32_ps(isum), acc[r * NT + t]);
            if (type == DL_Q4_1) a = _mm512_fmadd_ps(m, _mm512_loadu_ps((const float *)(x + S * 64 + 64)), a);
            acc[r * NT + t] = a;
        }
    }
}

// The next tile's lines, prefetched over a tile's groups (both ISA paths; tiles of NR > 1 rows): the tile's NR rows are
// read interleaved, NR short streams the hardware prefetcher does not follow, while the next tile's bytes are
// contiguous. Up to the end of the rows this task runs (a small matrix's last tile, a LoRA adapter's A, would
// otherwise pull half as many bytes again of whatever lies beyond it).
typedef struct { const char *next; int64_t lines, per_group, line; } tile_prefetch;

static inline tile_prefetch tile_prefetch_of(const uint8_t *w, int NR, int64_t prow, const uint8_t *wend, q8_groups gs) {
    const char *next = (const char *)w + Q8_PREFETCH_TILES * NR * prow;
    // A tile of one row (5 to 8 tokens) reads its rows as one contiguous stream, which the hardware prefetcher follows:
    // the prefetches only took load slots (a Q8_0 product of 32 tokens 9 % slower with them; docs/design/core-engine.md).
    if (NR == 1) return (tile_prefetch){ next, 0, 0, 0 };
    const int64_t ahead = (const char *)wend > next ? ((const char *)wend - next + 63) / 64 : 0;
    const int64_t lines = (NR * prow + 63) / 64 < ahead ? (NR * prow + 63) / 64 : ahead;
    return (tile_prefetch){ next, lines, (lines + group_count(gs) - 1) / group_count(gs), 0 };
}

static inline __attribute__((always_inline)) void tile_prefetch_some(tile_prefetch *f) {
    for (int64_t j = 0; j < f->per_group && f->line < f->lines; j++, f->line++) _mm_prefetch(f->next + f->line * 64, _MM_HINT_T0);
}

// A tile's groups in order (of 16, 4, then 2 blocks), each GROUP(p) at wg (row 0's group) and xg (token 0's), the
// prefetch spread over them.
#define Q8_GROUPS_OF(P, COUNT, GROUP)                                                     \
    for (int i = 0; i < (COUNT); i++) {                                                   \
        tile_prefetch_some(&pf);                                                          \
        GROUP(P);                                                                         \
        wg += (P) * q8_block_bytes(type);                                                 \
        xg += group_x_bytes(P);                                                           \
    }
#define Q8_FOR_GROUPS(GROUP)                                                              \
    do {                                                                                  \
        tile_prefetch pf = tile_prefetch_of(w, NR, prow, wend, gs);                       \
        const uint8_t *wg = w, *xg = x;                                                   \
        Q8_GROUPS_OF(16, gs.n16, GROUP)                                                   \
        Q8_GROUPS_OF(4, gs.n4, GROUP)                                                     \
        Q8_GROUPS_OF(2, gs.n2, GROUP)                                                     \
    } while (0)

// A tile's NR × NT accumulators (lane l: block group lane l's partial sums).
DL_VNNI static inline __attribute__((always_inline))
void q8_tile_acc(const int type, const int NR, const int NT, const uint8_t *w, int64_t prow, q8_groups gs,
                 const uint8_t *x, int64_t xstride, const uint8_t *wend, __m512 acc[8]) {
    for (int i = 0; i < NR * NT; i++) acc[i] = _mm512_setzero_ps();
#define GROUP512(P) group_tile(type, P, NR, NT, wg, prow, xg, xstride, acc)
    Q8_FOR_GROUPS(GROUP512);
#undef GROUP512
}

DL_VNNI static inline __attribute__((always_inline))
void q8_tile(const int type, const int NR, const int NT, const uint8_t *w, int64_t prow, q8_groups gs,
             const uint8_t *x, int64_t xstride, float *y, int64_t ldy, const uint8_t *wend) {
    __m512 acc[8];
    q8_tile_acc(type, NR, NT, w, prow, gs, x, xstride, wend, acc);
    if (NR * NT == 8) {
        // The eight trees together (dl_lane_sums8, the same bits): a third of the shuffles and additions.
        float s[8];
        _mm256_storeu_ps(s, dl_lane_sums8(acc));
        for (int r = 0; r < NR; r++)
            for (int t = 0; t < NT; t++) y[t * ldy + r] = s[r * NT + t];
        return;
    }
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++) y[t * ldy + r] = dl_lane_sum(acc[r * NT + t]);
}

// Rows [r0, r1) in tiles of NR rows, then single rows, a prefetch-plan step per tile (both ISA paths; TILE is q8_tile or
// q8_tile2).
#define Q8_ROW_WALK(TILE)                                                                         \
    do {                                                                                          \
        int64_t r = r0;                                                                           \
        for (; r + NR <= r1; r += NR) {                                                           \
            TILE(type, NR, NT, W + r * prow, prow, gs, x, xstride, y + r, ldy, W + r1 * prow);    \
            dl_pf_step(f);                                                                        \
        }                                                                                         \
        for (; r < r1; r++) {                                                                     \
            TILE(type, 1, NT, W + r * prow, prow, gs, x, xstride, y + r, ldy, W + r1 * prow);     \
            dl_pf_step(f);                                                                        \
        }                                                                                         \
    } while (0)

// An 8 × 8 transpose: row i of the result is lane i of every input, in order.
DL_VNNI static inline __attribute__((always_inline)) void transpose8(__m256 v[8]) {
    __m256 a[8], b[8];
    for (int i = 0; i < 8; i += 2) {
        a[i] = _mm256_unpacklo_ps(v[i], v[i + 1]);
        a[i + 1] = _mm256_unpackhi_ps(v[i], v[i + 1]);
    }
    for (int i = 0; i < 8; i += 4) {
        b[i] = _mm256_shuffle_ps(a[i], a[i + 2], 0x44);
        b[i + 1] = _mm256_shuffle_ps(a[i], a[i + 2], 0xee);
        b[i + 2] = _mm256_shuffle_ps(a[i + 1], a[i + 3], 0x44);
        b[i + 3] = _mm256_shuffle_ps(a[i + 1], a[i + 3], 0xee);
    }
    for (int i = 0; i < 4; i++) {
        v[i] = _mm256_permute2f128_ps(b[i], b[i + 4], 0x20);
        v[i + 4] = _mm256_permute2f128_ps(b[i], b[i + 4], 0x31);
    }
}

DL_VNNI static inline __attribute__((always_inline))
void q8_rows_nt(const int type, const int NR, const int NT, const uint8_t *W, int64_t prow, q8_groups gs,
                const uint8_t *x, int64_t xstride, float *y, int64_t ldy, int64_t r0, int64_t r1, dl_pf *f) {
    if (NR == 1 && NT == 8) {
        // Eight rows' sums (dl_lane_sums8 per row, the same bits), transposed in registers so that each token's eight
        // outputs go out as one vector instead of eight scalar stores.
        for (; r0 + 8 <= r1; r0 += 8) {
            __m256 rows[8];
            for (int i = 0; i < 8; i++) {
                __m512 acc[8];
                q8_tile_acc(type, 1, 8, W + (r0 + i) * prow, prow, gs, x, xstride, W + r1 * prow, acc);
                rows[i] = dl_lane_sums8(acc);
                dl_pf_step(f);
            }
            transpose8(rows);
            for (int t = 0; t < 8; t++) _mm256_storeu_ps(y + t * ldy + r0, rows[t]);
        }
    }
    Q8_ROW_WALK(q8_tile);
}

DL_VNNI static inline __attribute__((always_inline))
void q8_rows_typed(const int type, const uint8_t *W, int64_t prow, q8_groups gs, const uint8_t *x, int64_t xstride,
                   int64_t ntok, float *y, int64_t ldy, int64_t r0, int64_t r1, dl_pf *f) {
    switch (ntok) {
    case 1: q8_rows_nt(type, 8, 1, W, prow, gs, x, xstride, y, ldy, r0, r1, f); return;
    case 2: q8_rows_nt(type, 4, 2, W, prow, gs, x, xstride, y, ldy, r0, r1, f); return;
    case 3: q8_rows_nt(type, 2, 3, W, prow, gs, x, xstride, y, ldy, r0, r1, f); return;
    case 4: q8_rows_nt(type, 2, 4, W, prow, gs, x, xstride, y, ldy, r0, r1, f); return;
    case 5: q8_rows_nt(type, 1, 5, W, prow, gs, x, xstride, y, ldy, r0, r1, f); return;
    case 6: q8_rows_nt(type, 1, 6, W, prow, gs, x, xstride, y, ldy, r0, r1, f); return;
    case 7: q8_rows_nt(type, 1, 7, W, prow, gs, x, xstride, y, ldy, r0, r1, f); return;
    default: q8_rows_nt(type, 1, 8, W, prow, gs, x, xstride, y, ldy, r0, r1, f); return;
    }
}

// Rows [r0, r1) of up to 8 tokens.
DL_VNNI static void q8_rows(int type, const uint8_t *W, int64_t prow, q8_groups gs, const uint8_t *x, int64_t xstride,
                            int64_t ntok, float *y, int64_t ldy, int64_t r0, int64_t r1, dl_pf *f) {
    switch (type) {
    case DL_Q4_0: q8_rows_typed(DL_Q4_0, W, prow, gs, x, xstride, ntok, y, ldy, r0, r1, f); return;
    case DL_Q4_1: q8_rows_typed(DL_Q4_1, W, prow, gs, x, xstride, ntok, y, ldy, r0, r1, f); return;
    default: q8_rows_typed(DL_Q8_0, W, prow, gs, x, xstride, ntok, y, ldy, r0, r1, f); return;
    }
}

// ---------------------------------------------------------------- the AVX2 twin (same bits)
// For CPUs without AVX-512 VNNI: each 64-byte vector of the packed layout as two 32-byte halves (lanes 0-7, 8-15), the
// accumulators as dl_lane_sum2's lo/hi pairs, so the lane tree is the AVX-512 kernel's. Where the CPU has AVX-VNNI
// (Alder Lake, Sapphire Rapids, Sierra Forest and later) the integer sums are VPDPBUSD's 256-bit VEX form, the AVX-512
// kernel's arithmetic on half the lanes. Elsewhere VPDPBUSD becomes VPMADDUBSW then VPMADDWD against ones, whose
// pairwise 16-bit sums are exact here: Q4_0/Q4_1 codes are 0-15 (a pair at most 2·15·127); Q8_0's are taken back to
// signed (the layout's +128 removed) and multiplied as |w| times x with w's sign (a pair at most 2·128·127 < 2^15), so
// its integer sum starts from 0 instead of −128·Σqx: the same Σ w·qx.
#define DL_AVX2_Q8 __attribute__((target("avx2,fma,f16c")))

DL_AVX2_Q8 static inline __attribute__((always_inline)) void group_scales2(const int p, const uint8_t *h, __m256 *lo, __m256 *hi) {
    if (p == 16) {
        *lo = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)h));
        *hi = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + 16)));
        return;
    }
    if (p == 4) {
        int64_t v;
        memcpy(&v, h, 8);
        *lo = *hi = _mm256_cvtph_ps(_mm_set1_epi64x(v));
        return;
    }
    int32_t v;
    memcpy(&v, h, 4);
    *lo = *hi = _mm256_cvtph_ps(_mm_set1_epi32(v));
}

// acc + Σ over each dword's 4 bytes of codes · x, exact (see above). vnni: AVX-VNNI's VPDPBUSD, written as an
// instruction so that these functions need no target beyond AVX2 (the caller checks dl_has_avxvnni).
DL_AVX2_Q8 static inline __attribute__((always_inline)) __m256i dot4_add(const int type, const int vnni, __m256i acc,
                                                                          __m256i codes, __m256i x) {
    if (vnni) {
        __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(acc) : "x"(codes), "x"(x));
        return acc;
    }
    const __m256i ones = _mm256_set1_epi16(1);
    if (type == DL_Q8_0) {
        const __m256i w = _mm256_xor_si256(codes, _mm256_set1_epi8((char)0x80));
        return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(x, w)), ones));
    }
    return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(codes, x), ones));
}

DL_AVX2_Q8 static inline __attribute__((always_inline))
void group_tile2(const int type, const int vnni, const int p, const int NR, const int NT, const uint8_t *w, int64_t prow,
                 const uint8_t *xg, int64_t xstride, __m256 *acc) {
    const int S = group_steps(p), four = type != DL_Q8_0, vbytes = p == 2 ? 32 : 64;
    for (int r = 0; r < NR; r++) {
        const uint8_t *g = w + r * prow;
        __m256 dlo, dhi, mlo = _mm256_setzero_ps(), mhi = _mm256_setzero_ps();
        group_scales2(p, g, &dlo, &dhi);
        if (type == DL_Q4_1) group_scales2(p, g + 2 * p, &mlo, &mhi);
        g += (type == DL_Q4_1 ? 4 : 2) * p;
        __m256i codes[8][2];
        const __m256i lo4 = _mm256_set1_epi8(0x0f);
        for (int k = 0; k < (four ? S / 2 : S); k++) {
            const __m256i v0 = _mm256_loadu_si256((const __m256i *)(g + k * vbytes));
            const __m256i v1 = p == 2 ? _mm256_setzero_si256() : _mm256_loadu_si256((const __m256i *)(g + k * vbytes + 32));
            if (four) {
                codes[k][0] = _mm256_and_si256(v0, lo4);
                codes[k][1] = _mm256_and_si256(v1, lo4);
                codes[k + S / 2][0] = _mm256_and_si256(_mm256_srli_epi16(v0, 4), lo4);
                codes[k + S / 2][1] = _mm256_and_si256(_mm256_srli_epi16(v1, 4), lo4);
            } else {
                codes[k][0] = v0;
                codes[k][1] = v1;
            }
        }
        for (int t = 0; t < NT; t++) {
            const uint8_t *x = xg + t * xstride;
            __m256i s0, s1;
            if (type == DL_Q4_0 || (type == DL_Q8_0 && vnni)) { // the −8·Σqx or −128·Σqx the unsigned codes need
                s0 = _mm256_loadu_si256((const __m256i *)(x + S * 64 + 64));
                s1 = _mm256_loadu_si256((const __m256i *)(x + S * 64 + 96));
            } else {
                s0 = s1 = _mm256_setzero_si256();
            }
            for (int k = 0; k < S; k++) {
                s0 = dot4_add(type, vnni, s0, codes[k][0], _mm256_loadu_si256((const __m256i *)(x + k * 64)));
                s1 = dot4_add(type, vnni, s1, codes[k][1], _mm256_loadu_si256((const __m256i *)(x + k * 64 + 32)));
            }
            const __m256 dx0 = _mm256_loadu_ps((const float *)(x + S * 64)), dx1 = _mm256_loadu_ps((const float *)(x + S * 64 + 32));
            __m256 a0 = _mm256_fmadd_ps(_mm256_mul_ps(dlo, dx0), _mm256_cvtepi32_ps(s0), acc[2 * (r * NT + t)]);
            __m256 a1 = _mm256_fmadd_ps(_mm256_mul_ps(dhi, dx1), _mm256_cvtepi32_ps(s1), acc[2 * (r * NT + t) + 1]);
            if (type == DL_Q4_1) {
                a0 = _mm256_fmadd_ps(mlo, _mm256_loadu_ps((const float *)(x + S * 64 + 64)), a0);
                a1 = _mm256_fmadd_ps(mhi, _mm256_loadu_ps((const float *)(x + S * 64 + 96)), a1);
            }
            acc[2 * (r * NT + t)] = a0;
            acc[2 * (r * NT + t) + 1] = a1;
        }
    }
}

DL_AVX2_Q8 static inline __attribute__((always_inline))
void q8_tile2(const int type, const int vnni, const int NR, const int NT, const uint8_t *w, int64_t prow, q8_groups gs,
              const uint8_t *x, int64_t xstride, float *y, int64_t ldy, const uint8_t *wend) {
    __m256 acc[8];
    for (int i = 0; i < 2 * NR * NT; i++) acc[i] = _mm256_setzero_ps();
#define GROUP256(P) group_tile2(type, vnni, P, NR, NT, wg, prow, xg, xstride, acc)
    Q8_FOR_GROUPS(GROUP256);
#undef GROUP256
    for (int r = 0; r < NR; r++)
        for (int t = 0; t < NT; t++) y[t * ldy + r] = dl_lane_sum2(acc[2 * (r * NT + t)], acc[2 * (r * NT + t) + 1]);
}

DL_AVX2_Q8 static inline __attribute__((always_inline))
void q8_rows2_nt(const int type, const int vnni, const int NR, const int NT, const uint8_t *W, int64_t prow, q8_groups gs,
                 const uint8_t *x, int64_t xstride, float *y, int64_t ldy, int64_t r0, int64_t r1, dl_pf *f) {
#define TILE2(type, ...) q8_tile2(type, vnni, __VA_ARGS__)
    Q8_ROW_WALK(TILE2);
#undef TILE2
}

// Up to 8 tokens a call: 4 at a time (4 row-token pairs: 8 accumulators, the 16 registers' half).
DL_AVX2_Q8 static inline __attribute__((always_inline))
void q8_rows2_typed(const int type, const int vnni, const uint8_t *W, int64_t prow, q8_groups gs, const uint8_t *x,
                    int64_t xstride, int64_t ntok, float *y, int64_t ldy, int64_t r0, int64_t r1, dl_pf *f) {
    for (int64_t t = 0; t < ntok; t += 4) {
        const int64_t nt = ntok - t < 4 ? ntok - t : 4;
        const uint8_t *xt = x + t * xstride;
        float *yt = y + t * ldy;
        switch (nt) {
        case 1: q8_rows2_nt(type, vnni, 4, 1, W, prow, gs, xt, xstride, yt, ldy, r0, r1, f); break;
        case 2: q8_rows2_nt(type, vnni, 2, 2, W, prow, gs, xt, xstride, yt, ldy, r0, r1, f); break;
        case 3: q8_rows2_nt(type, vnni, 1, 3, W, prow, gs, xt, xstride, yt, ldy, r0, r1, f); break;
        default: q8_rows2_nt(type, vnni, 1, 4, W, prow, gs, xt, xstride, yt, ldy, r0, r1, f); break;
        }
    }
}

DL_AVX2_Q8 static void q8_rows2(int type, const uint8_t *W, int64_t prow, q8_groups gs, const uint8_t *x, int64_t xstride,
                                int64_t ntok, float *y, int64_t ldy, int64_t r0, int64_t r1, dl_pf *f) {
#define Q8_ROWS2(T, V) q8_rows2_typed(T, V, W, prow, gs, x, xstride, ntok, y, ldy, r0, r1, f)
    const int vnni = dl_has_avxvnni();
    switch (type) {
    case DL_Q4_0: if (vnni) Q8_ROWS2(DL_Q4_0, 1); else Q8_ROWS2(DL_Q4_0, 0); return;
    case DL_Q4_1: if (vnni) Q8_ROWS2(DL_Q4_1, 1); else Q8_ROWS2(DL_Q4_1, 0); return;
    default: if (vnni) Q8_ROWS2(DL_Q8_0, 1); else Q8_ROWS2(DL_Q8_0, 0); return;
    }
#undef Q8_ROWS2
}

int dl_has_int8(void) { return dl_has_vnni512() ? 2 : dl_has_avx2() ? 1 : 0; }
#else
int dl_has_vnni512(void) { return 0; }
int dl_has_int8(void) { return 0; }
#endif

// ---------------------------------------------------------------- threading

typedef struct {
    int type;
    const uint8_t *W;
    int64_t prow, rows;
    q8_groups gs;
    const uint8_t *xp;
    int64_t xstride, ntok;
    float *Y;
    int64_t ldy;
    dl_pf_plan pf;  // spans to prefetch in the products' shadow (none: no spans)
    int64_t units;
} q8_ctx;

enum { Q8_UNIT = 16, Q8_TOKENS = 8 };

// The tiles q8_rows_typed (vnni) or q8_rows2_typed runs over `rows` rows of nt tokens: their rows per tile for the
// token count (the AVX2 kernel's in chunks of 4 tokens), then single rows.
static int64_t q8_tiles(int vnni, int64_t nt, int64_t rows) {
    if (vnni) {
        const int64_t nr = nt == 1 ? 8 : nt == 2 ? 4 : nt <= 4 ? 2 : 1;
        return rows / nr + rows % nr;
    }
    int64_t tiles = 0;
    for (int64_t t = 0; t < nt; t += 4) {
        const int64_t n = nt - t < 4 ? nt - t : 4, nr = n == 1 ? 4 : n == 2 ? 2 : 1;
        tiles += rows / nr + rows % nr;
    }
    return tiles;
}

static void q8_units(void *vctx, int64_t u0, int64_t u1) {
#if defined(__x86_64__)
    const q8_ctx *c = (const q8_ctx *)vctx;
    const int64_t r0 = u0 * Q8_UNIT, r1 = u1 * Q8_UNIT < c->rows ? u1 * Q8_UNIT : c->rows;
    // This task's share of the prefetch plan, a step per tile.
    const int vnni = dl_has_vnni512();
    int64_t tiles = 0;
    for (int64_t t = 0; t < c->ntok; t += Q8_TOKENS) tiles += q8_tiles(vnni, c->ntok - t < Q8_TOKENS ? c->ntok - t : Q8_TOKENS, r1 - r0);
    dl_pf f = dl_pf_share(&c->pf, u0, u1, c->units, tiles);
    void (*rows)(int, const uint8_t *, int64_t, q8_groups, const uint8_t *, int64_t, int64_t, float *, int64_t, int64_t, int64_t,
                 dl_pf *) = vnni ? q8_rows : q8_rows2;
    for (int64_t t = 0; t < c->ntok; t += Q8_TOKENS) {
        const int64_t nt = c->ntok - t < Q8_TOKENS ? c->ntok - t : Q8_TOKENS;
        rows(c->type, c->W, c->prow, c->gs, c->xp + t * c->xstride, c->xstride, nt, c->Y + t * c->ldy, c->ldy, r0, r1, &f);
    }
#else
    (void)vctx; (void)u0; (void)u1;
#endif
}

static __thread void *tl_xq, *tl_pack_scratch;
static __thread int64_t tl_xq_bytes, tl_pack_scratch_bytes;

// Tokens [t0, t1) of a product's activations packed (pack_x), with this thread's own quantization scratch: the pool
// packs a prefill chunk's or a large batch's tokens in parallel, where the calling thread alone took them one by one
// while the others waited for the rows.
typedef struct {
    int type;
    const float *X;
    int64_t ldx, K, xstride;
    uint8_t *dst;
} pack_ctx;

static void pack_range(void *vctx, int64_t t0, int64_t t1) {
    const pack_ctx *c = (const pack_ctx *)vctx;
    const int64_t nb = c->K / 32, nbp = nb + (nb & 1);
    int8_t *qx = (int8_t *)dl_grow_buffer(&tl_pack_scratch, &tl_pack_scratch_bytes, nbp * 36, "the activations' quantization scratch");
    float *dx = (float *)(qx + nbp * 32);
    for (int64_t t = t0; t < t1; t++) pack_x(c->type, c->X + t * c->ldx, c->K, c->dst + t * c->xstride, qx, dx);
}

// Quantizes and packs the tokens' activations, then runs the rows on the pool (parallel) or on the calling thread.
static void q8_run(int type, const uint8_t *Wp, int64_t N, int64_t K, const float *X, int64_t ldx, int64_t ntok,
                   float *Y, int64_t ldy, int parallel, const dl_span *prefetch, int64_t nprefetch) {
    if (N <= 0 || ntok <= 0) return;
    const int64_t nb = K / 32, nbp = nb + (nb & 1), xstride = x_pack_bytes(nb);
    if (!dl_has_int8()) {
        fprintf(stderr, "dlora kernels: dl_matmul_q8 needs AVX-512 VNNI or AVX2 (callers check dl_has_int8); aborting\n");
        abort();
    }
    uint8_t *buf = dl_grow_buffer(&tl_xq, &tl_xq_bytes, ntok * xstride, "the quantized activations");
    pack_ctx pc = { type, X, ldx, K, xstride, buf };
    if (parallel && ntok >= 16) dl_parallel_for(ntok, 4, pack_range, &pc);
    else pack_range(&pc, 0, ntok);
    const int64_t units = (N + Q8_UNIT - 1) / Q8_UNIT;
    q8_ctx c = { type, Wp, nbp * q8_block_bytes(type), N, groups_of(nb), buf, xstride, ntok, Y, ldy,
                 dl_pf_plan_of(prefetch, nprefetch), units };
    if (!parallel || N * K * ntok < (1 << 16)) q8_units(&c, 0, units);
    else dl_parallel_for(units, 1, q8_units, &c);
}

void dl_matmul_q8(int type, const uint8_t *Wp, int64_t N, int64_t K, const float *X, int64_t ldx, int64_t ntok,
                  float *Y, int64_t ldy, const dl_span *prefetch, int64_t nprefetch) {
    q8_run(type, Wp, N, K, X, ldx, ntok, Y, ldy, 1, prefetch, nprefetch);
}

void dl_matmul_q8_serial(int type, const uint8_t *Wp, int64_t N, int64_t K, const float *X, int64_t ldx, int64_t ntok,
                         float *Y, int64_t ldy) {
    q8_run(type, Wp, N, K, X, ldx, ntok, Y, ldy, 0, NULL, 0);
}
