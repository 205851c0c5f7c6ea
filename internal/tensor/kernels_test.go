package tensor

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"
)

// The fused kernels must give what the libtorch chains they replace give:
// in float32 up to summation order, in bfloat16 up to one unit in the last
// place on a few elements (the kernels' exp and sums are not libtorch's).
// Sizes are not multiples of the 16-float vectors, so tails are covered,
// and every test runs the AVX-512 versions (where this CPU has them) and
// the portable ones.

func randomFloats(r *rand.Rand, n int, scale float64) []float32 {
	out := make([]float32, n)
	for i := range out {
		out[i] = float32(r.NormFloat64() * scale)
	}
	return out
}

// kernelCases are the implementations to compare with kernelsComposite.
var kernelCases = []struct {
	name string
	k    kernels
}{{"best", kernelsBest}, {"avx512bf16", kernelsAVX512BF16}, {"avx512", kernelsAVX512}, {"scalar", kernelsScalar}}

// closeEnough compares got with want element by element: float32 within a
// relative 1e-5, bfloat16 within one bfloat16 step (2^-7 relative) on at
// most 1% of the elements and exactly elsewhere.
func closeEnough(t *testing.T, what string, dtype DType, got, want []float32) {
	t.Helper()
	compare(t, what, dtype, got, want, false, 0)
}

// closeEnoughAround is closeEnough where a bfloat16 step is measured
// against at least floor: for results that are sums of terms of both
// signs, whose own size says nothing of their error (a near-zero sum
// moves by a step of its terms when one term's rounding flips).
func closeEnoughAround(t *testing.T, what string, dtype DType, got, want []float32, floor float64) {
	t.Helper()
	compare(t, what, dtype, got, want, false, floor)
}

// same requires got == want: the kernel does the very operations, in the
// same order and precision, as the libtorch chain (no fused multiply-add:
// kernels.c is compiled as ISO C, which does not contract).
func same(t *testing.T, what string, got, want []float32) {
	t.Helper()
	compare(t, what, Float32, got, want, true, 0)
}

func compare(t *testing.T, what string, dtype DType, got, want []float32, exact bool, floor float64) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d values, want %d", what, len(got), len(want))
	}
	off := 0
	for i := range got {
		g, w := float64(got[i]), float64(want[i])
		diff := math.Abs(g - w)
		scale := math.Max(math.Abs(w), 1e-30)
		step := math.Max(scale, floor) / 128
		switch {
		case exact && diff != 0:
			t.Fatalf("%s: element %d = %v, want exactly %v", what, i, g, w)
		case dtype == Float32 && diff <= 1e-5*scale+1e-6:
		case dtype == BFloat16 && diff == 0:
		case dtype == BFloat16 && diff <= step:
			off++
		default:
			t.Fatalf("%s: element %d = %v, want %v", what, i, g, w)
		}
	}
	if off*100 > len(got) {
		t.Fatalf("%s: %d of %d elements differ by a bfloat16 step", what, off, len(got))
	}
}

// TestRMSNormKernel covers each dtype, and a float32 residual stream (x
// and the sum) under bfloat16 weights, addend and output.
func TestRMSNormKernel(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, dt := range [][2]DType{{Float32, Float32}, {BFloat16, BFloat16}, {Float32, BFloat16}} {
		xdtype, dtype := dt[0], dt[1]
		name := xdtype.String() + "/" + dtype.String()
		s := NewScope()
		x := s.ToDType(s.FromFloat32(randomFloats(r, 3*5*40, 2), []int64{3, 5, 40}, CPU), xdtype)
		w := s.ToDType(s.FromFloat32(randomFloats(r, 40, 1), []int64{40}, CPU), dtype)
		y := s.ToDType(s.FromFloat32(randomFloats(r, 3*5*40, 2), []int64{3, 5, 40}, CPU), dtype)
		_, wantNorm := s.rmsNorm(x, nil, w, 1e-5, kernelsComposite)
		wantSum, wantAddNorm := s.rmsNorm(x, y, w, 1e-5, kernelsComposite)
		for _, c := range kernelCases {
			_, got := s.rmsNorm(x, nil, w, 1e-5, c.k)
			sum, gotAdd := s.rmsNorm(x, y, w, 1e-5, c.k)
			if err := s.Err(); err != nil {
				t.Fatal(err)
			}
			if got.DType() != dtype || gotAdd.DType() != dtype || sum.DType() != xdtype {
				t.Fatalf("%s %s: normed %s and %s, sum %s", name, c.name, got.DType(), gotAdd.DType(), sum.DType())
			}
			closeEnough(t, "rms_norm "+name+" "+c.name, dtype, s.Float32s(got), s.Float32s(wantNorm))
			// the sum is rounded as libtorch's Add rounds it: exactly
			same(t, "add_rms_norm sum "+name+" "+c.name, s.Float32s(sum), s.Float32s(wantSum))
			closeEnough(t, "add_rms_norm "+name+" "+c.name, dtype, s.Float32s(gotAdd), s.Float32s(wantAddNorm))
		}
		s.Close()
	}
}

