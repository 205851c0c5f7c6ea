package tokenizer

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"os"
	"strconv"
	"strings"
	"unicode/utf8"
)

// ByteBPE is a byte-level BPE vocabulary in tiktoken's file format (one
// "base64-token rank" per line), the format of GLM-4's tokenizer.model, with
// GLM-4's pre-tokenizer. Encode and Decode equal tiktoken's
// Encoding.encode_ordinary and Encoding.decode. It is immutable and safe for
// concurrent use.
type ByteBPE struct {
	ranks  map[string]int // token bytes to rank; the rank is the token id
	tokens []string       // rank to token bytes
}

// LoadByteBPE reads a tiktoken-format vocabulary file.
func LoadByteBPE(path string) (*ByteBPE, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &FileError{Path: path, Offset: -1, Err: err}
	}
	b, err := ParseByteBPE(data)
	return b, withPath(err, path)
}

// ParseByteBPE decodes a tiktoken-format vocabulary: lines of a base64 token
// and its rank. Ranks must be 0..n-1 with no gaps or repeats, and every
// single byte must be a token, so that any text can be encoded.
func ParseByteBPE(data []byte) (*ByteBPE, error) {
	b := &ByteBPE{ranks: make(map[string]int)}
	var byRank []string
	var have []bool
	for off := 0; off < len(data); {
		end := bytes.IndexByte(data[off:], '\n')
		if end < 0 {
			end = len(data) - off
		}
		line := strings.TrimSpace(string(data[off : off+end]))
		lineAt := off
		off += end + 1
		if line == "" {
			continue
		}
		bad := func(format string, args ...any) error {
			return &FileError{Offset: lineAt, Err: fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, args...)...)}
		}
		fields := strings.Fields(line)
		if len(fields) != 2 {
			return nil, bad("want \"token rank\", got %d fields", len(fields))
		}
		token, err := base64.StdEncoding.DecodeString(fields[0])
		if err != nil {
			return nil, bad("token %q: %v", fields[0], err)
		}
		if len(token) == 0 {
			return nil, bad("empty token")
		}
		rank, err := strconv.Atoi(fields[1])
		if err != nil || rank < 0 || rank > len(data) {
			// A rank beyond the line count cannot be part of a dense
			// vocabulary; the bound also caps the allocation below.
			return nil, bad("rank %q", fields[1])
		}
		if _, dup := b.ranks[string(token)]; dup {
			return nil, bad("token %q listed twice", token)
		}
		for len(byRank) <= rank {
			byRank = append(byRank, "")
			have = append(have, false)
		}
		if have[rank] {
			return nil, bad("rank %d used twice", rank)
		}
		b.ranks[string(token)] = rank
		byRank[rank], have[rank] = string(token), true
	}
	for rank, ok := range have {
		if !ok {
			return nil, &FileError{Offset: -1, Err: fmt.Errorf("%w: no token has rank %d of %d", ErrCorrupt, rank, len(have))}
		}
	}
	for c := 0; c < 256; c++ {
		if _, ok := b.ranks[string([]byte{byte(c)})]; !ok {
			return nil, &FileError{Offset: -1, Err: fmt.Errorf("%w: byte 0x%02X is not a token", ErrCorrupt, c)}
		}
	}
	b.tokens = byRank
	return b, nil
}

// VocabSize is the number of tokens.
func (b *ByteBPE) VocabSize() int { return len(b.tokens) }

// Encode splits text with GLM-4's pre-tokenizer and byte-pair-encodes each
// piece. Invalid UTF-8 bytes are kept as raw bytes.
func (b *ByteBPE) Encode(text string) []int {
	return b.appendEncode(nil, text)
}

func (b *ByteBPE) appendEncode(ids []int, text string) []int {
	var merger bpeMerger
	for len(text) > 0 {
		n := glm4PieceLen(text)
		ids = b.appendPiece(ids, text[:n], &merger)
		text = text[n:]
	}
	return ids
}

// appendPiece encodes one pre-tokenized piece: a whole-token piece is
// looked up directly (as tiktoken does), anything else is merged.
func (b *ByteBPE) appendPiece(ids []int, piece string, m *bpeMerger) []int {
	if rank, ok := b.ranks[piece]; ok {
		return append(ids, rank)
	}
	return m.merge(b.ranks, piece, ids)
}

// Decode concatenates the tokens' bytes and decodes them as UTF-8 the way
// Python's bytes.decode(errors="replace") does. An id outside the
// vocabulary is an error wrapping ErrInvalidID.
func (b *ByteBPE) Decode(ids []int) (string, error) {
	raw, err := b.appendBytes(nil, ids)
	if err != nil {
		return "", err
	}
	return decodeUTF8Replace(raw), nil
}

func (b *ByteBPE) appendBytes(raw []byte, ids []int) ([]byte, error) {
	for _, id := range ids {
		if id < 0 || id >= len(b.tokens) {
			return nil, fmt.Errorf("%w: %d (vocabulary of %d)", ErrInvalidID, id, len(b.tokens))
		}
		raw = append(raw, b.tokens[id]...)
	}
	return raw, nil
}

