package tensor

/*
#include <stdint.h>
void at_manual_seed(int64_t);
*/
import "C"

import (
	"math"

	lib "github.com/sugarme/gotch/libtch"
)

// This file is the training side of the tensor layer: autograd on and off,
// leaf parameters, backward passes, and the in-place updates an optimizer
// makes. Inference code never needs it: NewScope turns autograd off.

// SetGrad turns libtorch's autograd recording on or off for the scope's
// thread (NewScope starts with it off). Training scopes turn it on for the
// forward and backward passes and off for optimizer updates.
func (s *Scope) SetGrad(on bool) {
	_ = lib.AtGradSetEnabled(int(cbool(on)))
	s.grad = on
}

// ManualSeed seeds libtorch's random generators (dropout masks).
func ManualSeed(seed int64) { C.at_manual_seed(C.int64_t(seed)) }

// Param makes a trainable leaf tensor from data: float32, on dev, with
// requires_grad set. The caller owns it (Free).
func Param(data []float32, shape []int64, dev Device) (*Tensor, error) {
	s := NewScope()
	defer s.Close()
	t := s.FromFloat32(data, shape, dev)
	if dev.IsCUDA() {
		t = s.Contiguous(t)
	}
	if err := s.Err(); err != nil {
		return nil, err
	}
	p := s.Keep(t)
	if err := SetRequiresGrad(p, true); err != nil {
		p.Free()
		return nil, err
	}
	return p, nil
}

// SetRequiresGrad marks a leaf tensor as trainable (or not) in place.
func SetRequiresGrad(t *Tensor, on bool) error {
	var out lib.Ctensor
	lib.AtgSetRequiresGrad(&out, t.c, cbool(on))
	if err := lastError("set_requires_grad"); err != nil {
		return err
	}
	lib.AtFree(out) // another handle on the same tensor
	return nil
}

// RequiresGrad reports whether autograd tracks t.
func (t *Tensor) RequiresGrad() bool { return lib.AtRequiresGrad(t.c) }

// Backward computes the gradients of the scalar loss with respect to every
// leaf that requires them, adding them to the leaves' grad.
func (s *Scope) Backward(loss *Tensor) {
	if !s.ready("backward", loss) {
		return
	}
	lib.AtBackward(loss.c, 0, 0)
	if err := lastError("backward"); err != nil {
		s.err = err
	}
}

// Grad returns t's accumulated gradient (a handle on the same storage, so
// in-place changes reach it), or nil when nothing has been accumulated.
func (s *Scope) Grad(t *Tensor) *Tensor {
	if !s.ready("grad", t) {
		return nil
	}
	g := s.run1("grad", func(out *lib.Ctensor) { lib.AtgGrad(out, t.c) })
	if g == nil || !lib.AtDefined(g.c) {
		return nil
	}
	return g
}

// Dropout zeroes each element with probability p and scales the rest by
// 1/(1-p), as torch.nn.functional.dropout in training mode.
func (s *Scope) Dropout(t *Tensor, p float64) *Tensor {
	if p <= 0 {
		return t
	}
	if !s.ready("dropout", t) {
		return nil
	}
	return s.run1("dropout", func(out *lib.Ctensor) { lib.AtgDropout(out, t.c, p, 1) })
}

// inPlace runs an in-place libtorch operation on t and drops the handle it
// returns (the same tensor).
func (s *Scope) inPlace(op string, t *Tensor, f func(out *lib.Ctensor)) {
	if !s.ready(op, t) {
		return
	}
	var out lib.Ctensor
	f(&out)
	if err := lastError(op); err != nil {
		s.err = err
		return
	}
	if out != nil {
		lib.AtFree(out)
	}
}

// SubInPlace is t -= u.
func (s *Scope) SubInPlace(t, u *Tensor) {
	if !s.ready("sub_", u) {
		return
	}
	s.inPlace("sub_", t, func(out *lib.Ctensor) { lib.AtgSub_(out, t.c, u.c) })
}

// AddInPlace is t += u.
func (s *Scope) AddInPlace(t, u *Tensor) {
	if !s.ready("add_", u) {
		return
	}
	s.inPlace("add_", t, func(out *lib.Ctensor) { lib.AtgAdd_(out, t.c, u.c) })
}

// ScaleInPlace is t *= v.
func (s *Scope) ScaleInPlace(t *Tensor, v float64) {
	withScalar(v, func(sc lib.Cscalar) {
		s.inPlace("mul_", t, func(out *lib.Ctensor) { lib.AtgMulScalar_(out, t.c, sc) })
	})
}

// ZeroInPlace sets every element of t to 0.
func (s *Scope) ZeroInPlace(t *Tensor) {
	s.inPlace("zero_", t, func(out *lib.Ctensor) { lib.AtgZero_(out, t.c) })
}

// Sqrt is the element-wise square root.
func (s *Scope) Sqrt(t *Tensor) *Tensor {
	if !s.ready("sqrt", t) {
		return nil
	}
	return s.run1("sqrt", func(out *lib.Ctensor) { lib.AtgSqrt(out, t.c) })
}

// SumSquares is the sum of t's squared elements, computed in float32.
func (s *Scope) SumSquares(t *Tensor) float64 {
	f := s.Reshape(s.ToDType(t, Float32), -1)
	v := s.Float32s(s.SumDim(s.Mul(f, f), false, 0))
	if s.err != nil || len(v) != 1 {
		return math.NaN()
	}
	return float64(v[0])
}

// Scalar copies a one-element tensor to Go.
func (s *Scope) Scalar(t *Tensor) float64 {
	v := s.Float32s(t)
	if s.err != nil || len(v) != 1 {
		return math.NaN()
	}
	return float64(v[0])
}
