package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/emoflow/emoflow/internal/benchmodel"
	"github.com/emoflow/emoflow/internal/classifier"
	"github.com/emoflow/emoflow/internal/classifyapi"
	"github.com/emoflow/emoflow/internal/tensor"
)

// classifierBenchConfig is the classifier benchmark's flags.
type classifierBenchConfig struct {
	dataDir        string
	rounds         int
	staticSizes    string
	staticTexts    int
	staticRepeats  int
	overloadFactor float64
	warmUp         time.Duration
	saturationFor  time.Duration
	halfFor        time.Duration
	twiceFor       time.Duration
	textsPerReq    int
	liveDeadline   time.Duration
	replayDeadline time.Duration
	seed           uint64
	classifierArgs string
}

func (c *classifierBenchConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&c.dataDir, "data", defaultDataDir(), "shared data folder (GoEmotions and MELD test texts; GoEmotions train texts train the tokenizer)")
	fs.IntVar(&c.rounds, "rounds", 3, "rounds of every measurement; the last line gives medians")
	fs.StringVar(&c.staticSizes, "static-batch-sizes", "8,16,32,64", "batch sizes of the static baseline (the best counts)")
	fs.IntVar(&c.staticTexts, "static-texts", 512, "texts the static baseline scores per batch size and repeat")
	fs.IntVar(&c.staticRepeats, "static-repeats", 2, "runs of every static batch size per round, half before and half after the saturation phase (the median counts)")
	fs.Float64Var(&c.overloadFactor, "saturation-load", 1.3, "offered load of the saturation phase, times the static baseline's throughput")
	fs.DurationVar(&c.warmUp, "warm-up", 5*time.Second, "start of the half- and twice-saturation phases left out of their figures")
	fs.DurationVar(&c.saturationFor, "saturation-duration", 25*time.Second, "arrivals of the saturation phase (all are answered and counted)")
	fs.DurationVar(&c.halfFor, "half-duration", 30*time.Second, "measured part of the phase at half of saturation")
	fs.DurationVar(&c.twiceFor, "twice-duration", 30*time.Second, "measured part of the phase at twice saturation (half live, half replay)")
	fs.IntVar(&c.textsPerReq, "texts-per-request", 1, "texts per classify request (1: ingest's single misses)")
	fs.DurationVar(&c.liveDeadline, "live-deadline", 10*time.Second, "deadline_ms of live requests (ingest's default -classify-timeout)")
	fs.DurationVar(&c.replayDeadline, "replay-deadline", 10*time.Second, "deadline_ms of replay requests")
	fs.Uint64Var(&c.seed, "seed", 1, "seed of the arrivals and text draws")
	fs.StringVar(&c.classifierArgs, "classifier-args", "", "extra classifier flags, space-separated (e.g. \"-max-queue-delay=5ms\"); default: the classifier's defaults")
}

// classifierRound is one round's figures.
type classifierRound struct {
	static        staticResult
	saturation    float64 // texts per second
	minQueueDepth float64
	// padding is real over computed tokens in the saturation phase (label
	// blocks included; paddingBatcher without them), paddingHalf at half
	// saturation.
	padding, paddingBatcher float64
	paddingHalf             float64
	halfP50, halfP99        float64 // ms
	// halfBound is the latency goal at half saturation: the maximum
	// queueing delay plus twice the p99 batch compute time (halfBoundMean:
	// twice the mean).
	halfBound, halfBoundMean float64 // ms
	halfBatchCompute         float64 // ms, mean
	halfBatchP99             float64 // ms
	halfBatchRows            float64
	twice                    twiceFigures
}

type twiceFigures struct {
	computed                             float64 // texts per second, the whole phase
	liveP50, liveP99                     float64
	live, liveOK, liveRejected, liveLate int
	liveOther                            int
	replay, replayOK, replayRejected     int
	replayLate, replayOther              int
}

