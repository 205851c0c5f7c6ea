// Package tensor is the small tensor interface the model code is written
// against: a thin layer over gotch's libtorch bindings (package libtch) that
// makes ownership and errors explicit.
//
// gotch's own Tensor type frees C memory through Go finalizers, which leaves
// the size of the process to the garbage collector's mood, and its Must
// functions exit the process on any libtorch error. A server cannot afford
// either. Here:
//
//   - a Scope owns every tensor its operations create and frees them all in
//     Close, so a forward pass releases its intermediates the moment it ends;
//   - the first libtorch error (a shape mismatch, an unsupported dtype) is kept
//     in the Scope and turns the remaining operations into no-ops, so model code
//     reads like the maths and checks Err once;
//   - tensors that outlive a Scope (weights, caches) are taken out with Keep and
//     freed with Free.
//
// libtorch reports errors through thread-local state, so a Scope locks its
// goroutine to the OS thread until Close.
//
// A few fused operations (RMSNorm, SiluMul, RotatePairs, Attention,
// LinearLogSoftmaxPick; kernels.go) run C kernels on the CPU instead of
// chains of libtorch operations.
//
// # Host memory
//
// Every process that links this package keeps its C heap: when the binary
// loads (before the Go runtime starts threads, which matters because a
// thread picks its malloc arena at its first allocation), glibc is told to
// use one arena, never to serve a block with its own mmap and never to trim
// the heap. libtorch's CPU allocator is plain malloc, and by default glibc
// maps every block above 32 MiB afresh and unmaps it on free, so each
// batch's vocabulary-sized tensors cost hundreds of thousands of page
// faults: on the benchmark model 40% of the process's time was in the
// kernel, and 6% once the heap is kept. The price is that the process
// holds its peak C heap until it exits, which for a classifier worker is
// its steady state. EMOFLOW_HOST_MEMORY=release keeps glibc's defaults;
// HostMemory says which applies.
package tensor

/*
#include <stdlib.h>
// Defined in gotch's libtch (torch_api.cpp), which every binary that imports
// this package links; libtch has no Go wrappers for them.
int at_get_num_threads();
void at_set_num_threads(int n_threads);
*/
import "C"

import (
	"fmt"
	"runtime"
	"slices"
	"strings"
	"unsafe"

	lib "github.com/sugarme/gotch/libtch"
)

// DType is an element type, numbered as libtorch's ScalarType.
type DType int32

// The element types the engine uses.
const (
	Uint8    DType = 0
	Int8     DType = 1
	Int16    DType = 2
	Int32    DType = 3
	Int64    DType = 4
	Float16  DType = 5
	Float32  DType = 6
	Float64  DType = 7
	Bool     DType = 11
	BFloat16 DType = 15
)

// Size is the number of bytes of one element.
func (d DType) Size() int {
	switch d {
	case Uint8, Int8, Bool:
		return 1
	case Int16, Float16, BFloat16:
		return 2
	case Int32, Float32:
		return 4
	case Int64, Float64:
		return 8
	}
	return 0
}

func (d DType) String() string {
	switch d {
	case Uint8:
		return "uint8"
	case Int8:
		return "int8"
	case Int16:
		return "int16"
	case Int32:
		return "int32"
	case Int64:
		return "int64"
	case Float16:
		return "float16"
	case Float32:
		return "float32"
	case Float64:
		return "float64"
	case Bool:
		return "bool"
	case BFloat16:
		return "bfloat16"
	}
	return fmt.Sprintf("dtype(%d)", int32(d))
}

// ParseDType reads the names String returns, plus the short forms fp32,
// fp16, bf16, f32, f16.
func ParseDType(s string) (DType, error) {
	switch strings.ToLower(s) {
	case "float32", "fp32", "f32", "float":
		return Float32, nil
	case "float16", "fp16", "f16", "half":
		return Float16, nil
	case "bfloat16", "bf16":
		return BFloat16, nil
	}
	return 0, fmt.Errorf("unknown compute dtype %q (want float32, float16 or bfloat16)", s)
}

// Device is where tensors live: the CPU, or CUDA device n.
type Device struct {
	cuda  bool
	index int
}

// CPU is the host.
var CPU = Device{}

// CUDA returns CUDA device n.
func CUDA(n int) Device { return Device{cuda: true, index: n} }

