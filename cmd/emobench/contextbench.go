package main

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/adapters"
	"github.com/emoflow/emoflow/internal/classifier"
	"github.com/emoflow/emoflow/internal/contract"
	"github.com/emoflow/emoflow/internal/datasets"
	"github.com/emoflow/emoflow/internal/evaluate"
	"github.com/emoflow/emoflow/internal/model"
	"github.com/emoflow/emoflow/internal/prompt"
	"github.com/emoflow/emoflow/internal/replay"
	"github.com/emoflow/emoflow/internal/service"
	"github.com/emoflow/emoflow/internal/tensor"
	"github.com/emoflow/emoflow/internal/tokenizer"
	"github.com/emoflow/emoflow/internal/train"
)

// contextBenchConfig is `emobench context`: conversation context in the
// prompt (issue 16), measured on MELD and EmoryNLP.
type contextBenchConfig struct {
	dataDir, cache, sets, ks, base string
	steps, threads, rounds         int
	stream                         bool
	brokers, redisAddr             string
	partitions, streamLimit        int
}

// contextTemplateText is the bench's prompt: the paper's instruction
// first (the shared prefix), the context, then the message line.
const contextTemplateText = "Classify the emotion of the last sentence to {labels}.\nSentence: {text}"

func runContextBench(ctx context.Context, log *slog.Logger, args []string) error {
	var c contextBenchConfig
	fs := flag.NewFlagSet("context", flag.ContinueOnError)
	fs.StringVar(&c.dataDir, "data", defaultDataDir(), "shared data folder")
	fs.StringVar(&c.cache, "cache", service.CacheDir(), "download and build cache (EMOFLOW_CACHE); trained adapters are kept under bench/context")
	fs.StringVar(&c.sets, "sets", "meld,emorynlp", "data sets with dialogues, comma-separated")
	fs.StringVar(&c.base, "base", "dialogue", "base model: dialogue (the demo recipe pretrained with the sets' dialogues as documents and 128-token sequences, as a chat model has seen conversations; built once into the cache) or demo (the demo model's base: single sentences, 64 tokens)")
	fs.StringVar(&c.ks, "ks", "0,1,2,4", "context sizes k (previous messages) to train and evaluate; 0 and 2 are required")
	fs.IntVar(&c.steps, "steps", 400, "updates of each adapter (LoRA, the demo recipe's other settings)")
	fs.IntVar(&c.threads, "threads", 0, "libtorch threads (0: all cores)")
	fs.IntVar(&c.rounds, "rounds", 3, "throughput rounds of each k (context_cost)")
	fs.BoolVar(&c.stream, "stream", true, "run the streaming part (Kafka, Redis, ingest killed once): stream_vs_offline")
	fs.StringVar(&c.brokers, "kafka-brokers", envOr("EMOFLOW_TEST_KAFKA_BROKERS", "127.0.0.1:19092"), "Kafka of the streaming part")
	fs.StringVar(&c.redisAddr, "redis-addr", envOr("EMOFLOW_TEST_REDIS_ADDR", "127.0.0.1:16379"), "Redis of the streaming part")
	fs.IntVar(&c.partitions, "partitions", 4, "partitions of the streaming part's input topic")
	fs.IntVar(&c.streamLimit, "stream-limit", 0, "most MELD test messages streamed (the first ones); 0: all")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var ks []int
	for _, f := range splitComma(c.ks) {
		k, err := strconv.Atoi(f)
		if err != nil || k < 0 || k > prompt.MaxContextMessages {
			return fmt.Errorf("-ks %q: want context sizes 0-%d", c.ks, prompt.MaxContextMessages)
		}
		ks = append(ks, k)
	}
	if !slices.Contains(ks, 0) || !slices.Contains(ks, 2) {
		return fmt.Errorf("-ks %q: want a list holding 0 and 2", c.ks)
	}
	sets := splitComma(c.sets)
	if !slices.Contains(sets, "meld") {
		return errors.New("-sets must hold meld (the streaming and cost parts use it)")
	}
	if c.threads <= 0 {
		c.threads = runtime.NumCPU()
	}
	tensor.SetThreads(c.threads)
	var recipe train.DemoRecipe
	var baseDir string
	var tok tokenizer.Tokenizer
	var err error
	switch c.base {
	case "demo":
		var demoDir string
		if recipe, demoDir, tok, err = demoModel(ctx, log, c.cache, c.dataDir); err != nil {
			return err
		}
		baseDir = filepath.Join(demoDir, train.DemoBase)
	case "dialogue":
		recipe = train.Demo()
		recipe.Dialogues, recipe.MaxTokens = true, 128
		baseDir = filepath.Join(c.cache, "bench", "context-base", recipe.Key(c.dataDir))
		log.Info("dialogue base (built on first use)", "dir", baseDir)
		if _, err := train.BuildDemoBase(ctx, recipe, baseDir, c.dataDir, os.Stderr, log); err != nil {
			return err
		}
		if tok, err = tokenizer.Load(baseDir, tokenizer.Options{}); err != nil {
			return err
		}
	default:
		return fmt.Errorf("-base %q: want dialogue or demo", c.base)
	}
	base, err := model.Load(baseDir, model.Options{DType: tensor.BFloat16})
	if err != nil {
		return err
	}
	defer base.Close()

	// Quality: one adapter per set and k, trained the same way.
	quality := map[string]map[int]evaluate.Scores{}
	adapterDir := map[string]map[int]string{}
	for _, set := range sets {
		quality[set], adapterDir[set] = map[int]evaluate.Scores{}, map[int]string{}
		load := func(split string) ([]train.Example, error) {
			ex, _, err := train.Load(train.Source{Set: set, Split: split, DataDir: c.dataDir}, datasets.Labels(datasets.Set(set)))
			return ex, err
		}
		trainEx, err := load("train")
		if err != nil {
			return err
		}
		devEx, err := load("dev")
		if err != nil {
			return err
		}
		testEx, err := load("test")
		if err != nil {
			return err
		}
		for _, k := range ks {
			dir, secs, err := c.adapter(ctx, log, recipe, base, tok, set, k, trainEx, devEx)
			if err != nil {
				return err
			}
			a, err := adapters.Load(dir, base, tok, adapters.Options{})
			if err != nil {
				return err
			}
			s, _, err := train.EvaluateAdapter(a, testEx)
			a.Close()
			if err != nil {
				return err
			}
			quality[set][k], adapterDir[set][k] = s, dir
			log.Info("adapter", "set", set, "k", k, "test_weighted_f1", s.WeightedF1, "test_macro_f1", s.MacroF1, "train_seconds", secs)
		}
	}

	cost, err := c.contextCost(base, tok, adapterDir["meld"][0], adapterDir["meld"][2])
	if err != nil {
		return err
	}
	streamShare := -1.0
	if c.stream {
		if streamShare, err = c.streamVsOffline(ctx, log, baseDir, adapterDir["meld"][2]); err != nil {
			return err
		}
	}

	fmt.Printf("\nconversation context in the prompt: LoRA adapters (r=8, %d updates each) on the %s base (%s), test splits\n", c.steps, c.base, recipe.Key(c.dataDir))
	fmt.Printf("%-9s %3s %12s %9s %6s\n", "set", "k", "weighted-F1", "macro-F1", "texts")
	for _, set := range sets {
		for _, k := range ks {
			s := quality[set][k]
			fmt.Printf("%-9s %3d %12.3f %9.3f %6d\n", set, k, s.WeightedF1, s.MacroF1, s.Messages)
		}
	}
	fmt.Printf("\nclassifier engine (bf16), MELD test, k=0 vs k=2 adapters: %.1f vs %.1f msgs/s (median of %d), %.1f vs %.1f tokens computed per message\n",
		cost.rate0, cost.rate2, c.rounds, cost.tokens0, cost.tokens2)
	if streamShare >= 0 {
		fmt.Printf("stream: MELD test through Kafka (%d partitions, conversations interleaved), ingest -context-messages 2 killed -9 once: %.4f of messages as offline\n", c.partitions, streamShare)
	}
	emory := func(k int) float64 {
		if s, ok := quality["emorynlp"][k]; ok {
			return s.WeightedF1
		}
		return -1
	}
	fmt.Printf("meld_wf1_k0=%.3f meld_wf1_k2=%.3f emorynlp_wf1_k0=%.3f emorynlp_wf1_k2=%.3f stream_vs_offline=%.4f context_cost=%.3f token_ratio=%.3f\n",
		quality["meld"][0].WeightedF1, quality["meld"][2].WeightedF1, emory(0), emory(2), streamShare, cost.rate2/cost.rate0, cost.tokens0/cost.tokens2)
	return nil
}

