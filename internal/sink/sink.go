// Package sink owns the sink binary: it consumes emotion events from the
// events topic with a Kafka consumer group, stores them in ClickHouse in
// batches, and commits their offsets only after the batch is stored, so
// every event is stored at least once; the ClickHouse tables and views it
// creates (by versioned migrations, at start-up) deduplicate re-inserted
// events, so dashboards see each one exactly once. Malformed events go to a
// dead-letter topic. README.md in this folder documents the schema and how
// to query it.
package sink

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/secure"
	"github.com/emoflow/emoflow/internal/service"
	"github.com/emoflow/emoflow/internal/stage"
)

// kafkaTimeout bounds each dead-letter write, offset commit and topic
// creation request.
const kafkaTimeout = 10 * time.Second

// config is the sink's configuration; every field is a flag (see
// RegisterFlags) and an EMOFLOW_* environment variable.
type config struct {
	stage.ConsumerFlags

	ClickHouseAddr     string
	ClickHouseDatabase string
	ClickHouseCluster  string
	// ClickHouse is the user, password and TLS; Kafka the brokers' TLS and
	// SASL (internal/secure).
	ClickHouse secure.ClickHouse
	Kafka      secure.Kafka

	IdleFlush      time.Duration
	InsertTimeout  time.Duration
	HealthInterval time.Duration
}

// Component is the sink as a service.Component.
type Component struct {
	cfg config
}

// RegisterFlags declares the sink's flags.
func (c *Component) RegisterFlags(fs *flag.FlagSet) {
	c.cfg.ConsumerFlags.Register(fs, stage.ConsumerDefaults{
		Role: "sink", EventsUse: "to store", GroupID: "emoflow-sink",
		DeadLetterTopic: "emotion.events.dead-letter", DeadLetterUse: "malformed events", Topics: "events and dead-letter",
		BatchSize: 5000, BatchUse: "most events per ClickHouse insert", FlushInterval: time.Second, DrainUse: "store and commit",
	})
	fs.StringVar(&c.cfg.ClickHouseAddr, "clickhouse-addr", "127.0.0.1:19000", "ClickHouse native-protocol addresses, comma-separated")
	fs.StringVar(&c.cfg.ClickHouseDatabase, "clickhouse-database", "emoflow", "ClickHouse database of the sink's tables; created if missing")
	fs.StringVar(&c.cfg.ClickHouseCluster, "clickhouse-cluster", "", "ClickHouse cluster (remote_servers) to create the schema on: replicated tables ON CLUSTER with Distributed tables in front; empty for a single server")
	c.cfg.ClickHouse.Register(fs)
	c.cfg.Kafka.Register(fs)
	fs.DurationVar(&c.cfg.IdleFlush, "idle-flush", 250*time.Millisecond, "store a batch before -flush-interval once the sink has caught up (its newest event was its partition's last) and nothing has arrived for this long; 0: never")
	fs.DurationVar(&c.cfg.InsertTimeout, "insert-timeout", 30*time.Second, "bound on each ClickHouse insert attempt and statement")
	fs.DurationVar(&c.cfg.HealthInterval, "health-interval", 5*time.Second, "how often ClickHouse is pinged for /readyz")
}

func (cfg *config) validate() error {
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	cfg.ConsumerFlags.Check(check)
	check(len(stage.SplitList(cfg.ClickHouseAddr)) > 0, "-clickhouse-addr is empty")
	check(identifier.MatchString(cfg.ClickHouseDatabase), "-clickhouse-database %q: want letters, digits and _, not starting with a digit", cfg.ClickHouseDatabase)
	check(cfg.ClickHouseCluster == "" || identifier.MatchString(cfg.ClickHouseCluster), "-clickhouse-cluster %q: want letters, digits and _, not starting with a digit", cfg.ClickHouseCluster)
	check(cfg.IdleFlush >= 0, "-idle-flush must not be negative")
	check(cfg.InsertTimeout > 0, "-insert-timeout must be positive")
	check(cfg.HealthInterval > 0, "-health-interval must be positive")
	return errors.Join(errs...)
}

