package safetensors

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func f32(vs ...float32) []byte {
	b := make([]byte, 4*len(vs))
	for i, v := range vs {
		binary.LittleEndian.PutUint32(b[4*i:], math.Float32bits(v))
	}
	return b
}

func TestRoundTrip(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "model.safetensors")
	in := []Tensor{
		{Name: "a", DType: "F32", Shape: []int64{2, 2}, Data: f32(1, 2, 3, 4)},
		{Name: "b", DType: "BF16", Shape: []int64{3}, Data: []byte{1, 2, 3, 4, 5, 6}},
	}
	if err := Write(p, in, map[string]string{"format": "pt"}); err != nil {
		t.Fatal(err)
	}
	f, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if got := strings.Join(f.Names(), ","); got != "a,b" {
		t.Fatalf("names = %s", got)
	}
	if f.Metadata["format"] != "pt" {
		t.Fatalf("metadata = %v", f.Metadata)
	}
	for _, want := range in {
		info, ok := f.Info(want.Name)
		if !ok || info.DType != want.DType || len(info.Shape) != len(want.Shape) {
			t.Fatalf("info %s = %+v", want.Name, info)
		}
		got, err := f.Bytes(want.Name)
		if err != nil || string(got) != string(want.Data) {
			t.Fatalf("bytes %s = %v, %v", want.Name, got, err)
		}
	}
	if (8+int(binary.LittleEndian.Uint64(mustRead(t, p)[:8])))%8 != 0 {
		t.Fatal("data section not 8-byte aligned")
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// raw writes a file from a header map and data bytes, bypassing Write's checks.
func raw(t *testing.T, header map[string]any, data []byte) string {
	t.Helper()
	hj, _ := json.Marshal(header)
	b := make([]byte, 8)
	binary.LittleEndian.PutUint64(b, uint64(len(hj)))
	b = append(append(b, hj...), data...)
	p := filepath.Join(t.TempDir(), "x.safetensors")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestOpenRejectsBadFiles(t *testing.T) {
	ok := map[string]any{"w": map[string]any{"dtype": "F32", "shape": []int{2}, "data_offsets": []int{0, 8}}}
	cases := map[string]struct {
		path string
		want string
	}{
		"truncated data": {raw(t, ok, make([]byte, 4)), "outside"},
		"size mismatch":  {raw(t, map[string]any{"w": map[string]any{"dtype": "F32", "shape": []int{3}, "data_offsets": []int{0, 8}}}, make([]byte, 8)), "want 12"},
		"unknown dtype":  {raw(t, map[string]any{"w": map[string]any{"dtype": "Q4", "shape": []int{2}, "data_offsets": []int{0, 8}}}, make([]byte, 8)), "unsupported dtype"},
		"overlap": {raw(t, map[string]any{
			"a": map[string]any{"dtype": "F32", "shape": []int{2}, "data_offsets": []int{0, 8}},
			"b": map[string]any{"dtype": "F32", "shape": []int{2}, "data_offsets": []int{4, 12}},
		}, make([]byte, 12)), "overlap"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			f, err := Open(c.path)
			if err == nil {
				f.Close()
				t.Fatal("opened")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not mention %q", err, c.want)
			}
		})
	}
	// Header length larger than the file, and a file that is not JSON.
	p := filepath.Join(t.TempDir(), "bad.safetensors")
	b := make([]byte, 16)
	binary.LittleEndian.PutUint64(b, 1000)
	os.WriteFile(p, b, 0o644)
	if _, err := Open(p); err == nil || !strings.Contains(err.Error(), "truncated") {
		t.Fatalf("huge header length: %v", err)
	}
	binary.LittleEndian.PutUint64(b, 8)
	copy(b[8:], "not json")
	os.WriteFile(p, b, 0o644)
	if _, err := Open(p); err == nil || !strings.Contains(err.Error(), "JSON") {
		t.Fatalf("non-JSON header: %v", err)
	}
}

func TestOpenSetSharded(t *testing.T) {
	dir := t.TempDir()
	if err := Write(filepath.Join(dir, "model-00001-of-00002.safetensors"), []Tensor{{Name: "a", DType: "F32", Shape: []int64{1}, Data: f32(1)}}, nil); err != nil {
		t.Fatal(err)
	}
	if err := Write(filepath.Join(dir, "model-00002-of-00002.safetensors"), []Tensor{{Name: "b", DType: "F32", Shape: []int64{1}, Data: f32(2)}}, nil); err != nil {
		t.Fatal(err)
	}
	idx := `{"metadata":{},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}`
	os.WriteFile(filepath.Join(dir, "model.safetensors.index.json"), []byte(idx), 0o644)
	s, err := OpenSet(dir, "model")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := strings.Join(s.Names(), ","); got != "a,b" {
		t.Fatalf("names = %s", got)
	}
	b, err := s.Bytes("b")
	if err != nil || string(b) != string(f32(2)) {
		t.Fatalf("b = %v %v", b, err)
	}

	// An index that points a tensor at the wrong shard is refused.
	bad := `{"weight_map":{"a":"model-00002-of-00002.safetensors"}}`
	os.WriteFile(filepath.Join(dir, "model.safetensors.index.json"), []byte(bad), 0o644)
	if _, err := OpenSet(dir, "model"); err == nil {
		t.Fatal("wrong shard accepted")
	}
	if _, err := OpenSet(t.TempDir(), "model"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("empty folder: %v", err)
	}
}

// TestEmptyTensorSharingAnOffsetOpens: an empty tensor at the start of
// another (as Write lays them out) overlaps nothing, whatever order the
// header's map hands the tensors in (the fuzzer found a false "overlap").
func TestEmptyTensorSharingAnOffsetOpens(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.safetensors")
	tensors := []Tensor{
		{Name: "a", DType: "F32", Shape: []int64{2, 2}, Data: make([]byte, 16)},
		{Name: "empty", DType: "I64", Shape: []int64{0, 5}},
		{Name: "m", DType: "BF16", Shape: []int64{3}, Data: make([]byte, 6)},
	}
	if err := Write(path, tensors, nil); err != nil {
		t.Fatal(err)
	}
	for range 50 { // map iteration order differs from one Open to the next
		f, err := Open(path)
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
}
