// Private: what a kernel does when it cannot get scratch memory. A kernel that skipped its work instead
// would leave stale or uninitialised outputs behind and the model would go on with wrong numbers, so it
// stops the process with a message that says which buffer and how large.
#ifndef DLORA_FATAL_H
#define DLORA_FATAL_H
#include <stdio.h>
#include <stdlib.h>

__attribute__((noreturn, cold)) static inline void dl_fatal_alloc(const char *what, size_t bytes) {
    fprintf(stderr, "dlora kernels: cannot allocate %zu bytes for %s (out of memory); aborting\n", bytes, what);
    fflush(stderr);
    abort();
}
#endif
