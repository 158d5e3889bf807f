// dlora C kernels: the numeric hot loops, AVX-512 where the CPU has it (runtime dispatch), portable C otherwise.
// Every kernel here has a plain Swift reference twin in Sources/Kernels/Reference*.swift and a parity test
// (Tests/KernelsTests). Only the Kernels target calls these functions: the rest of the code uses their typed
// Swift faces (Kernels.matmul, rmsNorm, applyRope, writeKV, pagedAttention, LoRABatch, dequantize, ...),
// which check shapes before handing raw pointers over. A kernel that cannot get scratch memory aborts with a
// message (fatal.h) rather than skipping its work.
// Threading: kernels that say so split their work over the kernel thread pool (dl_parallel_for); callers
// never need to add threads of their own. All functions are safe to call from one thread at a time
// (the engine's step loop owns them).
#ifndef DLORA_CKERNELS_H
#define DLORA_CKERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// ---------------------------------------------------------------- thread pool (threadpool.c)
// A persistent pool of worker threads that spin briefly, then sleep, between calls.
// Default size: the number of online CPUs. dl_set_num_threads(n) resizes it (n >= 1).
void dl_set_num_threads(int n);
int dl_num_threads(void);
typedef void (*dl_range_fn)(void *ctx, int64_t begin, int64_t end);
// Splits [0, n) into contiguous chunks of at least `grain` items, runs fn on them over the pool and the
// calling thread, and returns when all are done. Chunk boundaries depend only on (n, grain, threads).
void dl_parallel_for(int64_t n, int64_t grain, dl_range_fn fn, void *ctx);

// ---------------------------------------------------------------- instruction-set path (simd.h)
// The kernels' path, chosen at run time: 2 = AVX-512, 1 = AVX2 + FMA + F16C, 0 = portable C. The AVX-512
// and AVX2 paths of the matmul and LoRA kernels give the same bits. DLORA_SIMD_LIMIT=0|1|2 in the
// environment caps the path for the process; dl_set_thread_simd_limit(n) for the calling thread and the
// pool work it hands out (tests run every path the machine has beside other tests); dl_simd_level() is the
// calling thread's path.
void dl_set_thread_simd_limit(int n);
int dl_simd_level(void);
// AVX-VNNI (256-bit VPDPBUSD) inside the AVX2 path, for the calling thread and its pool work (1 allowed, the default;
// 0 the plain AVX2 form, the same bits); DLORA_AVX_VNNI=0 turns it off for the process. dl_avxvnni_active(): whether
// this thread's AVX2 kernels use it now.
void dl_set_thread_avxvnni(int on);
// OpenBLAS's core name (OPENBLAS_CORETYPE) for this CPU's vector instructions: "Cooperlake" (AVX-512 with BF16),
// "SkylakeX" (AVX-512), "Haswell" (AVX2 with FMA), or NULL.
const char *dl_blas_core_for_cpu(void);
int dl_avxvnni_active(void);

// ---------------------------------------------------------------- dtypes (ggml type ids)
enum {
    DL_F32 = 0,
    DL_F16 = 1,
    DL_Q4_0 = 2,
    DL_Q4_1 = 3,
    DL_Q8_0 = 8,
    DL_BF16 = 30,
};

// Block layouts, bit-compatible with ggml/GGUF:
//   Q4_0: { f16 d; u8 qs[16]; }            x = (nibble - 8) * d; element j<16 in low nibble of qs[j], j>=16 high nibble of qs[j-16]
//   Q4_1: { f16 d; f16 m; u8 qs[16]; }     x = nibble * d + m;   same nibble order
//   Q8_0: { f16 d; i8 qs[32]; }            x = q * d
// Bytes of one row of n elements (n a multiple of the type's block size; 1 for float types).
int64_t dl_row_bytes(int type, int64_t n);
int dl_block_size(int type);

