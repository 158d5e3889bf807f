// Float conversions and ggml-compatible block (de)quantization: load time, tests, and merges (Q8_0
// re-quantization has an AVX-512 path; whole-matrix dequantization uses matmul_dq.c's SIMD conversions).
// The hot path (matmul_dq.c) decodes blocks in its own loops.
#include "ckernels.h"
#include "fatal.h"
#include "simd.h"
#include <math.h>
#include <string.h>

static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else { // subnormal: normalise
            int e = -1;
            do { e++; mant <<= 1; } while ((mant & 0x400) == 0);
            mant &= 0x3ff;
            bits = sign | ((uint32_t)(127 - 15 - e) << 23) | (mant << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static inline uint16_t f32_to_f16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t absx = x & 0x7fffffffu;
    if (absx > 0x7f800000u) return (uint16_t)(sign | 0x7e00); // NaN
    if (absx >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); // overflow (incl. rounding up) -> inf
    if (absx < 0x38800000u) { // subnormal or zero in f16
        if (absx < 0x33000000u) return (uint16_t)sign;
        uint32_t mant = (absx & 0x7fffff) | 0x800000;
        int shift = 113 - (int)(absx >> 23) + 13; // 126 - e + 13 - 14
        uint32_t half = 1u << (shift - 1);
        uint32_t rounded = mant >> shift;
        uint32_t rem = mant & ((1u << shift) - 1);
        if (rem > half || (rem == half && (rounded & 1))) rounded++;
        return (uint16_t)(sign | rounded);
    }
    uint32_t mant = absx & 0x7fffff;
    uint32_t exp = (absx >> 23) - 127 + 15;
    uint32_t h = (exp << 10) | (mant >> 13);
    uint32_t rem = mant & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (h & 1))) h++;
    return (uint16_t)(sign | h);
}

void dl_f16_to_f32(const uint16_t *src, float *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = f16_to_f32(src[i]);
}

#if defined(__x86_64__)
// F16C's conversion, 8 values at a time: IEEE round to nearest even, overflow to infinity and subnormals as f32_to_f16
// rounds them. Only a NaN's bits differ (F16C keeps the payload's top bits, f32_to_f16 writes 0x7e00), so a group of 8
// holding one takes the scalar path.
DL_AVX2 static int64_t f32_to_f16_avx2(const float *src, uint16_t *dst, int64_t n) {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(src + i);
        if (_mm256_movemask_ps(_mm256_cmp_ps(v, v, _CMP_UNORD_Q))) {
            for (int k = 0; k < 8; k++) dst[i + k] = f32_to_f16(src[i + k]);
            continue;
        }
        _mm_storeu_si128((__m128i *)(dst + i), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    }
    return i;
}
#endif

void dl_f32_to_f16(const float *src, uint16_t *dst, int64_t n) {
    int64_t i = 0;
#if defined(__x86_64__)
    if (dl_has_avx2()) i = f32_to_f16_avx2(src, dst, n);
#endif
    for (; i < n; i++) dst[i] = f32_to_f16(src[i]);
}

void dl_bf16_to_f32(const uint16_t *src, float *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = dl_bf16_value(src[i]);
}

void dl_f32_to_bf16(const float *src, uint16_t *dst, int64_t n) {
    for (int64_t i = 0; i < n; i++) dst[i] = dl_bf16_round(src[i]);
}

int dl_block_size(int type) {
    switch (type) {
    case DL_Q4_0: case DL_Q4_1: case DL_Q8_0: return 32;
    default: return 1;
    }
}

int64_t dl_row_bytes(int type, int64_t n) {
    switch (type) {
    case DL_F32: return n * 4;
    case DL_F16: case DL_BF16: return n * 2;
    case DL_Q4_0: return n / 32 * 18;
    case DL_Q4_1: return n / 32 * 20;
    case DL_Q8_0: return n / 32 * 34;
    default: return -1;
    }
}

static inline uint16_t rd16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static inline void wr16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }

