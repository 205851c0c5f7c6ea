package sink

import (
	"context"
	"crypto/tls"
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// identifier is what -clickhouse-database and -clickhouse-cluster accept:
// the names are spliced into SQL, so they must be plain identifiers.
var identifier = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)

// eventColumns are the events table's columns in the order eventRow.values
// gives them. Naming them in the INSERT keeps an older sink working after a
// later migration adds columns with defaults.
var eventColumns = []string{
	"message_id", "adapter", "run_id", "conversation_id", "tenant", "speaker_role", "language",
	"text_fingerprint", "text", "label", "prob_labels", "prob_values", "true_label", "truncated",
	"context_messages", "context_source", "model", "label_set", "cache_hit", "sent_at", "received_at", "classified_at",
	"cache_ms", "classify_ms", "pipeline_ms", "source_topic", "source_partition", "source_offset",
	"event_partition", "event_offset", "inserted_at", "version",
}

func (r *eventRow) values(insertedAt time.Time, version uint64) []any {
	return []any{
		r.MessageID, r.Adapter, r.RunID, r.ConversationID, r.Tenant, r.SpeakerRole, r.Language,
		r.TextFingerprint, r.Text, r.Label, r.ProbLabels, r.ProbValues, r.TrueLabel, boolToUInt8(r.Truncated),
		r.ContextMessages, r.ContextSource, r.Model, r.LabelSet, boolToUInt8(r.CacheHit), r.SentAt, r.ReceivedAt, r.ClassifiedAt,
		r.CacheMs, r.ClassifyMs, r.PipelineMs, r.SourceTopic, r.SourcePartition, r.SourceOffset,
		r.EventPartition, r.EventOffset, insertedAt, version,
	}
}

func boolToUInt8(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// clickhouseStore writes events to ClickHouse over the native protocol.
type clickhouseStore struct {
	conn     driver.Conn
	database string
	// cluster: events is a Distributed table, and inserts wait until every
	// shard has its rows (insert_distributed_sync), so that offsets are
	// committed only for rows stored on their shards, not for rows queued
	// on the server the sink is connected to.
	cluster bool
	// now stamps inserted_at and version; the clock in production.
	now func() time.Time
}

// clickhouseOptions are the connection settings of the store.
type clickhouseOptions struct {
	Addrs    []string
	Database string
	User     string
	Password string
	// TLS, when set, connects over TLS (the server's secure native port).
	TLS *tls.Config
	// Timeout bounds dialing and every read and write on a connection.
	Timeout time.Duration
}

// openClickHouse returns a connection pool; it connects lazily, so it works
// while ClickHouse is down. The pool's default database is left to the
// server: the sink's database may not exist yet, so every statement names it.
func openClickHouse(o clickhouseOptions) (driver.Conn, error) {
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr: o.Addrs,
		Auth: clickhouse.Auth{Username: o.User, Password: o.Password},
		TLS:  o.TLS,
		// No Settings on purpose: a setting an older server rejects can leave
		// the pooled connection hanging (see PLATFORM.md).
		DialTimeout:     o.Timeout,
		ReadTimeout:     o.Timeout,
		MaxOpenConns:    4,
		MaxIdleConns:    2,
		ConnMaxLifetime: time.Hour,
		Compression:     &clickhouse.Compression{Method: clickhouse.CompressionLZ4},
	})
	if err != nil {
		return nil, fmt.Errorf("open clickhouse %s: %w", strings.Join(o.Addrs, ","), err)
	}
	return conn, nil
}

// Insert writes rows in one INSERT per month of sent_at. Current ClickHouse
// releases refuse an INSERT that touches more than 100 partitions
// (max_partitions_per_insert_block), so a batch of events spread over many
// months must not be one INSERT, or it could never be stored. A failure
// after some months were written leaves them written; the retry writes them
// again and the tables deduplicate.
func (s *clickhouseStore) Insert(ctx context.Context, rows []eventRow) error {
	insertedAt := s.now().UTC()
	version := uint64(insertedAt.UnixNano())
	for _, group := range groupByMonth(rows) {
		if err := s.insert(ctx, group, insertedAt, version); err != nil {
			return err
		}
	}
	return nil
}

func (s *clickhouseStore) insert(ctx context.Context, rows []eventRow, insertedAt time.Time, version uint64) error {
	query := fmt.Sprintf("INSERT INTO %s.events (%s)", s.database, strings.Join(eventColumns, ", "))
	if s.cluster {
		ctx = clickhouse.Context(ctx, clickhouse.WithSettings(clickhouse.Settings{"insert_distributed_sync": 1}))
	}
	b, err := s.conn.PrepareBatch(ctx, query)
	if err != nil {
		return fmt.Errorf("prepare insert into %s.events: %w", s.database, err)
	}
	for i := range rows {
		if err := b.Append(rows[i].values(insertedAt, version)...); err != nil {
			_ = b.Abort()
			return fmt.Errorf("append event %q to the insert: %w", rows[i].MessageID, err)
		}
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("insert %d events into %s.events: %w", len(rows), s.database, err)
	}
	return nil
}

// Ping checks that ClickHouse answers.
func (s *clickhouseStore) Ping(ctx context.Context) error {
	if err := s.conn.Ping(ctx); err != nil {
		return fmt.Errorf("ping clickhouse: %w", err)
	}
	return nil
}

// groupByMonth splits rows by the UTC month of SentAt, keeping their order
// within a month and ordering the months by first appearance.
func groupByMonth(rows []eventRow) [][]eventRow {
	type month struct {
		year int
		m    time.Month
	}
	if len(rows) == 0 {
		return nil
	}
	first := month{rows[0].SentAt.Year(), rows[0].SentAt.Month()}
	single := true
	for _, r := range rows[1:] {
		if (month{r.SentAt.Year(), r.SentAt.Month()}) != first {
			single = false
			break
		}
	}
	if single {
		// The usual case: no copying.
		return [][]eventRow{rows}
	}
	index := map[month]int{}
	var groups [][]eventRow
	for _, r := range rows {
		k := month{r.SentAt.Year(), r.SentAt.Month()}
		i, ok := index[k]
		if !ok {
			i = len(groups)
			index[k] = i
			groups = append(groups, nil)
		}
		groups[i] = append(groups[i], r)
	}
	return groups
}
