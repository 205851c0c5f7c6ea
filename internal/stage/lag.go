package stage

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
)

// TopicPartition names one partition of a topic.
type TopicPartition struct {
	Topic     string
	Partition int
}

// ConsumerLag keeps a stage's consumer-lag gauge (labels topic and
// partition): per partition, the high-water mark of the newest fetch minus
// the next offset to commit. Only one goroutine may use it.
type ConsumerLag struct {
	gauge *prometheus.GaugeVec
	parts map[TopicPartition]*partitionLag
}

type partitionLag struct {
	highWaterMark int64 // of the newest fetch
	next          int64 // the next offset to commit
}

// NewConsumerLag keeps gauge, which has the labels topic and partition.
func NewConsumerLag(gauge *prometheus.GaugeVec) *ConsumerLag {
	return &ConsumerLag{gauge: gauge, parts: map[TopicPartition]*partitionLag{}}
}

// Fetched notes the high-water mark that came with m.
func (c *ConsumerLag) Fetched(m kafka.Message) {
	tp := TopicPartition{m.Topic, m.Partition}
	l := c.parts[tp]
	if l == nil {
		// Until the first commit, the first offset fetched is the best guess
		// of the committed one.
		l = &partitionLag{next: m.Offset}
		c.parts[tp] = l
	}
	l.highWaterMark = m.HighWaterMark
	c.set(tp, l)
}

// Committed notes that next is the next offset to commit on tp.
func (c *ConsumerLag) Committed(tp TopicPartition, next int64) {
	if l := c.parts[tp]; l != nil && next > l.next {
		l.next = next
		c.set(tp, l)
	}
}

func (c *ConsumerLag) set(tp TopicPartition, l *partitionLag) {
	c.gauge.WithLabelValues(tp.Topic, strconv.Itoa(tp.Partition)).Set(float64(max(l.highWaterMark-l.next, 0)))
}
