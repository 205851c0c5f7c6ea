package tensor

/*
#cgo CFLAGS: -O3 -std=c11
#include "kernels.h"
*/
import "C"

import (
	"fmt"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"unsafe"

	lib "github.com/sugarme/gotch/libtch"
)

// This file holds fused operations: each replaces a chain of libtorch
// operations that, on the small tensors of a forward pass, cost more in
// passes over memory and per-operation overhead than in arithmetic (the
// profile of the benchmark model: norms 13% of the time, the
// log-normaliser over the vocabulary 17%). On the CPU, for float32 and
// bfloat16 tensors outside autograd, they run one C kernel (kernels.c)
// over the rows, split among libtorch's thread count; anywhere else
// (CUDA, other dtypes, training) they run the libtorch chain they
// replace, so results agree either way up to float rounding.

// kernels picks an implementation of a fused operation.
type kernels int

const (
	kernelsBest       kernels = iota // the C kernels where fusable, the CPU's best versions
	kernelsAVX512BF16                // the AVX-512 versions with AVX-512 BF16 but not AMX, where the CPU has them
	kernelsAVX512                    // the AVX-512 versions without AVX-512 BF16 instructions, where the CPU has AVX-512
	kernelsScalar                    // the C kernels' portable versions where fusable
	kernelsComposite                 // the libtorch operations, always
)

// simd is the C kernels' simd argument for k.
func (k kernels) simd() C.int {
	switch k {
	case kernelsBest:
		return C.ef_simd()
	case kernelsAVX512BF16:
		return min(C.ef_simd(), 2)
	case kernelsAVX512:
		return min(C.ef_simd(), 1)
	}
	return 0
}

// fusable reports whether the C kernels can read and write ts as flat
// arrays: sameKind, and contiguous.
func (s *Scope) fusable(ts ...*Tensor) bool {
	if !s.sameKind(ts...) {
		return false
	}
	for _, t := range ts {
		if !lib.AtIsContiguous(t.c) {
			return false
		}
	}
	return true
}

// deviceIndex is t's device: -1 for the CPU, n for CUDA device n. gotch's
// AtDevice reads libtorch's 32-bit int as a 64-bit one; the low half is
// the value.
func deviceIndex(t *Tensor) int32 { return int32(lib.AtDevice(t.c)) }

// data is t's first element.
func data(t *Tensor) unsafe.Pointer { return lib.AtDataPtr(t.c) }

// emptyLike is an uninitialised tensor of t's dtype and device with the
// given shape.
func (s *Scope) emptyLike(t *Tensor, shape ...int64) *Tensor {
	dtype, dev := t.DType(), deviceIndex(t)
	return s.run1("empty", func(out *lib.Ctensor) { lib.AtgEmpty(out, shape, len(shape), int32(dtype), dev) })
}

// parallelRows calls f on consecutive ranges covering [0, n), one per
// libtorch thread at most, concurrently, and returns when all are done.
// The calling goroutine takes the first range. f must not call libtorch:
// the other ranges run on goroutines without a Scope's thread.
func parallelRows(n int64, f func(r0, r1 int64)) {
	workers := min(int64(max(Threads(), 1)), n)
	if workers <= 1 {
		f(0, n)
		return
	}
	var wg sync.WaitGroup
	step := (n + workers - 1) / workers
	for r0 := step; r0 < n; r0 += step {
		wg.Add(1)
		go func(r0 int64) {
			defer wg.Done()
			f(r0, min(r0+step, n))
		}(r0)
	}
	f(0, min(step, n))
	wg.Wait()
}

// rows is the product of every dimension of t but the last.
func rows(t *Tensor) int64 {
	shape := t.Shape()
	n := int64(1)
	for _, d := range shape[:len(shape)-1] {
		n *= d
	}
	return n
}

// RMSNorm is w · x / sqrt(mean(x²) + eps) over the last dimension (the
// ChatGLM2-and-later norm). The statistics and the products are computed in
// float32 whatever x's dtype, and the result is rounded to w's dtype, as
// the reference implementations do. x has w's dtype or is float32 (a
// residual stream kept in float32 under a bfloat16 model).
func (s *Scope) RMSNorm(x, w *Tensor, eps float64) *Tensor {
	_, out := s.rmsNorm(x, nil, w, eps, kernelsBest)
	return out
}

// AddRMSNorm is x + y (the residual stream, rounded to x's dtype as Add
// rounds it) and RMSNorm of that sum, in one pass over the rows. y has w's
// dtype; x too, or float32.
func (s *Scope) AddRMSNorm(x, y, w *Tensor, eps float64) (sum, normed *Tensor) {
	return s.rmsNorm(x, y, w, eps, kernelsBest)
}

