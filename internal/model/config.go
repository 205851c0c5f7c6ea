package model

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// Arch is a model architecture the engine implements.
type Arch string

const (
	// ArchGLM1 is ChatGLM-6B: post-layer-norm residuals scaled by
	// sqrt(2·layers), 2-D rotary positions, prefix-LM attention, GeLU MLP,
	// biases everywhere, LM head tied to the embeddings.
	ArchGLM1 Arch = "chatglm-6b"
	// ArchGLM2 is ChatGLM2-6B, ChatGLM3-6B and GLM-4: RMSNorm pre-norm,
	// multi-query attention groups, rotary on the first half of each head
	// (interleaved pairs), SwiGLU, causal attention.
	ArchGLM2 Arch = "chatglm2"
)

// Layout is how a checkpoint names its tensors.
type Layout string

const (
	// LayoutTHUDM is the names of THUDM's own modeling_chatglm.py
	// (transformer.encoder.layers.N.self_attention.query_key_value ...).
	LayoutTHUDM Layout = "thudm"
	// LayoutHF is transformers' native GlmForCausalLM
	// (model.layers.N.self_attn.q_proj ...).
	LayoutHF Layout = "hf-glm"
)

// Config is the architecture of a checkpoint, read from its config.json.
type Config struct {
	Arch   Arch
	Layout Layout
	// Name is a short human name: chatglm-6b, chatglm2-6b, chatglm3-6b,
	// glm-4, or the checkpoint folder's name.
	Name string

	Layers    int
	Hidden    int
	Heads     int
	KVGroups  int // key/value heads; = Heads without multi-query attention
	HeadDim   int
	FFN       int // MLP inner size (per branch for SwiGLU)
	Vocab     int
	NormEps   float64
	QKVBias   bool
	Bias      bool // biases on the other linear layers
	RopeBase  float64
	RotaryDim int // dimensions of each head that rotate (the rest pass through)
	TiedHead  bool
	MaxSeqLen int

	// GLM1 special tokens, needed to lay out 2-D positions and the mask.
	MaskTokenID  int
	GMaskTokenID int
	BOSTokenID   int // <sop>
	EOSTokenIDs  []int
	PadTokenID   int

	// PreSeqLen and PrefixProjection describe a P-tuning v2 prefix encoder
	// baked into a THUDM checkpoint (0 when there is none).
	PreSeqLen        int
	PrefixProjection bool
}

// rawConfig is the union of the config.json fields of the supported
// families.
type rawConfig struct {
	ModelType     string   `json:"model_type"`
	Architectures []string `json:"architectures"`
	NameOrPath    string   `json:"_name_or_path"`

	HiddenSize        int     `json:"hidden_size"`
	NumAttentionHeads int     `json:"num_attention_heads"`
	LayernormEpsilon  float64 `json:"layernorm_epsilon"`
	SeqLength         int     `json:"seq_length"`

	// ChatGLM-6B
	NumLayers          int   `json:"num_layers"`
	InnerHiddenSize    int   `json:"inner_hidden_size"`
	VocabSize          int   `json:"vocab_size"`
	PositionEncoding2D *bool `json:"position_encoding_2d"`
	MaxSequenceLength  int   `json:"max_sequence_length"`
	MaskTokenID        int   `json:"mask_token_id"`
	GMaskTokenID       int   `json:"gmask_token_id"`
	BOSTokenID         int   `json:"bos_token_id"`

	// ChatGLM2/3, GLM-4 (THUDM)
	KVChannels          int      `json:"kv_channels"`
	FFNHiddenSize       int      `json:"ffn_hidden_size"`
	PaddedVocabSize     int      `json:"padded_vocab_size"`
	MultiQueryAttention bool     `json:"multi_query_attention"`
	MultiQueryGroupNum  int      `json:"multi_query_group_num"`
	RMSNorm             *bool    `json:"rmsnorm"`
	AddBiasLinear       bool     `json:"add_bias_linear"`
	AddQKVBias          bool     `json:"add_qkv_bias"`
	PostLayerNorm       *bool    `json:"post_layer_norm"`
	ResidualPostLN      bool     `json:"apply_residual_connection_post_layernorm"`
	RopeRatio           *float64 `json:"rope_ratio"`
	OriginalRope        *bool    `json:"original_rope"`
	PreSeqLen           *int     `json:"pre_seq_len"`
	PrefixProjection    bool     `json:"prefix_projection"`
	TieWordEmbeddings   *bool    `json:"tie_word_embeddings"`

	// transformers' glm
	NumHiddenLayers     int     `json:"num_hidden_layers"`
	IntermediateSize    int     `json:"intermediate_size"`
	NumKeyValueHeads    int     `json:"num_key_value_heads"`
	HeadDim             int     `json:"head_dim"`
	PartialRotaryFactor float64 `json:"partial_rotary_factor"`
	RMSNormEps          float64 `json:"rms_norm_eps"`
	RopeTheta           float64 `json:"rope_theta"`
	AttentionBias       bool    `json:"attention_bias"`
	HiddenAct           string  `json:"hidden_act"`
	MaxPositionEmbed    int     `json:"max_position_embeddings"`

	EOSTokenID json.RawMessage `json:"eos_token_id"`
	PadTokenID *int            `json:"pad_token_id"`
}

