package tokenizer

import (
	"errors"
	"slices"
	"testing"
)

func mustParse(t testing.TB, m *handModel) *SentencePiece {
	t.Helper()
	sp, err := ParseSentencePiece(m.bytes())
	if err != nil {
		t.Fatal(err)
	}
	return sp
}

func TestBPEMergeOrderAndByteFallback(t *testing.T) {
	m := newHandModel(true, true)
	ids := m.normal("\u2581h", "\u2581hi", "he", "\u2581", "h", "i", "e") // 259..265, best first
	sp := mustParse(t, m)
	// "▁hi▁hey": both "▁h" merge first (leftmost first), then "▁hi"; the
	// queued "he" is stale by then; "y" is not a piece and falls back to
	// its byte.
	want := []int{ids[1], ids[0], ids[6], 3 + 'y'}
	if got := sp.Encode("hi hey"); !slices.Equal(got, want) {
		t.Errorf("Encode(hi hey) = %v, want %v", got, want)
	}
	if got, err := sp.Decode(want); err != nil || got != "hi hey" {
		t.Errorf("Decode(%v) = %q, %v", want, got, err)
	}
	if got := sp.Encode(""); len(got) != 0 {
		t.Errorf("Encode(\"\") = %v, want nothing", got)
	}
	if got := sp.Encode("中"); !slices.Equal(got, []int{ids[3], 3 + 0xE4, 3 + 0xB8, 3 + 0xAD}) {
		t.Errorf("Encode(中) = %v, want ▁ and three byte pieces", got)
	}
}

func TestSentencePieceDecode(t *testing.T) {
	m := newHandModel(true, true)
	ids := m.normal("\u2581h", "\u2581", "x\u2581y")
	sp := mustParse(t, m)
	space, h := ids[1], ids[0]
	for _, c := range []struct {
		ids  []int
		want string
	}{
		{[]int{h, h}, "h h"},
		{[]int{1, h, 2}, "h"},                            // control pieces vanish, and do not count as text
		{[]int{space, h}, " h"},                          // only the first dummy-prefix space goes
		{[]int{0, h}, " \u2047  h"},                      // unk_surface, after which "▁h" keeps its space
		{[]int{3 + 0xE4, 3 + 0xB8, 3 + 0xAD}, "中"},       // bytes reassembled
		{[]int{3 + 0xE4, 3 + 0xB8}, "\uFFFD\uFFFD"},      // a truncated character: one U+FFFD per byte
		{[]int{3 + 0xE4, h, 3 + 0xAD}, "\uFFFD h\uFFFD"}, // a piece ends a byte run
		{[]int{3 + 'a', h}, "a h"},                       // text from bytes stops the space stripping
		{[]int{ids[2]}, "x y"},
		{nil, ""},
	} {
		if got, err := sp.Decode(c.ids); err != nil || got != c.want {
			t.Errorf("Decode(%v) = %q, %v; want %q", c.ids, got, err, c.want)
		}
	}
	for _, bad := range [][]int{{-1}, {h, sp.VocabSize()}} {
		if _, err := sp.Decode(bad); !errors.Is(err, ErrInvalidID) {
			t.Errorf("Decode(%v) error = %v, want ErrInvalidID", bad, err)
		}
	}
}

func TestDecodeLooksPiecesUpByText(t *testing.T) {
	// DecodeIds maps ids to pieces and back, and reserved pieces win: a
	// NORMAL piece spelt like the control piece <s> decodes as <s>.
	m := newHandModel(false, false)
	alias := m.add("<s>", -1, pieceNormal)
	x := m.normal("\u2581x")[0]
	sp := mustParse(t, m)
	if got, err := sp.Decode([]int{alias, x}); err != nil || got != "x" {
		t.Errorf("Decode = %q, %v; want %q", got, err, "x")
	}
}

func TestUnigramViterbi(t *testing.T) {
	m := newHandModel(false, false)
	sp1 := m.add("\u2581", -1, pieceNormal)
	a := m.add("a", -2, pieceNormal)
	b := m.add("b", -2, pieceNormal)
	spA := m.add("\u2581a", -2.5, pieceNormal)
	ab := m.add("ab", -1.5, pieceNormal)
	m.add("\u2581ab", -5, pieceNormal)
	x := m.add("<x>", 0, pieceUserDefined)
	m.add("zz", -0.5, pieceUnused) // never chosen
	sp := mustParse(t, m)
	for _, c := range []struct {
		text string
		want []int
	}{
		{"ab", []int{sp1, ab}},               // -1 + -1.5 beats "▁ab" (-5) and "▁a" "b" (-4.5)
		{"a\u2603\u2603b", []int{spA, 0, b}}, // two unknown characters merge into one <unk>
		{"a<x>b", []int{spA, x, b}},          // a user-defined symbol is always one piece
		{"zz", []int{sp1, 0}},                // the unused piece is skipped: "zz" is unknown
		{"ba", []int{sp1, b, a}},
	} {
		if got := sp.Encode(c.text); !slices.Equal(got, c.want) {
			t.Errorf("Encode(%q) = %v, want %v", c.text, got, c.want)
		}
	}
	if got, err := sp.Decode([]int{spA, 0, b}); err != nil || got != "a \u2047 b" {
		t.Errorf("Decode = %q, %v", got, err)
	}
}

