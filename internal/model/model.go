// Package model is the ChatGLM inference engine: it loads published
// checkpoints of ChatGLM-6B, ChatGLM2-6B, ChatGLM3-6B and GLM-4 (THUDM's
// tensor names or transformers' native glm names; safetensors or PyTorch
// .bin), runs their forward pass on libtorch through internal/tensor, and
// scores label sets for classification (score.go).
//
// One Model implements both architecture families (see Arch); the
// differences are switches in the block, not separate code paths, because
// the families share attention, rotary embeddings and the MLP layout.
package model

import (
	"fmt"
	"log/slog"
	"math"

	"github.com/emoflow/emoflow/internal/tensor"
)

// Options choose where and how a model runs.
type Options struct {
	Device tensor.Device
	// DType is the compute dtype: Float32 for parity checks, BFloat16 on
	// CPUs with AVX-512 BF16 and on GPUs, Float16 on GPUs.
	DType tensor.DType
	// Autocast, when set to another dtype than DType, computes the linear
	// layers in it while weights and the other operations stay in DType:
	// PyTorch's autocast, for training float32 weights at bfloat16 speed.
	Autocast tensor.DType
	// Threads is how many libtorch intra-op threads one ScoreRows call
	// computes on in all (0: tensor.Threads() when the model loads).
	Threads int
	// Lanes splits a CPU batch's rows into up to this many groups (at
	// most Threads, and of at least 16 rows) that ScoreRows computes at once, each on its own OS
	// thread with Threads / lanes intra-op threads (0 or 1: one group on
	// Threads threads). On a few cores, whole small operations side by side
	// keep the cores busier than each operation split across them, whose
	// every step waits for its slowest thread; each group is also padded to
	// its own longest row. Ignored on CUDA.
	Lanes  int
	Logger *slog.Logger
}

// Model is a loaded checkpoint. Its methods are safe for concurrent use:
// the weights are read-only once loaded, and every forward pass works in
// its own tensor.Scope.
type Model struct {
	cfg         Config
	opts        Options
	fingerprint string

	embed              *tensor.Tensor
	layers             []layerWeights
	finalNormW, finalB *tensor.Tensor
	head               *tensor.Tensor // [vocab, hidden]; the embeddings when tied
	invFreq            []float64
	// prefix is the P-tuning v2 prefix baked into a THUDM checkpoint
	// (pre_seq_len in config.json), nil when there is none.
	prefix *KV
}

// Config returns the model's architecture.
func (m *Model) Config() Config { return m.cfg }

// Fingerprint identifies the weights (a hash of every tensor).
func (m *Model) Fingerprint() string { return m.fingerprint }

// ID is "name@fingerprint".
func (m *Model) ID() string { return m.cfg.Name + "@" + m.fingerprint }

// DType is the compute dtype.
func (m *Model) DType() tensor.DType { return m.opts.DType }

// Device is where the model runs.
func (m *Model) Device() tensor.Device { return m.opts.Device }