// adapter trains (or finds, cached from an earlier run of the same
// recipe) the LoRA adapter of set with k context messages.
func (c contextBenchConfig) adapter(ctx context.Context, log *slog.Logger, recipe train.DemoRecipe, base *model.Model, tok tokenizer.Tokenizer,
	set string, k int, trainEx, devEx []train.Example) (string, float64, error) {
	tmpl := prompt.Template{Name: "ctx-" + set, Text: contextTemplateText, Labels: datasets.Labels(datasets.Set(set)), Wrap: prompt.WrapChat, Language: "en"}.WithContext(k)
	cfg := recipe.LoRA
	cfg.Template, cfg.ID, cfg.MaxSteps, cfg.EvalEvery = tmpl, fmt.Sprintf("%s-k%d", set, k), c.steps, c.steps/2
	key, _ := json.Marshal(struct {
		Base   string
		Config train.Config
	}{recipe.Key(c.dataDir), cfg})
	sum := sha256.Sum256(key)
	cfg.Out = filepath.Join(c.cache, "bench", "context", hex.EncodeToString(sum[:8]), cfg.ID)
	if _, err := os.Stat(filepath.Join(cfg.Out, adapters.ManifestFile)); err == nil {
		log.Info("adapter trained by an earlier run of this recipe", "dir", cfg.Out)
		return cfg.Out, 0, nil
	}
	cfg.Progress, cfg.Logger = os.Stderr, log
	log.Info("training", "set", set, "k", k, "examples", len(trainEx), "updates", c.steps)
	res, err := train.Run(ctx, cfg, base, tok, trainEx, devEx)
	if err != nil {
		return "", 0, fmt.Errorf("%s k=%d: %w", set, k, err)
	}
	return res.Dir, res.Report.Seconds, nil
}