func TestRMSNormRefusesMixedDTypesOtherThanAFloat32Stream(t *testing.T) {
	s := NewScope()
	defer s.Close()
	x := s.ToDType(s.FromFloat32(make([]float32, 8), []int64{2, 4}, CPU), BFloat16)
	w := s.FromFloat32([]float32{1, 1, 1, 1}, []int64{4}, CPU)
	if s.RMSNorm(x, w, 1e-5); s.Err() == nil {
		t.Fatal("RMSNorm of a bfloat16 x with float32 weights: no error")
	}
}

func TestSiluMulKernel(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, dtype := range []DType{Float32, BFloat16} {
		s := NewScope()
		u := s.ToDType(s.FromFloat32(randomFloats(r, 7*2*37, 3), []int64{7, 2 * 37}, CPU), dtype)
		want := s.Float32s(s.siluMul(u, 37, kernelsComposite))
		for _, c := range kernelCases {
			got := s.Float32s(s.siluMul(u, 37, c.k))
			if err := s.Err(); err != nil {
				t.Fatal(err)
			}
			closeEnough(t, "silu_mul "+dtype.String()+" "+c.name, dtype, got, want)
		}
		s.Close()
	}
}

// TestRotatePairsKernel rotates a slice of a wider tensor, as the model
// rotates the query and key part of its fused QKV projection.
func TestRotatePairsKernel(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	for _, sh := range [][5]int64{{2, 3, 5, 20, 5*20 + 36}, {1, 7, 6, 8, 6 * 8}, {3, 1, 6, 8, 64}, {2, 5, 10, 32, 10*32 + 64}} {
		for _, dtype := range []DType{Float32, BFloat16} {
			rotateCase(t, r, dtype, sh[0], sh[1], sh[2], sh[3], sh[4])
		}
	}
}

// rotateCase rotates the first heads·hd columns of a [B, L, width] tensor.
func rotateCase(t *testing.T, r *rand.Rand, dtype DType, B, L, H, hd, width int64) {
	t.Helper()
	s := NewScope()
	defer s.Close()
	qkv := s.ToDType(s.FromFloat32(randomFloats(r, int(B*L*width), 1), []int64{B, L, width}, CPU), dtype)
	x := s.Reshape(s.Narrow(qkv, -1, 0, H*hd), B, L, H, hd)
	cos := s.ToDType(s.FromFloat32(randomFloats(r, int(B*L*hd), 1), []int64{B, L, 1, hd}, CPU), dtype)
	sin := s.ToDType(s.FromFloat32(randomFloats(r, int(B*L*hd), 1), []int64{B, L, 1, hd}, CPU), dtype)
	want := s.Float32s(s.rotatePairs(x, cos, sin, kernelsComposite))
	for _, c := range kernelCases {
		got := s.Float32s(s.rotatePairs(x, cos, sin, c.k))
		if err := s.Err(); err != nil {
			t.Fatal(err)
		}
		same(t, fmt.Sprintf("rotate_pairs %s %s %dx%dx%dx%d", dtype, c.name, B, L, H, hd), got, want)
	}
}

