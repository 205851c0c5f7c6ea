package ingest

import (
	"errors"
	"flag"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/emoflow/emoflow/internal/classifyapi"
	"github.com/emoflow/emoflow/internal/contract"
	"github.com/emoflow/emoflow/internal/secure"
)

// Config is ingest's configuration; every field is a flag (see
// registerFlags) and so also an EMOFLOW_* environment variable.
type Config struct {
	Brokers         []string
	InputTopic      string
	EventsTopic     string
	DeadLetterTopic string
	GroupID         string
	// StartOffset is where a group without committed offsets starts:
	// "earliest" or "latest".
	StartOffset string
	// CreateTopics creates missing topics at start-up with TopicPartitions
	// partitions and TopicReplication replicas.
	CreateTopics     bool
	TopicPartitions  int
	TopicReplication int
	SessionTimeout   time.Duration
	RebalanceTimeout time.Duration

	ClassifierURLs   []string
	ClassifyTimeout  time.Duration
	ClassifyAttempts int
	AdaptersRefresh  time.Duration

	// RedisAddr is the cache; empty means no cache.
	RedisAddr      string
	RedisKeyPrefix string
	RedisTimeout   time.Duration
	CacheTTL       time.Duration

	BatchSize   int
	BatchWait   time.Duration
	Workers     int
	MaxInFlight int
	Limits      contract.Limits

	// RunID is contract.LiveRun for live traffic, or a replay's run id.
	RunID string
	// Priority is classifyapi.PriorityLive or classifyapi.PriorityReplay.
	Priority string
	// StopAtEnd makes ingest stop once the group has consumed and committed
	// the input topic up to the end offsets it had at start-up (replays).
	StopAtEnd bool
	// StopAtOffsets are explicit end offsets per input partition (replays
	// of a range): ingest consumes only the listed partitions, up to these
	// offsets, and stops once the group has committed them. Nil unless set.
	StopAtOffsets map[int]int64
	// Adapter, when set, replaces the adapter hint of every message ("id"
	// or "id@version"), so that a replay runs one adapter over past traffic.
	Adapter string

	EventsIncludeText  bool
	PublishLinger      time.Duration
	DeadLetterMaxBytes int
	// DeadLetterRedactTenants are the tenants whose dead letters carry no
	// value (no text): "*" stands for every tenant, including messages whose
	// tenant cannot be read. Nil redacts nothing.
	DeadLetterRedactTenants []string
	CommitInterval          time.Duration
	// DrainTimeout bounds how long in-flight work may take to finish when a
	// generation ends (rebalance or shutdown); what is not finished by then
	// is abandoned uncommitted. Keep it below the rebalance timeout and the
	// service's -shutdown-timeout.
	DrainTimeout time.Duration

	// ContextMessages is k, the most previous messages of a conversation
	// sent with each message to adapters whose template takes context (at
	// most the adapter's own k); 0 classifies every message alone.
	ContextMessages int
	// ContextWindow is the most messages kept per conversation window.
	ContextWindow int
	// ContextTTL is how long an idle conversation's window is kept.
	ContextTTL time.Duration
	// ContextKeyPrefix prefixes the windows' Redis keys.
	ContextKeyPrefix string
	// ContextLocalConversations bounds the in-memory windows (least
	// recently used conversations are dropped first).
	ContextLocalConversations int
	// Kafka, Redis and Classifier are the connections' TLS and
	// credentials (internal/secure).
	Kafka      secure.Kafka
	Redis      secure.Redis
	Classifier secure.ClassifierClient
	// kafka builds the Kafka connections; set by Run from Kafka.
	kafka *secure.KafkaConn
}

// flagValues holds the flags that are parsed into Config by validate.
type flagValues struct {
	brokers, classifierURLs, stopAtOffsets, deadLetterRedactTenants string
}

