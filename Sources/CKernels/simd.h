// Private SIMD helpers shared by the C kernels: AVX-512 and AVX2 paths chosen at run time, a portable fallback.
#ifndef DLORA_SIMD_H
#define DLORA_SIMD_H
#include <stdint.h>
#include <string.h>

// The lane tree 16 → 8 → 4 → 2 → 1 of 16 scalar lanes (lane i + lane i + 8, then i + 4, i + 2, i + 1): the portable
// paths' form of the order every kernel's vector sums share (dl_lane_sum below).
static inline float dl_lane_tree16(const float lanes[16]) {
    float a[8], b[4], c[2];
    for (int j = 0; j < 8; j++) a[j] = lanes[j] + lanes[j + 8];
    for (int j = 0; j < 4; j++) b[j] = a[j] + a[j + 4];
    c[0] = b[0] + b[2];
    c[1] = b[1] + b[3];
    return c[0] + c[1];
}

// Eight double lanes summed by one fixed tree ((v0 + v4) + (v2 + v6)) + ((v1 + v5) + (v3 + v7)): the order the
// vector paths' double sums end in (attention's softmax terms, RMSNorm's sum of squares), so AVX-512 and AVX2 agree.
static inline double dl_sum_lanes8(const double v[8]) {
    const double w0 = v[0] + v[4], w1 = v[1] + v[5], w2 = v[2] + v[6], w3 = v[3] + v[7];
    return (w0 + w2) + (w1 + w3);
}

// bf16 by hand, for the portable paths and packing: f32 rounded to nearest even (a NaN stays a quiet NaN), and
// bf16 widened back (exact).
static inline uint16_t dl_bf16_round(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40);
    return (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

static inline float dl_bf16_value(uint16_t h) {
    const uint32_t x = (uint32_t)h << 16;
    float f;
    memcpy(&f, &x, 4);
    return f;
}

// The kernels pick a path at run time: 2 = AVX-512 (F, BW, VL, DQ), 1 = AVX2 with FMA and F16C (every
// x86-64 server since Haswell / Zen 1), 0 = portable C. dl_simd_limit caps the choice for the whole
// process (DLORA_SIMD_LIMIT, read at start-up; ops.c owns both caps); dl_simd_thread_limit for the
// calling thread and the pool chunks it hands out (tests run each path the machine has without touching
// kernels that run beside them).
extern int dl_simd_limit;
extern _Thread_local int dl_simd_thread_limit;
// AVX-VNNI (the VEX-coded 256-bit VPDPBUSD of Alder Lake, Sapphire Rapids and later) on the AVX2 path: dl_avxvnni_limit
// for the process (DLORA_AVX_VNNI=0 turns it off), dl_avxvnni_thread_limit for the calling thread and its pool chunks
// (tests run the AVX2 path with and without it on a machine that has it).
extern int dl_avxvnni_limit;
extern _Thread_local int dl_avxvnni_thread_limit;

#if defined(__x86_64__)
#include <immintrin.h>
#define DL_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
#define DL_AVX512_F16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma,f16c")))
// AVX-512 with VNNI's integer dot products (VPDPBUSD): matmul_q8.c's kernel and lora.c's int8 expand.
#define DL_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c")))
#define DL_AVX2 __attribute__((target("avx2,fma,f16c")))
#define DL_AVX2_VNNI __attribute__((target("avx2,fma,f16c,avxvnni")))
static inline int dl_cpu_simd_level(void) {
    static int cached = -1;
    if (cached < 0) {
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq"))
            cached = 2;
        else if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c"))
            cached = 1;
        else
            cached = 0;
    }
    return cached;
}
static inline int dl_has_avx512(void) { return dl_cpu_simd_level() >= 2 && dl_simd_limit >= 2 && dl_simd_thread_limit >= 2; }
static inline int dl_has_avx2(void) { return dl_cpu_simd_level() >= 1 && dl_simd_limit >= 1 && dl_simd_thread_limit >= 1; }
// Whether the AVX2 path may use AVX-VNNI's VPDPBUSD (the int8 products and the int8 LoRA expand; the same bits as
// without it). Off on the AVX-512 path, which has its own.
static inline int dl_has_avxvnni(void) {
    static int cached = -1;
    if (cached < 0) cached = dl_cpu_simd_level() >= 1 && __builtin_cpu_supports("avxvnni") ? 1 : 0;
    return cached && !dl_has_avx512() && dl_has_avx2() && dl_avxvnni_limit && dl_avxvnni_thread_limit;
}

// The fixed lane-sum order every kernel shares (matmul_dq.c's and lora.c's outputs are bit-identical because
// they reduce a vector the same way): pairwise halves 16 -> 8 -> 4 -> 2 -> 1. dl_sum8 is the tree from 8
// lanes down; dl_lane_sum adds an AVX-512 vector's halves first, dl_lane_sum2 a 16-lane accumulator held
// as two AVX2 registers (lo = lanes 0-7, hi = lanes 8-15), which is the same first level (lane i + lane
// i + 8), so the AVX2 kernels that keep such pairs give the AVX-512 kernels' bits.
// 32 int32 values in [-128, 127] (four vectors, in order) narrowed to 32 bytes at q, in order: the packs work within
// 128-bit halves, so their bytes come out as dwords 0 4 1 5 2 6 3 7 and one permutation puts them back.
DL_AVX2 static inline __attribute__((always_inline)) void dl_store_i8x32(int8_t *q, const __m256i c[4]) {
    const __m256i b = _mm256_packs_epi16(_mm256_packs_epi32(c[0], c[1]), _mm256_packs_epi32(c[2], c[3]));
    _mm256_storeu_si256((__m256i *)q, _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
}

// The lanes of a row's block that hold values, `left` being how many remain from the block's start: every lane of a
// full block (16, or 8 for AVX2), the first `left` of the last one (masked loads and stores for a row's tail).
static inline __mmask16 dl_mask16(int64_t left) { return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1); }
DL_AVX2 static inline __m256i dl_mask8(int64_t left) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(left < 8 ? left : 8)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

DL_AVX2 static inline float dl_sum8(__m256 a) {
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
    __m128 e = _mm_add_ss(c, _mm_movehdup_ps(c));
    return _mm_cvtss_f32(e);
}

DL_AVX512 static inline float dl_lane_sum(__m512 v) {
    return dl_sum8(_mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)));
}

