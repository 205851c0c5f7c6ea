package model

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"

	"github.com/cespare/xxhash/v2"

	"github.com/emoflow/emoflow/internal/safetensors"
	"github.com/emoflow/emoflow/internal/tensor"
)

// checkpoint is a source of named tensors: safetensors files or PyTorch
// .bin shards.
type checkpoint interface {
	Names() []string
	// Shape returns a tensor's shape, or false if the checkpoint lacks it.
	Shape(name string) ([]int64, bool)
	// Load makes the tensor in s (in its stored dtype, on the CPU).
	Load(s *tensor.Scope, name string) (*tensor.Tensor, error)
	// Hash feeds the tensor's raw bytes to h.
	Hash(name string, h *xxhash.Digest) error
	Close() error
}

// openCheckpoint opens the weights in dir: model.safetensors (single or
// sharded) first, else pytorch_model.bin (single or sharded).
func openCheckpoint(dir string) (checkpoint, error) {
	set, err := safetensors.OpenSet(dir, "model")
	if err == nil {
		return safetensorsCheckpoint{set}, nil
	}
	if !errors.Is(err, safetensors.ErrNotFound) {
		return nil, err
	}
	bin, berr := openBinCheckpoint(dir, "pytorch_model")
	if berr == nil {
		return bin, nil
	}
	if !errors.Is(berr, os.ErrNotExist) {
		return nil, berr
	}
	return nil, fmt.Errorf("no weights in %s: want model.safetensors, model.safetensors.index.json, pytorch_model.bin or pytorch_model.bin.index.json", dir)
}

type safetensorsCheckpoint struct{ set *safetensors.Set }

func (c safetensorsCheckpoint) Names() []string { return c.set.Names() }
func (c safetensorsCheckpoint) Close() error    { return c.set.Close() }

func (c safetensorsCheckpoint) Shape(name string) ([]int64, bool) {
	info, ok := c.set.Info(name)
	return info.Shape, ok
}

// safetensorsDType maps the safetensors dtype names weights may use.
func safetensorsDType(name string) (tensor.DType, bool) {
	switch name {
	case "F32":
		return tensor.Float32, true
	case "F16":
		return tensor.Float16, true
	case "BF16":
		return tensor.BFloat16, true
	case "F64":
		return tensor.Float64, true
	}
	return 0, false
}

func (c safetensorsCheckpoint) Load(s *tensor.Scope, name string) (*tensor.Tensor, error) {
	info, ok := c.set.Info(name)
	if !ok {
		return nil, fmt.Errorf("missing tensor %q", name)
	}
	dt, ok := safetensorsDType(info.DType)
	if !ok {
		return nil, fmt.Errorf("tensor %q: unsupported dtype %s (want F32, F16 or BF16)", name, info.DType)
	}
	raw, err := c.set.Bytes(name)
	if err != nil {
		return nil, err
	}
	t := s.FromBytes(raw, dt, info.Shape, tensor.CPU)
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("tensor %q: %w", name, err)
	}
	return t, nil
}

func (c safetensorsCheckpoint) Hash(name string, h *xxhash.Digest) error {
	raw, err := c.set.Bytes(name)
	if err != nil {
		return err
	}
	_, _ = h.Write(raw)
	return nil
}

// layerWeights are one transformer block's tensors, in the engine's
// canonical layout: the fused QKV rows are [all query heads; key groups;
// value groups], whatever the checkpoint's layout.
type layerWeights struct {
	inNormW, inNormB     *tensor.Tensor
	qkvW, qkvB           *tensor.Tensor
	denseW, denseB       *tensor.Tensor
	postNormW, postNormB *tensor.Tensor
	upW, upB             *tensor.Tensor // SwiGLU: [gate; up] rows
	downW, downB         *tensor.Tensor
}

func (l *layerWeights) all() []*tensor.Tensor {
	return []*tensor.Tensor{l.inNormW, l.inNormB, l.qkvW, l.qkvB, l.denseW, l.denseB,
		l.postNormW, l.postNormB, l.upW, l.upB, l.downW, l.downB}
}

// names of one layer's tensors in each layout, as a function of the layer
// index; "" means the layout has no such tensor.
type layerNames struct {
	inNormW, inNormB, q, qBias, k, kBias, v, vBias, qkv, qkvBias       string
	dense, denseBias, postNormW, postNormB, up, upBias, down, downBias string
}

