package alerts

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// convKey identifies a conversation: conversation ids are unique per
// tenant only.
type convKey struct {
	tenant, conversation string
}

// stateStore keeps conversation states between batches and restarts.
type stateStore interface {
	// Load returns the stored state of each key (a fresh one if none).
	Load(ctx context.Context, keys []convKey) (map[convKey]*convState, error)
	// Save stores states; it returns how many were not written because
	// the stored state is already further on (another alerter got there
	// first).
	Save(ctx context.Context, states map[convKey]*convState) (stale int, err error)
}

// redisStates keeps each conversation's state in a Redis hash at
// prefix + key: field "s" the state's JSON, fields "p" (source topic and
// partition) and "o" (last applied offset) for the save guard. Each key
// expires ttl after its last save.
type redisStates struct {
	rdb    *redis.Client
	prefix string
	ttl    time.Duration
}

// redisOptions are the connection settings of the state store, before the
// user, password and TLS (secure.Redis) are applied.
func redisOptions(addr string, timeout time.Duration) *redis.Options {
	return &redis.Options{
		Addr:         addr,
		DialTimeout:  timeout,
		ReadTimeout:  timeout,
		WriteTimeout: timeout,
		PoolTimeout:  timeout,
		// Redis 7 does not know the maintenance-notification handshake.
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
}

// key is unambiguous whatever the ids hold: the tenant's length comes
// first.
func (s *redisStates) key(k convKey) string {
	return s.prefix + strconv.Itoa(len(k.tenant)) + ":" + k.tenant + ":" + k.conversation
}

func (s *redisStates) Load(ctx context.Context, keys []convKey) (map[convKey]*convState, error) {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.StringCmd, len(keys))
	for i, k := range keys {
		cmds[i] = pipe.HGet(ctx, s.key(k), "s")
	}
	if _, err := pipe.Exec(ctx); err != nil && err != redis.Nil {
		return nil, fmt.Errorf("redis: load %d conversation states: %w", len(keys), err)
	}
	out := make(map[convKey]*convState, len(keys))
	for i, k := range keys {
		st := &convState{}
		raw, err := cmds[i].Bytes()
		switch {
		case err == redis.Nil:
		case err != nil:
			return nil, fmt.Errorf("redis: load state of conversation %q: %w", k.conversation, err)
		default:
			if err := json.Unmarshal(raw, st); err != nil {
				// Not ours or from an incompatible release: start afresh
				// rather than stall the partition.
				st = &convState{}
			}
		}
		out[k] = st
	}
	return out, nil
}

// saveScript writes the state unless the stored one is past the same
// source partition's offset: a state never goes back, even if an alerter
// that lost the partition in a rebalance saves after the new owner did.
// (At the same offset it writes: that is how an outbox is cleared.)
var saveScript = `
local p = redis.call('HGET', KEYS[1], 'p')
if p == ARGV[1] then
  local o = tonumber(redis.call('HGET', KEYS[1], 'o'))
  if o and o > tonumber(ARGV[2]) then return 0 end
end
redis.call('HSET', KEYS[1], 'p', ARGV[1], 'o', ARGV[2], 's', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1`

func (s *redisStates) Save(ctx context.Context, states map[convKey]*convState) (int, error) {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.Cmd, 0, len(states))
	ttl := strconv.FormatInt(s.ttl.Milliseconds(), 10)
	for k, st := range states {
		raw, err := json.Marshal(st)
		if err != nil {
			return 0, fmt.Errorf("encode state of conversation %q: %w", k.conversation, err)
		}
		pos := st.Topic + "/" + strconv.Itoa(st.Partition)
		cmds = append(cmds, pipe.Eval(ctx, saveScript, []string{s.key(k)}, pos, strconv.FormatInt(st.Offset, 10), raw, ttl))
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, fmt.Errorf("redis: save %d conversation states: %w", len(states), err)
	}
	stale := 0
	for _, c := range cmds {
		if n, _ := c.Int(); n == 0 {
			stale++
		}
	}
	return stale, nil
}