func runClassifierBench(ctx context.Context, log *slog.Logger, args []string) error {
	var cfg classifierBenchConfig
	fs := flag.NewFlagSet("emobench classifier", flag.ContinueOnError)
	cfg.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	sizes, err := parseInts(cfg.staticSizes)
	if err != nil {
		return fmt.Errorf("-static-batch-sizes: %w", err)
	}
	if cfg.textsPerReq <= 0 || cfg.rounds <= 0 {
		return errors.New("-texts-per-request and -rounds must be positive")
	}

	log.Info("preparing the benchmark model (written once into the cache)", "cache", benchmodel.CacheDir())
	modelDir, err := benchmodel.Ensure(ctx, cfg.dataDir)
	if err != nil {
		return err
	}
	texts, err := benchTexts(cfg.dataDir, false)
	if err != nil {
		return err
	}

	cls := &classifier.Component{}
	clsArgs := append([]string{"-model-dir=" + modelDir}, strings.Fields(cfg.classifierArgs)...)
	log.Info("starting the classifier in this process", "args", strings.Join(clsArgs, " "))
	comp, err := startComponent(ctx, "classifier", cls, clsArgs...)
	if err != nil {
		return err
	}
	defer func() {
		if err := comp.stop(); err != nil {
			log.Error("stopping the classifier", "err", err)
		}
	}()
	eng, err := newStaticEngine(modelDir, cls)
	if err != nil {
		return err
	}
	defer eng.close()

	fmt.Printf("model: %s (random weights), %d texts (GoEmotions + MELD test), %d CPUs, libtorch threads %d\n",
		modelDir, len(texts), runtime.NumCPU(), tensor.Threads())
	fmt.Printf("classifier (in-process, HTTP on %s): max-batch-rows %d, max-batch-tokens %d, max-queue-delay %s, workers %d; %d text(s) per request\n",
		comp.rt.Addr, cls.MaxBatchRows, cls.MaxBatchTokens, cls.MaxQueueDelay, cls.Workers, cfg.textsPerReq)

	b := &classifierBench{cfg: cfg, log: log, comp: comp, cls: cls, eng: eng, sizes: sizes, texts: texts,
		gen: newLoadGenerator("http://"+comp.rt.Addr, texts)}
	var rounds []classifierRound
	for r := 0; r < cfg.rounds; r++ {
		round, err := b.round(ctx, r)
		if err != nil {
			return err
		}
		rounds = append(rounds, round)
		printClassifierRound(r, round)
	}
	printClassifierSummary(cfg, cls, rounds)
	return nil
}

// classifierBench holds what every round uses.
type classifierBench struct {
	cfg   classifierBenchConfig
	log   *slog.Logger
	comp  *component
	cls   *classifier.Component
	eng   *staticEngine
	sizes []int
	texts []string
	gen   *loadGenerator
}

