package model

import (
	"archive/zip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"unsafe"

	"github.com/cespare/xxhash/v2"
	"github.com/sugarme/gotch/half"
	"github.com/sugarme/gotch/pickle"

	"github.com/emoflow/emoflow/internal/tensor"
)

// binCheckpoint reads PyTorch .bin checkpoints (torch.save zip archives)
// through gotch's unpickler, one shard at a time: a decoded shard holds its
// whole data in Go memory, so only the shard being loaded is kept.
type binCheckpoint struct {
	dir     string
	shardOf map[string]string // tensor name → shard file name
	shapes  map[string][]int64

	current string
	tensors map[string]*pickle.StorageTensor
}

// openBinCheckpoint opens name.bin or the shards name.bin.index.json lists.
// The error wraps os.ErrNotExist when neither exists.
func openBinCheckpoint(dir, name string) (*binCheckpoint, error) {
	c := &binCheckpoint{dir: dir, shardOf: map[string]string{}, shapes: map[string][]int64{}}
	index := filepath.Join(dir, name+".bin.index.json")
	raw, err := os.ReadFile(index)
	switch {
	case err == nil:
		var idx struct {
			WeightMap map[string]string `json:"weight_map"`
		}
		if err := json.Unmarshal(raw, &idx); err != nil {
			return nil, fmt.Errorf("%s: %w", index, err)
		}
		for t, shard := range idx.WeightMap {
			if filepath.Base(shard) != shard {
				return nil, fmt.Errorf("%s: shard %q is not a file name in the same folder", index, shard)
			}
			c.shardOf[t] = shard
		}
	case errors.Is(err, os.ErrNotExist):
		single := name + ".bin"
		if _, err := os.Stat(filepath.Join(dir, single)); err != nil {
			return nil, err
		}
		if err := c.decode(single); err != nil {
			return nil, err
		}
		for t := range c.tensors {
			c.shardOf[t] = single
		}
	default:
		return nil, err
	}
	return c, nil
}

// decode makes shard the current one.
func (c *binCheckpoint) decode(shard string) (err error) {
	if c.current == shard {
		return nil
	}
	c.current, c.tensors = "", nil
	path := filepath.Join(c.dir, shard)
	// torch.save has written zip archives since PyTorch 1.6; gotch's reader
	// of the older format loops forever on an empty or zero-filled file.
	if err := checkZip(path); err != nil {
		return fmt.Errorf("%s: not a PyTorch checkpoint (a zip archive, as torch.save writes since PyTorch 1.6): %w", shard, err)
	}
	// gotch's unpickler indexes slices on the file's word: a corrupt file
	// can make it panic, which must not take the process down.
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%s: corrupt PyTorch checkpoint: %v", shard, r)
		}
	}()
	obj, err := pickle.LoadWithUnpickler(path, func(r io.Reader) pickle.Unpickler {
		u := pickle.NewUnpickler(r)
		// gotch v0.9.1 knows BFloat16Storage but does not register it.
		u.FindClass = func(module, class string) (interface{}, error) {
			if module == "torch" && class == "BFloat16Storage" {
				return &pickle.BFloat16StorageClass{}, nil
			}
			return pickle.NewGenericClass(module, class), nil
		}
		return u
	})
	if err != nil {
		return fmt.Errorf("%s: cannot read PyTorch checkpoint: %w", shard, err)
	}
	tensors := map[string]*pickle.StorageTensor{}
	add := func(k, v interface{}) error {
		name, ok := k.(string)
		st, ok2 := v.(*pickle.StorageTensor)
		if !ok || !ok2 {
			return fmt.Errorf("%s: not a state dict of tensors (entry %v is %T)", shard, k, v)
		}
		tensors[name] = st
		c.shapes[name] = st.Size
		return nil
	}
	switch d := obj.(type) {
	case *pickle.Dict:
		for _, item := range *d {
			if err := add(item.Key, item.Value); err != nil {
				return err
			}
		}
	case *pickle.OrderedDict:
		for k, item := range d.Map {
			if err := add(k, item.Value); err != nil {
				return err
			}
		}
	default:
		return fmt.Errorf("%s: not a state dict (got %T)", shard, obj)
	}
	c.current, c.tensors = shard, tensors
	return nil
}

