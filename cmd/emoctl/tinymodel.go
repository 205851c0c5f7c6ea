package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

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
	corpus, err := writeCorpus(*data, *out)
	if err != nil {
		return err
	}
	defer os.Remove(corpus)
	prefix := filepath.Join(*out, "spm")
	train := exec.CommandContext(ctx, "spm_train", "--input="+corpus, "--model_prefix="+prefix,
		"--model_type=bpe", fmt.Sprintf("--vocab_size=%d", *vocab), "--byte_fallback=true",
		"--normalization_rule_name=identity", "--add_dummy_prefix=true", "--remove_extra_whitespaces=false",
		"--split_digits=true", "--allow_whitespace_only_pieces=true", "--character_coverage=0.9995",
		"--hard_vocab_limit=false", "--num_threads=2", "--minloglevel=2")
	if msg, err := train.CombinedOutput(); err != nil {
		return fmt.Errorf("spm_train (Debian package sentencepiece): %v\n%s", err, msg)
	}
	if err := os.Rename(prefix+".model", filepath.Join(*out, "tokenizer.model")); err != nil {
		return err
	}
	os.Remove(prefix + ".vocab")
	name := "emoflow/chatglm3-tiny-random"
	cfg, _ := json.MarshalIndent(map[string]any{"name_or_path": name, "tokenizer_class": "ChatGLMTokenizer"}, "", "  ")
	if err := os.WriteFile(filepath.Join(*out, "tokenizer_config.json"), cfg, 0o644); err != nil {
		return err
	}
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

// writeCorpus writes the tokenizer's training text into dir and returns its
// path.
func writeCorpus(dataDir, dir string) (string, error) {
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
	// Chat-format pieces the prompts use.
	lines = append(lines, "Classify the emotion of this chat message as one of: anger, disgust, fear, joy, neutral, sadness, surprise.",
		"Message:", "Answer with one word.")
	path := filepath.Join(dir, "corpus.txt")
	return path, os.WriteFile(path, []byte(strings.Join(lines, "\n")+"\n"), 0o644)
}
