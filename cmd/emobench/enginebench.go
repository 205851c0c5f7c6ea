package main

import (
	"context"
	"flag"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/emoflow/emoflow/internal/benchmodel"
	"github.com/emoflow/emoflow/internal/model"
	"github.com/emoflow/emoflow/internal/tensor"
	"github.com/emoflow/emoflow/internal/tokenizer"
)

// engineOptions are emobench engine's command line.
type engineOptions struct {
	data, python, script  string
	attention, cpuProfile string
	dtypes                []tensor.DType
	batches               []int
	strategies            []string
	messages, repeats     int
	threads, lanes        int
	withHF                bool
	withCCPP              bool     // chatglm.cpp as a third side
	ccppDir, ccppScript   string   // its install/convert scripts, its peer process
	ccppTypes             []string // its weight types
}

func parseEngineOptions(args []string) (engineOptions, error) {
	var o engineOptions
	var err error
	fs := flag.NewFlagSet("emobench engine", flag.ContinueOnError)
	fs.StringVar(&o.data, "data", defaultDataDir(), "shared data folder (GoEmotions)")
	fs.StringVar(&o.python, "python", pythonPath(), "Python with torch and transformers (EMOFLOW_PYTHON)")
	fs.StringVar(&o.script, "hf-script", filepath.Join("tools", "reference", "bench_hf.py"), "the transformers side")
	fs.StringVar(&o.attention, "hf-attention", "eager", "transformers attention implementation (transformers 4.46 allows sdpa only from torch 2.1.1 on)")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of this process (the engine side) to this file")
	dtypes := fs.String("dtypes", "float32,bfloat16", "compute dtypes, comma-separated")
	batches := fs.String("batches", "8,16,32,64", "static batch sizes (messages), comma-separated")
	strategies := fs.String("hf-strategies", "kv,kv-shared", "transformers scoring strategies (see bench_hf.py: kv, kv-shared, full; full is several times slower), comma-separated")
	fs.IntVar(&o.messages, "messages", 256, "GoEmotions test messages to score (0: all)")
	fs.IntVar(&o.repeats, "repeats", 3, "rounds: passes over the messages per configuration (medians are reported)")
	fs.IntVar(&o.threads, "threads", runtime.NumCPU(), "intra-op threads of every side (chatglm.cpp picks its own; the report says how many)")
	fs.IntVar(&o.lanes, "lanes", 0, "the engine's lanes: a batch's rows split into this many groups computed at once on their share of -threads (0: one per thread; 1: every operation split across the threads)")
	fs.BoolVar(&o.withHF, "hf", true, "measure transformers too")
	fs.BoolVar(&o.withCCPP, "chatglm-cpp", false, "measure chatglm.cpp 0.4.2 too (built into -python's environment on first use, several minutes)")
	fs.StringVar(&o.ccppDir, "chatglm-cpp-dir", filepath.Join("tools", "reference", "chatglm_cpp"), "chatglm.cpp's install script, scoring module and model converter")
	fs.StringVar(&o.ccppScript, "chatglm-cpp-script", filepath.Join("tools", "reference", "bench_chatglm_cpp.py"), "the chatglm.cpp side")
	ccppTypes := fs.String("chatglm-cpp-types", strings.Join(chatglmCppTypes, ","), "chatglm.cpp weight types, comma-separated")
	if err = fs.Parse(args); err != nil {
		return o, err
	}
	for _, s := range strings.Split(*dtypes, ",") {
		dt, err := tensor.ParseDType(s)
		if err != nil || (dt != tensor.Float32 && dt != tensor.BFloat16) {
			return o, fmt.Errorf("-dtypes: %q is not float32 or bfloat16", s)
		}
		o.dtypes = append(o.dtypes, dt)
	}
	for _, s := range strings.Split(*batches, ",") {
		n, err := strconv.Atoi(s)
		if err != nil || n <= 0 {
			return o, fmt.Errorf("-batches: %q is not a positive number", s)
		}
		o.batches = append(o.batches, n)
	}
	for _, s := range strings.Split(*strategies, ",") {
		if s != "kv" && s != "kv-shared" && s != "full" {
			return o, fmt.Errorf("-hf-strategies: %q is not kv, kv-shared or full", s)
		}
		o.strategies = append(o.strategies, s)
	}
	if o.ccppTypes, err = parseChatGLMCppTypes(*ccppTypes); err != nil {
		return o, err
	}
	if o.repeats <= 0 || o.threads <= 0 || o.lanes < 0 {
		return o, fmt.Errorf("-repeats and -threads must be positive, -lanes not negative")
	}
	if o.lanes == 0 {
		o.lanes = o.threads
	}
	return o, nil
}