// ParseDevice reads "cpu", "cuda" or "cuda:N".
func ParseDevice(s string) (Device, error) {
	switch {
	case strings.EqualFold(s, "cpu"):
		return CPU, nil
	case strings.EqualFold(s, "cuda"):
		return CUDA(0), nil
	case strings.HasPrefix(strings.ToLower(s), "cuda:"):
		var n int
		if _, err := fmt.Sscanf(s[5:], "%d", &n); err != nil || n < 0 {
			return Device{}, fmt.Errorf("bad device %q (want cpu, cuda or cuda:N)", s)
		}
		return CUDA(n), nil
	}
	return Device{}, fmt.Errorf("bad device %q (want cpu, cuda or cuda:N)", s)
}

func (d Device) String() string {
	if d.cuda {
		return fmt.Sprintf("cuda:%d", d.index)
	}
	return "cpu"
}

// IsCUDA reports whether d is a CUDA device.
func (d Device) IsCUDA() bool { return d.cuda }

func (d Device) c() int32 {
	if d.cuda {
		return int32(d.index)
	}
	return -1
}

// CUDADevices is the number of CUDA devices libtorch can use (0 on a CPU build).
func CUDADevices() int { return int(lib.AtcCudaDeviceCount()) }

// Tensor is a handle to a libtorch tensor. Tensors made by a Scope's
// operations belong to that Scope; tensors returned by Keep belong to the
// caller, who must Free them.
type Tensor struct {
	c lib.Ctensor
}

// Free releases a tensor the caller owns. Freeing nil is a no-op.
func (t *Tensor) Free() {
	if t != nil && t.c != nil {
		lib.AtFree(t.c)
		t.c = nil
	}
}

// Shape returns the size of every dimension; nil for a nil tensor (the
// result of an operation that failed: its scope holds the error).
func (t *Tensor) Shape() []int64 {
	if t == nil || t.c == nil {
		return nil
	}
	n := lib.AtDim(t.c)
	shape := make([]int64, n)
	if n > 0 {
		lib.AtShape(t.c, unsafe.Pointer(&shape[0]))
	}
	return shape
}

// Dim is the number of dimensions.
func (t *Tensor) Dim() int { return int(lib.AtDim(t.c)) }

// Size returns the size of dimension d (negative d counts from the end).
func (t *Tensor) Size(d int) int64 {
	s := t.Shape()
	if d < 0 {
		d += len(s)
	}
	return s[d]
}

// DType is the element type.
func (t *Tensor) DType() DType { return DType(lib.AtScalarType(t.c)) }

// Numel is the number of elements.
func (t *Tensor) Numel() int64 {
	n := int64(1)
	for _, s := range t.Shape() {
		n *= s
	}
	return n
}

// Error is a failed tensor operation.
type Error struct {
	Op  string
	Msg string
}

func (e *Error) Error() string { return fmt.Sprintf("tensor %s: %s", e.Op, e.Msg) }

// lastError returns libtorch's pending error on this OS thread, if any.
// Only the first line of libtorch's message is kept: the rest is a C++
// backtrace.
func lastError(op string) error {
	p := lib.GetAndResetLastErr()
	if p == nil {
		return nil
	}
	msg := goStringFree(unsafe.Pointer(p))
	if msg == "" {
		return nil
	}
	if i := strings.Index(msg, "\nException raised from"); i > 0 {
		msg = msg[:i]
	}
	return &Error{Op: op, Msg: strings.TrimSpace(msg)}
}

// Scope owns the tensors its operations create. It is not safe for
// concurrent use: one goroutine, locked to its OS thread from NewScope to
// Close.
type Scope struct {
	owned []lib.Ctensor
	err   error
	// grad is true while autograd records (SetGrad): training computes
	// with libtorch's own operations only, as its references do (see the
	// fused operations in kernels.go).
	grad bool
	// threads is the OS thread's intra-op thread count before UseThreads
	// (0: unchanged).
	threads int
}

// NewScope locks the calling goroutine to its OS thread and returns an empty
// scope. Close it on the same goroutine.
func NewScope() *Scope {
	runtime.LockOSThread()
	_ = lib.AtGradSetEnabled(0) // inference only: libtorch keeps this per thread
	return &Scope{owned: make([]lib.Ctensor, 0, 256)}
}

// Close frees every tensor the scope still owns and unlocks the thread.
func (s *Scope) Close() {
	for _, c := range s.owned {
		if c != nil {
			lib.AtFree(c)
		}
	}
	s.owned = nil
	s.restoreThreads()
	runtime.UnlockOSThread()
}