func (b *classifierBench) round(ctx context.Context, r int) (classifierRound, error) {
	var out classifierRound
	seed := b.cfg.seed*1000 + uint64(r)*10
	rng := rand.New(rand.NewPCG(seed, 0))

	// The static baseline runs before and after the saturation phase, so
	// that both sides see the machine's load of the same minutes.
	staticTexts := sample(rng, b.texts, b.cfg.staticTexts)
	b.log.Info("static baseline", "round", r+1, "texts", b.cfg.staticTexts, "batch_sizes", b.sizes)
	st, err := b.eng.throughput(ctx, staticTexts, b.sizes, (b.cfg.staticRepeats+1)/2, nil)
	if err != nil {
		return out, err
	}

	// Saturation: offered load above what the engine can do, so the queue
	// never empties until arrivals stop. Every text offered is answered
	// (the deadline is long), so the texts answered are a random sample of
	// the data sets like the static baseline's; counting only a window
	// would favour the short texts, which length windows batch sooner.
	rate := b.cfg.overloadFactor * st.best / float64(b.cfg.textsPerReq)
	b.log.Info("saturation phase", "round", r+1, "offered_texts_per_s", math.Round(rate*float64(b.cfg.textsPerReq)))
	before, err := b.comp.snapshot()
	if err != nil {
		return out, err
	}
	depths := b.sampleQueueDepth(ctx)
	start, outs := b.gen.run(ctx, b.cfg.saturationFor, seed+1,
		stream{name: "live", priority: classifyapi.PriorityLive, rate: rate, deadline: 10 * time.Minute, texts: b.cfg.textsPerReq})
	// The queue fills during the first second.
	out.minQueueDepth = depths.minBetween(start.Add(time.Second), start.Add(b.cfg.saturationFor))
	after, err := b.comp.snapshot()
	if err != nil {
		return out, err
	}
	if err := ctx.Err(); err != nil {
		return out, err
	}
	sat := count(outs, "live", start, start.Add(b.cfg.saturationFor))
	if sat.ok < sat.requests {
		b.log.Warn("saturation phase: requests failed (the figures are then approximate)",
			"rejected", sat.rejected, "deadline", sat.deadline, "other", sat.other, "errors", sat.errors)
	}
	out.saturation = float64(sat.texts) / lastAnswer(outs).Sub(start).Seconds()
	out.padding, out.paddingBatcher = b.padding(outs, before, after)
	if b.cfg.staticRepeats > 1 {
		b.log.Info("static baseline", "round", r+1, "texts", b.cfg.staticTexts, "batch_sizes", b.sizes)
		if st, err = b.eng.throughput(ctx, staticTexts, b.sizes, b.cfg.staticRepeats/2, st); err != nil {
			return out, err
		}
	}
	out.static = *st

	// Half of saturation: latency.
	rate = 0.5 * out.saturation / float64(b.cfg.textsPerReq)
	b.log.Info("half-saturation phase", "round", r+1, "offered_texts_per_s", math.Round(rate*float64(b.cfg.textsPerReq)))
	if before, err = b.comp.snapshot(); err != nil {
		return out, err
	}
	start, outs = b.gen.run(ctx, b.cfg.warmUp+b.cfg.halfFor, seed+2,
		stream{name: "live", priority: classifyapi.PriorityLive, rate: rate, deadline: b.cfg.liveDeadline, texts: b.cfg.textsPerReq})
	if after, err = b.comp.snapshot(); err != nil {
		return out, err
	}
	if err := ctx.Err(); err != nil {
		return out, err
	}
	half := count(outs, "live", start.Add(b.cfg.warmUp), start.Add(b.cfg.warmUp+b.cfg.halfFor))
	if half.ok < half.requests {
		b.log.Warn("half-saturation phase: requests failed", "failed", half.requests-half.ok, "errors", half.errors)
	}
	out.halfP50, out.halfP99 = percentile(half.latencies, 50), percentile(half.latencies, 99)
	batches := delta(before, after, "emoflow_classifier_batch_compute_seconds_count")
	out.halfBatchCompute = 1000 * delta(before, after, "emoflow_classifier_batch_compute_seconds_sum") / batches
	out.halfBatchRows = delta(before, after, "emoflow_classifier_batch_rows_sum") / batches
	out.halfBatchP99 = 1000 * quantileDelta(before, after, "emoflow_classifier_batch_compute_seconds", 0.99)
	delay := float64(b.cls.MaxQueueDelay) / float64(time.Millisecond)
	out.halfBound, out.halfBoundMean = delay+2*out.halfBatchP99, delay+2*out.halfBatchCompute
	out.paddingHalf, _ = b.padding(outs, before, after)

	// Twice saturation: live traffic at the classifier's capacity and as
	// much replay traffic on top.
	rate = out.saturation / float64(b.cfg.textsPerReq)
	b.log.Info("twice-saturation phase", "round", r+1, "live_texts_per_s", math.Round(out.saturation), "replay_texts_per_s", math.Round(out.saturation))
	if before, err = b.comp.snapshot(); err != nil {
		return out, err
	}
	start, outs = b.gen.run(ctx, b.cfg.warmUp+b.cfg.twiceFor, seed+3,
		stream{name: "live", priority: classifyapi.PriorityLive, rate: rate, deadline: b.cfg.liveDeadline, texts: b.cfg.textsPerReq},
		stream{name: "replay", priority: classifyapi.PriorityReplay, rate: rate, deadline: b.cfg.replayDeadline, texts: b.cfg.textsPerReq})
	if err := ctx.Err(); err != nil {
		return out, err
	}
	if after, err = b.comp.snapshot(); err != nil {
		return out, err
	}
	// How fast the classifier computed meanwhile, answered or not: below
	// the saturation figure, the machine gave it less, or it computed rows
	// whose callers had left.
	out.twice.computed = delta(before, after, "emoflow_classifier_batch_rows_sum") / lastAnswer(outs).Sub(start).Seconds()
	from, to := start.Add(b.cfg.warmUp), start.Add(b.cfg.warmUp+b.cfg.twiceFor)
	live, replay := count(outs, "live", from, to), count(outs, "replay", from, to)
	if live.other > 0 || replay.other > 0 {
		b.log.Warn("twice-saturation phase: unexpected failures", "live", live.errors, "replay", replay.errors)
	}
	out.twice = twiceFigures{
		computed: out.twice.computed,
		liveP50:  percentile(live.latencies, 50), liveP99: percentile(live.latencies, 99),
		live: live.requests, liveOK: live.ok, liveRejected: live.rejected, liveLate: live.deadline, liveOther: live.other,
		replay: replay.requests, replayOK: replay.ok, replayRejected: replay.rejected, replayLate: replay.deadline, replayOther: replay.other,
	}
	return out, nil
}