// costResult is context_cost's measurement.
type costResult struct {
	rate0, rate2, tokens0, tokens2 float64
}

// contextCost scores MELD's test messages with the k=0 and the k=2
// adapters as the classifier's engine does (rows of similar length in
// batches of 16, the CPU default), the same texts, and counts the tokens
// each message costs beyond the shared prefix.
func (c contextBenchConfig) contextCost(base *model.Model, tok tokenizer.Tokenizer, dir0, dir2 string) (costResult, error) {
	examples, _, err := train.Load(train.Source{Set: "meld", Split: "test", DataDir: c.dataDir}, datasets.Labels(datasets.MELD))
	if err != nil {
		return costResult{}, err
	}
	var res costResult
	var rates [2][]float64
	type prepared struct {
		a    *adapters.Adapter
		rows [][]int64
	}
	var sides []prepared
	for _, dir := range []string{dir0, dir2} {
		a, err := adapters.Load(dir, base, tok, adapters.Options{})
		if err != nil {
			return res, err
		}
		defer a.Close()
		ex := examples
		if cx := a.Manifest.Template.Context; cx != nil {
			ex = train.WithContexts(examples, cx.Messages)
		}
		ids, _ := train.Encode(a.Input, ex)
		slices.SortStableFunc(ids, func(x, y []int64) int { return len(x) - len(y) })
		tokens := 0
		for _, r := range ids {
			tokens += len(r) + a.Scorer.RowTokens(0) + a.Scorer.LabelTokens()
		}
		per := float64(tokens) / float64(len(ids))
		if dir == dir0 {
			res.tokens0 = per
		} else {
			res.tokens2 = per
		}
		sides = append(sides, prepared{a, ids})
	}
	for r := 0; r < c.rounds; r++ {
		for i, s := range sides {
			start := time.Now()
			for lo := 0; lo < len(s.rows); lo += 16 {
				if _, err := s.a.Scorer.Score(s.rows[lo:min(lo+16, len(s.rows))]); err != nil {
					return res, err
				}
			}
			rates[i] = append(rates[i], float64(len(s.rows))/time.Since(start).Seconds())
		}
	}
	res.rate0, res.rate2 = median(rates[0]), median(rates[1])
	return res, nil
}

