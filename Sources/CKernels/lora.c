// LoRA over adapter segments: for each segment (a run of batch tokens that share one adapter and scale),
// y[t] += scale * B * (A * x[t]). Many small segments (one token each, 32 adapters in a batch of 32) are
// spread over the pool one segment per task, so a step pays one thread hand-off per matrix instead of two
// per segment; few large segments parallelise inside the matmuls instead. Either way each output element
// is computed by the same kernel in the same order: results do not depend on the split.
#include "ckernels.h"
#include "fatal.h"
#include <stdlib.h>

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

static void one_segment(const lora_ctx *c, const dl_lora_seg *s) {
    float *tmp = lora_scratch(s->count * (s->prank + c->out));
    float *prod = tmp + s->count * s->prank;
    dl_matmul_dq(s->wtype, s->a, s->prank, c->in, c->x + s->start * c->ldx, c->ldx, s->count, tmp, s->prank);
    if (s->gates) {
        // MoLE: each rank column scaled by its expert's gate for the token (exact products, so the order
        // of the sums below is unchanged).
        for (int64_t t = 0; t < s->count; t++) {
            float *u = tmp + t * s->prank;
            const float *g = s->gates + t * s->ldg;
            for (int64_t j = 0; j < s->prank; j++) {
                int32_t e = s->gate_col[j];
                u[j] = e >= 0 ? u[j] * g[e] : 0.0f;
            }
        }
    }
    dl_matmul_dq(s->wtype, s->b, c->out, s->prank, tmp, s->prank, s->count, prod, c->out);
    dl_add_scaled(c->y + s->start * c->ldy, c->ldy, prod, c->out, s->scale, c->out, s->count);
}

static void segment_range(void *ctx, int64_t begin, int64_t end) {
    const lora_ctx *c = (const lora_ctx *)ctx;
    for (int64_t i = begin; i < end; i++) one_segment(c, &c->segs[i]);
}

void dl_lora_apply(const dl_lora_seg *segs, int64_t nseg, int64_t in, int64_t out,
                   const float *x, int64_t ldx, float *y, int64_t ldy) {
    lora_ctx c = { segs, in, out, x, ldx, y, ldy };
    if (nseg >= 2 * dl_num_threads()) {
        dl_parallel_for(nseg, 1, segment_range, &c);
    } else {
        for (int64_t i = 0; i < nseg; i++) one_segment(&c, &segs[i]);
    }
}
