// Package randmodel writes randomly initialised ChatGLM-family checkpoints in
// the published formats (config.json plus model.safetensors, with THUDM's
// tensor names or transformers' glm names). Tests, benchmarks and the demo
// use them where no trained weights can be downloaded; the weights are
// random, so the model's answers are too.
package randmodel

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"

	"github.com/emoflow/emoflow/internal/safetensors"
)

// Spec describes the checkpoint to write.
type Spec struct {
	// Arch is "chatglm-6b" (ChatGLM-6B) or "chatglm2" (ChatGLM2/3, GLM-4).
	Arch string
	// HFNames writes transformers' GlmForCausalLM names and config (chatglm2
	// architecture only) instead of THUDM's.
	HFNames bool
	Layers  int
	Hidden  int
	Heads   int
	Groups  int // key/value groups (chatglm2)
	FFN     int
	Vocab   int
	// DType of the stored weights: F32, F16 or BF16.
	DType string
	Seed  uint64
	// Std is the standard deviation of the weights (default 0.02).
	Std float64
	// NormEps (default 1e-5) and RopeRatio (default 1).
	NormEps   float64
	RopeRatio float64
	// GLM1 special tokens (chatglm-6b); defaults are the last vocabulary ids.
	GMaskID, BOSID, EOSID, MaskID int
	// EOSIDs for chatglm2 configs.
	EOSIDs []int
	// PreSeqLen > 0 adds a THUDM P-tuning v2 prefix encoder of that many
	// virtual tokens (prefix_projection off).
	PreSeqLen int
	// Name goes into config.json's _name_or_path.
	Name string
}

func (s *Spec) defaults() error {
	if s.DType == "" {
		s.DType = "F32"
	}
	if s.Std == 0 {
		s.Std = 0.02
	}
	if s.NormEps == 0 {
		s.NormEps = 1e-5
	}
	if s.RopeRatio == 0 {
		s.RopeRatio = 1
	}
	if s.Groups == 0 {
		s.Groups = s.Heads
	}
	if s.Layers <= 0 || s.Hidden <= 0 || s.Heads <= 0 || s.FFN <= 0 || s.Vocab <= 0 || s.Hidden%s.Heads != 0 || s.Heads%s.Groups != 0 {
		return fmt.Errorf("randmodel: bad spec %+v", *s)
	}
	if s.Arch == "chatglm-6b" {
		if s.GMaskID == 0 {
			s.MaskID, s.GMaskID, s.BOSID, s.EOSID = s.Vocab-4, s.Vocab-3, s.Vocab-2, s.Vocab-1
		}
		if s.HFNames {
			return fmt.Errorf("randmodel: transformers has no native ChatGLM-6B layout")
		}
	} else if s.Arch != "chatglm2" {
		return fmt.Errorf("randmodel: unknown arch %q", s.Arch)
	}
	return nil
}

// Write writes the checkpoint into dir (created if needed).
func Write(dir string, spec Spec) error {
	if err := spec.defaults(); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("randmodel: %w", err)
	}
	rng := rand.New(rand.NewPCG(spec.Seed, 0x5eed))
	w := &writer{spec: spec, rng: rng}
	var config map[string]any
	switch {
	case spec.Arch == "chatglm-6b":
		config = w.glm1()
	case spec.HFNames:
		config = w.hfGLM()
	default:
		config = w.glm2()
	}
	if spec.Name != "" {
		config["_name_or_path"] = spec.Name
	}
	cj, err := json.MarshalIndent(config, "", "  ")
	if err != nil {
		return fmt.Errorf("randmodel: %w", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), cj, 0o644); err != nil {
		return fmt.Errorf("randmodel: %w", err)
	}
	return safetensors.Write(filepath.Join(dir, "model.safetensors"), w.tensors, map[string]string{"format": "pt"})
}

type writer struct {
	spec    Spec
	rng     *rand.Rand
	tensors []safetensors.Tensor
}

// normal adds a tensor of N(0, std) values; ones adds 1 + N(0, std) (norm
// weights).
func (w *writer) add(name string, shape []int64, gen func() float64) {
	n := int64(1)
	for _, d := range shape {
		n *= d
	}
	vals := make([]float32, n)
	for i := range vals {
		vals[i] = float32(gen())
	}
	w.tensors = append(w.tensors, safetensors.Tensor{Name: name, DType: w.spec.DType, Shape: shape, Data: Encode(vals, w.spec.DType)})
}

func (w *writer) normal(name string, shape ...int64) {
	w.add(name, shape, func() float64 { return w.rng.NormFloat64() * w.spec.Std })
}

