// Private SIMD helpers shared by the C kernels: an AVX-512 path chosen at run time, a portable fallback.
#ifndef DLORA_SIMD_H
#define DLORA_SIMD_H
#include <stdint.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define DL_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,fma")))
static inline int dl_has_avx512(void) {
    static int cached = -1;
    if (cached < 0) cached = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") ? 1 : 0;
    return cached;
}

// The fixed lane-sum order every kernel shares (matmul_dq.c's and lora.c's outputs are bit-identical because
// they reduce a vector the same way): pairwise halves 16 -> 8 -> 4 -> 2 -> 1.
DL_AVX512 static inline float dl_lane_sum(__m512 v) {
    __m256 a = _mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1));
    __m128 b = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    __m128 c = _mm_add_ps(b, _mm_movehl_ps(b, b));
    __m128 e = _mm_add_ss(c, _mm_movehdup_ps(c));
    return _mm_cvtss_f32(e);
}
#else
static inline int dl_has_avx512(void) { return 0; }
#endif

#endif
