// Helpers shared by the fused kernels' translation units: kernels.c (the
// portable versions and the dispatch) and the two builds of the AVX-512
// versions (kernels_avx512.h). All static inline, so that each unit keeps
// what it uses.
#ifndef EF_KERNELS_COMMON_H
#define EF_KERNELS_COMMON_H

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

static inline float ef_bf16_to_f32(uint16_t b) {
	uint32_t u = (uint32_t)b << 16;
	float f;
	memcpy(&f, &u, sizeof f);
	return f;
}

// Round to nearest, ties to even, as libtorch's float-to-bfloat16 cast.
static inline uint16_t ef_f32_to_bf16(float f) {
	uint32_t u;
	memcpy(&u, &f, sizeof u);
	if ((u & 0x7fffffffu) > 0x7f800000u) {
		return (uint16_t)((u >> 16) | 0x40u); // NaN stays a quiet NaN
	}
	u += 0x7fffu + ((u >> 16) & 1u);
	return (uint16_t)(u >> 16);
}

static inline float ef_load(const void *p, int dtype, int64_t i) {
	if (dtype == EF_BF16) {
		return ef_bf16_to_f32(((const uint16_t *)p)[i]);
	}
	return ((const float *)p)[i];
}

// Rounds v to the element type (identity for float32).
static inline float ef_round(float v, int dtype) {
	return dtype == EF_BF16 ? ef_bf16_to_f32(ef_f32_to_bf16(v)) : v;
}

static inline void ef_store(void *p, int dtype, int64_t i, float v) {
	if (dtype == EF_BF16) {
		((uint16_t *)p)[i] = ef_f32_to_bf16(v);
	} else {
		((float *)p)[i] = v;
	}
}

// exp(x) for x in [-87, 88] (clamped), within 3 ulp: x = k·ln2 + r with
// |r| <= ln2/2, exp(r) by a degree-5 polynomial (1 + r + r²·p(r), p fitted
// for the least maximum relative error, 1.6e-7, on that interval), 2^k
// built in the exponent bits. Branch-free, so loops over it vectorise.
// Degree 5 instead of cephes' 7: the log-normaliser over the vocabulary
// and SwiGLU spend most of their time here.
static inline float ef_exp(float x) {
	x = x < -87.0f ? -87.0f : x;
	x = x > 88.0f ? 88.0f : x;
	float k = floorf(x * 1.44269504088896341f + 0.5f);
	float r = x - k * 0.693359375f;
	r = r + k * 2.12194440e-4f;
	float p = 8.3125252277e-3f;
	p = p * r + 4.1890114546e-2f;
	p = p * r + 1.6667114198e-1f;
	p = p * r + 4.9999231100e-1f;
	p = p * r * r + r + 1.0f;
	uint32_t bits = (uint32_t)((int32_t)k + 127) << 23;
	float scale;
	memcpy(&scale, &bits, sizeof scale);
	return p * scale;
}

// ef_lse_fold folds one row's chunk maximum into its running maximum and
// sum of exponentials: the sum so far is rescaled to the new maximum. It
// returns the maximum the chunk's exponentials are to be taken against,
// or NaN when the chunk adds nothing (everything so far is -inf).
static inline float ef_lse_fold(float chunk_max, float *max, float *sum) {
	if (chunk_max > *max) {
		*sum = isinf(*max) ? 0 : *sum * expf(*max - chunk_max);
		*max = chunk_max;
	}
	return isinf(*max) && *max < 0 ? NAN : *max;
}

// ef_lse_pick_targets copies the targets of row r that fall in the chunk
// [c0, c0+n) into picked.
static inline void ef_lse_pick_targets(const void *row, int dtype, int64_t r, int64_t n, int64_t c0, const int64_t *targets,
                                int64_t width, float *picked) {
	for (int64_t j = 0; j < width; j++) {
		int64_t t = targets[r * width + j] - c0;
		if (t >= 0 && t < n) {
			picked[r * width + j] = ef_load(row, dtype, t);
		}
	}
}

// ef_key_at finds key j of task (b, g) — the past's first, then the rows'
// own — and its value: their tensors and element offsets.
static inline void ef_key_at(const ef_attention_args *a, int64_t b, int64_t g, int64_t j, const void **kr, int64_t *ko,
                             const void **vr, int64_t *vo) {
	if (j < a->P) {
		int64_t pb = a->past_shared ? 0 : b;
		*kr = a->pk, *vr = a->pv;
		*ko = pb * a->pks[0] + g * a->pks[1] + j * a->pks[2];
		*vo = pb * a->pvs[0] + g * a->pvs[1] + j * a->pvs[2];
		return;
	}
	int64_t l = j - a->P;
	*kr = a->k, *vr = a->v;
	*ko = b * a->ks[0] + g * a->ks[1] + l * a->ks[2];
	*vo = b * a->vs[0] + g * a->vs[1] + l * a->vs[2];
}

// The vector versions' entry points, one set per build of kernels_avx512.h:
// _avx512 rounds to bfloat16 in integer arithmetic, _avx512bf16 with the
// AVX-512 BF16 conversion and multiplies attention's bfloat16 operands
// with its dot products.
#define EF_VECTOR_KERNELS(suffix)                                                                                    \
	void ef_lse_update_##suffix(const void *x, int dtype, int64_t r0, int64_t r1, int64_t n, int64_t c0,            \
	                            const int64_t *targets, int64_t width, float *max, float *sum, float *picked);       \
	void ef_rms_norm_##suffix(const void *x, int xdtype, const void *add, const void *weight, int dtype, int64_t r0,   \
	                          int64_t r1, int64_t dim, float eps, void *sum, void *out);                             \
	void ef_silu_mul_##suffix(const void *u, int dtype, int64_t r0, int64_t r1, int64_t ffn, void *out);             \
	void ef_rotary_##suffix(const void *x, int dtype, int64_t r0, int64_t r1, int64_t row_stride, int64_t heads,     \
	                        int64_t head_dim, const void *cos, const void *sin, void *out);                          \
	int ef_attention_##suffix(const ef_attention_args *a, int64_t t0, int64_t t1);

EF_VECTOR_KERNELS(avx512)
EF_VECTOR_KERNELS(avx512bf16)
int ef_attention_amx(const ef_attention_args *a, int64_t t0, int64_t t1);

#endif
