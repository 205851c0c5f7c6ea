package alerts

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/secure"
	"github.com/emoflow/emoflow/internal/service"
	"github.com/emoflow/emoflow/internal/stage"
)

// config is the alerter's configuration; every field is a flag (see
// RegisterFlags) and an EMOFLOW_* environment variable.
type config struct {
	stage.ConsumerFlags
	AlertsTopic string

	RulesFile string
	Adapter   string

	RedisAddr      string
	RedisKeyPrefix string
	StateTTL       time.Duration

	ClickHouseAddr     string
	ClickHouseDatabase string

	// Kafka, Redis and ClickHouse are the connections' TLS, users and
	// passwords (internal/secure).
	Kafka      secure.Kafka
	Redis      secure.Redis
	ClickHouse secure.ClickHouse

	ReorderWindow time.Duration
	StepTimeout   time.Duration
}

// Component is the alerter as a service.Component.
type Component struct {
	cfg config
}

// RegisterFlags declares the alerter's flags.
func (c *Component) RegisterFlags(fs *flag.FlagSet) {
	c.cfg.ConsumerFlags.Register(fs, stage.ConsumerDefaults{
		Role: "alerter", EventsUse: "the rules read", GroupID: "emoflow-alerter",
		DeadLetterTopic: "emotion.events.alerter-dead-letter", DeadLetterUse: "events the alerter cannot read", Topics: "events, alerts and dead-letter",
		BatchSize: 1000, BatchUse: "most events per batch (one state load, one publish, one insert, one state save, one commit)",
		FlushInterval: 200 * time.Millisecond, DrainUse: "finish and commit",
	})
	fs.StringVar(&c.cfg.AlertsTopic, "alerts-topic", "emotion.alerts", "topic the alerts are published to (key = conversation id)")
	fs.StringVar(&c.cfg.RulesFile, "rules", "", "escalation rules file (JSON; see the README, \"Escalation alerts\"); required")
	fs.StringVar(&c.cfg.Adapter, "adapter", "", "only events of this adapter count: \"id\" (any version) or \"id@version\"; empty: every adapter")
	fs.StringVar(&c.cfg.RedisAddr, "redis-addr", "127.0.0.1:16379", "Redis address (host:port) of the conversation states")
	fs.StringVar(&c.cfg.RedisKeyPrefix, "redis-key-prefix", "emoflow:alerts:", "prefix of the conversation state keys in Redis")
	fs.DurationVar(&c.cfg.StateTTL, "state-ttl", 24*time.Hour, "a conversation state expires this long after its last message; the conversation then starts afresh")
	fs.StringVar(&c.cfg.ClickHouseAddr, "clickhouse-addr", "127.0.0.1:19000", "ClickHouse native-protocol addresses, comma-separated")
	fs.StringVar(&c.cfg.ClickHouseDatabase, "clickhouse-database", "emoflow", "ClickHouse database whose alerts table (created by the sink's migrations) stores the alerts")
	c.cfg.Kafka.Register(fs)
	c.cfg.Redis.Register(fs)
	c.cfg.ClickHouse.Register(fs)
	fs.DurationVar(&c.cfg.ReorderWindow, "reorder-window", 2*time.Second, "how long an event waits before it is applied, so that events of earlier messages of its conversation published after it are applied first; alerts come this much later; 0: at once (such events are then skipped as late)")
	fs.DurationVar(&c.cfg.StepTimeout, "step-timeout", 10*time.Second, "bound on each attempt of a batch step (Redis, Kafka, ClickHouse); failed steps are retried")
}

func (cfg *config) validate() error {
	var errs []error
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	cfg.ConsumerFlags.Check(check)
	check(cfg.AlertsTopic != "", "-alerts-topic is empty")
	check(cfg.AlertsTopic != cfg.EventsTopic && cfg.AlertsTopic != cfg.DeadLetterTopic, "-alerts-topic must differ from -events-topic and -dead-letter-topic")
	check(cfg.RulesFile != "", "-rules is required: the escalation rules file")
	check(cfg.RedisAddr != "", "-redis-addr is empty")
	check(cfg.RedisKeyPrefix != "", "-redis-key-prefix is empty")
	check(cfg.StateTTL >= time.Second, "-state-ttl must be at least 1s")
	check(len(stage.SplitList(cfg.ClickHouseAddr)) > 0, "-clickhouse-addr is empty")
	check(databaseName.MatchString(cfg.ClickHouseDatabase), "-clickhouse-database %q: want letters, digits and _, not starting with a digit", cfg.ClickHouseDatabase)
	check(cfg.ReorderWindow >= 0, "-reorder-window must not be negative")
	check(cfg.StepTimeout > 0, "-step-timeout must be positive")
	return errors.Join(errs...)
}

