// The process heap's free pages, returned to the system.
#include "ckernels.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

int dl_return_free_heap(void) {
#if defined(__GLIBC__)
    return malloc_trim(0);
#else
    return 0;
#endif
}
