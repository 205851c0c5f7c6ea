package stage

import (
	"flag"
	"time"
)

// ConsumerFlags are the flags of a stage that consumes the emotion events
// in batches (the sink, the alerter): where the events come from, its
// consumer group, its dead-letter topic, the topics it creates and how it
// batches. A stage embeds them in its configuration and registers them
// with its own defaults and wording (ConsumerDefaults).
type ConsumerFlags struct {
	KafkaBrokers           string
	EventsTopic            string
	GroupID                string
	DeadLetterTopic        string
	CreateTopics           bool
	TopicPartitions        int
	TopicReplicationFactor int
	KafkaSessionTimeout    time.Duration

	BatchSize     int
	FlushInterval time.Duration
	DrainTimeout  time.Duration
	MaxEventBytes int
}

// ConsumerDefaults are what differs between the stages' ConsumerFlags.
type ConsumerDefaults struct {
	// Role names the stage in the help texts ("sink": "the sinks").
	Role string
	// EventsUse ends "topic of the emotion events ...".
	EventsUse string
	// GroupID and DeadLetterTopic are the defaults of -group-id and
	// -dead-letter-topic; DeadLetterUse ends "topic that receives ...".
	GroupID, DeadLetterTopic, DeadLetterUse string
	// Topics lists the topics -create-topics creates.
	Topics string
	// BatchSize is -batch-size's default and BatchUse its help text.
	BatchSize int
	BatchUse  string
	// FlushInterval is -flush-interval's default.
	FlushInterval time.Duration
	// DrainUse says what the stage keeps trying on shutdown ("store and
	// commit").
	DrainUse string
}

// Register declares the flags on fs.
func (f *ConsumerFlags) Register(fs *flag.FlagSet, d ConsumerDefaults) {
	fs.StringVar(&f.KafkaBrokers, "kafka-brokers", "127.0.0.1:19092", "Kafka bootstrap brokers, comma-separated")
	fs.StringVar(&f.EventsTopic, "events-topic", "emotion.events", "topic of the emotion events "+d.EventsUse)
	fs.StringVar(&f.GroupID, "group-id", d.GroupID, "Kafka consumer group of the "+d.Role+"s; "+d.Role+"s in one group share the partitions")
	fs.StringVar(&f.DeadLetterTopic, "dead-letter-topic", d.DeadLetterTopic, "topic that receives "+d.DeadLetterUse+", with a reason header")
	fs.BoolVar(&f.CreateTopics, "create-topics", true, "create the "+d.Topics+" topics at start-up if they are missing")
	fs.IntVar(&f.TopicPartitions, "topic-partitions", 4, "partitions of the topics the "+d.Role+" creates")
	fs.IntVar(&f.TopicReplicationFactor, "topic-replication-factor", 1, "replication factor of the topics the "+d.Role+" creates")
	fs.DurationVar(&f.KafkaSessionTimeout, "kafka-session-timeout", 10*time.Second, "consumer group session timeout: how soon a dead "+d.Role+"'s partitions are handed to the others (the broker allows 6s to 30m by default)")
	fs.IntVar(&f.BatchSize, "batch-size", d.BatchSize, d.BatchUse)
	fs.DurationVar(&f.FlushInterval, "flush-interval", d.FlushInterval, "longest wait for a batch to fill after its first event")
	fs.DurationVar(&f.DrainTimeout, "drain-timeout", 20*time.Second, "on shutdown, how long to keep trying to "+d.DrainUse+" the batch in hand; keep it below -shutdown-timeout")
	fs.IntVar(&f.MaxEventBytes, "max-event-bytes", 1<<20, "largest event accepted; larger ones go to the dead-letter topic")
}

// Check reports, through check, every flag whose value cannot work.
func (f *ConsumerFlags) Check(check func(ok bool, format string, args ...any)) {
	check(len(SplitList(f.KafkaBrokers)) > 0, "-kafka-brokers is empty")
	check(f.EventsTopic != "", "-events-topic is empty")
	check(f.DeadLetterTopic != "", "-dead-letter-topic is empty")
	check(f.DeadLetterTopic != f.EventsTopic, "-dead-letter-topic must differ from -events-topic")
	check(f.GroupID != "", "-group-id is empty")
	check(f.TopicPartitions > 0, "-topic-partitions must be positive")
	check(f.TopicReplicationFactor > 0, "-topic-replication-factor must be positive")
	check(f.KafkaSessionTimeout > 0, "-kafka-session-timeout must be positive")
	check(f.BatchSize > 0, "-batch-size must be positive")
	check(f.FlushInterval > 0, "-flush-interval must be positive")
	check(f.DrainTimeout > 0, "-drain-timeout must be positive")
	check(f.MaxEventBytes > 0, "-max-event-bytes must be positive")
}
