package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/emoflow/emoflow/internal/adapters"
	"github.com/emoflow/emoflow/internal/datasets"
	"github.com/emoflow/emoflow/internal/evaluate"
	"github.com/emoflow/emoflow/internal/model"
	"github.com/emoflow/emoflow/internal/randmodel"
	"github.com/emoflow/emoflow/internal/service"
	"github.com/emoflow/emoflow/internal/tensor"
	"github.com/emoflow/emoflow/internal/tokenizer"
	"github.com/emoflow/emoflow/internal/train"
)

// The training benchmark (issue 11):
//
//	(a) throughput: the same LoRA training steps (the same batches, model,
//	    dtype and threads) by emoctl train's loop and by torch + PEFT
//	    (tools/reference/bench_train_hf.py), rounds interleaved;
//	(b) quality: on the test splits of GoEmotions-ekman, CARER and MELD,
//	    the demo base with the paper's prompt, with a LoRA and with a
//	    P-tuning v2 adapter trained on the set's train split, and a TF-IDF +
//	    logistic regression baseline trained on the same split.
type trainBenchConfig struct {
	dataDir, python, cache string
	rounds, steps, batch   int
	threads                int
	sets                   string
	quality                bool
	adapterSteps           int
}

func runTrainBench(ctx context.Context, log *slog.Logger, args []string) error {
	var c trainBenchConfig
	fs := flag.NewFlagSet("train", flag.ContinueOnError)
	fs.StringVar(&c.dataDir, "data", defaultDataDir(), "shared data folder")
	fs.StringVar(&c.python, "python", pythonPath(), "Python with torch, transformers, PEFT and scikit-learn (EMOFLOW_PYTHON)")
	fs.StringVar(&c.cache, "cache", service.CacheDir(), "download and build cache (EMOFLOW_CACHE)")
	fs.IntVar(&c.rounds, "rounds", 3, "throughput rounds (each side once per round, interleaved)")
	fs.IntVar(&c.steps, "steps", 12, "training steps timed per round and side (after 2 warm-up steps)")
	fs.IntVar(&c.batch, "batch", 32, "examples per training step")
	fs.IntVar(&c.threads, "threads", 0, "threads of both sides (0: all cores)")
	fs.StringVar(&c.sets, "sets", "goemotions-ekman,carer,meld", "data sets of the quality part, comma-separated")
	fs.BoolVar(&c.quality, "quality", true, "run the quality part (trains 2 adapters per set)")
	fs.IntVar(&c.adapterSteps, "adapter-steps", 0, "updates of each quality adapter (0: the demo recipe's)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if c.threads <= 0 {
		c.threads = runtime.NumCPU()
	}
	tensor.SetThreads(c.threads)
	recipe, demoDir, tok, err := demoModel(ctx, log, c.cache, c.dataDir)
	if err != nil {
		return err
	}
	baseDir := filepath.Join(demoDir, train.DemoBase)
	through, err := c.throughput(ctx, log, baseDir, tok)
	if err != nil {
		return err
	}
	var qual []qualityRow
	if c.quality {
		if qual, err = c.qualityRows(ctx, log, baseDir, tok, recipe); err != nil {
			return err
		}
	}
	printTrainSummary(c, through, qual)
	return nil
}

// demoModel builds the demo model on first use (cached under cache) and
// returns its recipe, its folder and its base's tokenizer.
func demoModel(ctx context.Context, log *slog.Logger, cache, dataDir string) (train.DemoRecipe, string, tokenizer.Tokenizer, error) {
	recipe := train.Demo()
	dir := filepath.Join(cache, "demo-model", recipe.Key(dataDir))
	log.Info("demo model (built on first use)", "dir", dir)
	if _, err := train.BuildDemo(ctx, recipe, dir, dataDir, os.Stderr, log); err != nil {
		return recipe, dir, nil, err
	}
	tok, err := tokenizer.Load(filepath.Join(dir, train.DemoBase), tokenizer.Options{})
	return recipe, dir, tok, err
}

// throughputResult is one dtype's tokens/s of both sides, per round.
type throughputResult struct {
	dtype      string
	ours, peft []float64
}

func (t throughputResult) ratio() float64 { return median(t.ours) / median(t.peft) }

