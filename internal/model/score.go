package model

import (
	"errors"
	"fmt"
	"math"

	"github.com/emoflow/emoflow/internal/tensor"
)

// Prompt is a classification prompt, tokenized: every message becomes
// Prefix + text + Suffix, and the model's answer is one of Labels, followed
// by Stop.
type Prompt struct {
	// Prefix is the part before the message text (the instruction), the
	// same for every message. On causal architectures its keys and values
	// are computed once and reused (see Scorer).
	Prefix []int64
	// Suffix follows the text: the end of the user turn and the start of
	// the answer. For ChatGLM-6B it must end with [gMASK] <sop>.
	Suffix []int64
	// Labels are the token sequences of the possible answers.
	Labels [][]int64
	// Stop is the token that ends an answer (end of turn); its probability
	// after a label is part of that label's probability, so that "joy"
	// and "joyful" are different answers. Negative means no stop token.
	Stop int64
}

// Errors of Score's input.
var (
	ErrEmptyText   = errors.New("empty text")
	ErrEmptyLabels = errors.New("empty label set")
)

// Scorer computes, for a batch of texts, the probability that the model
// answers the prompt with each label. It is safe for concurrent use.
type Scorer struct {
	m *Model
	p Prompt
	// MaxTextTokens bounds the text of one message; longer texts keep
	// their beginning and are flagged as truncated.
	MaxTextTokens int
	// past is what every row attends to before its own tokens: an adapter's
	// P-tuning prefix, then the prompt prefix's keys and values.
	past *KV
	// prefixInPast is true when Prompt.Prefix is in past (causal models);
	// otherwise the prefix is part of every row's tokens.
	prefixInPast bool
	// adapterPastLen is the length of the P-tuning part of past, which has
	// no positions.
	adapterPastLen int
}

// Result is one text's scores.
type Result struct {
	// LogProbs is log P(answer = label) under the model, per label.
	LogProbs []float64
	// Probs is the distribution over the label set: LogProbs normalised.
	Probs []float64
	// Best is the index of the most probable label.
	Best int
	// Truncated is true when the text was cut to MaxTextTokens.
	Truncated bool
}

// ScorerOptions tune a Scorer.
type ScorerOptions struct {
	// MaxTextTokens bounds a message's text (default 512).
	MaxTextTokens int
	// AdapterPast is an adapter's P-tuning v2 prefix (nil: the checkpoint's
	// own prefix, if any). The scorer does not take ownership of it.
	AdapterPast *KV
	// RecomputePrefix turns shared-prefix reuse off, so that every row
	// computes the prompt prefix itself (for checks and benchmarks).
	RecomputePrefix bool
}

// NewScorer prepares p on m.
func NewScorer(m *Model, p Prompt, opts ScorerOptions) (*Scorer, error) {
	adapterPast, maxTextTokens := opts.AdapterPast, opts.MaxTextTokens
	if len(p.Labels) == 0 {
		return nil, ErrEmptyLabels
	}
	seen := map[string]bool{}
	for i, l := range p.Labels {
		if len(l) == 0 {
			return nil, fmt.Errorf("label %d has no tokens", i)
		}
		key := fmt.Sprint(l)
		if seen[key] {
			return nil, fmt.Errorf("labels tokenize identically (%v): they cannot be told apart", l)
		}
		seen[key] = true
		for _, t := range l {
			if t < 0 || t >= int64(m.cfg.Vocab) {
				return nil, fmt.Errorf("label %d: token %d outside the vocabulary", i, t)
			}
		}
	}
	if m.cfg.Arch == ArchGLM1 {
		n := len(p.Suffix)
		if n < 2 || p.Suffix[n-2] != int64(m.cfg.GMaskTokenID) || p.Suffix[n-1] != int64(m.cfg.BOSTokenID) {
			return nil, fmt.Errorf("chatglm-6b prompts must end with [gMASK] <sop> (%d %d)", m.cfg.GMaskTokenID, m.cfg.BOSTokenID)
		}
	}
	if maxTextTokens <= 0 {
		maxTextTokens = 512
	}
	sc := &Scorer{m: m, p: p, MaxTextTokens: maxTextTokens}
	if adapterPast == nil {
		adapterPast = m.prefix
	}
	if adapterPast != nil {
		sc.adapterPastLen = adapterPast.Len
	}
	// ChatGLM-6B's prefix-LM attention is bidirectional over the whole
	// context, so the instruction's keys depend on the message text: it
	// cannot be computed once. The causal families can.
	if m.cfg.Arch != ArchGLM1 && len(p.Prefix) > 0 && !opts.RecomputePrefix {
		kv, err := sc.prefixKV(adapterPast)
		if err != nil {
			return nil, err
		}
		defer kv.Free()
		if sc.past, err = m.JoinKV(adapterPast, kv); err != nil {
			return nil, err
		}
		sc.prefixInPast = true
	} else if adapterPast != nil {
		var err error
		if sc.past, err = m.JoinKV(adapterPast); err != nil {
			return nil, err
		}
	}
	return sc, nil
}