// ---------------------------------------------------------------- conversions and (de)quantization (quant.c)
void dl_f16_to_f32(const uint16_t *src, float *dst, int64_t n);
void dl_bf16_to_f32(const uint16_t *src, float *dst, int64_t n);
void dl_f32_to_f16(const float *src, uint16_t *dst, int64_t n);   // round to nearest even
void dl_f32_to_bf16(const float *src, uint16_t *dst, int64_t n);  // round to nearest even
// dst[0..n) = dequantized row of `type` (any type above).
void dl_dequantize_row(int type, const void *src, float *dst, int64_t n);
// Dequantizes a rows x cols matrix (rows of row_bytes) into dense row-major floats, split by rows over the
// pool (merging an adapter rewrites whole matrices).
void dl_dequantize_rows(int type, const void *src, int64_t row_bytes, float *dst, int64_t rows, int64_t cols);
// One row with the matmul panel's SIMD conversions (AVX-512/AVX2 where the CPU has them): dl_dequantize_row's values.
void dl_dequantize_row_simd(int type, const void *src, float *dst, int64_t n);
// Reference quantizers with ggml's rounding (used for tests, fixtures and re-quantizing merged weights).
void dl_quantize_row(int type, const float *src, void *dst, int64_t n);
// dl_quantize_row over `rows` rows of `cols` (src row-major f32; dst rows `row_bytes` apart), split over the
// kernel threads.
void dl_quantize_rows(int type, const float *src, int64_t rows, int64_t cols, void *dst, int64_t row_bytes);
// A LoRA merge row by row over the pool: out[r] = W[r] + scale · Σ_j b[r·rank + j] · a[j·cols + :], W (rows × cols of
// wtype, w_row_bytes apart) dequantized as dl_dequantize_row_simd does, the sum per column by FMA in increasing j from
// the first product, then the product with scale and the sum with W rounded apart (sgemm's alpha·BA + C), stored as
// otype (F32, or any type dl_quantize_row writes; out_row_bytes apart). Each row is dequantized, updated and stored
// while it sits in cache, instead of three passes over a dense f32 copy. The same values on every path.
void dl_merge_rows(int wtype, const void *w, int64_t w_row_bytes, int64_t rows, int64_t cols, const float *b, const float *a,
                   int64_t rank, float scale, int otype, void *out, int64_t out_row_bytes);

// ---------------------------------------------------------------- matmul with f32 activations (matmul_dq.c)
// The default, exact path: weights are dequantized on the fly (a few rows at a time into per-thread
// scratch; for a single token, in registers) and multiplied with f32 activations using f32 FMAs. Each output Y[t, r] accumulates
// W[r, k] * X[t, k] over k in 16 interleaved lanes (k mod 16) in increasing k, then sums the lanes in a
// fixed tree: bit-identical whatever ntok, tile shape or thread count. Dequantization is d * q (+ m) as
// the reference implementations compute it. wtype: any type above. cols must be a multiple of 16.
// Y[t*ldy + r] = sum_k W[r, k] * X[t*ldx + k]. Multithreaded.
void dl_matmul_dq(int wtype, const void *W, int64_t rows, int64_t cols,
                  const float *X, int64_t ldx, int64_t ntok,
                  float *Y, int64_t ldy);

// ---------------------------------------------------------------- elementwise and normalisation (ops.c)
// out[t, :] = x[t, :] / sqrt(mean(x[t, :]^2) + eps) * w[:], for t < ntok, rows of n floats.
void dl_rmsnorm(const float *x, const float *w, float *out, int64_t n, int64_t ntok, float eps);
// out[i] = silu(gate[i]) * up[i]; gate/up rows have stride ld, out rows n (packed).
void dl_silu_mul(const float *gate, const float *up, int64_t ldgu, float *out, int64_t n, int64_t ntok);
// y[i] += x[i]
void dl_add_inplace(float *y, const float *x, int64_t n);
// y[t*ldy + i] += s * x[t*ldx + i] for i < n, t < ntok (the LoRA expand's scaled accumulate).
void dl_add_scaled(float *y, int64_t ldy, const float *x, int64_t ldx, float s, int64_t n, int64_t ntok);
// Reads n floats and returns their sum, streaming over the pool's threads: measures memory read
// bandwidth for the benchmarks' roofline.
double dl_stream_sum(const float *x, int64_t n);
// Σ exp(x[i] − m) for i < n, m ≥ every x[i] (a log-softmax's normaliser); −∞ entries (and those below m − 87.3)
// count 0. AVX-512/AVX2 with a polynomial exp (relative error < 1e-6), summed in double; _ref: expf, the twin.
double dl_sum_exp(const float *x, int64_t n, float m);
double dl_sum_exp_ref(const float *x, int64_t n, float m);
// Rotary embedding tables: for token t and pair i < half: angle = positions[t] * inv_freq[i].
void dl_rope_table(const int32_t *positions, int64_t ntok, const float *inv_freq, int64_t half,
                   float *cos_out, float *sin_out);