// checkZip opens path as a zip archive.
func checkZip(path string) error {
	r, err := zip.OpenReader(path)
	if err != nil {
		return err
	}
	return r.Close()
}

func (c *binCheckpoint) Names() []string {
	names := make([]string, 0, len(c.shardOf))
	for n := range c.shardOf {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

func (c *binCheckpoint) find(name string) (*pickle.StorageTensor, error) {
	shard, ok := c.shardOf[name]
	if !ok {
		return nil, fmt.Errorf("missing tensor %q", name)
	}
	if err := c.decode(shard); err != nil {
		return nil, err
	}
	st, ok := c.tensors[name]
	if !ok {
		return nil, fmt.Errorf("index puts tensor %q in %s, which does not hold it", name, shard)
	}
	return st, nil
}

func (c *binCheckpoint) Shape(name string) ([]int64, bool) {
	if s, ok := c.shapes[name]; ok {
		return s, true
	}
	st, err := c.find(name)
	if err != nil {
		return nil, false
	}
	return st.Size, true
}

// storageBytes returns a storage's elements as raw little-endian bytes.
func storageBytes(st *pickle.StorageTensor) ([]byte, tensor.DType, error) {
	switch d := st.Source.GetData().(type) {
	case []float32:
		return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(d))), 4*len(d)), tensor.Float32, nil
	case []float64:
		return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(d))), 8*len(d)), tensor.Float64, nil
	case []half.Float16:
		return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(d))), 2*len(d)), tensor.Float16, nil
	case []half.BFloat16:
		return unsafe.Slice((*byte)(unsafe.Pointer(unsafe.SliceData(d))), 2*len(d)), tensor.BFloat16, nil
	default:
		return nil, 0, fmt.Errorf("unsupported storage type %T (want float32, float16 or bfloat16)", d)
	}
}

func (c *binCheckpoint) Load(s *tensor.Scope, name string) (*tensor.Tensor, error) {
	st, err := c.find(name)
	if err != nil {
		return nil, err
	}
	raw, dt, err := storageBytes(st)
	if err != nil {
		return nil, fmt.Errorf("tensor %q: %w", name, err)
	}
	n := int64(len(raw) / dt.Size())
	if len(st.Size) != len(st.Stride) {
		return nil, fmt.Errorf("tensor %q: %d sizes but %d strides", name, len(st.Size), len(st.Stride))
	}
	last := st.StorageOffset
	for i, sz := range st.Size {
		if sz <= 0 || st.Stride[i] < 0 {
			return nil, fmt.Errorf("tensor %q: bad size %v / stride %v", name, st.Size, st.Stride)
		}
		last += (sz - 1) * st.Stride[i]
	}
	if st.StorageOffset < 0 || last >= n {
		return nil, fmt.Errorf("tensor %q: view of %v at offset %d runs past its storage of %d elements", name, st.Size, st.StorageOffset, n)
	}
	flat := s.FromBytes(raw, dt, []int64{n}, tensor.CPU)
	t := s.Contiguous(s.AsStrided(flat, st.Size, st.Stride, st.StorageOffset))
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("tensor %q: %w", name, err)
	}
	return t, nil
}

func (c *binCheckpoint) Hash(name string, h *xxhash.Digest) error {
	st, err := c.find(name)
	if err != nil {
		return err
	}
	raw, _, err := storageBytes(st)
	if err != nil {
		return fmt.Errorf("tensor %q: %w", name, err)
	}
	_, _ = h.Write(raw)
	return nil
}

func (c *binCheckpoint) Close() error {
	c.current, c.tensors = "", nil
	return nil
}
