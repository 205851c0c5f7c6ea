package tensor

import (
	"fmt"
	"unsafe"

	lib "github.com/sugarme/gotch/libtch"
)

// This file holds the operations. Each one returns a tensor owned by the
// scope, or nil once the scope has failed; the names and semantics are
// PyTorch's.

func cbool(b bool) int32 {
	if b {
		return 1
	}
	return 0
}

// FromFloat32 copies data into a new float32 tensor of the given shape on dev.
func (s *Scope) FromFloat32(data []float32, shape []int64, dev Device) *Tensor {
	return s.fromData("from_float32", unsafe.Pointer(unsafe.SliceData(data)), len(data), Float32, shape, dev)
}

// FromInt64 copies data into a new int64 tensor of the given shape on dev.
func (s *Scope) FromInt64(data []int64, shape []int64, dev Device) *Tensor {
	return s.fromData("from_int64", unsafe.Pointer(unsafe.SliceData(data)), len(data), Int64, shape, dev)
}

// FromBool copies data into a new bool tensor of the given shape on dev.
func (s *Scope) FromBool(data []bool, shape []int64, dev Device) *Tensor {
	return s.fromData("from_bool", unsafe.Pointer(unsafe.SliceData(data)), len(data), Bool, shape, dev)
}

// FromBytes copies raw little-endian elements of dtype into a new tensor of
// the given shape on dev (checkpoint loading).
func (s *Scope) FromBytes(raw []byte, dtype DType, shape []int64, dev Device) *Tensor {
	if dtype.Size() == 0 {
		s.Fail(&Error{Op: "from_bytes", Msg: "unsupported dtype " + dtype.String()})
		return nil
	}
	if len(raw)%dtype.Size() != 0 {
		s.Fail(&Error{Op: "from_bytes", Msg: fmt.Sprintf("%d bytes is not a whole number of %s elements", len(raw), dtype)})
		return nil
	}
	return s.fromData("from_bytes", unsafe.Pointer(unsafe.SliceData(raw)), len(raw)/dtype.Size(), dtype, shape, dev)
}

func (s *Scope) fromData(op string, p unsafe.Pointer, n int, dtype DType, shape []int64, dev Device) *Tensor {
	if !s.ready(op) {
		return nil
	}
	want := int64(1)
	for _, d := range shape {
		want *= d
	}
	if want != int64(n) {
		s.Fail(&Error{Op: op, Msg: fmt.Sprintf("%d elements do not fill shape %v", n, shape)})
		return nil
	}
	if n == 0 {
		return s.Zeros(shape, dtype, dev)
	}
	c := lib.AtTensorOfData(p, shape, uint(len(shape)), uint(dtype.Size()), int(dtype))
	if err := lastError(op); err != nil {
		s.err = err
		return nil
	}
	s.owned = append(s.owned, c)
	t := &Tensor{c: c}
	if dev.IsCUDA() {
		return s.To(t, dev)
	}
	return t
}

// Zeros makes a tensor of zeros.
func (s *Scope) Zeros(shape []int64, dtype DType, dev Device) *Tensor {
	if !s.ready("zeros") {
		return nil
	}
	return s.run1("zeros", func(out *lib.Ctensor) { lib.AtgZeros(out, shape, len(shape), int32(dtype), dev.c()) })
}

// Full makes a tensor filled with v.
func (s *Scope) Full(shape []int64, v float64, dtype DType, dev Device) *Tensor {
	if !s.ready("full") {
		return nil
	}
	var t *Tensor
	withScalar(v, func(sc lib.Cscalar) {
		t = s.run1("full", func(out *lib.Ctensor) { lib.AtgFull(out, shape, len(shape), sc, int32(dtype), dev.c()) })
	})
	return t
}

// Arange makes the int64 tensor [0, 1, ..., n-1].
func (s *Scope) Arange(n int64, dev Device) *Tensor {
	if !s.ready("arange") {
		return nil
	}
	var t *Tensor
	sc := lib.AtsInt(n)
	defer lib.AtsFree(sc)
	t = s.run1("arange", func(out *lib.Ctensor) { lib.AtgArange(out, sc, int32(Int64), dev.c()) })
	return t
}

// To converts t to dtype (a no-op view when it already is).
func (s *Scope) ToDType(t *Tensor, dtype DType) *Tensor {
	if !s.ready("to_dtype", t) {
		return nil
	}
	return s.run1("to_dtype", func(out *lib.Ctensor) { lib.AtgToDtype(out, t.c, int32(dtype), 0, 0) })
}

