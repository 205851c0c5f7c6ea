package adapters

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/emoflow/emoflow/internal/model"
)

// peftConfig is the part of PEFT's adapter_config.json the engine reads.
type peftConfig struct {
	PeftType      string             `json:"peft_type"`
	R             int                `json:"r"`
	LoraAlpha     float64            `json:"lora_alpha"`
	TargetModules json.RawMessage    `json:"target_modules"`
	FanInFanOut   bool               `json:"fan_in_fan_out"`
	Bias          string             `json:"bias"`
	UseRSLoRA     bool               `json:"use_rslora"`
	UseDoRA       bool               `json:"use_dora"`
	ModulesToSave []string           `json:"modules_to_save"`
	RankPattern   map[string]int     `json:"rank_pattern"`
	AlphaPattern  map[string]float64 `json:"alpha_pattern"`

	// Prefix tuning.
	NumVirtualTokens int  `json:"num_virtual_tokens"`
	NumLayers        int  `json:"num_layers"`
	PrefixProjection bool `json:"prefix_projection"`
}

func readPEFTConfig(dir string) (peftConfig, error) {
	var c peftConfig
	raw, err := os.ReadFile(filepath.Join(dir, "adapter_config.json"))
	if err != nil {
		return c, fmt.Errorf("PEFT adapter: %w", err)
	}
	if err := json.Unmarshal(raw, &c); err != nil {
		return c, fmt.Errorf("PEFT adapter: adapter_config.json is not valid JSON: %w", err)
	}
	return c, nil
}

// loraTensor matches PEFT's tensor names for ChatGLM (THUDM names) and
// transformers' glm: "base_model.model.<module path>.lora_A.weight", with
// older PEFT versions keeping the adapter name ("lora_A.default.weight").
var loraTensor = regexp.MustCompile(`^(?:base_model\.model\.)?(.*\.layers\.(\d+)\.(?:.*\.)?([a-z0-9_]+))\.lora_([AB])(?:\.[A-Za-z0-9_]+)?\.weight$`)

