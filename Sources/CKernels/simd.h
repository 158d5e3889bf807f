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
#else
static inline int dl_has_avx512(void) { return 0; }
#endif

#endif
