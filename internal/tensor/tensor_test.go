package tensor

import (
	"errors"
	"math"
	"runtime"
	"slices"
	"testing"
)

// TestMatmulThroughLibtorch runs real tensor work through gotch and libtorch.
func TestMatmulThroughLibtorch(t *testing.T) {
	s := NewScope()
	defer s.Close()
	a := s.FromFloat32([]float32{1, 2, 3, 4, 5, 6}, []int64{2, 3}, CPU)
	b := s.FromFloat32([]float32{1, 0, 0, 1, 1, 1}, []int64{3, 2}, CPU)
	got := s.Float32s(s.Matmul(a, b))
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	want := []float32{4, 5, 10, 11}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("matmul = %v, want %v", got, want)
		}
	}
}

func TestErrorsAreKeptNotFatal(t *testing.T) {
	s := NewScope()
	defer s.Close()
	a := s.FromFloat32([]float32{1, 2, 3}, []int64{1, 3}, CPU)
	b := s.FromFloat32([]float32{1, 2}, []int64{2, 1}, CPU)
	c := s.Matmul(a, b) // 1x3 · 2x1: shapes do not fit
	if c != nil {
		t.Fatal("a failed op returned a tensor")
	}
	var te *Error
	if err := s.Err(); !errors.As(err, &te) || te.Op != "matmul" {
		t.Fatalf("Err() = %v, want a matmul *Error", err)
	}
	// Later operations are no-ops and keep the first error.
	if s.Add(a, a) != nil || s.Err().(*Error).Op != "matmul" {
		t.Fatal("operation after a failure ran or replaced the first error")
	}
}

func TestKeepOutlivesScope(t *testing.T) {
	s := NewScope()
	kept := s.Keep(s.Scale(s.FromFloat32([]float32{1, 2}, []int64{2}, CPU), 3))
	s.Close()
	defer kept.Free()
	s2 := NewScope()
	defer s2.Close()
	if got := s2.Float32s(kept); len(got) != 2 || got[0] != 3 || got[1] != 6 {
		t.Fatalf("kept tensor = %v, want [3 6]", got)
	}
}

func TestReleaseFreesWhatCameAfterTheMarkButKeep(t *testing.T) {
	s := NewScope()
	defer s.Close()
	before := s.FromFloat32([]float32{1, 2}, []int64{2}, CPU)
	mark := s.Mark()
	dead := s.Scale(before, 2)
	kept := s.Scale(dead, 3)
	s.Scale(kept, 5)
	s.Release(mark, kept)
	if n := len(s.owned); n != 2 {
		t.Fatalf("scope owns %d tensors after Release, want 2 (before and kept)", n)
	}
	if !slices.Contains(s.owned, before.c) || !slices.Contains(s.owned, kept.c) || slices.Contains(s.owned, dead.c) {
		t.Fatal("Release freed the wrong tensors")
	}
	if got := s.Float32s(s.Add(before, kept)); len(got) != 2 || got[0] != 7 || got[1] != 14 {
		t.Fatalf("before + kept = %v, want [7 14]", got)
	}
}

func TestAllFinite(t *testing.T) {
	s := NewScope()
	defer s.Close()
	for _, tc := range []struct {
		v    float32
		want bool
	}{{1, true}, {float32(math.NaN()), false}, {float32(math.Inf(1)), false}, {float32(math.Inf(-1)), false}} {
		x := s.FromFloat32([]float32{0, tc.v, 2}, []int64{3}, CPU)
		if got := s.AllFinite(s.ToDType(x, BFloat16)); got != tc.want {
			t.Errorf("AllFinite([0 %v 2]) = %v, want %v", tc.v, got, tc.want)
		}
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
}

func TestFromBytesRejectsWrongSize(t *testing.T) {
	s := NewScope()
	defer s.Close()
	if s.FromBytes(make([]byte, 10), Float32, []int64{3}, CPU) != nil || s.Err() == nil {
		t.Fatal("10 bytes accepted as three float32")
	}
}

func TestUseThreadsIsPerThreadAndRestored(t *testing.T) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	SetThreads(2)
	before := Threads()
	if before != 2 {
		t.Fatalf("SetThreads(2): Threads() = %d", before)
	}
	s := NewScope()
	if err := s.UseThreads(1); err != nil {
		t.Fatal(err)
	}
	if got := Threads(); got != 1 {
		t.Fatalf("after UseThreads(1): Threads() = %d, want 1", got)
	}
	// Another OS thread keeps the process default.
	other := make(chan int)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		other <- Threads()
	}()
	if got := <-other; got != 2 {
		t.Errorf("another thread sees %d intra-op threads, want the default 2", got)
	}
	// Operations still compute on the narrowed thread.
	a := s.FromFloat32([]float32{1, 2, 3, 4}, []int64{2, 2}, CPU)
	if got := s.Float32s(s.Matmul(a, a)); !slices.Equal(got, []float32{7, 10, 15, 22}) {
		t.Errorf("matmul on one thread = %v", got)
	}
	s.Close()
	if got := Threads(); got != before {
		t.Errorf("after Close: Threads() = %d, want %d restored", got, before)
	}
	s2 := NewScope()
	defer s2.Close()
	if err := s2.UseThreads(0); err == nil {
		t.Error("UseThreads(0) accepted")
	}
}
