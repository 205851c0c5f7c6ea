// The AVX-512 versions of the fused kernels (kernels.c has the portable
// ones), compiled twice: by kernels_avx512.c for any CPU with AVX-512
// F/BW/DQ/VL (EF_HW_BF16 0) and by kernels_avx512bf16.c for CPUs with
// AVX-512 BF16 as well (EF_HW_BF16 1), where rounding to bfloat16 is one
// instruction rather than seven and attention's products use the BF16 dot
// products (or, where the CPU has AMX, the tile unit: ef_attention_amx,
// in this build only). Each build names its entry points by EF_NAME.

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
	__m512 p = _mm512_set1_ps(8.3125252277e-3f);
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1890114546e-2f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6667114198e-1f));
	p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.9999231100e-1f));
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

EF_AVX512 void EF_NAME(ef_rms_norm)(const void *x, int xdtype, const void *add, const void *weight, int dtype,
                                    int64_t r0, int64_t r1, int64_t dim, float eps, void *sum, void *out) {
	size_t esize = dtype == EF_BF16 ? 2 : 4, xesize = xdtype == EF_BF16 ? 2 : 4;
	for (int64_t r = r0; r < r1; r++) {
		size_t at = (size_t)r * (size_t)dim * esize, xat = (size_t)r * (size_t)dim * xesize;
		const void *row = (const char *)x + xat;
		void *orow = (char *)out + at;
		if (add != NULL) {
			void *srow = (char *)sum + xat;
			for (int64_t i = 0; i < dim; i += 16) {
				__mmask16 m = ef_tail(dim - i);
				__m512 v = _mm512_add_ps(ef_v_load(row, xdtype, i, m), ef_v_load((const char *)add + at, dtype, i, m));
				ef_v_store(srow, xdtype, i, v, m);
			}
			row = srow;
		}
		__m512 acc = _mm512_setzero_ps();
		for (int64_t i = 0; i < dim; i += 16) {
			__m512 v = ef_v_load(row, xdtype, i, ef_tail(dim - i));
			acc = _mm512_fmadd_ps(v, v, acc);
		}
		__m512 inv = _mm512_set1_ps(1.0f / sqrtf(_mm512_reduce_add_ps(acc) / (float)dim + eps));
		for (int64_t i = 0; i < dim; i += 16) {
			__mmask16 m = ef_tail(dim - i);
			__m512 y = _mm512_mul_ps(ef_v_load(row, xdtype, i, m), inv);
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

// ef_softmax_row_avx512 turns scores s [0, n) into probabilities over the
// keys vis marks, 0 elsewhere, rounded to dtype; with round_scores it first
// rounds the scores themselves (in the same pass as their maximum).
EF_AVX512 static inline void ef_softmax_row_avx512(float *s, const uint8_t *vis, int64_t n, int dtype, int round_scores) {
	__m512 vmax = _mm512_set1_ps(-INFINITY);
	for (int64_t j = 0; j < n; j += 16) {
		__mmask16 m = ef_tail(n - j);
		__mmask16 seen = _mm512_mask_test_epi32_mask(m, _mm512_cvtepu8_epi32(_mm_maskz_loadu_epi8(m, vis + j)),
		                                             _mm512_set1_epi32(0xff));
		__m512 x = _mm512_maskz_loadu_ps(m, s + j);
		if (round_scores) {
			x = ef_v_round(x, dtype);
			_mm512_mask_storeu_ps(s + j, m, x);
		}
		vmax = _mm512_mask_max_ps(vmax, seen, vmax, x);
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

// ef_query_block sets up queries l0 .. l0+nq-1 of batch row b, n at a time
// (n <= 16): vis[i] is query i's visibility row (the first query's for
// i >= nq, which are computed but never stored), any[i] whether it sees a
// key. It returns one past the last key some query of the block sees (0 if
// none): keys from there on need neither scores nor weights, which under a
// causal mask skips about half of them.
EF_AVX512 static inline int64_t ef_query_block(const ef_attention_args *a, int64_t b, int64_t l0, int nq, int n,
                                               const uint8_t **vis, int *any) {
	int64_t T = a->P + a->L, end = 0;
	for (int i = 0; i < n; i++) {
		vis[i] = a->visible + (b * a->L + l0 + (i < nq ? i : 0)) * T;
		// backwards, 64 flags at a time: a causal row's last visible key is
		// its own, near the end
		int64_t last = 0;
		for (int64_t hi = i < nq ? T : 0; hi > 0;) {
			int64_t lo = hi > 64 ? hi - 64 : 0;
			__mmask64 m = hi - lo == 64 ? ~(__mmask64)0 : (((__mmask64)1 << (hi - lo)) - 1);
			__m512i f = _mm512_maskz_loadu_epi8(m, vis[i] + lo);
			uint64_t seen = (uint64_t)_mm512_test_epi8_mask(f, f);
			if (seen != 0) {
				last = lo + 64 - __builtin_clzll(seen);
				break;
			}
			hi = lo;
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
				int64_t end = ef_query_block(a, b, l0, nq, NQ, vis, any);
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
						ef_softmax_row_avx512(sc + i * Tp, vis[i], end, dtype, 0);
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

// ef_transpose16 transposes 16 vectors of 16 32-bit elements: r[i][c]
// becomes r[c][i]. Four stages of 16 shuffles: pairs of rows, then quads
// (each 128-bit lane holds one column of four rows), then lanes.
EF_AVX512 static inline void ef_transpose16(__m512i r[16]) {
	__m512i t[16], u[16];
	for (int i = 0; i < 16; i += 2) {
		t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
		t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
	}
	for (int i = 0; i < 16; i += 4) {
		u[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
		u[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
		u[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
		u[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
	}
	// u[4g+c] lane L: column 4L+c of rows 4g..4g+3
	for (int c = 0; c < 4; c++) {
		__m512i x = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x44), y = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xee);
		__m512i z = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x44), w = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xee);
		r[c] = _mm512_shuffle_i32x4(x, z, 0x88);
		r[4 + c] = _mm512_shuffle_i32x4(x, z, 0xdd);
		r[8 + c] = _mm512_shuffle_i32x4(y, w, 0x88);
		r[12 + c] = _mm512_shuffle_i32x4(y, w, 0xdd);
	}
}

// ef_pack_keys writes keys [j0, j1) of task (b, g), scaled and rounded, as
// pairs of dimensions: row d/2 of dst (stride words apart) holds dimensions
// d and d+1 of key j at column j. Sixteen keys at a time are transposed in
// registers (hd is a multiple of 32).
EF_AVX512 static void ef_pack_keys(const ef_attention_args *a, int64_t b, int64_t g, int64_t j0, int64_t j1, uint32_t *dst,
                                   int64_t stride) {
	__m512 sq = _mm512_set1_ps(sqrtf(a->scale));
	for (int64_t j = j0; j < j1; j += 16) {
		int n = j1 - j < 16 ? (int)(j1 - j) : 16;
		for (int64_t d = 0; d < a->hd; d += 32) {
			__m512i r[16];
			for (int i = 0; i < 16; i++) {
				if (i >= n) {
					r[i] = _mm512_setzero_si512();
					continue;
				}
				const void *kr, *vr;
				int64_t ko, vo;
				ef_key_at(a, b, g, j + i, &kr, &ko, &vr, &vo);
				__m256i lo = ef_v_bf16(_mm512_mul_ps(ef_v_load(kr, EF_BF16, ko + d, 0xffff), sq));
				__m256i hi = ef_v_bf16(_mm512_mul_ps(ef_v_load(kr, EF_BF16, ko + d + 16, 0xffff), sq));
				r[i] = _mm512_inserti64x4(_mm512_castsi256_si512(lo), hi, 1);
			}
			ef_transpose16(r);
			for (int c = 0; c < 16; c++) {
				_mm512_mask_storeu_epi32(dst + (d / 2 + c) * stride + j, ef_tail(n), r[c]);
			}
		}
	}
}

// ef_pack_task_bf16 lays out task (b, g)'s keys and values for the BF16
// dot products: kp [hd/2][Tp] holds the scaled, rounded keys as pairs of
// dimensions (row d/2, column j: dimensions d and d+1 of key j), vp
// [Tp/2][hd] the values as pairs of keys (row j/2: keys j and j+1), both
// zero past T. With live (T flags), the values of keys no query of the row
// sees are zero too. With past (ef_pack_past's layout for group g), the
// past keys are copied from there rather than converted again.
EF_AVX512 static void ef_pack_task_bf16(const ef_attention_args *a, int64_t b, int64_t g, int64_t Tp, uint32_t *kp,
                                        uint32_t *vp, const uint8_t *live, const uint32_t *past) {
	int64_t hd = a->hd, T = a->P + a->L, hd2 = hd / 2, Tp2 = Tp / 2;
	memset(kp, 0, sizeof(uint32_t) * (size_t)(hd2 * Tp + Tp2 * hd));
	int64_t j = 0;
	if (past != NULL) {
		for (int64_t d2 = 0; d2 < hd2; d2++) {
			memcpy(kp + d2 * Tp, past + d2 * a->P, sizeof(uint32_t) * (size_t)a->P);
		}
		j = a->P;
	}
	ef_pack_keys(a, b, g, j, T, kp, Tp);
	for (int64_t j = 0; j < T; j += 2) {
		const void *vr0 = NULL, *vr1 = NULL, *kr;
		int64_t vo0 = 0, vo1 = 0, ko;
		if (live == NULL || live[j]) {
			ef_key_at(a, b, g, j, &kr, &ko, &vr0, &vo0);
		}
		if (j + 1 < T && (live == NULL || live[j + 1])) {
			ef_key_at(a, b, g, j + 1, &kr, &ko, &vr1, &vo1);
		}
		for (int64_t d = 0; d < hd; d += 16) {
			__m256i v0 = vr0 != NULL ? _mm256_loadu_si256((const __m256i *)((const uint16_t *)vr0 + vo0 + d))
			                         : _mm256_setzero_si256();
			__m256i v1 = vr1 != NULL ? _mm256_loadu_si256((const __m256i *)((const uint16_t *)vr1 + vo1 + d))
			                         : _mm256_setzero_si256();
			_mm512_storeu_si512(vp + (j / 2) * hd + d, ef_bf16_pairs(v0, v1));
		}
	}
}

// ef_pack_past lays out the past keys shared by every row (past_shared)
// as ef_pack_task_bf16 would, once per call: past [G][hd/2][P], group g's
// keys in kp's layout with P columns.
EF_AVX512 static void ef_pack_past(const ef_attention_args *a, uint32_t *past) {
	for (int64_t g = 0; g < a->G; g++) {
		ef_pack_keys(a, 0, g, 0, a->P, past + g * (a->hd / 2) * a->P, a->P);
	}
}

// ef_pack_probabilities packs probabilities si [0, n) (n a multiple of 32,
// bfloat16 values held as floats) as pairs of keys: ppi[j/2] is (p_j,
// p_j+1). The high halves of the floats are exact, so the odd 16-bit
// halves of 32 floats are the 16 pairs.
EF_AVX512 static inline void ef_pack_probabilities(const float *si, int64_t n, uint32_t *ppi) {
	static const uint16_t odd_halves[32] = {1,  3,  5,  7,  9,  11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31,
	                                        33, 35, 37, 39, 41, 43, 45, 47, 49, 51, 53, 55, 57, 59, 61, 63};
	__m512i odd = _mm512_loadu_si512(odd_halves);
	for (int64_t j = 0; j < n; j += 32) {
		__m512i lo = _mm512_castps_si512(_mm512_loadu_ps(si + j));
		__m512i hi = _mm512_castps_si512(_mm512_loadu_ps(si + j + 16));
		_mm512_storeu_si512(ppi + j / 2, _mm512_permutex2var_epi16(lo, odd, hi));
	}
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
	for (int64_t t = t0; t < t1; t++) {
		int64_t b = t / a->G, g = t % a->G;
		ef_pack_task_bf16(a, b, g, Tp, kp, vp, NULL, NULL);
		for (int64_t h = g * per; h < (g + 1) * per; h++) {
			for (int64_t l0 = 0; l0 < a->L; l0 += NQ) {
				int nq = a->L - l0 < NQ ? (int)(a->L - l0) : NQ;
				const uint8_t *vis[NQ];
				int any[NQ];
				int64_t end = ef_query_block(a, b, l0, nq, NQ, vis, any), end32 = (end + 31) / 32 * 32;
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
						ef_softmax_row_avx512(si, vis[i], end, EF_BF16, 0);
					}
					for (int64_t j = end; j < end32; j++) {
						si[j] = 0;
					}
					ef_pack_probabilities(si, end32, pp + i * Tp2);
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

#define EF_AMX __attribute__((target("avx512f,avx512bw,avx512dq,avx512vl,avx512bf16,amx-tile,amx-bf16")))

// ef_tile_config is the AMX tile configuration (palette 1): tiles 0..2 of
// 16 rows of 64 bytes.
typedef struct {
	uint8_t palette, start_row, reserved[14];
	uint16_t colsb[16];
	uint8_t rows[16];
} ef_tile_config;

// ef_attention_tasks_amx is ef_attention_tasks_bf16dot on the AMX tile
// unit: 16 queries at a time, each product a tile multiply (TDPBF16PS, a
// 16x16 block of sums of 32 bfloat16 products) over the same operand
// layouts, which are the tile unit's: keys as pairs of dimensions, values
// and probabilities as pairs of keys. The products are exact and summed in
// float32, as there. The products are dense, so a key a query does not see
// weighs exactly 0 rather than being skipped, and the values of keys that
// no query of the row sees (padding) are zeroed first: padding never
// reaches a visible row. hd must be a multiple of 32. Tiles: 0 the
// results, 1 and 2 the operands.
EF_AMX static int ef_attention_tasks_amx(const ef_attention_args *a, int64_t t0, int64_t t1) {
	enum { NQ = 16 };
	int64_t hd = a->hd, T = a->P + a->L, Tp = (T + 31) / 32 * 32, per = a->H / a->G, hd2 = hd / 2, Tp2 = Tp / 2;
	int64_t shared = a->past_shared && a->P > 0 ? a->G * hd2 * a->P : 0;
	size_t words = (size_t)(hd2 * Tp + Tp2 * hd + NQ * hd2 + NQ * Tp2 + shared), floats = (size_t)(NQ * Tp + NQ * hd);
	uint32_t *kp = malloc(sizeof(uint32_t) * words + sizeof(float) * floats + (size_t)T);
	if (kp == NULL) {
		return -1;
	}
	uint32_t *vp = kp + hd2 * Tp, *qp = vp + Tp2 * hd, *pp = qp + NQ * hd2, *past = pp + NQ * Tp2;
	float *sc = (float *)(past + shared), *ob = sc + NQ * Tp;
	uint8_t *live = (uint8_t *)(ob + NQ * hd);
	// the query blocks' visibility, found once per row rather than per head
	int64_t nblk = (a->L + NQ - 1) / NQ;
	const uint8_t **bvis = malloc(sizeof(*bvis) * (size_t)(nblk * NQ));
	int *bany = malloc(sizeof(*bany) * (size_t)(nblk * NQ));
	int64_t *bend = malloc(sizeof(*bend) * (size_t)nblk);
	if (bvis == NULL || bany == NULL || bend == NULL) {
		free(kp), free(bvis), free(bany), free(bend);
		return -1;
	}
	if (shared > 0) {
		ef_pack_past(a, past);
	}
	// rows of qp and pp past a block's queries are multiplied too (each
	// result row depends on its own operand row only): keep them finite
	memset(qp, 0, sizeof(uint32_t) * (size_t)(NQ * hd2 + NQ * Tp2));
	ef_tile_config cfg;
	memset(&cfg, 0, sizeof cfg);
	cfg.palette = 1;
	for (int i = 0; i < 3; i++) {
		cfg.colsb[i] = 64;
		cfg.rows[i] = 16;
	}
	_tile_loadconfig(&cfg);
	__m512 sq = _mm512_set1_ps(sqrtf(a->scale));
	for (int64_t t = t0, row = -1; t < t1; t++) {
		int64_t b = t / a->G, g = t % a->G;
		if (b != row) { // a row's tasks (its groups) share its visibility
			row = b;
			memset(live, 0, (size_t)T);
			for (int64_t l = 0; l < a->L; l++) {
				const uint8_t *vis = a->visible + (b * a->L + l) * T;
				for (int64_t j = 0; j < T; j += 64) {
					__mmask64 m = T - j >= 64 ? ~(__mmask64)0 : (((__mmask64)1 << (T - j)) - 1);
					__m512i v = _mm512_or_si512(_mm512_maskz_loadu_epi8(m, live + j), _mm512_maskz_loadu_epi8(m, vis + j));
					_mm512_mask_storeu_epi8(live + j, m, v);
				}
			}
			for (int64_t k = 0; k < nblk; k++) {
				int nq = a->L - k * NQ < NQ ? (int)(a->L - k * NQ) : NQ;
				bend[k] = ef_query_block(a, b, k * NQ, nq, NQ, bvis + k * NQ, bany + k * NQ);
			}
		}
		ef_pack_task_bf16(a, b, g, Tp, kp, vp, live, shared > 0 ? past + g * hd2 * a->P : NULL);
		for (int64_t h = g * per; h < (g + 1) * per; h++) {
			for (int64_t l0 = 0; l0 < a->L; l0 += NQ) {
				int nq = a->L - l0 < NQ ? (int)(a->L - l0) : NQ;
				const uint8_t **vis = bvis + l0;
				const int *any = bany + l0;
				int64_t end = bend[l0 / NQ], end16 = (end + 15) / 16 * 16, end32 = (end + 31) / 32 * 32;
				for (int i = 0; i < nq; i++) {
					for (int64_t d = 0; d < hd; d += 16) {
						// already rounded: its bfloat16 bits are exact
						__m256i q = ef_v_bf16(ef_v_query(a, b, h, l0 + i, d, sq, 0xffff));
						_mm256_storeu_si256((__m256i *)(qp + i * hd2 + d / 2), q);
					}
				}
				// scores: sc[i][j] = q_i · k_j, 16 keys a tile, up to end
				for (int64_t j0 = 0; j0 < end16; j0 += 16) {
					_tile_zero(0);
					for (int64_t k0 = 0; k0 < hd2; k0 += 16) {
						_tile_loadd(1, qp + k0, hd2 * 4);
						_tile_loadd(2, kp + k0 * Tp + j0, Tp * 4);
						_tile_dpbf16ps(0, 1, 2);
					}
					_tile_stored(0, sc + j0, Tp * 4);
				}
				// probabilities: scores rounded, softmax, 0 from end on, as
				// pairs of keys
				for (int i = 0; i < nq; i++) {
					float *si = sc + i * Tp;
					if (any[i]) {
						ef_softmax_row_avx512(si, vis[i], end, EF_BF16, 1);
					}
					for (int64_t j = end; j < end32; j++) {
						si[j] = 0;
					}
					ef_pack_probabilities(si, end32, pp + i * Tp2);
				}
				// outputs: o[i] = Σ_j p[i][j] v_j, 16 dimensions a tile
				for (int64_t d0 = 0; d0 < hd; d0 += 16) {
					_tile_zero(0);
					for (int64_t p0 = 0; p0 < end32 / 2; p0 += 16) {
						_tile_loadd(1, pp + p0, Tp2 * 4);
						_tile_loadd(2, vp + p0 * hd + d0, hd * 4);
						_tile_dpbf16ps(0, 1, 2);
					}
					_tile_stored(0, ob + d0, hd * 4);
				}
				for (int i = 0; i < nq; i++) {
					uint16_t *o = (uint16_t *)a->out + (size_t)((b * a->L + l0 + i) * a->H + h) * (size_t)hd;
					for (int64_t d = 0; d < hd; d += 16) {
						ef_v_store(o, EF_BF16, d, any[i] ? _mm512_loadu_ps(ob + i * hd + d) : _mm512_setzero_ps(), 0xffff);
					}
				}
			}
		}
	}
	_tile_release();
	free(kp), free(bvis), free(bany), free(bend);
	return 0;
}

// ef_attention_amx runs attention tasks [t0, t1) on the AMX tile unit
// where it applies (bfloat16, hd a multiple of 32), the BF16 dot products
// elsewhere. The caller has made sure the CPU has AMX and Linux lets this
// process use it (ef_simd 3).
int ef_attention_amx(const ef_attention_args *a, int64_t t0, int64_t t1) {
	if (a->dtype == EF_BF16 && a->hd % 32 == 0) {
		return ef_attention_tasks_amx(a, t0, t1);
	}
	return ef_attention_avx512bf16(a, t0, t1);
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