void dl_dequantize_row(int type, const void *src, float *dst, int64_t n) {
    const uint8_t *p = (const uint8_t *)src;
    switch (type) {
    case DL_F32: memcpy(dst, src, (size_t)n * 4); return;
    case DL_F16: dl_f16_to_f32((const uint16_t *)src, dst, n); return;
    case DL_BF16: dl_bf16_to_f32((const uint16_t *)src, dst, n); return;
    case DL_Q4_0:
        for (int64_t b = 0; b < n / 32; b++, p += 18) {
            float d = f16_to_f32(rd16(p));
            for (int j = 0; j < 16; j++) {
                dst[b * 32 + j] = (float)((p[2 + j] & 0x0f) - 8) * d;
                dst[b * 32 + j + 16] = (float)((p[2 + j] >> 4) - 8) * d;
            }
        }
        return;
    case DL_Q4_1:
        for (int64_t b = 0; b < n / 32; b++, p += 20) {
            float d = f16_to_f32(rd16(p)), m = f16_to_f32(rd16(p + 2));
            for (int j = 0; j < 16; j++) {
                dst[b * 32 + j] = (float)(p[4 + j] & 0x0f) * d + m;
                dst[b * 32 + j + 16] = (float)(p[4 + j] >> 4) * d + m;
            }
        }
        return;
    case DL_Q8_0:
        for (int64_t b = 0; b < n / 32; b++, p += 34) {
            float d = f16_to_f32(rd16(p));
            for (int j = 0; j < 32; j++) dst[b * 32 + j] = (float)(int8_t)p[2 + j] * d;
        }
        return;
    default: return;
    }
}

