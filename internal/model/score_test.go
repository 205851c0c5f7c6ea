package model

import (
	"errors"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/emoflow/emoflow/internal/randmodel"
	"github.com/emoflow/emoflow/internal/safetensors"
	"github.com/emoflow/emoflow/internal/tensor"
)

const testVocab = 300

func tinySpec(arch string) randmodel.Spec {
	s := randmodel.Spec{Arch: arch, Layers: 2, Hidden: 64, Heads: 4, Groups: 2, FFN: 96, Vocab: testVocab, Seed: 7, Std: 0.2}
	if arch == "chatglm-6b" {
		s.Groups, s.FFN = 4, 256
	}
	return s
}

func loadTiny(t *testing.T, spec randmodel.Spec, dt tensor.DType) (*Model, string) {
	t.Helper()
	dir := t.TempDir()
	if err := randmodel.Write(dir, spec); err != nil {
		t.Fatal(err)
	}
	m, err := Load(dir, Options{DType: dt})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m, dir
}

// testPrompt is an instruction prefix, a suffix and labels of one to three
// tokens, two of which share their first token.
func testPrompt(m *Model) Prompt {
	p := Prompt{
		Prefix: []int64{5, 6, 7, 8, 9, 10},
		Suffix: []int64{11, 12},
		Labels: [][]int64{{20}, {21, 22}, {21, 23, 24}, {25}},
		Stop:   2,
	}
	if m.cfg.Arch == ArchGLM1 {
		p.Suffix = append(p.Suffix, int64(m.cfg.GMaskTokenID), int64(m.cfg.BOSTokenID))
	}
	return p
}

var testTexts = [][]int64{{30, 31, 32}, {40}, {50, 51, 52, 53, 54, 55, 56, 57}, {60, 61}}

// naiveLogProb computes log P(label then stop | prompt) the slow way: one
// full forward pass over prompt+label per label, the output layer applied
// in Go to every position, no shared prefix, no label block.
func naiveLogProb(t *testing.T, m *Model, dir string, p Prompt, text, label []int64) float64 {
	t.Helper()
	set, err := safetensors.OpenSet(dir, "model")
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	_, _, _, headName := globalNames(m.cfg)
	if m.cfg.Arch == ArchGLM1 {
		headName = "transformer.word_embeddings.weight"
	}
	raw, err := set.Bytes(headName)
	if err != nil {
		t.Fatal(err)
	}
	head := floats(raw)
	D := m.cfg.Hidden

	prompt := append(append(append([]int64{}, p.Prefix...), text...), p.Suffix...)
	seq := append(append([]int64{}, prompt...), label...)
	n := len(seq)
	b := &Batch{Rows: 1, Len: n, Tokens: seq, Pos: make([]int64, n), Visible: make([]bool, n*n)}
	if m.cfg.Arch == ArchGLM1 {
		b.BlockPos = make([]int64, n)
		ctx := len(prompt) - 1
		for i := 0; i < n; i++ {
			if i < ctx {
				b.Pos[i] = int64(i)
			} else {
				b.Pos[i], b.BlockPos[i] = int64(ctx-1), int64(i-ctx+1)
			}
			for j := 0; j < n; j++ {
				b.Visible[i*n+j] = j <= i || j < ctx
			}
		}
	} else {
		for i := 0; i < n; i++ {
			b.Pos[i] = int64(i)
			for j := 0; j <= i; j++ {
				b.Visible[i*n+j] = true
			}
		}
	}
	if pre := m.Prefix(); pre != nil {
		t.Fatal("naive path does not model a checkpoint prefix")
	}
	hidden, _, err := m.Forward(b, false)
	if err != nil {
		t.Fatal(err)
	}
	logSoftmaxAt := func(pos int, tok int64) float64 {
		h := hidden[pos*D : (pos+1)*D]
		logits := make([]float64, m.cfg.Vocab)
		mx := math.Inf(-1)
		for v := range logits {
			s := 0.0
			for d := 0; d < D; d++ {
				s += float64(h[d]) * float64(head[v*D+d])
			}
			logits[v] = s
			mx = math.Max(mx, s)
		}
		sum := 0.0
		for _, l := range logits {
			sum += math.Exp(l - mx)
		}
		return logits[tok] - mx - math.Log(sum)
	}
	lp := 0.0
	for j, tok := range label {
		lp += logSoftmaxAt(len(prompt)-1+j, tok)
	}
	return lp + logSoftmaxAt(n-1, p.Stop)
}

