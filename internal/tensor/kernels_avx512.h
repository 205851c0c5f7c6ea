// The AVX-512 versions of the fused kernels (kernels.c has the portable
// ones), compiled twice: by kernels_avx512.c for any CPU with AVX-512
// F/BW/DQ/VL (EF_HW_BF16 0) and by kernels_avx512bf16.c for CPUs with
// AVX-512 BF16 as well (EF_HW_BF16 1), where rounding to bfloat16 is one
// instruction rather than seven and attention's products use the BF16 dot
// products. Each build names its entry points by EF_NAME.

#include <immintrin.h>

#include "kernels_common.h"

#if EF_HW_BF16
#define EF_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16")))
#define EF_NAME(f) f##_avx512bf16
#else
#define EF_AVX512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl")))
#define EF_NAME(f) f##_avx512
#endif

// AVX-512 versions: 16 floats a vector, tails under a mask. They compute
// what the scalar versions compute, in the same order per element.



EF_AVX512 static inline __m512 ef_v_load(const void *p, int dtype, int64_t i, __mmask16 m) {
	if (dtype == EF_BF16) {
		__m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)p + i);
		return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
	}
	return _mm512_maskz_loadu_ps(m, (const float *)p + i);
}

// ef_v_bf16 rounds 16 floats to bfloat16 (nearest, ties to even; NaN
// stays a quiet NaN), as ef_f32_to_bf16 does. The BF16 instruction also
// flushes subnormals to zero, which no result here depends on.
EF_AVX512 static inline __m256i ef_v_bf16(__m512 v) {
#if EF_HW_BF16
	return (__m256i)_mm512_cvtneps_pbh(v);
#else
	__m512i u = _mm512_castps_si512(v);
	__m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
	__m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), 16);
	__mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
	r = _mm512_mask_or_epi32(r, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
	return _mm512_cvtepi32_epi16(r);
#endif
}

EF_AVX512 static inline __m512 ef_v_round(__m512 v, int dtype) {
	if (dtype != EF_BF16) {
		return v;
	}
	return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(ef_v_bf16(v)), 16));
}

EF_AVX512 static inline void ef_v_store(void *p, int dtype, int64_t i, __m512 v, __mmask16 m) {
	if (dtype == EF_BF16) {
		_mm256_mask_storeu_epi16((uint16_t *)p + i, m, ef_v_bf16(v));
	} else {
		_mm512_mask_storeu_ps((float *)p + i, m, v);
	}
}

// ef_v_exp is ef_exp on 16 floats; scalef applies 2^k, exactly as the
// scalar version's multiplication by the exponent bits.
EF_AVX512 static inline __m512 ef_v_exp(__m512 x) {
	x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
	x = _mm512_min_ps(x, _mm512_set1_ps(88.0f));
	__m512 k = _mm512_roundscale_ps(_mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), _mm512_set1_ps(0.5f)),
	                                _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
	__m512 r = _mm512_fnmadd_ps(k, _mm512_set1_ps(0.693359375f), x);
	r = _mm512_fmadd_ps(k, _mm512_set1_ps(2.12194440e-4f), r);
	__m512 p = _mm512_set1_ps(1.9875691500e-4f);
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
	p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
	return _mm512_scalef_ps(p, k);
}

static inline __mmask16 ef_tail(int64_t left) {
	return left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1);
}

EF_AVX512 void EF_NAME(ef_lse_update)(const void *x, int dtype, int64_t r0, int64_t r1, int64_t n, int64_t c0,
                                           const int64_t *targets, int64_t width, float *max, float *sum, float *picked) {
	size_t esize = dtype == EF_BF16 ? 2 : 4;
	for (int64_t r = r0; r < r1; r++) {
		const void *row = (const char *)x + (size_t)r * (size_t)n * esize;
		__m512 vmax = _mm512_set1_ps(-INFINITY);
		for (int64_t i = 0; i < n; i += 16) {
			__mmask16 m = ef_tail(n - i);
			vmax = _mm512_mask_max_ps(vmax, m, vmax, ef_v_load(row, dtype, i, m));
		}
		float mx = ef_lse_fold(_mm512_reduce_max_ps(vmax), &max[r], &sum[r]);
		if (!isnan(mx)) {
			__m512 vm = _mm512_set1_ps(mx), vsum = _mm512_setzero_ps();
			for (int64_t i = 0; i < n; i += 16) {
				__mmask16 m = ef_tail(n - i);
				__m512 e = ef_v_exp(_mm512_sub_ps(ef_v_load(row, dtype, i, m), vm));
				vsum = _mm512_mask_add_ps(vsum, m, vsum, e);
			}
			sum[r] += _mm512_reduce_add_ps(vsum);
		}
		ef_lse_pick_targets(row, dtype, r, n, c0, targets, width, picked);
	}
}