func TestLinearLogSoftmaxPickKernel(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 8))
	const rowsN, dim, vocab, width = 6, 40, 1000 + 3, 4
	for _, dtype := range []DType{Float32, BFloat16} {
		s := NewScope()
		// every logit counts in the normaliser
		hv, wv := randomFloats(r, rowsN*dim, 1), randomFloats(r, vocab*dim, 0.1)
		for d := range dim {
			// one dominant logit (row 2, token 17), in a chunk after the
			// first: exp must not overflow, and the running sum rescales
			wv[17*dim+d] = 4 * hv[2*dim+d]
		}
		h := s.ToDType(s.FromFloat32(hv, []int64{rowsN, dim}, CPU), dtype)
		w := s.ToDType(s.FromFloat32(wv, []int64{vocab, dim}, CPU), dtype)
		targets := make([]int64, rowsN*width)
		for i := range targets {
			targets[i] = r.Int64N(vocab)
		}
		targets[2*width] = 17
		want := s.linearLogSoftmaxPick(h, w, targets, width, 0, kernelsComposite)
		if want[2*width] < -0.5 {
			t.Fatalf("the dominant logit has log-probability %v: the test lost its point", want[2*width])
		}
		for _, c := range kernelCases {
			// chunks: ragged (16 and 100 do not divide 1003), one, the default
			for _, chunk := range []int64{16, 100, vocab, 0} {
				got := s.linearLogSoftmaxPick(h, w, targets, width, chunk, c.k)
				if err := s.Err(); err != nil {
					t.Fatal(err)
				}
				// float32 output whatever the input: compare as float32
				closeEnough(t, fmt.Sprintf("linear_log_softmax_pick %s %s chunk %d", dtype, c.name, chunk), Float32, got, want)
			}
		}
		if s.LinearLogSoftmaxPick(h, w, []int64{0, 1}, width) != nil || s.Err() == nil {
			t.Fatal("targets that do not fill the rows accepted")
		}
		s.Close()
		s = NewScope()
		h = s.ToDType(s.FromFloat32(hv, []int64{rowsN, dim}, CPU), dtype)
		w = s.ToDType(s.FromFloat32(wv, []int64{vocab, dim}, CPU), dtype)
		bad := append([]int64(nil), targets...)
		bad[3] = vocab
		if s.LinearLogSoftmaxPick(h, w, bad, width) != nil || s.Err() == nil {
			t.Fatal("target outside the vocabulary accepted")
		}
		s.Close()
	}
}

func TestHostMemoryKept(t *testing.T) {
	if got := HostMemory(); got != "kept" {
		t.Fatalf("HostMemory() = %q, want kept (EMOFLOW_HOST_MEMORY unset)", got)
	}
}

// TestAttentionKernel: grouped queries over a past (shared by the rows or
// one per row) and the rows' own keys, under a mask with padding, in views
// of a fused projection as the model passes them, against attentionMath;
// the libtorch path (scaled_dot_product_attention) against it too, in
// float32.
func TestAttentionKernel(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	for _, c := range []struct {
		B, H, G, L, P, R, hd int64
	}{{2, 4, 2, 5, 3, 1, 16}, {3, 6, 3, 7, 4, 3, 20}, {2, 2, 2, 4, 0, 0, 8}, {1, 8, 1, 9, 17, 1, 64},
		{2, 4, 2, 23, 14, 2, 32}, {1, 2, 1, 40, 0, 0, 16}, {3, 8, 2, 40, 37, 1, 64}} {
		for _, dtype := range []DType{Float32, BFloat16} {
			attentionCase(t, r, dtype, c.B, c.H, c.G, c.L, c.P, c.R, c.hd)
		}
	}
}

