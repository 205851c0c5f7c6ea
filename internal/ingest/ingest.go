// Package ingest owns the ingest service: it consumes chat messages from
// Kafka as a consumer group, validates them (invalid ones go to the
// dead-letter topic with the reason), looks their classification up in the
// Redis cache, sends the misses in batches to the classifier workers,
// publishes one emotion event per valid message, and commits each input
// partition only up to where every message before has its event or dead
// letter acknowledged (at-least-once).
//
// The flow of one message: a reader per owned partition fetches it (taking
// one of -max-in-flight slots) and records it in the generation's
// OffsetTracker; the batcher groups messages (-batch-size, -batch-wait);
// a worker decodes and validates the batch, resolves adapter hints to exact
// versions (catalog, from GET /v1/adapters), looks the keys up with one
// MGET, joins texts other batches are already classifying, sends the rest
// to the classifier (one request per adapter version), writes new results
// to the cache, and publishes events and dead letters in one acknowledged
// write; then each message is marked done and its slot freed. A committer
// commits the contiguous done prefix every -commit-interval.
//
// Events of one conversation can be published out of order (a cache hit
// overtakes a miss) and, around crashes and rebalances, more than once;
// consumers order by sent_at and deduplicate on (message_id, adapter,
// run_id).
//
// Replays (emoctl replay, internal/replay) run ingest in a consumer group of
// their own with -priority replay, their run id, -adapter (one adapter
// version for every message, whatever the messages ask for) and
// -stop-at-offsets (stop once the group has committed a range's end).
//
// Ingest creates its topics at start-up (-create-topics, on by default):
// the input, events and dead-letter topics, with -topic-partitions
// partitions. Topics that exist are left as they are.
package ingest

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/classifyclient"
	"github.com/emoflow/emoflow/internal/service"
)

// Component is the ingest service (see service.Component).
type Component struct {
	cfg Config
	raw flagValues
}

// RegisterFlags declares ingest's configuration.
func (c *Component) RegisterFlags(fs *flag.FlagSet) { c.cfg.registerFlags(fs, &c.raw) }

// Run consumes and classifies until ctx ends, then stops fetching, finishes
// in-flight work within -drain-timeout and commits what is done.
func (c *Component) Run(ctx context.Context, rt *service.Runtime) error {
	cfg := c.cfg
	if err := cfg.validate(c.raw); err != nil {
		return &service.ConfigError{Err: err}
	}
	log := rt.Logger
	m := newMetrics(rt.Metrics)
	warn := newLogLimiter(10 * time.Second)

	kconn, err := cfg.Kafka.Connect()
	if err != nil {
		return &service.ConfigError{Err: err}
	}
	cfg.kafka = kconn
	clsTLS, clsToken, err := cfg.Classifier.Settings()
	if err != nil {
		return &service.ConfigError{Err: err}
	}
	client, err := classifyclient.New(classifyclient.Config{
		Endpoints:   cfg.ClassifierURLs,
		MaxAttempts: cfg.ClassifyAttempts,
		OnAttempt:   m.observeAttempt,
		TLS:         clsTLS,
		Token:       clsToken,
	})
	if err != nil {
		return &service.ConfigError{Err: err}
	}
	admin := kconn.Client(cfg.Brokers, 10*time.Second)
	if cfg.CreateTopics {
		if err := retryUntil(ctx, log, "create topics", func() error { return ensureTopics(ctx, admin, &cfg) }); err != nil {
			return nil // ctx ended during start-up: nothing to finish
		}
	}
	var ends map[int]partitionEnds
	if cfg.StopAtEnd || cfg.StopAtOffsets != nil {
		if err := retryUntil(ctx, log, "read end offsets", func() (err error) {
			ends, err = endOffsets(ctx, admin, cfg.InputTopic)
			return err
		}); err != nil {
			return nil
		}
		if cfg.StopAtOffsets != nil {
			if ends, err = explicitEnds(ends, cfg.StopAtOffsets); err != nil {
				return &service.ConfigError{Err: fmt.Errorf("-stop-at-offsets: %w", err)}
			}
			log.Info("will stop at the given end offsets", "offsets", cfg.StopAtOffsets)
		} else {
			log.Info("will stop at the input topic's current end offsets", "partitions", len(ends))
		}
	}

	var cache *resultCache
	if cfg.RedisAddr != "" {
		if cache, err = openResultCache(cfg.RedisAddr, &cfg.Redis, cfg.CacheTTL, cfg.RedisTimeout, log, m); err != nil {
			return &service.ConfigError{Err: err}
		}
		defer cache.close()
	} else {
		log.Info("no -redis-addr: running without the result cache")
	}

	bg, stopBackground := context.WithCancel(ctx)
	var background sync.WaitGroup
	defer func() {
		stopBackground()
		background.Wait()
	}()
	cat := newCatalog(client, 2*time.Second)
	if err := cat.refresh(ctx); err != nil {
		log.Warn("cannot list the classifier's adapters yet; batches wait for it", "err", err)
	}
	background.Go(func() {
		cat.run(bg, cfg.AdaptersRefresh, func(err error) {
			warn.log(log, "catalog", "refreshing the classifier's adapters failed", "err", err)
		})
	})

	pub := newPublisher(&cfg, log, warn, m)
	defer pub.close()
	proc := &processor{cfg: &cfg, client: client, catalog: cat, cache: cache, joins: newJoiner(), pub: pub, log: log, warn: warn, m: m}
	if cfg.ContextMessages > 0 {
		if proc.windows, err = newContextWindows(&cfg, cache, m); err != nil {
			return err
		}
		if cache == nil {
			log.Warn("no -redis-addr: conversation windows live in this process only; a restart or a partition moving elsewhere restarts their contexts")
		}
	}
	cons := &consumer{cfg: &cfg, proc: proc, overloadedUntil: client.OverloadedUntil, admin: admin, log: log, warn: warn, m: m, ends: ends}
	rt.SetReady()
	log.Info("consuming", "topic", cfg.InputTopic, "group", cfg.GroupID, "run_id", cfg.RunID, "priority", cfg.Priority)
	return cons.run(ctx)
}