EF_AVX512 void EF_NAME(ef_rms_norm)(const void *x, const void *add, const void *weight, int dtype, int64_t r0,
                                         int64_t r1, int64_t dim, float eps, void *sum, void *out) {
	size_t esize = dtype == EF_BF16 ? 2 : 4;
	for (int64_t r = r0; r < r1; r++) {
		size_t at = (size_t)r * (size_t)dim * esize;
		const void *row = (const char *)x + at;
		void *orow = (char *)out + at;
		if (add != NULL) {
			void *srow = (char *)sum + at;
			for (int64_t i = 0; i < dim; i += 16) {
				__mmask16 m = ef_tail(dim - i);
				__m512 v = _mm512_add_ps(ef_v_load(row, dtype, i, m), ef_v_load((const char *)add + at, dtype, i, m));
				ef_v_store(srow, dtype, i, v, m);
			}
			row = srow;
		}
		__m512 acc = _mm512_setzero_ps();
		for (int64_t i = 0; i < dim; i += 16) {
			__m512 v = ef_v_load(row, dtype, i, ef_tail(dim - i));
			acc = _mm512_fmadd_ps(v, v, acc);
		}
		__m512 inv = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(acc) / (float)dim + eps));
		for (int64_t i = 0; i < dim; i += 16) {
			__mmask16 m = ef_tail(dim - i);
			__m512 y = _mm512_mul_ps(ef_v_load(row, dtype, i, m), inv);
			ef_v_store(orow, dtype, i, _mm512_mul_ps(ef_v_load(weight, dtype, i, m), y), m);
		}
	}
}

EF_AVX512 void EF_NAME(ef_silu_mul)(const void *u, int dtype, int64_t r0, int64_t r1, int64_t ffn, void *out) {
	size_t esize = dtype == EF_BF16 ? 2 : 4;
	__m512 one = _mm512_set1_ps(1.0f);
	for (int64_t r = r0; r < r1; r++) {
		const void *gate = (const char *)u + (size_t)r * (size_t)(2 * ffn) * esize;
		const void *up = (const char *)gate + (size_t)ffn * esize;
		void *orow = (char *)out + (size_t)r * (size_t)ffn * esize;
		for (int64_t i = 0; i < ffn; i += 16) {
			__mmask16 m = ef_tail(ffn - i);
			__m512 g = ef_v_load(gate, dtype, i, m);
			__m512 e = ef_v_exp(_mm512_sub_ps(_mm512_setzero_ps(), g));
			// g / (1 + e) through a reciprocal refined by one Newton step
			// (within an ulp or two of the quotient, at a fraction of a
			// division's cost)
			__m512 den = _mm512_add_ps(one, e);
			__m512 r = _mm512_rcp14_ps(den);
			r = _mm512_mul_ps(r, _mm512_fnmadd_ps(den, r, _mm512_set1_ps(2.0f)));
			__m512 act = ef_v_round(_mm512_mul_ps(g, r), dtype);
			ef_v_store(orow, dtype, i, _mm512_mul_ps(act, ef_v_load(up, dtype, i, m)), m);
		}
	}
}

