package model

import (
	"fmt"

	"github.com/emoflow/emoflow/internal/tensor"
)

// Forward runs one batch and returns the final hidden states as float32,
// row-major [Rows, Len, Hidden]. With keepKV it also returns the batch's own
// keys and values, which the caller owns (Free them).
func (m *Model) Forward(b *Batch, keepKV bool) ([]float32, *KV, error) {
	s := tensor.NewScope()
	defer s.Close()
	h, kv, err := m.forward(s, b, keepKV)
	if err != nil {
		return nil, nil, err
	}
	out := s.Float32s(h)
	if err := s.Err(); err != nil {
		return nil, nil, err
	}
	return out, keepKVTensors(s, kv), nil
}

// keepKVTensors takes kv's tensors out of s.
func keepKVTensors(s *tensor.Scope, kv *KV) *KV {
	if kv == nil {
		return nil
	}
	out := &KV{Len: kv.Len}
	for i := range kv.K {
		out.K = append(out.K, s.Keep(s.Contiguous(kv.K[i])))
		out.V = append(out.V, s.Keep(s.Contiguous(kv.V[i])))
	}
	return out
}

// JoinKV concatenates pasts along the sequence: the result attends as
// parts[0] then parts[1] and so on. Parts with one row are broadcast to the
// others' row count. The caller owns the result.
func (m *Model) JoinKV(parts ...*KV) (*KV, error) {
	s := tensor.NewScope()
	defer s.Close()
	var live []*KV
	rows := int64(1)
	for _, p := range parts {
		if p == nil || p.Len == 0 {
			continue
		}
		live = append(live, p)
		if r := p.K[0].Size(0); r != 1 {
			if rows != 1 && rows != r {
				return nil, fmt.Errorf("join past: %d rows and %d rows", rows, r)
			}
			rows = r
		}
	}
	out := &KV{}
	for l := 0; l < m.cfg.Layers; l++ {
		var ks, vs []*tensor.Tensor
		for _, p := range live {
			k, v := p.K[l], p.V[l]
			if k.Size(0) != rows {
				k, v = s.Expand(k, rows, -1, -1, -1), s.Expand(v, rows, -1, -1, -1)
			}
			ks, vs = append(ks, k), append(vs, v)
		}
		if len(ks) == 0 {
			return &KV{}, nil
		}
		out.K = append(out.K, s.Keep(s.Contiguous(s.Cat(ks, 2))))
		out.V = append(out.V, s.Keep(s.Contiguous(s.Cat(vs, 2))))
	}
	for _, p := range live {
		out.Len += p.Len
	}
	if err := s.Err(); err != nil {
		out.Free()
		return nil, fmt.Errorf("join past: %w", err)
	}
	return out, nil
}

// Prefix returns the P-tuning v2 prefix baked into the checkpoint, or nil.
// The model owns it.
func (m *Model) Prefix() *KV { return m.prefix }

// PrefixFromRaw turns per-layer prefix keys/values stored as
// [layers*2, groups, preSeqLen, headDim] (keys of layer l at 2l, values at
// 2l+1; the layout of a P-tuning v2 prefix encoder's output after THUDM's
// permute) into a KV with one row. The caller owns it.
func (m *Model) PrefixFromRaw(raw []byte, dtype tensor.DType, preSeqLen int) (*KV, error) {
	c := m.cfg
	s := tensor.NewScope()
	defer s.Close()
	all := s.FromBytes(raw, dtype, []int64{int64(2 * c.Layers), int64(c.KVGroups), int64(preSeqLen), int64(c.HeadDim)}, tensor.CPU)
	kv, err := m.splitPrefix(s, all, preSeqLen)
	if err != nil {
		return nil, err
	}
	return kv, nil
}

// splitPrefix turns a [layers*2, groups, P, headDim] tensor into a KV with
// one row, converted to the model's dtype and device, owned by the caller.
func (m *Model) splitPrefix(s *tensor.Scope, all *tensor.Tensor, preSeqLen int) (*KV, error) {
	all = s.ToDType(all, m.opts.DType)
	if m.opts.Device.IsCUDA() {
		all = s.To(all, m.opts.Device)
	}
	kv := &KV{Len: preSeqLen}
	for l := 0; l < m.cfg.Layers; l++ {
		kv.K = append(kv.K, s.Keep(s.Contiguous(s.Unsqueeze(s.Select(all, 0, int64(2*l)), 0))))
		kv.V = append(kv.V, s.Keep(s.Contiguous(s.Unsqueeze(s.Select(all, 0, int64(2*l+1)), 0))))
	}
	if err := s.Err(); err != nil {
		kv.Free()
		return nil, fmt.Errorf("prefix: %w", err)
	}
	return kv, nil
}

// loadPrefixEncoder computes the P-tuning v2 prefix from a THUDM
// checkpoint's prefix encoder: an embedding of pre_seq_len rows, optionally
// followed by a two-layer MLP with tanh (prefix_projection).
func loadPrefixEncoder(w *weightLoader, c Config) (*KV, error) {
	return loadPrefixEncoderInto(w, c, &Model{cfg: c, opts: Options{DType: w.dtype, Device: w.dev}})
}

// loadPrefixEncoderInto is loadPrefixEncoder for model m's dtype and device.
func loadPrefixEncoderInto(w *weightLoader, c Config, m *Model) (*KV, error) {
	s := w.s
	kvSize := int64(2 * c.Layers * c.KVGroups * c.HeadDim)
	P := int64(c.PreSeqLen)
	var past *tensor.Tensor
	if c.PrefixProjection {
		// The projection's input is the hidden size in ChatGLM-6B's
		// PrefixEncoder and the whole key/value width in ChatGLM2/3's.
		width := kvSize
		if c.Arch == ArchGLM1 {
			width = int64(c.Hidden)
		}
		emb, err := w.load("transformer.prefix_encoder.embedding.weight", P, width)
		if err != nil {
			return nil, err
		}
		shape, ok := w.ckpt.Shape("transformer.prefix_encoder.trans.0.weight")
		if !ok || len(shape) != 2 {
			return nil, fmt.Errorf("prefix_projection is on but the checkpoint lacks transformer.prefix_encoder.trans.0.weight")
		}
		inner := shape[0]
		w0, err := w.load("transformer.prefix_encoder.trans.0.weight", inner, width)
		if err != nil {
			return nil, err
		}
		b0, err := w.load("transformer.prefix_encoder.trans.0.bias", inner)
		if err != nil {
			return nil, err
		}
		w2, err := w.load("transformer.prefix_encoder.trans.2.weight", kvSize, inner)
		if err != nil {
			return nil, err
		}
		b2, err := w.load("transformer.prefix_encoder.trans.2.bias", kvSize)
		if err != nil {
			return nil, err
		}
		past = s.Linear(s.Tanh(s.Linear(emb, w0, b0)), w2, b2)
	} else {
		emb, err := w.load("transformer.prefix_encoder.embedding.weight", P, kvSize)
		if err != nil {
			return nil, err
		}
		past = emb
	}
	// [P, layers*2*groups*hd] → [layers*2, groups, P, hd]
	if !s.AllFinite(past) {
		return nil, fmt.Errorf("prefix encoder: NaN or Inf in the weights")
	}
	past = s.Permute(s.Reshape(past, P, int64(2*c.Layers), int64(c.KVGroups), int64(c.HeadDim)), 1, 2, 0, 3)
	return m.splitPrefix(s, past, c.PreSeqLen)
}
