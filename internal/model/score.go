package model

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"

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
	// firstPos is the rotary position of the first token after the
	// adapter's past (see ScorerOptions.AdapterPastPositions).
	firstPos int
	lora     *LoRA
	trie     *labelTrie
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
	// LoRA is an adapter's unmerged low-rank update (nil for none). The
	// scorer does not take ownership of it.
	LoRA *LoRA
	// RecomputePrefix turns shared-prefix reuse off, so that every row
	// computes the prompt prefix itself (for checks and benchmarks).
	RecomputePrefix bool
	// AdapterPastPositions is the rotary position of the first token after
	// AdapterPast: 0 as THUDM's ChatGLM numbers tokens after a P-tuning
	// prefix, AdapterPast.Len for PEFT prefix tuning on transformers' glm,
	// which numbers tokens after the virtual ones.
	AdapterPastPositions int
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
	if opts.LoRA != nil && opts.LoRA.m != m {
		return nil, fmt.Errorf("LoRA update built for another model")
	}
	sc := &Scorer{m: m, p: p, MaxTextTokens: maxTextTokens, lora: opts.LoRA, trie: newLabelTrie(p.Labels), firstPos: opts.AdapterPastPositions}
	if adapterPast == nil {
		adapterPast = m.prefix
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
	if sc.lora != nil {
		b.LoRA = []*LoRA{sc.lora}
	}
	for i := 0; i < n; i++ {
		b.Pos[i] = int64(sc.firstPos + i)
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

// labelTrie holds the label token sequences as a prefix tree: labels that
// start alike ("\n" + word, or words sharing a first piece) share the
// positions of their common prefix, so the label block is shorter and
// fewer positions go through the output layer, with the same result.
type labelTrie struct {
	token  []int64 // per node
	parent []int   // per node; -1 under the root (the last prompt token)
	depth  []int   // per node, 0 for the first answer token
	// children and ends are per predicting position: index 0 is the root,
	// index v+1 is node v.
	children [][]int
	ends     []bool // a label ends at this node (its Stop is needed)
	paths    [][]int
}

func newLabelTrie(labels [][]int64) *labelTrie {
	t := &labelTrie{children: [][]int{nil}, ends: []bool{false}}
	for _, l := range labels {
		at := -1 // the root
		var path []int
		for _, tok := range l {
			next := -1
			for _, c := range t.children[at+1] {
				if t.token[c] == tok {
					next = c
					break
				}
			}
			if next < 0 {
				next = len(t.token)
				t.token = append(t.token, tok)
				t.parent = append(t.parent, at)
				depth := 0
				if at >= 0 {
					depth = t.depth[at] + 1
				}
				t.depth = append(t.depth, depth)
				t.children = append(t.children, nil)
				t.ends = append(t.ends, false)
				t.children[at+1] = append(t.children[at+1], next)
			}
			path = append(path, next)
			at = next
		}
		t.ends[at+1] = true
		t.paths = append(t.paths, path)
	}
	return t
}

// LabelTokens is the size of the label block every row carries.
func (sc *Scorer) LabelTokens() int { return len(sc.trie.token) }

// RowTokens is the number of tokens a text of n tokens costs in a batch
// row, without the label block (for the batcher's token budget).
func (sc *Scorer) RowTokens(n int) int {
	n = min(n, sc.MaxTextTokens)
	if !sc.prefixInPast {
		n += len(sc.p.Prefix)
	}
	return n + len(sc.p.Suffix)
}

// Row is one text to score with its scorer. Rows of different scorers
// (adapters: P-tuning prefixes, unmerged LoRA updates, prompts, label
// sets) share one forward pass as long as their scorers share the model.
type Row struct {
	Scorer *Scorer
	Text   []int64
}

// Score scores texts (token ids) in one batched forward pass. The result of
// a text does not depend on the other texts of the batch.
func (sc *Scorer) Score(texts [][]int64) ([]Result, error) {
	rows := make([]Row, len(texts))
	for i, t := range texts {
		rows[i] = Row{Scorer: sc, Text: t}
	}
	return ScoreRows(rows)
}

// ScoreRows scores rows of possibly different scorers on the same model in
// one forward pass.
func ScoreRows(rows []Row) ([]Result, error) {
	if len(rows) == 0 {
		return nil, nil
	}
	m := rows[0].Scorer.m
	for _, r := range rows {
		if r.Scorer.m != m {
			return nil, fmt.Errorf("score: rows of different models in one batch")
		}
	}
	lanes := m.lanesFor(len(rows))
	if lanes <= 1 {
		return scoreLane(m, rows, m.opts.Threads)
	}
	// Lanes take the rows in order of length, so that each pads to its own
	// longest row, and the first lane runs on this goroutine.
	order := make([]int, len(rows))
	for i := range order {
		order[i] = i
	}
	slices.SortStableFunc(order, func(a, b int) int {
		return cmp.Compare(rows[a].Scorer.RowTokens(len(rows[a].Text)), rows[b].Scorer.RowTokens(len(rows[b].Text)))
	})
	sorted := make([]Row, len(rows))
	for i, o := range order {
		sorted[i] = rows[o]
	}
	results := make([]Result, len(rows))
	errs := make([]error, lanes)
	var wg sync.WaitGroup
	for i := lanes - 1; i >= 0; i-- {
		lo, hi := i*len(rows)/lanes, (i+1)*len(rows)/lanes
		run := func() {
			res, err := scoreLane(m, sorted[lo:hi], max(1, m.opts.Threads/lanes))
			for k, r := range res {
				results[order[lo+k]] = r
			}
			errs[i] = err
		}
		if i == 0 {
			run()
		} else {
			wg.Go(run)
		}
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return results, nil
}

// minLaneRows is the fewest rows a lane gets. Every lane reads the whole
// output layer (the vocabulary's weights, tens of megabytes) from memory:
// with fewer rows to multiply it by, that read costs more than the lanes
// save (on the benchmark model, lanes gain from 16 rows each and lose at 4
// and 8).
const minLaneRows = 16

// lanesFor is how many lanes ScoreRows splits a batch of n rows into.
func (m *Model) lanesFor(n int) int {
	return max(1, min(m.opts.Lanes, m.opts.Threads, n/minLaneRows))
}

// PaddedTokens is how many tokens ScoreRows computes for rows of these
// lengths (Scorer.RowTokens, without label blocks): each lane takes its
// share of the rows in order of length and pads them to its longest.
func (m *Model) PaddedTokens(rowTokens []int) int {
	sorted := slices.Sorted(slices.Values(rowTokens))
	n, lanes, total := len(sorted), m.lanesFor(len(sorted)), 0
	for i := range lanes {
		if lane := sorted[i*n/lanes : (i+1)*n/lanes]; len(lane) > 0 {
			total += len(lane) * lane[len(lane)-1]
		}
	}
	return total
}

// scoreLane scores rows in one forward pass on the calling goroutine's
// thread with threads intra-op threads.
func scoreLane(m *Model, rows []Row, threads int) ([]Result, error) {
	lay, err := newLayout(rows)
	if err != nil {
		return nil, err
	}
	s := tensor.NewScope()
	defer s.Close()
	if err := s.UseThreads(threads); err != nil {
		return nil, err
	}
	if err := lay.attachPast(s, m); err != nil {
		return nil, err
	}
	hidden, _, err := m.forward(s, lay.batch, false)
	if err != nil {
		return nil, err
	}
	// Only the positions that predict answer tokens need the output layer,
	// which is the most expensive matrix of a small model.
	B, L, D := int64(lay.batch.Rows), int64(lay.batch.Len), int64(m.cfg.Hidden)
	idx := s.FromInt64(lay.gather, []int64{int64(len(lay.gather))}, m.opts.Device)
	h := s.IndexSelect(s.Reshape(hidden, B*L, D), 0, idx)
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
	picked := s.LinearLogSoftmaxPick(h, m.head, flat, width)
	if err := s.Err(); err != nil {
		return nil, fmt.Errorf("score: %w", err)
	}
	results := make([]Result, len(rows))
	for r := range rows {
		res := Result{LogProbs: make([]float64, len(lay.labelRefs[r])), Truncated: lay.truncated[r]}
		for k, refs := range lay.labelRefs[r] {
			sum := 0.0
			for _, ref := range refs {
				sum += float64(picked[ref[0]*width+ref[1]])
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

// layout is one batch's token arrangement. Each row holds its prompt
// tokens (left-aligned, padded to the longest), then a block with every
// label of its scorer, whose tokens attend to their row's prompt and to
// their own earlier tokens only. One forward pass thus scores all labels,
// multi-token ones included.
type layout struct {
	batch     *Batch
	rows      []Row
	pastLen   int          // columns of past (the longest row's)
	gather    []int64      // flat indices (row*L + column) whose logits are needed
	targets   [][]int64    // per gathered position: the token ids to read
	labelRefs [][][][2]int // per row, per label: (gathered index, target column) pairs
	truncated []bool
}

func pastLenOf(sc *Scorer) int {
	if sc.past == nil {
		return 0
	}
	return sc.past.Len
}

func newLayout(rows []Row) (*layout, error) {
	m := rows[0].Scorer.m
	glm1 := m.cfg.Arch == ArchGLM1
	lay := &layout{rows: rows, truncated: make([]bool, len(rows))}
	prompts := make([][]int64, len(rows))
	maxLen, labelWidth := 0, 0
	for r, row := range rows {
		sc, t := row.Scorer, row.Text
		if len(t) == 0 {
			return nil, fmt.Errorf("text %d: %w", r, ErrEmptyText)
		}
		if len(t) > sc.MaxTextTokens {
			t = t[:sc.MaxTextTokens]
			lay.truncated[r] = true
		}
		p := make([]int64, 0, len(sc.p.Prefix)+len(t)+len(sc.p.Suffix))
		if !sc.prefixInPast {
			p = append(p, sc.p.Prefix...)
		}
		prompts[r] = append(append(p, t...), sc.p.Suffix...)
		maxLen = max(maxLen, len(prompts[r]))
		labelWidth = max(labelWidth, sc.LabelTokens())
		lay.pastLen = max(lay.pastLen, pastLenOf(sc))
	}
	B, L, P := len(rows), maxLen+labelWidth, lay.pastLen
	T := P + L
	b := &Batch{Rows: B, Len: L, Tokens: make([]int64, B*L), Pos: make([]int64, B*L), Visible: make([]bool, B*L*T)}
	if glm1 {
		b.BlockPos = make([]int64, B*L)
	}
	for _, row := range rows {
		if row.Scorer.lora != nil {
			b.LoRA = make([]*LoRA, B)
			break
		}
	}
	lay.labelRefs = make([][][][2]int, B)
	for r, row := range rows {
		sc, prompt := row.Scorer, prompts[r]
		if b.LoRA != nil {
			b.LoRA[r] = sc.lora
		}
		n, rowPast := len(prompt), pastLenOf(sc)
		posBase := sc.firstPos // rotary position of the row's first own token
		if sc.prefixInPast {
			posBase += len(sc.p.Prefix)
		}
		trie := sc.trie
		total := len(trie.token)
		// ChatGLM-6B: context is everything before <sop> (the last prompt
		// token); answer tokens keep the [gMASK] position and count block
		// positions from 1 at <sop>.
		ctx, gmask := n-1, n-2
		for i := 0; i < L; i++ {
			at := r*L + i
			vis := b.Visible[at*T : (at+1)*T]
			switch {
			case i < n: // prompt token: its row's past, causal
				b.Tokens[at] = prompt[i]
				for j := 0; j < rowPast; j++ {
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
			case i >= maxLen && i-maxLen < total: // label token: a trie node
				v := i - maxLen
				b.Tokens[at] = trie.token[v]
				for c := 0; c < rowPast; c++ {
					vis[c] = true
				}
				for c := 0; c < n; c++ {
					vis[P+c] = true
				}
				for u := v; u >= 0; u = trie.parent[u] {
					vis[P+maxLen+u] = true // itself and its ancestors
				}
				if glm1 {
					b.Pos[at], b.BlockPos[at] = int64(gmask), int64(2+trie.depth[v])
				} else {
					b.Pos[at] = int64(posBase + n + trie.depth[v])
				}
			default: // padding: sees only itself, is never seen
				vis[P+i] = true
				b.Tokens[at] = prompt[n-1]
			}
		}
		// Gather: the last prompt position (the root) and every trie node
		// predict their children's tokens and, where a label ends, Stop.
		// col[q][tok] is where position q's log-probability of tok lands.
		col := make([]map[int64][2]int, len(trie.children))
		for q := range trie.children {
			var targets []int64
			for _, c := range trie.children[q] {
				targets = append(targets, trie.token[c])
			}
			if trie.ends[q] && sc.p.Stop >= 0 {
				targets = append(targets, sc.p.Stop)
			}
			if len(targets) == 0 {
				continue
			}
			pos := int64(r*L + n - 1)
			if q > 0 {
				pos = int64(r*L + maxLen + q - 1)
			}
			lay.gather = append(lay.gather, pos)
			lay.targets = append(lay.targets, targets)
			col[q] = map[int64][2]int{}
			for j, tok := range targets {
				col[q][tok] = [2]int{len(lay.gather) - 1, j}
			}
		}
		perLabel := make([][][2]int, len(sc.p.Labels))
		for k, path := range trie.paths {
			prev := 0 // the root
			for _, v := range path {
				perLabel[k] = append(perLabel[k], col[prev][trie.token[v]])
				prev = v + 1
			}
			if sc.p.Stop >= 0 {
				perLabel[k] = append(perLabel[k], col[prev][sc.p.Stop])
			}
		}
		lay.labelRefs[r] = perLabel
	}
	lay.batch = b
	return lay, nil
}

// attachPast gives the batch its past: the shared scorer's own when every
// row has the same one (broadcast, no copy), otherwise every row's past
// padded to the longest and stacked.
func (lay *layout) attachPast(s *tensor.Scope, m *Model) error {
	if lay.pastLen == 0 {
		return nil
	}
	first := lay.rows[0].Scorer.past
	same := true
	for _, r := range lay.rows {
		if r.Scorer.past != first {
			same = false
			break
		}
	}
	if same {
		lay.batch.Past = first
		return nil
	}
	c := m.cfg
	G, hd, P := int64(c.KVGroups), int64(c.HeadDim), int64(lay.pastLen)
	zeros := s.Zeros([]int64{1, G, P, hd}, m.opts.DType, m.opts.Device)
	kv := &KV{Len: lay.pastLen}
	for l := 0; l < c.Layers; l++ {
		ks := make([]*tensor.Tensor, len(lay.rows))
		vs := make([]*tensor.Tensor, len(lay.rows))
		for r, row := range lay.rows {
			past := row.Scorer.past
			n := int64(pastLenOf(row.Scorer))
			switch {
			case n == 0:
				ks[r], vs[r] = zeros, zeros
			case n == P:
				ks[r], vs[r] = past.K[l], past.V[l]
			default:
				pad := s.Narrow(zeros, 2, 0, P-n)
				ks[r] = s.Cat([]*tensor.Tensor{past.K[l], pad}, 2)
				vs[r] = s.Cat([]*tensor.Tensor{past.V[l], pad}, 2)
			}
		}
		kv.K = append(kv.K, s.Cat(ks, 0))
		kv.V = append(kv.V, s.Cat(vs, 0))
	}
	lay.batch.Past = kv
	return s.Err()
}
