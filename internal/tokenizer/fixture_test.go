package tokenizer

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/emoflow/emoflow/internal/testenv"
)

// vectorFile is a file of ../shared/fixtures/tokenizer-vectors: ids, pieces
// and decoded text from a real THUDM tokenizer.
type vectorFile struct {
	Model    string `json:"model"`
	Datasets []struct {
		Input   string   `json:"input"`
		IDs     []int    `json:"ids"`
		Tokens  []string `json:"tokens"`
		Decoded string   `json:"decoded"`
	} `json:"datasets"`
	PairEncode struct {
		InputIDs []int `json:"input_ids"`
	} `json:"pair_encode"`
	BatchEncode struct {
		InputIDs [][]int `json:"input_ids"`
	} `json:"batch_encode"`
}

func readVectors(t *testing.T) []vectorFile {
	t.Helper()
	dir := testenv.Shared(t, "fixtures/tokenizer-vectors")
	var files []vectorFile
	for _, name := range []string{"models--THUDM--chatglm2-6b.json", "models--THUDM--chatglm3-6b.json", "models--THUDM--chatglm3-6b-base.json"} {
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		var f vectorFile
		if err := json.Unmarshal(data, &f); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if len(f.Datasets) == 0 {
			t.Fatalf("%s has no vectors", name)
		}
		files = append(files, f)
	}
	return files
}

// tokenizerFor picks the wrapper a vector file was made with.
func tokenizerFor(f vectorFile, sp *SentencePiece) Tokenizer {
	if strings.Contains(f.Model, "chatglm3") {
		return NewChatGLM3(sp, false)
	}
	return NewChatGLM2(sp)
}

// TestVectorsAgreeWithSpecialTokenLayout checks our ChatGLM2/3 special ids,
// prefix, padding and byte-piece layout against the ids the real THUDM
// tokenizers produced, without needing their tokenizer.model: a hand model
// with the real vocabulary size stands in for it.
func TestVectorsAgreeWithSpecialTokenLayout(t *testing.T) {
	m, _ := chatGLM2Model()
	sp := mustParse(t, m)
	for _, f := range readVectors(t) {
		tok := tokenizerFor(f, sp)
		prefix := tok.BuildInputs(nil)
		for _, d := range f.Datasets {
			if !slices.Equal(d.IDs[:2], prefix) {
				t.Errorf("%s %q: real ids start %v, our prefix is %v", f.Model, d.Input, d.IDs[:2], prefix)
			}
			if len(d.IDs) != len(d.Tokens)+2 {
				t.Fatalf("%s %q: %d ids for %d tokens", f.Model, d.Input, len(d.IDs), len(d.Tokens))
			}
			for i, piece := range d.Tokens {
				id := d.IDs[i+2]
				if id >= sp.VocabSize() {
					t.Errorf("%s %q: text token %q has special id %d", f.Model, d.Input, piece, id)
				}
				// Byte pieces sit at 3..258, after <unk> <s> </s>, as in
				// our hand model.
				if b, ok := pieceToByte(piece); ok && id != sp.PieceToID(piece) {
					t.Errorf("%s: byte piece %q (0x%02X) has id %d, ours %d", f.Model, piece, b, id, sp.PieceToID(piece))
				}
			}
		}
		pad, _ := tok.SpecialID("<pad>")
		for _, ids := range f.BatchEncode.InputIDs {
			if ids[0] != pad && ids[0] != prefix[0] {
				t.Errorf("%s: batch row starts %d, want padding %d or the prefix", f.Model, ids[0], pad)
			}
		}
		eos, _ := tok.SpecialID("<eos>")
		pair := f.PairEncode.InputIDs
		if !slices.Equal(pair[:2], prefix) || pair[len(pair)-1] != eos {
			t.Errorf("%s: pair encoding %v should be the prefix, both texts and </s> (%d)", f.Model, pair, eos)
		}
	}
}

// TestRealChatGLMTokenizer runs the vectors through a real ChatGLM2/3
// tokenizer.model (the same file serves both) named by
// EMOFLOW_CHATGLM3_TOKENIZER, a file or a model folder.
func TestRealChatGLMTokenizer(t *testing.T) {
	path := os.Getenv("EMOFLOW_CHATGLM3_TOKENIZER")
	if path == "" {
		t.Skip("EMOFLOW_CHATGLM3_TOKENIZER is not set: no real ChatGLM3 tokenizer.model is available")
	}
	if fi, err := os.Stat(path); err == nil && fi.IsDir() {
		path = filepath.Join(path, tokenizerModelFile)
	}
	sp, err := LoadSentencePiece(path)
	if err != nil {
		t.Fatal(err)
	}
	if sp.VocabSize() != 64789 {
		t.Errorf("real vocabulary has %d pieces, want 64789", sp.VocabSize())
	}
	for _, f := range readVectors(t) {
		tok := tokenizerFor(f, sp)
		for _, d := range f.Datasets {
			got := tok.BuildInputs(tok.Encode(d.Input))
			if !slices.Equal(got, d.IDs) {
				t.Errorf("%s %q: ids %v, want %v", f.Model, d.Input, got, d.IDs)
				continue
			}
			for i, want := range d.Tokens {
				if piece, _ := sp.IDToPiece(got[i+2]); piece != want {
					t.Errorf("%s %q: token %d is %q, want %q", f.Model, d.Input, i, piece, want)
				}
			}
			if text, err := tok.Decode(d.IDs); err != nil || text != d.Decoded {
				t.Errorf("%s %q: Decode = %q, %v; want %q", f.Model, d.Input, text, err, d.Decoded)
			}
		}
	}
}
