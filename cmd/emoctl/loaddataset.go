package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/emoflow/emoflow/internal/datasets"
	"github.com/emoflow/emoflow/internal/replay"
	"github.com/emoflow/emoflow/internal/secure"
	"github.com/emoflow/emoflow/internal/service"
	"github.com/emoflow/emoflow/labelmaps"
)

func loadDatasetCommand(ctx context.Context, args []string) error {
	return runLoadDataset(ctx, args, osStreams())
}

// runLoadDataset publishes a labelled data set split as chat messages with
// their ground truth, to be replayed and evaluated.
func runLoadDataset(ctx context.Context, args []string, s streams) error {
	fs := flag.NewFlagSet("load-dataset", flag.ContinueOnError)
	fs.SetOutput(s.err)
	var setNames []string
	for _, set := range datasets.Sets {
		setNames = append(setNames, string(set))
	}
	brokers := fs.String("kafka-brokers", "127.0.0.1:19092", "Kafka bootstrap brokers, comma-separated")
	var kafkaSec secure.Kafka
	kafkaSec.Register(fs)
	topic := fs.String("topic", "", "topic to publish to, created when missing (required; keep data sets apart from live traffic)")
	set := fs.String("set", "", "data set: "+strings.Join(setNames, ", ")+" (required)")
	split := fs.String("split", "test", "split: train, dev or test")
	data := fs.String("data", defaultDataDir(), "shared data folder")
	labelMap := fs.String("labelmap", "", "map the ground-truth labels with this label map: "+strings.Join(labelmaps.Names(), ", ")+", or a JSON file")
	keepUnmapped := fs.Bool("keep-unmapped", false, "keep messages whose label has no counterpart under -labelmap, with their own label (default: skip them)")
	tenant := fs.String("tenant", "datasets", "tenant of the messages")
	sentAt := fs.String("sent-at", "2024-01-01T00:00:00Z", "sent_at of the split's first message (RFC 3339); message i is sent i seconds later")
	limit := fs.Int("limit", 0, "most messages to publish (the first ones); 0: all")
	partitions := fs.Int("topic-partitions", 4, "partitions of the topic when it is created")
	replication := fs.Int("topic-replication-factor", 1, "replication factor of the topic when it is created")
	timeout := fs.Duration("timeout", 5*time.Minute, "how long publishing may take")
	if err := service.ParseConfig(fs, args, s.lookup); err != nil {
		return err
	}
	var errs []error
	if *topic == "" {
		errs = append(errs, errors.New("-topic is required"))
	}
	if !slices.Contains(setNames, *set) {
		errs = append(errs, fmt.Errorf("-set %q: want one of %s", *set, strings.Join(setNames, ", ")))
	}
	if !slices.Contains([]string{"train", "dev", "test"}, *split) {
		errs = append(errs, fmt.Errorf("-split %q: want train, dev or test", *split))
	}
	at, err := time.Parse(time.RFC3339, *sentAt)
	if err != nil {
		errs = append(errs, fmt.Errorf("-sent-at: %w", err))
	}
	if *limit < 0 || *partitions <= 0 || *replication <= 0 || *timeout <= 0 {
		errs = append(errs, errors.New("-limit must not be negative; -topic-partitions, -topic-replication-factor and -timeout must be positive"))
	}
	brokerList := splitList(*brokers)
	if len(brokerList) == 0 {
		errs = append(errs, errors.New("-kafka-brokers is empty"))
	}
	var m *labelmaps.Map
	if *labelMap != "" {
		if m, err = labelmaps.Load(*labelMap); err != nil {
			errs = append(errs, fmt.Errorf("-labelmap: %w", err))
		} else if m.From != *set {
			errs = append(errs, fmt.Errorf("-labelmap %s maps %s labels, not %s", m.Name, m.From, *set))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	examples, err := datasets.Read(*data, datasets.Set(*set), *split)
	if err != nil {
		return err
	}
	msgs, st, err := replay.DatasetMessages(examples, replay.DatasetOptions{Set: datasets.Set(*set), Split: *split, Map: m,
		KeepUnmapped: *keepUnmapped, Tenant: *tenant, SentAt: at, Limit: *limit})
	if err != nil {
		return err
	}
	if len(msgs) == 0 {
		return fmt.Errorf("no message to publish from %s %s (%d examples)", *set, *split, st.Examples)
	}
	pctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	kconn, err := kafkaSec.Connect()
	if err != nil {
		return err
	}
	if err := replay.Publish(pctx, brokerList, kconn, *topic, replay.TopicOptions{Partitions: *partitions, ReplicationFactor: *replication}, msgs); err != nil {
		return err
	}
	var counts []string
	for _, l := range slices.Sorted(maps.Keys(st.Labels)) {
		counts = append(counts, fmt.Sprintf("%s %d", l, st.Labels[l]))
	}
	mapped := ""
	if m != nil {
		mapped = ", labels mapped with " + m.Name
	}
	fmt.Fprintf(s.err, "emoctl load-dataset: published %d messages of %s %s to %s%s (of %d examples: %d without a single label, %d without counterpart, %d invalid)\nlabels: %s\n",
		st.Messages, *set, *split, *topic, mapped, st.Examples, st.NoSingleLabel, st.NoCounterpart, st.Invalid, strings.Join(counts, ", "))
	return nil
}
