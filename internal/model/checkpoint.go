package model

import (
	"errors"
	"fmt"
	"os"

	"github.com/emoflow/emoflow/internal/safetensors"
	"github.com/emoflow/emoflow/internal/tensor"
)

// Checkpoint is a set of named tensors read from NAME.safetensors (single or
// sharded) or NAME.bin (single or sharded), as adapters store them.
type Checkpoint struct{ c checkpoint }

// OpenCheckpoint opens checkpoint name ("adapter_model", "pytorch_model")
// in dir, safetensors first. The error wraps os.ErrNotExist when neither
// form is there.
func OpenCheckpoint(dir, name string) (*Checkpoint, error) {
	set, err := safetensors.OpenSet(dir, name)
	if err == nil {
		return &Checkpoint{safetensorsCheckpoint{set}}, nil
	}
	if !errors.Is(err, safetensors.ErrNotFound) {
		return nil, err
	}
	bin, err := openBinCheckpoint(dir, name)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("no %s.safetensors or %s.bin in %s: %w", name, name, dir, os.ErrNotExist)
		}
		return nil, err
	}
	return &Checkpoint{bin}, nil
}

// Names lists the tensors.
func (c *Checkpoint) Names() []string { return c.c.Names() }

// Shape is a tensor's shape.
func (c *Checkpoint) Shape(name string) ([]int64, bool) { return c.c.Shape(name) }

// Float32s reads a tensor as float32 values, row-major.
func (c *Checkpoint) Float32s(name string) ([]float32, error) {
	s := tensor.NewScope()
	defer s.Close()
	t, err := c.c.Load(s, name)
	if err != nil {
		return nil, err
	}
	vals := s.Float32s(t)
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("tensor %q: %w", name, err)
	}
	return vals, nil
}

// Close releases the files.
func (c *Checkpoint) Close() error { return c.c.Close() }

// PrefixFromEmbeddings turns a P-tuning v2 prefix as THUDM's prefix encoder
// and PEFT's prompt_embeddings produce it — [preSeqLen, layers·2·groups·
// headDim], keys of layer l at slot 2l and values at 2l+1 — into a KV with
// one row. The caller owns it.
func (m *Model) PrefixFromEmbeddings(vals []float32, preSeqLen int) (*KV, error) {
	c := m.cfg
	want := preSeqLen * 2 * c.Layers * c.KVGroups * c.HeadDim
	if preSeqLen <= 0 || len(vals) != want {
		return nil, fmt.Errorf("prefix: %d values, want %d virtual tokens × %d layers × 2 × %d key/value heads × %d (an adapter for another model?)",
			len(vals), preSeqLen, c.Layers, c.KVGroups, c.HeadDim)
	}
	s := tensor.NewScope()
	defer s.Close()
	t := s.FromFloat32(vals, []int64{int64(preSeqLen), int64(2 * c.Layers), int64(c.KVGroups), int64(c.HeadDim)}, tensor.CPU)
	if !s.AllFinite(t) {
		return nil, fmt.Errorf("prefix: NaN or Inf in the weights")
	}
	return m.splitPrefix(s, s.Permute(t, 1, 2, 0, 3), preSeqLen)
}

// PrefixFromCheckpoint computes a THUDM P-tuning v2 prefix from a
// checkpoint holding transformer.prefix_encoder.* (the embedding, and the
// two-layer projection when projection is set).
func (m *Model) PrefixFromCheckpoint(ckpt *Checkpoint, preSeqLen int, projection bool) (*KV, error) {
	s := tensor.NewScope()
	defer s.Close()
	c := m.cfg
	c.PreSeqLen, c.PrefixProjection = preSeqLen, projection
	w := &weightLoader{ckpt: ckpt.c, s: s, dtype: tensor.Float32, dev: tensor.CPU, used: map[string]bool{}}
	kv, err := loadPrefixEncoderInto(w, c, m)
	if err != nil {
		return nil, err
	}
	return kv, nil
}