func namesFor(c Config, i int) layerNames {
	switch {
	case c.Layout == LayoutHF:
		p := fmt.Sprintf("model.layers.%d.", i)
		n := layerNames{
			inNormW: p + "input_layernorm.weight",
			q:       p + "self_attn.q_proj.weight", k: p + "self_attn.k_proj.weight", v: p + "self_attn.v_proj.weight",
			dense:     p + "self_attn.o_proj.weight",
			postNormW: p + "post_attention_layernorm.weight",
			up:        p + "mlp.gate_up_proj.weight", down: p + "mlp.down_proj.weight",
		}
		if c.QKVBias {
			n.qBias, n.kBias, n.vBias = p+"self_attn.q_proj.bias", p+"self_attn.k_proj.bias", p+"self_attn.v_proj.bias"
		}
		return n
	case c.Arch == ArchGLM1:
		p := fmt.Sprintf("transformer.layers.%d.", i)
		return layerNames{
			inNormW: p + "input_layernorm.weight", inNormB: p + "input_layernorm.bias",
			qkv: p + "attention.query_key_value.weight", qkvBias: p + "attention.query_key_value.bias",
			dense: p + "attention.dense.weight", denseBias: p + "attention.dense.bias",
			postNormW: p + "post_attention_layernorm.weight", postNormB: p + "post_attention_layernorm.bias",
			up: p + "mlp.dense_h_to_4h.weight", upBias: p + "mlp.dense_h_to_4h.bias",
			down: p + "mlp.dense_4h_to_h.weight", downBias: p + "mlp.dense_4h_to_h.bias",
		}
	default:
		p := fmt.Sprintf("transformer.encoder.layers.%d.", i)
		n := layerNames{
			inNormW:   p + "input_layernorm.weight",
			qkv:       p + "self_attention.query_key_value.weight",
			dense:     p + "self_attention.dense.weight",
			postNormW: p + "post_attention_layernorm.weight",
			up:        p + "mlp.dense_h_to_4h.weight", down: p + "mlp.dense_4h_to_h.weight",
		}
		if c.QKVBias {
			n.qkvBias = p + "self_attention.query_key_value.bias"
		}
		if c.Bias {
			n.denseBias, n.upBias, n.downBias = p+"self_attention.dense.bias", p+"mlp.dense_h_to_4h.bias", p+"mlp.dense_4h_to_h.bias"
		}
		return n
	}
}

// globalNames are the tensors outside the blocks.
func globalNames(c Config) (embed, finalW, finalB, head string) {
	switch {
	case c.Layout == LayoutHF:
		return "model.embed_tokens.weight", "model.norm.weight", "", "lm_head.weight"
	case c.Arch == ArchGLM1:
		return "transformer.word_embeddings.weight", "transformer.final_layernorm.weight", "transformer.final_layernorm.bias", "lm_head.weight"
	default:
		return "transformer.embedding.word_embeddings.weight", "transformer.encoder.final_layernorm.weight", "", "transformer.output_layer.weight"
	}
}

// weightLoader loads tensors from a checkpoint, checks their shapes
// against the config and converts them to the compute dtype and device.
type weightLoader struct {
	ckpt  checkpoint
	s     *tensor.Scope
	dtype tensor.DType
	dev   tensor.Device
	used  map[string]bool
}

// load returns tensor name with the expected shape, converted; nil with
// no error when name is "" (the layout has no such tensor).
func (w *weightLoader) load(name string, shape ...int64) (*tensor.Tensor, error) {
	if name == "" {
		return nil, nil
	}
	got, ok := w.ckpt.Shape(name)
	if !ok {
		return nil, fmt.Errorf("checkpoint lacks tensor %q", name)
	}
	if !equalShape(got, shape) {
		return nil, fmt.Errorf("tensor %q has shape %v but config.json implies %v (config does not match the weights?)", name, got, shape)
	}
	t, err := w.ckpt.Load(w.s, name)
	if err != nil {
		return nil, err
	}
	w.used[name] = true
	t = w.s.ToDType(t, w.dtype)
	if w.dev.IsCUDA() {
		t = w.s.To(t, w.dev)
	}
	if err := w.s.Err(); err != nil {
		return nil, fmt.Errorf("tensor %q: %w", name, err)
	}
	return t, nil
}

func equalShape(a, b []int64) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

var layerIndex = regexp.MustCompile(`layers\.(\d+)\.`)

// checkUnexpected refuses a checkpoint with blocks beyond the configured
// number of layers (a config that does not match the weights), and lists
// other tensors the engine did not use.
func (w *weightLoader) checkUnexpected(layers int) (unused []string, err error) {
	for _, n := range w.ckpt.Names() {
		if w.used[n] {
			continue
		}
		if m := layerIndex.FindStringSubmatch(n); m != nil {
			if i, _ := strconv.Atoi(m[1]); i >= layers {
				return nil, fmt.Errorf("checkpoint has tensor %q but config.json says %d layers", n, layers)
			}
		}
		unused = append(unused, n)
	}
	return unused, nil
}

// fingerprint hashes the names, shapes and bytes of every tensor, in name
// order: two checkpoints with the same fingerprint hold the same weights.
func fingerprint(ckpt checkpoint) (string, error) {
	h := xxhash.New()
	names := ckpt.Names()
	sort.Strings(names)
	var buf [8]byte
	for _, n := range names {
		_, _ = h.WriteString(n)
		shape, _ := ckpt.Shape(n)
		for _, d := range shape {
			binary.LittleEndian.PutUint64(buf[:], uint64(d))
			_, _ = h.Write(buf[:])
		}
		if err := ckpt.Hash(n, h); err != nil {
			return "", err
		}
	}
	return fmt.Sprintf("%016x", h.Sum64()), nil
}