func (w *writer) norm(name string, shape ...int64) {
	w.add(name, shape, func() float64 { return 1 + w.rng.NormFloat64()*0.1 })
}

func (w *writer) glm2() map[string]any {
	s := w.spec
	hd := int64(s.Hidden / s.Heads)
	D, qkv := int64(s.Hidden), int64(s.Heads)*hd+2*int64(s.Groups)*hd
	w.normal("transformer.embedding.word_embeddings.weight", int64(s.Vocab), D)
	for i := 0; i < s.Layers; i++ {
		p := fmt.Sprintf("transformer.encoder.layers.%d.", i)
		w.norm(p+"input_layernorm.weight", D)
		w.normal(p+"self_attention.query_key_value.weight", qkv, D)
		w.normal(p+"self_attention.query_key_value.bias", qkv)
		w.normal(p+"self_attention.dense.weight", D, int64(s.Heads)*hd)
		w.norm(p+"post_attention_layernorm.weight", D)
		w.normal(p+"mlp.dense_h_to_4h.weight", 2*int64(s.FFN), D)
		w.normal(p+"mlp.dense_4h_to_h.weight", D, int64(s.FFN))
	}
	w.norm("transformer.encoder.final_layernorm.weight", D)
	w.normal("transformer.output_layer.weight", int64(s.Vocab), D)
	config := map[string]any{
		"model_type": "chatglm", "architectures": []string{"ChatGLMModel"},
		"num_layers": s.Layers, "hidden_size": s.Hidden, "num_attention_heads": s.Heads,
		"kv_channels": hd, "ffn_hidden_size": s.FFN, "padded_vocab_size": s.Vocab,
		"layernorm_epsilon": s.NormEps, "multi_query_attention": s.Groups != s.Heads,
		"multi_query_group_num": s.Groups, "add_qkv_bias": true, "add_bias_linear": false,
		"rmsnorm": true, "post_layer_norm": true, "original_rope": true,
		"apply_residual_connection_post_layernorm": false, "rope_ratio": s.RopeRatio,
		"seq_length": 8192, "torch_dtype": torchDType(s.DType), "eos_token_id": s.EOSIDs, "pad_token_id": 0,
	}
	if s.PreSeqLen > 0 {
		w.normal("transformer.prefix_encoder.embedding.weight", int64(s.PreSeqLen), int64(2*s.Layers*s.Groups)*hd)
		config["pre_seq_len"] = s.PreSeqLen
		config["prefix_projection"] = false
	}
	return config
}

// hfGLM writes transformers' GlmForCausalLM layout. With the same seed it
// draws the same numbers as glm2, in the same order, so both layouts hold
// identical weights.
func (w *writer) hfGLM() map[string]any {
	s := w.spec
	hd := int64(s.Hidden / s.Heads)
	D := int64(s.Hidden)
	qRows, kvRows := int64(s.Heads)*hd, int64(s.Groups)*hd
	w.normal("model.embed_tokens.weight", int64(s.Vocab), D)
	for i := 0; i < s.Layers; i++ {
		p := fmt.Sprintf("model.layers.%d.", i)
		w.norm(p+"input_layernorm.weight", D)
		w.normal(p+"self_attn.q_proj.weight", qRows, D)
		w.normal(p+"self_attn.k_proj.weight", kvRows, D)
		w.normal(p+"self_attn.v_proj.weight", kvRows, D)
		w.normal(p+"self_attn.q_proj.bias", qRows)
		w.normal(p+"self_attn.k_proj.bias", kvRows)
		w.normal(p+"self_attn.v_proj.bias", kvRows)
		w.normal(p+"self_attn.o_proj.weight", D, qRows)
		w.norm(p+"post_attention_layernorm.weight", D)
		w.normal(p+"mlp.gate_up_proj.weight", 2*int64(s.FFN), D)
		w.normal(p+"mlp.down_proj.weight", D, int64(s.FFN))
	}
	w.norm("model.norm.weight", D)
	w.normal("lm_head.weight", int64(s.Vocab), D)
	return map[string]any{
		"model_type": "glm", "architectures": []string{"GlmForCausalLM"},
		"num_hidden_layers": s.Layers, "hidden_size": s.Hidden, "num_attention_heads": s.Heads,
		"num_key_value_heads": s.Groups, "head_dim": hd, "intermediate_size": s.FFN,
		"vocab_size": s.Vocab, "rms_norm_eps": s.NormEps, "rope_theta": 10000 * s.RopeRatio,
		"partial_rotary_factor": 0.5, "attention_bias": true, "hidden_act": "silu",
		"max_position_embeddings": 8192, "tie_word_embeddings": false,
		"torch_dtype": torchDType(s.DType), "eos_token_id": s.EOSIDs, "pad_token_id": 0,
	}
}

