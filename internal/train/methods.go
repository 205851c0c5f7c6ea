package train

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"

	"github.com/emoflow/emoflow/internal/adapters"
	"github.com/emoflow/emoflow/internal/model"
	"github.com/emoflow/emoflow/internal/randmodel"
	"github.com/emoflow/emoflow/internal/safetensors"
	"github.com/emoflow/emoflow/internal/tensor"
)

// method is one way of adapting the frozen base model, as PEFT's tuners:
// its trainable parameters, how they enter a training step's forward pass,
// how the served adapter is built from them, and the files the training
// tools write for it.
type method interface {
	// params are the trainable float32 leaves, in a fixed order, under the
	// names the adapter file gives them.
	params() []param
	// tuning binds the parameters into s for one training step.
	tuning(s *tensor.Scope) (model.Tuning, error)
	// scorer builds the served form of the current values (evaluation);
	// release frees it.
	scorer(p model.Prompt, maxTextTokens int) (sc *model.Scorer, release func(), err error)
	// writeFiles writes the adapter's own files (not the manifest) into dir.
	writeFiles(dir string) error
	// kind is the manifest's method name.
	kind() string
}

// newMethod initialises cfg's method on base, its random values drawn from
// cfg.Seed.
func newMethod(cfg Config, base *model.Model) (method, error) {
	rng := rand.New(rand.NewPCG(cfg.Seed, 1))
	switch cfg.Method {
	case adapters.MethodLoRA:
		return newLoRA(base, cfg.LoRA, rng)
	case adapters.MethodPTuningV2, adapters.MethodPrefixTuning:
		return newPrefix(base, cfg.Prefix, cfg.Method == adapters.MethodPrefixTuning, rng)
	}
	return nil, fmt.Errorf("unknown method %q (want %s, %s or %s)", cfg.Method, adapters.MethodLoRA, adapters.MethodPTuningV2, adapters.MethodPrefixTuning)
}

type param struct {
	name string
	t    *tensor.Tensor
}

func freeParams(ps []param) {
	for _, p := range ps {
		p.t.Free()
	}
}

// values copies every parameter to Go memory, in params order.
func values(ps []param) ([][]float32, error) {
	s := tensor.NewScope()
	defer s.Close()
	out := make([][]float32, len(ps))
	for i, p := range ps {
		out[i] = s.Float32s(p.t)
	}
	return out, s.Err()
}

// writeTensors saves the parameters' current values as float32 safetensors.
func writeTensors(path string, ps []param) error {
	vals, err := values(ps)
	if err != nil {
		return err
	}
	ts := make([]safetensors.Tensor, len(ps))
	for i, p := range ps {
		ts[i] = safetensors.Tensor{Name: p.name, DType: "F32", Shape: p.t.Shape(), Data: randmodel.Encode(vals[i], "F32")}
	}
	return safetensors.Write(path, ts, map[string]string{"format": "pt"})
}

// newParams makes leaves of the given shapes, filled by init.
func newParams(names []string, shapes [][]int64, dev tensor.Device, init func(i int, n int) []float32) ([]param, error) {
	var ps []param
	for i, name := range names {
		n := int64(1)
		for _, d := range shapes[i] {
			n *= d
		}
		t, err := tensor.Param(init(i, int(n)), shapes[i], dev)
		if err != nil {
			freeParams(ps)
			return nil, fmt.Errorf("parameter %s: %w", name, err)
		}
		ps = append(ps, param{name, t})
	}
	return ps, nil
}

// loadInto replaces every parameter's value with the tensor of the same
// name in file (an adapter file in the tool's format): training that
// starts from an existing adapter, and resumption.
func loadInto(ps []param, file string, dev tensor.Device) error {
	ckpt, err := model.OpenCheckpoint(filepath.Dir(file), trimExt(filepath.Base(file)))
	if err != nil {
		return err
	}
	defer ckpt.Close()
	s := tensor.NewScope()
	defer s.Close()
	for _, p := range ps {
		shape, ok := ckpt.Shape(p.name)
		if !ok {
			return fmt.Errorf("%s: no tensor %s (an adapter of another method or model?)", file, p.name)
		}
		if !slices.Equal(shape, p.t.Shape()) {
			return fmt.Errorf("%s: %s is %v, this model needs %v (an adapter for another base model?)", file, p.name, shape, p.t.Shape())
		}
		vals, err := ckpt.Float32s(p.name)
		if err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		for _, v := range vals {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return fmt.Errorf("%s: %s holds NaN or Inf", file, p.name)
			}
		}
		s.ZeroInPlace(p.t) // then += the saved values: an exact copy
		s.AddInPlace(p.t, s.FromFloat32(vals, shape, dev))
	}
	return s.Err()
}