// ReadConfig reads dir/config.json.
func ReadConfig(dir string) (Config, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return Config{}, fmt.Errorf("model config: %w", err)
	}
	cfg, err := ParseConfig(raw)
	if err != nil {
		return Config{}, fmt.Errorf("model config %s: %w", filepath.Join(dir, "config.json"), err)
	}
	if cfg.Name == "" {
		cfg.Name = filepath.Base(filepath.Clean(dir))
	}
	return cfg, nil
}

// ParseConfig reads a config.json of ChatGLM-6B, ChatGLM2/3, GLM-4 or
// transformers' glm.
func ParseConfig(data []byte) (Config, error) {
	var r rawConfig
	if err := json.Unmarshal(data, &r); err != nil {
		return Config{}, fmt.Errorf("not valid JSON: %w", err)
	}
	var c Config
	switch {
	case r.ModelType == "glm":
		c = Config{
			Arch: ArchGLM2, Layout: LayoutHF,
			Layers: r.NumHiddenLayers, Hidden: r.HiddenSize, Heads: r.NumAttentionHeads,
			KVGroups: r.NumKeyValueHeads, HeadDim: r.HeadDim, FFN: r.IntermediateSize,
			Vocab: r.VocabSize, NormEps: r.RMSNormEps, QKVBias: r.AttentionBias,
			RopeBase: r.RopeTheta, MaxSeqLen: r.MaxPositionEmbed,
		}
		if c.HeadDim == 0 && c.Heads > 0 {
			c.HeadDim = c.Hidden / c.Heads
		}
		if c.KVGroups == 0 {
			c.KVGroups = c.Heads
		}
		factor := r.PartialRotaryFactor
		if factor == 0 {
			factor = 0.5
		}
		c.RotaryDim = int(float64(c.HeadDim) * factor)
		if c.RopeBase == 0 {
			c.RopeBase = 10000
		}
		if r.HiddenAct != "" && r.HiddenAct != "silu" {
			return Config{}, fmt.Errorf("glm: hidden_act %q is not supported (want silu)", r.HiddenAct)
		}
		c.TiedHead = r.TieWordEmbeddings != nil && *r.TieWordEmbeddings
	case r.ModelType == "chatglm" && isGLM1(r):
		c = Config{
			Arch: ArchGLM1, Layout: LayoutTHUDM, Name: "chatglm-6b",
			Layers: r.NumLayers, Hidden: r.HiddenSize, Heads: r.NumAttentionHeads,
			KVGroups: r.NumAttentionHeads, FFN: r.InnerHiddenSize, Vocab: r.VocabSize,
			NormEps: r.LayernormEpsilon, QKVBias: true, Bias: true, RopeBase: 10000,
			TiedHead: true, MaxSeqLen: r.MaxSequenceLength,
			MaskTokenID: r.MaskTokenID, GMaskTokenID: r.GMaskTokenID, BOSTokenID: r.BOSTokenID,
			PrefixProjection: r.PrefixProjection,
		}
		if c.Heads > 0 {
			c.HeadDim = c.Hidden / c.Heads
		}
		if c.FFN == 0 {
			c.FFN = 4 * c.Hidden
		}
		c.RotaryDim = c.HeadDim
		if r.PositionEncoding2D != nil && !*r.PositionEncoding2D {
			return Config{}, fmt.Errorf("chatglm-6b: position_encoding_2d=false is not supported")
		}
	case r.ModelType == "chatglm":
		c = Config{
			Arch: ArchGLM2, Layout: LayoutTHUDM,
			Layers: r.NumLayers, Hidden: r.HiddenSize, Heads: r.NumAttentionHeads,
			KVGroups: r.NumAttentionHeads, HeadDim: r.KVChannels, FFN: r.FFNHiddenSize,
			Vocab: r.PaddedVocabSize, NormEps: r.LayernormEpsilon,
			QKVBias: r.AddBiasLinear || r.AddQKVBias, Bias: r.AddBiasLinear,
			RopeBase: 10000, MaxSeqLen: r.SeqLength, PrefixProjection: r.PrefixProjection,
		}
		if r.MultiQueryAttention {
			c.KVGroups = r.MultiQueryGroupNum
		}
		if c.HeadDim == 0 && c.Heads > 0 {
			c.HeadDim = c.Hidden / c.Heads
		}
		if c.Vocab == 0 {
			c.Vocab = r.VocabSize
		}
		if r.RopeRatio != nil {
			c.RopeBase *= *r.RopeRatio
		}
		c.RotaryDim = c.HeadDim / 2
		switch {
		case r.RMSNorm != nil && !*r.RMSNorm:
			return Config{}, fmt.Errorf("chatglm2: rmsnorm=false is not supported")
		case r.PostLayerNorm != nil && !*r.PostLayerNorm:
			return Config{}, fmt.Errorf("chatglm2: post_layer_norm=false is not supported")
		case r.ResidualPostLN:
			return Config{}, fmt.Errorf("chatglm2: apply_residual_connection_post_layernorm=true is not supported")
		case r.OriginalRope != nil && !*r.OriginalRope:
			return Config{}, fmt.Errorf("chatglm2: original_rope=false is not supported")
		}
		switch c.Vocab {
		case 151552:
			c.Name = "glm-4"
		case 65024:
			c.Name = "chatglm3-6b"
		}
	default:
		return Config{}, fmt.Errorf("model_type %q is not supported (want chatglm or glm)", r.ModelType)
	}
	if r.NameOrPath != "" {
		c.Name = filepath.Base(r.NameOrPath)
	}
	if r.PreSeqLen != nil {
		c.PreSeqLen = *r.PreSeqLen
	}
	c.EOSTokenIDs = parseIDs(r.EOSTokenID)
	if r.PadTokenID != nil {
		c.PadTokenID = *r.PadTokenID
	}
	if err := c.Validate(); err != nil {
		return Config{}, err
	}
	return c, nil
}

