package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"

	"github.com/emoflow/emoflow/internal/datasets"
	"github.com/emoflow/emoflow/internal/randmodel"
	"github.com/emoflow/emoflow/internal/service"
	"github.com/emoflow/emoflow/internal/tokenizer"
)

// tinyModel writes a ChatGLM3-architecture checkpoint with random weights
// and a real SentencePiece tokenizer trained (with spm_train, in ChatGLM3's
// settings) on chat text: a stand-in until trained weights are at hand.
func tinyModel(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("tiny-model", flag.ContinueOnError)
	out := fs.String("out", "", "folder to write (required)")
	data := fs.String("data", defaultDataDir(), "shared data folder whose GoEmotions texts train the tokenizer (a built-in sample when absent)")
	vocab := fs.Int("tokenizer-vocab", 8000, "SentencePiece vocabulary size")
	modelVocab := fs.Int("model-vocab", 0, "model vocabulary (embedding rows); 0: the tokenizer's, rounded up to 64")
	layers := fs.Int("layers", 2, "transformer layers")
	hidden := fs.Int("hidden", 256, "hidden size")
	heads := fs.Int("heads", 8, "attention heads")
	groups := fs.Int("groups", 2, "key/value groups")
	ffn := fs.Int("ffn", 688, "MLP inner size")
	dtype := fs.String("dtype", "F32", "stored dtype: F32, F16 or BF16")
	seed := fs.Uint64("seed", 1, "random seed of the weights")
	force := fs.Bool("force", false, "overwrite an existing model")
	if err := service.ParseConfig(fs, args, service.LookupEnv); err != nil {
		return err
	}
	if *out == "" {
		return errors.New("-out is required")
	}
	if _, err := os.Stat(filepath.Join(*out, "model.safetensors")); err == nil && !*force {
		fmt.Fprintf(os.Stderr, "emoctl tiny-model: %s already holds a model (use -force to rewrite it)\n", *out)
		return nil
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	if err := randmodel.TrainTokenizer(ctx, *out, corpusLines(*data), *vocab); err != nil {
		return err
	}
	name := "emoflow/chatglm3-tiny-random"
	tok, err := tokenizer.Load(*out, tokenizer.Options{})
	if err != nil {
		return fmt.Errorf("the trained tokenizer does not load: %w", err)
	}
	v := *modelVocab
	if v == 0 {
		v = (tok.VocabSize() + 63) / 64 * 64
	}
	if v < tok.VocabSize() {
		return fmt.Errorf("-model-vocab %d is smaller than the tokenizer's %d tokens", v, tok.VocabSize())
	}
	spec := randmodel.Spec{Arch: "chatglm2", Layers: *layers, Hidden: *hidden, Heads: *heads, Groups: *groups,
		FFN: *ffn, Vocab: v, DType: *dtype, Seed: *seed, Std: 0.05, EOSIDs: tok.StopIDs(), Name: name}
	if err := randmodel.Write(*out, spec); err != nil {
		return err
	}
	note := "RANDOM WEIGHTS: this ChatGLM3-architecture model was written by `emoctl tiny-model` for demos and tests.\n" +
		"Its answers mean nothing. Replace it with a trained checkpoint (config.json, weights, tokenizer.model).\n"
	if err := os.WriteFile(filepath.Join(*out, "README.txt"), []byte(note), 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "emoctl tiny-model: wrote %s (%d layers, hidden %d, vocabulary %d, tokenizer %s with %d tokens; random weights)\n",
		*out, *layers, *hidden, v, tok.Family(), tok.VocabSize())
	return nil
}

// defaultDataDir is ../shared/data beside the working directory's
// repository, or EMOFLOW_SHARED/data.
func defaultDataDir() string {
	if s := os.Getenv("EMOFLOW_SHARED"); s != "" {
		return filepath.Join(s, "data")
	}
	return filepath.Join("..", "shared", "data")
}

// corpusLines is the tokenizer's training text: GoEmotions' training
// texts, or the built-in sample, and the default prompt's words.
func corpusLines(dataDir string) []string {
	var lines []string
	if ex, err := datasets.Read(dataDir, datasets.GoEmotionsEkman, "train"); err == nil {
		for _, e := range ex {
			lines = append(lines, e.Text)
		}
	} else {
		fmt.Fprintf(os.Stderr, "emoctl: no shared data (%v); training the tokenizer on the built-in sample\n", err)
		for _, s := range builtinSample {
			lines = append(lines, s.text)
		}
	}
	return append(lines, "Classify the emotion of this chat message as one of: anger, disgust, fear, joy, neutral, sadness, surprise.",
		"Message:", "Answer with one word.")
}