// padding is the share of the tokens the classifier's batches computed
// between two snapshots that were real, from the texts answered in outs:
// withLabels counts every row's label block on both sides (the forward
// pass's real tokens over rows × padded length); batcher leaves it out, as
// the batcher's RealTokens and PaddedTokens do. Both are exact when every
// text computed was answered.
func (b *classifierBench) padding(outs []outcome, before, after metricSnapshot) (withLabels, batcher float64) {
	texts, realTokens := 0, 0
	for _, o := range outs {
		if o.ok() {
			for _, t := range o.texts {
				realTokens += b.eng.rowTokens(t)
				texts++
			}
		}
	}
	padded := delta(before, after, "emoflow_classifier_batch_tokens_sum")
	rows := delta(before, after, "emoflow_classifier_batch_rows_sum")
	label := float64(b.eng.sc.LabelTokens())
	return (float64(realTokens) + label*float64(texts)) / (padded + label*rows), float64(realTokens) / padded
}

// depthSamples are the live queue's depths, sampled while a phase runs.
type depthSamples struct {
	mu      sync.Mutex
	at      []time.Time
	depth   []float64
	stopped chan struct{}
}

// sampleQueueDepth samples the live queue depth every 100ms until the next
// call of minBetween.
func (b *classifierBench) sampleQueueDepth(ctx context.Context) *depthSamples {
	d := &depthSamples{stopped: make(chan struct{})}
	go func() {
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-d.stopped:
				return
			case now := <-t.C:
				s, err := b.comp.snapshot()
				if err != nil {
					continue
				}
				d.mu.Lock()
				d.at = append(d.at, now)
				d.depth = append(d.depth, s.sum("emoflow_classifier_queue_depth", "priority=live"))
				d.mu.Unlock()
			}
		}
	}()
	return d
}

// minBetween stops the sampling and returns the smallest depth seen in
// [from, to).
func (d *depthSamples) minBetween(from, to time.Time) float64 {
	close(d.stopped)
	d.mu.Lock()
	defer d.mu.Unlock()
	m := math.Inf(1)
	for i, at := range d.at {
		if !at.Before(from) && at.Before(to) {
			m = min(m, d.depth[i])
		}
	}
	return m
}