// To moves t to dev.
func (s *Scope) To(t *Tensor, dev Device) *Tensor {
	if !s.ready("to_device", t) {
		return nil
	}
	return s.run1("to_device", func(out *lib.Ctensor) { lib.AtgTo(out, t.c, dev.c()) })
}

// Contiguous returns t laid out contiguously in memory.
func (s *Scope) Contiguous(t *Tensor) *Tensor {
	if !s.ready("contiguous", t) {
		return nil
	}
	return s.run1("contiguous", func(out *lib.Ctensor) { lib.AtgContiguous(out, t.c) })
}

// Reshape returns t with a new shape (-1 infers one dimension).
func (s *Scope) Reshape(t *Tensor, shape ...int64) *Tensor {
	if !s.ready("reshape", t) {
		return nil
	}
	return s.run1("reshape", func(out *lib.Ctensor) { lib.AtgReshape(out, t.c, shape, len(shape)) })
}

// Transpose swaps dimensions a and b.
func (s *Scope) Transpose(t *Tensor, a, b int64) *Tensor {
	if !s.ready("transpose", t) {
		return nil
	}
	return s.run1("transpose", func(out *lib.Ctensor) { lib.AtgTranspose(out, t.c, a, b) })
}

// Permute reorders the dimensions.
func (s *Scope) Permute(t *Tensor, dims ...int64) *Tensor {
	if !s.ready("permute", t) {
		return nil
	}
	return s.run1("permute", func(out *lib.Ctensor) { lib.AtgPermute(out, t.c, dims, len(dims)) })
}

// Unsqueeze inserts a dimension of size 1 at d.
func (s *Scope) Unsqueeze(t *Tensor, d int64) *Tensor {
	if !s.ready("unsqueeze", t) {
		return nil
	}
	return s.run1("unsqueeze", func(out *lib.Ctensor) { lib.AtgUnsqueeze(out, t.c, d) })
}

// Expand broadcasts t to shape without copying (-1 keeps a dimension).
func (s *Scope) Expand(t *Tensor, shape ...int64) *Tensor {
	if !s.ready("expand", t) {
		return nil
	}
	return s.run1("expand", func(out *lib.Ctensor) { lib.AtgExpand(out, t.c, shape, len(shape), 0) })
}

// Narrow returns length elements of dimension d starting at start (a view).
func (s *Scope) Narrow(t *Tensor, d, start, length int64) *Tensor {
	if !s.ready("narrow", t) {
		return nil
	}
	return s.run1("narrow", func(out *lib.Ctensor) { lib.AtgNarrow(out, t.c, d, start, length) })
}

// Select returns index i of dimension d, removing that dimension (a view).
func (s *Scope) Select(t *Tensor, d, i int64) *Tensor {
	if !s.ready("select", t) {
		return nil
	}
	return s.run1("select", func(out *lib.Ctensor) { lib.AtgSelect(out, t.c, d, i) })
}

func ctensors(ts []*Tensor) []lib.Ctensor {
	cs := make([]lib.Ctensor, len(ts))
	for i, t := range ts {
		cs[i] = t.c
	}
	return cs
}

// Cat concatenates along dimension d.
func (s *Scope) Cat(ts []*Tensor, d int64) *Tensor {
	if !s.ready("cat", ts...) {
		return nil
	}
	cs := ctensors(ts)
	return s.run1("cat", func(out *lib.Ctensor) { lib.AtgCat(out, cs, len(cs), d) })
}

// Stack stacks along a new dimension d.
func (s *Scope) Stack(ts []*Tensor, d int64) *Tensor {
	if !s.ready("stack", ts...) {
		return nil
	}
	cs := ctensors(ts)
	return s.run1("stack", func(out *lib.Ctensor) { lib.AtgStack(out, cs, len(cs), d) })
}

// Matmul is torch.matmul.
func (s *Scope) Matmul(a, b *Tensor) *Tensor {
	if !s.ready("matmul", a, b) {
		return nil
	}
	return s.run1("matmul", func(out *lib.Ctensor) { lib.AtgMatmul(out, a.c, b.c) })
}

