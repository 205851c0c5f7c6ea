// Package adapters loads the adapters users train on a ChatGLM base model —
// LoRA from Hugging Face PEFT, P-tuning v2 from THUDM's scripts, prefix
// tuning from PEFT — as those tools write them, checks them against the
// served model, and keeps the set of adapters a classifier serves (the
// Registry): loaded, unloaded and listed while serving, reference counted so
// that in-flight batches finish on the version they started with.
//
// Every adapter folder carries a manifest, emoflow-adapter.json, beside the
// tool's own files:
//
//	{
//	  "id": "support-ekman", "version": "3", "method": "lora",
//	  "base_model": {"name": "chatglm3-6b", "fingerprint": "9f2c..."},
//	  "template": {"name": "ekman-en-v1", "text": "...{text}...", "labels": ["anger", ...], "wrap": "chat"},
//	  "language": "en",
//	  "merge": false
//	}
//
// method is lora (adapter_config.json + adapter_model.safetensors or .bin),
// ptuning-v2 (THUDM: config.json with pre_seq_len + pytorch_model.bin or
// model.safetensors holding transformer.prefix_encoder.*) or prefix-tuning
// (PEFT: adapter_config.json + prompt_embeddings).
package adapters

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"

	"github.com/emoflow/emoflow/internal/model"
	"github.com/emoflow/emoflow/internal/prompt"
	"github.com/emoflow/emoflow/internal/tokenizer"
)

// ManifestFile is the manifest's name in an adapter folder.
const ManifestFile = "emoflow-adapter.json"

// Methods.
const (
	MethodLoRA         = "lora"
	MethodPTuningV2    = "ptuning-v2"
	MethodPrefixTuning = "prefix-tuning"
	// MethodNone is the bare base model with a prompt template.
	MethodNone = "none"
)

// Manifest describes an adapter.
type Manifest struct {
	ID        string          `json:"id"`
	Version   string          `json:"version"`
	Method    string          `json:"method"`
	BaseModel BaseModel       `json:"base_model"`
	Template  prompt.Template `json:"template"`
	Language  string          `json:"language,omitempty"`
	// Merge asks for the LoRA update to be merged into a copy of the
	// weights: fastest, but its rows cannot share batches with others.
	Merge bool `json:"merge,omitempty"`
}

// BaseModel identifies the model an adapter was trained on.
type BaseModel struct {
	Name string `json:"name"`
	// Fingerprint is the served model's weights fingerprint (GET
	// /v1/adapters reports it as model = name@fingerprint).
	Fingerprint string `json:"fingerprint"`
}

// Ref is "id@version".
func (m Manifest) Ref() string { return m.ID + "@" + m.Version }

var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// ValidID reports whether id may name an adapter: 1-64 letters, digits,
// '.', '_' or '-', starting with a letter or digit, and not the reserved
// "base".
func ValidID(id string) bool { return namePattern.MatchString(id) && id != "base" }

var versionPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}$`)

// ReadManifest reads and checks dir's manifest.
func ReadManifest(dir string) (Manifest, error) {
	var m Manifest
	raw, err := os.ReadFile(filepath.Join(dir, ManifestFile))
	if err != nil {
		return m, fmt.Errorf("adapter %s: %w", dir, err)
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return m, fmt.Errorf("adapter %s: %s is not valid JSON: %w", dir, ManifestFile, err)
	}
	switch {
	case !namePattern.MatchString(m.ID):
		return m, fmt.Errorf("adapter %s: id %q must be 1-64 letters, digits, '.', '_' or '-'", dir, m.ID)
	case !versionPattern.MatchString(m.Version):
		return m, fmt.Errorf("adapter %s: version %q must be 1-64 letters, digits, '.', '_', '+' or '-'", dir, m.Version)
	case m.ID == "base":
		return m, fmt.Errorf("adapter %s: id \"base\" is reserved for the bare base model", dir)
	case m.Method != MethodLoRA && m.Method != MethodPTuningV2 && m.Method != MethodPrefixTuning:
		return m, fmt.Errorf("adapter %s: method %q (want %s, %s or %s)", dir, m.Method, MethodLoRA, MethodPTuningV2, MethodPrefixTuning)
	case m.Merge && m.Method != MethodLoRA:
		return m, fmt.Errorf("adapter %s: only LoRA adapters can be merged", dir)
	case m.BaseModel.Fingerprint == "":
		return m, fmt.Errorf("adapter %s: base_model.fingerprint is required (the served model's fingerprint)", dir)
	}
	if err := m.Template.Validate(); err != nil {
		return m, fmt.Errorf("adapter %s: template: %w", dir, err)
	}
	return m, nil
}

// ErrWrongBase is an adapter trained on another base model.
var ErrWrongBase = errors.New("adapter was trained on another base model")

// Adapter is a loaded adapter version, ready to score.
type Adapter struct {
	Manifest Manifest
	Dir      string
	// Scorer scores texts with the adapter's template and weights.
	Scorer *model.Scorer
	// Input builds a message's tokens (its context and text) for Scorer.
	Input prompt.Input
	// Model is the model the Scorer runs on: the base model, or a merged
	// copy for merged LoRA.
	Model *model.Model

	lora   *model.LoRA
	prefix *model.KV
	merged bool
}

// Merged reports whether the adapter runs on its own merged weights.
func (a *Adapter) Merged() bool { return a.merged }

// Close frees the adapter's tensors.
func (a *Adapter) Close() {
	if a.Scorer != nil {
		a.Scorer.Close()
	}
	a.lora.Free()
	a.prefix.Free()
	if a.merged {
		a.Model.Close()
	}
}

// Options tune how adapters are built.
type Options struct {
	// MaxTextTokens bounds a message's text (see model.ScorerOptions).
	MaxTextTokens int
	// ForceUnmerged serves merge:true adapters unmerged (one worker that
	// must mix adapters in batches).
	ForceUnmerged bool
}

// Load reads the adapter in dir and prepares it on base.
func Load(dir string, base *model.Model, tok tokenizer.Tokenizer, opts Options) (*Adapter, error) {
	man, err := ReadManifest(dir)
	if err != nil {
		return nil, err
	}
	if man.BaseModel.Fingerprint != base.Fingerprint() {
		return nil, fmt.Errorf("adapter %s (%s): %w: it names %s@%s, this worker serves %s", man.Ref(), dir, ErrWrongBase,
			man.BaseModel.Name, man.BaseModel.Fingerprint, base.ID())
	}
	p, in, err := compile(man.Template, tok, opts)
	if err != nil {
		return nil, fmt.Errorf("adapter %s: template: %w", man.Ref(), err)
	}
	a := &Adapter{Manifest: man, Dir: dir, Model: base, Input: in}
	firstPos := 0
	switch man.Method {
	case MethodLoRA:
		parts, err := readPEFTLoRA(dir, base)
		if err != nil {
			return nil, fmt.Errorf("adapter %s: %w", man.Ref(), err)
		}
		if a.lora, err = base.NewLoRA(parts); err != nil {
			return nil, fmt.Errorf("adapter %s: %w", man.Ref(), err)
		}
		if man.Merge && !opts.ForceUnmerged {
			if a.Model, err = base.Merged(a.lora); err != nil {
				a.Close()
				return nil, fmt.Errorf("adapter %s: %w", man.Ref(), err)
			}
			a.merged = true
			a.lora.Free()
			a.lora = nil
		}
	case MethodPTuningV2:
		if a.prefix, err = readTHUDMPrefix(dir, base); err != nil {
			return nil, fmt.Errorf("adapter %s: %w", man.Ref(), err)
		}
	case MethodPrefixTuning:
		if a.prefix, err = readPEFTPrefix(dir, base); err != nil {
			return nil, fmt.Errorf("adapter %s: %w", man.Ref(), err)
		}
		// PEFT drops position_ids, and transformers' glm then numbers the
		// tokens after the virtual ones; THUDM's ChatGLM counts from 0.
		if base.Config().Layout == model.LayoutHF {
			firstPos = a.prefix.Len
		}
	}
	a.Scorer, err = model.NewScorer(a.Model, p, model.ScorerOptions{MaxTextTokens: in.MaxTokens(), LoRA: a.lora, AdapterPast: a.prefix, AdapterPastPositions: firstPos})
	if err != nil {
		a.Close()
		return nil, fmt.Errorf("adapter %s: %w", man.Ref(), err)
	}
	return a, nil
}

// Bare is the base model with a template, served as the pseudo-adapter
// "base@<template version>".
func Bare(base *model.Model, tok tokenizer.Tokenizer, tmpl prompt.Template, opts Options) (*Adapter, error) {
	p, in, err := compile(tmpl, tok, opts)
	if err != nil {
		return nil, fmt.Errorf("prompt template %q: %w", tmpl.Name, err)
	}
	sc, err := model.NewScorer(base, p, model.ScorerOptions{MaxTextTokens: in.MaxTokens()})
	if err != nil {
		return nil, fmt.Errorf("prompt template %q: %w", tmpl.Name, err)
	}
	man := Manifest{ID: "base", Version: tmpl.Version(), Method: MethodNone, Template: tmpl, Language: tmpl.Language,
		BaseModel: BaseModel{Name: base.Config().Name, Fingerprint: base.Fingerprint()}}
	return &Adapter{Manifest: man, Scorer: sc, Model: base, Input: in}, nil
}

// compile prepares a template's shared prompt and per-message input.
func compile(tmpl prompt.Template, tok tokenizer.Tokenizer, opts Options) (model.Prompt, prompt.Input, error) {
	p, err := tmpl.Compile(tok)
	if err != nil {
		return model.Prompt{}, prompt.Input{}, err
	}
	maxText := opts.MaxTextTokens
	if maxText <= 0 {
		maxText = 512
	}
	in, err := tmpl.Input(tok, maxText)
	return p, in, err
}