#if defined(__x86_64__)
// Q8_0 with AVX-512, for finite inputs the same bytes as the scalar loop below (merged matrices are
// re-quantized to Q8_0 at every merge, ~100 M values for an all-layer adapter): the block's |max| is exact in
// any order; d, 1/d and the f16 scale are the scalar code's; v = x·(1/d), v + copysign(0.5 − 2⁻²⁵, v) and its
// truncation are the same IEEE operations lane by lane, and |v| ≤ 127.5 so the int8 narrowing never saturates.
// Sixteen blocks at a time, their scales as one vector: each block's |max| vector folded into lane i of amax by
// dl_lane_maxes16 (exact in any order), d = amax / 127 and 1 / d as vector divisions (IEEE, so the scalar code's values),
// the f16 scales by F16C (round to nearest even, as f32_to_f16 for finite values). A block's scalar divisions and
// conversion had made each block a chain of ~60 cycles; merges quantize ~100 M values.
DL_AVX512 static void quantize_q8_0_avx512(const float *src, uint8_t *p, int64_t nb) {
    const __m512 sign = _mm512_set1_ps(-0.0f), half = _mm512_set1_ps(0.49999997f);
    for (int64_t b = 0; b < nb; b += 16) {
        const int count = nb - b < 16 ? (int)(nb - b) : 16;  // a row's last blocks: the missing ones' lanes are 0
        __m512 m[16];
        for (int i = 0; i < 16; i++) {
            const float *x = src + (b + i) * 32;
            m[i] = i < count ? _mm512_max_ps(_mm512_andnot_ps(sign, _mm512_loadu_ps(x)), _mm512_andnot_ps(sign, _mm512_loadu_ps(x + 16)))
                             : _mm512_setzero_ps();
        }
        const __m512 d = _mm512_div_ps(dl_lane_maxes16(m), _mm512_set1_ps(127.0f));
        const __m512 id = _mm512_maskz_div_ps(_mm512_cmp_ps_mask(d, _mm512_setzero_ps(), _CMP_NEQ_UQ), _mm512_set1_ps(1.0f), d);
        uint16_t dh[16];
        float ids[16];
        _mm256_storeu_si256((__m256i *)dh, _mm512_cvtps_ph(d, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
        _mm512_storeu_ps(ids, id);
        for (int i = 0; i < count; i++, p += 34) {
            const float *x = src + (b + i) * 32;
            wr16(p, dh[i]);
            const __m512 vid = _mm512_set1_ps(ids[i]);
            for (int k = 0; k < 2; k++) {
                __m512 v = _mm512_mul_ps(_mm512_loadu_ps(x + 16 * k), vid);
                __m512 r = _mm512_add_ps(v, _mm512_or_ps(_mm512_and_ps(v, sign), half));
                _mm_storeu_si128((__m128i *)(p + 2 + 16 * k), _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(r)));
            }
        }
    }
}

// The same on AVX2 (the same bytes: the same operations on half-width vectors, narrowed by dl_store_i8x32).
DL_AVX2 static void quantize_q8_0_avx2(const float *src, uint8_t *p, int64_t nb) {
    const __m256 sign = _mm256_set1_ps(-0.0f), half = _mm256_set1_ps(0.49999997f);
    for (int64_t b = 0; b < nb; b++, p += 34) {
        const float *x = src + b * 32;
        __m256 v[4], m = _mm256_setzero_ps();
        for (int k = 0; k < 4; k++) {
            v[k] = _mm256_loadu_ps(x + 8 * k);
            m = _mm256_max_ps(m, _mm256_andnot_ps(sign, v[k]));
        }
        __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
        h = _mm_max_ps(h, _mm_movehl_ps(h, h));
        h = _mm_max_ss(h, _mm_movehdup_ps(h));
        const float amax = _mm_cvtss_f32(h);
        float d = amax / 127, id = d ? 1.0f / d : 0.0f;
        wr16(p, f32_to_f16(d));
        const __m256 vid = _mm256_set1_ps(id);
        __m256i q[4];
        for (int k = 0; k < 4; k++) {
            const __m256 w = _mm256_mul_ps(v[k], vid);
            q[k] = _mm256_cvttps_epi32(_mm256_add_ps(w, _mm256_or_ps(_mm256_and_ps(w, sign), half)));
        }
        dl_store_i8x32((int8_t *)(p + 2), q);
    }
}
#endif

// ggml's reference quantizers (quantize_row_*_ref): same scale choice and rounding.
void dl_quantize_row(int type, const float *src, void *dst, int64_t n) {
    uint8_t *p = (uint8_t *)dst;
    switch (type) {
    case DL_F32: memcpy(dst, src, (size_t)n * 4); return;
    case DL_F16: dl_f32_to_f16(src, (uint16_t *)dst, n); return;
    case DL_BF16: dl_f32_to_bf16(src, (uint16_t *)dst, n); return;
    case DL_Q4_0:
        for (int64_t b = 0; b < n / 32; b++, p += 18) {
            const float *x = src + b * 32;
            float amax = 0, max = 0;
            for (int j = 0; j < 32; j++) if (fabsf(x[j]) > amax) { amax = fabsf(x[j]); max = x[j]; }
            float d = max / -8, id = d ? 1.0f / d : 0.0f;
            wr16(p, f32_to_f16(d));
            for (int j = 0; j < 16; j++) {
                int a = (int)(x[j] * id + 8.5f), c = (int)(x[j + 16] * id + 8.5f);
                a = a > 15 ? 15 : a; c = c > 15 ? 15 : c;
                p[2 + j] = (uint8_t)(a | (c << 4));
            }
        }
        return;
    case DL_Q4_1:
        for (int64_t b = 0; b < n / 32; b++, p += 20) {
            const float *x = src + b * 32;
            float mn = INFINITY, mx = -INFINITY;
            for (int j = 0; j < 32; j++) { if (x[j] < mn) mn = x[j]; if (x[j] > mx) mx = x[j]; }
            float d = (mx - mn) / 15, id = d ? 1.0f / d : 0.0f;
            wr16(p, f32_to_f16(d));
            wr16(p + 2, f32_to_f16(mn));
            for (int j = 0; j < 16; j++) {
                int a = (int)((x[j] - mn) * id + 0.5f), c = (int)((x[j + 16] - mn) * id + 0.5f);
                a = a > 15 ? 15 : a; c = c > 15 ? 15 : c;
                p[4 + j] = (uint8_t)(a | (c << 4));
            }
        }
        return;
    case DL_Q8_0:
#if defined(__x86_64__)
        if (dl_has_avx512()) { quantize_q8_0_avx512(src, p, n / 32); return; }
        if (dl_has_avx2()) { quantize_q8_0_avx2(src, p, n / 32); return; }
#endif
        for (int64_t b = 0; b < n / 32; b++, p += 34) {
            const float *x = src + b * 32;
            float amax = 0;
            for (int j = 0; j < 32; j++) if (fabsf(x[j]) > amax) amax = fabsf(x[j]);
            float d = amax / 127, id = d ? 1.0f / d : 0.0f;
            wr16(p, f32_to_f16(d));
            // roundf (half away from zero) as trunc(v + copysign(0.5 - 2^-25, v)): the same integer for every
            // |v| <= 127.5, and a form the compiler vectorizes (roundf is a libm call per element).
            for (int j = 0; j < 32; j++) {
                float v = x[j] * id;
                p[2 + j] = (uint8_t)(int8_t)(int)truncf(v + copysignf(0.49999997f, v));
            }
        }
        return;
    default: return;
    }
}

typedef struct {
    int type;
    const float *src;
    int64_t cols, row_bytes;
    uint8_t *dst;
} quant_ctx;

static void quant_range(void *vctx, int64_t begin, int64_t end) {
    const quant_ctx *c = (const quant_ctx *)vctx;
    for (int64_t r = begin; r < end; r++) dl_quantize_row(c->type, c->src + r * c->cols, c->dst + r * c->row_bytes, c->cols);
}

void dl_quantize_rows(int type, const float *src, int64_t rows, int64_t cols, void *dst, int64_t row_bytes) {
    quant_ctx c = { type, src, cols, row_bytes, (uint8_t *)dst };
    if (rows * cols < 65536) quant_range(&c, 0, rows);
    else dl_parallel_for(rows, 16, quant_range, &c);
}

typedef struct {
    int type;
    const uint8_t *src;
    int64_t row_bytes, cols;
    float *dst;
} dequant_ctx;

static void dequant_range(void *vctx, int64_t begin, int64_t end) {
    const dequant_ctx *c = (const dequant_ctx *)vctx;
    for (int64_t r = begin; r < end; r++) dl_dequantize_row_simd(c->type, c->src + r * c->row_bytes, c->dst + r * c->cols, c->cols);
}

void dl_dequantize_rows(int type, const void *src, int64_t row_bytes, float *dst, int64_t rows, int64_t cols) {
    dequant_ctx c = { type, (const uint8_t *)src, row_bytes, cols, dst };
    if (rows * cols < 65536) dequant_range(&c, 0, rows);
    else dl_parallel_for(rows, 16, dequant_range, &c);
}

// ------------------------------------------------------------------ merging (dl_merge_rows)
// out[r] = store_otype(w[r] + scale · Σ_j b[r, j] · a[j, :]) row by row: w dequantized (dl_dequantize_row_simd's
// values), the sum per column by FMA in increasing j from the first product, then the product with scale and the sum
// with w rounded apart (sgemm's alpha · A·B + beta · C with beta 1), then the row stored as otype (dl_quantize_row).
// Each row is dequantized, updated and stored while it sits in L1, instead of three passes over a dense f32 copy.

// acc[c] = Σ_j b[j] · a[j·cols + c] (FMA, j increasing), then y[c] = w[c] + scale · acc[c]; y may be w.
static void merge_row_scalar(const float *b, const float *a, int64_t rank, int64_t cols, float scale, const float *w,
                             float *y, int64_t c0) {
    for (int64_t c = c0; c < cols; c++) {
        float acc = b[0] * a[c];
        for (int64_t j = 1; j < rank; j++) acc = fmaf(b[j], a[j * cols + c], acc);
        y[c] = w[c] + scale * acc;
    }
}

#if defined(__x86_64__)
// NR rows at once (1, or MERGE_ROWS where a task has them): each a[j] vector loaded once for the NR rows' FMAs, so the
// loads of a (rank × cols floats, from L2 once cols · rank passes L1) are 1 / NR of a row's; per element the same
// operations in the same order as merge_row_scalar, whatever NR and the column blocking, so the same bits. Each y[r]
// holds row r's w on entry and its merged values on return.
enum { MERGE_ROWS = 4 };

DL_AVX512 static inline __attribute__((always_inline))
void merge_rows_avx512(const int NR, const float *b, const float *a, int64_t rank, int64_t cols, float scale, float *const y[]) {
    const __m512 vs = _mm512_set1_ps(scale);
    int64_t c = 0;
    // Four vectors of columns at a time: four independent FMA chains per row and broadcast (one chain's latency would
    // otherwise bound the loop).
    for (; c + 64 <= cols; c += 64) {
        __m512 acc[MERGE_ROWS][4];
        for (int r = 0; r < NR; r++) {
            const __m512 b0 = _mm512_set1_ps(b[r * rank]);
            for (int v = 0; v < 4; v++) acc[r][v] = _mm512_mul_ps(b0, _mm512_loadu_ps(a + c + 16 * v));
        }
        for (int64_t j = 1; j < rank; j++) {
            __m512 aj[4];
            for (int v = 0; v < 4; v++) aj[v] = _mm512_loadu_ps(a + j * cols + c + 16 * v);
            for (int r = 0; r < NR; r++) {
                const __m512 bj = _mm512_set1_ps(b[r * rank + j]);
                for (int v = 0; v < 4; v++) acc[r][v] = _mm512_fmadd_ps(bj, aj[v], acc[r][v]);
            }
        }
        for (int r = 0; r < NR; r++)
            for (int v = 0; v < 4; v++)
                _mm512_storeu_ps(y[r] + c + 16 * v, _mm512_add_ps(_mm512_loadu_ps(y[r] + c + 16 * v), _mm512_mul_ps(vs, acc[r][v])));
    }
    for (; c + 16 <= cols; c += 16) {
        __m512 acc[MERGE_ROWS];
        for (int r = 0; r < NR; r++) acc[r] = _mm512_mul_ps(_mm512_set1_ps(b[r * rank]), _mm512_loadu_ps(a + c));
        for (int64_t j = 1; j < rank; j++) {
            const __m512 aj = _mm512_loadu_ps(a + j * cols + c);
            for (int r = 0; r < NR; r++) acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(b[r * rank + j]), aj, acc[r]);
        }
        for (int r = 0; r < NR; r++) _mm512_storeu_ps(y[r] + c, _mm512_add_ps(_mm512_loadu_ps(y[r] + c), _mm512_mul_ps(vs, acc[r])));
    }
    for (int r = 0; r < NR; r++) merge_row_scalar(b + r * rank, a, rank, cols, scale, y[r], y[r], c);
}