// Linear is x·wᵀ + bias; bias may be nil.
func (s *Scope) Linear(x, w, bias *Tensor) *Tensor {
	if !s.ready("linear", x, w) {
		return nil
	}
	var bc lib.Ctensor
	if bias != nil {
		bc = bias.c
	} else {
		bc = lib.AtNewTensor() // undefined tensor = no bias
		defer lib.AtFree(bc)
	}
	return s.run1("linear", func(out *lib.Ctensor) { lib.AtgLinear(out, x.c, w.c, bc) })
}

// Add is a + b with broadcasting.
func (s *Scope) Add(a, b *Tensor) *Tensor {
	if !s.ready("add", a, b) {
		return nil
	}
	return s.run1("add", func(out *lib.Ctensor) { lib.AtgAdd(out, a.c, b.c) })
}

// Sub is a - b with broadcasting.
func (s *Scope) Sub(a, b *Tensor) *Tensor {
	if !s.ready("sub", a, b) {
		return nil
	}
	return s.run1("sub", func(out *lib.Ctensor) { lib.AtgSub(out, a.c, b.c) })
}

// Mul is a * b with broadcasting.
func (s *Scope) Mul(a, b *Tensor) *Tensor {
	if !s.ready("mul", a, b) {
		return nil
	}
	return s.run1("mul", func(out *lib.Ctensor) { lib.AtgMul(out, a.c, b.c) })
}

// Div is a / b with broadcasting.
func (s *Scope) Div(a, b *Tensor) *Tensor {
	if !s.ready("div", a, b) {
		return nil
	}
	return s.run1("div", func(out *lib.Ctensor) { lib.AtgDiv(out, a.c, b.c) })
}

// Scale is t * v.
func (s *Scope) Scale(t *Tensor, v float64) *Tensor {
	if !s.ready("mul_scalar", t) {
		return nil
	}
	var r *Tensor
	withScalar(v, func(sc lib.Cscalar) {
		r = s.run1("mul_scalar", func(out *lib.Ctensor) { lib.AtgMulScalar(out, t.c, sc) })
	})
	return r
}

// AddScalar is t + v.
func (s *Scope) AddScalar(t *Tensor, v float64) *Tensor {
	if !s.ready("add_scalar", t) {
		return nil
	}
	var r *Tensor
	withScalar(v, func(sc lib.Cscalar) {
		r = s.run1("add_scalar", func(out *lib.Ctensor) { lib.AtgAddScalar(out, t.c, sc) })
	})
	return r
}

// Pow is t ** v.
func (s *Scope) Pow(t *Tensor, v float64) *Tensor {
	if !s.ready("pow", t) {
		return nil
	}
	var r *Tensor
	withScalar(v, func(sc lib.Cscalar) {
		r = s.run1("pow", func(out *lib.Ctensor) { lib.AtgPowTensorScalar(out, t.c, sc) })
	})
	return r
}

// Rsqrt is 1/sqrt(t).
func (s *Scope) Rsqrt(t *Tensor) *Tensor {
	if !s.ready("rsqrt", t) {
		return nil
	}
	return s.run1("rsqrt", func(out *lib.Ctensor) { lib.AtgRsqrt(out, t.c) })
}

// Exp is e**t.
func (s *Scope) Exp(t *Tensor) *Tensor {
	if !s.ready("exp", t) {
		return nil
	}
	return s.run1("exp", func(out *lib.Ctensor) { lib.AtgExp(out, t.c) })
}

// Neg is -t.
func (s *Scope) Neg(t *Tensor) *Tensor {
	if !s.ready("neg", t) {
		return nil
	}
	return s.run1("neg", func(out *lib.Ctensor) { lib.AtgNeg(out, t.c) })
}

// Cos is cos(t).
func (s *Scope) Cos(t *Tensor) *Tensor {
	if !s.ready("cos", t) {
		return nil
	}
	return s.run1("cos", func(out *lib.Ctensor) { lib.AtgCos(out, t.c) })
}

// Sin is sin(t).
func (s *Scope) Sin(t *Tensor) *Tensor {
	if !s.ready("sin", t) {
		return nil
	}
	return s.run1("sin", func(out *lib.Ctensor) { lib.AtgSin(out, t.c) })
}

// Silu is x·sigmoid(x).
func (s *Scope) Silu(t *Tensor) *Tensor {
	if !s.ready("silu", t) {
		return nil
	}
	return s.run1("silu", func(out *lib.Ctensor) { lib.AtgSilu(out, t.c) })
}

// Gelu is the GeLU activation; approximate is "none" or "tanh".
func (s *Scope) Gelu(t *Tensor, approximate string) *Tensor {
	if !s.ready("gelu", t) {
		return nil
	}
	return s.run1("gelu", func(out *lib.Ctensor) { lib.AtgGelu(out, t.c, approximate) })
}