// alertStore stores alerts (ClickHouse).
type alertStore interface {
	Insert(ctx context.Context, alerts []Alert) error
}

// databaseName is what -clickhouse-database accepts: it is spliced into
// SQL.
var databaseName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)

// alertColumns are the alerts table's columns (migration 0003 of
// internal/sink) in the order alertValues gives them.
var alertColumns = []string{
	"alert_id", "tenant", "conversation_id", "rule", "kind", "message_id", "speaker_role", "label",
	"share", "window_messages", "matching_messages", "threshold", "run_length", "conversation_messages",
	"adapter", "sent_at", "source_topic", "source_partition", "source_offset", "inserted_at", "version",
}

func alertValues(a *Alert, insertedAt time.Time, version uint64) []any {
	return []any{
		a.AlertID, a.Tenant, a.ConversationID, a.Rule, a.Kind, a.MessageID, a.SpeakerRole, a.Label,
		float32(a.Share), uint32(a.WindowMessages), uint32(a.MatchingMessages), float32(a.Threshold),
		uint32(a.RunLength), uint64(a.ConversationMessages),
		a.Adapter, a.SentAt.UTC(), a.Source.Topic, int32(a.Source.Partition), a.Source.Offset, insertedAt, version,
	}
}

// clickhouseAlerts inserts alerts into database.alerts; the table is a
// ReplacingMergeTree on the alert id and alerts_dedup reads it with FINAL,
// so an alert inserted twice shows once.
type clickhouseAlerts struct {
	conn     driver.Conn
	database string
	now      func() time.Time
}

// openClickHouse returns a connection pool (tlsCfg nil: plain TCP); it
// connects lazily, so it works while ClickHouse is down.
func openClickHouse(addrs []string, user, password string, tlsCfg *tls.Config, timeout time.Duration) (driver.Conn, error) {
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr: addrs,
		Auth: clickhouse.Auth{Username: user, Password: password},
		TLS:  tlsCfg,
		// No Settings: a setting an older server rejects can leave the
		// pooled connection hanging (see the sink).
		DialTimeout:     timeout,
		ReadTimeout:     timeout,
		MaxOpenConns:    2,
		MaxIdleConns:    1,
		ConnMaxLifetime: time.Hour,
		Compression:     &clickhouse.Compression{Method: clickhouse.CompressionLZ4},
	})
	if err != nil {
		return nil, fmt.Errorf("open clickhouse %s: %w", strings.Join(addrs, ","), err)
	}
	return conn, nil
}

func (s *clickhouseAlerts) Insert(ctx context.Context, alerts []Alert) error {
	now := s.now()
	insertedAt := now.UTC().Truncate(time.Second)
	// The latest insert of an alert wins; its rows are equal anyway.
	version := uint64(now.UnixNano())
	query := fmt.Sprintf("INSERT INTO %s.alerts (%s)", s.database, strings.Join(alertColumns, ", "))
	b, err := s.conn.PrepareBatch(ctx, query)
	if err != nil {
		return fmt.Errorf("prepare insert into %s.alerts: %w", s.database, err)
	}
	for i := range alerts {
		if err := b.Append(alertValues(&alerts[i], insertedAt, version)...); err != nil {
			_ = b.Abort()
			return fmt.Errorf("append alert %s to the insert: %w", alerts[i].AlertID, err)
		}
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("insert %d alerts into %s.alerts: %w", len(alerts), s.database, err)
	}
	return nil
}

// tableExists reports whether database.alerts exists: the sink's
// migrations create it, and the alerter waits for them.
func (s *clickhouseAlerts) tableExists(ctx context.Context) error {
	var n uint64
	row := s.conn.QueryRow(ctx, "SELECT count() FROM system.tables WHERE database = ? AND name = 'alerts'", s.database)
	if err := row.Scan(&n); err != nil {
		return fmt.Errorf("clickhouse: look for table %s.alerts: %w", s.database, err)
	}
	if n == 0 {
		return fmt.Errorf("clickhouse: table %s.alerts does not exist yet (the sink's migrations create it: start a sink with the same -clickhouse-database)", s.database)
	}
	return nil
}