// rmsNorm is RMSNorm of x, or with add AddRMSNorm of x and add.
func (s *Scope) rmsNorm(x, add, w *Tensor, eps float64, k kernels) (sum, normed *Tensor) {
	in := []*Tensor{w}
	if add != nil {
		in = append(in, add)
	}
	if !s.ready("rms_norm", append(in, x)...) {
		return nil, nil
	}
	if x.DType() != w.DType() && x.DType() != Float32 {
		s.Fail(&Error{Op: "rms_norm", Msg: "x must have the weight's dtype or be float32"})
		return nil, nil
	}
	// x may be float32 where the rest is bfloat16: the kernels read and
	// write the residual stream in its own dtype.
	fused := k != kernelsComposite && s.fusable(in...) && s.fusable(x) && w.Numel() == x.Size(-1) &&
		(add == nil || slices.Equal(add.Shape(), x.Shape()))
	if !fused {
		if add != nil {
			x = s.Add(x, s.ToDType(add, x.DType()))
		}
		x32 := s.ToDType(x, Float32)
		variance := s.MeanDim(s.Mul(x32, x32), true, -1)
		y := s.Mul(x32, s.Rsqrt(s.AddScalar(variance, eps)))
		return x, s.ToDType(s.Mul(s.ToDType(w, Float32), y), w.DType())
	}
	out := s.emptyLike(w, x.Shape()...)
	var padd, psum unsafe.Pointer
	if add != nil {
		if sum = s.emptyLike(x, x.Shape()...); sum == nil {
			return nil, nil
		}
		padd, psum = data(add), data(sum)
	}
	if out == nil {
		return nil, nil
	}
	px, pw, po, dim := data(x), data(w), data(out), x.Size(-1)
	xdtype, dtype, simd := C.int(x.DType()), C.int(w.DType()), k.simd()
	parallelRows(rows(x), func(r0, r1 int64) {
		C.ef_rms_norm(simd, px, xdtype, padd, pw, dtype, C.int64_t(r0), C.int64_t(r1), C.int64_t(dim), C.float(eps), psum, po)
	})
	if add == nil {
		sum = x
	}
	return sum, out
}

// SiluMul is silu(u[..., :ffn]) · u[..., ffn:] for u of last dimension
// 2·ffn (SwiGLU's gate and up projections, computed as one matrix), with
// the activation rounded to u's dtype before the product, as libtorch's
// two operations round.
func (s *Scope) SiluMul(u *Tensor, ffn int64) *Tensor {
	return s.siluMul(u, ffn, kernelsBest)
}

func (s *Scope) siluMul(u *Tensor, ffn int64, k kernels) *Tensor {
	if !s.ready("silu_mul", u) {
		return nil
	}
	if k == kernelsComposite || !s.fusable(u) || u.Size(-1) != 2*ffn {
		return s.Mul(s.Silu(s.Narrow(u, -1, 0, ffn)), s.Narrow(u, -1, ffn, ffn))
	}
	shape := u.Shape()
	shape[len(shape)-1] = ffn
	out := s.emptyLike(u, shape...)
	if out == nil {
		return nil
	}
	pu, po, dtype, simd := data(u), data(out), C.int(u.DType()), k.simd()
	parallelRows(rows(u), func(r0, r1 int64) {
		C.ef_silu_mul(simd, pu, dtype, C.int64_t(r0), C.int64_t(r1), C.int64_t(ffn), po)
	})
	return out
}

// RotatePairs applies a rotary embedding to x [B, L, heads, headDim] whose
// dimensions rotate as interleaved pairs (x[2i], x[2i+1]): x·cos +
// swap(x)·sin, where swap exchanges the two elements of every pair and
// cos, sin [B, L, 1, headDim] carry the signs (see the model's tables).
// x may be a view whose rows (B·L of them) are heads·headDim contiguous
// elements at a fixed stride, such as a slice of a fused QKV projection;
// the result is contiguous.
func (s *Scope) RotatePairs(x, cos, sin *Tensor) *Tensor {
	return s.rotatePairs(x, cos, sin, kernelsBest)
}