func (c *Config) registerFlags(fs *flag.FlagSet, raw *flagValues) {
	fs.StringVar(&raw.brokers, "kafka-brokers", "127.0.0.1:19092", "Kafka bootstrap brokers, comma-separated host:port")
	fs.StringVar(&c.InputTopic, "input-topic", "chat.messages", "topic of the chat messages to classify")
	fs.StringVar(&c.EventsTopic, "events-topic", "emotion.events", "topic the emotion events are published to")
	fs.StringVar(&c.DeadLetterTopic, "dead-letter-topic", "chat.messages.dead-letter", "topic invalid chat messages are forwarded to, with the reason in headers")
	fs.StringVar(&c.GroupID, "group-id", "emoflow-ingest", "Kafka consumer group id (give every replay run its own)")
	fs.StringVar(&c.StartOffset, "start-offset", "earliest", "where a consumer group without committed offsets starts: earliest or latest")
	fs.BoolVar(&c.CreateTopics, "create-topics", true, "create the input, events and dead-letter topics at start-up when missing")
	fs.IntVar(&c.TopicPartitions, "topic-partitions", 8, "partitions of the topics created at start-up")
	fs.IntVar(&c.TopicReplication, "topic-replication-factor", 1, "replication factor of the topics created at start-up")
	fs.DurationVar(&c.SessionTimeout, "session-timeout", 10*time.Second, "consumer group session timeout: how long a silent member keeps its partitions")
	fs.DurationVar(&c.RebalanceTimeout, "rebalance-timeout", 30*time.Second, "how long the group waits for members to rejoin during a rebalance")

	fs.StringVar(&raw.classifierURLs, "classifier-urls", "http://127.0.0.1:8080", "base URLs of the classifier workers, comma-separated")
	fs.DurationVar(&c.ClassifyTimeout, "classify-timeout", 10*time.Second, "deadline of one classifier call, retries included; passed to the server as deadline_ms")
	fs.IntVar(&c.ClassifyAttempts, "classify-attempts", 4, "tries of one classifier call before the batch backs off and starts over")
	fs.DurationVar(&c.AdaptersRefresh, "adapters-refresh", 30*time.Second, "how often the classifier's model and adapters (GET /v1/adapters) are refreshed")

	fs.StringVar(&c.RedisAddr, "redis-addr", "127.0.0.1:16379", "Redis address of the result cache; empty disables the cache")
	fs.StringVar(&c.RedisKeyPrefix, "redis-key-prefix", "emoflow:cls:", "prefix of the cache keys in Redis")
	fs.DurationVar(&c.RedisTimeout, "redis-timeout", 250*time.Millisecond, "timeout of one cache lookup or write; on failure the cache is skipped for a while")
	fs.DurationVar(&c.CacheTTL, "cache-ttl", 24*time.Hour, "how long a cached classification lives")

	fs.IntVar(&c.BatchSize, "batch-size", 64, "most messages per batch (cache lookup and classifier call)")
	fs.DurationVar(&c.BatchWait, "batch-wait", 10*time.Millisecond, "longest wait for a batch to fill after its first message")
	// 16 batches of 64 keep about a thousand texts queued at the classifier,
	// whose batcher then finds rows of similar length (with 8, the all-miss
	// benchmark's batches carried twice the padding).
	fs.IntVar(&c.Workers, "workers", 16, "batches processed at once")
	fs.IntVar(&c.MaxInFlight, "max-in-flight", 2048, "most messages fetched but not yet finished; fetching pauses at this number")
	fs.IntVar(&c.Limits.MaxTextBytes, "max-text-bytes", contract.DefaultLimits.MaxTextBytes, "longest accepted text in bytes after normalisation; longer messages are dead-lettered")
	fs.IntVar(&c.Limits.MaxMessageBytes, "max-message-bytes", contract.DefaultLimits.MaxMessageBytes, "largest accepted Kafka message value in bytes; larger ones are dead-lettered")

	fs.StringVar(&c.RunID, "run-id", contract.LiveRun, "run id written into the events: live, or a replay's id")
	fs.StringVar(&c.Priority, "priority", classifyapi.PriorityLive, "classifier priority class: live or replay")
	fs.BoolVar(&c.StopAtEnd, "stop-at-end", false, "exit once the input topic is consumed and committed up to its end offsets at start-up (replays)")
	fs.StringVar(&raw.stopAtOffsets, "stop-at-offsets", "", "exit once the group has committed these end offsets, partition:offset comma-separated, e.g. 0:1234,1:998 (replays of a range); unlisted partitions are not consumed")
	fs.StringVar(&c.Adapter, "adapter", "", "adapter for every message, id or id@version, replacing the messages' own hints (replays); empty: each message's hint")

	fs.BoolVar(&c.EventsIncludeText, "events-include-text", false, "include the normalised text in the emotion events")
	fs.DurationVar(&c.PublishLinger, "publish-linger", 5*time.Millisecond, "how long the Kafka producer waits to fill a batch")
	fs.IntVar(&c.DeadLetterMaxBytes, "dead-letter-max-bytes", 900<<10, "longest original value forwarded to the dead-letter topic; longer values are cut (header "+contract.HeaderValueTruncated+")")
	fs.StringVar(&raw.deadLetterRedactTenants, "dead-letter-redact-tenants", "", "tenant ids, comma-separated, whose dead letters are forwarded without their value (the text), keeping the key, headers, reason, detail and source position (header "+contract.HeaderValueRedacted+"); * redacts every tenant, including messages whose tenant cannot be read")
	fs.DurationVar(&c.CommitInterval, "commit-interval", time.Second, "how often finished offsets are committed")
	fs.DurationVar(&c.DrainTimeout, "drain-timeout", 10*time.Second, "how long in-flight work may take to finish at a rebalance or shutdown before it is abandoned uncommitted; keep it below -rebalance-timeout and -shutdown-timeout")

	fs.IntVar(&c.ContextMessages, "context-messages", 0, "previous messages of the same conversation (in partition order) sent with each message to adapters whose template takes context, at most the adapter's own; 0 classifies messages alone")
	fs.IntVar(&c.ContextWindow, "context-window", 64, "messages kept per conversation window (Redis and memory); a redelivered message gets exactly its first context while fewer than this minus -context-messages messages of its conversation were processed past the last commit")
	fs.DurationVar(&c.ContextTTL, "context-ttl", 24*time.Hour, "how long an idle conversation's window is kept in Redis")
	fs.StringVar(&c.ContextKeyPrefix, "context-key-prefix", "emoflow:ctx:", "prefix of the conversation windows' Redis keys (followed by topic:partition:tenant:conversation)")
	fs.IntVar(&c.ContextLocalConversations, "context-local-conversations", 100000, "conversation windows kept in memory, used while Redis is unavailable")
	c.Kafka.Register(fs)
	c.Redis.Register(fs)
	c.Classifier.Register(fs)
}

