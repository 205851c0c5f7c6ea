// Fused CPU kernels of package tensor (see kernels.go). Each works on a
// range of rows [r0, r1) of contiguous row-major data, so that Go can split
// a tensor's rows among threads; elements are bfloat16 (dtype 15, as raw
// uint16) or float32 (dtype 6). Every rounding to bfloat16 sits where the
// libtorch operations these kernels replace round, so results match them.

// syscall(2), for the AMX permission
#define _GNU_SOURCE
#include <unistd.h>
#if defined(__linux__)
#include <sys/syscall.h>
#endif

#include "kernels_common.h"

static float ef_row_max(const void *x, int dtype, int64_t n) {
	float m = -INFINITY;
	for (int64_t i = 0; i < n; i++) {
		float v = ef_load(x, dtype, i);
		m = v > m ? v : m;
	}
	return m;
}

static float ef_row_sum_exp(const void *x, int dtype, int64_t n, float max) {
	float s = 0;
	for (int64_t i = 0; i < n; i++) {
		s += ef_exp(ef_load(x, dtype, i) - max);
	}
	return s;
}

static void ef_lse_update_scalar(const void *x, int dtype, int64_t r0, int64_t r1, int64_t n, int64_t c0,
                                 const int64_t *targets, int64_t width, float *max, float *sum, float *picked) {
	size_t esize = dtype == EF_BF16 ? 2 : 4;
	for (int64_t r = r0; r < r1; r++) {
		const void *row = (const char *)x + (size_t)r * (size_t)n * esize;
		float m = ef_lse_fold(ef_row_max(row, dtype, n), &max[r], &sum[r]);
		if (!isnan(m)) {
			sum[r] += ef_row_sum_exp(row, dtype, n, m);
		}
		ef_lse_pick_targets(row, dtype, r, n, c0, targets, width, picked);
	}
}

static void ef_rms_norm_scalar(const void *x, int xdtype, const void *add, const void *weight, int dtype, int64_t r0,
                               int64_t r1, int64_t dim, float eps, void *sum, void *out) {
	size_t esize = dtype == EF_BF16 ? 2 : 4, xesize = xdtype == EF_BF16 ? 2 : 4;
	for (int64_t r = r0; r < r1; r++) {
		size_t at = (size_t)r * (size_t)dim * esize, xat = (size_t)r * (size_t)dim * xesize;
		const void *row = (const char *)x + xat;
		void *orow = (char *)out + at;
		if (add != NULL) {
			void *srow = (char *)sum + xat;
			for (int64_t i = 0; i < dim; i++) {
				ef_store(srow, xdtype, i, ef_load(row, xdtype, i) + ef_load((const char *)add + at, dtype, i));
			}
			row = srow;
		}
		float ss = 0;
		for (int64_t i = 0; i < dim; i++) {
			float v = ef_load(row, xdtype, i);
			ss += v * v;
		}
		float inv = 1.0f / sqrtf(ss / (float)dim + eps);
		for (int64_t i = 0; i < dim; i++) {
			ef_store(orow, dtype, i, ef_load(weight, dtype, i) * (ef_load(row, xdtype, i) * inv));
		}
	}
}

static void ef_silu_mul_scalar(const void *u, int dtype, int64_t r0, int64_t r1, int64_t ffn, void *out) {
	size_t esize = dtype == EF_BF16 ? 2 : 4;
	for (int64_t r = r0; r < r1; r++) {
		const void *gate = (const char *)u + (size_t)r * (size_t)(2 * ffn) * esize;
		const void *up = (const char *)gate + (size_t)ffn * esize;
		void *orow = (char *)out + (size_t)r * (size_t)ffn * esize;
		for (int64_t i = 0; i < ffn; i++) {
			float g = ef_load(gate, dtype, i);
			float act = ef_round(g / (1.0f + ef_exp(-g)), dtype);
			ef_store(orow, dtype, i, act * ef_load(up, dtype, i));
		}
	}
}

static void ef_rotary_scalar(const void *x, int dtype, int64_t r0, int64_t r1, int64_t row_stride, int64_t heads, int64_t head_dim,
               const void *cos, const void *sin, void *out) {
	size_t esize = dtype == EF_BF16 ? 2 : 4;
	for (int64_t r = r0; r < r1; r++) {
		const char *row = (const char *)x + (size_t)r * (size_t)row_stride * esize;
		const void *c = (const char *)cos + (size_t)r * (size_t)head_dim * esize;
		const void *s = (const char *)sin + (size_t)r * (size_t)head_dim * esize;
		char *orow = (char *)out + (size_t)r * (size_t)(heads * head_dim) * esize;
		for (int64_t h = 0; h < heads; h++) {
			const void *v = row + (size_t)(h * head_dim) * esize;
			void *o = orow + (size_t)(h * head_dim) * esize;
			for (int64_t d = 0; d < head_dim; d++) {
				float a = ef_round(ef_load(v, dtype, d) * ef_load(c, dtype, d), dtype);
				float b = ef_round(ef_load(v, dtype, d ^ 1) * ef_load(s, dtype, d), dtype);
				ef_store(o, dtype, d, a + b);
			}
		}
	}
}