EF_AVX512 void EF_NAME(ef_rotary)(const void *x, int dtype, int64_t r0, int64_t r1, int64_t row_stride, int64_t heads,
                                       int64_t head_dim, const void *cos, const void *sin, void *out) {
	size_t esize = dtype == EF_BF16 ? 2 : 4;
	for (int64_t r = r0; r < r1; r++) {
		const char *row = (const char *)x + (size_t)r * (size_t)row_stride * esize;
		const void *c = (const char *)cos + (size_t)r * (size_t)head_dim * esize;
		const void *s = (const char *)sin + (size_t)r * (size_t)head_dim * esize;
		char *orow = (char *)out + (size_t)r * (size_t)(heads * head_dim) * esize;
		for (int64_t d = 0; d < head_dim; d += 16) {
			__mmask16 m = ef_tail(head_dim - d);
			__m512 vc = ef_v_load(c, dtype, d, m), vs = ef_v_load(s, dtype, d, m);
			for (int64_t h = 0; h < heads; h++) {
				const void *v = row + (size_t)(h * head_dim) * esize;
				__m512 xv = ef_v_load(v, dtype, d, m);
				// pairs never straddle a vector: d and head_dim are even
				__m512 sw = _mm512_permute_ps(xv, 0xB1);
				__m512 a = ef_v_round(_mm512_mul_ps(xv, vc), dtype);
				__m512 b = ef_v_round(_mm512_mul_ps(sw, vs), dtype);
				ef_v_store(orow + (size_t)(h * head_dim) * esize, dtype, d, _mm512_add_ps(a, b), m);
			}
		}
	}
}

EF_AVX512 static void ef_softmax_row_avx512(float *s, const uint8_t *vis, int64_t n, int dtype) {
	__m512 vmax = _mm512_set1_ps(-INFINITY);
	for (int64_t j = 0; j < n; j += 16) {
		__mmask16 m = ef_tail(n - j);
		__mmask16 seen = _mm512_mask_test_epi32_mask(m, _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, vis + j)),
		                                             _mm512_set1_epi32(0xff));
		vmax = _mm512_mask_max_ps(vmax, seen, vmax, _mm512_maskz_loadu_ps(m, s + j));
	}
	__m512 mx = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
	__m512 vsum = _mm512_setzero_ps();
	for (int64_t j = 0; j < n; j += 16) {
		__mmask16 m = ef_tail(n - j);
		__mmask16 seen = _mm512_mask_test_epi32_mask(m, _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, vis + j)),
		                                             _mm512_set1_epi32(0xff));
		__m512 e = _mm512_maskz_mov_ps(seen, ef_v_exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, s + j), mx)));
		_mm512_mask_storeu_ps(s + j, m, e);
		vsum = _mm512_add_ps(vsum, e);
	}
	__m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(vsum));
	for (int64_t j = 0; j < n; j += 16) {
		__mmask16 m = ef_tail(n - j);
		_mm512_mask_storeu_ps(s + j, m, ef_v_round(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, s + j), inv), dtype));
	}
}

// ef_keys_avx512 is ef_keys with vector loads: each key row's scaled,
// rounded elements are scattered into their column of kt.
EF_AVX512 static void ef_keys_avx512(const ef_attention_args *a, int64_t b, int64_t g, int64_t T, float *kt, float *vv) {
	int dtype = a->dtype;
	__m512 sq = _mm512_set1_ps(sqrtf(a->scale));
	__m512i column = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
	                                     _mm512_set1_epi32((int)T));
	for (int64_t j = 0; j < a->P + a->L; j++) {
		const void *kr, *vr;
		int64_t ko, vo;
		ef_key_at(a, b, g, j, &kr, &ko, &vr, &vo);
		for (int64_t d = 0; d < a->hd; d += 16) {
			__mmask16 m = ef_tail(a->hd - d);
			__m512 k = ef_v_round(_mm512_mul_ps(ef_v_load(kr, dtype, ko + d, m), sq), dtype);
			_mm512_mask_i32scatter_ps(kt + d * T + j, m, column, k, 4);
			_mm512_mask_storeu_ps(vv + j * a->hd + d, m, ef_v_load(vr, dtype, vo + d, m));
		}
	}
}

