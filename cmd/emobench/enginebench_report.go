package main

import (
	"fmt"
	"math"
	"os"
	"slices"
	"strings"

	"github.com/emoflow/emoflow/internal/benchmodel"
	"github.com/emoflow/emoflow/internal/model"
	"github.com/emoflow/emoflow/internal/tensor"
	"github.com/emoflow/emoflow/internal/tokenizer"
)

// describeEngineBench prints what is measured.
func describeEngineBench(w *engineWorkload, p model.Prompt, tok tokenizer.Tokenizer, labelBlock int, o engineOptions) {
	sp := benchmodel.Spec()
	fmt.Printf("model: ChatGLM3 architecture, %d layers, hidden %d, %d heads in %d key/value groups, FFN %d, vocabulary %d: %.1fM parameters, random weights\n",
		sp.Layers, sp.Hidden, sp.Heads, sp.Groups, sp.FFN, sp.Vocab, float64(benchModelParameters())/1e6)
	fmt.Printf("tokenizer: %s, %d tokens (SentencePiece BPE trained on GoEmotions train)\n", tok.Family(), tok.VocabSize())
	var lens []string
	for _, l := range p.Labels {
		lens = append(lens, fmt.Sprint(len(l)))
	}
	fmt.Printf("prompt: %d-token prefix (instruction), %d-token suffix; %d labels of %s tokens (a %d-token label block once shared beginnings merge), then stop token %d\n",
		len(p.Prefix), len(p.Suffix), len(p.Labels), strings.Join(lens, "/"), labelBlock, p.Stop)
	total := 0
	for _, t := range w.Texts {
		total += len(t)
	}
	n := len(w.Texts)
	fmt.Printf("messages: %d GoEmotions test texts, %d to %d tokens (mean %.1f), sorted by length; tokenization %.0f msgs/s\n",
		n, len(w.Texts[0]), len(w.Texts[n-1]), float64(total)/float64(n), float64(n)/w.tokenizeTime.Seconds())
	policy := os.Getenv("OMP_WAIT_POLICY")
	if policy == "" {
		policy = "unset: idle workers spin a while"
	}
	fmt.Printf("threads: %d on each side (OMP_WAIT_POLICY %s); %d passes per configuration, medians reported\n", o.threads, policy, o.repeats)
	lanes := "every operation split across the threads"
	if l := min(o.lanes, o.threads); l > 1 {
		lanes = fmt.Sprintf("a batch's rows split into %d lanes computed at once on %d thread(s) each (from 16 rows a lane)", l, max(1, o.threads/l))
	}
	fmt.Printf("engine: %s; fused CPU kernels %s, C heap %s (the Python peers get the same glibc settings)\n", lanes, tensor.FusedKernels(), tensor.HostMemory())
	if o.withHF {
		fmt.Printf("transformers: GlmForCausalLM (a copy of the weights in its layout), %s attention, PyTorch eager\n", o.attention)
	}
	if o.withCCPP {
		fmt.Printf("chatglm.cpp: 0.4.2 built for this CPU, the weights converted to its GGML file in %s; no batching\n", strings.Join(o.ccppTypes, ", "))
	}
}

// blockMACs is the multiply-accumulates of one token through one layer's
// projections (attention scores, a few percent here, left out).
func blockMACs() int {
	sp := benchmodel.Spec()
	hd := sp.Hidden / sp.Heads
	return sp.Hidden*(sp.Heads+2*sp.Groups)*hd + sp.Heads*hd*sp.Hidden + 3*sp.Hidden*sp.FFN
}

// benchModelParameters counts the model's weights: the projections, the
// query/key/value biases, the norms, the embeddings and the output layer.
func benchModelParameters() int {
	sp := benchmodel.Spec()
	hd := sp.Hidden / sp.Heads
	perLayer := blockMACs() + (sp.Heads+2*sp.Groups)*hd + 2*sp.Hidden
	return 2*sp.Vocab*sp.Hidden + sp.Layers*perLayer + sp.Hidden
}

// engineWork is the computation per message of one way of scoring.
type engineWork struct {
	blockTokens, realTokens, outputRows float64
}

func (wk engineWork) String() string {
	sp := benchmodel.Spec()
	blocks := wk.blockTokens * float64(sp.Layers*blockMACs())
	head := wk.outputRows * float64(sp.Vocab*sp.Hidden)
	return fmt.Sprintf("%5.1f tokens through the blocks (%2.0f%% padding), %4.1f output-layer rows: %.2f GMAC (%.0f%% in the output layer)",
		wk.blockTokens, 100*(1-wk.realTokens/wk.blockTokens), wk.outputRows, (blocks+head)/1e9, 100*head/(blocks+head))
}