// streamVsOffline streams MELD's test split through Kafka (conversations
// interleaved, several partitions) into ingest with -context-messages 2
// and the k=2 adapter, kills ingest (-9) once a third of the events are
// out, restarts it, and returns the share of messages every one of whose
// events has the label and context count emoctl eval -set computes
// offline.
func (c contextBenchConfig) streamVsOffline(ctx context.Context, log *slog.Logger, baseDir, adapterDir string) (float64, error) {
	examples, err := datasets.Read(c.dataDir, datasets.MELD, "test")
	if err != nil {
		return 0, err
	}
	msgs, _, err := replay.DatasetMessages(examples, replay.DatasetOptions{Set: datasets.MELD, Split: "test", Tenant: "bench",
		SentAt: time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)})
	if err != nil {
		return 0, err
	}
	if c.streamLimit > 0 && len(msgs) > c.streamLimit {
		msgs = msgs[:c.streamLimit]
	}
	msgs = interleave(msgs, 16)

	// Offline, in float32 as the classifier below serves.
	base, err := model.Load(baseDir, model.Options{DType: tensor.Float32})
	if err != nil {
		return 0, err
	}
	tok, err := tokenizer.Load(baseDir, tokenizer.Options{})
	if err != nil {
		base.Close()
		return 0, err
	}
	a, err := adapters.Load(adapterDir, base, tok, adapters.Options{MaxTextTokens: 256})
	if err != nil {
		base.Close()
		return 0, err
	}
	_, offline, err := train.EvaluateAdapter(a, train.FromMessages(msgs))
	a.Close()
	base.Close()
	if err != nil {
		return 0, err
	}
	want := map[string]train.Prediction{}
	for _, p := range offline {
		want[p.ID] = p
	}

	var suffix [4]byte
	_, _ = rand.Read(suffix[:])
	name := "emobench_ctx_" + hex.EncodeToString(suffix[:])
	input, events := name+"_in", name+"_events"
	man, err := adapters.ReadManifest(adapterDir)
	if err != nil {
		return 0, err
	}
	cls, err := startComponent(ctx, "classifier", &classifier.Component{}, "-model-dir="+baseDir, "-adapters-dir="+filepath.Dir(adapterDir),
		"-dtype=float32", "-max-text-tokens=256")
	if err != nil {
		return 0, err
	}
	defer cls.stop()
	admin := &kafka.Client{Addr: kafka.TCP(strings.Split(c.brokers, ",")...), Timeout: 30 * time.Second}
	defer func() {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		_, _ = admin.DeleteTopics(dctx, &kafka.DeleteTopicsRequest{Topics: []string{input, events, input + "_dlq"}})
	}()
	// The events topic exists before its reader's group joins, or the
	// group would have nothing to be assigned.
	created, err := admin.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{
		{Topic: events, NumPartitions: c.partitions, ReplicationFactor: 1}}})
	if err == nil {
		err = created.Errors[events]
	}
	if err != nil {
		return 0, fmt.Errorf("create topic %s: %w", events, err)
	}
	if err := replay.Publish(ctx, strings.Split(c.brokers, ","), nil, input, replay.TopicOptions{Partitions: c.partitions, ReplicationFactor: 1}, msgs); err != nil {
		return 0, err
	}
	self, err := os.Executable()
	if err != nil {
		return 0, err
	}
	ingestArgs := []string{"ingest-process", "-http-addr=127.0.0.1:0", "-log-level=warn", "-kafka-brokers=" + c.brokers, "-input-topic=" + input,
		"-events-topic=" + events, "-dead-letter-topic=" + input + "_dlq", "-group-id=" + name, "-redis-addr=" + c.redisAddr,
		"-redis-key-prefix=" + name + ":cls:", "-context-key-prefix=" + name + ":ctx:", "-classifier-urls=http://" + cls.rt.Addr,
		"-topic-partitions=" + strconv.Itoa(c.partitions), "-adapter=" + man.Ref(), "-context-messages=2",
		"-batch-size=16", "-workers=4", "-max-in-flight=256"}
	start := func() (*exec.Cmd, error) {
		cmd := exec.CommandContext(ctx, self, ingestArgs...)
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		return cmd, cmd.Start()
	}
	seen := map[string][]contract.EmotionEvent{}
	reader := kafka.NewReader(kafka.ReaderConfig{Brokers: strings.Split(c.brokers, ","), Topic: events, GroupID: name + "_reader",
		StartOffset: kafka.FirstOffset, MaxWait: 100 * time.Millisecond})
	defer reader.Close()
	readUntil := func(n int, timeout time.Duration) error {
		deadline := time.Now().Add(timeout)
		for len(seen) < n {
			rctx, cancel := context.WithDeadline(ctx, deadline)
			m, err := reader.ReadMessage(rctx)
			cancel()
			if err != nil {
				return fmt.Errorf("events: %d of %d messages after %s: %w", len(seen), n, timeout, err)
			}
			var ev contract.EmotionEvent
			if err := json.Unmarshal(m.Value, &ev); err != nil {
				return err
			}
			seen[ev.MessageID] = append(seen[ev.MessageID], ev)
		}
		return nil
	}
	ing, err := start()
	if err != nil {
		return 0, err
	}
	if err := readUntil(len(msgs)/3, 5*time.Minute); err != nil {
		_ = ing.Process.Kill()
		return 0, err
	}
	_ = ing.Process.Signal(syscall.SIGKILL)
	_ = ing.Wait()
	log.Info("ingest killed (-9) mid-stream", "messages_with_events", len(seen), "of", len(msgs))
	if ing, err = start(); err != nil {
		return 0, err
	}
	defer func() {
		_ = ing.Process.Signal(syscall.SIGTERM)
		_ = ing.Wait()
	}()
	if err := readUntil(len(msgs), 10*time.Minute); err != nil {
		return 0, err
	}
	// Redelivered events after the last message's first event are read
	// too: give the restarted ingest a moment to finish its batches.
	_ = readUntil(len(msgs)+1, 3*time.Second)
	same, nEvents := 0, 0
	for _, m := range msgs {
		evs, w := seen[m.ID], want[m.ID]
		ok := len(evs) > 0
		for _, ev := range evs {
			nEvents++
			if ev.Label != w.Label || ev.ContextMessages != w.ContextMessages {
				ok = false
			}
		}
		if ok {
			same++
		}
	}
	log.Info("stream vs offline", "messages", len(msgs), "events", nEvents, "same", same)
	return float64(same) / float64(len(msgs)), nil
}

// interleave merges the conversations of msgs (each kept in its order)
// as concurrent chats would: the next message comes from one of up to
// `open` conversations in progress, picked at random (seeded).
func interleave(msgs []contract.ChatMessage, open int) []contract.ChatMessage {
	var convs [][]contract.ChatMessage
	index := map[string]int{}
	for _, m := range msgs {
		i, ok := index[m.ConversationID]
		if !ok {
			i = len(convs)
			index[m.ConversationID] = i
			convs = append(convs, nil)
		}
		convs[i] = append(convs[i], m)
	}
	rng := mrand.New(mrand.NewPCG(16, 2024))
	out := make([]contract.ChatMessage, 0, len(msgs))
	var active [][]contract.ChatMessage
	next := 0
	for len(out) < len(msgs) {
		for len(active) < open && next < len(convs) {
			active = append(active, convs[next])
			next++
		}
		i := rng.IntN(len(active))
		out = append(out, active[i][0])
		if active[i] = active[i][1:]; len(active[i]) == 0 {
			active = slices.Delete(active, i, i+1)
		}
	}
	return out
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}