// Rotates x: [ntok][nheads][head_dim] (row stride ldx floats per token) in place.
// neox = 0: pairs (x[2i], x[2i+1]) (GGUF llama layout); neox = 1: pairs (x[i], x[i+half]) (HF rotate-half).
void dl_rope_apply(float *x, int64_t ldx, int64_t ntok, int64_t nheads, int64_t head_dim,
                   const float *cos_t, const float *sin_t, int neox);

// ---------------------------------------------------------------- attention over a paged KV cache (attention.c)
// KV storage of one layer: K and V each [nblocks][block_size][n_kv][head_dim] values, f32 or (kv_f16) IEEE
// f16 (written clamped to ±65504 and rounded to nearest even; read back exactly); a cache *slot* is
// block * block_size + offset. As vLLM's slot mapping: token t of the flat batch writes its K/V row to
// slots[t] and, as a query at absolute position positions[t], attends to its sequence's positions
// 0 ... positions[t], found through the block table that starts at block_tables + table_offsets[t]
// (position p lives in slot table[p / block_size] * block_size + p % block_size).
// row = n_kv * head_dim values.
void dl_kv_write(void *kcache, void *vcache, int kv_f16, const int64_t *slots, int64_t ntok, int64_t row,
                 const float *k, int64_t ldk, const float *v, int64_t ldv);
// An f16 cache's conversions: f32 -> f16 as dl_kv_write stores (clamped to ±65504, nearest even), and back (exact).
void dl_kv_to_f16(uint16_t *dst, const float *src, int64_t n);
void dl_kv_to_f32(float *dst, const uint16_t *src, int64_t n);
// Causal attention for every (token, head) of a flat batch mixing sequences, prefill chunks and decodes.
// q: [ntok][n_head][head_dim] with row stride ldq; out likewise with ldo. GQA: head h reads kv head
// h / (n_head / n_kv). The K/V of all ntok tokens must be written first. Multithreaded.
void dl_attention(const float *q, int64_t ldq, int64_t ntok, const int32_t *positions,
                  const int32_t *block_tables, const int64_t *table_offsets, int64_t block_size,
                  const void *kcache, const void *vcache, int kv_f16,
                  int64_t n_head, int64_t n_kv, int64_t head_dim, float scale,
                  float *out, int64_t ldo);

// ---------------------------------------------------------------- LoRA over adapter segments (lora.c)
// One segment: batch tokens [start, start + count) use A (prank x in, row-major, rank zero-padded to prank, a
// multiple of 16) and B (out x prank, held as dl_lora_b_pack lays it out), both of type `wtype` (F32, F16 or
// BF16), with scaling `scale`. Q8_0 (an int8 adapter, AVX-512 VNNI only): A is packed by dl_pack_q8 (K = in,
// N = prank) and its shrink is dl_matmul_q8's (the token's activations quantized to int8); B is held as int8 codes
// with an f16 scale per output and block of 16 rank indices, and the expand quantizes the shrunk values per block
// of 16 and sums the integer products exactly (lora.c, "int8 adapters"). Q4_0 (an int4 adapter): the same, with A in
// Q4_0 and B's codes 4-bit (lora.c, "int4 adapters").
// Gated (MoLE) segments also give per-token gates: column j of the rank belongs to expert gate_col[j]
// (-1: padding), and token i of the segment (batch token start + i) weighs it by gates[i * ldg + gate_col[j]].
typedef struct {
    const void *a;
    const void *b;
    int32_t wtype;
    int64_t prank;
    int64_t start;
    int64_t count;
    float scale;
    const float *gates;       // NULL: not gated
    int64_t ldg;
    const int32_t *gate_col;  // prank entries when gated
} dl_lora_seg;
// y[t*ldy + o] += scale * sum_j B[o, j] * g(t, j) * sum_k A[j, k] * x[t*ldx + k] for every token t of every
// segment, g = 1 for an ungated segment.
// Segments must not overlap. Multithreaded (over segments when there are many, else inside the matmuls);
// results are independent of that choice. Segments of up to 8 tokens (decode) take a grouped shrink kernel
// that converts the weights in registers; longer ones dl_matmul_dq; every token's expand runs 32 outputs at a
// time from B's packed layout. All sum in dl_matmul_dq's lane order, so the bits are the same either way
// (ReferenceOps.loraApplyLanes is the twin).
void dl_lora_apply(const dl_lora_seg *segs, int64_t nseg, int64_t in, int64_t out,
                   const float *x, int64_t ldx, float *y, int64_t ldy);