func (s *Scope) rotatePairs(x, cos, sin *Tensor, k kernels) *Tensor {
	if !s.ready("rotate_pairs", x, cos, sin) {
		return nil
	}
	shape := x.Shape()
	if len(shape) != 4 || shape[3]%2 != 0 {
		s.Fail(&Error{Op: "rotate_pairs", Msg: "want x of shape [B, L, heads, even head dim]"})
		return nil
	}
	B, L, H, hd := shape[0], shape[1], shape[2], shape[3]
	stride := strides(x)
	rowsEvenlySpaced := stride[3] == 1 && stride[2] == hd && stride[0] == L*stride[1]
	if k == kernelsComposite || !rowsEvenlySpaced || !s.fusable(cos, sin) || !s.sameKind(x, cos) || cos.Numel() != B*L*hd {
		pairs := s.Reshape(x, B, L, H, hd/2, 2)
		swapped := s.Reshape(s.Stack([]*Tensor{s.Select(pairs, -1, 1), s.Select(pairs, -1, 0)}, -1), shape...)
		return s.Add(s.Mul(x, cos), s.Mul(swapped, sin))
	}
	out := s.emptyLike(x, shape...)
	if out == nil {
		return nil
	}
	px, pc, ps, po, dtype, simd := data(x), data(cos), data(sin), data(out), C.int(x.DType()), k.simd()
	parallelRows(B*L, func(r0, r1 int64) {
		C.ef_rotary(simd, px, dtype, C.int64_t(r0), C.int64_t(r1), C.int64_t(stride[1]), C.int64_t(H), C.int64_t(hd), pc, ps, po)
	})
	return out
}

// LinearLogSoftmaxPick returns, for every row r of h [R, D], the float32
// log-softmax of the logits h·wᵀ (w [V, D]) at the columns
// targets[r·width : (r+1)·width], without the [R, V] logits ever being
// whole: a slice of the vocabulary at a time is multiplied (by libtorch, in
// the compute dtype, as Linear computes it) and folded into each row's
// running maximum and float32 sum of exponentials while it is still in
// cache. Written whole, a batch's logits are tens of megabytes that go to
// memory and come back for the normaliser.
func (s *Scope) LinearLogSoftmaxPick(h, w *Tensor, targets []int64, width int) []float32 {
	return s.linearLogSoftmaxPick(h, w, targets, width, 0, kernelsBest)
}

// lseChunkBytes is the size of one chunk of logits: about a core's L2
// cache, and large enough that each matrix product stays efficient (on the
// benchmark model 2 MiB beat 0.5, 1 and 4).
const lseChunkBytes = 1 << 21

// linearLogSoftmaxPick is LinearLogSoftmaxPick with k's kernels and chunks
// of chunk columns (0: lseChunkBytes' worth).
func (s *Scope) linearLogSoftmaxPick(h, w *Tensor, targets []int64, width int, chunk int64, k kernels) []float32 {
	const op = "linear_log_softmax_pick"
	if !s.ready(op, h, w) {
		return nil
	}
	hs, ws := h.Shape(), w.Shape()
	if len(hs) != 2 || len(ws) != 2 || hs[1] != ws[1] || int64(len(targets)) != hs[0]*int64(width) {
		s.Fail(&Error{Op: op, Msg: "want h [rows, dim], w [vocab, dim] and width targets per row"})
		return nil
	}
	R, V := hs[0], ws[0]
	for _, t := range targets {
		if t < 0 || t >= V {
			s.Fail(&Error{Op: op, Msg: "target outside the vocabulary"})
			return nil
		}
	}
	if k == kernelsComposite || !s.fusable(h, w) {
		tgt := s.FromInt64(targets, []int64{R, int64(width)}, CPU)
		if dev := deviceIndex(h); dev != -1 {
			tgt = s.To(tgt, CUDA(int(dev)))
		}
		return s.Float32s(s.Gather(s.LogSoftmax(s.Linear(h, w, nil), -1, Float32), 1, tgt))
	}
	out := make([]float32, len(targets))
	if len(out) == 0 {
		return out
	}
	if chunk <= 0 {
		chunk = max(256, lseChunkBytes/(R*int64(h.DType().Size())))
	}
	maxes, sums := make([]float32, R), make([]float32, R)
	for i := range maxes {
		maxes[i] = float32(math.Inf(-1))
	}
	dtype, simd := C.int(h.DType()), k.simd()
	pt, pp := unsafe.Pointer(&targets[0]), unsafe.Pointer(&out[0])
	pm, ps := unsafe.Pointer(&maxes[0]), unsafe.Pointer(&sums[0])
	for c0 := int64(0); c0 < V; c0 += chunk {
		n := min(chunk, V-c0)
		slice := s.Narrow(w, 0, c0, n)
		logits := s.Linear(h, slice, nil)
		if s.Err() != nil {
			return nil
		}
		px := data(logits)
		parallelRows(R, func(r0, r1 int64) {
			C.ef_lse_update(simd, px, dtype, C.int64_t(r0), C.int64_t(r1), C.int64_t(n), C.int64_t(c0),
				(*C.int64_t)(pt), C.int64_t(width), (*C.float)(pm), (*C.float)(ps), (*C.float)(pp))
		})
		// Freed now, so that the next chunk's logits reuse its memory while
		// it is in cache.
		s.Drop(logits, slice)
	}
	for r := range R {
		logSum := float32(math.Log(float64(sums[r])))
		for j := range width {
			i := r*int64(width) + int64(j)
			out[i] = (out[i] - maxes[r]) - logSum
		}
	}
	return out
}

