package adapters

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/emoflow/emoflow/internal/model"
	"github.com/emoflow/emoflow/internal/randmodel"
	"github.com/emoflow/emoflow/internal/safetensors"
)

// This file writes adapters in the tools' formats (PEFT LoRA, THUDM P-tuning
// v2, PEFT prefix tuning) with a manifest: tests and demos use it to make
// adapters for the random models no tool was trained on.

// WriteManifest writes dir/emoflow-adapter.json.
func WriteManifest(dir string, m Manifest) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("adapter: %w", err)
	}
	raw, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return fmt.Errorf("adapter: %w", err)
	}
	return os.WriteFile(filepath.Join(dir, ManifestFile), raw, 0o644)
}

// PEFTLoRAConfig is what WritePEFTLoRA puts in adapter_config.json.
type PEFTLoRAConfig struct {
	R             int                `json:"r"`
	LoraAlpha     float64            `json:"lora_alpha"`
	TargetModules []string           `json:"target_modules"`
	UseRSLoRA     bool               `json:"use_rslora"`
	RankPattern   map[string]int     `json:"rank_pattern,omitempty"`
	AlphaPattern  map[string]float64 `json:"alpha_pattern,omitempty"`
}

// WritePEFTLoRA writes parts as PEFT saves a LoRA adapter:
// adapter_config.json and adapter_model.safetensors with the tensor names
// PEFT gives base's modules. The parts' Scale is ignored: PEFT derives it
// from the config.
func WritePEFTLoRA(dir string, base *model.Model, parts []model.LoRAPart, cfg PEFTLoRAConfig) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("adapter: %w", err)
	}
	conf := map[string]any{
		"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": cfg.R, "lora_alpha": cfg.LoraAlpha,
		"target_modules": cfg.TargetModules, "lora_dropout": 0.05, "fan_in_fan_out": false, "bias": "none",
		"use_rslora": cfg.UseRSLoRA, "rank_pattern": cfg.RankPattern, "alpha_pattern": cfg.AlphaPattern,
		"modules_to_save": nil, "inference_mode": true, "base_model_name_or_path": base.Config().Name,
	}
	raw, _ := json.MarshalIndent(conf, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "adapter_config.json"), raw, 0o644); err != nil {
		return fmt.Errorf("adapter: %w", err)
	}
	var tensors []safetensors.Tensor
	for _, p := range parts {
		path := ModulePath(base.Config(), p.Layer, p.Target)
		in := len(p.A) / p.Rank
		rows := len(p.B) / p.Rank
		tensors = append(tensors,
			safetensors.Tensor{Name: "base_model.model." + path + ".lora_A.weight", DType: "F32", Shape: []int64{int64(p.Rank), int64(in)}, Data: randmodel.Encode(p.A, "F32")},
			safetensors.Tensor{Name: "base_model.model." + path + ".lora_B.weight", DType: "F32", Shape: []int64{int64(rows), int64(p.Rank)}, Data: randmodel.Encode(p.B, "F32")})
	}
	return safetensors.Write(filepath.Join(dir, "adapter_model.safetensors"), tensors, map[string]string{"format": "pt"})
}

// ModulePath is the module's path in the checkpoint's own names, as PEFT
// records it.
func ModulePath(c model.Config, layer int, target string) string {
	switch {
	case c.Layout == model.LayoutHF && (target == "q_proj" || target == "k_proj" || target == "v_proj" || target == "o_proj"):
		return fmt.Sprintf("model.layers.%d.self_attn.%s", layer, target)
	case c.Layout == model.LayoutHF:
		return fmt.Sprintf("model.layers.%d.mlp.%s", layer, target)
	case c.Arch == model.ArchGLM1 && (target == "query_key_value" || target == "dense"):
		return fmt.Sprintf("transformer.layers.%d.attention.%s", layer, target)
	case c.Arch == model.ArchGLM1:
		return fmt.Sprintf("transformer.layers.%d.mlp.%s", layer, target)
	case target == "query_key_value" || target == "dense":
		return fmt.Sprintf("transformer.encoder.layers.%d.self_attention.%s", layer, target)
	}
	return fmt.Sprintf("transformer.encoder.layers.%d.mlp.%s", layer, target)
}

// WriteTHUDMPrefix writes a P-tuning v2 checkpoint as THUDM's scripts save
// one (prefix_projection off): config.json with pre_seq_len and
// model.safetensors with transformer.prefix_encoder.embedding.weight
// [preSeqLen, layers·2·groups·headDim].
func WriteTHUDMPrefix(dir string, base *model.Model, embedding []float32, preSeqLen int) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("adapter: %w", err)
	}
	c := base.Config()
	conf := map[string]any{"model_type": "chatglm", "pre_seq_len": preSeqLen, "prefix_projection": false}
	raw, _ := json.MarshalIndent(conf, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "config.json"), raw, 0o644); err != nil {
		return fmt.Errorf("adapter: %w", err)
	}
	width := 2 * c.Layers * c.KVGroups * c.HeadDim
	return safetensors.Write(filepath.Join(dir, "model.safetensors"), []safetensors.Tensor{{
		Name: "transformer.prefix_encoder.embedding.weight", DType: "F32",
		Shape: []int64{int64(preSeqLen), int64(width)}, Data: randmodel.Encode(embedding, "F32"),
	}}, nil)
}

// WritePEFTPrefix writes a PEFT prefix-tuning adapter: adapter_config.json
// and prompt_embeddings [virtual tokens, layers·2·groups·headDim].
func WritePEFTPrefix(dir string, base *model.Model, embeddings []float32, virtualTokens int) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("adapter: %w", err)
	}
	c := base.Config()
	conf := map[string]any{"peft_type": "PREFIX_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": virtualTokens,
		"num_layers": c.Layers, "token_dim": c.KVGroups * c.HeadDim, "num_attention_heads": c.KVGroups, "prefix_projection": false}
	raw, _ := json.MarshalIndent(conf, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "adapter_config.json"), raw, 0o644); err != nil {
		return fmt.Errorf("adapter: %w", err)
	}
	width := 2 * c.Layers * c.KVGroups * c.HeadDim
	return safetensors.Write(filepath.Join(dir, "adapter_model.safetensors"), []safetensors.Tensor{{
		Name: "prompt_embeddings", DType: "F32", Shape: []int64{int64(virtualTokens), int64(width)}, Data: randmodel.Encode(embeddings, "F32"),
	}}, nil)
}
