// Elementwise kernels, RMSNorm and rotary embeddings. Small next to the matmuls; written for clarity with
// a fixed summation order (results never depend on the batch around a token).
#include "ckernels.h"
#include "simd.h"
#include <math.h>
#include <stdlib.h>

int dl_simd_limit = 2;

_Thread_local int dl_simd_thread_limit = 2;

void dl_set_thread_simd_limit(int n) { dl_simd_thread_limit = n < 0 ? 0 : n; }

// OpenBLAS's name (OPENBLAS_CORETYPE) for the kernels this CPU's vector instructions run: AVX-512 with BF16
// "Cooperlake", AVX-512 "SkylakeX", AVX2 with FMA "Haswell"; NULL on other CPUs.
const char *dl_blas_core_for_cpu(void) {
#if defined(__x86_64__)
    if (dl_cpu_simd_level() >= 2 && __builtin_cpu_supports("avx512cd"))
        return __builtin_cpu_supports("avx512bf16") ? "Cooperlake" : "SkylakeX";
    if (dl_cpu_simd_level() >= 1) return "Haswell";
#endif
    return NULL;
}

int dl_avxvnni_limit = 1;
_Thread_local int dl_avxvnni_thread_limit = 1;

// The process-wide switches benchmarks compare paths with, read once at load: DLORA_SIMD_LIMIT=0|1|2 caps the
// instruction-set path; DLORA_AVX_VNNI=0 keeps the AVX2 path off AVX-VNNI. Anything else leaves the defaults.
__attribute__((constructor)) static void switches_from_environment(void) {
    const char *v = getenv("DLORA_SIMD_LIMIT");
    if (v && v[0] >= '0' && v[0] <= '2' && v[1] == 0) dl_simd_limit = v[0] - '0';
    v = getenv("DLORA_AVX_VNNI");
    if (v && v[0] == '0' && v[1] == 0) dl_avxvnni_limit = 0;
}

void dl_set_thread_avxvnni(int on) { dl_avxvnni_thread_limit = on ? 1 : 0; }

int dl_avxvnni_active(void) {
#if defined(__x86_64__)
    return dl_has_avxvnni();
#else
    return 0;
#endif
}

int dl_simd_level(void) {
    int level = dl_cpu_simd_level();
    if (dl_simd_limit < level) level = dl_simd_limit;
    if (dl_simd_thread_limit < level) level = dl_simd_thread_limit;
    return level;
}

// out = x / sqrt(mean(x^2) + eps) * w. The sum of squares runs in double: n <= 16k, and it keeps the
// result close to PyTorch's float32 reduction whatever its internal order. The vector paths sum in eight double
// lanes (per block of 16 values, lane l of a0 takes value l and lane l of a1 value 8 + l; a short last block adds
// zeros), then v = a0 + a1 by dl_sum_lanes8's tree: one order for a given n on both paths, so a token's bits do not depend
// on its batch or on AVX-512 against AVX2. (The portable loop's one double carried across the row, 4 cycles per
// value, was most of a norm; the norms run on the calling thread between the pooled products.)

#if defined(__x86_64__)
DL_AVX512 static void rmsnorm_row_avx512(const float *x, const float *w, float *o, int64_t n, float eps) {
    __m512d a0 = _mm512_setzero_pd(), a1 = a0;
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = dl_mask16(n - i);
        const __m512 v = _mm512_maskz_loadu_ps(m, x + i);
        const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v)), hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1));
        a0 = _mm512_add_pd(a0, _mm512_mul_pd(lo, lo));
        a1 = _mm512_add_pd(a1, _mm512_mul_pd(hi, hi));
    }
    double lanes[8];
    _mm512_storeu_pd(lanes, _mm512_add_pd(a0, a1));
    const __m512 inv = _mm512_set1_ps((float)(1.0 / sqrt(dl_sum_lanes8(lanes) / (double)n + (double)eps)));
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = dl_mask16(n - i);
        _mm512_mask_storeu_ps(o + i, m, _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), inv), _mm512_maskz_loadu_ps(m, w + i)));
    }
}

