// The AVX-512 kernels for CPUs with AVX-512 BF16 too; see kernels_avx512.h.
#if defined(__x86_64__)
#define EF_HW_BF16 1
#include "kernels_avx512.h"
#endif
