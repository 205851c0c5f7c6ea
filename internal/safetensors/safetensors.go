// Package safetensors reads and writes the safetensors checkpoint format
// (https://huggingface.co/docs/safetensors): an 8-byte little-endian header
// length, a JSON header naming every tensor's dtype, shape and byte range,
// then the raw little-endian data. Files are memory-mapped, so opening a
// multi-gigabyte shard costs no Go heap. gotch has no reader for the format.
package safetensors

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"syscall"
)

// TensorInfo describes one tensor of a file.
type TensorInfo struct {
	Name  string
	DType string // safetensors dtype name: F32, F16, BF16, I64, ...
	Shape []int64
	begin int64
	end   int64
}

// Numel is the number of elements.
func (t TensorInfo) Numel() int64 {
	n := int64(1)
	for _, d := range t.Shape {
		n *= d
	}
	return n
}

// DTypeSize is the size in bytes of one element of a safetensors dtype, or
// 0 for a dtype this package does not know.
func DTypeSize(dtype string) int {
	switch dtype {
	case "BOOL", "U8", "I8", "F8_E4M3", "F8_E5M2":
		return 1
	case "I16", "U16", "F16", "BF16":
		return 2
	case "I32", "U32", "F32":
		return 4
	case "I64", "U64", "F64":
		return 8
	}
	return 0
}

// File is an open safetensors file.
type File struct {
	path     string
	data     []byte // the whole file, memory-mapped
	dataOff  int64  // where the tensor data starts
	tensors  map[string]TensorInfo
	Metadata map[string]string
}

// maxHeaderBytes bounds the JSON header; real checkpoints have headers of a
// few hundred kilobytes.
const maxHeaderBytes = 100 << 20

// Open maps path and checks its header: every tensor's byte range must lie
// inside the file, match its dtype and shape, and not overlap another.
func Open(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	size := st.Size()
	if size < 8 {
		return nil, fmt.Errorf("safetensors %s: file of %d bytes is too short for a header", path, size)
	}
	data, err := syscall.Mmap(int(f.Fd()), 0, int(size), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("safetensors %s: mmap: %w", path, err)
	}
	sf := &File{path: path, data: data}
	if err := sf.parseHeader(); err != nil {
		_ = syscall.Munmap(data)
		return nil, fmt.Errorf("safetensors %s: %w", path, err)
	}
	return sf, nil
}