DL_AVX2 static void rmsnorm_row_avx2(const float *x, const float *w, float *o, int64_t n, float eps) {
    __m256d acc[4] = { _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd(), _mm256_setzero_pd() };
    for (int64_t i = 0; i < n; i += 8) {
        const __m256i m = dl_mask8(n - i);
        const __m256 v = _mm256_maskload_ps(x + i, m);
        const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v)), hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
        const int half = (int)((i / 8) & 1) * 2;  // values 0-7 of a block of 16 feed a0 (acc 0, 1), 8-15 feed a1 (acc 2, 3)
        acc[half] = _mm256_add_pd(acc[half], _mm256_mul_pd(lo, lo));
        acc[half + 1] = _mm256_add_pd(acc[half + 1], _mm256_mul_pd(hi, hi));
    }
    double lanes[8];
    _mm256_storeu_pd(lanes, _mm256_add_pd(acc[0], acc[2]));
    _mm256_storeu_pd(lanes + 4, _mm256_add_pd(acc[1], acc[3]));
    const __m256 inv = _mm256_set1_ps((float)(1.0 / sqrt(dl_sum_lanes8(lanes) / (double)n + (double)eps)));
    for (int64_t i = 0; i < n; i += 8) {
        const __m256i m = dl_mask8(n - i);
        _mm256_maskstore_ps(o + i, m, _mm256_mul_ps(_mm256_mul_ps(_mm256_maskload_ps(x + i, m), inv), _mm256_maskload_ps(w + i, m)));
    }
}
#endif

// Elementwise kernels over many tokens (a prefill chunk, a large batch) run over the pool, a token range per task (a
// token's arithmetic is the same on any thread); a few tokens stay on the calling thread, where a hand-off costs more.
enum { POOL_TOKENS = 16 };

typedef struct {
    const float *x, *w;
    float *out;
    int64_t n;
    float eps;
} rmsnorm_ctx;

static void rmsnorm_range(void *vctx, int64_t t0, int64_t t1);

void dl_rmsnorm(const float *x, const float *w, float *out, int64_t n, int64_t ntok, float eps) {
    rmsnorm_ctx c = { x, w, out, n, eps };
    if (ntok >= POOL_TOKENS) dl_parallel_for(ntok, 4, rmsnorm_range, &c);
    else rmsnorm_range(&c, 0, ntok);
}

static void rmsnorm_range(void *vctx, int64_t t0, int64_t t1) {
    const rmsnorm_ctx *c = (const rmsnorm_ctx *)vctx;
    const float *x = c->x, *w = c->w;
    float *out = c->out;
    const int64_t n = c->n;
    const float eps = c->eps;
    for (int64_t t = t0; t < t1; t++) {
        const float *xr = x + t * n;
        float *o = out + t * n;
#if defined(__x86_64__)
        if (dl_has_avx512()) { rmsnorm_row_avx512(xr, w, o, n, eps); continue; }
        if (dl_has_avx2()) { rmsnorm_row_avx2(xr, w, o, n, eps); continue; }
#endif
        double ss = 0;
        for (int64_t i = 0; i < n; i++) ss += (double)xr[i] * xr[i];
        float inv = (float)(1.0 / sqrt(ss / (double)n + (double)eps));
        for (int64_t i = 0; i < n; i++) o[i] = (xr[i] * inv) * w[i];
    }
}

// SiLU(g) · u = g / (1 + e^−g) · u. The vector paths take e^−g from simd.h's exp with −g held to [−87.3, 88.3]: below,
// 1 + e^−g rounds to 1 either way; above (g < −88.3), g / (1 + e^−g) is under 4e-37 in magnitude where expf's would
// be −0, both nothing beside the layer's other terms. NaN stays NaN. (A scalar expf per element was 7 % of a batch-32
// decode step.)
#if defined(__x86_64__)
DL_AVX512 static void silu_mul_avx512(const float *g, const float *u, float *o, int64_t n) {
    const __m512 lo = _mm512_set1_ps(-87.3f), hi = _mm512_set1_ps(88.3f), one = _mm512_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 16) {
        const __mmask16 m = dl_mask16(n - i);
        const __m512 x = _mm512_maskz_loadu_ps(m, g + i);
        const __m512 e = dl_exp16(_mm512_min_ps(hi, _mm512_max_ps(lo, _mm512_sub_ps(_mm512_setzero_ps(), x))));
        _mm512_mask_storeu_ps(o + i, m, _mm512_mul_ps(_mm512_div_ps(x, _mm512_add_ps(one, e)), _mm512_maskz_loadu_ps(m, u + i)));
    }
}

