package safetensors

import (
	"bytes"
	"encoding/binary"
	"maps"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
)

// fileBytes is a safetensors file with the given JSON header and data.
func fileBytes(header string, data []byte) []byte {
	b := binary.LittleEndian.AppendUint64(nil, uint64(len(header)))
	return append(append(b, header...), data...)
}

// FuzzOpen opens files of arbitrary bytes. A refusal says "safetensors"; an
// opened file's tensors each have exactly the bytes their dtype and shape
// need, inside the file and apart, the file written again from them opens
// to the same tensors and metadata, and the file cut inside its header (or
// by the last byte of the tensor that ends it) is refused.
func FuzzOpen(f *testing.F) {
	dir := f.TempDir()
	good := filepath.Join(dir, "good.safetensors")
	err := Write(good, []Tensor{
		{Name: "a", DType: "F32", Shape: []int64{2, 2}, Data: f32(1, 2, 3, 4)},
		{Name: "b", DType: "BF16", Shape: []int64{3}, Data: []byte{1, 2, 3, 4, 5, 6}},
		{Name: "empty", DType: "I64", Shape: []int64{0, 5}, Data: nil},
	}, map[string]string{"format": "pt"})
	if err != nil {
		f.Fatal(err)
	}
	raw, err := os.ReadFile(good)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(raw)
	f.Add(fileBytes(`{}`, nil))
	f.Add(fileBytes(`{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}`, make([]byte, 4)))
	f.Add(fileBytes(`{"__metadata__":{"k":"v"},"s":{"dtype":"U8","shape":[],"data_offsets":[1,2]}}`, []byte{7, 9}))
	path := filepath.Join(dir, "x.safetensors")
	again := filepath.Join(dir, "again.safetensors")
	cutPath := filepath.Join(dir, "cut.safetensors")
	f.Fuzz(func(t *testing.T, data []byte) {
		sf := open(t, path, data)
		if sf == nil {
			return
		}
		defer sf.Close()
		var tensors []Tensor
		dataLen := int64(len(data)) - sf.dataOff
		var infos []TensorInfo
		for _, name := range sf.Names() {
			info, _ := sf.Info(name)
			b, err := sf.Bytes(name)
			if err != nil {
				t.Fatal(err)
			}
			es := int64(DTypeSize(info.DType))
			n := int64(len(b))
			// In big integers, so that an overflowing product cannot hide.
			need := big.NewInt(es)
			for _, d := range info.Shape {
				need.Mul(need, big.NewInt(d))
			}
			if need.Cmp(big.NewInt(n)) != 0 || slices.ContainsFunc(info.Shape, func(d int64) bool { return d < 0 }) {
				t.Fatalf("tensor %q: shape %v of %s in %d bytes", name, info.Shape, info.DType, n)
			}
			if es == 0 || n != info.Numel()*es || info.Numel() > dataLen/es || info.begin < 0 || info.end > dataLen {
				t.Fatalf("tensor %q: %d bytes [%d, %d) for shape %v of %s in %d data bytes", name, n, info.begin, info.end, info.Shape, info.DType, dataLen)
			}
			infos = append(infos, info)
			tensors = append(tensors, Tensor{Name: name, DType: info.DType, Shape: info.Shape, Data: bytes.Clone(b)})
		}
		sort.Slice(infos, func(i, j int) bool {
			return infos[i].begin < infos[j].begin || infos[i].begin == infos[j].begin && infos[i].end < infos[j].end
		})
		for i := 1; i < len(infos); i++ {
			if infos[i].begin < infos[i-1].end {
				t.Fatalf("tensors %q and %q overlap", infos[i-1].Name, infos[i].Name)
			}
		}
		if err := Write(again, tensors, sf.Metadata); err != nil {
			t.Fatalf("write the tensors again: %v", err)
		}
		sf2, err := Open(again)
		if err != nil {
			t.Fatalf("open the file written again: %v", err)
		}
		defer sf2.Close()
		if !slices.Equal(sf2.Names(), sf.Names()) || !maps.Equal(sf2.Metadata, sf.Metadata) {
			t.Fatalf("written again: tensors %v metadata %v, want %v %v", sf2.Names(), sf2.Metadata, sf.Names(), sf.Metadata)
		}
		for _, want := range tensors {
			info, _ := sf2.Info(want.Name)
			b, err := sf2.Bytes(want.Name)
			if err != nil || info.DType != want.DType || !slices.Equal(info.Shape, want.Shape) || !bytes.Equal(b, want.Data) {
				t.Fatalf("tensor %q written again: %+v %v", want.Name, info, err)
			}
		}
		// Cut inside the header, or by the last byte of the tensor that ends
		// the file.
		if cut := open(t, cutPath, data[:sf.dataOff-1]); cut != nil {
			cut.Close()
			t.Fatal("opened the file cut inside its header")
		}
		if len(infos) > 0 && infos[len(infos)-1].end == dataLen && dataLen > infos[len(infos)-1].begin {
			if cut := open(t, cutPath, data[:len(data)-1]); cut != nil {
				cut.Close()
				t.Fatalf("opened the file cut by the last byte of tensor %q", infos[len(infos)-1].Name)
			}
		}
	})
}

// open writes data to path and opens it; nil when Open refuses it, with an
// error that says what it is.
func open(t *testing.T, path string, data []byte) *File {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(err)
	}
	sf, err := Open(path)
	if err != nil {
		if sf != nil || !strings.Contains(err.Error(), "safetensors") {
			t.Fatalf("Open: %v, %v", sf, err)
		}
		return nil
	}
	return sf
}

// FuzzOpenSet reads arbitrary index files over two valid shards: a
// checkpoint it opens maps every tensor to a shard that holds it, and only
// the shards' tensors.
func FuzzOpenSet(f *testing.F) {
	dir := f.TempDir()
	shards := map[string]string{"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}
	for i, name := range []string{"a", "b"} {
		if err := Write(filepath.Join(dir, shards[name]), []Tensor{{Name: name, DType: "F32", Shape: []int64{1}, Data: f32(float32(i))}}, nil); err != nil {
			f.Fatal(err)
		}
	}
	f.Add([]byte(`{"metadata":{},"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}`))
	f.Add([]byte(`{"weight_map":{"a":"model-00002-of-00002.safetensors"}}`))
	f.Add([]byte(`{"weight_map":{"a":"../model-00001-of-00002.safetensors"}}`))
	f.Add([]byte(`{"weight_map":{"a":"model.safetensors.index.json"}}`))
	f.Fuzz(func(t *testing.T, index []byte) {
		if err := os.WriteFile(filepath.Join(dir, "model.safetensors.index.json"), index, 0o644); err != nil {
			t.Fatal(err)
		}
		s, err := OpenSet(dir, "model")
		if err != nil {
			return
		}
		defer s.Close()
		names := s.Names()
		if len(names) == 0 {
			t.Fatal("opened a checkpoint without tensors")
		}
		for _, name := range names {
			if _, ok := shards[name]; !ok {
				t.Fatalf("tensor %q is in no shard", name)
			}
			if _, ok := s.Info(name); !ok {
				t.Fatalf("no info for %q", name)
			}
			if b, err := s.Bytes(name); err != nil || len(b) != 4 {
				t.Fatalf("tensor %q: %d bytes, %v", name, len(b), err)
			}
		}
	})
}