// validate fills the list fields from raw and checks the configuration.
func (c *Config) validate(raw flagValues) error {
	c.Brokers = splitList(raw.brokers)
	c.ClassifierURLs = splitList(raw.classifierURLs)
	c.DeadLetterRedactTenants = splitList(raw.deadLetterRedactTenants)
	var errs []error
	for _, tenant := range c.DeadLetterRedactTenants {
		if tenant != "*" && !contract.ValidTenant(tenant) {
			errs = append(errs, fmt.Errorf("-dead-letter-redact-tenants: %q is neither * nor a tenant id", tenant))
		}
	}
	if raw.stopAtOffsets != "" {
		ends, err := ParsePartitionOffsets(raw.stopAtOffsets)
		if err != nil {
			errs = append(errs, fmt.Errorf("-stop-at-offsets: %w", err))
		}
		c.StopAtOffsets = ends
	}
	check := func(ok bool, format string, args ...any) {
		if !ok {
			errs = append(errs, fmt.Errorf(format, args...))
		}
	}
	check(len(c.Brokers) > 0, "-kafka-brokers is empty")
	check(len(c.ClassifierURLs) > 0, "-classifier-urls is empty")
	check(c.InputTopic != "" && c.EventsTopic != "" && c.DeadLetterTopic != "", "-input-topic, -events-topic and -dead-letter-topic are required")
	check(c.InputTopic != c.EventsTopic && c.InputTopic != c.DeadLetterTopic, "-input-topic must differ from -events-topic and -dead-letter-topic")
	check(c.GroupID != "", "-group-id is required")
	check(c.StartOffset == "earliest" || c.StartOffset == "latest", "-start-offset %q: want earliest or latest", c.StartOffset)
	check(c.TopicPartitions > 0 && c.TopicReplication > 0, "-topic-partitions and -topic-replication-factor must be positive")
	check(c.BatchSize > 0 && c.BatchWait > 0, "-batch-size and -batch-wait must be positive")
	check(c.Workers > 0, "-workers must be positive")
	check(c.MaxInFlight >= c.BatchSize, "-max-in-flight (%d) must be at least -batch-size (%d)", c.MaxInFlight, c.BatchSize)
	check(c.Limits.MaxTextBytes > 0 && c.Limits.MaxMessageBytes > 0, "-max-text-bytes and -max-message-bytes must be positive")
	check(c.ClassifyTimeout > 0 && c.ClassifyAttempts > 0, "-classify-timeout and -classify-attempts must be positive")
	check(c.AdaptersRefresh > 0 && c.CommitInterval > 0 && c.DrainTimeout > 0 && c.PublishLinger > 0,
		"-adapters-refresh, -commit-interval, -drain-timeout and -publish-linger must be positive")
	check(c.RedisAddr == "" || (c.CacheTTL > 0 && c.RedisTimeout > 0), "-cache-ttl and -redis-timeout must be positive")
	check(c.DeadLetterMaxBytes >= 1024, "-dead-letter-max-bytes must be at least 1024")
	check(c.DrainTimeout < c.RebalanceTimeout, "-drain-timeout (%s) must be shorter than -rebalance-timeout (%s)", c.DrainTimeout, c.RebalanceTimeout)
	check(c.Priority == classifyapi.PriorityLive || c.Priority == classifyapi.PriorityReplay, "-priority %q: want live or replay", c.Priority)
	check(c.RunID != "", "-run-id is required")
	check(c.ContextMessages >= 0 && c.ContextMessages <= classifyapi.MaxContextTurns, "-context-messages must be 0-%d", classifyapi.MaxContextTurns)
	check(c.ContextMessages == 0 || c.ContextWindow >= c.ContextMessages, "-context-window (%d) must be at least -context-messages (%d)", c.ContextWindow, c.ContextMessages)
	check(c.ContextMessages == 0 || (c.ContextTTL > 0 && c.ContextLocalConversations > 0 && c.ContextKeyPrefix != ""),
		"-context-ttl, -context-local-conversations and -context-key-prefix must be set when -context-messages is")
	check(c.Priority != classifyapi.PriorityReplay || c.RunID != contract.LiveRun, "-priority replay needs a -run-id other than %q", contract.LiveRun)
	check(!c.StopAtEnd || c.StopAtOffsets == nil, "-stop-at-end and -stop-at-offsets exclude each other")
	if c.Adapter != "" {
		if _, _, err := classifyapi.ParseAdapterRef(c.Adapter); err != nil {
			errs = append(errs, fmt.Errorf("-adapter: %w", err))
		}
	}
	return errors.Join(errs...)
}

