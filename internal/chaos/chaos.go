// Package chaos owns the chaos suite (./task chaos, `emobench chaos`): the
// whole pipeline as its real binaries (classifier on a tiny random model,
// ingest, sink) on the real local Kafka, Redis and ClickHouse, a steady
// stream of chat messages in several languages with 1% malformed, and one
// fault after another while the stream flows: kill -9 of the classifier, of
// the Kafka broker and of Redis, ClickHouse stopped, a network stall
// between ingest and the classifier (StallProxy, a TCP proxy the suite
// controls), and twice the live traffic with a replay running.
//
// After each fault the suite pauses the stream and checks what the product
// promises: every valid message exactly once in ClickHouse's deduplicated
// view (events_dedup), every malformed one in the dead-letter topic with
// its reason, both consumer groups' lag back to 0, and live latency (from
// a message being due to its event on the events topic) within the
// deadline: during the fault for faults off the live path (Redis,
// ClickHouse, overload), after recovery for the others. Every figure is
// measured; the report's last line sums the outcomes.
package chaos

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/contract"
	"github.com/emoflow/emoflow/internal/randmodel"
	"github.com/emoflow/emoflow/internal/tokenizer"
)

// Config is the suite's configuration.
type Config struct {
	Brokers        []string
	RedisAddr      string
	ClickHouseAddr string
	// ServicesScript is scripts/services.sh; it kills and restarts the
	// services with the environment of this process (EMOFLOW_STATE and
	// the ports), so that it acts on the services at the addresses above.
	ServicesScript string
	// BinDir holds the classifier, ingest, sink and emoctl binaries.
	BinDir string
	// ModelDir is the classifier's checkpoint; empty: a tiny random model
	// is written into WorkDir.
	ModelDir string
	// WorkDir receives the components' logs (and the model); empty: a
	// temporary folder, removed at the end unless the run failed.
	WorkDir string
	// Faults to inject, in order (FaultNames lists them).
	Faults []string
	// Rate is the live messages per second of the steady stream;
	// Malformed the share of them that is invalid.
	Rate      float64
	Malformed float64
	// Deadline is the live deadline: ingest's -classify-timeout, and the
	// bound on the live p99.
	Deadline time.Duration
	// Warmup is the steady stream before each fault; Settle the steady
	// stream after recovery, whose latency is the "after" p99.
	Warmup, Settle time.Duration
	// How long each fault lasts: the classifier, Kafka and Redis stay dead
	// for their duration before the restart; ClickHouse stays stopped;
	// the proxy forwards nothing; the overload lasts.
	ClassifierDown, KafkaDown, RedisDown, ClickHouseDown, Stall, Overload time.Duration
	// ReplayMessages bounds the replay of the overload fault (the newest
	// messages of the input topic).
	ReplayMessages int
	// RecoverTimeout bounds the wait for recovery and for the drain.
	RecoverTimeout time.Duration
	Partitions     int
	Seed           uint64
	// Keep keeps the topics and the ClickHouse database.
	Keep bool
	Log  *slog.Logger
}

// DefaultConfig is the full suite's configuration (./task chaos).
func DefaultConfig() Config {
	return Config{
		Brokers: []string{"127.0.0.1:19092"}, RedisAddr: "127.0.0.1:16379", ClickHouseAddr: "127.0.0.1:19000",
		ServicesScript: "scripts/services.sh", BinDir: "bin", Faults: FaultNames(),
		Rate: 50, Malformed: 0.01, Deadline: 5 * time.Second, Warmup: 3 * time.Second, Settle: 5 * time.Second,
		ClassifierDown: 3 * time.Second, KafkaDown: 3 * time.Second, RedisDown: 5 * time.Second,
		ClickHouseDown: 30 * time.Second, Stall: 10 * time.Second, Overload: 20 * time.Second,
		ReplayMessages: 4000, RecoverTimeout: 2 * time.Minute, Partitions: 4, Seed: 1,
	}
}