// ef_query_block sets up queries l0 .. l0+nq-1 of batch row b, four at a
// time: vis[i] is query i's visibility row (the first query's for i >= nq,
// which are computed but never stored), any[i] whether it sees a key. It
// returns one past the last key some query of the block sees (0 if none):
// keys from there on need neither scores nor weights, which under a causal
// mask skips about half of them.
static inline int64_t ef_query_block(const ef_attention_args *a, int64_t b, int64_t l0, int nq, const uint8_t *vis[4],
                                     int any[4]) {
	int64_t T = a->P + a->L, end = 0;
	for (int i = 0; i < 4; i++) {
		vis[i] = a->visible + (b * a->L + l0 + (i < nq ? i : 0)) * T;
		// backwards: a causal row's last visible key is its own, near the end
		int64_t last = i < nq ? T : 0;
		while (last > 0 && !vis[i][last - 1]) {
			last--;
		}
		any[i] = last > 0;
		end = last > end ? last : end;
	}
	return end;
}

// ef_v_query is dimensions [d, d+16) of query (b, h, l), scaled by sq
// (sqrt of the scale) and rounded, as both AVX-512 versions read it.
EF_AVX512 static inline __m512 ef_v_query(const ef_attention_args *a, int64_t b, int64_t h, int64_t l, int64_t d, __m512 sq,
                                         __mmask16 m) {
	int64_t qo = b * a->qs[0] + h * a->qs[1] + l * a->qs[2];
	return ef_v_round(_mm512_mul_ps(ef_v_load(a->q, a->dtype, qo + d, m), sq), a->dtype);
}

// ef_attention_tasks_avx512 is ef_attention_tasks for AVX-512: the keys of
// a task are transposed into kt [hd][Tp] (Tp: T rounded up to 16, zero
// padded) and the values kept as vv [T][hd], both float32; queries go four
// at a time, so that each vector of keys or values loaded serves four
// fused multiply-adds.
EF_AVX512 static int ef_attention_tasks_avx512(const ef_attention_args *a, int64_t t0, int64_t t1) {
	enum { NQ = 4 };
	int dtype = a->dtype;
	int64_t hd = a->hd, T = a->P + a->L, Tp = (T + 15) / 16 * 16, per = a->H / a->G;
	float *kt = malloc(sizeof(float) * (size_t)(hd * Tp + T * hd + NQ * Tp + NQ * hd));
	if (kt == NULL) {
		return -1;
	}
	float *vv = kt + hd * Tp, *sc = vv + T * hd, *qv = sc + NQ * Tp;
	float sq = sqrtf(a->scale);
	size_t esize = dtype == EF_BF16 ? 2 : 4;
	for (int64_t t = t0; t < t1; t++) {
		int64_t b = t / a->G, g = t % a->G;
		memset(kt, 0, sizeof(float) * (size_t)(hd * Tp));
		ef_keys_avx512(a, b, g, Tp, kt, vv);
		for (int64_t h = g * per; h < (g + 1) * per; h++) {
			for (int64_t l0 = 0; l0 < a->L; l0 += NQ) {
				int nq = a->L - l0 < NQ ? (int)(a->L - l0) : NQ;
				const uint8_t *vis[NQ];
				int any[NQ];
				int64_t end = ef_query_block(a, b, l0, nq, vis, any);
				for (int i = 0; i < NQ; i++) {
					for (int64_t d = 0; d < hd; d += 16) {
						__mmask16 m = ef_tail(hd - d);
						__m512 q = ef_v_query(a, b, h, l0 + (i < nq ? i : 0), d, _mm512_set1_ps(sq), m);
						_mm512_mask_storeu_ps(qv + i * hd + d, m, q);
					}
				}
				// scores: sc[i][j] = qv[i] · k_j, rounded, for the keys before end
				for (int64_t j = 0; j < end; j += 16) {
					__m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
					for (int64_t d = 0; d < hd; d++) {
						__m512 kv = _mm512_loadu_ps(kt + d * Tp + j);
						s0 = _mm512_fmadd_ps(_mm512_set1_ps(qv[d]), kv, s0);
						s1 = _mm512_fmadd_ps(_mm512_set1_ps(qv[hd + d]), kv, s1);
						s2 = _mm512_fmadd_ps(_mm512_set1_ps(qv[2 * hd + d]), kv, s2);
						s3 = _mm512_fmadd_ps(_mm512_set1_ps(qv[3 * hd + d]), kv, s3);
					}
					_mm512_storeu_ps(sc + j, ef_v_round(s0, dtype));
					_mm512_storeu_ps(sc + Tp + j, ef_v_round(s1, dtype));
					_mm512_storeu_ps(sc + 2 * Tp + j, ef_v_round(s2, dtype));
					_mm512_storeu_ps(sc + 3 * Tp + j, ef_v_round(s3, dtype));
				}
				for (int i = 0; i < nq; i++) {
					if (any[i]) {
						ef_softmax_row_avx512(sc + i * Tp, vis[i], end, dtype);
					}
				}
				// outputs: o[i] = Σ_j sc[i][j] v_j over the keys query i sees
				for (int64_t d = 0; d < hd; d += 16) {
					__mmask16 m = ef_tail(hd - d);
					__m512 o0 = _mm512_setzero_ps(), o1 = o0, o2 = o0, o3 = o0;
					for (int64_t j = 0; j < end; j++) {
						int seen = vis[0][j] | vis[1][j] | vis[2][j] | vis[3][j];
						if (!seen) {
							continue;
						}
						__m512 vj = _mm512_maskz_loadu_ps(m, vv + j * hd + d);
						// the softmax left weight 0 on a key its query does not
						// see (rows past nq are never stored)
						o0 = _mm512_fmadd_ps(_mm512_set1_ps(sc[j]), vj, o0);
						o1 = _mm512_fmadd_ps(_mm512_set1_ps(sc[Tp + j]), vj, o1);
						o2 = _mm512_fmadd_ps(_mm512_set1_ps(sc[2 * Tp + j]), vj, o2);
						o3 = _mm512_fmadd_ps(_mm512_set1_ps(sc[3 * Tp + j]), vj, o3);
					}
					__m512 os[NQ] = {o0, o1, o2, o3};
					for (int i = 0; i < nq; i++) {
						char *o = (char *)a->out + (size_t)((b * a->L + l0 + i) * a->H + h) * (size_t)hd * esize;
						ef_v_store(o, dtype, d, any[i] ? os[i] : _mm512_setzero_ps(), m);
					}
				}
			}
		}
	}
	free(kt);
	return 0;
}