func trimExt(name string) string { return name[:len(name)-len(filepath.Ext(name))] }

// ---- LoRA ----

// LoRAConfig is a LoRA adapter's shape, in PEFT's LoraConfig terms.
type LoRAConfig struct {
	Rank    int      `json:"r"`
	Alpha   float64  `json:"lora_alpha"`
	Targets []string `json:"target_modules"`
	RSLoRA  bool     `json:"use_rslora"`
	Dropout float64  `json:"lora_dropout"`
}

// scale is PEFT's scaling: alpha/r, or alpha/sqrt(r) with rsLoRA.
func (c LoRAConfig) scale() float64 {
	if c.RSLoRA {
		return c.Alpha / math.Sqrt(float64(c.Rank))
	}
	return c.Alpha / float64(c.Rank)
}

type loraMethod struct {
	base  *model.Model
	cfg   LoRAConfig
	ps    []param // A then B of each (layer, target)
	where [][2]int
}

// DefaultLoRATargets are PEFT's default target modules for the layout:
// ChatGLM's fused query_key_value, or transformers' glm q/k/v projections.
func DefaultLoRATargets(c model.Config) []string {
	if c.Layout == model.LayoutHF {
		return []string{"q_proj", "k_proj", "v_proj"}
	}
	return []string{"query_key_value"}
}

func newLoRA(base *model.Model, cfg LoRAConfig, rng *rand.Rand) (*loraMethod, error) {
	if cfg.Rank <= 0 || cfg.Alpha <= 0 {
		return nil, fmt.Errorf("lora: rank and alpha must be positive (r=%d, alpha=%g)", cfg.Rank, cfg.Alpha)
	}
	if cfg.Dropout < 0 || cfg.Dropout >= 1 {
		return nil, fmt.Errorf("lora: dropout %g outside [0, 1)", cfg.Dropout)
	}
	if len(cfg.Targets) == 0 {
		cfg.Targets = DefaultLoRATargets(base.Config())
	}
	var names []string
	var shapes [][]int64
	l := &loraMethod{base: base, cfg: cfg}
	for layer := 0; layer < base.Config().Layers; layer++ {
		for ti, target := range cfg.Targets {
			rows, in, err := base.TargetShape(target)
			if err != nil {
				return nil, fmt.Errorf("lora: %w", err)
			}
			path := "base_model.model." + adapters.ModulePath(base.Config(), layer, target)
			names = append(names, path+".lora_A.weight", path+".lora_B.weight")
			shapes = append(shapes, []int64{int64(cfg.Rank), int64(in)}, []int64{int64(rows), int64(cfg.Rank)})
			l.where = append(l.where, [2]int{layer, ti})
		}
	}
	// PEFT's initialisation: A as nn.Linear's (Kaiming-uniform with a=√5,
	// that is U(±1/√in)), B zero, so training starts from the base model.
	var err error
	l.ps, err = newParams(names, shapes, base.Device(), func(i, n int) []float32 {
		vals := make([]float32, n)
		if i%2 == 0 {
			bound := 1 / math.Sqrt(float64(shapes[i][1]))
			for j := range vals {
				vals[j] = float32((rng.Float64()*2 - 1) * bound)
			}
		}
		return vals
	})
	return l, err
}

func (l *loraMethod) params() []param { return l.ps }
func (l *loraMethod) kind() string    { return adapters.MethodLoRA }

func (l *loraMethod) tuning(s *tensor.Scope) (model.Tuning, error) {
	leaves := make([]model.LoRALeaf, len(l.where))
	for i, w := range l.where {
		leaves[i] = model.LoRALeaf{Layer: w[0], Target: l.cfg.Targets[w[1]], A: l.ps[2*i].t, B: l.ps[2*i+1].t,
			Scale: l.cfg.scale(), Dropout: l.cfg.Dropout}
	}
	lo, err := l.base.BindLoRA(s, leaves)
	return model.Tuning{LoRA: lo}, err
}