// Outcome is what one fault did.
type Outcome struct {
	Fault string
	// Duration is how long the fault lasted (from injection until the
	// service was back, or the stall or overload ended).
	Duration time.Duration
	// Messages and Malformed are the phase's valid and invalid messages.
	Messages, Malformed int
	// Lost are valid messages without a row in events_dedup; Duplicated
	// the extra rows of messages with more than one.
	Lost, Duplicated int
	// Republished are events published more than once on the events
	// topic (at-least-once; the view absorbs them). Informational.
	Republished int
	// DeadLettersOK: every malformed message has a dead letter with its
	// reason, and no valid message was dead-lettered.
	DeadLettersOK bool
	// Recovered is from the end of the fault until every message sent
	// before it had its event (the backlog gone); negative if never.
	Recovered time.Duration
	// LagZero: with the stream paused, ingest's and the sink's groups
	// committed everything.
	LagZero bool
	// P99During and P99After are the live p99 of the messages sent during
	// the fault and after recovery; DeadlineDuring says which one must be
	// within the deadline.
	P99During, P99After time.Duration
	DeadlineDuring      bool
	DeadlineKept        bool
	// Problems says what went wrong, in words.
	Problems []string
}

// Survived is true when the fault cost nothing the product promises.
func (o Outcome) Survived() bool {
	return o.Lost == 0 && o.Duplicated == 0 && o.DeadLettersOK && o.Recovered >= 0 && o.LagZero && o.DeadlineKept && len(o.Problems) == 0
}

// Report is the suite's result.
type Report struct {
	Baseline *Outcome
	Outcomes []Outcome
	Deadline time.Duration
}

// Totals are the last line's figures.
func (r Report) Totals() (faults, survived, lost, duplicated, deadLettersOK int) {
	for _, o := range r.Outcomes {
		faults++
		if o.Survived() {
			survived++
		}
		lost += o.Lost
		duplicated += o.Duplicated
		if o.DeadLettersOK {
			deadLettersOK++
		}
	}
	return
}

// Line is the report's last line.
func (r Report) Line() string {
	f, s, l, d, ok := r.Totals()
	return fmt.Sprintf("faults=%d survived=%d lost=%d duplicated=%d dead_letters_ok=%d", f, s, l, d, ok)
}

// OK is true when every fault was survived.
func (r Report) OK() bool {
	f, s, _, _, _ := r.Totals()
	return f > 0 && f == s
}

// Table writes the faults and their outcomes as a table.
func (r Report) Table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-18s %9s %8s %5s %10s %11s %14s %8s %12s %11s %s\n", "fault", "duration", "messages", "lost", "duplicated",
		"dead_letters", "lag_recovered", "lag_zero", "p99_during", "p99_after", "result")
	row := func(o Outcome) {
		rec := "never"
		if o.Recovered >= 0 {
			rec = fmt.Sprintf("%.1fs", o.Recovered.Seconds())
		}
		during, after := ms(o.P99During), ms(o.P99After)
		if o.DeadlineDuring {
			during += "*"
		} else {
			after += "*"
		}
		result := "survived"
		if !o.Survived() {
			result = "FAILED: " + strings.Join(o.Problems, "; ")
		}
		fmt.Fprintf(&b, "%-18s %8.1fs %8d %5d %10d %11s %14s %8s %12s %11s %s\n", o.Fault, o.Duration.Seconds(), o.Messages, o.Lost, o.Duplicated,
			yesNo(o.DeadLettersOK), rec, yesNo(o.LagZero), during, after, result)
	}
	if r.Baseline != nil {
		row(*r.Baseline)
	}
	for _, o := range r.Outcomes {
		row(o)
	}
	fmt.Fprintf(&b, "* the p99 that must be within the live deadline (%s); messages: valid ones (plus 1%% malformed)\n", r.Deadline)
	return b.String()
}