func attentionCase(t *testing.T, r *rand.Rand, dtype DType, B, H, G, L, P, R, hd int64) {
	t.Helper()
	s := NewScope()
	defer s.Close()
	width := (H + 2*G) * hd
	qkv := s.ToDType(s.FromFloat32(randomFloats(r, int(B*L*width), 1), []int64{B, L, width}, CPU), dtype)
	q := s.Transpose(s.Reshape(s.Narrow(qkv, -1, 0, H*hd), B, L, H, hd), 1, 2)
	k := s.Transpose(s.Reshape(s.Narrow(qkv, -1, H*hd, G*hd), B, L, G, hd), 1, 2)
	v := s.Transpose(s.Reshape(s.Narrow(qkv, -1, (H+G)*hd, G*hd), B, L, G, hd), 1, 2)
	var pk, pv *Tensor
	if P > 0 {
		pk = s.ToDType(s.FromFloat32(randomFloats(r, int(R*G*P*hd), 1), []int64{R, G, P, hd}, CPU), dtype)
		pv = s.ToDType(s.FromFloat32(randomFloats(r, int(R*G*P*hd), 1), []int64{R, G, P, hd}, CPU), dtype)
	}
	// Causal over the rows' own tokens after the whole past, the last row's
	// final token a pad that sees only itself.
	vis := make([]bool, B*L*(P+L))
	for b := int64(0); b < B; b++ {
		for i := int64(0); i < L; i++ {
			for j := int64(0); j < P+L; j++ {
				vis[(b*L+i)*(P+L)+j] = j < P || j-P <= i
				if b == B-1 && i == L-1 {
					vis[(b*L+i)*(P+L)+j] = j-P == i
				}
			}
		}
	}
	visible := s.FromBool(vis, []int64{B, L, P + L}, CPU)
	scale := 1 / math.Sqrt(float64(hd))
	want := s.Float32s(attentionMath(s, q, k, v, pk, pv, vis, scale))
	if dtype == Float32 {
		composite := s.Float32s(s.attention(q, k, v, pk, pv, visible, scale, kernelsComposite))
		closeEnoughAround(t, fmt.Sprintf("attention composite B%d H%d G%d L%d P%d R%d hd%d", B, H, G, L, P, R, hd), dtype, composite, want, rms(want))
	}
	for _, c := range kernelCases {
		got := s.Float32s(s.attention(q, k, v, pk, pv, visible, scale, c.k))
		if err := s.Err(); err != nil {
			t.Fatal(err)
		}
		// outputs are weighted sums of values of both signs: a step is
		// measured against their typical size (root mean square)
		closeEnoughAround(t, fmt.Sprintf("attention %s %s B%d H%d G%d L%d P%d R%d hd%d", dtype, c.name, B, H, G, L, P, R, hd),
			dtype, got, want, rms(want))
	}
}

// TestFastDType: bfloat16 on CUDA, and on the CPU exactly when the kernel
// reports bfloat16 arithmetic (/proc/cpuinfo's avx512_bf16 or amx_bf16).
func TestFastDType(t *testing.T) {
	if got := FastDType(CUDA(0)); got != BFloat16 {
		t.Errorf("FastDType(cuda:0) = %v, want bfloat16", got)
	}
	info, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		t.Skip("no /proc/cpuinfo:", err)
	}
	want := Float32
	if strings.Contains(string(info), " avx512_bf16") || strings.Contains(string(info), " amx_bf16") {
		want = BFloat16
	}
	if got := FastDType(CPU); got != want {
		t.Errorf("FastDType(cpu) = %v, want %v from /proc/cpuinfo", got, want)
	}
}

func rms(x []float32) float64 {
	var ss float64
	for _, v := range x {
		ss += float64(v) * float64(v)
	}
	return math.Sqrt(ss / float64(max(len(x), 1)))
}

