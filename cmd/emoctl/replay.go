package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/emoflow/emoflow/internal/ingest"
	"github.com/emoflow/emoflow/internal/replay"
	"github.com/emoflow/emoflow/internal/secure"
	"github.com/emoflow/emoflow/internal/service"
)

// streams are where a command writes and how it reads the EMOFLOW_*
// environment; tests replace them.
type streams struct {
	out, err io.Writer
	lookup   func(string) (string, bool)
}

func osStreams() streams { return streams{out: os.Stdout, err: os.Stderr, lookup: service.LookupEnv} }

func replayCommand(ctx context.Context, args []string) error {
	return runReplay(ctx, args, osStreams())
}

// runReplay starts a replay run, or resumes it: ingest runs in-process
// (internal/replay) in the run's own consumer group over the run's range,
// with -priority replay, the run id and one adapter version for every
// message. Flags after "--" go to ingest.
func runReplay(ctx context.Context, args []string, s streams) error {
	own, ingestArgs := args, []string(nil)
	if i := slices.Index(args, "--"); i >= 0 {
		own, ingestArgs = args[:i], args[i+1:]
	}
	fs := flag.NewFlagSet("replay", flag.ContinueOnError)
	fs.SetOutput(s.err)
	brokers := fs.String("kafka-brokers", "127.0.0.1:19092", "Kafka bootstrap brokers, comma-separated")
	classifiers := fs.String("classifier-urls", "http://127.0.0.1:8080", "base URLs of the classifier workers, comma-separated")
	// The connections' security: used by the replay itself and passed on
	// to its ingest.
	var kafkaSec secure.Kafka
	kafkaSec.Register(fs)
	var classifierSec secure.ClassifierClient
	classifierSec.Register(fs)
	topic := fs.String("input-topic", "chat.messages", "topic to replay")
	runID := fs.String("run-id", "", "the run's id, written into every event (required; the same id resumes the run)")
	adapter := fs.String("adapter", "", "adapter version to classify every message with, id@version (required)")
	from := fs.String("from", "", "replay from the first message with a timestamp at or after this time (RFC 3339); default: the first offsets")
	to := fs.String("to", "", "replay up to the first message with a timestamp at or after this time, excluded (RFC 3339); default: the end offsets at the run's first start")
	startOffsets := fs.String("start-offsets", "", "first offsets to replay, partition:offset comma-separated, instead of -from; only the partitions listed are replayed")
	endOffsets := fs.String("end-offsets", "", "offsets to stop before, partition:offset comma-separated, instead of -to; only the partitions listed are replayed")
	httpAddr := fs.String("ingest-http-addr", "127.0.0.1:0", "listen address of the replay's ingest (/metrics, /readyz)")
	logFile := fs.String("log-file", "", "append ingest's log to this file (default: standard error)")
	every := fs.Duration("progress-interval", time.Second, "how often the progress is read and shown")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: emoctl replay -run-id ID -adapter ID@VERSION [flags] [-- ingest flags]\n\n")
		fs.PrintDefaults()
		fmt.Fprintf(fs.Output(), "\nIngest's other flags (-redis-addr, -events-topic, -batch-size, ...) come from EMOFLOW_* variables or after --.\n")
	}
	if err := service.ParseConfig(fs, own, s.lookup); err != nil {
		return err
	}
	req := replay.Request{RunID: *runID, Topic: *topic, Adapter: *adapter}
	var errs []error
	if *runID == "" || *adapter == "" {
		errs = append(errs, errors.New("-run-id and -adapter are required"))
	}
	parseTime := func(name, v string) time.Time {
		if v == "" {
			return time.Time{}
		}
		t, err := time.Parse(time.RFC3339, v)
		if err != nil {
			errs = append(errs, fmt.Errorf("-%s: %w", name, err))
		}
		return t
	}
	req.From, req.To = parseTime("from", *from), parseTime("to", *to)
	parseOffsets := func(name, v string) map[int]int64 {
		if v == "" {
			return nil
		}
		o, err := ingest.ParsePartitionOffsets(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("-%s: %w", name, err))
		}
		return o
	}
	req.StartOffsets, req.EndOffsets = parseOffsets("start-offsets", *startOffsets), parseOffsets("end-offsets", *endOffsets)
	if *runID != "" {
		if err := replay.CheckRunID(*runID); err != nil {
			errs = append(errs, fmt.Errorf("-run-id: %w", err))
		}
	}
	if *adapter != "" {
		if err := replay.CheckAdapterVersion(*adapter); err != nil {
			errs = append(errs, fmt.Errorf("-adapter: %w", err))
		}
	}
	if *every <= 0 {
		errs = append(errs, errors.New("-progress-interval must be positive"))
	}
	brokerList, classifierList := splitList(*brokers), splitList(*classifiers)
	if len(brokerList) == 0 || len(classifierList) == 0 {
		errs = append(errs, errors.New("-kafka-brokers and -classifier-urls must not be empty"))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	kconn, err := kafkaSec.Connect()
	if err != nil {
		return err
	}
	// The replay's security flags go to its ingest first, so that flags
	// after -- can still override them.
	ingestArgs = append(append(kafkaSec.Args(), classifierSec.Args()...), ingestArgs...)
	opts := replay.RunOptions{Brokers: brokerList, ClassifierURLs: classifierList, HTTPAddr: *httpAddr,
		IngestArgs: ingestArgs, Lookup: s.lookup, Log: s.err, ProgressEvery: *every}
	if _, err := replay.IngestArgs(opts); err != nil {
		return err
	}

	if err := replay.CheckAdapterServed(ctx, classifierList, &classifierSec, *adapter); err != nil {
		return err
	}
	opts.Admin = kconn.Client(brokerList, 30*time.Second)
	pctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	plan, err := replay.Prepare(pctx, opts.Admin, req)
	cancel()
	if err != nil {
		return err
	}
	opts.Plan = plan
	verb := "starting"
	if plan.Resumed {
		verb = "resuming (from the group's committed offsets)"
	}
	fmt.Fprintf(s.err, "replay %s: %s; topic %s, adapter %s, %d messages in partitions %s (start %s, end %s), consumer group %s\n",
		plan.RunID, verb, plan.Topic, plan.Adapter, plan.Total(), joinInts(plan.Partitions()),
		replay.FormatOffsets(plan.Start), replay.FormatOffsets(plan.End), replay.GroupID(plan.RunID))

	if *logFile != "" {
		f, err := os.OpenFile(*logFile, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return fmt.Errorf("-log-file: %w", err)
		}
		defer f.Close()
		opts.Log = f
	}
	printer := replay.NewPrinter(s.err, isTerminal(s.err), 10*time.Second)
	opts.OnProgress = func(p replay.Progress) { printer.Print(time.Now(), p) }
	err = replay.Run(ctx, opts)
	printer.Done()
	if err != nil {
		return fmt.Errorf("run %s: %w", plan.RunID, err)
	}
	fmt.Fprintf(s.err, "replay %s complete: %d messages replayed with %s; every event carries run_id %q.\n"+
		"Once the sink has stored them: emoctl eval -run %s (labelled data), or emoctl compare -a OTHER -b %s\n",
		plan.RunID, plan.Total(), plan.Adapter, plan.RunID, plan.RunID, plan.RunID)
	return nil
}

// isTerminal reports whether w is a terminal (the progress bar redraws its
// line there, and writes a line every few seconds elsewhere).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func joinInts(xs []int) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = fmt.Sprint(x)
	}
	return strings.Join(parts, ",")
}