func ms(d time.Duration) string {
	if d < 0 {
		return "n/a"
	}
	return fmt.Sprintf("%dms", d.Milliseconds())
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

// suite is one run: names, components and observers.
type suite struct {
	cfg                          Config
	log                          *slog.Logger
	name                         string
	input, events, dlq, replayDL string
	ingestGroup, sinkGroup       string
	workDir                      string

	classifierAddr string
	proxy          *StallProxy
	classifier     *process
	ingest         *process
	sink           *process

	admin   *kafka.Client
	ch      driver.Conn
	traffic *traffic
	evlog   *eventLog
	dead    *deadLetters

	// replay is the overload fault's replay run, when one was started.
	replay *replayRun
}

// Run runs the suite and returns its report; an error means the suite
// itself could not run (a fault the product did not survive is in the
// report, not an error).
func Run(ctx context.Context, cfg Config) (rep Report, err error) {
	if err := cfg.validate(); err != nil {
		return rep, err
	}
	log := cfg.Log
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	var suffix [3]byte
	_, _ = rand.Read(suffix[:])
	name := "chaos_" + hex.EncodeToString(suffix[:])
	s := &suite{cfg: cfg, log: log, name: name, input: name + "_in", events: name + "_events", dlq: name + "_dlq",
		replayDL: name + "_replay_dlq", ingestGroup: name + "_ingest", sinkGroup: name + "_sink", evlog: newEventLog(), dead: newDeadLetters()}
	rep.Deadline = cfg.Deadline

	s.workDir = cfg.WorkDir
	tempWork := s.workDir == ""
	if tempWork {
		if s.workDir, err = os.MkdirTemp("", "emoflow-chaos-"); err != nil {
			return rep, fmt.Errorf("work folder: %w", err)
		}
	} else if err := os.MkdirAll(s.workDir, 0o755); err != nil {
		return rep, fmt.Errorf("work folder: %w", err)
	}
	defer func() {
		if tempWork && err == nil && rep.OK() {
			os.RemoveAll(s.workDir)
		} else {
			log.Info("logs of the components kept", "dir", s.workDir)
		}
	}()

	runCtx, cancel := context.WithCancel(ctx)
	var background sync.WaitGroup
	defer func() {
		cancel()
		background.Wait()
		err = errors.Join(err, s.cleanUp())
	}()
	if err := s.start(runCtx, &background); err != nil {
		return rep, err
	}

	// A fault-free phase first: the pipeline works and its figures are
	// the baseline.
	base := s.phase(runCtx, 0, fault{name: "none (baseline)", inject: func(context.Context, *suite) error { return nil }})
	rep.Baseline = &base
	log.Info("baseline", "messages", base.Messages, "p99", base.P99During, "survived", base.Survived())
	for i, name := range cfg.Faults {
		f := faults[name]
		o := s.phase(runCtx, i+1, f)
		log.Info("fault done", "fault", name, "survived", o.Survived(), "lost", o.Lost, "duplicated", o.Duplicated, "problems", o.Problems)
		rep.Outcomes = append(rep.Outcomes, o)
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
	}
	return rep, nil
}

func (c *Config) validate() error {
	var errs []error
	for _, f := range c.Faults {
		if _, ok := faults[f]; !ok {
			errs = append(errs, fmt.Errorf("unknown fault %q (known: %s)", f, strings.Join(FaultNames(), ", ")))
		}
	}
	if len(c.Faults) == 0 {
		errs = append(errs, errors.New("no faults"))
	}
	if len(c.Brokers) == 0 || c.RedisAddr == "" || c.ClickHouseAddr == "" {
		errs = append(errs, errors.New("the Kafka, Redis and ClickHouse addresses are required"))
	}
	if c.Rate <= 0 || c.Malformed < 0 || c.Malformed > 0.5 || c.Partitions <= 0 {
		errs = append(errs, errors.New("the rate and partitions must be positive and the malformed share within 0..0.5"))
	}
	for _, d := range []time.Duration{c.Deadline, c.Warmup, c.Settle, c.RecoverTimeout} {
		if d <= 0 {
			errs = append(errs, errors.New("the deadline, warm-up, settle and recovery timeout must be positive"))
			break
		}
	}
	bins := []string{"classifier", "ingest", "sink"}
	if slices.Contains(c.Faults, "overload-replay") {
		bins = append(bins, "emoctl")
	}
	for _, b := range bins {
		if _, err := os.Stat(filepath.Join(c.BinDir, b)); err != nil {
			errs = append(errs, fmt.Errorf("binary %s: %w (build them with go build -o bin/ ./cmd/...)", b, err))
		}
	}
	if _, err := os.Stat(c.ServicesScript); err != nil {
		errs = append(errs, fmt.Errorf("services script: %w", err))
	}
	return errors.Join(errs...)
}

// start writes the model if needed, starts classifier, proxy, sink and
// ingest, and the observers and the stream.
func (s *suite) start(ctx context.Context, background *sync.WaitGroup) error {
	cfg := s.cfg
	modelDir := cfg.ModelDir
	if modelDir == "" {
		modelDir = filepath.Join(s.workDir, "model")
		s.log.Info("writing a tiny random model", "dir", modelDir)
		if err := writeTinyModel(ctx, modelDir); err != nil {
			return err
		}
	}
	var err error
	if s.classifierAddr, err = stablePort(); err != nil {
		return err
	}
	ingestAddr, err := freePort()
	if err != nil {
		return err
	}
	sinkAddr, err := freePort()
	if err != nil {
		return err
	}
	if s.proxy, err = NewStallProxy("127.0.0.1:0", s.classifierAddr); err != nil {
		return err
	}
	brokers := strings.Join(cfg.Brokers, ",")
	s.classifier = &process{name: "classifier", bin: filepath.Join(cfg.BinDir, "classifier"), httpAddr: s.classifierAddr,
		logPath: filepath.Join(s.workDir, "classifier.log"),
		args:    []string{"-http-addr=" + s.classifierAddr, "-model-dir=" + modelDir, "-shutdown-timeout=20s"}}
	s.sink = &process{name: "sink", bin: filepath.Join(cfg.BinDir, "sink"), httpAddr: sinkAddr, logPath: filepath.Join(s.workDir, "sink.log"),
		args: []string{"-http-addr=" + sinkAddr, "-kafka-brokers=" + brokers, "-events-topic=" + s.events, "-dead-letter-topic=" + s.events + "_dlq",
			"-group-id=" + s.sinkGroup, "-clickhouse-addr=" + cfg.ClickHouseAddr, "-clickhouse-database=" + s.name,
			"-flush-interval=200ms", fmt.Sprintf("-topic-partitions=%d", cfg.Partitions), "-shutdown-timeout=40s"}}
	s.ingest = &process{name: "ingest", bin: filepath.Join(cfg.BinDir, "ingest"), httpAddr: ingestAddr, logPath: filepath.Join(s.workDir, "ingest.log"),
		args: []string{"-http-addr=" + ingestAddr, "-kafka-brokers=" + brokers, "-input-topic=" + s.input, "-events-topic=" + s.events,
			"-dead-letter-topic=" + s.dlq, "-group-id=" + s.ingestGroup, "-redis-addr=" + cfg.RedisAddr, "-redis-key-prefix=" + s.name + ":",
			"-classifier-urls=http://" + s.proxy.Addr(), fmt.Sprintf("-topic-partitions=%d", cfg.Partitions),
			"-classify-timeout=" + cfg.Deadline.String(), "-shutdown-timeout=40s"}}
	for _, p := range []*process{s.classifier, s.sink, s.ingest} {
		if err := p.start(); err != nil {
			return err
		}
		if err := p.waitReady(ctx, 3*time.Minute); err != nil {
			return err
		}
		s.log.Info("started", "component", p.name, "addr", p.httpAddr)
	}

	s.admin = &kafka.Client{Addr: kafka.TCP(cfg.Brokers...), Timeout: 10 * time.Second}
	if s.ch, err = clickhouse.Open(&clickhouse.Options{Addr: []string{cfg.ClickHouseAddr}, DialTimeout: 5 * time.Second, ReadTimeout: 30 * time.Second}); err != nil {
		return fmt.Errorf("clickhouse: %w", err)
	}
	for _, w := range []*topicWatcher{
		{brokers: cfg.Brokers, topic: s.events, partitions: cfg.Partitions, log: s.log, handle: s.evlog.add},
		{brokers: cfg.Brokers, topic: s.dlq, partitions: cfg.Partitions, log: s.log, handle: s.dead.add},
	} {
		background.Go(func() { w.run(ctx) })
	}
	writer := &kafka.Writer{Addr: kafka.TCP(cfg.Brokers...), Topic: s.input, Balancer: &kafka.Hash{}, RequiredAcks: kafka.RequireAll,
		BatchTimeout: 5 * time.Millisecond, BatchSize: 500, MaxAttempts: 3, WriteBackoffMax: 500 * time.Millisecond}
	s.traffic = newTraffic(s.name, writer, cfg.Rate, cfg.Malformed, cfg.Seed, s.log)
	background.Go(func() {
		s.traffic.run(ctx)
		writer.Close()
	})
	return nil
}

// writeTinyModel writes a small random ChatGLM3-architecture checkpoint
// with a real SentencePiece tokenizer trained on the suite's phrases: the
// classifier answers fast and labels mean nothing (identity matters here).
func writeTinyModel(ctx context.Context, dir string) error {
	if err := randmodel.TrainTokenizer(ctx, dir, TokenizerLines(), 600); err != nil {
		return err
	}
	tok, err := tokenizer.Load(dir, tokenizer.Options{})
	if err != nil {
		return fmt.Errorf("tiny model: the trained tokenizer does not load: %w", err)
	}
	spec := randmodel.Spec{Arch: "chatglm2", Layers: 2, Hidden: 64, Heads: 4, Groups: 2, FFN: 128,
		Vocab: (tok.VocabSize() + 63) / 64 * 64, Seed: 3, Std: 0.3, EOSIDs: tok.StopIDs(), Name: "emoflow/chaos-tiny-random"}
	return randmodel.Write(dir, spec)
}

// cleanUp stops the components (ingest first), makes sure every service
// is up again, and removes the topics and the database unless kept.
func (s *suite) cleanUp() error {
	var errs []error
	if s.replay != nil {
		_ = s.replay.proc.stop(30 * time.Second)
	}
	for _, p := range []*process{s.ingest, s.sink, s.classifier} {
		if p != nil && p.cmd != nil {
			if err := p.stop(60 * time.Second); err != nil && p.running() {
				errs = append(errs, err)
			}
		}
	}
	if s.proxy != nil {
		_ = s.proxy.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := services(ctx, s.cfg.ServicesScript, "start"); err != nil {
		errs = append(errs, fmt.Errorf("bring the services back: %w", err))
	}
	if !s.cfg.Keep {
		if s.ch != nil {
			if err := s.ch.Exec(ctx, "DROP DATABASE IF EXISTS "+s.name); err != nil {
				s.log.Warn("drop the database", "err", err)
			}
		}
		if s.admin != nil {
			topics := []string{s.input, s.events, s.dlq, s.events + "_dlq", s.replayDL}
			if _, err := s.admin.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: topics}); err != nil {
				s.log.Warn("delete the topics", "err", err)
			}
		}
	}
	if s.ch != nil {
		s.ch.Close()
	}
	return errors.Join(errs...)
}

