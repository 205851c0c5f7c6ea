package tokenizer

// oneCharLen is the length of the UTF-8 character starting s, judged from
// its first byte alone and clipped to len(s), like sentencepiece's
// string_util::OneCharLen.
func oneCharLen(s string) int {
	n := 1
	switch b := s[0]; {
	case b >= 0xF0:
		n = 4
	case b >= 0xE0:
		n = 3
	case b >= 0xC0:
		n = 2
	}
	return min(n, len(s))
}

// bpeSymbol is a piece of the text being merged, a byte range of the
// normalized string, in a doubly linked list.
type bpeSymbol struct {
	start, end int32
	prev, next int32 // -1 at the ends
	frozen     bool  // a user-defined symbol, never merged
}

// bpePair is a candidate merge of two adjacent symbols.
type bpePair struct {
	score       float32
	left, right int32
	size        int32 // byte length of the merged piece when it was queued
}

// pairHeap is a max-heap of candidate merges: highest score first, then the
// leftmost, the order of sentencepiece's SymbolPairComparator.
type pairHeap []bpePair

func (h pairHeap) before(i, j int) bool {
	return h[i].score > h[j].score || (h[i].score == h[j].score && h[i].left < h[j].left)
}

func (h *pairHeap) push(p bpePair) {
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

func (h *pairHeap) pop() bpePair {
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

// encodeBPE is sentencepiece's bpe::Model::Encode: start from characters
// (and whole user-defined symbols), then repeatedly merge the adjacent pair
// whose concatenation is the best-scoring piece, using a heap of candidate
// pairs and lazy invalidation, so n characters cost O(n log n).
func (sp *SentencePiece) encodeBPE(normalized string, emit func(piece string, id int32)) {
	symbols := make([]bpeSymbol, 0, len(normalized))
	for pos := 0; pos < len(normalized); {
		n, frozen := 0, false
		if sp.norm.userDefined != nil {
			n = sp.norm.userDefined.longestPrefix(normalized[pos:])
			frozen = n > 0
		}
		if n == 0 {
			n = oneCharLen(normalized[pos:])
		}
		i := int32(len(symbols))
		next := i + 1
		if pos+n >= len(normalized) {
			next = -1
		}
		symbols = append(symbols, bpeSymbol{start: int32(pos), end: int32(pos + n), prev: i - 1, next: next, frozen: frozen})
		pos += n
	}

	// revMerge records how an UNUSED piece was formed, to split it again at
	// the end: unused pieces may be merged through but never emitted.
	var revMerge map[string][2]string
	agenda := make(pairHeap, 0, len(symbols))
	addPair := func(left, right int32) {
		if left < 0 || right < 0 || symbols[left].frozen || symbols[right].frozen {
			return
		}
		l, r := symbols[left], symbols[right]
		if int(r.end-l.start) > sp.maxLen {
			return
		}
		piece := normalized[l.start:r.end]
		id, ok := sp.ids[piece]
		if !ok {
			return
		}
		agenda.push(bpePair{score: sp.pieces[id].score, left: left, right: right, size: r.end - l.start})
		if sp.pieces[id].typ == pieceUnused {
			if revMerge == nil {
				revMerge = make(map[string][2]string)
			}
			revMerge[piece] = [2]string{normalized[l.start:l.end], normalized[r.start:r.end]}
		}
	}
	for i := 1; i < len(symbols); i++ {
		addPair(int32(i-1), int32(i))
	}
	for len(agenda) > 0 {
		top := agenda.pop()
		l, r := &symbols[top.left], &symbols[top.right]
		if l.start == l.end || r.start == r.end || (l.end-l.start)+(r.end-r.start) != top.size {
			continue // stale: one side has merged since this pair was queued
		}
		l.end = r.end
		l.next = r.next
		if r.next >= 0 {
			symbols[r.next].prev = top.left
		}
		r.start = r.end // empty: absorbed into l
		addPair(l.prev, top.left)
		addPair(top.left, l.next)
	}

	var resegment func(piece string)
	resegment = func(piece string) {
		id := int32(sp.PieceToID(piece))
		if sp.pieces[id].typ == pieceUnused {
			if parts, ok := revMerge[piece]; ok {
				resegment(parts[0])
				resegment(parts[1])
				return
			}
		}
		emit(piece, id)
	}
	for i := int32(0); i >= 0; i = symbols[i].next {
		resegment(normalized[symbols[i].start:symbols[i].end])
	}
}

// unkPenalty is how much worse than the worst piece an unknown character
// scores in the Unigram model (kUnkPenalty).
const unkPenalty = 10.0

// encodeUnigram is sentencepiece's unigram::Model::EncodeOptimized: a
// Viterbi pass that keeps, for every byte position, the best path ending
// there. Arithmetic mirrors the C++ types (float32 path scores, float64
// candidates) so that rounding, and so ties, come out the same.
func (sp *SentencePiece) encodeUnigram(normalized string, emit func(piece string, id int32)) {
	type bestPath struct {
		score    float32
		startsAt int32 // -1: no path yet
		id       int32
	}
	size := len(normalized)
	unkScore := sp.minScore - unkPenalty
	best := make([]bestPath, size+1)
	for i := range best {
		best[i].startsAt = -1
	}
	for start := 0; start < size; {
		tillHere := best[start].score
		charLen := oneCharLen(normalized[start:])
		single := false
		node := int32(0)
		for pos := start; pos < size; pos++ {
			if node = sp.vocab.child(node, normalized[pos]); node < 0 {
				break
			}
			id := sp.vocab.nodes[node].value
			if id < 0 || sp.pieces[id].typ == pieceUnused {
				continue
			}
			length := pos + 1 - start
			// C++ computes the candidate as a double (the user-defined bonus
			// is "(size_t * float) - 0.1", so the ?: expression is double),
			// compares it as a double and stores it as a float.
			score := float64(sp.pieces[id].score)
			if sp.pieces[id].typ == pieceUserDefined {
				score = float64(float32(length)*sp.maxScore) - 0.1
			}
			cand := score + float64(tillHere)
			if target := &best[pos+1]; target.startsAt == -1 || cand > float64(target.score) {
				*target = bestPath{score: float32(cand), startsAt: int32(start), id: id}
			}
			if length == charLen {
				single = true
			}
		}
		if !single {
			target := &best[start+charLen]
			cand := unkScore + tillHere
			if target.startsAt == -1 || cand > target.score {
				*target = bestPath{score: cand, startsAt: int32(start), id: sp.unkID}
			}
		}
		start += charLen
	}
	// Backtrack, then emit left to right.
	var stack []int32
	for end := int32(size); end > 0; end = best[end].startsAt {
		stack = append(stack, end)
	}
	for i := len(stack) - 1; i >= 0; i-- {
		end := stack[i]
		emit(normalized[best[end].startsAt:end], best[end].id)
	}
}
