package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/contract"
)

// topicWatcher reads every partition of a topic from the beginning, with
// one reader per partition outside any consumer group (so it never
// disturbs the pipeline's groups), and hands each message to handle with
// the time it arrived.
type topicWatcher struct {
	brokers    []string
	topic      string
	partitions int
	log        *slog.Logger
	handle     func(m kafka.Message, arrived time.Time)
}

func (w *topicWatcher) run(ctx context.Context) {
	var wg sync.WaitGroup
	for p := range w.partitions {
		wg.Go(func() {
			r := kafka.NewReader(kafka.ReaderConfig{Brokers: w.brokers, Topic: w.topic, Partition: p, MinBytes: 1, MaxBytes: 16 << 20,
				MaxWait: 100 * time.Millisecond, ReadBackoffMin: 50 * time.Millisecond, ReadBackoffMax: 500 * time.Millisecond})
			defer r.Close()
			for {
				m, err := r.FetchMessage(ctx)
				if err != nil {
					if ctx.Err() != nil {
						return
					}
					w.log.Debug("watching a topic: fetch failed; retrying", "topic", w.topic, "partition", p, "err", err)
					select {
					case <-ctx.Done():
						return
					case <-time.After(200 * time.Millisecond):
					}
					continue
				}
				w.handle(m, time.Now())
			}
		})
	}
	wg.Wait()
}

// eventLog records, from the events topic, when each live message's event
// first arrived and how many times it was published.
type eventLog struct {
	mu        sync.Mutex
	arrived   map[string]time.Time
	published map[string]int
	undecoded int
}

func newEventLog() *eventLog {
	return &eventLog{arrived: map[string]time.Time{}, published: map[string]int{}}
}

func (l *eventLog) add(m kafka.Message, at time.Time) {
	var ev struct {
		MessageID string `json:"message_id"`
		RunID     string `json:"run_id"`
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err := json.Unmarshal(m.Value, &ev); err != nil {
		l.undecoded++
		return
	}
	if ev.RunID != contract.LiveRun {
		return
	}
	if _, ok := l.arrived[ev.MessageID]; !ok {
		l.arrived[ev.MessageID] = at
	}
	l.published[ev.MessageID]++
}

// latencies returns, for the ids sent in [from, to), the time from sending
// to the event's arrival; ids without an event are left out.
func (l *eventLog) latencies(sent map[string]time.Time, from, to time.Time) []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []time.Duration
	for id, at := range sent {
		if at.Before(from) || !at.Before(to) {
			continue
		}
		if arr, ok := l.arrived[id]; ok {
			out = append(out, arr.Sub(at))
		}
	}
	return out
}

// republished counts the events of ids published more than once.
func (l *eventLog) republished(ids map[string]time.Time) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for id := range ids {
		n += max(l.published[id]-1, 0)
	}
	return n
}

// deadLetters records the reasons given to each dead-lettered key.
type deadLetters struct {
	mu      sync.Mutex
	reasons map[string][]string
}

func newDeadLetters() *deadLetters { return &deadLetters{reasons: map[string][]string{}} }

func (d *deadLetters) add(m kafka.Message, _ time.Time) {
	reason := ""
	for _, h := range m.Headers {
		if h.Key == contract.HeaderReason {
			reason = string(h.Value)
		}
	}
	key := string(m.Key)
	if !strings.HasPrefix(key, "bad-") {
		// Not a malformed message of the suite's: a valid one, known by
		// the id in its value.
		var chat struct {
			ID string `json:"id"`
		}
		_ = json.Unmarshal(m.Value, &chat)
		key = "valid:" + chat.ID
	}
	d.mu.Lock()
	d.reasons[key] = append(d.reasons[key], reason)
	d.mu.Unlock()
}