// readPEFTLoRA reads a PEFT LoRA adapter (adapter_config.json and
// adapter_model.safetensors or .bin) into the engine's update parts.
func readPEFTLoRA(dir string, base *model.Model) ([]model.LoRAPart, error) {
	cfg, err := readPEFTConfig(dir)
	if err != nil {
		return nil, err
	}
	switch {
	case cfg.PeftType != "LORA":
		return nil, fmt.Errorf("adapter_config.json: peft_type %q, want LORA for method lora", cfg.PeftType)
	case cfg.R <= 0:
		return nil, fmt.Errorf("adapter_config.json: r must be positive, got %d", cfg.R)
	case cfg.FanInFanOut:
		return nil, fmt.Errorf("adapter_config.json: fan_in_fan_out is for GPT-2's Conv1D layers; ChatGLM's are Linear")
	case cfg.Bias != "" && cfg.Bias != "none":
		return nil, fmt.Errorf("adapter_config.json: bias=%q is not supported (train with bias=\"none\")", cfg.Bias)
	case len(cfg.ModulesToSave) > 0:
		return nil, fmt.Errorf("adapter_config.json: modules_to_save %v is not supported", cfg.ModulesToSave)
	case cfg.UseDoRA:
		return nil, fmt.Errorf("adapter_config.json: DoRA (use_dora) is not supported")
	}
	targets, err := targetMatcher(cfg.TargetModules)
	if err != nil {
		return nil, err
	}
	ckpt, err := model.OpenCheckpoint(dir, "adapter_model")
	if err != nil {
		return nil, fmt.Errorf("LoRA weights: %w", err)
	}
	defer ckpt.Close()

	type pair struct {
		layer      int
		module     string // last path element (query_key_value, q_proj, ...)
		path       string
		a, b       []float32
		rankA      int
		rankB      int
		foundA, fB bool
	}
	pairs := map[string]*pair{}
	for _, name := range ckpt.Names() {
		m := loraTensor.FindStringSubmatch(name)
		if m == nil {
			return nil, fmt.Errorf("LoRA weights: unexpected tensor %q (modules_to_save, biases and embedding LoRA are not supported)", name)
		}
		path, layerStr, module, ab := m[1], m[2], m[3], m[4]
		if !targets(path, module) {
			return nil, fmt.Errorf("LoRA weights: %q is not in target_modules", path)
		}
		layer, _ := strconv.Atoi(layerStr)
		p := pairs[path]
		if p == nil {
			p = &pair{layer: layer, module: module, path: path}
			pairs[path] = p
		}
		shape, _ := ckpt.Shape(name)
		if len(shape) != 2 {
			return nil, fmt.Errorf("LoRA weights: %s has shape %v, want a matrix", name, shape)
		}
		vals, err := ckpt.Float32s(name)
		if err != nil {
			return nil, fmt.Errorf("LoRA weights: %w", err)
		}
		if ab == "A" {
			p.a, p.rankA, p.foundA = vals, int(shape[0]), true
		} else {
			p.b, p.rankB, p.fB = vals, int(shape[1]), true
		}
	}
	if len(pairs) == 0 {
		return nil, errors.New("LoRA weights: no lora_A/lora_B tensors")
	}
	paths := make([]string, 0, len(pairs))
	for p := range pairs {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	var parts []model.LoRAPart
	for _, path := range paths {
		p := pairs[path]
		if !p.foundA || !p.fB {
			return nil, fmt.Errorf("LoRA weights: %s has only one of lora_A and lora_B", path)
		}
		r := cfg.R
		if pr, ok := patternValue(cfg.RankPattern, path); ok {
			r = pr
		}
		if r <= 0 {
			return nil, fmt.Errorf("adapter_config.json: rank_pattern gives %s rank %d; ranks must be positive", path, r)
		}
		if p.rankA != r || p.rankB != r {
			return nil, fmt.Errorf("LoRA weights: %s has rank %d (A) / %d (B) but adapter_config.json says %d: rank mismatch", path, p.rankA, p.rankB, r)
		}
		alpha := cfg.LoraAlpha
		if pa, ok := patternValueF(cfg.AlphaPattern, path); ok {
			alpha = pa
		}
		scale := alpha / float64(r)
		if cfg.UseRSLoRA {
			scale = alpha / math.Sqrt(float64(r))
		}
		// The engine scales in float32: a larger scale would be +Inf there
		// and turn every output into NaN.
		if math.Abs(scale) > math.MaxFloat32 {
			return nil, fmt.Errorf("adapter_config.json: lora_alpha %g gives %s a scale of %g, beyond float32", alpha, path, scale)
		}
		parts = append(parts, model.LoRAPart{Layer: p.layer, Target: p.module, Rank: r, A: p.a, B: p.b, Scale: scale})
	}
	return parts, nil
}

// targetMatcher turns PEFT's target_modules (a list of module-name suffixes
// or one regular expression over the full path) into a predicate.
func targetMatcher(raw json.RawMessage) (func(path, module string) bool, error) {
	var list []string
	if err := json.Unmarshal(raw, &list); err == nil {
		return func(path, module string) bool {
			for _, t := range list {
				if module == t || strings.HasSuffix(path, "."+t) {
					return true
				}
			}
			return false
		}, nil
	}
	var expr string
	if err := json.Unmarshal(raw, &expr); err == nil && expr != "" {
		re, err := regexp.Compile("^(?:" + expr + ")$")
		if err != nil {
			return nil, fmt.Errorf("adapter_config.json: target_modules %q: %w", expr, err)
		}
		return func(path, _ string) bool { return re.MatchString(path) }, nil
	}
	return nil, fmt.Errorf("adapter_config.json: target_modules must be a list of names or a regular expression")
}

// patternValue finds the rank_pattern entry for a module path as PEFT does:
// a key matches a path that ends with it (as a regular expression over
// whole path elements).
func patternValue(patterns map[string]int, path string) (int, bool) {
	for _, key := range sortedKeys(patterns) {
		if patternMatches(key, path) {
			return patterns[key], true
		}
	}
	return 0, false
}

func patternValueF(patterns map[string]float64, path string) (float64, bool) {
	for _, key := range sortedKeys(patterns) {
		if patternMatches(key, path) {
			return patterns[key], true
		}
	}
	return 0, false
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	// Longer (more specific) keys first, so the choice does not depend on
	// map order.
	sort.Slice(keys, func(i, j int) bool {
		if len(keys[i]) != len(keys[j]) {
			return len(keys[i]) > len(keys[j])
		}
		return keys[i] < keys[j]
	})
	return keys
}

func patternMatches(key, path string) bool {
	re, err := regexp.Compile(`^(?:.*\.)?(?:` + key + `)$`)
	return err == nil && re.MatchString(path)
}

// readTHUDMPrefix reads a P-tuning v2 checkpoint as THUDM's ptuning scripts
// save it: config.json with pre_seq_len (and prefix_projection), and
// pytorch_model.bin (or model.safetensors) holding transformer.prefix_encoder.*.
func readTHUDMPrefix(dir string, base *model.Model) (*model.KV, error) {
	raw, err := os.ReadFile(filepath.Join(dir, "config.json"))
	if err != nil {
		return nil, fmt.Errorf("ptuning-v2: %w", err)
	}
	var cfg struct {
		PreSeqLen        int  `json:"pre_seq_len"`
		PrefixProjection bool `json:"prefix_projection"`
	}
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return nil, fmt.Errorf("ptuning-v2: config.json is not valid JSON: %w", err)
	}
	if cfg.PreSeqLen <= 0 {
		return nil, fmt.Errorf("ptuning-v2: config.json must set pre_seq_len")
	}
	var ckpt *model.Checkpoint
	for _, name := range []string{"pytorch_model", "model"} {
		if ckpt, err = model.OpenCheckpoint(dir, name); err == nil {
			break
		}
		if !errors.Is(err, os.ErrNotExist) {
			return nil, fmt.Errorf("ptuning-v2 weights: %w", err)
		}
	}
	if ckpt == nil {
		return nil, fmt.Errorf("ptuning-v2 weights: no pytorch_model.bin or model.safetensors in %s", dir)
	}
	defer ckpt.Close()
	kv, err := base.PrefixFromCheckpoint(ckpt, cfg.PreSeqLen, cfg.PrefixProjection)
	if err != nil {
		return nil, fmt.Errorf("ptuning-v2: %w", err)
	}
	return kv, nil
}