// retryUntil calls f until it succeeds or ctx ends (then it returns ctx's
// error), logging failures.
func retryUntil(ctx context.Context, log *slog.Logger, what string, f func() error) error {
	b := newRetryBackoff()
	for {
		err := f()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		log.Warn(what+" failed; retrying", "err", err)
		if err := sleepCtx(ctx, b.NextBackOff()); err != nil {
			return err
		}
	}
}

// ensureTopics creates the input, events and dead-letter topics when they
// do not exist.
func ensureTopics(ctx context.Context, admin *kafka.Client, cfg *Config) error {
	var topics []kafka.TopicConfig
	for _, name := range []string{cfg.InputTopic, cfg.EventsTopic, cfg.DeadLetterTopic} {
		topics = append(topics, kafka.TopicConfig{Topic: name, NumPartitions: cfg.TopicPartitions, ReplicationFactor: cfg.TopicReplication})
	}
	resp, err := admin.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: topics})
	if err != nil {
		return fmt.Errorf("create topics: %w", err)
	}
	var errs []error
	for name, err := range resp.Errors {
		if err != nil && !errors.Is(err, kafka.TopicAlreadyExists) {
			errs = append(errs, fmt.Errorf("create topic %s: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// endOffsets returns the first and end offsets of every partition of topic.
func endOffsets(ctx context.Context, admin *kafka.Client, topic string) (map[int]partitionEnds, error) {
	meta, err := admin.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, fmt.Errorf("metadata of %s: %w", topic, err)
	}
	if len(meta.Topics) != 1 || meta.Topics[0].Error != nil {
		return nil, fmt.Errorf("metadata of %s: %v", topic, meta.Topics)
	}
	var reqs []kafka.OffsetRequest
	for _, p := range meta.Topics[0].Partitions {
		reqs = append(reqs, kafka.FirstOffsetOf(p.ID), kafka.LastOffsetOf(p.ID))
	}
	resp, err := admin.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("offsets of %s: %w", topic, err)
	}
	ends := map[int]partitionEnds{}
	for _, p := range resp.Topics[topic] {
		if p.Error != nil {
			return nil, fmt.Errorf("offsets of %s partition %d: %w", topic, p.Partition, p.Error)
		}
		ends[p.Partition] = partitionEnds{first: p.FirstOffset, end: p.LastOffset}
	}
	if len(ends) != len(meta.Topics[0].Partitions) {
		return nil, fmt.Errorf("offsets of %s: %d partitions answered of %d", topic, len(ends), len(meta.Topics[0].Partitions))
	}
	return ends, nil
}

// explicitEnds turns the end offsets asked for with -stop-at-offsets into
// the ranges consumed, given the topic's current offsets: a listed
// partition is consumed up to its offset (nothing of it when retention
// has already deleted that far), an unlisted one not at all. An offset
// past a partition's end, or a partition the topic lacks, is an error:
// waiting for messages that may never come would never stop.
func explicitEnds(current map[int]partitionEnds, want map[int]int64) (map[int]partitionEnds, error) {
	var errs []error
	for p, end := range want {
		cur, ok := current[p]
		switch {
		case !ok:
			errs = append(errs, fmt.Errorf("partition %d: the topic has %d partitions", p, len(current)))
		case end > cur.end:
			errs = append(errs, fmt.Errorf("partition %d: end offset %d is past the partition's end offset %d", p, end, cur.end))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	out := make(map[int]partitionEnds, len(current))
	for p, cur := range current {
		// A range whose end is not after its first offset is empty: the
		// partition is neither fetched nor waited for.
		end, ok := want[p]
		if !ok {
			end = cur.first
		}
		out[p] = partitionEnds{first: cur.first, end: end}
	}
	return out, nil
}