DL_AVX2 static inline float dl_lane_sum2(__m256 lo, __m256 hi) { return dl_sum8(_mm256_add_ps(lo, hi)); }

// dl_lane_sum of 16 vectors at once: lane m of the result is dl_lane_sum(v[m]), bit for bit (lora.c's shrink
// tiles, attention.c's scores of 16 positions). Each level adds
// lane i to lane i + h (h = 8, 4, 2, 1) of every vector, as lane_sum does, with two vectors' halves
// packed into one register so a level costs half the additions of the one before (15 vector additions
// for 16 trees instead of 64 scalar-ish ones); IEEE addition is commutative, so operand order is free.
// The network itself, combining by addition (DL_FOLD_ADD), by max (DL_FOLD_MAX) or by the unsigned max of the lanes'
// bits (DL_FOLD_UMAX: matmul_q8.c's |x| bits, where an infinity or NaN must win): lane m of the result is v[m]'s
// sixteen lanes folded, by a max in any order (exact; the shuffles move bits unchanged) or by addition in
// dl_lane_sum's order. `fold` is a constant where it is inlined.
enum { DL_FOLD_ADD, DL_FOLD_MAX, DL_FOLD_UMAX };
DL_AVX512 static inline __attribute__((always_inline)) __m512 dl_lane_network16(const __m512 v[16], const int fold) {
#define DL_COMBINE(a, b)                                                                                                  \
    (fold == DL_FOLD_UMAX ? _mm512_castsi512_ps(_mm512_max_epu32(_mm512_castps_si512(a), _mm512_castps_si512(b)))          \
     : fold == DL_FOLD_MAX ? _mm512_max_ps((a), (b))                                                                      \
                           : _mm512_add_ps((a), (b)))
    __m512 s8[8], s4[4], s2[2];
    // h = 8: s8[m] lanes 0-7 = v[2m] halves summed, lanes 8-15 = v[2m+1]'s.
    for (int m = 0; m < 8; m++)
        s8[m] = DL_COMBINE(_mm512_shuffle_f32x4(v[2 * m], v[2 * m + 1], 0x44),
                           _mm512_shuffle_f32x4(v[2 * m], v[2 * m + 1], 0xee));
    // h = 4: 128-bit lane q of s4[n] = 4 partial sums of v[4n + q].
    for (int n = 0; n < 4; n++)
        s4[n] = DL_COMBINE(_mm512_shuffle_f32x4(s8[2 * n], s8[2 * n + 1], 0x88),
                           _mm512_shuffle_f32x4(s8[2 * n], s8[2 * n + 1], 0xdd));
    // h = 2: 128-bit lane q of s2[n] = [v[8n + q] (2 sums), v[8n + 4 + q] (2 sums)].
    for (int n = 0; n < 2; n++)
        s2[n] = DL_COMBINE(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(s4[2 * n]), _mm512_castps_pd(s4[2 * n + 1]))),
                           _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(s4[2 * n]), _mm512_castps_pd(s4[2 * n + 1]))));
    // h = 1: lane 4q + r holds v[4r + q]'s sum; the permutation puts it at lane 4r + q.
    __m512 s1 = DL_COMBINE(_mm512_shuffle_ps(s2[0], s2[1], 0x88), _mm512_shuffle_ps(s2[0], s2[1], 0xdd));