// readPEFTPrefix reads a PEFT prefix-tuning adapter: adapter_config.json and
// prompt_embeddings [num_virtual_tokens, layers·2·kv heads·head dim].
func readPEFTPrefix(dir string, base *model.Model) (*model.KV, error) {
	cfg, err := readPEFTConfig(dir)
	if err != nil {
		return nil, err
	}
	if cfg.PeftType != "PREFIX_TUNING" {
		return nil, fmt.Errorf("adapter_config.json: peft_type %q, want PREFIX_TUNING for method prefix-tuning", cfg.PeftType)
	}
	if cfg.NumLayers != 0 && cfg.NumLayers != base.Config().Layers {
		return nil, fmt.Errorf("adapter_config.json: num_layers %d, the model has %d", cfg.NumLayers, base.Config().Layers)
	}
	ckpt, err := model.OpenCheckpoint(dir, "adapter_model")
	if err != nil {
		return nil, fmt.Errorf("prefix weights: %w", err)
	}
	defer ckpt.Close()
	shape, ok := ckpt.Shape("prompt_embeddings")
	if !ok || len(shape) != 2 {
		return nil, fmt.Errorf("prefix weights: no prompt_embeddings matrix (saved with an old PEFT, or not a prefix-tuning adapter)")
	}
	if cfg.NumVirtualTokens != 0 && int(shape[0]) != cfg.NumVirtualTokens {
		return nil, fmt.Errorf("prefix weights: %d virtual tokens, adapter_config.json says %d", shape[0], cfg.NumVirtualTokens)
	}
	vals, err := ckpt.Float32s("prompt_embeddings")
	if err != nil {
		return nil, fmt.Errorf("prefix weights: %w", err)
	}
	return base.PrefixFromEmbeddings(vals, int(shape[0]))
}
