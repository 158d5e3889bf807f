// The prefetch plan's arithmetic, observable: the lines each part of a product would prefetch (prefetch.h).
#include "prefetch.h"

int64_t dl_prefetch_trace(const dl_span *spans, int64_t n, int64_t parts, int64_t units, const void **lines, int64_t cap) {
    const dl_pf_plan plan = dl_pf_plan_of(spans, n);
    int64_t count = 0;
    for (int64_t k = 0; k < parts; k++) {
        dl_pf f = dl_pf_share(&plan, k, k + 1, parts, units);
        for (int64_t u = 0; u < units; u++)
            for (int64_t i = 0; i < f.per_unit; i++) {
                const char *line = dl_pf_next(&f);
                if (!line) break;
                if (count < cap) lines[count] = line;
                count++;
            }
    }
    return count;
}