// The same in AVX2 registers (16 of them): blocks of V = 8 / NR vectors of columns (four rows × two, or one row × four),
// then single vectors.
DL_AVX2 static inline __attribute__((always_inline))
void merge_rows_avx2(const int NR, const float *b, const float *a, int64_t rank, int64_t cols, float scale, float *const y[]) {
    enum { VMAX = 4 };
    const int V = NR == 1 ? 4 : 2;
    const __m256 vs = _mm256_set1_ps(scale);
    int64_t c = 0;
    for (; c + 8 * V <= cols; c += 8 * V) {
        __m256 acc[MERGE_ROWS][VMAX];
        for (int r = 0; r < NR; r++) {
            const __m256 b0 = _mm256_set1_ps(b[r * rank]);
            for (int v = 0; v < V; v++) acc[r][v] = _mm256_mul_ps(b0, _mm256_loadu_ps(a + c + 8 * v));
        }
        for (int64_t j = 1; j < rank; j++) {
            __m256 aj[VMAX];
            for (int v = 0; v < V; v++) aj[v] = _mm256_loadu_ps(a + j * cols + c + 8 * v);
            for (int r = 0; r < NR; r++) {
                const __m256 bj = _mm256_set1_ps(b[r * rank + j]);
                for (int v = 0; v < V; v++) acc[r][v] = _mm256_fmadd_ps(bj, aj[v], acc[r][v]);
            }
        }
        for (int r = 0; r < NR; r++)
            for (int v = 0; v < V; v++)
                _mm256_storeu_ps(y[r] + c + 8 * v, _mm256_add_ps(_mm256_loadu_ps(y[r] + c + 8 * v), _mm256_mul_ps(vs, acc[r][v])));
    }
    for (; c + 8 <= cols; c += 8) {
        __m256 acc[MERGE_ROWS];
        for (int r = 0; r < NR; r++) acc[r] = _mm256_mul_ps(_mm256_set1_ps(b[r * rank]), _mm256_loadu_ps(a + c));
        for (int64_t j = 1; j < rank; j++) {
            const __m256 aj = _mm256_loadu_ps(a + j * cols + c);
            for (int r = 0; r < NR; r++) acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(b[r * rank + j]), aj, acc[r]);
        }
        for (int r = 0; r < NR; r++) _mm256_storeu_ps(y[r] + c, _mm256_add_ps(_mm256_loadu_ps(y[r] + c), _mm256_mul_ps(vs, acc[r])));
    }
    for (int r = 0; r < NR; r++) merge_row_scalar(b + r * rank, a, rank, cols, scale, y[r], y[r], c);
}

