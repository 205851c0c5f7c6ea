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
	KafkaBrokers           string
	EventsTopic            string
	GroupID                string
	DeadLetterTopic        string
	CreateTopics           bool
	TopicPartitions        int
	TopicReplicationFactor int
	KafkaSessionTimeout    time.Duration

	ClickHouseAddr     string
	ClickHouseDatabase string
	ClickHouseCluster  string
	// ClickHouse is the user, password and TLS; Kafka the brokers' TLS and
	// SASL (internal/secure).
	ClickHouse secure.ClickHouse
	Kafka      secure.Kafka

	BatchSize      int
	FlushInterval  time.Duration
	InsertTimeout  time.Duration
	DrainTimeout   time.Duration
	MaxEventBytes  int
	HealthInterval time.Duration
}

// Component is the sink as a service.Component.
type Component struct {
	cfg config
}

// RegisterFlags declares the sink's flags.
func (c *Component) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.cfg.KafkaBrokers, "kafka-brokers", "127.0.0.1:19092", "Kafka bootstrap brokers, comma-separated")
	fs.StringVar(&c.cfg.EventsTopic, "events-topic", "emotion.events", "topic of the emotion events to store")
	fs.StringVar(&c.cfg.GroupID, "group-id", "emoflow-sink", "Kafka consumer group of the sinks; sinks in one group share the partitions")
	fs.StringVar(&c.cfg.DeadLetterTopic, "dead-letter-topic", "emotion.events.dead-letter", "topic that receives malformed events, with a reason header")
	fs.BoolVar(&c.cfg.CreateTopics, "create-topics", true, "create the events and dead-letter topics at start-up if they are missing")
	fs.IntVar(&c.cfg.TopicPartitions, "topic-partitions", 4, "partitions of the topics the sink creates")
	fs.IntVar(&c.cfg.TopicReplicationFactor, "topic-replication-factor", 1, "replication factor of the topics the sink creates")
	fs.DurationVar(&c.cfg.KafkaSessionTimeout, "kafka-session-timeout", 10*time.Second, "consumer group session timeout: how soon the partitions of a sink that died are handed to the others (the broker allows 6s to 30m by default)")
	fs.StringVar(&c.cfg.ClickHouseAddr, "clickhouse-addr", "127.0.0.1:19000", "ClickHouse native-protocol addresses, comma-separated")
	fs.StringVar(&c.cfg.ClickHouseDatabase, "clickhouse-database", "emoflow", "ClickHouse database of the sink's tables; created if missing")
	fs.StringVar(&c.cfg.ClickHouseCluster, "clickhouse-cluster", "", "ClickHouse cluster (remote_servers) to create the schema on: replicated tables ON CLUSTER with Distributed tables in front; empty for a single server")
	c.cfg.ClickHouse.Register(fs)
	c.cfg.Kafka.Register(fs)
	fs.IntVar(&c.cfg.BatchSize, "batch-size", 5000, "most events per ClickHouse insert")
	fs.DurationVar(&c.cfg.FlushInterval, "flush-interval", time.Second, "longest wait for a batch to fill after its first event")
	fs.DurationVar(&c.cfg.InsertTimeout, "insert-timeout", 30*time.Second, "bound on each ClickHouse insert attempt and statement")
	fs.DurationVar(&c.cfg.DrainTimeout, "drain-timeout", 20*time.Second, "on shutdown, how long to keep trying to store and commit the batch in hand; keep it below -shutdown-timeout")
	fs.IntVar(&c.cfg.MaxEventBytes, "max-event-bytes", 1<<20, "largest event accepted; larger ones go to the dead-letter topic")
	fs.DurationVar(&c.cfg.HealthInterval, "health-interval", 5*time.Second, "how often ClickHouse is pinged for /readyz")
}

func (cfg *config) validate() error {
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	check(len(stage.SplitList(cfg.KafkaBrokers)) > 0, "-kafka-brokers is empty")
	check(cfg.EventsTopic != "", "-events-topic is empty")
	check(cfg.DeadLetterTopic != "", "-dead-letter-topic is empty")
	check(cfg.DeadLetterTopic != cfg.EventsTopic, "-dead-letter-topic must differ from -events-topic")
	check(cfg.GroupID != "", "-group-id is empty")
	check(cfg.TopicPartitions > 0, "-topic-partitions must be positive")
	check(cfg.TopicReplicationFactor > 0, "-topic-replication-factor must be positive")
	check(cfg.KafkaSessionTimeout > 0, "-kafka-session-timeout must be positive")
	check(len(stage.SplitList(cfg.ClickHouseAddr)) > 0, "-clickhouse-addr is empty")
	check(identifier.MatchString(cfg.ClickHouseDatabase), "-clickhouse-database %q: want letters, digits and _, not starting with a digit", cfg.ClickHouseDatabase)
	check(cfg.ClickHouseCluster == "" || identifier.MatchString(cfg.ClickHouseCluster), "-clickhouse-cluster %q: want letters, digits and _, not starting with a digit", cfg.ClickHouseCluster)
	check(cfg.BatchSize > 0, "-batch-size must be positive")
	check(cfg.FlushInterval > 0, "-flush-interval must be positive")
	check(cfg.InsertTimeout > 0, "-insert-timeout must be positive")
	check(cfg.DrainTimeout > 0, "-drain-timeout must be positive")
	check(cfg.MaxEventBytes > 0, "-max-event-bytes must be positive")
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
		InsertTimeout: cfg.InsertTimeout,
		KafkaTimeout:  kafkaTimeout,
		DrainTimeout:  cfg.DrainTimeout,
		MaxEventBytes: cfg.MaxEventBytes,
		Backoff:       stage.NewRetryBackoff,
	}, reader, store, deadLetters, m, h, log)
	h.started()
	log.Info("consuming", "topic", cfg.EventsTopic, "group", cfg.GroupID, "batch_size", cfg.BatchSize, "flush_interval", cfg.FlushInterval)
	return p.run(ctx)
}