// Attention with grouped keys and values after an optional past, as
// libtorch's scaled_dot_product_attention computes it on the CPU (the
// "math" path, which a boolean mask selects): queries and keys are each
// scaled by sqrt(scale) and rounded, scores are rounded products, the
// softmax rounds its output, and the output rounds the weighted sum. Keys
// a query does not see are skipped rather than weighted by 0, so that
// padding never reaches a visible row, and a query that sees no key gets
// zeros (libtorch gives NaN there).
//
// A task is one (batch row, key/value group): its keys, scaled and
// transposed, and values are converted to float32 once and serve the
// group's heads. Strides are in elements: q [B, H, L, hd] by (qs0, qs1,
// qs2), k and v [B, G, L, hd] by (ks*, vs*), the past keys and values
// [R, G, P, hd] by (pks*, pvs*), with R = 1 (shared by every row) or B. visible is [B, L, P+L];
// out is [B, L, H·hd]. The arguments (ef_attention_args) are in kernels.h.

// ef_keys fills kt [hd][T] (transposed, scaled, rounded) and vv [T][hd] for
// task (b, g).
static void ef_keys(const ef_attention_args *a, int64_t b, int64_t g, int64_t T, float *kt, float *vv) {
	int dtype = a->dtype;
	float sq = sqrtf(a->scale);
	for (int64_t j = 0; j < a->P + a->L; j++) {
		const void *kr, *vr;
		int64_t ko, vo;
		ef_key_at(a, b, g, j, &kr, &ko, &vr, &vo);
		for (int64_t d = 0; d < a->hd; d++) {
			kt[d * T + j] = ef_round(ef_load(kr, dtype, ko + d) * sq, dtype);
			vv[j * a->hd + d] = ef_load(vr, dtype, vo + d);
		}
	}
}

static void ef_softmax_row(float *s, const uint8_t *vis, int64_t n, int dtype) {
	float max = -INFINITY;
	for (int64_t j = 0; j < n; j++) {
		if (vis[j] && s[j] > max) {
			max = s[j];
		}
	}
	float sum = 0;
	for (int64_t j = 0; j < n; j++) {
		s[j] = vis[j] ? ef_exp(s[j] - max) : 0;
		sum += s[j];
	}
	float inv = 1.0f / sum;
	for (int64_t j = 0; j < n; j++) {
		s[j] = ef_round(s[j] * inv, dtype);
	}
}

// y[0:n] += a·x[0:n]
static void ef_axpy(float a, const float *x, float *y, int64_t n) {
	for (int64_t i = 0; i < n; i++) {
		y[i] += a * x[i];
	}
}

static void ef_round_row(float *x, int64_t n, int dtype) {
	for (int64_t i = 0; i < n; i++) {
		x[i] = ef_round(x[i], dtype);
	}
}

// ef_attention_scalar runs tasks [t0, t1). It returns -1 when its scratch
// memory cannot be allocated.
static int ef_attention_scalar(const ef_attention_args *a, int64_t t0, int64_t t1) {
	int dtype = a->dtype;
	int64_t hd = a->hd, T = a->P + a->L, per = a->H / a->G;
	float *kt = malloc(sizeof(float) * (size_t)(hd * T + T * hd + T + 2 * hd));
	if (kt == NULL) {
		return -1;
	}
	float *vv = kt + hd * T, *sc = vv + T * hd, *qv = sc + T, *acc = qv + hd;
	float sq = sqrtf(a->scale);
	size_t esize = dtype == EF_BF16 ? 2 : 4;
	for (int64_t t = t0; t < t1; t++) {
		int64_t b = t / a->G, g = t % a->G;
		ef_keys(a, b, g, T, kt, vv);
		for (int64_t h = g * per; h < (g + 1) * per; h++) {
			for (int64_t l = 0; l < a->L; l++) {
				int64_t qo = b * a->qs[0] + h * a->qs[1] + l * a->qs[2];
				const uint8_t *vis = a->visible + (b * a->L + l) * T;
				int any = 0;
				for (int64_t j = 0; j < T; j++) {
					any |= vis[j];
					sc[j] = 0;
				}
				void *o = (char *)a->out + (size_t)((b * a->L + l) * a->H + h) * (size_t)hd * esize;
				if (!any) {
					memset(o, 0, (size_t)hd * esize);
					continue;
				}
				for (int64_t d = 0; d < hd; d++) {
					qv[d] = ef_round(ef_load(a->q, dtype, qo + d) * sq, dtype);
					ef_axpy(qv[d], kt + d * T, sc, T);
				}
				ef_round_row(sc, T, dtype);
				ef_softmax_row(sc, vis, T, dtype);
				for (int64_t d = 0; d < hd; d++) {
					acc[d] = 0;
				}
				for (int64_t j = 0; j < T; j++) {
					if (vis[j]) {
						ef_axpy(sc[j], vv + j * hd, acc, hd);
					}
				}
				for (int64_t d = 0; d < hd; d++) {
					ef_store(o, dtype, d, acc[d]);
				}
			}
		}
	}
	free(kt);
	return 0;
}