DL_AVX512 static void merge_rows_avx512_n(int nr, const float *b, const float *a, int64_t rank, int64_t cols, float scale, float *const y[]) {
    if (nr == MERGE_ROWS) merge_rows_avx512(MERGE_ROWS, b, a, rank, cols, scale, y);
    else merge_rows_avx512(1, b, a, rank, cols, scale, y);
}

DL_AVX2 static void merge_rows_avx2_n(int nr, const float *b, const float *a, int64_t rank, int64_t cols, float scale, float *const y[]) {
    if (nr == MERGE_ROWS) merge_rows_avx2(MERGE_ROWS, b, a, rank, cols, scale, y);
    else merge_rows_avx2(1, b, a, rank, cols, scale, y);
}
#else
enum { MERGE_ROWS = 4 };
#endif

typedef struct {
    int wtype, otype;
    const uint8_t *w;
    int64_t w_row_bytes, cols, rank;
    const float *b, *a;
    float scale;
    uint8_t *out;
    int64_t out_row_bytes;
} merge_ctx;

static _Thread_local void *tl_merge_row;
static _Thread_local int64_t tl_merge_row_bytes;

static void merge_range(void *vctx, int64_t r0, int64_t r1) {
    const merge_ctx *c = (const merge_ctx *)vctx;
    float *rows = (float *)dl_grow_buffer(&tl_merge_row, &tl_merge_row_bytes, MERGE_ROWS * c->cols * (int64_t)sizeof(float),
                                          "merged rows");
#if defined(__x86_64__)
    const int simd = c->rank > 0 ? (dl_has_avx512() ? 2 : dl_has_avx2() ? 1 : 0) : 0;
#else
    const int simd = 0;
#endif
    // Groups of four rows where a vector path runs, else (and for a task's last rows) one at a time: each dequantized
    // into its output (f32) or a row buffer, updated, and stored as otype.
    for (int64_t r = r0, nr; r < r1; r += nr) {
        nr = simd && r1 - r >= MERGE_ROWS ? MERGE_ROWS : 1;
        float *y[MERGE_ROWS];
        for (int i = 0; i < nr; i++) {
            y[i] = c->otype == DL_F32 ? (float *)(c->out + (r + i) * c->out_row_bytes) : rows + i * c->cols;
            dl_dequantize_row_simd(c->wtype, c->w + (r + i) * c->w_row_bytes, y[i], c->cols);
        }
        const float *br = c->b + r * c->rank;
#if defined(__x86_64__)
        if (simd == 2) merge_rows_avx512_n((int)nr, br, c->a, c->rank, c->cols, c->scale, y);
        else if (simd == 1) merge_rows_avx2_n((int)nr, br, c->a, c->rank, c->cols, c->scale, y);
        else
#endif
        if (c->rank > 0) merge_row_scalar(br, c->a, c->rank, c->cols, c->scale, y[0], y[0], 0);
        if (c->otype != DL_F32)
            for (int i = 0; i < nr; i++) dl_quantize_row(c->otype, y[i], c->out + (r + i) * c->out_row_bytes, c->cols);
    }
}

void dl_merge_rows(int wtype, const void *w, int64_t w_row_bytes, int64_t rows, int64_t cols, const float *b, const float *a,
                   int64_t rank, float scale, int otype, void *out, int64_t out_row_bytes) {
    if (rows <= 0 || cols <= 0) return;
    merge_ctx c = { wtype, otype, (const uint8_t *)w, w_row_bytes, cols, rank > 0 ? rank : 0, b, a, scale, (uint8_t *)out, out_row_bytes };
    if (rows * cols * (rank > 0 ? rank : 1) < (1 << 16)) merge_range(&c, 0, rows);
    else dl_parallel_for(rows, 16, merge_range, &c);
}