DL_AVX2 static void silu_mul_avx2(const float *g, const float *u, float *o, int64_t n) {
    const __m256 lo = _mm256_set1_ps(-87.3f), hi = _mm256_set1_ps(88.3f), one = _mm256_set1_ps(1.0f);
    for (int64_t i = 0; i < n; i += 8) {
        const __m256i m = dl_mask8(n - i);
        const __m256 x = _mm256_maskload_ps(g + i, m);
        const __m256 e = dl_exp8(_mm256_min_ps(hi, _mm256_max_ps(lo, _mm256_sub_ps(_mm256_setzero_ps(), x))));
        _mm256_maskstore_ps(o + i, m, _mm256_mul_ps(_mm256_div_ps(x, _mm256_add_ps(one, e)), _mm256_maskload_ps(u + i, m)));
    }
}
#endif

typedef struct {
    const float *gate, *up;
    int64_t ldgu;
    float *out;
    int64_t n;
} silu_ctx;

static void silu_range(void *vctx, int64_t t0, int64_t t1);

void dl_silu_mul(const float *gate, const float *up, int64_t ldgu, float *out, int64_t n, int64_t ntok) {
    silu_ctx c = { gate, up, ldgu, out, n };
    if (ntok >= POOL_TOKENS) dl_parallel_for(ntok, 4, silu_range, &c);
    else silu_range(&c, 0, ntok);
}

static void silu_range(void *vctx, int64_t t0, int64_t t1) {
    const silu_ctx *c = (const silu_ctx *)vctx;
    const int64_t n = c->n;
    for (int64_t t = t0; t < t1; t++) {
        const float *g = c->gate + t * c->ldgu, *u = c->up + t * c->ldgu;
        float *o = c->out + t * n;
#if defined(__x86_64__)
        if (dl_has_avx512()) { silu_mul_avx512(g, u, o, n); continue; }
        if (dl_has_avx2()) { silu_mul_avx2(g, u, o, n); continue; }
#endif
        for (int64_t i = 0; i < n; i++) o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
    }
}

void dl_add_inplace(float *y, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += x[i];
}

void dl_add_scaled(float *y, int64_t ldy, const float *x, int64_t ldx, float s, int64_t n, int64_t ntok) {
    for (int64_t t = 0; t < ntok; t++) {
        float *yt = y + t * ldy;
        const float *xt = x + t * ldx;
        for (int64_t i = 0; i < n; i++) yt[i] += s * xt[i];
    }
}

void dl_rope_table(const int32_t *positions, int64_t ntok, const float *inv_freq, int64_t half,
                   float *cos_out, float *sin_out) {
    for (int64_t t = 0; t < ntok; t++) {
        for (int64_t i = 0; i < half; i++) {
            // float32 product as the reference implementations compute it, then the angle in double.
            float angle = (float)positions[t] * inv_freq[i];
            cos_out[t * half + i] = (float)cos((double)angle);
            sin_out[t * half + i] = (float)sin((double)angle);
        }
    }
}

void dl_rope_apply(float *x, int64_t ldx, int64_t ntok, int64_t nheads, int64_t head_dim,
                   const float *cos_t, const float *sin_t, int neox) {
    int64_t half = head_dim / 2;
    for (int64_t t = 0; t < ntok; t++) {
        const float *c = cos_t + t * half, *s = sin_t + t * half;
        for (int64_t h = 0; h < nheads; h++) {
            float *v = x + t * ldx + h * head_dim;
            for (int64_t i = 0; i < half; i++) {
                int64_t a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
                float x0 = v[a], x1 = v[b];
                v[a] = x0 * c[i] - x1 * s[i];
                v[b] = x1 * c[i] + x0 * s[i];
            }
        }
    }
}

typedef struct { const float *x; double partial[64]; int64_t chunk; } stream_ctx;

#if defined(__x86_64__)
DL_AVX512 static double sum_avx512(const float *x, int64_t n) {
    __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 64 <= n; i += 64) {
        a0 = _mm512_add_ps(a0, _mm512_loadu_ps(x + i));
        a1 = _mm512_add_ps(a1, _mm512_loadu_ps(x + i + 16));
        a2 = _mm512_add_ps(a2, _mm512_loadu_ps(x + i + 32));
        a3 = _mm512_add_ps(a3, _mm512_loadu_ps(x + i + 48));
    }
    double s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)));
    for (; i < n; i++) s += x[i];
    return s;
}

DL_AVX2 static double sum_avx2(const float *x, int64_t n) {
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_add_ps(a0, _mm256_loadu_ps(x + i));
        a1 = _mm256_add_ps(a1, _mm256_loadu_ps(x + i + 8));
        a2 = _mm256_add_ps(a2, _mm256_loadu_ps(x + i + 16));
        a3 = _mm256_add_ps(a3, _mm256_loadu_ps(x + i + 24));
    }
    float lanes[8];
    _mm256_storeu_ps(lanes, _mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    double s = 0;
    for (int j = 0; j < 8; j++) s += lanes[j];
    for (; i < n; i++) s += x[i];
    return s;
}
#endif