// engineConfig names one measured configuration.
type engineConfig struct {
	side       string // "engine", "transformers" or "chatglm.cpp"
	dtype      tensor.DType
	batch      int
	strategy   string // transformers only
	weightType string // chatglm.cpp only (it has neither dtype nor batches)
}

func (c engineConfig) String() string {
	if c.side == ccppSideName {
		return fmt.Sprintf("%-12s %-8s unbatched", c.side, c.weightType)
	}
	s := fmt.Sprintf("%-12s %-8s batch %3d", c.side, c.dtype, c.batch)
	if c.strategy != "" {
		s += " " + c.strategy
	}
	return s
}

// runEngineBench is `emobench engine`: it measures how many chat messages
// per second the engine labels with the seven Ekman emotions
// (model.Scorer.Score in static batches of messages sorted by length) and
// how many Hugging Face transformers labels, in PyTorch eager mode with the
// same weights, dtype, thread count, prompt and exact label probabilities
// (tools/reference/bench_hf.py, driven from here so that the two sides'
// runs interleave). It prints the medians and, on its last line,
// engine_vs_hf_eager=<ratio>. "./task bench:engine" runs it.
//
// The model is internal/benchmodel's: ChatGLM3-6B's architecture at a small
// size (4 layers, hidden 512, 8 heads in 2 key/value groups, FFN 1376, the
// full 65,024-token vocabulary; 77.7 million parameters, 66.6 million of
// them in the embeddings and the output layer) with random weights and a
// SentencePiece tokenizer trained on GoEmotions. The engine loads it as
// written (THUDM's tensor names); transformers loads a copy of the same
// weights in its GlmForCausalLM layout. The messages are GoEmotions test
// texts inside the default prompt template (internal/prompt).
//
// With -chatglm-cpp, chatglm.cpp 0.4.2 is a third side
// (tools/reference/bench_chatglm_cpp.py, in each of its weight types, one
// message at a time with exact label probabilities), and
// engine_vs_chatglm_cpp=<ratio> comes just before the last line.
func runEngineBench(ctx context.Context, args []string) error {
	o, err := parseEngineOptions(args)
	if err != nil {
		return err
	}
	tensor.SetThreads(o.threads)
	modelDir, err := benchmodel.Ensure(ctx, o.data)
	if err != nil {
		return err
	}
	hfDir, err := hfCopy(modelDir)
	if err != nil {
		return err
	}
	tok, err := tokenizer.Load(modelDir, tokenizer.Options{})
	if err != nil {
		return err
	}
	w, p, err := buildEngineWorkload(o.data, tok, o.messages)
	if err != nil {
		return err
	}
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	b := &engineBench{o: o, w: w, scorers: map[tensor.DType]*model.Scorer{},
		passes: map[engineConfig][]enginePass{}, agreement: map[tensor.DType]string{},
		ccppAgreement: map[string]string{}}
	defer b.close()
	if err := b.loadEngine(modelDir, p); err != nil {
		return err
	}
	describeEngineBench(w, p, tok, b.labelBlock, o)
	if o.withHF || o.withCCPP {
		if err := b.writeWorkload(); err != nil {
			return err
		}
	}
	if o.withHF {
		if b.hf, err = startHF(o.python, o.script, hfDir, b.workloadPath, o.attention, o.threads); err != nil {
			return err
		}
	}
	if o.withCCPP {
		ggmlDir, err := ensureChatGLMCpp(ctx, o.python, o.ccppDir, modelDir, hfDir, o.ccppTypes)
		if err != nil {
			return err
		}
		if b.ccpp, err = startChatGLMCpp(o.python, o.ccppScript, ggmlDir, b.workloadPath, o.threads); err != nil {
			return err
		}
	}
	if err := b.measure(ctx); err != nil {
		return err
	}
	b.hfRatio = printEngineReport(o, w, b.labelBlock, b.padded, b.passes, b.agreement)
	if b.engineF32 != nil && b.engineBF16 != nil {
		// bfloat16's precision, against the engine's own float32.
		a, err := compareLogProbs(tensor.BFloat16, b.engineBF16, b.engineF32)
		if err != nil {
			return err
		}
		fmt.Printf("engine bfloat16 against the engine's float32: %s\n", a)
	}
	if o.withCCPP {
		printChatGLMCppReport(o, b)
	}
	if o.withHF {
		printEngineVsHF(b.hfRatio)
	}
	return nil
}

