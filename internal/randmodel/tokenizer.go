package randmodel

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// TrainTokenizer trains a real SentencePiece tokenizer.model into dir with
// Debian's spm_train, in the settings of ChatGLM2/3's tokenizer (BPE, byte
// fallback, identity normalisation, white space kept, digits split), on
// lines, and writes a tokenizer_config.json that names it ChatGLM3.
func TrainTokenizer(ctx context.Context, dir string, lines []string, vocab int) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("randmodel: %w", err)
	}
	corpus := filepath.Join(dir, ".corpus.txt")
	if err := os.WriteFile(corpus, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		return fmt.Errorf("randmodel: %w", err)
	}
	defer os.Remove(corpus)
	prefix := filepath.Join(dir, ".spm")
	train := exec.CommandContext(ctx, "spm_train", "--input="+corpus, "--model_prefix="+prefix,
		"--model_type=bpe", fmt.Sprintf("--vocab_size=%d", vocab), "--byte_fallback=true",
		"--normalization_rule_name=identity", "--add_dummy_prefix=true", "--remove_extra_whitespaces=false",
		"--split_digits=true", "--allow_whitespace_only_pieces=true", "--character_coverage=0.9995",
		"--hard_vocab_limit=false", "--num_threads=2", "--minloglevel=2")
	if msg, err := train.CombinedOutput(); err != nil {
		return fmt.Errorf("randmodel: spm_train (Debian package sentencepiece): %v\n%s", err, msg)
	}
	defer os.Remove(prefix + ".vocab")
	if err := os.Rename(prefix+".model", filepath.Join(dir, "tokenizer.model")); err != nil {
		return fmt.Errorf("randmodel: %w", err)
	}
	cfg, _ := json.MarshalIndent(map[string]any{"name_or_path": "emoflow/chatglm3-tiny-random", "tokenizer_class": "ChatGLMTokenizer"}, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "tokenizer_config.json"), cfg, 0o644); err != nil {
		return fmt.Errorf("randmodel: %w", err)
	}
	return nil
}
