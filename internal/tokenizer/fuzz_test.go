package tokenizer

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzParseSentencePiece feeds arbitrary bytes to the model reader: it must
// return a *FileError of a known kind or a model that encodes and decodes
// without panicking and only yields ids of its vocabulary.
func FuzzParseSentencePiece(f *testing.F) {
	bpe := newHandModel(true, false)
	bpe.normal("\u2581", "a", "b", "\u2581a", "ab")
	bpe.add("<x>", 0, pieceUserDefined)
	uni := newHandModel(false, false)
	uni.normal("\u2581", "a", "b", "\u2581ab")
	uni.add("<x>", 0, pieceUserDefined)
	uni.add("ba", -1, pieceUnused)
	for _, seed := range [][]byte{bpe.bytes(), uni.bytes(), bpe.bytes()[:30], nil} {
		f.Add(seed)
	}
	texts := []string{"", "ab ba", "  a<x>b  \n", "中文😀", "a\xffb"}
	f.Fuzz(func(t *testing.T, data []byte) {
		sp, err := ParseSentencePiece(data)
		if err != nil {
			var fe *FileError
			if !errors.As(err, &fe) || !(errors.Is(err, ErrTruncated) || errors.Is(err, ErrCorrupt) || errors.Is(err, ErrUnsupported)) {
				t.Fatalf("error %v is not a *FileError of a known kind", err)
			}
			return
		}
		for _, text := range texts {
			ids := sp.Encode(text)
			for _, id := range ids {
				if id < 0 || id >= sp.VocabSize() {
					t.Fatalf("Encode(%q) gave id %d outside a vocabulary of %d", text, id, sp.VocabSize())
				}
			}
			if _, err := sp.Decode(ids); err != nil {
				t.Fatalf("Decode(Encode(%q)): %v", text, err)
			}
		}
		all := make([]int, min(sp.VocabSize(), 512))
		for i := range all {
			all[i] = i
		}
		if _, err := sp.Decode(all); err != nil {
			t.Fatal(err)
		}
	})
}

// FuzzNormalizerCharsmap feeds arbitrary precompiled charsmaps: a corrupt
// double array must not crash normalization.
func FuzzNormalizerCharsmap(f *testing.F) {
	f.Add([]byte{8, 0, 0, 0, 0, 4, 0, 0, 0x61, 0x01, 0, 0x80, 'x', 0}, "abc")
	f.Add([]byte{4, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 'y'}, "a\x00b")
	f.Fuzz(func(t *testing.T, charsmap []byte, text string) {
		n, err := newNormalizer(normalizerSpec{precompiledCharsmap: charsmap, addDummyPrefix: true, escapeWhitespaces: true}, false, nil)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		n.normalize(text)
	})
}

// FuzzGLM4Pieces checks that pre-tokenizer pieces tile any text and that
// byte-level BPE round-trips valid UTF-8.
func FuzzGLM4Pieces(f *testing.F) {
	for _, s := range []string{"Hello world's 12345!!\n\n  x", "\t \r\n ſ'S 中文", "\xff\xfe a"} {
		f.Add(s)
	}
	bpe, err := ParseByteBPE(handBPEVocab(300, "he", "ll", "hell", "hello", " w", "or", " wor", "\n\n"))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var b strings.Builder
		for rest := s; rest != ""; {
			n := glm4PieceLen(rest)
			if n <= 0 || n > len(rest) {
				t.Fatalf("piece length %d of %q", n, rest)
			}
			b.WriteString(rest[:n])
			rest = rest[n:]
		}
		if b.String() != s {
			t.Fatalf("pieces of %q join to %q", s, b.String())
		}
		if utf8.ValidString(s) {
			if got, err := bpe.Decode(bpe.Encode(s)); err != nil || got != s {
				t.Fatalf("Decode(Encode(%q)) = %q, %v", s, got, err)
			}
		}
	})
}

// FuzzChatGLMPreprocess checks that ChatGLM-6B's whitespace markers undo
// exactly, for text that cannot contain a marker of its own.
func FuzzChatGLMPreprocess(f *testing.F) {
	f.Add("a\n\tb" + strings.Repeat(" ", 170) + "c")
	f.Fuzz(func(t *testing.T, s string) {
		if strings.Contains(s, "<") {
			return
		}
		if got := chatGLMPostprocess(chatGLMPreprocess(s)); got != s {
			t.Fatalf("round trip of %q gave %q", s, got)
		}
	})
}