// Err is the first error of any operation in the scope.
func (s *Scope) Err() error { return s.err }

// Fail records err as the scope's error unless one is already recorded;
// model code uses it for its own checks (a shape it did not expect).
func (s *Scope) Fail(err error) {
	if s.err == nil && err != nil {
		s.err = err
	}
}

// Keep takes t out of the scope: the caller owns it and must Free it.
func (s *Scope) Keep(t *Tensor) *Tensor {
	if t == nil {
		return nil
	}
	for i := len(s.owned) - 1; i >= 0; i-- {
		if s.owned[i] == t.c {
			s.owned[i] = nil
			return &Tensor{c: t.c}
		}
	}
	// Not made by this scope: share it (libtorch reference counting).
	return &Tensor{c: lib.AtShallowClone(t.c)}
}

// Drop frees t now instead of at Close: long loops use it to bound memory.
func (s *Scope) Drop(ts ...*Tensor) {
	for _, t := range ts {
		if t == nil {
			continue
		}
		for i := len(s.owned) - 1; i >= 0; i-- {
			if s.owned[i] == t.c {
				lib.AtFree(t.c)
				s.owned[i] = nil
				break
			}
		}
	}
	// Compact the nils away now and then so Drop stays cheap.
	if len(s.owned) > 1024 {
		live := s.owned[:0]
		for _, c := range s.owned {
			if c != nil {
				live = append(live, c)
			}
		}
		s.owned = live
	}
}

// Mark is a point in a scope's life: Release frees what the scope made
// after it.
type Mark int

// Mark returns the current point, for Release.
func (s *Scope) Mark() Mark { return Mark(len(s.owned)) }

// Release frees every tensor the scope made since m except keep, which the
// scope goes on owning. A forward pass releases each layer's intermediate
// results when the layer ends, so that the next layer's allocations reuse
// memory that is still in cache instead of fresh pages.
func (s *Scope) Release(m Mark, keep ...*Tensor) {
	if int(m) > len(s.owned) {
		return // Drop compacted the list since m: nothing to tell apart
	}
	live := s.owned[:m]
	for _, c := range s.owned[m:] {
		if c == nil {
			continue
		}
		if slices.ContainsFunc(keep, func(t *Tensor) bool { return t != nil && t.c == c }) {
			live = append(live, c)
			continue
		}
		lib.AtFree(c)
	}
	clear(s.owned[len(live):])
	s.owned = live
}

// ready reports whether an operation may run: no earlier error and no nil
// input.
func (s *Scope) ready(op string, in ...*Tensor) bool {
	if s.err != nil {
		return false
	}
	for _, t := range in {
		if t == nil || t.c == nil {
			s.err = &Error{Op: op, Msg: "nil input tensor"}
			return false
		}
	}
	return true
}

// run calls f, which writes its result(s) through out, and takes ownership
// of n results.
func (s *Scope) run(op string, n int, f func(out *lib.Ctensor)) []*Tensor {
	out := make([]lib.Ctensor, n)
	f(&out[0])
	if err := lastError(op); err != nil {
		s.err = err
		for _, c := range out {
			if c != nil {
				lib.AtFree(c)
			}
		}
		return nil
	}
	res := make([]*Tensor, n)
	for i, c := range out {
		s.owned = append(s.owned, c)
		res[i] = &Tensor{c: c}
	}
	return res
}

func (s *Scope) run1(op string, f func(out *lib.Ctensor)) *Tensor {
	r := s.run(op, 1, f)
	if r == nil {
		return nil
	}
	return r[0]
}

// withScalar passes a libtorch scalar made of v to f and frees it after.
func withScalar(v float64, f func(lib.Cscalar)) {
	sc := lib.AtsFloat(v)
	defer lib.AtsFree(sc)
	f(sc)
}

// SetThreads sets libtorch's intra-op thread count (OpenMP threads), for
// the whole process.
func SetThreads(n int) {
	if n > 0 {
		C.at_set_num_threads(C.int(n))
	}
}

// Threads is libtorch's intra-op thread count.
func Threads() int { return int(C.at_get_num_threads()) }

// goStringFree copies a C string libtorch allocated with strdup and frees it.
func goStringFree(p unsafe.Pointer) string {
	s := C.GoString((*C.char)(p))
	C.free(p)
	return s
}