// The entry points: simd (from ef_simd) picks the portable versions (0),
// the AVX-512 ones (1), those with AVX-512 BF16 (2), and for attention the
// AMX tile unit (3).

#if defined(__x86_64__)
static int ef_has_avx512(void) {
	return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
	       __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
}

// ef_amx_permitted asks Linux for the AMX tile data state, which it grants
// a process only on request (arch_prctl ARCH_REQ_XCOMP_PERM, feature 18,
// XTILEDATA); without it the first tile instruction kills the process.
// Asking again is harmless (libtorch's oneDNN asks too).
static int ef_amx_permitted(void) {
#if defined(__linux__)
	return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
#else
	return 0;
#endif
}

#define EF_DISPATCH(simd, f, ...) \
	((simd) >= 2 ? f##_avx512bf16(__VA_ARGS__) : (simd) ? f##_avx512(__VA_ARGS__) : f##_scalar(__VA_ARGS__))
#else
// Other processors run the portable versions only.
static int ef_has_avx512(void) { return 0; }

#define EF_DISPATCH(simd, f, ...) f##_scalar(__VA_ARGS__)
#endif

static int ef_find_simd(void) {
	if (!ef_has_avx512()) {
		return 0;
	}
#if defined(__x86_64__)
	if (__builtin_cpu_supports("avx512bf16")) {
		if (__builtin_cpu_supports("amx-tile") && __builtin_cpu_supports("amx-bf16") && ef_amx_permitted()) {
			return 3;
		}
		return 2;
	}
#endif
	return 1;
}

int ef_simd(void) {
	// found once: what the CPU and the kernel allow this process does not
	// change (a race only computes the same value twice)
	static int level = -1;
	int l = __atomic_load_n(&level, __ATOMIC_RELAXED);
	if (l < 0) {
		l = ef_find_simd();
		__atomic_store_n(&level, l, __ATOMIC_RELAXED);
	}
	return l;
}

int ef_fast_bf16(void) {
#if defined(__x86_64__)
	return __builtin_cpu_supports("avx512bf16") || __builtin_cpu_supports("amx-bf16");
#else
	return 0;
#endif
}

void ef_lse_update(int simd, const void *x, int dtype, int64_t r0, int64_t r1, int64_t n, int64_t c0,
                   const int64_t *targets, int64_t width, float *max, float *sum, float *picked) {
	EF_DISPATCH(simd, ef_lse_update, x, dtype, r0, r1, n, c0, targets, width, max, sum, picked);
}

void ef_rms_norm(int simd, const void *x, int xdtype, const void *add, const void *weight, int dtype, int64_t r0,
                 int64_t r1, int64_t dim, float eps, void *sum, void *out) {
	EF_DISPATCH(simd, ef_rms_norm, x, xdtype, add, weight, dtype, r0, r1, dim, eps, sum, out);
}

void ef_silu_mul(int simd, const void *u, int dtype, int64_t r0, int64_t r1, int64_t ffn, void *out) {
	EF_DISPATCH(simd, ef_silu_mul, u, dtype, r0, r1, ffn, out);
}

void ef_rotary(int simd, const void *x, int dtype, int64_t r0, int64_t r1, int64_t row_stride, int64_t heads,
               int64_t head_dim, const void *cos, const void *sin, void *out) {
	EF_DISPATCH(simd, ef_rotary, x, dtype, r0, r1, row_stride, heads, head_dim, cos, sin, out);
}

int ef_attention(int simd, const ef_attention_args *a, int64_t t0, int64_t t1) {
#if defined(__x86_64__)
	if (simd >= 3) {
		return ef_attention_amx(a, t0, t1);
	}
#endif
	return EF_DISPATCH(simd, ef_attention, a, t0, t1);
}