// FuzzParseByteBPE feeds arbitrary bytes to the GLM-4 (tiktoken) vocabulary
// reader: a refusal is a *FileError wrapping ErrCorrupt; an accepted
// vocabulary has no more tokens than lines, holds every single byte, and
// encodes any text to ids of its own whose bytes are the text's.
func FuzzParseByteBPE(f *testing.F) {
	f.Add(handBPEVocab(300, "he", "ll", "hell", "hello", " w", "or", " wor", "\n\n"))
	f.Add(handBPEVocab(256))
	f.Add([]byte("YQ== 0\nYg== 2\n"))
	f.Add([]byte("YQ== 99999999999999999999\n"))
	texts := []string{"", "hello world", "  \n\n\tx", "中文😀", "a\xffb"}
	f.Fuzz(func(t *testing.T, data []byte) {
		bpe, err := ParseByteBPE(data)
		if err != nil {
			var fe *FileError
			if !errors.As(err, &fe) || !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v is not a *FileError wrapping ErrCorrupt", err)
			}
			return
		}
		if n := bpe.VocabSize(); n < 256 || n > bytes.Count(data, []byte("\n"))+1 {
			t.Fatalf("%d tokens from %d lines", n, bytes.Count(data, []byte("\n"))+1)
		}
		for _, text := range texts {
			ids := bpe.Encode(text)
			raw, err := bpe.appendBytes(nil, ids)
			if err != nil || string(raw) != text {
				t.Fatalf("Encode(%q) = %v, whose bytes are %q, %v", text, ids, raw, err)
			}
			if s, err := bpe.Decode(ids); err != nil || (utf8.ValidString(text) && s != text) {
				t.Fatalf("Decode(Encode(%q)) = %q, %v", text, s, err)
			}
		}
	})
}

// FuzzLoadTokenizerConfig loads a model folder whose tokenizer_config.json
// holds arbitrary bytes, beside a small vocabulary of each family: a
// refusal is a *FileError; an accepted tokenizer only produces ids inside
// its vocabulary (text, special tokens, prompts, stop ids) and decodes them.
func FuzzLoadTokenizerConfig(f *testing.F) {
	ice := newHandModel(false, true)
	ice.add("<n>", 0, pieceUserDefined)
	ice.add("<|tab|>", 0, pieceUserDefined)
	ice.normal("\u2581", "\u2581hi", "h", "i")
	for _, s := range chatGLM6BSpecial() {
		ice.add(s, 0, pieceUserDefined)
	}
	spm := newHandModel(true, true)
	spm.normal("\u2581", "h", "i", "\u2581h", "\u2581hi")
	// Files by the low bits of which: ice_text.model, a SentencePiece or a
	// tiktoken tokenizer.model.
	files := []string{iceTextFile, tokenizerModelFile, tokenizerModelFile}
	data := [][]byte{ice.bytes(), spm.bytes(), handBPEVocab(300, "hi")}
	for _, c := range []struct {
		config string
		which  uint8
	}{
		{`{"num_image_tokens": 20000}`, 0},
		{`{"name_or_path": "THUDM/chatglm3-6b"}`, 1 | 4},
		{`{"_name_or_path": "chatglm2-6b", "tokenizer_class": "ChatGLMTokenizer"}`, 1},
		{`{"added_tokens_decoder": {"400": {"content": "<|endoftext|>"}, "402": {"content": "[gMASK]"}, "404": {"content": "<sop>"},` +
			`"406": {"content": "<|system|>"}, "407": {"content": "<|user|>"}, "408": {"content": "<|assistant|>"}, "409": {"content": "<|observation|>"}}}`, 2 | 4},
		{``, 2},
	} {
		f.Add([]byte(c.config), c.which)
	}
	root := f.TempDir()
	dirs := make([]string, len(files))
	for i, file := range files {
		dirs[i] = filepath.Join(root, strconv.Itoa(i))
		if err := os.MkdirAll(dirs[i], 0o755); err != nil {
			f.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dirs[i], file), data[i], 0o644); err != nil {
			f.Fatal(err)
		}
	}
	texts := []string{"hi", " hi\n\thi  ", "<|user|>[gMASK]<sop>", "中文\xff"}
	f.Fuzz(func(t *testing.T, config []byte, which uint8) {
		dir := dirs[int(which&3)%len(dirs)]
		cfgPath := filepath.Join(dir, tokenizerConfigFile)
		if len(config) == 0 {
			if err := os.Remove(cfgPath); err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Fatal(err)
			}
		} else if err := os.WriteFile(cfgPath, config, 0o644); err != nil {
			t.Fatal(err)
		}
		tok, err := Load(dir, Options{EncodeSpecialTokens: which&4 != 0})
		if err != nil {
			var fe *FileError
			if !errors.As(err, &fe) {
				t.Fatalf("error %v is not a *FileError", err)
			}
			return
		}
		n := tok.VocabSize()
		inVocab := func(what string, ids []int) {
			t.Helper()
			for _, id := range ids {
				if id < 0 || id >= n {
					t.Fatalf("%s: id %d outside a vocabulary of %d (%s)", what, id, n, tok.Family())
				}
			}
		}
		for _, name := range []string{"[MASK]", "[gMASK]", "[sMASK]", "sop", "eop", "<sop>", "<eop>", "<|user|>", "<|assistant|>", "<|endoftext|>"} {
			if id, ok := tok.SpecialID(name); ok {
				inVocab("SpecialID("+name+")", []int{id})
			}
		}
		inVocab("StopIDs", tok.StopIDs())
		for _, text := range texts {
			ids := tok.Encode(text)
			inVocab(fmt.Sprintf("Encode(%q)", text), ids)
			inVocab("BuildInputs", tok.BuildInputs(ids))
			inVocab("ChatPrompt", tok.ChatPrompt(text))
			if _, err := tok.Decode(tok.BuildInputs(ids)); err != nil {
				t.Fatalf("Decode(BuildInputs(Encode(%q))): %v", text, err)
			}
		}
	})
}