// prefixKV runs the prompt prefix alone (after the adapter's past).
func (sc *Scorer) prefixKV(adapterPast *KV) (*KV, error) {
	n := len(sc.p.Prefix)
	P := 0
	if adapterPast != nil {
		P = adapterPast.Len
	}
	b := &Batch{Rows: 1, Len: n, Tokens: sc.p.Prefix, Pos: make([]int64, n), Visible: make([]bool, n*(P+n)), Past: adapterPast}
	for i := 0; i < n; i++ {
		b.Pos[i] = int64(i)
		for j := 0; j < P+n; j++ {
			b.Visible[i*(P+n)+j] = j < P || j-P <= i
		}
	}
	_, kv, err := sc.m.Forward(b, true)
	if err != nil {
		return nil, fmt.Errorf("prompt prefix: %w", err)
	}
	return kv, nil
}

// Close frees the cached prefix.
func (sc *Scorer) Close() { sc.past.Free() }

// Labels is the number of labels.
func (sc *Scorer) Labels() int { return len(sc.p.Labels) }

// LabelTokens is the size of the label block every row carries.
func (sc *Scorer) LabelTokens() int {
	n := 0
	for _, l := range sc.p.Labels {
		n += len(l)
	}
	return n
}

// RowTokens is the number of tokens a text of n tokens costs in a batch
// row, without the label block (for the batcher's token budget).
func (sc *Scorer) RowTokens(n int) int {
	n = min(n, sc.MaxTextTokens)
	if !sc.prefixInPast {
		n += len(sc.p.Prefix)
	}
	return n + len(sc.p.Suffix)
}

// layout is one batch's token arrangement.
type layout struct {
	batch     *Batch
	rowLen    []int        // prompt tokens of each row (without padding)
	gather    []int64      // flat indices (row*L + column) whose logits are needed
	targets   [][]int64    // per gathered position: the token ids to read
	labelRefs [][][][2]int // per row, per label: (gathered index, target column) pairs
	truncated []bool
}

// Score scores texts (token ids) in one batched forward pass. The result of
// a text does not depend on the other texts of the batch.
func (sc *Scorer) Score(texts [][]int64) ([]Result, error) {
	if len(texts) == 0 {
		return nil, nil
	}
	lay, err := sc.layout(texts)
	if err != nil {
		return nil, err
	}
	s := tensor.NewScope()
	defer s.Close()
	m := sc.m
	hidden, _, err := m.forward(s, lay.batch, false)
	if err != nil {
		return nil, err
	}
	// Only the positions that predict answer tokens need the output layer,
	// which is the most expensive matrix of a small model.
	B, L, D := int64(lay.batch.Rows), int64(lay.batch.Len), int64(m.cfg.Hidden)
	idx := s.FromInt64(lay.gather, []int64{int64(len(lay.gather))}, m.opts.Device)
	h := s.IndexSelect(s.Reshape(hidden, B*L, D), 0, idx)
	logits := s.ToDType(s.Linear(h, m.head, nil), tensor.Float32)
	lse := s.Logsumexp(logits, -1, true)
	width := 0
	for _, t := range lay.targets {
		width = max(width, len(t))
	}
	flat := make([]int64, 0, len(lay.targets)*width)
	for _, t := range lay.targets {
		for j := 0; j < width; j++ {
			flat = append(flat, t[min(j, len(t)-1)])
		}
	}
	tgt := s.FromInt64(flat, []int64{int64(len(lay.targets)), int64(width)}, m.opts.Device)
	logp := s.Float32s(s.Sub(s.Gather(logits, 1, tgt), lse))
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("score: %w", err)
	}
	results := make([]Result, len(texts))
	for r := range texts {
		res := Result{LogProbs: make([]float64, len(sc.p.Labels)), Truncated: lay.truncated[r]}
		for k, refs := range lay.labelRefs[r] {
			sum := 0.0
			for _, ref := range refs {
				sum += float64(logp[ref[0]*width+ref[1]])
			}
			res.LogProbs[k] = sum
		}
		res.Probs, res.Best = normalise(res.LogProbs)
		results[r] = res
	}
	return results, nil
}

// normalise turns log-probabilities into a distribution over the labels.
func normalise(logp []float64) ([]float64, int) {
	best := 0
	for i, v := range logp {
		if v > logp[best] {
			best = i
		}
	}
	probs := make([]float64, len(logp))
	sum := 0.0
	for i, v := range logp {
		probs[i] = math.Exp(v - logp[best])
		sum += probs[i]
	}
	for i := range probs {
		probs[i] /= sum
	}
	return probs, best
}