// Load reads the checkpoint in dir (config.json and the weights).
func Load(dir string, opts Options) (*Model, error) {
	cfg, err := ReadConfig(dir)
	if err != nil {
		return nil, err
	}
	if opts.DType == 0 {
		opts.DType = tensor.Float32
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Threads <= 0 {
		opts.Threads = tensor.Threads()
	}
	if opts.Lanes <= 0 || opts.Device.IsCUDA() {
		opts.Lanes = 1
	}
	if opts.Device.IsCUDA() && tensor.CUDADevices() == 0 {
		return nil, fmt.Errorf("model %s: device %s requested but libtorch sees no CUDA device (CPU build?)", dir, opts.Device)
	}
	ckpt, err := openCheckpoint(dir)
	if err != nil {
		return nil, fmt.Errorf("model %s: %w", dir, err)
	}
	defer ckpt.Close()
	m, err := build(cfg, ckpt, opts)
	if err != nil {
		return nil, fmt.Errorf("model %s: %w", dir, err)
	}
	return m, nil
}

// build loads every weight of cfg from ckpt.
func build(cfg Config, ckpt checkpoint, opts Options) (m *Model, err error) {
	fp, err := fingerprint(ckpt)
	if err != nil {
		return nil, err
	}
	m = &Model{cfg: cfg, opts: opts, fingerprint: fp}
	s := tensor.NewScope()
	defer s.Close()
	w := &weightLoader{ckpt: ckpt, s: s, dtype: opts.DType, dev: opts.Device, used: map[string]bool{}}
	keep := func(t *tensor.Tensor) *tensor.Tensor { return s.Keep(t) }
	defer func() {
		if err != nil {
			m.Close()
		}
	}()

	c := cfg
	D, hd := int64(c.Hidden), int64(c.HeadDim)
	qRows, kvRows := int64(c.Heads)*hd, int64(c.KVGroups)*hd
	embedName, finalW, finalB, headName := globalNames(c)
	if m.embed, err = w.load(embedName, int64(c.Vocab), D); err != nil {
		return nil, err
	}
	m.embed = keep(m.embed)
	m.layers = make([]layerWeights, c.Layers)
	for i := range m.layers {
		n := namesFor(c, i)
		l := &m.layers[i]
		if l.inNormW, err = w.load(n.inNormW, D); err != nil {
			return nil, err
		}
		if l.inNormB, err = w.load(n.inNormB, D); err != nil {
			return nil, err
		}
		if l.qkvW, l.qkvB, err = loadQKV(w, c, n, D, qRows, kvRows); err != nil {
			return nil, err
		}
		if l.denseW, err = w.load(n.dense, D, qRows); err != nil {
			return nil, err
		}
		if l.denseB, err = w.load(n.denseBias, D); err != nil {
			return nil, err
		}
		if l.postNormW, err = w.load(n.postNormW, D); err != nil {
			return nil, err
		}
		if l.postNormB, err = w.load(n.postNormB, D); err != nil {
			return nil, err
		}
		upRows := int64(c.FFN)
		if c.Arch == ArchGLM2 {
			upRows *= 2 // SwiGLU: gate and up projections in one matrix
		}
		if l.upW, err = w.load(n.up, upRows, D); err != nil {
			return nil, err
		}
		if l.upB, err = w.load(n.upBias, upRows); err != nil {
			return nil, err
		}
		if l.downW, err = w.load(n.down, D, int64(c.FFN)); err != nil {
			return nil, err
		}
		if l.downB, err = w.load(n.downBias, D); err != nil {
			return nil, err
		}
		for _, t := range []**tensor.Tensor{&l.inNormW, &l.inNormB, &l.qkvW, &l.qkvB, &l.denseW, &l.denseB,
			&l.postNormW, &l.postNormB, &l.upW, &l.upB, &l.downW, &l.downB} {
			*t = keep(*t)
		}
	}
	if m.finalNormW, err = w.load(finalW, D); err != nil {
		return nil, err
	}
	m.finalNormW = keep(m.finalNormW)
	if m.finalB, err = w.load(finalB, D); err != nil {
		return nil, err
	}
	m.finalB = keep(m.finalB)
	if _, ok := ckpt.Shape(headName); ok {
		if m.head, err = w.load(headName, int64(c.Vocab), D); err != nil {
			return nil, err
		}
		m.head = keep(m.head)
	} else if c.TiedHead {
		m.head = m.embed
	} else {
		return nil, fmt.Errorf("checkpoint lacks the output layer %q and config.json does not tie it to the embeddings", headName)
	}
	if c.PreSeqLen > 0 {
		if m.prefix, err = loadPrefixEncoder(w, c); err != nil {
			return nil, err
		}
	}
	unused, err := w.checkUnexpected(c.Layers)
	if err != nil {
		return nil, err
	}
	for _, n := range unused {
		if !ignorable(n) {
			opts.Logger.Warn("checkpoint tensor not used by the engine", "tensor", n)
		}
	}
	m.invFreq = inverseFrequencies(c)
	return m, nil
}

// ignorable are buffers checkpoints carry that the engine recomputes.
func ignorable(name string) bool {
	return len(name) > 8 && name[len(name)-8:] == "inv_freq"
}

// loadQKV returns the fused query/key/value projection in the canonical row
// order [queries of all heads; keys of all groups; values of all groups].
func loadQKV(w *weightLoader, c Config, n layerNames, D, qRows, kvRows int64) (wt, b *tensor.Tensor, err error) {
	s := w.s
	switch {
	case n.qkv == "":
		// transformers' glm: separate projections.
		q, err := w.load(n.q, qRows, D)
		if err != nil {
			return nil, nil, err
		}
		k, err := w.load(n.k, kvRows, D)
		if err != nil {
			return nil, nil, err
		}
		v, err := w.load(n.v, kvRows, D)
		if err != nil {
			return nil, nil, err
		}
		wt = s.Cat([]*tensor.Tensor{q, k, v}, 0)
		if n.qBias != "" {
			qb, err := w.load(n.qBias, qRows)
			if err != nil {
				return nil, nil, err
			}
			kb, err := w.load(n.kBias, kvRows)
			if err != nil {
				return nil, nil, err
			}
			vb, err := w.load(n.vBias, kvRows)
			if err != nil {
				return nil, nil, err
			}
			b = s.Cat([]*tensor.Tensor{qb, kb, vb}, 0)
		}
	case c.Arch == ArchGLM1:
		// ChatGLM-6B interleaves per head: [q_h, k_h, v_h] for each head h.
		// Regroup the rows so the block can treat both families alike.
		raw, err := w.load(n.qkv, qRows+2*kvRows, D)
		if err != nil {
			return nil, nil, err
		}
		H, hd := int64(c.Heads), int64(c.HeadDim)
		wt = s.Reshape(s.Contiguous(s.Permute(s.Reshape(raw, H, 3, hd, D), 1, 0, 2, 3)), 3*H*hd, D)
		rawB, err := w.load(n.qkvBias, qRows+2*kvRows)
		if err != nil {
			return nil, nil, err
		}
		b = s.Reshape(s.Contiguous(s.Permute(s.Reshape(rawB, H, 3, hd), 1, 0, 2)), 3*H*hd)
	default:
		if wt, err = w.load(n.qkv, qRows+2*kvRows, D); err != nil {
			return nil, nil, err
		}
		if b, err = w.load(n.qkvBias, qRows+2*kvRows); err != nil {
			return nil, nil, err
		}
	}
	return wt, b, s.Err()
}

// inverseFrequencies are the rotary frequencies of one rotating segment.
func inverseFrequencies(c Config) []float64 {
	// ChatGLM-6B rotates each half of a head with its own position channel
	// (2-D positions); the others rotate RotaryDim dimensions as pairs.
	dim := c.RotaryDim
	if c.Arch == ArchGLM1 {
		dim = c.HeadDim / 2
	}
	inv := make([]float64, dim/2)
	for i := range inv {
		v := 1 / math.Pow(c.RopeBase, float64(2*i)/float64(dim))
		if c.Arch == ArchGLM1 {
			// THUDM's ChatGLM-6B stores its frequencies as float16.
			v = float64(roundFloat16(float32(v)))
		}
		inv[i] = v
	}
	return inv
}

// Close frees the weights.
func (m *Model) Close() {
	if m == nil {
		return
	}
	if m.head != m.embed {
		m.head.Free()
	}
	m.embed.Free()
	for i := range m.layers {
		for _, t := range m.layers[i].all() {
			t.Free()
		}
	}
	m.finalNormW.Free()
	m.finalB.Free()
	m.prefix.Free()
	m.layers = nil
}