func (w *writer) glm1() map[string]any {
	s := w.spec
	D := int64(s.Hidden)
	w.normal("transformer.word_embeddings.weight", int64(s.Vocab), D)
	for i := 0; i < s.Layers; i++ {
		p := fmt.Sprintf("transformer.layers.%d.", i)
		w.norm(p+"input_layernorm.weight", D)
		w.normal(p+"input_layernorm.bias", D)
		w.normal(p+"attention.query_key_value.weight", 3*D, D)
		w.normal(p+"attention.query_key_value.bias", 3*D)
		w.normal(p+"attention.dense.weight", D, D)
		w.normal(p+"attention.dense.bias", D)
		w.norm(p+"post_attention_layernorm.weight", D)
		w.normal(p+"post_attention_layernorm.bias", D)
		w.normal(p+"mlp.dense_h_to_4h.weight", int64(s.FFN), D)
		w.normal(p+"mlp.dense_h_to_4h.bias", int64(s.FFN))
		w.normal(p+"mlp.dense_4h_to_h.weight", D, int64(s.FFN))
		w.normal(p+"mlp.dense_4h_to_h.bias", D)
	}
	w.norm("transformer.final_layernorm.weight", D)
	w.normal("transformer.final_layernorm.bias", D)
	config := map[string]any{
		"model_type": "chatglm", "architectures": []string{"ChatGLMModel"},
		"num_layers": s.Layers, "hidden_size": s.Hidden, "num_attention_heads": s.Heads,
		"inner_hidden_size": s.FFN, "vocab_size": s.Vocab, "layernorm_epsilon": s.NormEps,
		"position_encoding_2d": true, "max_sequence_length": 2048,
		"mask_token_id": s.MaskID, "gmask_token_id": s.GMaskID, "bos_token_id": s.BOSID,
		"eos_token_id": s.EOSID, "pad_token_id": 0, "torch_dtype": torchDType(s.DType),
	}
	if s.PreSeqLen > 0 {
		w.normal("transformer.prefix_encoder.embedding.weight", int64(s.PreSeqLen), int64(2*s.Layers)*D)
		config["pre_seq_len"] = s.PreSeqLen
		config["prefix_projection"] = false
	}
	return config
}

func torchDType(st string) string {
	switch st {
	case "F16":
		return "float16"
	case "BF16":
		return "bfloat16"
	}
	return "float32"
}

// Encode converts float32 values to the little-endian bytes of a
// safetensors dtype (F32, F16 or BF16), rounding to nearest even.
func Encode(vals []float32, dtype string) []byte {
	switch dtype {
	case "F16":
		out := make([]byte, 2*len(vals))
		for i, v := range vals {
			binary.LittleEndian.PutUint16(out[2*i:], Float16Bits(v))
		}
		return out
	case "BF16":
		out := make([]byte, 2*len(vals))
		for i, v := range vals {
			u := math.Float32bits(v)
			u += 0x7fff + (u>>16)&1
			binary.LittleEndian.PutUint16(out[2*i:], uint16(u>>16))
		}
		return out
	default:
		out := make([]byte, 4*len(vals))
		for i, v := range vals {
			binary.LittleEndian.PutUint32(out[4*i:], math.Float32bits(v))
		}
		return out
	}
}

// Float16Bits is the IEEE half-precision encoding of v (round to nearest
// even; overflow to infinity).
func Float16Bits(v float32) uint16 {
	u := math.Float32bits(v)
	sign := uint16(u>>16) & 0x8000
	exp := int((u>>23)&0xff) - 127 + 15
	mant := u & 0x7fffff
	switch {
	case (u>>23)&0xff == 0xff: // Inf or NaN
		if mant != 0 {
			return sign | 0x7e00
		}
		return sign | 0x7c00
	case exp >= 0x1f:
		return sign | 0x7c00
	case exp <= 0:
		if exp < -10 {
			return sign
		}
		mant |= 0x800000
		shift := uint(14 - exp)
		half := mant >> shift
		rem := mant & (1<<shift - 1)
		mid := uint32(1) << (shift - 1)
		if rem > mid || (rem == mid && half&1 == 1) {
			half++
		}
		return sign | uint16(half)
	}
	half := uint32(exp)<<10 | mant>>13
	rem := mant & 0x1fff
	if rem > 0x1000 || (rem == 0x1000 && half&1 == 1) {
		half++
	}
	return sign | uint16(half)
}