// TestAttentionPaddingNeverReachesVisibleRows: keys no query sees (a row's
// padding) holding NaN, as garbage could, leave every visible row as if
// they held zeros, whatever the implementation (the AMX version multiplies
// densely, so it must drop them rather than weigh them by 0); queries that
// see nothing get zeros.
func TestAttentionPaddingNeverReachesVisibleRows(t *testing.T) {
	const B, H, G, L, P, hd, pad = 2, 8, 2, 20, 5, 64, 3
	r := rand.New(rand.NewPCG(11, 12))
	width := (H + 2*G) * hd
	clean := randomFloats(r, B*L*width, 1)
	dirty := slices.Clone(clean)
	for l := L - pad; l < L; l++ { // row 0's last tokens: keys and values NaN
		for c := H * hd; c < width; c++ {
			clean[l*width+c] = 0
			dirty[l*width+c] = float32(math.NaN())
		}
	}
	vis := make([]bool, B*L*(P+L))
	for b := range B {
		for i := range L {
			for j := range P + L {
				padded := b == 0 && (i >= L-pad || j-P >= L-pad)
				vis[(b*L+i)*(P+L)+j] = !padded && (j < P || j-P <= i)
			}
		}
	}
	s := NewScope()
	defer s.Close()
	past := randomFloats(r, G*P*hd, 1)
	pk := s.ToDType(s.FromFloat32(past, []int64{1, G, P, hd}, CPU), BFloat16)
	pv := s.ToDType(s.FromFloat32(slices.Clone(past), []int64{1, G, P, hd}, CPU), BFloat16)
	visible := s.FromBool(vis, []int64{B, L, P + L}, CPU)
	split := func(x []float32) (q, k, v *Tensor) {
		qkv := s.ToDType(s.FromFloat32(x, []int64{B, L, int64(width)}, CPU), BFloat16)
		q = s.Transpose(s.Reshape(s.Narrow(qkv, -1, 0, H*hd), B, L, H, hd), 1, 2)
		k = s.Transpose(s.Reshape(s.Narrow(qkv, -1, H*hd, G*hd), B, L, G, hd), 1, 2)
		v = s.Transpose(s.Reshape(s.Narrow(qkv, -1, (H+G)*hd, G*hd), B, L, G, hd), 1, 2)
		return q, k, v
	}
	q, k, v := split(clean)
	want := s.Float32s(attentionMath(s, q, k, v, pk, pv, vis, 1/math.Sqrt(hd)))
	q, k, v = split(dirty)
	for _, c := range kernelCases {
		got := s.Float32s(s.attention(q, k, v, pk, pv, visible, 1/math.Sqrt(hd), c.k))
		if err := s.Err(); err != nil {
			t.Fatal(err)
		}
		for l := L - pad; l < L; l++ { // padded queries: zeros here, NaN in libtorch
			for i := l * H * hd; i < (l+1)*H*hd; i++ {
				if got[i] != 0 {
					t.Fatalf("%s: padded query %d: element %d = %v, want 0", c.name, l, i, got[i])
				}
				got[i], want[i] = 0, 0
			}
		}
		closeEnoughAround(t, "attention with NaN padding "+c.name, BFloat16, got, want, rms(want))
	}
}

// attentionMath is Attention as libtorch 2.1's scaled_dot_product_attention
// computes it on the CPU under a mask (its "math" path), which the kernels
// reproduce rounding for rounding: queries and keys each scaled by
// sqrt(scale), their product, hidden keys at -inf, the softmax, its product
// with the values, each result in the inputs' dtype. Later libtorch
// releases send that call to a fused kernel that rounds less (2.11: up to
// 2% apart at some bfloat16 elements), so the tests spell the chain out.
func attentionMath(s *Scope, q, k, v, pastK, pastV *Tensor, visible []bool, scale float64) *Tensor {
	qsh := q.Shape()
	B, H, L, hd := qsh[0], qsh[1], qsh[2], qsh[3]
	k, v = s.headKeysValues(q, k, v, pastK, pastV)
	T := k.Size(2)
	hiddenKeys := make([]bool, len(visible))
	for i, vis := range visible {
		hiddenKeys[i] = !vis
	}
	hidden := s.Reshape(s.FromBool(hiddenKeys, []int64{B, L, T}, CPU), B, 1, L, T)
	f := math.Sqrt(scale)
	scores := s.Matmul(s.Scale(q, f), s.Transpose(s.Scale(k, f), 2, 3))
	probs := s.Softmax(s.MaskedFill(scores, hidden, math.Inf(-1)), -1, q.DType())
	return s.Reshape(s.Transpose(s.Matmul(probs, v), 1, 2), B, L, H*hd)
}