func isGLM1(r rawConfig) bool {
	return r.PositionEncoding2D != nil || r.InnerHiddenSize > 0 || (r.PaddedVocabSize == 0 && r.FFNHiddenSize == 0 && r.KVChannels == 0)
}

func parseIDs(raw json.RawMessage) []int {
	if len(raw) == 0 {
		return nil
	}
	var one int
	if json.Unmarshal(raw, &one) == nil {
		return []int{one}
	}
	var many []int
	if json.Unmarshal(raw, &many) == nil {
		return many
	}
	return nil
}

// Validate checks that the numbers describe a model the engine can run.
func (c Config) Validate() error {
	switch {
	case c.Layers <= 0 || c.Hidden <= 0 || c.Heads <= 0 || c.HeadDim <= 0 || c.FFN <= 0 || c.Vocab <= 0:
		return fmt.Errorf("config: layers, hidden size, heads, head dim, FFN size and vocabulary must be positive (got %d, %d, %d, %d, %d, %d)",
			c.Layers, c.Hidden, c.Heads, c.HeadDim, c.FFN, c.Vocab)
	case c.KVGroups <= 0 || c.Heads%c.KVGroups != 0:
		return fmt.Errorf("config: %d attention heads cannot be split into %d key/value groups", c.Heads, c.KVGroups)
	case c.RotaryDim <= 0 || c.RotaryDim > c.HeadDim || c.RotaryDim%2 != 0:
		return fmt.Errorf("config: rotary dimension %d does not fit head dimension %d", c.RotaryDim, c.HeadDim)
	case c.Arch == ArchGLM1 && c.HeadDim%4 != 0:
		return fmt.Errorf("config: chatglm-6b needs a head dimension divisible by 4, got %d", c.HeadDim)
	case c.NormEps <= 0:
		return fmt.Errorf("config: layer norm epsilon must be positive, got %g", c.NormEps)
	case c.PreSeqLen < 0:
		return fmt.Errorf("config: pre_seq_len must not be negative")
	}
	return nil
}
