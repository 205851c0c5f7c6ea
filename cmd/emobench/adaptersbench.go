package main

import (
	"context"
	"flag"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sort"
	"time"

	"github.com/emoflow/emoflow/internal/benchmodel"
	"github.com/emoflow/emoflow/internal/model"
	"github.com/emoflow/emoflow/internal/prompt"
	"github.com/emoflow/emoflow/internal/tensor"
	"github.com/emoflow/emoflow/internal/tokenizer"
)

// runAdaptersBench is `emobench adapters`: it measures what adapters cost
// on the benchmark model (internal/benchmodel), both sides in one run:
//
//   - a batch whose rows use 4 different unmerged LoRA adapters against the
//     same rows with one adapter merged into the weights;
//   - P-tuning v2 with 128 virtual tokens against the bare model.
//
// It prints messages per second (medians of -rounds runs) and, on the last
// line, mixed_lora_vs_merged=<r> ptuning_vs_base=<r>.
func runAdaptersBench(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("emobench adapters", flag.ContinueOnError)
	data := fs.String("data", defaultDataDir(), "shared data folder")
	n := fs.Int("texts", 512, "texts scored per round")
	batch := fs.Int("batch", 32, "rows per batch")
	rounds := fs.Int("rounds", 5, "rounds per configuration (the median is reported)")
	rank := fs.Int("rank", 8, "LoRA rank")
	virtual := fs.Int("virtual-tokens", 128, "P-tuning v2 virtual tokens")
	dtype := fs.String("dtype", "float32", "compute dtype")
	if err := fs.Parse(args); err != nil {
		return err
	}
	return adaptersBench(ctx, *data, *n, *batch, *rounds, *rank, *virtual, *dtype)
}

