package testenv

import (
	"testing"

	"github.com/emoflow/emoflow/internal/randmodel"
)

// TinyModel writes a random checkpoint of spec and a real SentencePiece
// tokenizer of vocab pieces trained on lines (Debian's spm_train) into a
// temporary folder, and returns it.
func TinyModel(t testing.TB, lines []string, vocab int, spec randmodel.Spec) string {
	t.Helper()
	dir := t.TempDir()
	if err := randmodel.TrainTokenizer(t.Context(), dir, lines, vocab); err != nil {
		t.Fatalf("spm_train: %v", err)
	}
	if err := randmodel.Write(dir, spec); err != nil {
		t.Fatal(err)
	}
	return dir
}