#undef DL_COMBINE
    const __m512i order = _mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0);
    return _mm512_permutexvar_ps(order, s1);
}

DL_AVX512 static inline __attribute__((always_inline)) __m512 dl_lane_sums16(const __m512 v[16]) { return dl_lane_network16(v, DL_FOLD_ADD); }

// Lane m of the result is the largest of v[m]'s lanes (quant.c's Q8_0 scales, sixteen blocks at a time).
DL_AVX512 static inline __attribute__((always_inline)) __m512 dl_lane_maxes16(const __m512 v[16]) { return dl_lane_network16(v, DL_FOLD_MAX); }

// Lane m of the result is the largest of v[m]'s lanes as unsigned 32-bit integers (matmul_q8.c's activation blocks'
// max |x|, sixteen blocks at a time).
DL_AVX512 static inline __attribute__((always_inline)) __m512i dl_lane_umaxes16(const __m512i v[16]) {
    __m512 f[16];
    for (int i = 0; i < 16; i++) f[i] = _mm512_castsi512_ps(v[i]);
    return _mm512_castps_si512(dl_lane_network16(f, DL_FOLD_UMAX));
}

// The int8 activations' scale rule (matmul_q8.c) on 16 lanes of max |x| bits: d = amax / 127 and *id = 1 / d as IEEE
// divisions (the scalar rule's values); a lane holding an infinity or NaN gets d = NaN and one below 1e-30 d = 0, and
// both are set in *zero (their codes are all 0).
DL_AVX512 static inline __attribute__((always_inline)) __m512 dl_i8_scales16(__m512i bits, __m512 *id, __mmask16 *zero) {
    const __mmask16 bad = _mm512_cmpge_epu32_mask(bits, _mm512_set1_epi32(0x7f800000));
    const __m512 amax = _mm512_castsi512_ps(bits);
    const __mmask16 tiny = _mm512_cmp_ps_mask(amax, _mm512_set1_ps(1e-30f), _CMP_LT_OQ) & (__mmask16)~bad;
    const __m512 d = _mm512_div_ps(amax, _mm512_set1_ps(127.0f));
    *id = _mm512_div_ps(_mm512_set1_ps(1.0f), d);
    *zero = bad | tiny;
    return _mm512_mask_mov_ps(_mm512_mask_mov_ps(d, bad, _mm512_set1_ps(__builtin_nanf(""))), tiny, _mm512_setzero_ps());
}