func printClassifierRound(r int, c classifierRound) {
	var per []string
	sizes := make([]int, 0, len(c.static.perSize))
	for s := range c.static.perSize {
		sizes = append(sizes, s)
	}
	slices.Sort(sizes)
	for _, s := range sizes {
		per = append(per, fmt.Sprintf("%d: %.1f", s, c.static.perSize[s]))
	}
	fmt.Printf("round %d\n", r+1)
	fmt.Printf("  static baseline (texts/s by batch size): %s; best %.1f at %d\n", strings.Join(per, ", "), c.static.best, c.static.bestAt)
	fmt.Printf("  saturation: %.1f texts/s = %.3f of static (live queue never below %.0f); padding efficiency %.3f (%.3f without label blocks)\n",
		c.saturation, c.saturation/c.static.best, c.minQueueDepth, c.padding, c.paddingBatcher)
	fmt.Printf("  half saturation: p50 %.1f ms, p99 %.1f ms; bound %.1f ms = queue delay + 2 × p99 batch compute %.1f ms (with the mean, %.1f ms: %.1f ms); %.1f rows a batch; padding efficiency %.3f\n",
		c.halfP50, c.halfP99, c.halfBound, c.halfBatchP99, c.halfBatchCompute, c.halfBoundMean, c.halfBatchRows, c.paddingHalf)
	t := c.twice
	fmt.Printf("  twice saturation: computed %.1f texts/s; live p50 %.1f ms, p99 %.1f ms; live %d requests: %d ok, %d rejected, %d past deadline, %d other; replay %d: %d ok, %d rejected, %d past deadline, %d other\n",
		t.computed, t.liveP50, t.liveP99, t.live, t.liveOK, t.liveRejected, t.liveLate, t.liveOther, t.replay, t.replayOK, t.replayRejected, t.replayLate, t.replayOther)
}

func printClassifierSummary(cfg classifierBenchConfig, cls *classifier.Component, rounds []classifierRound) {
	col := func(f func(classifierRound) float64) []float64 {
		var xs []float64
		for _, r := range rounds {
			xs = append(xs, f(r))
		}
		return xs
	}
	ratio := col(func(r classifierRound) float64 { return r.saturation / r.static.best })
	padding := col(func(r classifierRound) float64 { return r.padding })
	p99 := col(func(r classifierRound) float64 { return r.halfP99 })
	liveP99 := col(func(r classifierRound) float64 { return r.twice.liveP99 })
	fmt.Printf("summary over %d round(s): median (min, max)\n", len(rounds))
	fmt.Printf("  static best texts/s:        %s\n", spread(col(func(r classifierRound) float64 { return r.static.best }), "%.1f"))
	fmt.Printf("  saturation texts/s:         %s\n", spread(col(func(r classifierRound) float64 { return r.saturation }), "%.1f"))
	fmt.Printf("  saturation ratio:           %s (goal ≥ 0.9)\n", spread(ratio, "%.3f"))
	fmt.Printf("  padding efficiency:         %s at saturation (goal ≥ 0.85); without label blocks %s; at half saturation %s\n", spread(padding, "%.3f"),
		spread(col(func(r classifierRound) float64 { return r.paddingBatcher }), "%.3f"),
		spread(col(func(r classifierRound) float64 { return r.paddingHalf }), "%.3f"))
	fmt.Printf("  half-saturation p50 ms:     %s\n", spread(col(func(r classifierRound) float64 { return r.halfP50 }), "%.1f"))
	fmt.Printf("  half-saturation p99 ms:     %s; goal ≤ %s (%s + 2 × p99 batch compute); with the mean batch compute %s\n", spread(p99, "%.1f"),
		spread(col(func(r classifierRound) float64 { return r.halfBound }), "%.1f"), cls.MaxQueueDelay,
		spread(col(func(r classifierRound) float64 { return r.halfBoundMean }), "%.1f"))
	fmt.Printf("  twice saturation, live p99: %s (deadline %s); live rejected %s, past deadline %s; replay rejected %s, past deadline %s\n",
		spread(liveP99, "%.1f"), cfg.liveDeadline,
		spread(col(func(r classifierRound) float64 { return float64(r.twice.liveRejected) }), "%.0f"),
		spread(col(func(r classifierRound) float64 { return float64(r.twice.liveLate) }), "%.0f"),
		spread(col(func(r classifierRound) float64 { return float64(r.twice.replayRejected) }), "%.0f"),
		spread(col(func(r classifierRound) float64 { return float64(r.twice.replayLate) }), "%.0f"))
	fmt.Printf("saturation_ratio=%.3f padding_efficiency=%.3f p99_ms=%.1f live_p99_ms_at_2x=%.1f\n",
		median(ratio), median(padding), median(p99), median(liveP99))
}