// Run starts the sink: it waits for ClickHouse and applies the migrations,
// creates the topics if asked to, then consumes until ctx ends.
func (c *Component) Run(ctx context.Context, rt *service.Runtime) error {
	cfg := c.cfg
	if err := cfg.validate(); err != nil {
		return &service.ConfigError{Err: err}
	}
	log := rt.Logger
	m, err := newMetrics(rt.Metrics)
	if err != nil {
		return err
	}
	h := newHealth(rt.SetNotReady, m.clickhouseHealthy)
	migrations, err := schemaMigrations(cfg.ClickHouseCluster)
	if err != nil {
		return err
	}

	kconn, err := cfg.Kafka.Connect()
	if err != nil {
		return &service.ConfigError{Err: err}
	}
	chUser, chPassword, chTLS, err := cfg.ClickHouse.Credentials()
	if err != nil {
		return &service.ConfigError{Err: err}
	}
	conn, err := openClickHouse(clickhouseOptions{
		Addrs:    stage.SplitList(cfg.ClickHouseAddr),
		User:     chUser,
		Password: chPassword,
		TLS:      chTLS,
		Timeout:  cfg.InsertTimeout,
	})
	if err != nil {
		return &service.ConfigError{Err: err}
	}
	defer conn.Close()
	store := &clickhouseStore{conn: conn, database: cfg.ClickHouseDatabase, cluster: cfg.ClickHouseCluster != "", now: time.Now}

	mig := &migrator{
		conn: conn, database: cfg.ClickHouseDatabase, cluster: cfg.ClickHouseCluster,
		user: chUser, password: chPassword, timeout: cfg.InsertTimeout,
	}
	err = stage.RetryStartup(ctx, log, h.notReadyBecause, "clickhouse migrations", func(ctx context.Context) error {
		applied, changed, err := mig.Migrate(ctx, migrations)
		var unknown *unknownClusterError
		if errors.As(err, &unknown) {
			// A configuration error: retrying cannot fix it.
			return backoff.Permanent(&service.ConfigError{Err: err})
		}
		if err != nil {
			return err
		}
		h.pinged(nil)
		if len(changed) > 0 {
			log.Warn("applied migrations differ from this binary's; never edit a released migration", "versions", changed)
		}
		log.Info("clickhouse schema is current", "database", cfg.ClickHouseDatabase, "cluster", cfg.ClickHouseCluster, "applied_now", applied, "latest", len(migrations))
		return nil
	})
	if err != nil {
		return stage.StartupError(ctx, err)
	}

	brokers := stage.SplitList(cfg.KafkaBrokers)
	if cfg.CreateTopics {
		client := kconn.Client(brokers, kafkaTimeout)
		topics := []string{cfg.EventsTopic, cfg.DeadLetterTopic}
		err = stage.RetryStartup(ctx, log, h.notReadyBecause, "kafka topics", func(ctx context.Context) error {
			ctx, cancel := context.WithTimeout(ctx, kafkaTimeout)
			defer cancel()
			return stage.EnsureTopics(ctx, client, topics, cfg.TopicPartitions, cfg.TopicReplicationFactor)
		})
		if err != nil {
			return stage.StartupError(ctx, err)
		}
	}

	reader := stage.NewReader(stage.ReaderOptions{
		Brokers:        brokers,
		GroupID:        cfg.GroupID,
		Topic:          cfg.EventsTopic,
		MaxWait:        500 * time.Millisecond,
		SessionTimeout: cfg.KafkaSessionTimeout,
		Dialer:         kconn.Dialer(0),
		Log:            log,
	})
	defer stage.CloseLogged(log, "events reader", reader.Close)
	deadLetters := stage.NewWriter(stage.WriterOptions{
		Brokers:      brokers,
		Transport:    kconn.Transport(),
		Topic:        cfg.DeadLetterTopic,
		Balancer:     &kafka.Hash{},
		BatchTimeout: 10 * time.Millisecond,
		WriteTimeout: kafkaTimeout,
		Log:          log,
	})
	defer stage.CloseLogged(log, "dead-letter writer", deadLetters.Close)

	watchCtx, stopWatch := context.WithCancel(ctx)
	var watching sync.WaitGroup
	watching.Go(func() { h.watch(watchCtx, cfg.HealthInterval, cfg.HealthInterval, store.Ping) })
	defer watching.Wait()
	defer stopWatch()

	p := newPipeline(pipelineConfig{
		BatchSize:     cfg.BatchSize,
		FlushInterval: cfg.FlushInterval,
		IdleFlush:     cfg.IdleFlush,
		InsertTimeout: cfg.InsertTimeout,
		KafkaTimeout:  kafkaTimeout,
		DrainTimeout:  cfg.DrainTimeout,
		MaxEventBytes: cfg.MaxEventBytes,
		Backoff:       stage.NewRetryBackoff,
	}, reader, store, deadLetters, m, h, log)
	h.started()
	log.Info("consuming", "topic", cfg.EventsTopic, "group", cfg.GroupID, "batch_size", cfg.BatchSize, "flush_interval", cfg.FlushInterval, "idle_flush", cfg.IdleFlush)
	return p.run(ctx)
}