// engineWorkOf counts the tokens a configuration puts through the blocks
// and the output layer, per message. labelBlock is the engine's label
// block; padded is the engine model's PaddedTokens (its lanes pad each to
// its own longest row).
func engineWorkOf(w *engineWorkload, c engineConfig, labelBlock int, padded func(rowTokens []int) int) engineWork {
	var wk engineWork
	K := len(w.Labels)
	labelTotal, labelMax := 0, 0
	for _, l := range w.Labels {
		labelTotal += len(l)
		labelMax = max(labelMax, len(l))
	}
	common := commonPrefix(w.Labels)
	for _, b := range w.batches(c.batch) {
		rows, longest, real := float64(len(b)), 0, 0
		for _, t := range b {
			longest = max(longest, len(t))
			real += len(t)
		}
		prompt := float64(len(w.Prefix) + len(w.Suffix))
		switch {
		case c.side == "engine":
			// The prefix is in the shared past; every label-block position
			// and the last prompt token predict something.
			rowTokens := make([]int, len(b))
			for r, t := range b {
				rowTokens[r] = len(t) + len(w.Suffix)
			}
			wk.blockTokens += float64(padded(rowTokens) + len(b)*labelBlock)

			wk.realTokens += float64(real) + rows*float64(len(w.Suffix)+labelBlock)
			wk.outputRows += rows * float64(1+labelBlock)
		case c.strategy == "kv" || c.strategy == "kv-shared":
			// kv-shared moves the labels' common beginning into the prompt
			// pass; the label pass carries the rest, padded to the longest.
			moved := 0
			if c.strategy == "kv-shared" {
				moved = common
			}
			wk.blockTokens += rows * (float64(longest+moved) + prompt + float64(K*(labelMax-moved)))
			wk.realTokens += float64(real) + rows*(prompt+float64(labelTotal-(K-1)*moved))
			wk.outputRows += rows * float64(moved+1+K*(labelMax-moved))
		default: // a row per label
			wk.blockTokens += rows * float64(K) * (float64(longest) + prompt + float64(labelMax))
			wk.realTokens += float64(K*real) + rows*(float64(K)*prompt+float64(labelTotal))
			wk.outputRows += rows * float64(K*(labelMax+1))
		}
	}
	n := float64(len(w.Texts))
	return engineWork{wk.blockTokens / n, wk.realTokens / n, wk.outputRows / n}
}

// commonPrefix is the number of tokens every label starts with, short of
// the shortest label (as bench_hf.py's kv strategy counts them).
func commonPrefix(labels [][]int64) int {
	shortest := len(labels[0])
	for _, l := range labels {
		shortest = min(shortest, len(l))
	}
	c := 0
	for ; c+1 < shortest; c++ {
		for _, l := range labels {
			if l[c] != labels[0][c] {
				return c
			}
		}
	}
	return c
}

// enginePass is one pass over the messages.
type enginePass struct {
	rate  float64 // messages per second, wall clock
	cpuMS float64 // CPU milliseconds per message, all threads of the side's process
}