// Softmax over dimension d, computed in dtype.
func (s *Scope) Softmax(t *Tensor, d int64, dtype DType) *Tensor {
	if !s.ready("softmax", t) {
		return nil
	}
	return s.run1("softmax", func(out *lib.Ctensor) { lib.AtgSoftmax(out, t.c, d, int32(dtype)) })
}

// LogSoftmax over dimension d, computed in dtype.
func (s *Scope) LogSoftmax(t *Tensor, d int64, dtype DType) *Tensor {
	if !s.ready("log_softmax", t) {
		return nil
	}
	return s.run1("log_softmax", func(out *lib.Ctensor) { lib.AtgLogSoftmax(out, t.c, d, int32(dtype)) })
}

// LayerNorm over the last dimension; bias may be nil.
func (s *Scope) LayerNorm(x, w, bias *Tensor, eps float64) *Tensor {
	if !s.ready("layer_norm", x, w) {
		return nil
	}
	shape := []int64{x.Size(-1)}
	var bc lib.Ctensor
	if bias != nil {
		bc = bias.c
	} else {
		bc = lib.AtNewTensor()
		defer lib.AtFree(bc)
	}
	return s.run1("layer_norm", func(out *lib.Ctensor) { lib.AtgLayerNorm(out, x.c, shape, 1, w.c, bc, eps, 0) })
}

// MeanDim averages over the dimensions dims.
func (s *Scope) MeanDim(t *Tensor, keepdim bool, dims ...int64) *Tensor {
	if !s.ready("mean", t) {
		return nil
	}
	return s.run1("mean", func(out *lib.Ctensor) {
		lib.AtgMeanDim(out, t.c, dims, len(dims), cbool(keepdim), int32(t.DType()))
	})
}

// SumDim sums over the dimensions dims.
func (s *Scope) SumDim(t *Tensor, keepdim bool, dims ...int64) *Tensor {
	if !s.ready("sum", t) {
		return nil
	}
	return s.run1("sum", func(out *lib.Ctensor) {
		lib.AtgSumDimIntlist(out, t.c, dims, len(dims), cbool(keepdim), int32(t.DType()))
	})
}

// Embedding looks up the rows ids of table.
func (s *Scope) Embedding(table, ids *Tensor) *Tensor {
	if !s.ready("embedding", table, ids) {
		return nil
	}
	return s.run1("embedding", func(out *lib.Ctensor) { lib.AtgEmbedding(out, table.c, ids.c, -1, 0, 0) })
}

// IndexSelect picks entries idx of dimension d.
func (s *Scope) IndexSelect(t *Tensor, d int64, idx *Tensor) *Tensor {
	if !s.ready("index_select", t, idx) {
		return nil
	}
	return s.run1("index_select", func(out *lib.Ctensor) { lib.AtgIndexSelect(out, t.c, d, idx.c) })
}

// Gather is torch.gather along dimension d.
func (s *Scope) Gather(t *Tensor, d int64, idx *Tensor) *Tensor {
	if !s.ready("gather", t, idx) {
		return nil
	}
	return s.run1("gather", func(out *lib.Ctensor) { lib.AtgGather(out, t.c, d, idx.c, 0) })
}

// Where picks a where cond is true and b elsewhere.
func (s *Scope) Where(cond, a, b *Tensor) *Tensor {
	if !s.ready("where", cond, a, b) {
		return nil
	}
	return s.run1("where", func(out *lib.Ctensor) { lib.AtgWhereSelf(out, cond.c, a.c, b.c) })
}

// MaskedFill sets t to v where mask is true.
func (s *Scope) MaskedFill(t, mask *Tensor, v float64) *Tensor {
	if !s.ready("masked_fill", t, mask) {
		return nil
	}
	var r *Tensor
	withScalar(v, func(sc lib.Cscalar) {
		r = s.run1("masked_fill", func(out *lib.Ctensor) { lib.AtgMaskedFill(out, t.c, mask.c, sc) })
	})
	return r
}

// Argmax over dimension d.
func (s *Scope) Argmax(t *Tensor, d int64) *Tensor {
	if !s.ready("argmax", t) {
		return nil
	}
	return s.run1("argmax", func(out *lib.Ctensor) { lib.AtgArgmax(out, t.c, d, 0, 0) })
}

