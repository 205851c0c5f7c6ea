// Fused CPU kernels of package tensor; see kernels.c. simd != 0 (only
// where ef_simd() says the CPU has AVX-512) picks the vector versions
// (kernels_avx512.h); simd 2 (AVX-512 BF16 too) those that round to
// bfloat16 in one instruction and multiply attention's operands with the
// BF16 dot products; simd 3 (AMX too, and Linux lets the process use it)
// attention's on the AMX tile unit.
#include <stdint.h>

enum { EF_F32 = 6, EF_BF16 = 15 };

int ef_simd(void);
int ef_fast_bf16(void); // the CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX)
// ef_lse_update folds rows [r0, r1) of a chunk x [rows, n] of logits,
// columns [c0, c0+n) of the vocabulary, into each row's running maximum and
// sum of exponentials against it, and copies the chunk's targets (width a
// row) into picked.
void ef_lse_update(int simd, const void *x, int dtype, int64_t r0, int64_t r1, int64_t n, int64_t c0,
                   const int64_t *targets, int64_t width, float *max, float *sum, float *picked);
// ef_rms_norm normalises rows [r0, r1) of x [rows, dim] into out; with add
// (same shape) it normalises x + add, rounded to xdtype, and writes that sum
// to sum. x and sum are of xdtype (the residual stream's), add, weight and
// out of dtype.
void ef_rms_norm(int simd, const void *x, int xdtype, const void *add, const void *weight, int dtype, int64_t r0,
                 int64_t r1, int64_t dim, float eps, void *sum, void *out);
void ef_silu_mul(int simd, const void *u, int dtype, int64_t r0, int64_t r1, int64_t ffn, void *out);
void ef_rotary(int simd, const void *x, int dtype, int64_t r0, int64_t r1, int64_t row_stride, int64_t heads,
               int64_t head_dim, const void *cos, const void *sin, void *out);

// Arguments of ef_attention; see kernels.c.
typedef struct {
	int dtype;
	int64_t B, H, G, L, P, hd;
	const void *q, *k, *v, *pk, *pv;
	int64_t qs[3], ks[3], vs[3], pks[3], pvs[3];
	int past_shared;
	const uint8_t *visible;
	float scale;
	void *out;
} ef_attention_args;

int ef_attention(int simd, const ef_attention_args *a, int64_t t0, int64_t t1);