// B (out x prank, row-major, type F32, F16 or BF16) in the expand's layout: groups of 32 outputs (the last
// zero-padded), per rank index j the group's 32 values side by side (BF16 interleaving the group's two halves),
// dl_lora_b_bytes(type, out, prank) bytes (-1: not a supported type or shape, which dl_lora_b_pack leaves
// untouched). Q8_0: b is row-major f32, each output's values quantized per block of 16 rank indices with ggml's
// Q8_0 rounding, in groups of 16 outputs laid out for VPDPBUSD (lora.c); 18 bytes per 16 values. Q4_0: the same with
// ggml's Q4_0 rule over 16 values and 4-bit codes, 10 bytes per 16 values. dl_lora_b_unpack
// widens it back to row-major f32, the values d·q (merges, compositions).
int64_t dl_lora_b_bytes(int type, int64_t out, int64_t prank);
void dl_lora_b_pack(int type, const void *b, int64_t out, int64_t prank, void *dst);
void dl_lora_b_unpack(int type, const void *packed, int64_t out, int64_t prank, float *dst);

// ---------------------------------------------------------------- prefetch in a product's shadow (prefetch.h)
// Byte spans a product pulls toward the cache (L2, whence L3) while it runs: the weights of the LoRA call that
// follows it, read in the shadow of a compute-bound product instead of after it. Each of the product's tasks
// takes the share of the spans (laid end to end) that matches its share of the panels and spreads those lines
// over its arithmetic. NULL / 0: none. The spans are only read during the call; prefetches never fault.
typedef struct {
    const void *p;
    int64_t bytes;
} dl_span;
// The lines a product split into `parts` equal parts, each of `units` steps, would prefetch, in order (the
// first cap of them into lines); returns how many (tests).
int64_t dl_prefetch_trace(const dl_span *spans, int64_t n, int64_t parts, int64_t units, const void **lines, int64_t cap);

// ---------------------------------------------------------------- bf16 products (gemm_bf16.c)
// Training's frozen products in bf16 with f32 sums (torch's bf16 autocast): C (M x N) (+)= bf16(A) · bf16(B).
// B (K x N, B(k, n) = trans ? src[n * ld + k] : src[k * ld + n]) is packed once into
// dl_pack_bf16_elements(K, N) uint16 values (rounded to nearest even); A (row stride lda) is rounded per
// call. dl_has_bf16_dot() says whether the CPU runs it on AVX-512 BF16 (else a portable loop, far slower:
// callers then keep their f32 products). dl_gemm_bf16_ref is the portable loop, the parity tests' twin.
// dl_gemm_bf16 splits its rows over the kernel thread pool.
int dl_has_bf16_dot(void);
// Multiply-adds per second of VDPBF16PS over those of an f32 FMA (both 512-bit) on this core, measured once (about
// 10 ms) and kept; 0 without AVX-512 BF16. Where it is below 1 (Intel's server cores issue VDPBF16PS at half the
// FMA's rate: 0.5), the f32 products outrun the bf16 ones however few bytes the latter read.
double dl_bf16_dot_rate_ratio(void);
int64_t dl_pack_bf16_elements(int64_t K, int64_t N);
void dl_pack_bf16(const float *src, int64_t ld, int trans, int64_t K, int64_t N, uint16_t *dst);
void dl_gemm_bf16(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const uint16_t *Bp,
                  float *C, int64_t ldc, int accumulate);
void dl_gemm_bf16_ref(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const uint16_t *Bp,
                      float *C, int64_t ldc, int accumulate);
// Inference's y = x · Wᵀ on a packed W (dl_pack_bf16 of W with trans = 1, K = W.cols, N = W.rows): C (M x N) =
// bf16(A) · Bp, split over the panels (so a decode step's few rows use every thread); a row's result does not
// depend on M (batch invariance). The portable loop where the CPU lacks AVX-512 BF16.
void dl_matmul_bf16(int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const uint16_t *Bp, float *C, int64_t ldc,
                    const dl_span *prefetch, int64_t nprefetch);

