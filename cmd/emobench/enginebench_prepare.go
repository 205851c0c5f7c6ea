package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/emoflow/emoflow/internal/benchmodel"
	"github.com/emoflow/emoflow/internal/datasets"
	"github.com/emoflow/emoflow/internal/model"
	"github.com/emoflow/emoflow/internal/prompt"
	"github.com/emoflow/emoflow/internal/randmodel"
	"github.com/emoflow/emoflow/internal/tokenizer"
)

// hfCopy returns a folder beside modelDir with the benchmark model's
// weights in transformers' GlmForCausalLM layout, writing it first when it
// is missing: randmodel draws the same numbers for both layouts from one
// spec, and the run checks that both sides compute the same
// probabilities.
func hfCopy(modelDir string) (string, error) {
	spec := benchmodel.Spec()
	spec.HFNames = true
	sum := sha256.Sum256([]byte(fmt.Sprintf("%+v", spec)))
	out := filepath.Join(filepath.Dir(modelDir), "model-hf-glm-"+hex.EncodeToString(sum[:6]))
	if _, err := os.Stat(filepath.Join(out, "model.safetensors")); err == nil {
		return out, nil
	}
	tmp, err := os.MkdirTemp(filepath.Dir(modelDir), ".build-")
	if err != nil {
		return "", fmt.Errorf("transformers copy of the model: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := randmodel.Write(tmp, spec); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, out); err != nil {
		return "", fmt.Errorf("transformers copy of the model: %w", err)
	}
	return out, nil
}

// engineWorkload is what both sides score: the compiled prompt and the
// messages' token ids, sorted by length so that batches pad little.
// bench_hf.py reads it as JSON.
type engineWorkload struct {
	Prefix []int64   `json:"prefix"`
	Suffix []int64   `json:"suffix"`
	Labels [][]int64 `json:"labels"`
	Stop   int64     `json:"stop"`
	Texts  [][]int64 `json:"texts"`

	// tokenizeTime is how long tokenizing the texts took.
	tokenizeTime time.Duration
}

// buildEngineWorkload tokenizes the first n GoEmotions test texts (all
// with n 0) and the default template for tok.
func buildEngineWorkload(dataDir string, tok tokenizer.Tokenizer, n int) (*engineWorkload, model.Prompt, error) {
	test, err := datasets.Read(dataDir, datasets.GoEmotionsEkman, "test")
	if err != nil {
		return nil, model.Prompt{}, fmt.Errorf("messages: %w", err)
	}
	if n > 0 && n < len(test) {
		test = test[:n]
	}
	p, err := prompt.Default().Compile(tok)
	if err != nil {
		return nil, model.Prompt{}, fmt.Errorf("prompt: %w", err)
	}
	w := &engineWorkload{Prefix: p.Prefix, Suffix: p.Suffix, Labels: p.Labels, Stop: p.Stop}
	start := time.Now()
	for _, e := range test {
		w.Texts = append(w.Texts, tokenIDs(tok, e.Text))
	}
	w.tokenizeTime = time.Since(start)
	slices.SortStableFunc(w.Texts, func(a, b []int64) int { return len(a) - len(b) })
	if len(w.Texts) == 0 || len(w.Texts[0]) == 0 {
		return nil, model.Prompt{}, fmt.Errorf("messages: an empty text or no text in %s", dataDir)
	}
	return w, p, nil
}

// write stores the workload as JSON in path.
func (w *engineWorkload) write(path string) error {
	b, err := json.Marshal(w)
	if err != nil {
		return fmt.Errorf("workload: %w", err)
	}
	if err := os.WriteFile(path, b, 0o644); err != nil {
		return fmt.Errorf("workload: %w", err)
	}
	return nil
}

// batches cuts the texts into consecutive batches of size n.
func (w *engineWorkload) batches(n int) [][][]int64 {
	var out [][][]int64
	for i := 0; i < len(w.Texts); i += n {
		out = append(out, w.Texts[i:min(i+n, len(w.Texts))])
	}
	return out
}