// bpeMerger holds the scratch space of byte-level merging, reused across
// the pieces of one text.
type bpeMerger struct {
	parts []mergePart
	heap  rankHeap
}

// mergePart is a token being built, the bytes from start to the next live
// part's start, in a linked list.
type mergePart struct {
	start      int
	prev, next int // -1 at the ends
	dead       bool
}

// rankPair is a candidate merge of part left with its right neighbour; end
// is where that neighbour ended when the pair was queued.
type rankPair struct {
	rank, left, end int
}

// rankHeap is a min-heap of candidate merges: lowest rank, then leftmost,
// the order in which tiktoken's byte_pair_merge applies them.
type rankHeap []rankPair

func (h rankHeap) before(i, j int) bool {
	return h[i].rank < h[j].rank || (h[i].rank == h[j].rank && h[i].left < h[j].left)
}

func (h *rankHeap) push(p rankPair) {
	*h = append(*h, p)
	s := *h
	for i := len(s) - 1; i > 0; {
		parent := (i - 1) / 2
		if !s.before(i, parent) {
			break
		}
		s[i], s[parent] = s[parent], s[i]
		i = parent
	}
}

func (h *rankHeap) pop() rankPair {
	s := *h
	top := s[0]
	last := len(s) - 1
	s[0] = s[last]
	s = s[:last]
	for i := 0; ; {
		l, r, best := 2*i+1, 2*i+2, i
		if l < len(s) && s.before(l, best) {
			best = l
		}
		if r < len(s) && s.before(r, best) {
			best = r
		}
		if best == i {
			break
		}
		s[i], s[best] = s[best], s[i]
		i = best
	}
	*h = s
	return top
}

// merge byte-pair-encodes piece: starting from single bytes it repeatedly
// merges the adjacent pair whose concatenation has the lowest rank, leftmost
// first, in O(n log n) with a heap and lazy invalidation.
func (m *bpeMerger) merge(ranks map[string]int, piece string, ids []int) []int {
	n := len(piece)
	m.parts = m.parts[:0]
	for i := 0; i < n; i++ {
		next := i + 1
		if next == n {
			next = -1
		}
		m.parts = append(m.parts, mergePart{start: i, prev: i - 1, next: next})
	}
	end := func(i int) int {
		if nx := m.parts[i].next; nx >= 0 {
			return m.parts[nx].start
		}
		return n
	}
	m.heap = m.heap[:0]
	queue := func(left int) {
		if left < 0 || m.parts[left].next < 0 {
			return
		}
		e := end(m.parts[left].next)
		if rank, ok := ranks[piece[m.parts[left].start:e]]; ok {
			m.heap.push(rankPair{rank: rank, left: left, end: e})
		}
	}
	for i := 0; i+1 < n; i++ {
		queue(i)
	}
	for len(m.heap) > 0 {
		p := m.heap.pop()
		l := &m.parts[p.left]
		if l.dead || l.next < 0 || end(l.next) != p.end {
			continue // stale: a neighbour has merged since
		}
		r := l.next
		m.parts[r].dead = true
		l.next = m.parts[r].next
		if l.next >= 0 {
			m.parts[l.next].prev = p.left
		}
		queue(l.prev)
		queue(p.left)
	}
	for i := 0; i >= 0; i = m.parts[i].next {
		ids = append(ids, ranks[piece[m.parts[i].start:end(i)]])
	}
	return ids
}

// decodeUTF8Replace decodes b like Python's bytes.decode("utf-8",
// errors="replace"): each maximal ill-formed subsequence becomes one U+FFFD,
// so a truncated multi-byte character yields a single replacement.
func decodeUTF8Replace(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	var sb strings.Builder
	sb.Grow(len(b) + 8)
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		if r != utf8.RuneError || size > 1 {
			sb.Write(b[:size])
			b = b[size:]
			continue
		}
		sb.WriteString("\uFFFD")
		b = b[maximalSubpart(b):]
	}
	return sb.String()
}

// maximalSubpart is the length of the ill-formed sequence starting b: the
// longest prefix of b that starts a well-formed character (at least one
// byte), per Unicode's "maximal subpart" rule, which CPython follows.
func maximalSubpart(b []byte) int {
	lo, hi := byte(0x80), byte(0xBF)
	var need int
	switch c := b[0]; {
	case c >= 0xC2 && c <= 0xDF:
		need = 1
	case c == 0xE0:
		need, lo = 2, 0xA0
	case c == 0xED:
		need, hi = 2, 0x9F
	case c >= 0xE1 && c <= 0xEF:
		need = 2
	case c == 0xF0:
		need, lo = 3, 0x90
	case c == 0xF4:
		need, hi = 3, 0x8F
	case c >= 0xF1 && c <= 0xF3:
		need = 3
	default:
		return 1
	}
	i := 1
	for ; i <= need && i < len(b); i++ {
		if b[i] < lo || b[i] > hi {
			break
		}
		lo, hi = 0x80, 0xBF
	}
	return i
}