func (f *File) parseHeader() error {
	n := binary.LittleEndian.Uint64(f.data[:8])
	if n == 0 || n > maxHeaderBytes || n > uint64(len(f.data)-8) {
		return fmt.Errorf("header length %d does not fit a file of %d bytes (truncated or not a safetensors file)", n, len(f.data))
	}
	f.dataOff = 8 + int64(n)
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(f.data[8:f.dataOff], &raw); err != nil {
		return fmt.Errorf("header is not valid JSON: %w", err)
	}
	f.tensors = make(map[string]TensorInfo, len(raw))
	dataLen := int64(len(f.data)) - f.dataOff
	var ranges []TensorInfo
	for name, msg := range raw {
		if name == "__metadata__" {
			if err := json.Unmarshal(msg, &f.Metadata); err != nil {
				return fmt.Errorf("__metadata__: %w", err)
			}
			continue
		}
		var h struct {
			DType       string  `json:"dtype"`
			Shape       []int64 `json:"shape"`
			DataOffsets []int64 `json:"data_offsets"`
		}
		if err := json.Unmarshal(msg, &h); err != nil {
			return fmt.Errorf("tensor %q: %w", name, err)
		}
		es := DTypeSize(h.DType)
		if es == 0 {
			return fmt.Errorf("tensor %q: unsupported dtype %q", name, h.DType)
		}
		if len(h.DataOffsets) != 2 {
			return fmt.Errorf("tensor %q: data_offsets must have 2 entries", name)
		}
		numel := int64(1)
		for _, d := range h.Shape {
			if d < 0 || (d > 0 && numel > math.MaxInt64/d) {
				return fmt.Errorf("tensor %q: bad shape %v", name, h.Shape)
			}
			numel *= d
		}
		// Checked too, or a huge shape whose byte count wraps to the range's
		// length would pass the check below.
		if numel > math.MaxInt64/int64(es) {
			return fmt.Errorf("tensor %q: shape %v of %s is too large", name, h.Shape, h.DType)
		}
		b, e := h.DataOffsets[0], h.DataOffsets[1]
		if b < 0 || e < b || e > dataLen {
			return fmt.Errorf("tensor %q: byte range [%d, %d) outside the %d data bytes (truncated file?)", name, b, e, dataLen)
		}
		if e-b != numel*int64(es) {
			return fmt.Errorf("tensor %q: %d bytes for shape %v of %s (want %d)", name, e-b, h.Shape, h.DType, numel*int64(es))
		}
		ti := TensorInfo{Name: name, DType: h.DType, Shape: h.Shape, begin: b, end: e}
		f.tensors[name] = ti
		ranges = append(ranges, ti)
	}
	// By start, then end: an empty tensor at the start of another (as
	// Write places them, and the format's contiguous layout allows) comes
	// first and overlaps nothing.
	sort.Slice(ranges, func(i, j int) bool {
		return ranges[i].begin < ranges[j].begin || ranges[i].begin == ranges[j].begin && ranges[i].end < ranges[j].end
	})
	for i := 1; i < len(ranges); i++ {
		if ranges[i].begin < ranges[i-1].end {
			return fmt.Errorf("tensors %q and %q overlap", ranges[i-1].Name, ranges[i].Name)
		}
	}
	return nil
}

// Path is the file's path.
func (f *File) Path() string { return f.path }

