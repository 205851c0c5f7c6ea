package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/emoflow/emoflow/internal/evaluate"
	"github.com/emoflow/emoflow/internal/secure"
	"github.com/emoflow/emoflow/internal/service"
	"github.com/emoflow/emoflow/labelmaps"
)

func evalCommand(ctx context.Context, args []string) error { return runEval(ctx, args, osStreams()) }

func compareCommand(ctx context.Context, args []string) error {
	return runCompare(ctx, args, osStreams())
}

// reportFlags are the flags eval and compare share: where the sink's
// tables are and how to report.
type reportFlags struct {
	addrs, database string
	clickhouse      secure.ClickHouse
	timeout         time.Duration
	format, html    string
}

func (r *reportFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&r.addrs, "clickhouse-addr", "127.0.0.1:19000", "ClickHouse native-protocol addresses, comma-separated")
	fs.StringVar(&r.database, "clickhouse-database", "emoflow", "the sink's ClickHouse database")
	r.clickhouse.Register(fs)
	fs.DurationVar(&r.timeout, "timeout", time.Minute, "bound on connecting and on each query")
	fs.StringVar(&r.format, "format", "table", "output on standard output: table or json")
	fs.StringVar(&r.html, "html", "", "also write a self-contained HTML report to this file")
}

func (r *reportFlags) check() error {
	if r.format != "table" && r.format != "json" {
		return fmt.Errorf("-format %q: want table or json", r.format)
	}
	if r.timeout <= 0 {
		return errors.New("-timeout must be positive")
	}
	return nil
}

func (r *reportFlags) open(ctx context.Context) (*evaluate.Store, error) {
	user, password, tlsCfg, err := r.clickhouse.Credentials()
	if err != nil {
		return nil, err
	}
	return evaluate.OpenStore(ctx, evaluate.StoreOptions{Addrs: splitList(r.addrs), Database: r.database,
		User: user, Password: password, TLS: tlsCfg, Timeout: r.timeout})
}

// report is what eval and compare print.
type report interface {
	WriteText(w io.Writer) error
	WriteHTML(w io.Writer) error
}

func (r *reportFlags) write(s streams, rep report) error {
	var err error
	if r.format == "json" {
		err = evaluate.WriteJSON(s.out, rep)
	} else {
		err = rep.WriteText(s.out)
	}
	if err != nil {
		return fmt.Errorf("write the report: %w", err)
	}
	if r.html == "" {
		return nil
	}
	f, err := os.Create(r.html)
	if err != nil {
		return fmt.Errorf("-html: %w", err)
	}
	if err := rep.WriteHTML(f); err != nil {
		f.Close()
		return fmt.Errorf("-html: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("-html: %w", err)
	}
	fmt.Fprintf(s.err, "wrote %s\n", r.html)
	return nil
}

// runEval scores a run against the ground truth of its messages.
func runEval(ctx context.Context, args []string, s streams) error {
	fs := flag.NewFlagSet("eval", flag.ContinueOnError)
	fs.SetOutput(s.err)
	var rf reportFlags
	rf.register(fs)
	run := fs.String("run", "", "run id to evaluate (required unless -set)")
	var off offlineEval
	fs.StringVar(&off.set, "set", "", "evaluate offline instead of a stored run: this data set's split (messages as load-dataset publishes them), scored in-process by -adapter-dir with the contexts ingest would give them")
	fs.StringVar(&off.split, "split", "test", "offline: split of -set")
	fs.StringVar(&off.dataDir, "data-dir", defaultDataDir(), "offline: shared data folder")
	fs.StringVar(&off.modelDir, "model-dir", "", "offline: base model checkpoint folder")
	fs.StringVar(&off.tokDir, "tokenizer-dir", "", "offline: tokenizer folder (default: -model-dir)")
	fs.StringVar(&off.adapterDir, "adapter-dir", "", "offline: adapter folder (with emoflow-adapter.json)")
	fs.StringVar(&off.dtype, "dtype", "bfloat16", "offline: compute dtype, bfloat16 or float32 (as the classifier serving the run)")
	fs.StringVar(&off.labelsOut, "labels-out", "", "offline: write every message's id, predicted and true label and context count to this JSON-lines file")
	fs.IntVar(&off.limit, "limit", 0, "offline: most messages (the first ones, as load-dataset -limit); 0: all")
	adapter := fs.String("adapter", "", "adapter version of the run's events to evaluate, when the run has several")
	labelMap := fs.String("labelmap", "", "map the true labels with this label map before scoring: "+strings.Join(labelmaps.Names(), ", ")+", or a JSON file")
	if err := service.ParseConfig(fs, args, s.lookup); err != nil {
		return err
	}
	switch {
	case *run == "" && off.set == "":
		return errors.New("-run is required (or -set, for an offline evaluation)")
	case *run != "" && off.set != "":
		return errors.New("-run (a stored run) and -set (offline) exclude each other")
	}
	if err := rf.check(); err != nil {
		return err
	}
	var m *labelmaps.Map
	if *labelMap != "" {
		var err error
		if m, err = labelmaps.Load(*labelMap); err != nil {
			return fmt.Errorf("-labelmap: %w", err)
		}
	}
	if off.set != "" {
		return off.run(s, m, rf.format)
	}
	store, err := rf.open(ctx)
	if err != nil {
		return err
	}
	defer store.Close()
	rep, err := evaluate.EvaluateRun(ctx, store, evaluate.RunSelector{RunID: *run, Adapter: *adapter}, m)
	if err != nil {
		return err
	}
	return rf.write(s, rep)
}

// runCompare compares two runs over the messages both labelled.
func runCompare(ctx context.Context, args []string, s streams) error {
	fs := flag.NewFlagSet("compare", flag.ContinueOnError)
	fs.SetOutput(s.err)
	var rf reportFlags
	rf.register(fs)
	a := fs.String("a", "", "run id of the first run, usually the current adapter's (required)")
	b := fs.String("b", "", "run id of the second run, usually the candidate's (required)")
	adapterA := fs.String("adapter-a", "", "adapter version of run a's events, when it has several (live traffic)")
	adapterB := fs.String("adapter-b", "", "adapter version of run b's events, when it has several")
	limit := fs.Int("limit", 20, "most changed messages to list")
	if err := service.ParseConfig(fs, args, s.lookup); err != nil {
		return err
	}
	if *a == "" || *b == "" {
		return errors.New("-a and -b are required")
	}
	if *a == *b && *adapterA == *adapterB {
		return errors.New("-a and -b name the same run")
	}
	if *limit < 0 {
		return errors.New("-limit must not be negative")
	}
	if err := rf.check(); err != nil {
		return err
	}
	store, err := rf.open(ctx)
	if err != nil {
		return err
	}
	defer store.Close()
	rep, err := evaluate.CompareRuns(ctx, store, evaluate.RunSelector{RunID: *a, Adapter: *adapterA},
		evaluate.RunSelector{RunID: *b, Adapter: *adapterB}, *limit)
	if err != nil {
		return err
	}
	return rf.write(s, rep)
}