// FusedKernels names the versions of the fused operations this CPU runs.
func FusedKernels() string {
	switch C.ef_simd() {
	case 0:
		return "portable C"
	case 1:
		return "AVX-512"
	case 2:
		return "AVX-512 (attention: BF16 dot products)"
	}
	return "AVX-512 (attention: AMX tiles)"
}

// Attention is multi-head attention with grouped keys and values (heads
// h·G/H .. share group h·G/H) after an optional past: q [B, H, L, hd], k
// and v [B, G, L, hd], pastK and pastV [R, G, P, hd] with R 1 (every row
// shares them) or B, or both nil (views are fine: only the last dimension
// must be contiguous); visible is a bool [B, L, P+L] mask (true: the
// query sees the key; past keys first). Scores are scaled by scale. The
// result is [B, L, H·hd], the heads of a position side by side, as an
// output projection takes them.
//
// The fused kernel computes what libtorch's scaled_dot_product_attention
// computes with a boolean mask (same roundings), except that a query that
// sees no key gets zeros instead of NaN.
func (s *Scope) Attention(q, k, v, pastK, pastV, visible *Tensor, scale float64) *Tensor {
	return s.attention(q, k, v, pastK, pastV, visible, scale, kernelsBest)
}

func (s *Scope) attention(q, k, v, pastK, pastV, visible *Tensor, scale float64, kern kernels) *Tensor {
	if !s.ready("attention", q, k, v, visible) {
		return nil
	}
	if (pastK == nil) != (pastV == nil) {
		s.Fail(&Error{Op: "attention", Msg: "past keys without past values, or the reverse"})
		return nil
	}
	qsh, ksh := q.Shape(), k.Shape()
	if len(qsh) != 4 || len(ksh) != 4 || ksh[1] == 0 || qsh[1]%ksh[1] != 0 || qsh[0] != ksh[0] || qsh[2] != ksh[2] || qsh[3] != ksh[3] {
		s.Fail(&Error{Op: "attention", Msg: fmt.Sprintf("queries %v and keys %v do not fit [B, H, L, hd] and [B, G, L, hd]", qsh, ksh)})
		return nil
	}
	if !slices.Equal(v.Shape(), ksh) {
		s.Fail(&Error{Op: "attention", Msg: fmt.Sprintf("values %v and keys %v differ in shape", v.Shape(), ksh)})
		return nil
	}
	B, H, L, hd, G := qsh[0], qsh[1], qsh[2], qsh[3], ksh[1]
	P, R := int64(0), int64(1)
	if pastK != nil {
		psh := pastK.Shape()
		if len(psh) != 4 || psh[1] != G || psh[3] != hd || (psh[0] != 1 && psh[0] != B) || !slices.Equal(pastV.Shape(), psh) {
			s.Fail(&Error{Op: "attention", Msg: fmt.Sprintf("past keys %v do not fit [1 or %d, %d, P, %d]", psh, B, G, hd)})
			return nil
		}
		P, R = psh[2], psh[0]
	}
	qs, ks, vs := strides(q), strides(k), strides(v)
	pks, pvs := []int64{0, 0, 0, 1}, []int64{0, 0, 0, 1}
	kinds := []*Tensor{q, k, v}
	if pastK != nil {
		pks, pvs = strides(pastK), strides(pastV)
		kinds = append(kinds, pastK, pastV)
	}
	lastContiguous := qs[3] == 1 && ks[3] == 1 && vs[3] == 1 && pks[3] == 1 && pvs[3] == 1
	if kern == kernelsComposite || !lastContiguous || !s.sameKind(kinds...) ||
		visible.DType() != Bool || !lib.AtIsContiguous(visible.c) || visible.Numel() != B*L*(P+L) {
		return s.attentionComposite(q, k, v, pastK, pastV, visible, scale)
	}
	out := s.emptyLike(q, B, L, H*hd)
	if out == nil {
		return nil
	}
	args := C.ef_attention_args{dtype: C.int(q.DType()), B: C.int64_t(B), H: C.int64_t(H), G: C.int64_t(G),
		L: C.int64_t(L), P: C.int64_t(P), hd: C.int64_t(hd), q: data(q), k: data(k), v: data(v),
		visible: (*C.uint8_t)(data(visible)), scale: C.float(scale), out: data(out)}
	for i := 0; i < 3; i++ {
		args.qs[i], args.ks[i], args.vs[i] = C.int64_t(qs[i]), C.int64_t(ks[i]), C.int64_t(vs[i])
		args.pks[i], args.pvs[i] = C.int64_t(pks[i]), C.int64_t(pvs[i])
	}
	if pastK != nil {
		args.pk, args.pv = data(pastK), data(pastV)
		args.past_shared = C.int(cbool(R == 1))
	}
	simd := kern.simd()
	var failed atomic.Bool
	parallelRows(B*G, func(t0, t1 int64) {
		if C.ef_attention(simd, &args, C.int64_t(t0), C.int64_t(t1)) != 0 {
			failed.Store(true)
		}
	})
	if failed.Load() {
		s.Fail(&Error{Op: "attention", Msg: "out of memory for the kernel's scratch"})
		return nil
	}
	return out
}