// Names lists the tensors, sorted.
func (f *File) Names() []string {
	names := make([]string, 0, len(f.tensors))
	for n := range f.tensors {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Info describes tensor name.
func (f *File) Info(name string) (TensorInfo, bool) {
	t, ok := f.tensors[name]
	return t, ok
}

// Bytes returns tensor name's raw data. The slice aliases the mapping: it
// is valid until Close and must not be written.
func (f *File) Bytes(name string) ([]byte, error) {
	t, ok := f.tensors[name]
	if !ok {
		return nil, fmt.Errorf("safetensors %s: no tensor %q", f.path, name)
	}
	return f.data[f.dataOff+t.begin : f.dataOff+t.end], nil
}

// Close unmaps the file.
func (f *File) Close() error {
	if f.data == nil {
		return nil
	}
	err := syscall.Munmap(f.data)
	f.data = nil
	return err
}

// Tensor is one tensor to write.
type Tensor struct {
	Name  string
	DType string
	Shape []int64
	Data  []byte
}

// Write writes tensors (and optional metadata) to path in safetensors
// format, through a temporary file renamed into place.
func Write(path string, tensors []Tensor, metadata map[string]string) error {
	header := map[string]any{}
	if len(metadata) > 0 {
		header["__metadata__"] = metadata
	}
	var off int64
	for _, t := range tensors {
		es := DTypeSize(t.DType)
		n := int64(1)
		for _, d := range t.Shape {
			n *= d
		}
		if es == 0 || int64(len(t.Data)) != n*int64(es) {
			return fmt.Errorf("safetensors: tensor %q: %d bytes for shape %v of %s", t.Name, len(t.Data), t.Shape, t.DType)
		}
		if _, dup := header[t.Name]; dup {
			return fmt.Errorf("safetensors: tensor %q written twice", t.Name)
		}
		header[t.Name] = map[string]any{"dtype": t.DType, "shape": t.Shape, "data_offsets": []int64{off, off + int64(len(t.Data))}}
		off += int64(len(t.Data))
	}
	hj, err := json.Marshal(header)
	if err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	// Pad the header with spaces so the data starts 8-byte aligned.
	for (8+len(hj))%8 != 0 {
		hj = append(hj, ' ')
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".safetensors-*")
	if err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	defer os.Remove(tmp.Name())
	var lenBuf [8]byte
	binary.LittleEndian.PutUint64(lenBuf[:], uint64(len(hj)))
	w := bufio.NewWriterSize(tmp, 1<<20)
	_, err = w.Write(lenBuf[:])
	if err == nil {
		_, err = w.Write(hj)
	}
	for _, t := range tensors {
		if err == nil {
			_, err = w.Write(t.Data)
		}
	}
	if err == nil {
		err = w.Flush()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp.Name(), 0o644)
	}
	if err != nil {
		return fmt.Errorf("safetensors: write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("safetensors: %w", err)
	}
	return nil
}

// ErrNotFound is returned by OpenSet for a folder without the checkpoint.
var ErrNotFound = errors.New("not found")

// Set is the safetensors files of one checkpoint: a single NAME.safetensors
// or the shards that NAME.safetensors.index.json maps tensors to.
type Set struct {
	files []*File
	where map[string]*File
}

// OpenSet opens checkpoint name ("model", "adapter_model") in dir. The error
// wraps ErrNotFound when neither form is there.
func OpenSet(dir, name string) (*Set, error) {
	index := filepath.Join(dir, name+".safetensors.index.json")
	single := filepath.Join(dir, name+".safetensors")
	s := &Set{where: map[string]*File{}}
	if raw, err := os.ReadFile(index); err == nil {
		var idx struct {
			WeightMap map[string]string `json:"weight_map"`
		}
		if err := json.Unmarshal(raw, &idx); err != nil {
			return nil, fmt.Errorf("safetensors %s: %w", index, err)
		}
		if len(idx.WeightMap) == 0 {
			return nil, fmt.Errorf("safetensors %s: empty weight_map", index)
		}
		shards := map[string]*File{}
		for tensor, shard := range idx.WeightMap {
			if filepath.Base(shard) != shard {
				s.Close()
				return nil, fmt.Errorf("safetensors %s: shard %q is not a file name in the same folder", index, shard)
			}
			f, ok := shards[shard]
			if !ok {
				f, err = Open(filepath.Join(dir, shard))
				if err != nil {
					s.Close()
					return nil, err
				}
				shards[shard] = f
				s.files = append(s.files, f)
			}
			if _, ok := f.Info(tensor); !ok {
				s.Close()
				return nil, fmt.Errorf("safetensors %s: index puts %q in %s, which does not hold it", index, tensor, shard)
			}
			s.where[tensor] = f
		}
		return s, nil
	} else if !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("safetensors: %w", err)
	}
	f, err := Open(single)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("safetensors: no %s.safetensors or %s.safetensors.index.json in %s: %w", name, name, dir, ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	s.files = []*File{f}
	for _, n := range f.Names() {
		s.where[n] = f
	}
	return s, nil
}

// Names lists every tensor of the checkpoint, sorted.
func (s *Set) Names() []string {
	names := make([]string, 0, len(s.where))
	for n := range s.where {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Info describes tensor name.
func (s *Set) Info(name string) (TensorInfo, bool) {
	f, ok := s.where[name]
	if !ok {
		return TensorInfo{}, false
	}
	return f.Info(name)
}

// Bytes returns tensor name's raw data (valid until Close).
func (s *Set) Bytes(name string) ([]byte, error) {
	f, ok := s.where[name]
	if !ok {
		return nil, fmt.Errorf("safetensors: checkpoint has no tensor %q", name)
	}
	return f.Bytes(name)
}

// Close unmaps every file.
func (s *Set) Close() error {
	var errs []error
	for _, f := range s.files {
		errs = append(errs, f.Close())
	}
	s.files = nil
	return errors.Join(errs...)
}