func TestScoreMatchesNaiveComputation(t *testing.T) {
	for _, arch := range []string{"chatglm2", "chatglm-6b"} {
		t.Run(arch, func(t *testing.T) {
			m, dir := loadTiny(t, tinySpec(arch), tensor.Float32)
			p := testPrompt(m)
			sc, err := NewScorer(m, p, ScorerOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer sc.Close()
			res, err := sc.Score(testTexts)
			if err != nil {
				t.Fatal(err)
			}
			for r, text := range testTexts {
				sum := 0.0
				for k, label := range p.Labels {
					want := naiveLogProb(t, m, dir, p, text, label)
					if d := math.Abs(res[r].LogProbs[k] - want); d > 1e-4 {
						t.Errorf("text %d label %d: log p = %.6f, naive %.6f", r, k, res[r].LogProbs[k], want)
					}
					sum += res[r].Probs[k]
				}
				if math.Abs(sum-1) > 1e-9 {
					t.Errorf("text %d: probabilities sum to %v", r, sum)
				}
			}
		})
	}
}

func TestScoreBatchedEqualsOneByOne(t *testing.T) {
	for _, arch := range []string{"chatglm2", "chatglm-6b"} {
		t.Run(arch, func(t *testing.T) {
			m, _ := loadTiny(t, tinySpec(arch), tensor.Float32)
			sc, err := NewScorer(m, testPrompt(m), ScorerOptions{})
			if err != nil {
				t.Fatal(err)
			}
			defer sc.Close()
			batched, err := sc.Score(testTexts)
			if err != nil {
				t.Fatal(err)
			}
			for r, text := range testTexts {
				alone, err := sc.Score([][]int64{text})
				if err != nil {
					t.Fatal(err)
				}
				for k := range alone[0].LogProbs {
					if d := math.Abs(alone[0].LogProbs[k] - batched[r].LogProbs[k]); d > 1e-5 {
						t.Errorf("text %d label %d: alone %.7f, in a batch %.7f", r, k, alone[0].LogProbs[k], batched[r].LogProbs[k])
					}
				}
			}
		})
	}
}

func TestPrefixReuseEqualsRecomputation(t *testing.T) {
	m, _ := loadTiny(t, tinySpec("chatglm2"), tensor.Float32)
	p := testPrompt(m)
	cached, err := NewScorer(m, p, ScorerOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer cached.Close()
	if !cached.prefixInPast {
		t.Fatal("causal model did not cache its prompt prefix")
	}
	full, err := NewScorer(m, p, ScorerOptions{RecomputePrefix: true})
	if err != nil {
		t.Fatal(err)
	}
	defer full.Close()
	a, err := cached.Score(testTexts)
	if err != nil {
		t.Fatal(err)
	}
	b, err := full.Score(testTexts)
	if err != nil {
		t.Fatal(err)
	}
	for r := range a {
		for k := range a[r].LogProbs {
			if d := math.Abs(a[r].LogProbs[k] - b[r].LogProbs[k]); d > 1e-5 {
				t.Errorf("text %d label %d: reused prefix %.7f, recomputed %.7f", r, k, a[r].LogProbs[k], b[r].LogProbs[k])
			}
		}
	}
}

func TestHFLayoutEqualsTHUDMLayout(t *testing.T) {
	spec := tinySpec("chatglm2")
	thudm, _ := loadTiny(t, spec, tensor.Float32)
	spec.HFNames = true
	hf, _ := loadTiny(t, spec, tensor.Float32)
	if hf.cfg.Layout != LayoutHF {
		t.Fatalf("layout = %s", hf.cfg.Layout)
	}
	b := &Batch{Rows: 1, Len: 3, Tokens: []int64{1, 2, 3}, Pos: []int64{0, 1, 2},
		Visible: []bool{true, false, false, true, true, false, true, true, true}}
	x, _, err := thudm.Forward(b, false)
	if err != nil {
		t.Fatal(err)
	}
	y, _, err := hf.Forward(b, false)
	if err != nil {
		t.Fatal(err)
	}
	if d := maxAbsDiff(x, y); d > 1e-6 {
		t.Fatalf("THUDM and transformers layouts of the same weights differ by %g", d)
	}
}

func TestTruncationAndBadInput(t *testing.T) {
	m, _ := loadTiny(t, tinySpec("chatglm2"), tensor.Float32)
	sc, err := NewScorer(m, testPrompt(m), ScorerOptions{MaxTextTokens: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	res, err := sc.Score([][]int64{{30, 31, 32, 33, 34, 35}, {30, 31, 32, 33}})
	if err != nil {
		t.Fatal(err)
	}
	if !res[0].Truncated || res[1].Truncated {
		t.Fatalf("truncated flags = %v %v", res[0].Truncated, res[1].Truncated)
	}
	for k := range res[0].LogProbs {
		if math.Abs(res[0].LogProbs[k]-res[1].LogProbs[k]) > 1e-5 {
			t.Fatalf("truncated text scored differently from its first 4 tokens")
		}
	}
	if _, err := sc.Score([][]int64{{}}); err == nil {
		t.Error("empty text accepted")
	}
	if _, err := sc.Score([][]int64{{testVocab + 5}}); err == nil {
		t.Error("token outside the vocabulary accepted")
	}
	if _, err := NewScorer(m, Prompt{Suffix: []int64{1}}, ScorerOptions{}); err == nil {
		t.Error("empty label set accepted")
	}
	if _, err := NewScorer(m, Prompt{Labels: [][]int64{{3}, {3}}}, ScorerOptions{}); err == nil {
		t.Error("duplicate labels accepted")
	}
}

func TestLoadRejectsMismatchedConfig(t *testing.T) {
	dir := t.TempDir()
	spec := tinySpec("chatglm2")
	if err := randmodel.Write(dir, spec); err != nil {
		t.Fatal(err)
	}
	// Claim more heads than the weights have.
	spec.Heads, spec.Groups = 8, 2
	other := t.TempDir()
	if err := randmodel.Write(other, spec); err != nil {
		t.Fatal(err)
	}
	copyFile(t, filepath.Join(other, "config.json"), filepath.Join(dir, "config.json"))
	if _, err := Load(dir, Options{}); err == nil {
		t.Fatal("loaded weights that do not match config.json")
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestGenerateMatchesFullRecomputation checks the KV-cached greedy loop
// against argmax over full forward passes of the growing sequence.
func TestGenerateMatchesFullRecomputation(t *testing.T) {
	for _, arch := range []string{"chatglm2", "chatglm-6b"} {
		t.Run(arch, func(t *testing.T) {
			m, _ := loadTiny(t, tinySpec(arch), tensor.Float32)
			p := testPrompt(m)
			prompt := append(append(append([]int64{}, p.Prefix...), 30, 31, 32), p.Suffix...)
			got, err := m.Generate(prompt, 5, nil, nil)
			if err != nil {
				t.Fatal(err)
			}
			seq := append([]int64{}, prompt...)
			for step := 0; step < 5; step++ {
				n := len(seq)
				b := &Batch{Rows: 1, Len: n, Tokens: seq, Pos: make([]int64, n), Visible: make([]bool, n*n)}
				ctx := len(prompt) - 1
				if m.cfg.Arch == ArchGLM1 {
					b.BlockPos = make([]int64, n)
				}
				for i := 0; i < n; i++ {
					if m.cfg.Arch == ArchGLM1 && i >= ctx {
						b.Pos[i], b.BlockPos[i] = int64(ctx-1), int64(i-ctx+1)
					} else {
						b.Pos[i] = int64(i)
					}
					for j := 0; j < n; j++ {
						b.Visible[i*n+j] = j <= i || (m.cfg.Arch == ArchGLM1 && j < ctx)
					}
				}
				logits, err := m.Logits(b)
				if err != nil {
					t.Fatal(err)
				}
				last := logits[(n-1)*m.cfg.Vocab : n*m.cfg.Vocab]
				best := 0
				for v := range last {
					if last[v] > last[best] {
						best = v
					}
				}
				if int64(best) != got[step] {
					t.Fatalf("step %d: cached generation chose %d, full recomputation %d", step, got[step], best)
				}
				seq = append(seq, int64(best))
			}
		})
	}
}

// TestLanesScoreLikeOneGroup: a batch split into lanes (row groups computed
// at once on their own threads) gives every row its own result, in order,
// as one forward pass does; a bad row in any lane fails the batch.
func TestLanesScoreLikeOneGroup(t *testing.T) {
	load := tinyWithLanes(t)
	rowsOf := func(m *Model) []Row {
		shared, err := NewScorer(m, testPrompt(m), ScorerOptions{})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(shared.Close)
		own, err := NewScorer(m, testPrompt(m), ScorerOptions{RecomputePrefix: true, MaxTextTokens: 4})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(own.Close)
		var rows []Row
		var texts [][]int64
		for range 3 * minLaneRows / len(testTexts) {
			texts = append(texts, testTexts...)
		}
		for i, text := range texts {
			sc := shared
			if i%3 == 2 {
				sc = own
			}
			rows = append(rows, Row{Scorer: sc, Text: text})
		}
		return rows
	}
	one, lanes := load(1, 1), load(3, 3)
	want, err := ScoreRows(rowsOf(one))
	if err != nil {
		t.Fatal(err)
	}
	rows := rowsOf(lanes)
	got, err := ScoreRows(rows)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) {
		t.Fatalf("%d results for %d rows", len(got), len(want))
	}
	truncated := 0
	for r := range want {
		if got[r].Truncated != want[r].Truncated || got[r].Best != want[r].Best {
			t.Errorf("row %d: truncated %v best %d in lanes, %v %d in one pass", r, got[r].Truncated, got[r].Best, want[r].Truncated, want[r].Best)
		}
		if got[r].Truncated {
			truncated++
		}
		for k := range want[r].LogProbs {
			if d := math.Abs(got[r].LogProbs[k] - want[r].LogProbs[k]); d > 1e-5 {
				t.Errorf("row %d label %d: %.7f in lanes, %.7f in one pass", r, k, got[r].LogProbs[k], want[r].LogProbs[k])
			}
		}
	}
	if truncated == 0 {
		t.Error("no row was truncated: the test does not mix its scorers")
	}
	rows[len(rows)-1].Text = nil
	if _, err := ScoreRows(rows); !errors.Is(err, ErrEmptyText) {
		t.Errorf("an empty text in the last lane: err = %v, want ErrEmptyText", err)
	}
}

// TestPaddedTokensFollowTheLanes: PaddedTokens counts what ScoreRows
// computes: one lane pads every row to the longest; lanes (from 16 rows
// each) take the rows in order of length and pad to their own longest.
func TestPaddedTokensFollowTheLanes(t *testing.T) {
	load := tinyWithLanes(t)
	var rows []int // 16 long rows, then 16 short ones
	for i := range 32 {
		rows = append(rows, 50-45*(i/16))
	}
	if got := load(2, 1).PaddedTokens(rows); got != 32*50 {
		t.Errorf("one lane: %d tokens, want %d", got, 32*50)
	}
	if got := load(2, 2).PaddedTokens(rows); got != 16*5+16*50 {
		t.Errorf("two lanes: %d tokens, want %d", got, 16*5+16*50)
	}
	if got := load(2, 2).PaddedTokens(rows[:20]); got != 20*50 {
		t.Errorf("20 rows, too few for two lanes: %d tokens, want %d", got, 20*50)
	}
}

// tinyWithLanes writes a tiny chatglm2 model and returns a loader of it
// with the given threads and lanes (float32).
func tinyWithLanes(t *testing.T) func(threads, lanes int) *Model {
	t.Helper()
	dir := t.TempDir()
	if err := randmodel.Write(dir, tinySpec("chatglm2")); err != nil {
		t.Fatal(err)
	}
	return func(threads, lanes int) *Model {
		m, err := Load(dir, Options{DType: tensor.Float32, Threads: threads, Lanes: lanes})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(m.Close)
		return m
	}
}