// engineBench is one run of emobench engine: the engine's scorers, the
// transformers process and the figures so far.
type engineBench struct {
	o          engineOptions
	w          *engineWorkload
	scorers    map[tensor.DType]*model.Scorer
	labelBlock int // the engine's label block, in tokens
	// padded is the engine model's PaddedTokens (the same lanes in every
	// dtype), for the report's work per message.
	padded  func(rowTokens []int) int
	closers []func()
	hf      *hfSide
	ccpp    *ccppSide

	workloadPath string

	passes        map[engineConfig][]enginePass // in round order
	agreement     map[tensor.DType]string
	ccppAgreement map[string]string // per chatglm.cpp weight type
	engineF32     [][]float64       // the engine's float32 log-probabilities (first pass)
	engineBF16    [][]float64       // and its bfloat16 ones
	hfRatio       float64           // engine_vs_hf_eager
}

// loadEngine loads the model in every dtype and warms each scorer up, so
// that libtorch's lazy initialisation stays out of the timing.
func (b *engineBench) loadEngine(modelDir string, p model.Prompt) error {
	for _, dt := range b.o.dtypes {
		m, err := model.Load(modelDir, model.Options{DType: dt, Threads: b.o.threads, Lanes: b.o.lanes})
		if err != nil {
			return err
		}
		b.closers = append(b.closers, m.Close)
		sc, err := model.NewScorer(m, p, model.ScorerOptions{})
		if err != nil {
			return err
		}
		b.closers = append(b.closers, sc.Close)
		b.labelBlock = sc.LabelTokens()
		b.padded = m.PaddedTokens
		if _, err := sc.Score(b.w.batches(slices.Max(b.o.batches))[0]); err != nil {
			return err
		}
		b.scorers[dt] = sc
	}
	return nil
}

// writeWorkload writes the workload file the peer processes read.
func (b *engineBench) writeWorkload() error {
	f, err := os.CreateTemp("", "emobench-engine-workload-*.json")
	if err != nil {
		return fmt.Errorf("workload: %w", err)
	}
	f.Close()
	b.closers = append(b.closers, func() { os.Remove(f.Name()) })
	b.workloadPath = f.Name()
	return b.w.write(f.Name())
}

// close ends the peer processes and frees the engine, last opened first.
func (b *engineBench) close() {
	for _, p := range []*peerProcess{b.hfPeer(), b.ccppPeer()} {
		if p == nil {
			continue
		}
		if err := p.close(); err != nil {
			fmt.Fprintln(os.Stderr, "emobench engine:", err)
		}
	}
	for i := len(b.closers) - 1; i >= 0; i-- {
		b.closers[i]()
	}
}

func (b *engineBench) hfPeer() *peerProcess {
	if b.hf == nil {
		return nil
	}
	return b.hf.peerProcess
}

func (b *engineBench) ccppPeer() *peerProcess {
	if b.ccpp == nil {
		return nil
	}
	return b.ccpp.peerProcess
}

// measure runs -repeats rounds of every configuration. Each engine pass is
// followed by the transformers passes of the same dtype and batch size, so
// that both sides meet about the same load of the machine; each round ends
// with chatglm.cpp's passes, one per weight type.
func (b *engineBench) measure(ctx context.Context) error {
	n := float64(len(b.w.Texts))
	for rep := 0; rep < b.o.repeats; rep++ {
		for _, dt := range b.o.dtypes {
			for bi, bs := range b.o.batches {
				if err := ctx.Err(); err != nil {
					return err
				}
				elapsed, cpu, engineLP, err := scoreEngineWorkload(b.scorers[dt], b.w, bs)
				if err != nil {
					return err
				}
				b.record(rep, engineConfig{side: "engine", dtype: dt, batch: bs},
					enginePass{rate: n / elapsed.Seconds(), cpuMS: 1000 * cpu.Seconds() / n})
				if rep == 0 && bi == 0 && dt == tensor.Float32 {
					b.engineF32 = engineLP
				}
				if rep == 0 && bi == 0 && dt == tensor.BFloat16 {
					b.engineBF16 = engineLP
				}
				if b.hf == nil {
					continue
				}
				for _, st := range b.o.strategies {
					// The first pass of each dtype also checks that both sides
					// compute the same probabilities.
					check := rep == 0 && bi == 0 && st == b.o.strategies[0]
					a, err := b.hf.run(hfRequest{DType: dt.String(), Batch: bs, Strategy: st, LogProbs: check})
					if err != nil {
						return err
					}
					b.record(rep, engineConfig{side: "transformers", dtype: dt, batch: bs, strategy: st},
						enginePass{rate: float64(a.Messages) / a.Seconds, cpuMS: 1000 * a.CPUSeconds / float64(a.Messages)})
					if check {
						if b.agreement[dt], err = compareLogProbs(dt, engineLP, a.LogProbs); err != nil {
							return err
						}
					}
				}
			}
		}
		if err := b.measureChatGLMCpp(ctx, rep); err != nil {
			return err
		}
	}
	return nil
}

