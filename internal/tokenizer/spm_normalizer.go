package tokenizer

import (
	"encoding/binary"
	"fmt"
	"strings"
	"unicode/utf8"
)

// spaceSymbol is U+2581 LOWER ONE EIGHTH BLOCK, SentencePiece's escaped
// space.
const spaceSymbol = "\u2581"

// maxCharsmapMatches is how many prefix matches sentencepiece's normalizer
// looks at (Normalizer::kMaxTrieResultsSize); its builder guarantees fewer.
const maxCharsmapMatches = 32

// dartsTrie reads a darts-clone double array, the trie format of
// sentencepiece's precompiled charsmap. Each 32-bit unit packs a label, a
// has-leaf bit and an offset to its children; leaf units hold a value.
// Indexes are bounds-checked so a corrupt blob cannot crash the reader.
type dartsTrie []uint32

func dartsHasLeaf(u uint32) bool  { return (u>>8)&1 == 1 }
func dartsValue(u uint32) uint32  { return u & (1<<31 - 1) }
func dartsLabel(u uint32) uint32  { return u & (1<<31 | 0xFF) }
func dartsOffset(u uint32) uint32 { return (u >> 10) << ((u & (1 << 9)) >> 6) }

// longestPrefix returns the value and length of the longest key that is a
// prefix of s, among the first maxCharsmapMatches matches, as
// Normalizer::NormalizePrefix does; length is 0 when no key matches.
func (t dartsTrie) longestPrefix(s string) (value uint32, length int) {
	if len(t) == 0 {
		return 0, 0
	}
	pos := dartsOffset(t[0])
	matches := 0
	for i := 0; i < len(s); i++ {
		c := uint32(s[i])
		pos ^= c
		if int(pos) >= len(t) {
			return value, length
		}
		u := t[pos]
		if dartsLabel(u) != c {
			return value, length
		}
		pos ^= dartsOffset(u)
		if dartsHasLeaf(u) {
			if int(pos) >= len(t) {
				return value, length
			}
			if matches < maxCharsmapMatches {
				value, length = dartsValue(t[pos]), i+1
			}
			matches++
		}
	}
	return value, length
}

// normalizer is sentencepiece's Normalizer: it maps text through the
// precompiled charsmap (none for "identity"), copies user-defined symbols
// verbatim, handles the dummy prefix and extra whitespace, and escapes
// spaces as U+2581.
type normalizer struct {
	charsmap    dartsTrie
	replaced    string // NUL-terminated replacement strings the trie values point into
	userDefined *byteTrie
	spec        normalizerSpec
	wsAsSuffix  bool
}

func newNormalizer(spec normalizerSpec, wsAsSuffix bool, userDefined *byteTrie) (*normalizer, error) {
	n := &normalizer{spec: spec, wsAsSuffix: wsAsSuffix, userDefined: userDefined}
	blob := spec.precompiledCharsmap
	if len(blob) == 0 {
		return n, nil
	}
	if len(blob) <= 4 {
		return nil, fmt.Errorf("%w: precompiled charsmap of %d bytes", ErrCorrupt, len(blob))
	}
	size := binary.LittleEndian.Uint32(blob)
	if uint64(size) > uint64(len(blob)-4) || size%4 != 0 {
		return nil, fmt.Errorf("%w: precompiled charsmap trie size %d in a %d-byte blob", ErrCorrupt, size, len(blob))
	}
	trie := make(dartsTrie, size/4)
	for i := range trie {
		trie[i] = binary.LittleEndian.Uint32(blob[4+4*i:])
	}
	n.charsmap = trie
	n.replaced = string(blob[4+size:])
	return n, nil
}

// normalizePrefix normalizes the first character (or user-defined symbol, or
// charsmap key) of s: it returns the replacement and how many bytes of s it
// consumed.
func (n *normalizer) normalizePrefix(s string) (string, int) {
	if n.userDefined != nil {
		if l := n.userDefined.longestPrefix(s); l > 0 {
			return s[:l], l
		}
	}
	if v, l := n.charsmap.longestPrefix(s); l > 0 {
		if int(v) >= len(n.replaced) {
			// A value outside the blob is a corrupt rule: keep the text.
			return s[:l], l
		}
		out := n.replaced[v:]
		if end := strings.IndexByte(out, 0); end >= 0 {
			out = out[:end]
		}
		return out, l
	}
	r, size := utf8.DecodeRuneInString(s)
	if r == utf8.RuneError && size <= 1 {
		// Malformed UTF-8: one byte becomes U+FFFD.
		return "\uFFFD", 1
	}
	return s[:size], size
}

// normalize is Normalizer::Normalize without the offset mapping.
func (n *normalizer) normalize(s string) string {
	if s == "" {
		return ""
	}
	if n.spec.removeExtraWhitespaces {
		for s != "" {
			out, l := n.normalizePrefix(s)
			if out != " " {
				break
			}
			s = s[l:]
		}
		if s == "" {
			return ""
		}
	}
	space := " "
	if n.spec.escapeWhitespaces {
		space = spaceSymbol
	}
	var b strings.Builder
	b.Grow(len(s) + len(s)/2 + 3)
	if !n.wsAsSuffix && n.spec.addDummyPrefix {
		b.WriteString(space)
	}
	prevSpace := n.spec.removeExtraWhitespaces
	for s != "" {
		out, l := n.normalizePrefix(s)
		if prevSpace {
			out = strings.TrimLeft(out, " ")
		}
		if out != "" {
			for i := 0; i < len(out); i++ {
				if out[i] == ' ' {
					b.WriteString(space)
				} else {
					b.WriteByte(out[i])
				}
			}
			prevSpace = out[len(out)-1] == ' '
		}
		s = s[l:]
		if !n.spec.removeExtraWhitespaces {
			prevSpace = false
		}
	}
	res := b.String()
	if n.spec.removeExtraWhitespaces {
		for strings.HasSuffix(res, space) {
			res = res[:len(res)-len(space)]
		}
	}
	if n.wsAsSuffix && n.spec.addDummyPrefix {
		res += space
	}
	return res
}