// printEngineReport prints the medians, the best configuration of each
// side per dtype and their ratios, and returns engine_vs_hf_eager (printed
// last, by printEngineVsHF).
func printEngineReport(o engineOptions, w *engineWorkload, labelBlock int, padded func([]int) int, passes map[engineConfig][]enginePass, agreement map[tensor.DType]string) float64 {
	var configs []engineConfig
	for c := range passes {
		configs = append(configs, c)
	}
	slices.SortFunc(configs, func(a, b engineConfig) int {
		return strings.Compare(configSortKey(a), configSortKey(b))
	})
	rate := func(c engineConfig, round int) float64 { return passes[c][round].rate }
	medianOf := func(c engineConfig, f func(enginePass) float64) float64 {
		var xs []float64
		for _, p := range passes[c] {
			xs = append(xs, f(p))
		}
		return median(xs)
	}
	medianRate := func(c engineConfig) float64 { return medianOf(c, func(p enginePass) float64 { return p.rate }) }
	medianCPU := func(c engineConfig) float64 { return medianOf(c, func(p enginePass) float64 { return p.cpuMS }) }
	fmt.Println("\nmessages per second (median of the passes, every pass in brackets) and CPU ms per message (median):")
	for _, c := range configs {
		var runs []string
		for _, p := range passes[c] {
			runs = append(runs, fmt.Sprintf("%.1f", p.rate))
		}
		fmt.Printf("  %-40s %7.1f   %-24s %6.1f CPU ms\n", c, medianRate(c), "["+strings.Join(runs, " ")+"]", medianCPU(c))
	}
	// best is a side's configuration with the highest median rate (within
	// one round with round >= 0).
	best := func(side string, dt tensor.DType, round int) (engineConfig, float64) {
		var bc engineConfig
		bv := 0.0
		for _, c := range configs {
			if c.side != side || c.dtype != dt {
				continue
			}
			v := medianRate(c)
			if round >= 0 {
				v = rate(c, round)
			}
			if v > bv {
				bc, bv = c, v
			}
		}
		return bc, bv
	}
	fmt.Println()
	ratio, fastest, fastestRate := math.Inf(1), tensor.DType(0), 0.0
	for _, dt := range o.dtypes {
		ec, ev := best("engine", dt, -1)
		if ev > fastestRate {
			fastest, fastestRate = dt, ev
		}
		fmt.Printf("%s: engine best at batch %d: %.1f msgs/s, %.1f CPU ms per message\n", dt, ec.batch, ev, medianCPU(ec))
		fmt.Printf("  engine work per message:       %s\n", engineWorkOf(w, ec, labelBlock, padded))
		if !o.withHF {
			continue
		}
		hc, hv := best("transformers", dt, -1)
		fmt.Printf("  transformers best: %s, batch %d: %.1f msgs/s, %.1f CPU ms per message\n", hc.strategy, hc.batch, hv, medianCPU(hc))
		fmt.Printf("  transformers work per message: %s\n", engineWorkOf(w, hc, labelBlock, nil))
		fmt.Printf("  agreement of the label log-probabilities: %s\n", agreement[dt])
		// Each round's best against best: the two sides' passes of a round
		// ran minutes apart at most, under about the same load.
		var rounds []float64
		for r := 0; r < o.repeats; r++ {
			_, e := best("engine", dt, r)
			_, h := best("transformers", dt, r)
			rounds = append(rounds, e/h)
		}
		perRound := median(rounds)
		fmt.Printf("  engine / transformers: %.2fx (medians), %.2fx (median of each round's best against best), %.2fx in CPU time per message\n",
			ev/hv, perRound, medianCPU(hc)/medianCPU(ec))
		ratio = math.Min(ratio, perRound)
	}
	fmt.Printf("\nrecommended compute dtype on this CPU: %s (the engine's fastest)\n", fastest)
	if !o.withHF {
		return ratio
	}
	// Issue 12's measure: each side in its own fastest dtype, round by
	// round, best against best.
	var rounds []float64
	for r := 0; r < o.repeats; r++ {
		e, h := 0.0, 0.0
		for _, dt := range o.dtypes {
			_, ev := best("engine", dt, r)
			_, hv := best("transformers", dt, r)
			e, h = max(e, ev), max(h, hv)
		}
		rounds = append(rounds, e/h)
	}
	fmt.Printf("engine / transformers, each in its fastest dtype: %.2fx (median of each round's best against best); in the same dtype, the smaller over the dtypes: %.2fx\n",
		median(rounds), ratio)
	return median(rounds)
}

// configSortKey orders the report: by dtype, side, strategy and batch
// size, chatglm.cpp last in the order of its weight types.
func configSortKey(c engineConfig) string {
	if c.side == ccppSideName {
		return fmt.Sprint("~", 100+slices.Index(chatglmCppTypes, c.weightType))
	}
	return fmt.Sprint(c.dtype, c.side, c.strategy, 1000+c.batch)
}

// printEngineVsHF prints the line other tooling reads; it stays last.
func printEngineVsHF(ratio float64) {
	fmt.Println("engine_vs_hf_eager: each side in its fastest dtype, the median of each round's best against best")
	fmt.Printf("engine_vs_hf_eager=%.2f\n", ratio)
}

// engineBestRate is the engine's best median rate over every dtype and
// batch size.
func engineBestRate(passes map[engineConfig][]enginePass) float64 {
	best := 0.0
	for c, ps := range passes {
		if c.side != "engine" {
			continue
		}
		var rates []float64
		for _, p := range ps {
			rates = append(rates, p.rate)
		}
		best = math.Max(best, median(rates))
	}
	return best
}

// printChatGLMCppReport prints chatglm.cpp's weight types against the
// engine's best and, last, engine_vs_chatglm_cpp.
func printChatGLMCppReport(o engineOptions, b *engineBench) {
	s := summarizeChatGLMCpp(o.ccppTypes, b.passes, engineBestRate(b.passes))
	threads := fmt.Sprintf("%d threads (its own choice)", b.ccpp.threads)
	if b.ccpp.threads != o.threads {
		threads += fmt.Sprintf(", NOT the %d of the other sides", o.threads)
	}
	fmt.Printf("\nchatglm.cpp 0.4.2, one message at a time (no batching), %s, ggml built for %s; exact label log-probabilities from its own forward pass:\n",
		threads, strings.Join(b.ccpp.simd, " "))
	for _, t := range o.ccppTypes {
		agree := b.ccppAgreement[t]
		if agree == "" {
			agree = "not compared (the engine did not run float32)"
		}
		fmt.Printf("  %-5s %7.1f msgs/s, %6.1f CPU ms per message; against the engine's float32: %s\n", t, s.rates[t], s.cpuMS[t], agree)
	}
	fmt.Printf("engine_vs_chatglm_cpp: the engine's best median msgs/s (%.1f) over chatglm.cpp's fastest weight type's, %s (%.1f)\n",
		engineBestRate(b.passes), s.fastest, s.rates[s.fastest])
	fmt.Printf("engine_vs_chatglm_cpp=%.2f\n", s.ratio)
}