#if EF_HW_BF16

// ef_bf16_pairs packs 16 bfloat16 values of a and 16 of b (raw bits) as 16
// 32-bit pairs (a_i, b_i): the operand layout of the BF16 dot products.
EF_AVX512 static inline __m512i ef_bf16_pairs(__m256i a, __m256i b) {
	return _mm512_or_si512(_mm512_cvtepu16_epi32(a), _mm512_slli_epi32(_mm512_cvtepu16_epi32(b), 16));
}

// ef_dot4x2 is the inner loop of both products of ef_attention_tasks_bf16dot:
// for steps t (steps[0..n) or, without steps, 0..n), four broadcast
// bfloat16 pairs a[i·astride + t] against two vectors of 16 pairs
// b[t·bstride ..] and b[t·bstride + 16 ..], summed into out[2i] and
// out[2i+1]. Eight independent sums keep the dot products' pipeline full.
EF_AVX512 static inline void ef_dot4x2(const uint32_t *a, int64_t astride, const uint32_t *b, int64_t bstride,
                                           const uint32_t *steps, int64_t n, __m512 out[8]) {
	__m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0, s6 = s0, s7 = s0;
	for (int64_t k = 0; k < n; k++) {
		int64_t t = steps != NULL ? (int64_t)steps[k] : k;
		__m512bh b0 = (__m512bh)_mm512_loadu_si512(b + t * bstride);
		__m512bh b1 = (__m512bh)_mm512_loadu_si512(b + t * bstride + 16);
		__m512bh a0 = (__m512bh)_mm512_set1_epi32((int)a[t]);
		__m512bh a1 = (__m512bh)_mm512_set1_epi32((int)a[astride + t]);
		__m512bh a2 = (__m512bh)_mm512_set1_epi32((int)a[2 * astride + t]);
		__m512bh a3 = (__m512bh)_mm512_set1_epi32((int)a[3 * astride + t]);
		s0 = _mm512_dpbf16_ps(s0, a0, b0);
		s1 = _mm512_dpbf16_ps(s1, a0, b1);
		s2 = _mm512_dpbf16_ps(s2, a1, b0);
		s3 = _mm512_dpbf16_ps(s3, a1, b1);
		s4 = _mm512_dpbf16_ps(s4, a2, b0);
		s5 = _mm512_dpbf16_ps(s5, a2, b1);
		s6 = _mm512_dpbf16_ps(s6, a3, b0);
		s7 = _mm512_dpbf16_ps(s7, a3, b1);
	}
	out[0] = s0, out[1] = s1, out[2] = s2, out[3] = s3, out[4] = s4, out[5] = s5, out[6] = s6, out[7] = s7;
}

