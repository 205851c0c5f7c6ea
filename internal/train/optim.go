package train

import (
	"fmt"
	"math"

	"github.com/emoflow/emoflow/internal/tensor"
)

// AdamW is torch.optim.AdamW (decoupled weight decay, no AMSGrad) over a
// fixed list of float32 leaf tensors, with its moments kept as tensors
// beside them so that a run can be saved and resumed exactly.
type AdamW struct {
	Beta1, Beta2, Eps, WeightDecay float64
	params                         []*tensor.Tensor
	m, v                           []*tensor.Tensor // owned
	dev                            tensor.Device
	// Step is the number of updates made.
	Step int
}

// NewAdamW prepares the optimizer for params (not owned, on dev), with
// zero moments.
func NewAdamW(params []*tensor.Tensor, dev tensor.Device, beta1, beta2, eps, weightDecay float64) (*AdamW, error) {
	o := &AdamW{Beta1: beta1, Beta2: beta2, Eps: eps, WeightDecay: weightDecay, params: params, dev: dev}
	s := tensor.NewScope()
	defer s.Close()
	for _, p := range params {
		o.m = append(o.m, s.Keep(s.Zeros(p.Shape(), tensor.Float32, dev)))
		o.v = append(o.v, s.Keep(s.Zeros(p.Shape(), tensor.Float32, dev)))
	}
	if err := s.Err(); err != nil {
		o.Free()
		return nil, fmt.Errorf("adamw: %w", err)
	}
	return o, nil
}

// Free releases the moments.
func (o *AdamW) Free() {
	for i := range o.m {
		o.m[i].Free()
		o.v[i].Free()
	}
	o.m, o.v = nil, nil
}

// ClipAndStep clips the parameters' accumulated gradients to a total L2
// norm of clip (0: no clipping) as torch.nn.utils.clip_grad_norm_ does,
// makes one AdamW update with learning rate lr, and zeroes the gradients.
// It returns the gradient norm before clipping.
func (o *AdamW) ClipAndStep(lr, clip float64) (float64, error) {
	s := tensor.NewScope()
	defer s.Close()
	grads := make([]*tensor.Tensor, len(o.params))
	sq := 0.0
	for i, p := range o.params {
		if grads[i] = s.Grad(p); grads[i] != nil {
			sq += s.SumSquares(grads[i])
		}
	}
	if err := s.Err(); err != nil {
		return 0, fmt.Errorf("adamw: %w", err)
	}
	norm := math.Sqrt(sq)
	if math.IsNaN(norm) || math.IsInf(norm, 0) {
		return norm, fmt.Errorf("adamw: gradient norm is %v", norm)
	}
	coef := 1.0
	if clip > 0 {
		coef = min(1, clip/(norm+1e-6))
	}
	o.Step++
	bc1 := 1 - math.Pow(o.Beta1, float64(o.Step))
	bc2 := 1 - math.Pow(o.Beta2, float64(o.Step))
	for i, p := range o.params {
		g := grads[i]
		if g == nil {
			continue // a parameter the loss does not reach
		}
		if coef != 1 {
			g = s.Scale(g, coef)
		}
		m := s.Add(s.Scale(o.m[i], o.Beta1), s.Scale(g, 1-o.Beta1))
		v := s.Add(s.Scale(o.v[i], o.Beta2), s.Scale(s.Mul(g, g), 1-o.Beta2))
		denom := s.AddScalar(s.Scale(s.Sqrt(v), 1/math.Sqrt(bc2)), o.Eps)
		update := s.Scale(s.Div(m, denom), lr/bc1)
		if o.WeightDecay != 0 {
			s.ScaleInPlace(p, 1-lr*o.WeightDecay)
		}
		s.SubInPlace(p, update)
		s.ZeroInPlace(grads[i])
		if err := s.Err(); err != nil {
			return norm, fmt.Errorf("adamw: %w", err)
		}
		o.m[i].Free()
		o.v[i].Free()
		o.m[i], o.v[i] = s.Keep(m), s.Keep(v)
	}
	return norm, s.Err()
}

// ZeroGrad drops the accumulated gradients (after a batch that is skipped).
func (o *AdamW) ZeroGrad() {
	s := tensor.NewScope()
	defer s.Close()
	for _, p := range o.params {
		if g := s.Grad(p); g != nil {
			s.ZeroInPlace(g)
		}
	}
}

// Moments returns copies of the first and second moments, for saving.
func (o *AdamW) Moments() (m, v [][]float32, err error) {
	s := tensor.NewScope()
	defer s.Close()
	for i := range o.m {
		m = append(m, s.Float32s(o.m[i]))
		v = append(v, s.Float32s(o.v[i]))
	}
	return m, v, s.Err()
}

// SetMoments restores saved moments and the step count.
func (o *AdamW) SetMoments(m, v [][]float32, step int) error {
	if len(m) != len(o.m) || len(v) != len(o.v) {
		return fmt.Errorf("adamw state: %d/%d moments for %d parameters", len(m), len(v), len(o.m))
	}
	s := tensor.NewScope()
	defer s.Close()
	for i := range o.m {
		shape := o.m[i].Shape()
		if int64(len(m[i])) != o.m[i].Numel() || int64(len(v[i])) != o.v[i].Numel() {
			return fmt.Errorf("adamw state: parameter %d has %d values, saved %d", i, o.m[i].Numel(), len(m[i]))
		}
		nm, nv := s.Keep(s.FromFloat32(m[i], shape, o.dev)), s.Keep(s.FromFloat32(v[i], shape, o.dev))
		if err := s.Err(); err != nil {
			nm.Free()
			nv.Free()
			return fmt.Errorf("adamw state: %w", err)
		}
		o.m[i].Free()
		o.v[i].Free()
		o.m[i], o.v[i] = nm, nv
	}
	o.Step = step
	return nil
}

// Schedule is the learning rate at each update: a linear warm-up from 0
// to the peak, then linear or cosine decay to 0 at the last update, as
// transformers' get_linear_schedule_with_warmup and
// get_cosine_schedule_with_warmup.
type Schedule struct {
	Peak   float64
	Warmup int
	Total  int
	// Cosine selects cosine decay instead of linear.
	Cosine bool
}

// At is the rate of update number step (0-based).
func (sc Schedule) At(step int) float64 {
	if step < sc.Warmup {
		// From Peak/(Warmup+1), so that the first update is not a no-op.
		return sc.Peak * float64(step+1) / float64(sc.Warmup+1)
	}
	rest := max(1, sc.Total-sc.Warmup)
	progress := min(1, float64(step-sc.Warmup)/float64(rest))
	if sc.Cosine {
		return sc.Peak * 0.5 * (1 + math.Cos(math.Pi*progress))
	}
	return sc.Peak * (1 - progress)
}