func (l *loraMethod) scorer(p model.Prompt, maxTextTokens int) (*model.Scorer, func(), error) {
	vals, err := values(l.ps)
	if err != nil {
		return nil, nil, err
	}
	parts := make([]model.LoRAPart, len(l.where))
	for i, w := range l.where {
		parts[i] = model.LoRAPart{Layer: w[0], Target: l.cfg.Targets[w[1]], Rank: l.cfg.Rank, A: vals[2*i], B: vals[2*i+1], Scale: l.cfg.scale()}
	}
	lo, err := l.base.NewLoRA(parts)
	if err != nil {
		return nil, nil, err
	}
	sc, err := model.NewScorer(l.base, p, model.ScorerOptions{MaxTextTokens: maxTextTokens, LoRA: lo})
	if err != nil {
		lo.Free()
		return nil, nil, err
	}
	return sc, func() { sc.Close(); lo.Free() }, nil
}

func (l *loraMethod) writeFiles(dir string) error {
	conf := map[string]any{
		"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": l.cfg.Rank, "lora_alpha": l.cfg.Alpha,
		"target_modules": l.cfg.Targets, "lora_dropout": l.cfg.Dropout, "fan_in_fan_out": false, "bias": "none",
		"use_rslora": l.cfg.RSLoRA, "use_dora": false, "rank_pattern": map[string]int{}, "alpha_pattern": map[string]float64{},
		"modules_to_save": nil, "inference_mode": true, "init_lora_weights": true,
		"base_model_name_or_path": l.base.Config().Name, "revision": nil,
	}
	if err := writeJSON(filepath.Join(dir, "adapter_config.json"), conf); err != nil {
		return err
	}
	return writeTensors(filepath.Join(dir, "adapter_model.safetensors"), l.ps)
}

// ---- P-tuning v2 and PEFT prefix tuning ----

// PrefixConfig is a P-tuning v2 (THUDM) or prefix-tuning (PEFT) prefix.
type PrefixConfig struct {
	// PreSeqLen is the number of virtual tokens (THUDM's pre_seq_len).
	PreSeqLen int `json:"pre_seq_len"`
	// Projection reparameterises the prefix with a two-layer MLP (THUDM's
	// prefix_projection; P-tuning v2 only), its inner size the model's
	// hidden size as in ChatGLM2/3's PrefixEncoder.
	Projection bool `json:"prefix_projection"`
	// HiddenSize is the projection's inner size (0: the model's hidden
	// size, as ChatGLM2/3's PrefixEncoder).
	HiddenSize int `json:"prefix_hidden_size,omitempty"`
	// Dropout on the past keys and values in training (ChatGLM2/3 apply
	// 0.1).
	Dropout float64 `json:"dropout"`
}

type prefixMethod struct {
	base *model.Model
	cfg  PrefixConfig
	peft bool // PEFT prefix tuning instead of THUDM's P-tuning v2
	ps   []param
}

func newPrefix(base *model.Model, cfg PrefixConfig, peft bool, rng *rand.Rand) (*prefixMethod, error) {
	c := base.Config()
	if cfg.PreSeqLen <= 0 {
		return nil, fmt.Errorf("prefix: pre_seq_len must be positive, got %d", cfg.PreSeqLen)
	}
	if peft && cfg.Projection {
		return nil, fmt.Errorf("prefix tuning: prefix_projection is trained but not saved by PEFT; use ptuning-v2 for a projected prefix")
	}
	if cfg.Dropout < 0 || cfg.Dropout >= 1 {
		return nil, fmt.Errorf("prefix: dropout %g outside [0, 1)", cfg.Dropout)
	}
	kv := int64(2 * c.Layers * c.KVGroups * c.HeadDim)
	P, H := int64(cfg.PreSeqLen), int64(c.Hidden)
	if cfg.HiddenSize > 0 {
		H = int64(cfg.HiddenSize)
	}
	names := []string{"transformer.prefix_encoder.embedding.weight"}
	shapes := [][]int64{{P, kv}}
	if peft {
		names[0] = "prompt_embeddings"
	}
	if cfg.Projection {
		names = append(names, "transformer.prefix_encoder.trans.0.weight", "transformer.prefix_encoder.trans.0.bias",
			"transformer.prefix_encoder.trans.2.weight", "transformer.prefix_encoder.trans.2.bias")
		shapes = append(shapes, []int64{H, kv}, []int64{H}, []int64{kv, H}, []int64{kv})
	}
	// nn.Embedding's initialisation N(0, 1); nn.Linear's U(±1/√in) for the
	// projection's weights and biases.
	fanIn := []float64{0, float64(kv), float64(kv), float64(H), float64(H)}
	p := &prefixMethod{base: base, cfg: cfg, peft: peft}
	var err error
	p.ps, err = newParams(names, shapes, base.Device(), func(i, n int) []float32 {
		vals := make([]float32, n)
		for j := range vals {
			if i == 0 {
				vals[j] = float32(rng.NormFloat64())
			} else {
				vals[j] = float32((rng.Float64()*2 - 1) / math.Sqrt(fanIn[i]))
			}
		}
		return vals
	})
	return p, err
}

