package replay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/classifyapi"
	"github.com/emoflow/emoflow/internal/classifyclient"
	"github.com/emoflow/emoflow/internal/ingest"
	"github.com/emoflow/emoflow/internal/secure"
	"github.com/emoflow/emoflow/internal/service"
)

// RunOptions are how a run's ingest is started.
type RunOptions struct {
	Plan           Plan
	Brokers        []string
	ClassifierURLs []string
	// HTTPAddr is ingest's /metrics and /readyz address ("127.0.0.1:0": any
	// free port).
	HTTPAddr string
	// IngestArgs are more ingest flags (batch sizes, Redis, the events
	// topic...); the flags Run sets itself (see controlledFlags) are
	// refused.
	IngestArgs []string
	// Lookup reads the EMOFLOW_* environment for ingest's other flags.
	Lookup func(string) (string, bool)
	// Log receives ingest's log.
	Log io.Writer
	// OnProgress is called every ProgressEvery while the run goes on, and
	// once at the end.
	OnProgress    func(Progress)
	ProgressEvery time.Duration
	// Admin reads the group's committed offsets for the progress.
	Admin *kafka.Client
}

// controlledFlags are the ingest flags a run sets from its plan.
var controlledFlags = []string{"kafka-brokers", "classifier-urls", "http-addr", "input-topic", "group-id", "run-id",
	"priority", "adapter", "stop-at-offsets", "stop-at-end", "start-offset"}

// ErrInterrupted is a run stopped before its end; starting it again with
// the same run id resumes it.
var ErrInterrupted = errors.New("replay interrupted before the end of its range; run it again with the same run id to resume")

// IngestArgs returns the command line of the run's ingest, or an error when
// o.IngestArgs sets a flag the run controls.
func IngestArgs(o RunOptions) ([]string, error) {
	for _, a := range o.IngestArgs {
		if !strings.HasPrefix(a, "-") {
			continue
		}
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		for _, c := range controlledFlags {
			if name == c {
				return nil, fmt.Errorf("ingest flag -%s is set by the replay itself", name)
			}
		}
	}
	p := o.Plan
	// Quiet defaults that IngestArgs can override; the run's own flags
	// last.
	args := append([]string{"-log-level=warn", "-log-format=text"}, o.IngestArgs...)
	return append(args,
		"-http-addr="+o.HTTPAddr,
		"-kafka-brokers="+strings.Join(o.Brokers, ","),
		"-classifier-urls="+strings.Join(o.ClassifierURLs, ","),
		"-input-topic="+p.Topic,
		"-group-id="+GroupID(p.RunID),
		"-run-id="+p.RunID,
		"-priority="+classifyapi.PriorityReplay,
		"-adapter="+p.Adapter,
		"-stop-at-offsets="+p.StopAtOffsets(),
		"-stop-at-end=false",
	), nil
}

// CheckAdapterServed returns an error unless a classifier at urls serves
// the exact adapter version ref: otherwise every message of the run would
// be dead-lettered as naming an unknown adapter. sec is how the classifier
// is reached (TLS, token).
func CheckAdapterServed(ctx context.Context, urls []string, sec *secure.ClassifierClient, ref string) error {
	tlsCfg, token, err := sec.Settings()
	if err != nil {
		return err
	}
	client, err := classifyclient.New(classifyclient.Config{Endpoints: urls, MaxAttempts: 2, TLS: tlsCfg, Token: token})
	if err != nil {
		return fmt.Errorf("classifier client: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	resp, err := client.Adapters(ctx)
	if err != nil {
		return fmt.Errorf("list the classifier's adapters at %s: %w", strings.Join(urls, ","), err)
	}
	var served []string
	for _, a := range resp.Adapters {
		if a.Ref() == ref {
			return nil
		}
		served = append(served, a.Ref())
	}
	return fmt.Errorf("the classifier does not serve adapter %s; it serves %s", ref, strings.Join(served, ", "))
}

// Run runs the plan's ingest in-process until the group has committed the
// plan's end offsets, or ctx ends (ErrInterrupted: the group keeps what it
// committed, and a later Run with the same plan resumes from there).
func Run(ctx context.Context, o RunOptions) error {
	args, err := IngestArgs(o)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(o.Log, nil))
	total := o.Plan.Total()
	meter := NewMeter(30 * time.Second)
	report := func() (Progress, error) {
		qctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
		defer cancel()
		n, err := Committed(qctx, o.Admin, o.Plan)
		if err != nil {
			return Progress{}, err
		}
		p := meter.Observe(time.Now(), n, total)
		if o.OnProgress != nil {
			o.OnProgress(p)
		}
		return p, nil
	}
	if p, err := report(); err != nil {
		return err
	} else if p.Complete() {
		return nil // an earlier start finished the run
	}

	done := make(chan error, 1)
	go func() {
		done <- service.Run(ctx, "ingest", &ingest.Component{}, o.HTTPAddr, args, o.Lookup, o.Log, nil)
	}()
	ticker := time.NewTicker(o.ProgressEvery)
	defer ticker.Stop()
	var runErr error
wait:
	for {
		select {
		case runErr = <-done:
			break wait
		case <-ticker.C:
			if _, err := report(); err != nil {
				log.Warn("cannot read the replay's progress", "err", err)
			}
		}
	}
	p, err := report()
	switch {
	case runErr != nil:
		return fmt.Errorf("ingest: %w", runErr)
	case err != nil:
		return err
	case ctx.Err() != nil && !p.Complete():
		return ErrInterrupted
	case !p.Complete():
		// Ingest stops when the group reaches the ends it can still reach:
		// retention deleted the rest of the range meanwhile.
		return fmt.Errorf("ingest stopped with %d of %d messages of the range committed: has retention deleted part of topic %s?", p.Done, p.Total, o.Plan.Topic)
	}
	return nil
}