// throughput times LoRA steps on a transformers-layout copy of the demo
// architecture (random weights: speed does not depend on them), which
// both sides load.
func (c trainBenchConfig) throughput(ctx context.Context, log *slog.Logger, demoBase string, tok tokenizer.Tokenizer) ([]throughputResult, error) {
	r := train.Demo()
	hfDir := filepath.Join(c.cache, "bench", fmt.Sprintf("train-hf-%d-%d-%d-%d", r.Layers, r.Hidden, r.FFN, tok.VocabSize()))
	if _, err := os.Stat(filepath.Join(hfDir, "model.safetensors")); err != nil {
		spec := randmodel.Spec{Arch: "chatglm2", HFNames: true, Layers: r.Layers, Hidden: r.Hidden, Heads: r.Heads, Groups: r.Groups,
			FFN: r.FFN, Vocab: (tok.VocabSize() + 63) / 64 * 64, Seed: 3, EOSIDs: tok.StopIDs(), Name: "bench-train-hf"}
		if err := randmodel.Write(hfDir, spec); err != nil {
			return nil, err
		}
	}
	tmpl := train.EkmanTemplate()
	p, err := tmpl.Compile(tok)
	if err != nil {
		return nil, err
	}
	ex, _, err := train.Load(train.Source{Set: "goemotions-ekman", Split: "train", DataDir: c.dataDir}, tmpl.Labels)
	if err != nil {
		return nil, err
	}
	rng := rand.New(rand.NewPCG(5, 5))
	index := map[string]int{}
	for i, l := range tmpl.Labels {
		index[l] = i
	}
	var steps [][]model.LossRow
	for s := 0; s < c.steps+2; s++ {
		var rows []model.LossRow
		for i := 0; i < c.batch; i++ {
			e := ex[rng.IntN(len(ex))]
			text := tokenIDs(tok, e.Text)
			rows = append(rows, model.LossRow{Text: text[:min(len(text), 64)], Label: index[e.Label]})
		}
		steps = append(steps, rows)
	}
	lora := r.LoRA.LoRA
	lora.Targets = []string{"q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"}
	lora.Dropout = 0
	stepsFile := filepath.Join(hfDir, "steps-%s.json")
	var out []throughputResult
	for _, dtype := range []string{"bfloat16", "float32"} {
		file := fmt.Sprintf(stepsFile, dtype)
		if err := writePEFTSteps(file, dtype, c.threads, lora, p, steps); err != nil {
			return nil, err
		}
		dt, _ := tensor.ParseDType(dtype)
		base, err := model.Load(hfDir, model.Options{DType: dt})
		if err != nil {
			return nil, err
		}
		res := throughputResult{dtype: dtype}
		for round := 0; round < c.rounds; round++ {
			ours, err := oursThroughput(base, p, lora, steps)
			if err != nil {
				base.Close()
				return nil, err
			}
			theirs, err := c.peftThroughput(ctx, hfDir, file)
			if err != nil {
				base.Close()
				return nil, err
			}
			res.ours, res.peft = append(res.ours, ours), append(res.peft, theirs)
			log.Info("training throughput", "dtype", dtype, "round", round+1, "emoflow_tokens_per_s", math.Round(ours), "peft_tokens_per_s", math.Round(theirs))
		}
		base.Close()
		out = append(out, res)
	}
	return out, nil
}

// seqTokens is the length of a row's full sequence, as PEFT computes it.
func seqTokens(p model.Prompt, r model.LossRow) int {
	n := len(p.Prefix) + len(r.Text) + len(p.Suffix) + len(p.Labels[r.Label])
	if p.Stop >= 0 {
		n++
	}
	return n
}

func oursThroughput(base *model.Model, p model.Prompt, lora train.LoRAConfig, steps [][]model.LossRow) (float64, error) {
	st, err := train.NewStepper(train.Config{Method: adapters.MethodLoRA, LoRA: lora, LR: 2e-4, ClipNorm: 1, Seed: 1, MaxTextTokens: 64}, base, p)
	if err != nil {
		return 0, err
	}
	defer st.Close()
	var started time.Time
	tokens := 0
	for i, rows := range steps {
		if i == 2 {
			started = time.Now()
		}
		if _, _, err := st.Update(rows, 2e-4); err != nil {
			return 0, err
		}
		if i >= 2 {
			for _, r := range rows {
				tokens += seqTokens(p, r)
			}
		}
	}
	return float64(tokens) / time.Since(started).Seconds(), nil
}