// attentionComposite is Attention with libtorch's operations.
func (s *Scope) attentionComposite(q, k, v, pastK, pastV, visible *Tensor, scale float64) *Tensor {
	qsh := q.Shape()
	B, H, L, hd := qsh[0], qsh[1], qsh[2], qsh[3]
	k, v = s.headKeysValues(q, k, v, pastK, pastV)
	mask := s.Reshape(visible, B, 1, L, visible.Size(-1))
	o := s.ScaledDotProductAttention(q, k, v, mask, false, scale)
	return s.Reshape(s.Transpose(o, 1, 2), B, L, H*hd)
}

// headKeysValues is every query head's keys and values, [B, H, T, hd]: the
// past (broadcast over the rows when they share it) before the batch's own,
// each key/value group repeated for its heads.
func (s *Scope) headKeysValues(q, k, v, pastK, pastV *Tensor) (*Tensor, *Tensor) {
	B, H, hd, G := q.Size(0), q.Size(1), q.Size(3), k.Size(1)
	if pastK != nil {
		if pastK.Size(0) != B {
			pastK = s.Expand(pastK, B, -1, -1, -1)
			pastV = s.Expand(pastV, B, -1, -1, -1)
		}
		k = s.Cat([]*Tensor{pastK, k}, 2)
		v = s.Cat([]*Tensor{pastV, v}, 2)
	}
	if G != H {
		T := k.Size(2)
		k = s.Reshape(s.Expand(s.Unsqueeze(k, 2), B, G, H/G, T, hd), B, H, T, hd)
		v = s.Reshape(s.Expand(s.Unsqueeze(v, 2), B, G, H/G, T, hd), B, H, T, hd)
	}
	return k, v
}

// strides is t's strides, in elements.
func strides(t *Tensor) []int64 {
	st := make([]int64, len(t.Shape()))
	if len(st) > 0 {
		lib.AtStride(t.c, unsafe.Pointer(&st[0]))
	}
	return st
}

// sameKind reports whether the C kernels may compute on ts (views they
// read through strides included): one dtype, float32 or bfloat16, on the
// CPU, no gradient to record. In a training scope they never run, even on
// tensors without gradients: their sums are not libtorch's to the last
// bit, and a training step's reference (torch + PEFT) is matched to within
// rounding of Adam's first update, which turns any difference in a
// near-zero gradient into a full step.
func (s *Scope) sameKind(ts ...*Tensor) bool {
	if s.grad {
		return false
	}
	dtype := ts[0].DType()
	if dtype != Float32 && dtype != BFloat16 {
		return false
	}
	for _, t := range ts {
		if t.DType() != dtype || deviceIndex(t) != -1 || t.RequiresGrad() {
			return false
		}
	}
	return true
}

// FastDType is the compute dtype an inference engine should pick on dev:
// bfloat16 on CUDA and on CPUs that multiply it natively (AVX-512 BF16 or
// AMX, where oneDNN's bfloat16 products run several times faster than
// float32), float32 elsewhere (bfloat16 emulated is slower than float32).
func FastDType(dev Device) DType {
	if dev.IsCUDA() || C.ef_fast_bf16() != 0 {
		return BFloat16
	}
	return Float32
}
