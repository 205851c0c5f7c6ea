// The AVX-512 kernels for any CPU with AVX-512 F/BW/DQ/VL; see kernels_avx512.h.
#if defined(__x86_64__)
#define EF_HW_BF16 0
#include "kernels_avx512.h"
#endif