static void stream_range(void *vctx, int64_t begin, int64_t end) {
    stream_ctx *c = (stream_ctx *)vctx;
    for (int64_t part = begin; part < end; part++) {
        const float *p = c->x + part * c->chunk;
#if defined(__x86_64__)
        if (dl_has_avx512()) { c->partial[part] = sum_avx512(p, c->chunk); continue; }
        if (dl_has_avx2()) { c->partial[part] = sum_avx2(p, c->chunk); continue; }
#endif
        double s = 0;
        for (int64_t i = 0; i < c->chunk; i++) s += p[i];
        c->partial[part] = s;
    }
}

double dl_stream_sum(const float *x, int64_t n) {
    stream_ctx c;
    c.x = x;
    int64_t parts = 64;
    c.chunk = n / parts;
    dl_parallel_for(parts, 1, stream_range, &c);
    double s = 0;
    for (int64_t i = 0; i < parts; i++) s += c.partial[i];
    for (int64_t i = parts * c.chunk; i < n; i++) s += x[i];
    return s;
}

// ---- Σ exp(x[i] − m): the normaliser of a log-softmax (log-probabilities over a vocabulary) ----
//
// exp(y) for y = x − m ≤ 0 by simd.h's polynomial (dl_exp_neg16, dl_exp_neg8); y below −87.3 (e^y under f32's smallest
// normal, and −∞) gives 0. Terms are summed in double per lane. The portable path is the reference twin: expf and a
// double sum.

double dl_sum_exp_ref(const float *x, int64_t n, float m) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) {
        const float y = x[i] - m;
        if (y >= -87.3f) s += (double)expf(y);
    }
    return s;
}

#if defined(__x86_64__)
// simd.h's exp, with lanes below −87.3, −∞ and NaN set to 0 (the reference's test skips them).
DL_AVX512 static inline __m512 exp_neg_avx512(__m512 y) {
    const __mmask16 live = _mm512_cmp_ps_mask(y, _mm512_set1_ps(-87.3f), _CMP_GE_OQ);  // also false for NaN and −∞
    return _mm512_maskz_mov_ps(live, dl_exp_neg16(y));
}

DL_AVX512 static double sum_exp_avx512(const float *x, int64_t n, float m) {
    const __m512 mv = _mm512_set1_ps(m);
    __m512d a0 = _mm512_setzero_pd(), a1 = a0;
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 e = exp_neg_avx512(_mm512_sub_ps(_mm512_loadu_ps(x + i), mv));
        a0 = _mm512_add_pd(a0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        a1 = _mm512_add_pd(a1, _mm512_cvtps_pd(_mm512_extractf32x8_ps(e, 1)));
    }
    if (i < n) {
        const __mmask16 tail = dl_mask16(n - i);
        const __m512 v = _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), tail, x + i);
        const __m512 e = exp_neg_avx512(_mm512_sub_ps(v, mv));
        a0 = _mm512_add_pd(a0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        a1 = _mm512_add_pd(a1, _mm512_cvtps_pd(_mm512_extractf32x8_ps(e, 1)));
    }
    return _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
}

DL_AVX2 static inline __m256 exp_neg_avx2(__m256 y) {
    const __m256 live = _mm256_cmp_ps(y, _mm256_set1_ps(-87.3f), _CMP_GE_OQ);
    return _mm256_and_ps(dl_exp_neg8(y), live);
}

DL_AVX2 static double sum_exp_avx2(const float *x, int64_t n, float m) {
    const __m256 mv = _mm256_set1_ps(m);
    __m256d a0 = _mm256_setzero_pd(), a1 = a0;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 e = exp_neg_avx2(_mm256_sub_ps(_mm256_loadu_ps(x + i), mv));
        a0 = _mm256_add_pd(a0, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        a1 = _mm256_add_pd(a1, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    double lanes[4];
    _mm256_storeu_pd(lanes, _mm256_add_pd(a0, a1));
    double s = lanes[0] + lanes[1] + lanes[2] + lanes[3];
    return s + dl_sum_exp_ref(x + i, n - i, m);
}
#endif

double dl_sum_exp(const float *x, int64_t n, float m) {
#if defined(__x86_64__)
    if (dl_has_avx512()) return sum_exp_avx512(x, n, m);
    if (dl_has_avx2()) return sum_exp_avx2(x, n, m);
#endif
    return dl_sum_exp_ref(x, n, m);
}
