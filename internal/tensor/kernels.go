package tensor

/*
#cgo CFLAGS: -O3 -std=c11
#include "kernels.h"
*/
import "C"

import (
	"sync"
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
	kernelsBest      kernels = iota // the C kernels where fusable, AVX-512 if the CPU has it
	kernelsScalar                   // the C kernels' portable versions where fusable
	kernelsComposite                // the libtorch operations, always
)

// simd is the C kernels' simd argument for k.
func (k kernels) simd() C.int {
	if k == kernelsBest {
		return C.ef_simd()
	}
	return 0
}

// fusable reports whether the C kernels can read and write ts: CPU,
// contiguous, float32 or bfloat16 alike, no gradient to record. In a
// training scope they never run, even on tensors without gradients: their
// sums are not libtorch's to the last bit, and a training step's reference
// (torch + PEFT) is matched to within rounding of Adam's first update,
// which turns any difference in a near-zero gradient into a full step.
func (s *Scope) fusable(ts ...*Tensor) bool {
	if s.grad {
		return false
	}
	dtype := ts[0].DType()
	if dtype != Float32 && dtype != BFloat16 {
		return false
	}
	for _, t := range ts {
		if t.DType() != dtype || deviceIndex(t) != -1 || !lib.AtIsContiguous(t.c) || t.RequiresGrad() {
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
// float32 whatever x's dtype, and the result is rounded to x's dtype, as
// the reference implementations do; w has x's dtype.
func (s *Scope) RMSNorm(x, w *Tensor, eps float64) *Tensor {
	return s.rmsNorm(x, w, eps, kernelsBest)
}

func (s *Scope) rmsNorm(x, w *Tensor, eps float64, k kernels) *Tensor {
	if !s.ready("rms_norm", x, w) {
		return nil
	}
	if k == kernelsComposite || !s.fusable(x, w) || w.Numel() != x.Size(-1) {
		x32 := s.ToDType(x, Float32)
		variance := s.MeanDim(s.Mul(x32, x32), true, -1)
		y := s.Mul(x32, s.Rsqrt(s.AddScalar(variance, eps)))
		return s.ToDType(s.Mul(s.ToDType(w, Float32), y), x.DType())
	}
	out := s.emptyLike(x, x.Shape()...)
	if out == nil {
		return nil
	}
	px, pw, po, dim := data(x), data(w), data(out), x.Size(-1)
	dtype, simd := C.int(x.DType()), k.simd()
	parallelRows(rows(x), func(r0, r1 int64) {
		C.ef_rms_norm(simd, px, pw, dtype, C.int64_t(r0), C.int64_t(r1), C.int64_t(dim), C.float(eps), po)
	})
	return out
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
	stride := make([]int64, 4)
	lib.AtStride(x.c, unsafe.Pointer(&stride[0]))
	rowsEvenlySpaced := stride[3] == 1 && stride[2] == hd && stride[0] == L*stride[1]
	if k == kernelsComposite || !rowsEvenlySpaced || !s.fusable(cos, sin) || cos.DType() != x.DType() || cos.Numel() != B*L*hd ||
		x.DType() != Float32 && x.DType() != BFloat16 || deviceIndex(x) != -1 || x.RequiresGrad() {
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

// LogSoftmaxPick returns, for every row r of logits [R, V], the float32
// log-softmax of the entries targets[r·width : (r+1)·width] (column
// indices), without making the [R, V] tensor of all of them: the
// log-normaliser of each row is computed in float32 in one pass over it.
func (s *Scope) LogSoftmaxPick(logits *Tensor, targets []int64, width int) []float32 {
	return s.logSoftmaxPick(logits, targets, width, kernelsBest)
}

func (s *Scope) logSoftmaxPick(logits *Tensor, targets []int64, width int, k kernels) []float32 {
	if !s.ready("log_softmax_pick", logits) {
		return nil
	}
	shape := logits.Shape()
	if len(shape) != 2 || int64(len(targets)) != shape[0]*int64(width) {
		s.Fail(&Error{Op: "log_softmax_pick", Msg: "want logits [rows, vocab] and width targets per row"})
		return nil
	}
	R, V := shape[0], shape[1]
	for _, t := range targets {
		if t < 0 || t >= V {
			s.Fail(&Error{Op: "log_softmax_pick", Msg: "target outside the vocabulary"})
			return nil
		}
	}
	if k == kernelsComposite || !s.fusable(logits) {
		tgt := s.FromInt64(targets, []int64{R, int64(width)}, CPU)
		if dev := deviceIndex(logits); dev != -1 {
			tgt = s.To(tgt, CUDA(int(dev)))
		}
		return s.Float32s(s.Gather(s.LogSoftmax(logits, -1, Float32), 1, tgt))
	}
	out := make([]float32, len(targets))
	if len(out) == 0 {
		return out
	}
	pl, dtype, simd := data(logits), C.int(logits.DType()), k.simd()
	pt, po := unsafe.Pointer(&targets[0]), unsafe.Pointer(&out[0])
	parallelRows(R, func(r0, r1 int64) {
		C.ef_log_softmax_pick(simd, pl, dtype, C.int64_t(r0), C.int64_t(r1), C.int64_t(V), (*C.int64_t)(pt), C.int64_t(width), (*C.float)(po))
	})
	return out
}

// FusedKernels names the versions of the fused operations this CPU runs.
func FusedKernels() string {
	if C.ef_simd() != 0 {
		return "AVX-512"
	}
	return "portable C"
}