// adaptersBench runs emobench adapters with its flags' values.
func adaptersBench(ctx context.Context, data string, n, batch, rounds, rank, virtual int, dtypeName string) error {
	dt, err := tensor.ParseDType(dtypeName)
	if err != nil {
		return err
	}
	tensor.SetThreads(runtime.NumCPU())
	dir, err := benchmodel.Ensure(ctx, data)
	if err != nil {
		return err
	}
	m, err := model.Load(dir, model.Options{DType: dt})
	if err != nil {
		return err
	}
	defer m.Close()
	tok, err := tokenizer.Load(dir, tokenizer.Options{})
	if err != nil {
		return err
	}
	texts, err := benchmodel.Texts(data)
	if err != nil {
		return err
	}
	tokens := make([][]int64, 0, n)
	for _, t := range texts[:n] {
		row := tokenIDs(tok, t)
		if len(row) == 0 {
			row = []int64{int64(tok.Encode(".")[0])}
		}
		tokens = append(tokens, row)
	}
	// Length-sorted batches, as the batcher forms them.
	sort.SliceStable(tokens, func(i, j int) bool { return len(tokens[i]) < len(tokens[j]) })
	p, err := prompt.Default().Compile(tok)
	if err != nil {
		return err
	}
	c := m.Config()
	fmt.Printf("model: %d layers, hidden %d, %d heads, %d groups, FFN %d, vocabulary %d; %s; %d threads\n",
		c.Layers, c.Hidden, c.Heads, c.KVGroups, c.FFN, c.Vocab, dt, tensor.Threads())
	fmt.Printf("%d GoEmotions/MELD test texts, batches of %d, LoRA rank %d on query_key_value and dense, P-tuning %d virtual tokens\n",
		n, batch, rank, virtual)

	rng := rand.New(rand.NewPCG(1, 1))
	var loras []*model.LoRA
	for i := 0; i < 4; i++ {
		l, err := m.NewLoRA(randomLoRAParts(m, rng, rank))
		if err != nil {
			return err
		}
		defer l.Free()
		loras = append(loras, l)
	}
	merged, err := m.Merged(loras[0])
	if err != nil {
		return err
	}
	defer merged.Close()
	mixedScorers := make([]*model.Scorer, 4)
	for i, l := range loras {
		if mixedScorers[i], err = model.NewScorer(m, p, model.ScorerOptions{LoRA: l}); err != nil {
			return err
		}
		defer mixedScorers[i].Close()
	}
	mergedScorer, err := model.NewScorer(merged, p, model.ScorerOptions{})
	if err != nil {
		return err
	}
	defer mergedScorer.Close()
	baseScorer, err := model.NewScorer(m, p, model.ScorerOptions{})
	if err != nil {
		return err
	}
	defer baseScorer.Close()
	emb := make([]float32, virtual*2*c.Layers*c.KVGroups*c.HeadDim)
	for i := range emb {
		emb[i] = float32(rng.NormFloat64() * 0.5)
	}
	prefix, err := m.PrefixFromEmbeddings(emb, virtual)
	if err != nil {
		return err
	}
	defer prefix.Free()
	ptScorer, err := model.NewScorer(m, p, model.ScorerOptions{AdapterPast: prefix})
	if err != nil {
		return err
	}
	defer ptScorer.Close()

	rowsOf := func(pick func(i int) *model.Scorer) []model.Row {
		rows := make([]model.Row, len(tokens))
		for i, t := range tokens {
			rows[i] = model.Row{Scorer: pick(i), Text: t}
		}
		return rows
	}
	configs := []struct {
		name string
		rows []model.Row
	}{
		{"mixed: 4 unmerged LoRA adapters", rowsOf(func(i int) *model.Scorer { return mixedScorers[i%4] })},
		{"merged: 1 LoRA merged into the weights", rowsOf(func(int) *model.Scorer { return mergedScorer })},
		{"P-tuning v2, " + fmt.Sprint(virtual) + " virtual tokens", rowsOf(func(int) *model.Scorer { return ptScorer })},
		{"base model, no adapter", rowsOf(func(int) *model.Scorer { return baseScorer })},
	}
	rates := make([][]float64, len(configs))
	// Interleave the configurations round by round so that machine noise
	// hits them alike.
	for r := 0; r < rounds+1; r++ {
		for ci, cfg := range configs {
			if err := ctx.Err(); err != nil {
				return err
			}
			start := time.Now()
			for i := 0; i < len(cfg.rows); i += batch {
				if _, err := model.ScoreRows(cfg.rows[i:min(i+batch, len(cfg.rows))]); err != nil {
					return fmt.Errorf("%s: %w", cfg.name, err)
				}
			}
			if r > 0 { // the first round warms up
				rates[ci] = append(rates[ci], float64(len(cfg.rows))/time.Since(start).Seconds())
			}
		}
	}
	med := make([]float64, len(configs))
	for ci, cfg := range configs {
		sort.Float64s(rates[ci])
		med[ci] = rates[ci][len(rates[ci])/2]
		fmt.Printf("%-42s median %7.1f msgs/s (min %.1f, max %.1f)\n", cfg.name, med[ci], rates[ci][0], rates[ci][len(rates[ci])-1])
	}
	fmt.Printf("mixed_lora_vs_merged=%.3f ptuning_vs_base=%.3f\n", med[0]/med[1], med[2]/med[3])
	return nil
}

// randomLoRAParts draws a random rank-r update of query_key_value and dense
// on every layer.
func randomLoRAParts(m *model.Model, rng *rand.Rand, r int) []model.LoRAPart {
	var out []model.LoRAPart
	c := m.Config()
	for layer := 0; layer < c.Layers; layer++ {
		for _, target := range []string{"query_key_value", "dense"} {
			_, _, rows, _ := m.TargetModule(target)
			in := c.Hidden
			a := make([]float32, r*in)
			b := make([]float32, rows*r)
			for i := range a {
				a[i] = float32(rng.NormFloat64() * 0.02)
			}
			for i := range b {
				b[i] = float32(rng.NormFloat64() * 0.02)
			}
			out = append(out, model.LoRAPart{Layer: layer, Target: target, Rank: r, A: a, B: b, Scale: 2})
		}
	}
	return out
}