func (p *prefixMethod) params() []param { return p.ps }

func (p *prefixMethod) kind() string {
	if p.peft {
		return adapters.MethodPrefixTuning
	}
	return adapters.MethodPTuningV2
}

// positions is the rotary position of the first real token, as the
// loader serves the adapter (see adapters.Load).
func (p *prefixMethod) positions() int {
	if p.peft && p.base.Config().Layout == model.LayoutHF {
		return p.cfg.PreSeqLen
	}
	return 0
}

// encode is the prefix encoder: the embedding, projected when configured.
func (p *prefixMethod) encode(s *tensor.Scope) *tensor.Tensor {
	out := p.ps[0].t
	if p.cfg.Projection {
		out = s.Linear(s.Tanh(s.Linear(out, p.ps[1].t, p.ps[2].t)), p.ps[3].t, p.ps[4].t)
	}
	return out
}

func (p *prefixMethod) tuning(s *tensor.Scope) (model.Tuning, error) {
	past, err := p.base.PastFromPrefix(s, s.Dropout(p.encode(s), p.cfg.Dropout))
	return model.Tuning{Past: past, PastPositions: p.positions()}, err
}

func (p *prefixMethod) scorer(pr model.Prompt, maxTextTokens int) (*model.Scorer, func(), error) {
	s := tensor.NewScope()
	vals := s.Float32s(p.encode(s))
	err := s.Err()
	s.Close()
	if err != nil {
		return nil, nil, err
	}
	kv, err := p.base.PrefixFromEmbeddings(vals, p.cfg.PreSeqLen)
	if err != nil {
		return nil, nil, err
	}
	sc, err := model.NewScorer(p.base, pr, model.ScorerOptions{MaxTextTokens: maxTextTokens, AdapterPast: kv, AdapterPastPositions: p.positions()})
	if err != nil {
		kv.Free()
		return nil, nil, err
	}
	return sc, func() { sc.Close(); kv.Free() }, nil
}

func (p *prefixMethod) writeFiles(dir string) error {
	c := p.base.Config()
	if p.peft {
		conf := map[string]any{"peft_type": "PREFIX_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": p.cfg.PreSeqLen,
			"num_layers": c.Layers, "token_dim": c.KVGroups * c.HeadDim, "num_attention_heads": c.KVGroups,
			"prefix_projection": false, "inference_mode": true, "base_model_name_or_path": c.Name}
		if err := writeJSON(filepath.Join(dir, "adapter_config.json"), conf); err != nil {
			return err
		}
		return writeTensors(filepath.Join(dir, "adapter_model.safetensors"), p.ps)
	}
	conf := map[string]any{"model_type": "chatglm", "pre_seq_len": p.cfg.PreSeqLen, "prefix_projection": p.cfg.Projection}
	if p.cfg.Projection {
		conf["prefix_hidden_size"] = p.ps[1].t.Size(0)
	}
	if err := writeJSON(filepath.Join(dir, "config.json"), conf); err != nil {
		return err
	}
	return writeTensors(filepath.Join(dir, "model.safetensors"), p.ps)
}

// adapterFile is the file of dir that holds a method's tensors.
func adapterFile(dir string) (string, error) {
	for _, name := range []string{"adapter_model.safetensors", "model.safetensors"} {
		path := filepath.Join(dir, name)
		if _, err := os.Stat(path); err == nil {
			return path, nil
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
	}
	return "", fmt.Errorf("%s holds no adapter_model.safetensors or model.safetensors", dir)
}

func writeJSON(path string, v any) error {
	raw, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(raw, '\n'), 0o644)
}