// phase runs one fault between two quiet points and measures it.
func (s *suite) phase(ctx context.Context, n int, f fault) Outcome {
	cfg := s.cfg
	o := Outcome{Fault: f.name, DeadlineDuring: f.offLivePath, P99During: -1, P99After: -1, Recovered: -1}
	problem := func(format string, args ...any) { o.Problems = append(o.Problems, fmt.Sprintf(format, args...)) }
	s.traffic.setPhase(n)
	s.traffic.resume()
	defer s.traffic.pause()
	if err := sleepCtx(ctx, cfg.Warmup); err != nil {
		problem("interrupted")
		return o
	}
	s.log.Info("injecting", "fault", f.name)
	faultStart := time.Now()
	if err := f.inject(ctx, s); err != nil {
		problem("injecting the fault: %v", err)
	}
	faultEnd := time.Now()
	o.Duration = faultEnd.Sub(faultStart)

	// Recovery: every valid message sent before the fault's end has its
	// event.
	good, _ := s.traffic.phaseMessages(n)
	before := map[string]time.Time{}
	for id, at := range good {
		if at.Before(faultEnd) {
			before[id] = at
		}
	}
	recovered := waitFor(ctx, cfg.RecoverTimeout, func() bool { return len(s.evlog.latencies(before, time.Time{}, faultEnd)) == len(before) })
	afterStart := time.Now()
	if recovered {
		o.Recovered = afterStart.Sub(faultEnd)
	} else {
		problem("messages sent before the fault's end still without events after %s", cfg.RecoverTimeout)
	}
	_ = sleepCtx(ctx, cfg.Settle)
	s.traffic.pause()
	afterEnd := time.Now()

	// Drain: the stream is paused; wait until everything is written,
	// committed and stored.
	good, bad := s.traffic.phaseMessages(n)
	o.Messages, o.Malformed = len(good), len(bad)
	prefix := fmt.Sprintf("%s-p%d-", s.name, n)
	var stored map[string]int
	var lagErr, storeErr error
	var ingestLag, sinkLag int64
	drained := waitFor(ctx, cfg.RecoverTimeout, func() bool {
		if s.traffic.backlog() > 0 {
			return false
		}
		if s.replay != nil && s.replay.proc.running() {
			return false
		}
		if ingestLag, lagErr = groupLag(ctx, s.admin, s.ingestGroup, s.input, cfg.Partitions); lagErr != nil || ingestLag > 0 {
			return false
		}
		if sinkLag, lagErr = groupLag(ctx, s.admin, s.sinkGroup, s.events, cfg.Partitions); lagErr != nil || sinkLag > 0 {
			return false
		}
		if stored, storeErr = storedCounts(ctx, s.ch, s.name, contract.LiveRun, prefix); storeErr != nil {
			return false
		}
		return len(stored) >= len(good)
	})
	o.LagZero = ingestLag == 0 && sinkLag == 0 && lagErr == nil
	if !drained {
		problem("not drained within %s (ingest lag %d, sink lag %d, producer backlog %d, lag error %v)", cfg.RecoverTimeout,
			ingestLag, sinkLag, s.traffic.backlog(), lagErr)
		if stored, storeErr = storedCounts(ctx, s.ch, s.name, contract.LiveRun, prefix); storeErr != nil {
			problem("%v", storeErr)
		}
	}
	for id := range good {
		switch n := stored[id]; {
		case n == 0:
			o.Lost++
		case n > 1:
			o.Duplicated += n - 1
		}
	}
	for id, n := range stored {
		if _, ok := good[id]; !ok {
			o.Duplicated += n // a row for a message never sent (or a malformed one)
			problem("row for unexpected message %s", id)
		}
	}
	if o.Lost > 0 {
		problem("%d messages lost", o.Lost)
	}
	if o.Duplicated > 0 {
		problem("%d duplicate rows", o.Duplicated)
	}
	o.Republished = s.evlog.republished(good)

	missing, wrong, examples := s.dead.check(bad)
	unexpected := s.dead.unexpected(good)
	o.DeadLettersOK = missing == 0 && wrong == 0 && len(unexpected) == 0
	if !o.DeadLettersOK {
		problem("dead letters: %d missing, %d with a wrong reason, %d for valid messages (%s)", missing, wrong, len(unexpected),
			strings.Join(append(examples, unexpected[:min(len(unexpected), 3)]...), ", "))
	}

	o.P99During = p99(s.evlog.latencies(good, faultStart, faultEnd))
	o.P99After = p99(s.evlog.latencies(good, afterStart, afterEnd))
	checked := o.P99After
	if f.offLivePath {
		checked = o.P99During
	}
	o.DeadlineKept = checked >= 0 && checked <= cfg.Deadline
	if !o.DeadlineKept {
		problem("live p99 %s over the deadline %s", ms(checked), cfg.Deadline)
	}
	if f.check != nil {
		if err := f.check(ctx, s, &o); err != nil {
			problem("%v", err)
		}
	}
	return o
}

// p99 is the 99th percentile (nearest rank) of ds; -1 when empty.
func p99(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return -1
	}
	slices.Sort(ds)
	i := (len(ds)*99 + 99) / 100
	return ds[min(max(i-1, 0), len(ds)-1)]
}

// waitFor polls cond every 200 ms until it holds (true) or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) || sleepCtx(ctx, 200*time.Millisecond) != nil {
			return false
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