func writePEFTSteps(path, dtype string, threads int, lora train.LoRAConfig, p model.Prompt, steps [][]model.LossRow) error {
	type row struct {
		IDs   []int64 `json:"ids"`
		Start int     `json:"start"`
	}
	type step struct {
		Rows []row `json:"rows"`
	}
	var ss []step
	for _, rows := range steps {
		var st step
		for _, r := range rows {
			ids := append(append(append(append([]int64{}, p.Prefix...), r.Text...), p.Suffix...), p.Labels[r.Label]...)
			start := len(p.Prefix) + len(r.Text) + len(p.Suffix)
			if p.Stop >= 0 {
				ids = append(ids, p.Stop)
			}
			st.Rows = append(st.Rows, row{ids, start})
		}
		ss = append(ss, st)
	}
	doc := map[string]any{"method": "lora", "dtype": dtype, "threads": threads, "warmup_steps": 2,
		"lora":      map[string]any{"r": lora.Rank, "lora_alpha": lora.Alpha, "target_modules": lora.Targets, "use_rslora": lora.RSLoRA, "lora_dropout": 0.0},
		"optimizer": map[string]any{"lr": 2e-4, "weight_decay": 0.0, "clip_norm": 1.0}, "steps": ss}
	raw, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	return os.WriteFile(path, raw, 0o644)
}

func (c trainBenchConfig) peftThroughput(ctx context.Context, hfDir, stepsFile string) (float64, error) {
	out := stepsFile + ".out.json"
	script := filepath.Join("tools", "reference", "bench_train_hf.py")
	cmd := exec.CommandContext(ctx, c.python, script, hfDir, stepsFile, out)
	cmd.Env = append(os.Environ(), fmt.Sprintf("OMP_NUM_THREADS=%d", c.threads))
	if msg, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("bench_train_hf.py: %v\n%s", err, msg)
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		return 0, err
	}
	var res struct {
		TokensPerS float64 `json:"tokens_per_s"`
	}
	if err := json.Unmarshal(raw, &res); err != nil {
		return 0, err
	}
	return res.TokensPerS, nil
}

// qualityRow is one data set's test figures.
type qualityRow struct {
	set                       string
	examples                  int
	base, lora, ptune, tfidf  evaluate.Scores
	loraSeconds, ptuneSeconds float64
}

func (c trainBenchConfig) qualityRows(ctx context.Context, log *slog.Logger, baseDir string, tok tokenizer.Tokenizer, recipe train.DemoRecipe) ([]qualityRow, error) {
	base, err := model.Load(baseDir, model.Options{DType: tensor.BFloat16})
	if err != nil {
		return nil, err
	}
	defer base.Close()
	var rows []qualityRow
	work, err := os.MkdirTemp("", "emobench-train-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	for _, set := range splitComma(c.sets) {
		tmpl := train.SetTemplate(datasets.Set(set))
		load := func(split string) ([]train.Example, error) {
			ex, _, err := train.Load(train.Source{Set: set, Split: split, DataDir: c.dataDir}, tmpl.Labels)
			return ex, err
		}
		trainEx, err := load("train")
		if err != nil {
			return nil, err
		}
		devEx, err := load("dev")
		if err != nil {
			return nil, err
		}
		testEx, err := load("test")
		if err != nil {
			return nil, err
		}
		row := qualityRow{set: set, examples: len(testEx)}
		ids := make([][]int64, len(testEx))
		for i, e := range testEx {
			ids[i] = tokenIDs(tok, e.Text)
		}
		bare, err := adapters.Bare(base, tok, tmpl, adapters.Options{})
		if err != nil {
			return nil, err
		}
		row.base, _, err = train.Evaluate(bare.Scorer, tmpl.Labels, testEx, ids)
		bare.Close()
		if err != nil {
			return nil, err
		}
		for _, cfg := range []train.Config{recipe.LoRA, recipe.PTuning} {
			cfg.Template, cfg.ID = tmpl, set+"-"+cfg.Method
			cfg.Out, cfg.Overwrite = filepath.Join(work, cfg.ID), true
			if c.adapterSteps > 0 {
				cfg.MaxSteps = c.adapterSteps
			}
			res, err := train.Run(ctx, cfg, base, tok, trainEx, devEx)
			if err != nil {
				return nil, err
			}
			a, err := adapters.Load(res.Dir, base, tok, adapters.Options{})
			if err != nil {
				return nil, err
			}
			s, _, err := train.Evaluate(a.Scorer, tmpl.Labels, testEx, ids)
			a.Close()
			if err != nil {
				return nil, err
			}
			if cfg.Method == adapters.MethodLoRA {
				row.lora, row.loraSeconds = s, res.Report.Seconds
			} else {
				row.ptune, row.ptuneSeconds = s, res.Report.Seconds
			}
			log.Info("adapter", "set", set, "method", cfg.Method, "test_macro_f1", s.MacroF1, "train_seconds", math.Round(res.Report.Seconds))
		}
		if row.tfidf, err = c.tfidf(ctx, work, trainEx, testEx); err != nil {
			return nil, err
		}
		rows = append(rows, row)
	}
	return rows, nil
}