// redactsDeadLetter reports whether a dead letter of tenant must be
// forwarded without its value. known is false when the message's tenant
// could not be read; then only "*" redacts it.
func (c *Config) redactsDeadLetter(tenant string, known bool) bool {
	for _, t := range c.DeadLetterRedactTenants {
		if t == "*" || (known && t == tenant) {
			return true
		}
	}
	return false
}

// ParsePartitionOffsets parses "partition:offset" pairs separated by commas
// ("0:1234,1:998"), the form of -stop-at-offsets.
func ParsePartitionOffsets(s string) (map[int]int64, error) {
	out := map[int]int64{}
	for _, pair := range splitList(s) {
		p, o, ok := strings.Cut(pair, ":")
		partition, perr := strconv.Atoi(strings.TrimSpace(p))
		offset, oerr := strconv.ParseInt(strings.TrimSpace(o), 10, 64)
		switch {
		case !ok || perr != nil || oerr != nil:
			return nil, fmt.Errorf("%q: want partition:offset", pair)
		case partition < 0 || offset < 0:
			return nil, fmt.Errorf("%q: partition and offset must not be negative", pair)
		}
		if _, dup := out[partition]; dup {
			return nil, fmt.Errorf("partition %d listed twice", partition)
		}
		out[partition] = offset
	}
	if len(out) == 0 {
		return nil, errors.New("no partition:offset pairs")
	}
	return out, nil
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
