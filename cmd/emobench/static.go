package main

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/emoflow/emoflow/internal/classifier"
	"github.com/emoflow/emoflow/internal/model"
	"github.com/emoflow/emoflow/internal/prompt"
	"github.com/emoflow/emoflow/internal/tokenizer"
)

// staticEngine is the baseline: the engine alone, the classifier's scorer
// (default prompt, the classifier's -max-text-tokens) on batches formed in
// advance, with no server, queue or HTTP in between.
type staticEngine struct {
	m   *model.Model
	tok tokenizer.Tokenizer
	sc  *model.Scorer
}

// newStaticEngine loads the model in modelDir as the classifier cls does:
// its dtype, threads and lanes (cls.ModelOptions), its -max-text-tokens.
func newStaticEngine(modelDir string, cls *classifier.Component) (*staticEngine, error) {
	opts, err := cls.ModelOptions()
	if err != nil {
		return nil, fmt.Errorf("static baseline: %w", err)
	}
	m, err := model.Load(modelDir, opts)
	if err != nil {
		return nil, fmt.Errorf("static baseline: %w", err)
	}
	tok, err := tokenizer.Load(modelDir, tokenizer.Options{})
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("static baseline: %w", err)
	}
	p, err := prompt.Default().Compile(tok)
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("static baseline: %w", err)
	}
	sc, err := model.NewScorer(m, p, model.ScorerOptions{MaxTextTokens: cls.MaxTextTokens})
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("static baseline: %w", err)
	}
	return &staticEngine{m: m, tok: tok, sc: sc}, nil
}

func (e *staticEngine) close() {
	e.sc.Close()
	e.m.Close()
}

// encode tokenizes text as the classifier does (an empty tokenization
// becomes a single space).
func (e *staticEngine) encode(text string) []int64 {
	if ids := tokenIDs(e.tok, text); len(ids) > 0 {
		return ids
	}
	return tokenIDs(e.tok, " ")
}

// rowTokens is a text's cost in the classifier's batcher (its row length
// without the label block): what the padding efficiency counts as real.
func (e *staticEngine) rowTokens(text string) int {
	return e.sc.RowTokens(len(e.encode(text)))
}

// staticResult is the static baseline's throughput per batch size.
type staticResult struct {
	runs    map[int][]float64 // texts per second, every run
	perSize map[int]float64   // the median of each size's runs
	best    float64
	bestAt  int
}

// throughput scores texts sorted by length in consecutive batches of each
// size, the sizes interleaved over rounds so that a noisy moment on the
// machine does not favour one size, and adds the runs to into (nil: a new
// result). The best size's median counts.
func (e *staticEngine) throughput(ctx context.Context, texts []string, sizes []int, rounds int, into *staticResult) (*staticResult, error) {
	if into == nil {
		into = &staticResult{runs: map[int][]float64{}}
	}
	enc := make([][]int64, len(texts))
	for i, t := range texts {
		enc[i] = e.encode(t)
	}
	slices.SortStableFunc(enc, func(a, b []int64) int { return len(a) - len(b) })
	// The first forward passes pay for libtorch's lazy set-up.
	if _, err := e.sc.Score(enc[:min(8, len(enc))]); err != nil {
		return nil, fmt.Errorf("static baseline: %w", err)
	}
	for r := 0; r < rounds; r++ {
		for _, size := range sizes {
			start := time.Now()
			for i := 0; i < len(enc); i += size {
				if err := ctx.Err(); err != nil {
					return nil, err
				}
				if _, err := e.sc.Score(enc[i:min(i+size, len(enc))]); err != nil {
					return nil, fmt.Errorf("static baseline, batch size %d: %w", size, err)
				}
			}
			into.runs[size] = append(into.runs[size], float64(len(enc))/time.Since(start).Seconds())
		}
	}
	into.perSize, into.best = map[int]float64{}, 0
	for size, r := range into.runs {
		into.perSize[size] = median(r)
		if into.perSize[size] > into.best {
			into.best, into.bestAt = into.perSize[size], size
		}
	}
	return into, nil
}
