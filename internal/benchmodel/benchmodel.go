// Package benchmodel provides the model every benchmark runs on: a
// ChatGLM3-architecture checkpoint with random weights (4 layers, hidden
// 512, 8 heads, 2 query groups, FFN 1376, the full 65,024-token vocabulary)
// and a real SentencePiece tokenizer trained on GoEmotions texts, written
// once into the download cache ($EMOFLOW_CACHE/bench, default
// ~/.cache/emoflow/bench) and reused by later runs.
package benchmodel

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/emoflow/emoflow/internal/datasets"
	"github.com/emoflow/emoflow/internal/randmodel"
	"github.com/emoflow/emoflow/internal/service"
)

// Spec is the benchmark model's architecture.
func Spec() randmodel.Spec {
	return randmodel.Spec{Arch: "chatglm2", Layers: 4, Hidden: 512, Heads: 8, Groups: 2, FFN: 1376, Vocab: 65024,
		Seed: 42, Std: 0.05, EOSIDs: []int{2}, Name: "emoflow/chatglm3-bench-random"}
}

// TokenizerVocab is the SentencePiece vocabulary of the benchmark tokenizer.
const TokenizerVocab = 16000

// CacheDir is where benchmark artefacts live.
func CacheDir() string {
	return filepath.Join(service.CacheDir(), "bench")
}

// Ensure writes the benchmark model into CacheDir()/model unless it is
// there, and returns the folder. dataDir is the shared data folder.
func Ensure(ctx context.Context, dataDir string) (string, error) {
	dir := filepath.Join(CacheDir(), "model")
	if _, err := os.Stat(filepath.Join(dir, ".complete")); err == nil {
		return dir, nil
	}
	ex, err := datasets.Read(dataDir, datasets.GoEmotionsEkman, "train")
	if err != nil {
		return "", fmt.Errorf("benchmark model: the tokenizer trains on GoEmotions: %w", err)
	}
	lines := make([]string, 0, len(ex)+1)
	for _, e := range ex {
		lines = append(lines, e.Text)
	}
	lines = append(lines, "Classify the emotion of this chat message as one of: anger, disgust, fear, joy, neutral, sadness, surprise.")
	tmp := dir + ".tmp"
	os.RemoveAll(tmp)
	if err := randmodel.TrainTokenizer(ctx, tmp, lines, TokenizerVocab); err != nil {
		return "", err
	}
	if err := randmodel.Write(tmp, Spec()); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(tmp, ".complete"), nil, 0o644); err != nil {
		return "", err
	}
	os.RemoveAll(dir)
	if err := os.Rename(tmp, dir); err != nil {
		return "", fmt.Errorf("benchmark model: %w", err)
	}
	return dir, nil
}

// Texts returns the test texts of GoEmotions (ekman) and MELD.
func Texts(dataDir string) ([]string, error) {
	var out []string
	for _, set := range []datasets.Set{datasets.GoEmotionsEkman, datasets.MELD} {
		ex, err := datasets.Read(dataDir, set, "test")
		if err != nil {
			return nil, err
		}
		for _, e := range ex {
			out = append(out, e.Text)
		}
	}
	return out, nil
}
