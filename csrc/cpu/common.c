/* Status strings and build information shared by every backend. */
#include "c2rope.h"

#ifdef _OPENMP
#include <omp.h>
#endif

const char *c2rope_status_string(c2rope_status status) {
    switch (status) {
    case C2ROPE_OK:
        return "success";
    case C2ROPE_ERR_INVALID_ARGUMENT:
        return "invalid argument (inconsistent sizes, strides or null pointers)";
    case C2ROPE_ERR_UNSUPPORTED_DTYPE:
        return "unsupported dtype";
    case C2ROPE_ERR_CUDA:
        return "CUDA launch or runtime error";
    }
    return "unknown c2rope status";
}

int c2rope_openmp_max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}