// 16 activations' int8 codes for the reciprocal scale id: round-half-even(x · id) as int32 lanes. |x · id| never
// rounds past 127 (|x| ≤ amax and three roundings of 127 stay below 127.5), so no clamp is needed, and the
// narrowing (VPMOVSDB) saturates anyway.
DL_AVX512 static inline __attribute__((always_inline)) __m512i dl_i8_codes16(__m512 x, __m512 id) {
    return _mm512_cvt_roundps_epi32(_mm512_mul_ps(x, id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
}

// dl_lane_sum of 8 vectors at once: lane m of the result is dl_lane_sum(v[m]), bit for bit (matmul_q8.c's tiles of
// 8 row-token pairs). dl_lane_sums16's network on half as many vectors: at h = 2 the one vector is paired with
// itself, so lanes 4q + 2, 4q + 3 repeat lanes 4q, 4q + 1 and the permutation reads only the first.
DL_AVX512 static inline __attribute__((always_inline)) __m256 dl_lane_sums8(const __m512 v[8]) {
    __m512 s8[4], s4[2];
    for (int m = 0; m < 4; m++)
        s8[m] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * m], v[2 * m + 1], 0x44),
                              _mm512_shuffle_f32x4(v[2 * m], v[2 * m + 1], 0xee));
    for (int n = 0; n < 2; n++)
        s4[n] = _mm512_add_ps(_mm512_shuffle_f32x4(s8[2 * n], s8[2 * n + 1], 0x88),
                              _mm512_shuffle_f32x4(s8[2 * n], s8[2 * n + 1], 0xdd));
    const __m512 s2 = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(s4[0]), _mm512_castps_pd(s4[1]))),
                                    _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(s4[0]), _mm512_castps_pd(s4[1]))));
    // lane 4q + r (r < 2) holds v[4r + q]'s sum.
    const __m512 s1 = _mm512_add_ps(_mm512_shuffle_ps(s2, s2, 0x88), _mm512_shuffle_ps(s2, s2, 0xdd));
    const __m512i order = _mm512_set_epi32(0, 0, 0, 0, 0, 0, 0, 0, 13, 9, 5, 1, 12, 8, 4, 0);
    return _mm512_castps512_ps256(_mm512_permutexvar_ps(order, s1));
}
// exp(y) for y in [−87.3, 88.3] (or NaN, which stays NaN) as 2^k · p(r): k = round(y · log2 e), in [−126, 127], r =
// y − k · ln 2 in two parts (Cody–Waite), p the degree-6 Taylor polynomial of e^r on |r| ≤ ln2 / 2 (relative error
// < 2e-7 there, below f32's rounding of the terms). The AVX2 form does the same operations, so the same bits.
// dl_exp_neg16 (dl_exp_neg8): y ≤ 0, first raised to −87.3 (e^y under f32's smallest normal), so callers mask those
// lanes (and −∞) to 0 themselves; NaN stays NaN (max returns its second operand, y, on NaN).
DL_AVX512 static inline __attribute__((always_inline)) __m512 dl_exp16(__m512 y) {
    const __m512 k = _mm512_roundscale_ps(_mm512_mul_ps(y, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), y);
    r = _mm512_fnmadd_ps(k, _mm512_set1_ps(-2.12194440e-4f), r);
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, k);
}

DL_AVX512 static inline __attribute__((always_inline)) __m512 dl_exp_neg16(__m512 y) {
    return dl_exp16(_mm512_max_ps(_mm512_set1_ps(-87.3f), y));
}

DL_AVX2 static inline __attribute__((always_inline)) __m256 dl_exp8(__m256 y) {
    const __m256 k = _mm256_round_ps(_mm256_mul_ps(y, _mm256_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693359375f), y);
    r = _mm256_fnmadd_ps(k, _mm256_set1_ps(-2.12194440e-4f), r);
    __m256 p = _mm256_set1_ps(1.0f / 720);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 120));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 24));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f / 6));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0f));
    // 2^k: k in [−126, 127] here, so (k + 127) << 23 is a normal float's bits (a NaN lane's k converts to INT_MIN: its
    // bits are garbage, and p, NaN, keeps the product NaN).
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

DL_AVX2 static inline __attribute__((always_inline)) __m256 dl_exp_neg8(__m256 y) {
    return dl_exp8(_mm256_max_ps(_mm256_set1_ps(-87.3f), y));
}
#else
static inline int dl_cpu_simd_level(void) { return 0; }
static inline int dl_has_avx512(void) { return 0; }
static inline int dl_has_avx2(void) { return 0; }
#endif

#endif
