package tokenizer

import (
	"errors"
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