// measureChatGLMCpp runs one round of chatglm.cpp's passes. The first
// round also checks its label log-probabilities against the engine's
// float32 ones, when the engine ran in float32.
func (b *engineBench) measureChatGLMCpp(ctx context.Context, rep int) error {
	if b.ccpp == nil {
		return nil
	}
	for _, t := range b.o.ccppTypes {
		if err := ctx.Err(); err != nil {
			return err
		}
		check := rep == 0 && b.engineF32 != nil
		a, err := b.ccpp.run(ccppRequest{WeightType: t, LogProbs: check})
		if err != nil {
			return err
		}
		b.record(rep, engineConfig{side: ccppSideName, weightType: t},
			enginePass{rate: float64(a.Messages) / a.Seconds, cpuMS: 1000 * a.CPUSeconds / float64(a.Messages)})
		if check {
			if b.ccppAgreement[t], err = ccppAgreement(t, b.engineF32, a.LogProbs); err != nil {
				return err
			}
		}
	}
	return nil
}

// record keeps a pass and shows it.
func (b *engineBench) record(rep int, c engineConfig, p enginePass) {
	b.passes[c] = append(b.passes[c], p)
	fmt.Fprintf(os.Stderr, "emobench engine: round %d: %s: %.1f msgs/s, %.1f CPU ms per message\n", rep+1, c, p.rate, p.cpuMS)
}

// scoreEngineWorkload scores every message of w in batches of bs and
// returns the wall-clock and CPU time and the log-probabilities.
func scoreEngineWorkload(sc *model.Scorer, w *engineWorkload, bs int) (time.Duration, time.Duration, [][]float64, error) {
	var logp [][]float64
	start := time.Now()
	cpu, err := processCPU()
	if err != nil {
		return 0, 0, nil, err
	}
	for _, b := range w.batches(bs) {
		res, err := sc.Score(b)
		if err != nil {
			return 0, 0, nil, err
		}
		for _, r := range res {
			logp = append(logp, r.LogProbs)
		}
	}
	elapsed := time.Since(start)
	end, err := processCPU()
	return elapsed, end - cpu, logp, err
}

// processCPU is the CPU time of this process so far, all threads
// (libtorch's included).
func processCPU() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("cpu time: %w", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// compareLogProbs checks that the engine and transformers computed the same
// label log-probabilities, and describes how close they are.
func compareLogProbs(dt tensor.DType, engine, hf [][]float64) (string, error) {
	if len(engine) != len(hf) {
		return "", fmt.Errorf("engine scored %d messages, transformers %d", len(engine), len(hf))
	}
	worst, same := 0.0, 0
	for i := range engine {
		if argmax(engine[i]) == argmax(hf[i]) {
			same++
		}
		for k := range engine[i] {
			worst = math.Max(worst, math.Abs(engine[i][k]-hf[i][k]))
		}
	}
	// float32 sums in another order differ by far less; anything more
	// means the two sides are not doing the same work.
	if dt == tensor.Float32 && !(worst < 1e-2) {
		return "", fmt.Errorf("engine and transformers disagree by up to %g in a label log-probability (float32): they do not compute the same thing", worst)
	}
	return fmt.Sprintf("max |Δ log p| %.2g, same best label for %.1f%% of messages", worst, 100*float64(same)/float64(len(engine))), nil
}

func argmax(xs []float64) int {
	best := 0
	for i, x := range xs {
		if x > xs[best] {
			best = i
		}
	}
	return best
}