// layout arranges texts into one batch: each row holds its prompt tokens
// (left-aligned, padded to the longest), then a block with every label's
// tokens, which attend to their row's prompt and to their own earlier
// tokens only. One forward pass thus scores all labels, multi-token ones
// included.
func (sc *Scorer) layout(texts [][]int64) (*layout, error) {
	m, p := sc.m, sc.p
	glm1 := m.cfg.Arch == ArchGLM1
	P := 0
	if sc.past != nil {
		P = sc.past.Len
	}
	posBase := 0 // rotary position of a row's first own token
	if sc.prefixInPast {
		posBase = len(p.Prefix)
	}
	rows := make([][]int64, len(texts))
	lay := &layout{truncated: make([]bool, len(texts)), rowLen: make([]int, len(texts))}
	maxLen := 0
	for r, t := range texts {
		if len(t) == 0 {
			return nil, fmt.Errorf("text %d: %w", r, ErrEmptyText)
		}
		if len(t) > sc.MaxTextTokens {
			t = t[:sc.MaxTextTokens]
			lay.truncated[r] = true
		}
		row := make([]int64, 0, len(p.Prefix)+len(t)+len(p.Suffix))
		if !sc.prefixInPast {
			row = append(row, p.Prefix...)
		}
		row = append(append(row, t...), p.Suffix...)
		rows[r] = row
		lay.rowLen[r] = len(row)
		maxLen = max(maxLen, len(row))
	}
	labelOff := make([]int, len(p.Labels))
	labelTotal := 0
	for k, l := range p.Labels {
		labelOff[k] = labelTotal
		labelTotal += len(l)
	}
	B, L := len(texts), maxLen+labelTotal
	T := P + L
	b := &Batch{Rows: B, Len: L, Tokens: make([]int64, B*L), Pos: make([]int64, B*L), Visible: make([]bool, B*L*T), Past: sc.past}
	if glm1 {
		b.BlockPos = make([]int64, B*L)
	}
	lay.labelRefs = make([][][][2]int, B)
	for r, row := range rows {
		n := len(row)
		// ChatGLM-6B: context is everything before <sop> (the last prompt
		// token); answer tokens keep the [gMASK] position and count block
		// positions from 1 at <sop>.
		ctx, gmask := n-1, n-2
		for i := 0; i < L; i++ {
			at := r*L + i
			vis := b.Visible[at*T : (at+1)*T]
			for j := 0; j < sc.adapterPastLen; j++ {
				vis[j] = true // P-tuning prefix: visible to every real token
			}
			switch {
			case i < n: // prompt token
				b.Tokens[at] = row[i]
				for j := sc.adapterPastLen; j < P; j++ {
					vis[j] = true
				}
				for j := 0; j <= i; j++ {
					vis[P+j] = true
				}
				switch {
				case !glm1:
					b.Pos[at] = int64(posBase + i)
				case i < ctx:
					b.Pos[at] = int64(i)
					for j := 0; j < ctx; j++ {
						vis[P+j] = true // bidirectional context
					}
				default: // <sop>
					b.Pos[at], b.BlockPos[at] = int64(gmask), 1
				}
			case i < maxLen: // padding: sees only itself, never seen
				vis[P+i] = true
				for j := 0; j < sc.adapterPastLen; j++ {
					vis[j] = false
				}
				b.Tokens[at] = row[n-1]
			default: // label block
				li := i - maxLen
				k, j := labelAt(labelOff, li)
				b.Tokens[at] = p.Labels[k][j]
				for c := sc.adapterPastLen; c < P; c++ {
					vis[c] = true
				}
				for c := 0; c < n; c++ {
					vis[P+c] = true
				}
				for c := 0; c <= j; c++ {
					vis[P+maxLen+labelOff[k]+c] = true
				}
				if glm1 {
					b.Pos[at], b.BlockPos[at] = int64(gmask), int64(2+j)
				} else {
					b.Pos[at] = int64(posBase + n + j)
				}
			}
		}
		// Gather: the last prompt position predicts every label's first
		// token; each label token predicts the next, or Stop.
		first := len(lay.gather)
		lay.gather = append(lay.gather, int64(r*L+n-1))
		var firsts []int64
		for _, l := range p.Labels {
			firsts = append(firsts, l[0])
		}
		lay.targets = append(lay.targets, firsts)
		perLabel := make([][][2]int, len(p.Labels))
		for k, l := range p.Labels {
			perLabel[k] = append(perLabel[k], [2]int{first, k})
			for j := range l {
				var next int64
				switch {
				case j+1 < len(l):
					next = l[j+1]
				case p.Stop >= 0:
					next = p.Stop
				default:
					continue
				}
				lay.gather = append(lay.gather, int64(r*L+maxLen+labelOff[k]+j))
				lay.targets = append(lay.targets, []int64{next})
				perLabel[k] = append(perLabel[k], [2]int{len(lay.gather) - 1, 0})
			}
		}
		lay.labelRefs[r] = perLabel
	}
	lay.batch = b
	return lay, nil
}

func labelAt(offsets []int, i int) (label, token int) {
	for k := len(offsets) - 1; k >= 0; k-- {
		if i >= offsets[k] {
			return k, i - offsets[k]
		}
	}
	return 0, i
}