// Logsumexp over dimension d.
func (s *Scope) Logsumexp(t *Tensor, d int64, keepdim bool) *Tensor {
	if !s.ready("logsumexp", t) {
		return nil
	}
	dims := []int64{d}
	return s.run1("logsumexp", func(out *lib.Ctensor) { lib.AtgLogsumexp(out, t.c, dims, 1, cbool(keepdim)) })
}

// AllFinite reports whether no element of t is NaN or ±Inf.
func (s *Scope) AllFinite(t *Tensor) bool {
	if !s.ready("all_finite", t) {
		return false
	}
	// x-x is 0 for every finite x and NaN for NaN and ±Inf, so the sum of
	// x-x over t is 0 exactly when every element is finite.
	f := s.Reshape(s.ToDType(t, Float32), -1)
	sum := s.Float32s(s.SumDim(s.Sub(f, f), false, 0))
	return s.err == nil && len(sum) == 1 && sum[0] == 0
}

// ScaledDotProductAttention is torch's SDPA. mask may be nil (no mask); a
// bool mask is true where attention is allowed, a float mask is added to
// the scores.
func (s *Scope) ScaledDotProductAttention(q, k, v, mask *Tensor, causal bool, scale float64) *Tensor {
	if !s.ready("scaled_dot_product_attention", q, k, v) {
		return nil
	}
	var mc lib.Ctensor
	if mask != nil {
		mc = mask.c
	} else {
		mc = lib.AtNewTensor()
		defer lib.AtFree(mc)
	}
	scaleNull := 0
	if scale == 0 {
		scaleNull = 1
	}
	return s.run1("scaled_dot_product_attention", func(out *lib.Ctensor) {
		lib.AtgScaledDotProductAttention(out, q.c, k.c, v.c, mc, 0, cbool(causal), scale, scaleNull)
	})
}

// Float32s copies t's elements (converted to float32, in row-major order)
// to Go memory.
func (s *Scope) Float32s(t *Tensor) []float32 {
	if !s.ready("copy_out", t) {
		return nil
	}
	f := s.Contiguous(s.To(s.ToDType(t, Float32), CPU))
	if f == nil {
		return nil
	}
	n := f.Numel()
	out := make([]float32, n)
	if n > 0 {
		lib.AtCopyData(f.c, unsafe.Pointer(&out[0]), uint(n), 4)
		if err := lastError("copy_out"); err != nil {
			s.Fail(err)
			return nil
		}
	}
	return out
}

// Int64s copies t's elements (converted to int64) to Go memory.
func (s *Scope) Int64s(t *Tensor) []int64 {
	if !s.ready("copy_out", t) {
		return nil
	}
	f := s.Contiguous(s.To(s.ToDType(t, Int64), CPU))
	if f == nil {
		return nil
	}
	n := f.Numel()
	out := make([]int64, n)
	if n > 0 {
		lib.AtCopyData(f.c, unsafe.Pointer(&out[0]), uint(n), 8)
		if err := lastError("copy_out"); err != nil {
			s.Fail(err)
			return nil
		}
	}
	return out
}

// AsStrided views t's storage with the given sizes, strides and storage
// offset (elements), as PyTorch's as_strided.
func (s *Scope) AsStrided(t *Tensor, size, stride []int64, offset int64) *Tensor {
	if !s.ready("as_strided", t) {
		return nil
	}
	return s.run1("as_strided", func(out *lib.Ctensor) {
		lib.AtgAsStrided(out, t.c, size, len(size), stride, len(stride), offset, 0)
	})
}

// Tanh is tanh(t).
func (s *Scope) Tanh(t *Tensor) *Tensor {
	if !s.ready("tanh", t) {
		return nil
	}
	return s.run1("tanh", func(out *lib.Ctensor) { lib.AtgTanh(out, t.c) })
}

// IndexAdd adds src's slices into t at the positions idx of dimension d.
func (s *Scope) IndexAdd(t *Tensor, d int64, idx, src *Tensor) *Tensor {
	if !s.ready("index_add", t, idx, src) {
		return nil
	}
	return s.run1("index_add", func(out *lib.Ctensor) { lib.AtgIndexAdd(out, t.c, d, idx.c, src.c) })
}

// Clone copies t into a tensor of its own (as opposed to a view).
func (s *Scope) Clone(t *Tensor) *Tensor {
	if !s.ready("clone", t) {
		return nil
	}
	return s.Contiguous(s.AddScalar(t, 0))
}