// ef_attention_tasks_bf16dot is ef_attention_tasks_avx512 for bfloat16 on
// CPUs with AVX-512 BF16: the products of the scores and of the outputs go
// through vdpbf16ps, two bfloat16 products a lane and instruction, which
// halves the multiply-adds. Its operands are bfloat16 already (the rounded
// scaled queries and keys, the rounded probabilities, the values), whose
// products float32 holds exactly; only the order of the float32 sums
// differs. Keys are kept as kp [hd/2][Tp] pairs of dimensions, values as
// vp [Tp/2][hd] pairs of keys; hd must be a multiple of 32.
EF_AVX512 static int ef_attention_tasks_bf16dot(const ef_attention_args *a, int64_t t0, int64_t t1) {
	enum { NQ = 4 };
	// Tp: T rounded up to 32, so that probabilities pack 32 at a time
	int64_t hd = a->hd, T = a->P + a->L, Tp = (T + 31) / 32 * 32, per = a->H / a->G, hd2 = hd / 2, Tp2 = Tp / 2;
	size_t words = (size_t)(hd2 * Tp + Tp2 * hd + NQ * hd2 + NQ * Tp2 + Tp2);
	uint32_t *kp = malloc(sizeof(uint32_t) * words + sizeof(float) * (size_t)(NQ * Tp));
	if (kp == NULL) {
		return -1;
	}
	uint32_t *vp = kp + hd2 * Tp, *qp = vp + Tp2 * hd, *pp = qp + NQ * hd2, *pairs = pp + NQ * Tp2;
	float *sc = (float *)(pairs + Tp2);
	__m512 sq = _mm512_set1_ps(sqrtf(a->scale));
	__m256i kcol = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7), _mm256_set1_epi32((int)Tp));
	static const uint16_t odd_halves[32] = {1,  3,  5,  7,  9,  11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31,
	                                        33, 35, 37, 39, 41, 43, 45, 47, 49, 51, 53, 55, 57, 59, 61, 63};
	__m512i odd = _mm512_loadu_si512(odd_halves);
	for (int64_t t = t0; t < t1; t++) {
		int64_t b = t / a->G, g = t % a->G;
		memset(kp, 0, sizeof(uint32_t) * (size_t)(hd2 * Tp + Tp2 * hd));
		for (int64_t j = 0; j < T; j++) {
			const void *kr, *vr;
			int64_t ko, vo;
			ef_key_at(a, b, g, j, &kr, &ko, &vr, &vo);
			for (int64_t d = 0; d < hd; d += 16) {
				// scaled key, rounded: dimensions (d+2i, d+2i+1) are pair i,
				// which goes to row d/2+i of kp, column j
				__m256i k = ef_v_bf16(_mm512_mul_ps(ef_v_load(kr, EF_BF16, ko + d, 0xffff), sq));
				_mm256_i32scatter_epi32(kp + (d / 2) * Tp + j, kcol, k, 4);
			}
		}
		for (int64_t j = 0; j < T; j += 2) {
			const void *vr0, *vr1, *kr;
			int64_t vo0, vo1, ko;
			ef_key_at(a, b, g, j, &kr, &ko, &vr0, &vo0);
			if (j + 1 < T) {
				ef_key_at(a, b, g, j + 1, &kr, &ko, &vr1, &vo1);
			}
			for (int64_t d = 0; d < hd; d += 16) {
				__m256i v0 = _mm256_loadu_si256((const __m256i *)((const uint16_t *)vr0 + vo0 + d));
				__m256i v1 = j + 1 < T ? _mm256_loadu_si256((const __m256i *)((const uint16_t *)vr1 + vo1 + d))
				                       : _mm256_setzero_si256();
				_mm512_storeu_si512(vp + (j / 2) * hd + d, ef_bf16_pairs(v0, v1));
			}
		}
		for (int64_t h = g * per; h < (g + 1) * per; h++) {
			for (int64_t l0 = 0; l0 < a->L; l0 += NQ) {
				int nq = a->L - l0 < NQ ? (int)(a->L - l0) : NQ;
				const uint8_t *vis[NQ];
				int any[NQ];
				int64_t end = ef_query_block(a, b, l0, nq, vis, any), end32 = (end + 31) / 32 * 32;
				for (int i = 0; i < NQ; i++) {
					for (int64_t d = 0; d < hd; d += 16) {
						// already rounded: its bfloat16 bits are exact
						__m256i q = ef_v_bf16(ef_v_query(a, b, h, l0 + (i < nq ? i : 0), d, sq, 0xffff));
						_mm256_storeu_si256((__m256i *)(qp + i * hd2 + d / 2), q);
					}
				}
				// scores: sc[i][j] = q_i · k_j, rounded, 32 keys a step up to end
				for (int64_t j = 0; j < end32; j += 32) {
					__m512 ss[2 * NQ];
					ef_dot4x2(qp, hd2, kp + j, Tp, NULL, hd2, ss);
					for (int i = 0; i < NQ; i++) {
						_mm512_storeu_ps(sc + i * Tp + j, ef_v_round(ss[2 * i], EF_BF16));
						_mm512_storeu_ps(sc + i * Tp + j + 16, ef_v_round(ss[2 * i + 1], EF_BF16));
					}
				}
				// probabilities as bfloat16 pairs of keys; 0 from end on
				for (int i = 0; i < NQ; i++) {
					float *si = sc + i * Tp;
					if (i < nq && any[i]) {
						ef_softmax_row_avx512(si, vis[i], end, EF_BF16);
					}
					for (int64_t j = end; j < end32; j++) {
						si[j] = 0;
					}
					for (int64_t j = 0; j < end32; j += 32) {
						// si holds bfloat16 values, so the high halves of its
						// floats are exact: the odd 16-bit halves of 32 floats
						// are 16 pairs (p_j, p_j+1)
						__m512i lo = _mm512_castps_si512(_mm512_loadu_ps(si + j));
						__m512i hi = _mm512_castps_si512(_mm512_loadu_ps(si + j + 16));
						_mm512_storeu_si512(pp + i * Tp2 + j / 2, _mm512_permutex2var_epi16(lo, odd, hi));
					}
				}
				// the key pairs some query of the four sees
				int64_t np = 0;
				for (int64_t j = 0; j < end; j += 2) {
					int seen = vis[0][j] | vis[1][j] | vis[2][j] | vis[3][j];
					if (j + 1 < T) {
						seen |= vis[0][j + 1] | vis[1][j + 1] | vis[2][j + 1] | vis[3][j + 1];
					}
					if (seen) {
						pairs[np++] = (uint32_t)(j / 2);
					}
				}
				// outputs: o[i] = Σ_j p[i][j] v_j over the key pairs seen, 32
				// dimensions a step
				for (int64_t d = 0; d < hd; d += 32) {
					__m512 os[2 * NQ];
					ef_dot4x2(pp, Tp2, vp + d, hd, pairs, np, os);
					for (int i = 0; i < nq; i++) {
						uint16_t *o = (uint16_t *)a->out + (size_t)((b * a->L + l0 + i) * a->H + h) * (size_t)hd;
						ef_v_store(o, EF_BF16, d, any[i] ? os[2 * i] : _mm512_setzero_ps(), 0xffff);
						ef_v_store(o, EF_BF16, d + 16, any[i] ? os[2 * i + 1] : _mm512_setzero_ps(), 0xffff);
					}
				}
			}
		}
	}
	free(kp);
	return 0;
}
#endif

// EF_NAME(ef_attention) runs attention tasks [t0, t1); it returns -1 when
// its scratch memory cannot be allocated.
EF_AVX512 int EF_NAME(ef_attention)(const ef_attention_args *a, int64_t t0, int64_t t1) {
#if EF_HW_BF16
	if (a->dtype == EF_BF16 && a->hd % 32 == 0) {
		return ef_attention_tasks_bf16dot(a, t0, t1);
	}
#endif
	return ef_attention_tasks_avx512(a, t0, t1);
}