// tfidf trains and scores the specialised baseline on the same split.
func (c trainBenchConfig) tfidf(ctx context.Context, work string, trainEx, testEx []train.Example) (evaluate.Scores, error) {
	write := func(name string, ex []train.Example) (string, error) {
		var b strings.Builder
		for _, e := range ex {
			fmt.Fprintf(&b, "%s\t%s\n", e.Label, strings.NewReplacer("\t", " ", "\n", " ").Replace(e.Text))
		}
		path := filepath.Join(work, name)
		return path, os.WriteFile(path, []byte(b.String()), 0o644)
	}
	trainPath, err := write("train.tsv", trainEx)
	if err != nil {
		return evaluate.Scores{}, err
	}
	testPath, err := write("test.tsv", testEx)
	if err != nil {
		return evaluate.Scores{}, err
	}
	out := filepath.Join(work, "tfidf.json")
	cmd := exec.CommandContext(ctx, c.python, filepath.Join("tools", "reference", "baseline_tfidf.py"), trainPath, testPath, out)
	if msg, err := cmd.CombinedOutput(); err != nil {
		return evaluate.Scores{}, fmt.Errorf("baseline_tfidf.py: %v\n%s", err, msg)
	}
	raw, err := os.ReadFile(out)
	if err != nil {
		return evaluate.Scores{}, err
	}
	var res struct {
		Predictions []string `json:"predictions"`
	}
	if err := json.Unmarshal(raw, &res); err != nil || len(res.Predictions) != len(testEx) {
		return evaluate.Scores{}, fmt.Errorf("baseline_tfidf.py: %d predictions for %d texts (%v)", len(res.Predictions), len(testEx), err)
	}
	conf := evaluate.Confusion{}
	for i, e := range testEx {
		conf[evaluate.Outcome{True: e.Label, Predicted: res.Predictions[i]}]++
	}
	return evaluate.Score(conf)
}

func printTrainSummary(c trainBenchConfig, through []throughputResult, qual []qualityRow) {
	fmt.Printf("\ntraining throughput, LoRA r=8 on every projection, %d×%d-example steps, %d threads (tokens/s, median of %d rounds)\n", c.steps, c.batch, c.threads, c.rounds)
	fmt.Printf("%-9s %12s %12s %7s\n", "dtype", "emoflow", "torch+PEFT", "ratio")
	ratio := math.Inf(1)
	for _, t := range through {
		fmt.Printf("%-9s %12.0f %12.0f %7.2f\n", t.dtype, median(t.ours), median(t.peft), t.ratio())
		ratio = math.Min(ratio, t.ratio())
	}
	var lora, ptune, tfidf []float64
	if len(qual) > 0 {
		fmt.Printf("\ntest splits: base = the demo base with the paper's prompt (multi-task pretrained here, no adapter)\n")
		fmt.Printf("%-17s %6s  %-23s %-23s %-23s %-23s\n", "set", "texts", "base acc/mF1/wF1", "P-tuning v2", "LoRA", "TF-IDF+LR baseline")
		f := func(s evaluate.Scores) string {
			return fmt.Sprintf("%.3f/%.3f/%.3f", s.Accuracy, s.MacroF1, s.WeightedF1)
		}
		for _, q := range qual {
			fmt.Printf("%-17s %6d  %-23s %-23s %-23s %-23s\n", q.set, q.examples, f(q.base), f(q.ptune), f(q.lora), f(q.tfidf))
			lora, ptune, tfidf = append(lora, q.lora.MacroF1), append(ptune, q.ptune.MacroF1), append(tfidf, q.tfidf.MacroF1)
		}
		fmt.Println("(macro-F1 on the last line: the mean over the sets)")
	}
	fmt.Printf("train_vs_peft=%.2f lora_macro_f1=%.3f ptuning_macro_f1=%.3f baseline_macro_f1=%.3f\n", ratio, mean(lora), mean(ptune), mean(tfidf))
}

func mean(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	sum := 0.0
	for _, x := range xs {
		sum += x
	}
	return sum / float64(len(xs))
}

func splitComma(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}
