package main

import (
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"

	"github.com/emoflow/emoflow/internal/benchmodel"
	"github.com/emoflow/emoflow/internal/contract"
	"github.com/emoflow/emoflow/internal/datasets"
	"github.com/emoflow/emoflow/internal/tokenizer"
)

// benchTexts are the GoEmotions and MELD test texts, normalised as ingest
// normalises them before classifying; texts that normalise to nothing are
// left out. With distinct, each text appears once.
func benchTexts(dataDir string, distinct bool) ([]string, error) {
	raw, err := benchmodel.Texts(dataDir)
	if err != nil {
		return nil, fmt.Errorf("benchmark texts: %w", err)
	}
	out := appendNormalised(nil, map[string]bool{}, raw, distinct)
	if len(out) == 0 {
		return nil, fmt.Errorf("benchmark texts: none in %s", dataDir)
	}
	return out, nil
}

// appendNormalised appends raw's texts, normalised as ingest does and
// without the empty ones, to out; with distinct, only those not yet in
// seen, which it records.
func appendNormalised(out []string, seen map[string]bool, raw []string, distinct bool) []string {
	for _, t := range raw {
		t = contract.NormalizeText(t)
		if t == "" || (distinct && seen[t]) {
			continue
		}
		seen[t] = true
		out = append(out, t)
	}
	return out
}

// sample returns n texts drawn from texts without replacement (all of them,
// shuffled, when n is larger).
func sample(rng *rand.Rand, texts []string, n int) []string {
	perm := rng.Perm(len(texts))
	out := make([]string, 0, min(n, len(texts)))
	for _, i := range perm[:min(n, len(texts))] {
		out = append(out, texts[i])
	}
	return out
}

// percentile is the p-th percentile (0..100) of xs by the nearest-rank
// method; NaN for none.
func percentile(xs []float64, p float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	rank := int(math.Ceil(p / 100 * float64(len(s))))
	return s[min(max(rank-1, 0), len(s)-1)]
}

// median of xs; NaN for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// spread formats the median of xs with its range, for repeated
// measurements.
func spread(xs []float64, format string) string {
	if len(xs) == 1 {
		return fmt.Sprintf(format, xs[0])
	}
	return fmt.Sprintf(format+" (min "+format+", max "+format+", n=%d)", median(xs), slices.Min(xs), slices.Max(xs), len(xs))
}

// tokenIDs is text's token ids as the engine takes them.
func tokenIDs(tok tokenizer.Tokenizer, text string) []int64 {
	return tokenizer.Int64s(tok.Encode(text))
}

// parseInts parses a comma-separated list of positive integers.
func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		var n int
		if _, err := fmt.Sscanf(strings.TrimSpace(f), "%d", &n); err != nil || n <= 0 {
			return nil, fmt.Errorf("%q: want positive integers, comma-separated", s)
		}
		out = append(out, n)
	}
	return out, nil
}

// calibrationTexts is how many texts the pipeline benchmark's calibration
// of the classifier's pace takes.
const calibrationTexts = 1000

// pipelineTexts is the pipeline benchmark's pool of distinct texts: the
// benchmark texts, then GoEmotions' training texts, so that all-miss passes
// sized to a fast classifier still get texts of their own.
func pipelineTexts(dataDir string) ([]string, error) {
	texts, err := benchTexts(dataDir, true)
	if err != nil {
		return nil, err
	}
	train, err := datasets.Read(dataDir, datasets.GoEmotionsEkman, "train")
	if err != nil {
		return nil, fmt.Errorf("benchmark texts: %w", err)
	}
	seen := make(map[string]bool, len(texts)+len(train))
	for _, t := range texts {
		seen[t] = true
	}
	raw := make([]string, len(train))
	for i, e := range train {
		raw[i] = e.Text
	}
	return appendNormalised(texts, seen, raw, true), nil
}