// check compares the dead letters with the malformed messages sent
// (key → expected reason): missing are those never dead-lettered,
// wrongReason those dead-lettered with another reason.
func (d *deadLetters) check(bad map[string]contract.Reason) (missing, wrongReason int, examples []string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for key, want := range bad {
		got := d.reasons[key]
		switch {
		case len(got) == 0:
			missing++
			if len(examples) < 3 {
				examples = append(examples, key+": no dead letter")
			}
		default:
			for _, r := range got {
				if r != string(want) {
					wrongReason++
					if len(examples) < 3 {
						examples = append(examples, fmt.Sprintf("%s: reason %q, want %q", key, r, want))
					}
					break
				}
			}
		}
	}
	return missing, wrongReason, examples
}

// unexpected returns the valid messages of good (by id) that were
// dead-lettered, with the reasons.
func (d *deadLetters) unexpected(good map[string]time.Time) []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for id := range good {
		if r, ok := d.reasons["valid:"+id]; ok {
			out = append(out, fmt.Sprintf("%s (%s)", id, strings.Join(r, ",")))
		}
	}
	return out
}

// groupLag is how many messages of topic the group has not committed,
// summed over the partitions (a partition without a commit counts from
// its first offset).
func groupLag(ctx context.Context, admin *kafka.Client, group, topic string, partitions int) (int64, error) {
	ends, err := topicOffsets(ctx, admin, topic, partitions)
	if err != nil {
		return 0, err
	}
	committed, err := groupOffsets(ctx, admin, group, topic, partitions)
	if err != nil {
		return 0, err
	}
	var lag int64
	for p, e := range ends {
		c := committed[p]
		if c < e.first {
			c = e.first
		}
		lag += max(e.end-c, 0)
	}
	return lag, nil
}

type offsets struct{ first, end int64 }

func topicOffsets(ctx context.Context, admin *kafka.Client, topic string, partitions int) (map[int]offsets, error) {
	var reqs []kafka.OffsetRequest
	for p := range partitions {
		reqs = append(reqs, kafka.FirstOffsetOf(p), kafka.LastOffsetOf(p))
	}
	resp, err := admin.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("offsets of %s: %w", topic, err)
	}
	out := map[int]offsets{}
	for _, p := range resp.Topics[topic] {
		if p.Error != nil {
			return nil, fmt.Errorf("offsets of %s partition %d: %w", topic, p.Partition, p.Error)
		}
		out[p.Partition] = offsets{first: p.FirstOffset, end: p.LastOffset}
	}
	if len(out) != partitions {
		return nil, fmt.Errorf("offsets of %s: %d of %d partitions answered", topic, len(out), partitions)
	}
	return out, nil
}

func groupOffsets(ctx context.Context, admin *kafka.Client, group, topic string, partitions int) (map[int]int64, error) {
	ids := make([]int, partitions)
	for p := range ids {
		ids[p] = p
	}
	resp, err := admin.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: ids}})
	if err != nil {
		return nil, fmt.Errorf("committed offsets of %s: %w", group, err)
	}
	if resp.Error != nil {
		return nil, fmt.Errorf("committed offsets of %s: %w", group, resp.Error)
	}
	out := map[int]int64{}
	for _, p := range resp.Topics[topic] {
		if p.Error != nil {
			return nil, fmt.Errorf("committed offsets of %s partition %d: %w", group, p.Partition, p.Error)
		}
		out[p.Partition] = p.CommittedOffset
	}
	return out, nil
}

// storedCounts returns, for the events of run whose message ids start with
// prefix, how many rows each has in the deduplicated view.
func storedCounts(ctx context.Context, ch driver.Conn, database, run, prefix string) (map[string]int, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	// substring rather than startsWith, which ClickHouse 18.16 lacks.
	rows, err := ch.Query(ctx, fmt.Sprintf("SELECT message_id, count() FROM %s.events_dedup WHERE run_id = ? AND substring(message_id, 1, %d) = ? GROUP BY message_id",
		database, len(prefix)), run, prefix)
	if err != nil {
		return nil, fmt.Errorf("read the deduplicated view: %w", err)
	}
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var id string
		var n uint64
		if err := rows.Scan(&id, &n); err != nil {
			return nil, fmt.Errorf("read the deduplicated view: %w", err)
		}
		out[id] = int(n)
	}
	return out, rows.Err()
}