func TestNormalizerWhitespaceOptions(t *testing.T) {
	for _, c := range []struct {
		spec       normalizerSpec
		wsAsSuffix bool
		in, want   string
	}{
		{normalizerSpec{addDummyPrefix: true, removeExtraWhitespaces: true, escapeWhitespaces: true}, false, "  hello   world  ", "\u2581hello\u2581world"},
		{normalizerSpec{addDummyPrefix: true, removeExtraWhitespaces: true, escapeWhitespaces: true}, false, "   ", ""},
		{normalizerSpec{addDummyPrefix: true, escapeWhitespaces: true}, false, " a  b ", "\u2581\u2581a\u2581\u2581b\u2581"},
		{normalizerSpec{addDummyPrefix: true, removeExtraWhitespaces: true, escapeWhitespaces: true}, true, " a b ", "a\u2581b\u2581"},
		{normalizerSpec{addDummyPrefix: true}, false, "a b", " a b"},
		{normalizerSpec{escapeWhitespaces: true}, false, "a b", "a\u2581b"},
		{normalizerSpec{addDummyPrefix: true, escapeWhitespaces: true}, false, "a\xffb", "\u2581a\uFFFDb"},
		{normalizerSpec{addDummyPrefix: true, escapeWhitespaces: true}, false, "", ""},
	} {
		n, err := newNormalizer(c.spec, c.wsAsSuffix, nil)
		if err != nil {
			t.Fatal(err)
		}
		if got := n.normalize(c.in); got != c.want {
			t.Errorf("normalize(%q) with %+v suffix=%v = %q, want %q", c.in, c.spec, c.wsAsSuffix, got, c.want)
		}
	}
}

func TestSentencePieceSpecialIDs(t *testing.T) {
	m := newHandModel(false, false)
	m.add("<pad>", 0, pieceControl)
	m.normal("\u2581")
	sp := mustParse(t, m)
	if sp.UnkID() != 0 || sp.BOSID() != 1 || sp.EOSID() != 2 || sp.PadID() != 3 {
		t.Errorf("unk, bos, eos, pad = %d %d %d %d; want 0 1 2 3", sp.UnkID(), sp.BOSID(), sp.EOSID(), sp.PadID())
	}
	if got := sp.PieceToID("no such piece"); got != 0 {
		t.Errorf("PieceToID(missing) = %d, want the unknown id", got)
	}
	if p, ok := sp.IDToPiece(2); !ok || p != "</s>" {
		t.Errorf("IDToPiece(2) = %q, %v", p, ok)
	}
	if _, ok := sp.IDToPiece(sp.VocabSize()); ok {
		t.Error("IDToPiece past the vocabulary succeeded")
	}

	noPad := newHandModel(false, false)
	noPad.normal("\u2581")
	if got := mustParse(t, noPad).PadID(); got != -1 {
		t.Errorf("PadID without a pad piece = %d, want -1", got)
	}
}

func TestParseSentencePieceErrors(t *testing.T) {
	good := newHandModel(true, true)
	good.normal("\u2581a")
	data := good.bytes()

	noUnk := &handModel{bpe: true, normalizer: good.normalizer}
	noUnk.normal("a")
	dup := newHandModel(false, false)
	dup.normal("a", "a")
	word := newHandModel(false, false)
	word.modelType = modelWord
	holes := newHandModel(true, true)
	holes.pieces = slices.Delete(holes.pieces, 10, 11) // byte fallback without <0x07>

	for _, c := range []struct {
		name string
		data []byte
		want error
	}{
		{"truncated", data[:len(data)-3], ErrTruncated},
		{"cut inside a piece", data[:40], ErrTruncated},
		{"reserved wire type", []byte{0x0f, 0x01}, ErrCorrupt},
		{"unfinished varint", []byte{0xff, 0xff}, ErrTruncated},
		{"empty", nil, ErrCorrupt},
		{"no unknown piece", noUnk.bytes(), ErrCorrupt},
		{"duplicate piece", dup.bytes(), ErrCorrupt},
		{"missing byte piece", holes.bytes(), ErrCorrupt},
		{"word model", word.bytes(), ErrUnsupported},
	} {
		_, err := ParseSentencePiece(c.data)
		var fe *FileError
		if !errors.Is(err, c.want) || !errors.As(err, &fe) {
			t.Errorf("%s: error %v, want a *FileError wrapping %v", c.name, err, c.want)
		}
	}
}
