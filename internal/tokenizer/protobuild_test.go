package tokenizer

import (
	"encoding/base64"
	"fmt"
	"math"
	"strings"

	"google.golang.org/protobuf/encoding/protowire"
)

// handModel describes a small SentencePiece model written by hand, which
// the tests serialize to a ModelProto.
type handModel struct {
	pieces       []spmPiece
	bpe          bool
	byteFallback bool
	modelType    modelType // overrides bpe when set
	normalizer   normalizerSpec
	wsAsSuffix   bool
}

// newHandModel starts a model with <unk>, <s>, </s> and, with byte
// fallback, the 256 byte pieces (ids 3..258), like ChatGLM2's file.
func newHandModel(bpe, byteFallback bool) *handModel {
	m := &handModel{bpe: bpe, byteFallback: byteFallback,
		normalizer: normalizerSpec{name: "identity", addDummyPrefix: true, escapeWhitespaces: true}}
	m.add("<unk>", 0, pieceUnknown)
	m.add("<s>", 0, pieceControl)
	m.add("</s>", 0, pieceControl)
	if byteFallback {
		for b := 0; b < 256; b++ {
			m.add(fmt.Sprintf("<0x%02X>", b), 0, pieceByte)
		}
	}
	return m
}

// add appends a piece and returns its id.
func (m *handModel) add(text string, score float32, typ pieceType) int {
	m.pieces = append(m.pieces, spmPiece{text: text, score: score, typ: typ})
	return len(m.pieces) - 1
}

// normal appends NORMAL pieces scored -1, -2, ... in order (so earlier
// pieces merge first in BPE) and returns their ids.
func (m *handModel) normal(texts ...string) []int {
	ids := make([]int, len(texts))
	for i, t := range texts {
		ids[i] = m.add(t, -float32(len(m.pieces)), pieceNormal)
	}
	return ids
}

// padTo appends filler pieces until the vocabulary has n pieces.
func (m *handModel) padTo(n int) {
	for i := 0; len(m.pieces) < n; i++ {
		m.add(fmt.Sprintf("\u2581filler%d", i), -1000-float32(i), pieceNormal)
	}
}

func (m *handModel) bytes() []byte {
	var b []byte
	for _, p := range m.pieces {
		var msg []byte
		msg = protowire.AppendTag(msg, 1, protowire.BytesType)
		msg = protowire.AppendString(msg, p.text)
		msg = protowire.AppendTag(msg, 2, protowire.Fixed32Type)
		msg = protowire.AppendFixed32(msg, math.Float32bits(p.score))
		msg = protowire.AppendTag(msg, 3, protowire.VarintType)
		msg = protowire.AppendVarint(msg, uint64(p.typ))
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		b = protowire.AppendBytes(b, msg)
	}
	mt := m.modelType
	if mt == 0 {
		mt = modelUnigram
		if m.bpe {
			mt = modelBPE
		}
	}
	var ts []byte
	ts = protowire.AppendTag(ts, 3, protowire.VarintType)
	ts = protowire.AppendVarint(ts, uint64(mt))
	ts = protowire.AppendTag(ts, 24, protowire.VarintType)
	ts = protowire.AppendVarint(ts, protowire.EncodeBool(m.wsAsSuffix))
	ts = protowire.AppendTag(ts, 35, protowire.VarintType)
	ts = protowire.AppendVarint(ts, protowire.EncodeBool(m.byteFallback))
	ts = protowire.AppendTag(ts, 4, protowire.VarintType) // vocab_size, which readers ignore
	ts = protowire.AppendVarint(ts, uint64(len(m.pieces)))
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendBytes(b, ts)

	n := m.normalizer
	var ns []byte
	ns = protowire.AppendTag(ns, 1, protowire.BytesType)
	ns = protowire.AppendString(ns, n.name)
	if len(n.precompiledCharsmap) > 0 {
		ns = protowire.AppendTag(ns, 2, protowire.BytesType)
		ns = protowire.AppendBytes(ns, n.precompiledCharsmap)
	}
	for i, v := range []bool{n.addDummyPrefix, n.removeExtraWhitespaces, n.escapeWhitespaces} {
		ns = protowire.AppendTag(ns, protowire.Number(3+i), protowire.VarintType)
		ns = protowire.AppendVarint(ns, protowire.EncodeBool(v))
	}
	b = protowire.AppendTag(b, 3, protowire.BytesType)
	return protowire.AppendBytes(b, ns)
}

// handBPEVocab is a tiktoken-format vocabulary: the 256 bytes, then the
// given tokens, then filler tokens up to size ranks.
func handBPEVocab(size int, tokens ...string) []byte {
	var b strings.Builder
	rank := 0
	line := func(tok string) {
		fmt.Fprintf(&b, "%s %d\n", base64.StdEncoding.EncodeToString([]byte(tok)), rank)
		rank++
	}
	for c := 0; c < 256; c++ {
		line(string([]byte{byte(c)}))
	}
	for _, t := range tokens {
		line(t)
	}
	for i := 0; rank < size; i++ {
		line(fmt.Sprintf("\x00filler%d", i))
	}
	return []byte(b.String())
}