// ---------------------------------------------------------------- bf16 products on quantized codes (gemm_bf16q.c)
// y = x · Wᵀ for a Q4_1 or Q8_0 W (N rows of K weights, K a multiple of 32) repacked by dl_pack_q_bf16 into
// dl_q_bf16_bytes(type, K, N) bytes (-1: not a supported type or shape): the integer codes go to VDPBF16PS
// as exact bf16 values and each block's scale (and min) is applied in f32, so the weights are used exactly and
// only the activations are rounded to bf16. A row's result does not depend on M; split over the panels.
// dl_matmul_q_bf16_ref is the portable twin (the same formula, sums in another order).
int64_t dl_q_bf16_bytes(int type, int64_t K, int64_t N);
void dl_pack_q_bf16(int type, const uint8_t *w, int64_t row_bytes, int64_t K, int64_t N, uint8_t *dst);
void dl_matmul_q_bf16(int type, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const uint8_t *Wp,
                      float *C, int64_t ldc, const dl_span *prefetch, int64_t nprefetch);
void dl_matmul_q_bf16_ref(int type, int64_t M, int64_t N, int64_t K, const float *A, int64_t lda, const uint8_t *Wp,
                          float *C, int64_t ldc);

// ---------------------------------------------------------------- products with int8 activations (matmul_q8.c)
// y = x · Wᵀ for a Q4_0, Q4_1 or Q8_0 W (N rows of K weights, K a multiple of 32) repacked by dl_pack_q8 into
// dl_q8_bytes(type, K, N) bytes (-1: not a supported type or shape; the checkpoint's bytes per block, the block
// count of a row padded to even): each token's activations are quantized per block of 32 to int8 (llama.cpp's
// Q8 activations) and multiplied with the codes exactly in int32 by AVX-512 VNNI, the block scales applied in f32
// in a fixed lane order (matmul_q8.c). A row's result does not depend on ntok (batch invariance); rows are split
// over the kernel thread pool. dl_has_vnni512() says whether the CPU runs it (dl_matmul_q8 needs it);
// dl_matmul_q8_ref is the portable twin, bit for bit, computed from the checkpoint's own bytes (W, row_bytes).
// `prefetch` (n spans; NULL, 0: none): bytes pulled toward the cache in the product's shadow, as dl_matmul_q_bf16's.
int dl_has_vnni512(void);
// Whether this thread can run Q8_0 and Q4_0 adapters (lora.c's int8 expand): AVX-512 VNNI, or AVX-VNNI on the AVX2 path.
int dl_has_int8_adapters(void);
// Which int8-product kernel this thread may run: 2 AVX-512 VNNI, 1 AVX2 (its twin, the same bits: VPDPBUSD's 256-bit
// form where the CPU has AVX-VNNI, else VPMADDUBSW and VPMADDWD), 0 none.
int dl_has_int8(void);
int64_t dl_q8_bytes(int type, int64_t K, int64_t N);
void dl_pack_q8(int type, const uint8_t *w, int64_t row_bytes, int64_t K, int64_t N, uint8_t *dst);
void dl_matmul_q8(int type, const uint8_t *Wp, int64_t N, int64_t K, const float *X, int64_t ldx, int64_t ntok,
                  float *Y, int64_t ldy, const dl_span *prefetch, int64_t nprefetch);
// n activations quantized to int8 as one block (the products' blocks of 32, the LoRA expand's of 16): q[n], returns
// the scale d = max |x| / 127 (q = round-half-even(x · (1 / d)); below 1e-30: d = 0, q = 0; an infinity or NaN: d = NaN).
float dl_quantize_i8_block(const float *x, int n, int8_t *q);
// dl_matmul_q8 on the calling thread only (lora.c's shrink of a Q8_0 adapter, inside its own split over the pool).
void dl_matmul_q8_serial(int type, const uint8_t *Wp, int64_t N, int64_t K, const float *X, int64_t ldx, int64_t ntok,
                         float *Y, int64_t ldy);
void dl_matmul_q8_ref(int type, const uint8_t *W, int64_t row_bytes, int64_t N, int64_t K, const float *X, int64_t ldx,
                      int64_t ntok, float *Y, int64_t ldy);

// glibc's malloc_trim(0): the heap's free pages returned to the system (1 if any were); 0 elsewhere.
int dl_return_free_heap(void);

#ifdef __cplusplus
}
#endif
#endif