// Run loads the rules, waits for Redis and the alerts table, creates the
// topics if asked to, then consumes until ctx ends.
func (c *Component) Run(ctx context.Context, rt *service.Runtime) error {
	cfg := c.cfg
	if err := cfg.validate(); err != nil {
		return &service.ConfigError{Err: err}
	}
	rules, err := LoadRules(cfg.RulesFile)
	if err != nil {
		return &service.ConfigError{Err: err}
	}
	log := rt.Logger
	m, err := newMetrics(rt.Metrics)
	if err != nil {
		return err
	}

	kconn, err := cfg.Kafka.Connect()
	if err != nil {
		return &service.ConfigError{Err: err}
	}
	redisOpts := redisOptions(cfg.RedisAddr, cfg.StepTimeout)
	if err := cfg.Redis.Apply(redisOpts); err != nil {
		return &service.ConfigError{Err: err}
	}
	rdb := redis.NewClient(redisOpts)
	defer rdb.Close()
	states := &redisStates{rdb: rdb, prefix: cfg.RedisKeyPrefix, ttl: cfg.StateTTL}
	chUser, chPassword, chTLS, err := cfg.ClickHouse.Credentials()
	if err != nil {
		return &service.ConfigError{Err: err}
	}
	conn, err := openClickHouse(stage.SplitList(cfg.ClickHouseAddr), chUser, chPassword, chTLS, cfg.StepTimeout)
	if err != nil {
		return &service.ConfigError{Err: err}
	}
	defer conn.Close()
	store := &clickhouseAlerts{conn: conn, database: cfg.ClickHouseDatabase, now: time.Now}

	startup := func(step string, op func(context.Context) error) error {
		return stage.RetryStartup(ctx, log, rt.SetNotReady, step, func(ctx context.Context) error {
			actx, cancel := context.WithTimeout(ctx, cfg.StepTimeout)
			defer cancel()
			return op(actx)
		})
	}
	if err := startup("redis", func(ctx context.Context) error { return rdb.Ping(ctx).Err() }); err != nil {
		return stage.StartupError(ctx, err)
	}
	if err := startup("clickhouse alerts table", store.tableExists); err != nil {
		return stage.StartupError(ctx, err)
	}
	brokers := stage.SplitList(cfg.KafkaBrokers)
	if cfg.CreateTopics {
		client := kconn.Client(brokers, cfg.StepTimeout)
		topics := []string{cfg.EventsTopic, cfg.AlertsTopic, cfg.DeadLetterTopic}
		if err := startup("kafka topics", func(ctx context.Context) error {
			return stage.EnsureTopics(ctx, client, topics, cfg.TopicPartitions, cfg.TopicReplicationFactor)
		}); err != nil {
			return stage.StartupError(ctx, err)
		}
	}

	reader := stage.NewReader(stage.ReaderOptions{
		Brokers:        brokers,
		GroupID:        cfg.GroupID,
		Topic:          cfg.EventsTopic,
		MaxWait:        200 * time.Millisecond,
		SessionTimeout: cfg.KafkaSessionTimeout,
		Dialer:         kconn.Dialer(0),
		Log:            log,
	})
	defer stage.CloseLogged(log, "events reader", reader.Close)
	writer := func(topic string) *kafka.Writer {
		return stage.NewWriter(stage.WriterOptions{
			Brokers:   brokers,
			Transport: kconn.Transport(),
			Topic:     topic,
			// Keyed by conversation like the events, with the Java clients'
			// partitioner.
			Balancer:     &kafka.Murmur2Balancer{},
			BatchTimeout: 5 * time.Millisecond,
			WriteTimeout: cfg.StepTimeout,
			Log:          log,
		})
	}
	alertsWriter := writer(cfg.AlertsTopic)
	defer stage.CloseLogged(log, "alerts writer", alertsWriter.Close)
	deadLetters := writer(cfg.DeadLetterTopic)
	defer stage.CloseLogged(log, "dead-letter writer", deadLetters.Close)

	var mu sync.Mutex
	failing := map[string]string{}
	health := func(step string, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			failing[step] = err.Error()
		} else {
			delete(failing, step)
		}
		var why []string
		for s, e := range failing {
			why = append(why, s+": "+e)
		}
		rt.SetNotReady(strings.Join(why, "; "))
	}
	p := newPipeline(pipelineConfig{
		BatchSize:     cfg.BatchSize,
		FlushInterval: cfg.FlushInterval,
		StepTimeout:   cfg.StepTimeout,
		DrainTimeout:  cfg.DrainTimeout,
		MaxEventBytes: cfg.MaxEventBytes,
		Adapter:       cfg.Adapter,
		ReorderWindow: cfg.ReorderWindow,
		Backoff:       stage.NewRetryBackoff,
	}, rules, reader, states, store, alertsWriter, deadLetters, m, health, log)
	rt.SetReady()
	log.Info("consuming", "topic", cfg.EventsTopic, "group", cfg.GroupID, "alerts_topic", cfg.AlertsTopic,
		"rules", rules.Names(), "adapter", cfg.Adapter, "reorder_window", cfg.ReorderWindow)
	return p.run(ctx)
}
