// Private: prefetching a plan of byte spans in a compute-bound product's shadow (see dl_span in ckernels.h).
// A task that runs parts [k0, k1) of a product's `parts` takes lines [total·k0/parts, total·k1/parts) of the
// spans' cache lines laid end to end (every line exactly once over the parts), and issues them as `units`
// equal steps (dl_pf_step), one per unit of its arithmetic, so the loads are spread over the task's work
// instead of arriving as one burst the core would stall on. Prefetches never fault, so a span may be anything
// the caller names.
#ifndef DLORA_PREFETCH_H
#define DLORA_PREFETCH_H
#include "ckernels.h"
#include <stdint.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

typedef struct {
    const dl_span *s, *send;   // the current span, one past the last
    uintptr_t p, end;          // the next line, one past the current span's last line
    int64_t left, per_unit;    // lines still to issue, lines per step
} dl_pf;

// A span's cache lines: from the line holding its first byte through the line holding its last.
static inline uintptr_t dl_span_first(const dl_span *s) { return (uintptr_t)s->p & ~(uintptr_t)63; }
static inline uintptr_t dl_span_end(const dl_span *s) {
    return s->bytes > 0 ? ((uintptr_t)s->p + (uintptr_t)s->bytes + 63) & ~(uintptr_t)63 : dl_span_first(s);
}
static inline int64_t dl_span_count(const dl_span *s) { return (int64_t)((dl_span_end(s) - dl_span_first(s)) / 64); }

// A product's plan: its spans and their lines in all (counted once per product, on the calling thread).
typedef struct {
    const dl_span *spans;
    int64_t n, lines;
} dl_pf_plan;

static inline dl_pf_plan dl_pf_plan_of(const dl_span *spans, int64_t n) {
    dl_pf_plan plan = { spans, spans ? n : 0, 0 };
    for (int64_t i = 0; i < plan.n; i++) plan.lines += dl_span_count(&spans[i]);
    return plan;
}

// Parts k0..k1 of `parts` of the plan's lines, in `units` steps.
static inline dl_pf dl_pf_share(const dl_pf_plan *plan, int64_t k0, int64_t k1, int64_t parts, int64_t units) {
    dl_pf f = { 0 };
    const dl_span *s = plan->spans;
    const int64_t n = plan->n, total = plan->lines;
    if (!s || n <= 0 || total <= 0 || parts <= 0 || units <= 0 || k1 <= k0) return f;
    const int64_t lo = total * k0 / parts, hi = total * k1 / parts;
    int64_t i = 0, skip = lo;
    while (i < n && skip >= dl_span_count(&s[i])) skip -= dl_span_count(&s[i++]);
    if (i >= n || hi <= lo) return f;
    f.s = s + i;
    f.send = s + n;
    f.p = dl_span_first(&s[i]) + (uintptr_t)skip * 64;
    f.end = dl_span_end(&s[i]);
    f.left = hi - lo;
    f.per_unit = (f.left + units - 1) / units;
    return f;
}

// The next line of the share (NULL once it is done).
static inline __attribute__((always_inline)) const char *dl_pf_next(dl_pf *f) {
    if (f->left <= 0) return NULL;
    while (f->p >= f->end) {
        if (++f->s >= f->send) { f->left = 0; return NULL; }
        f->p = dl_span_first(f->s);
        f->end = dl_span_end(f->s);
    }
    const char *line = (const char *)f->p;
    f->p += 64;
    f->left--;
    return line;
}

// One unit's lines, prefetched into L2 (T1: L1 is the product's own working set).
static inline __attribute__((always_inline)) void dl_pf_step(dl_pf *f) {
    for (int64_t i = 0; i < f->per_unit; i++) {
        const char *line = dl_pf_next(f);
        if (!line) return;
#if defined(__x86_64__)
        _mm_prefetch(line, _MM_HINT_T1);
#endif
    }
}
#endif
