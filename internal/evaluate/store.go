package evaluate

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// StoreOptions are the ClickHouse connection settings of a Store (the
// sink's -clickhouse-* settings).
type StoreOptions struct {
	Addrs    []string
	Database string
	User     string
	Password string
	// TLS, when set, connects over TLS (the server's secure native port).
	TLS *tls.Config
	// Timeout bounds dialing and every query.
	Timeout time.Duration
}

// Store reads runs from the sink's deduplicated view, events_dedup: one row
// per (message id, adapter, run id), however often the event was
// delivered. The raw events table is never read.
type Store struct {
	conn    driver.Conn
	db      string
	timeout time.Duration
}

// databaseName is a database name that can be spliced into SQL.
var databaseName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,127}$`)

// ErrUnknownRun is a run with no events in the view.
var ErrUnknownRun = errors.New("unknown run")

// OpenStore connects to ClickHouse and checks that the database has the
// sink's view.
func OpenStore(ctx context.Context, o StoreOptions) (*Store, error) {
	if !databaseName.MatchString(o.Database) {
		return nil, fmt.Errorf("clickhouse database %q: want a plain identifier", o.Database)
	}
	if len(o.Addrs) == 0 {
		return nil, errors.New("no clickhouse address")
	}
	if o.Timeout <= 0 {
		return nil, errors.New("the clickhouse timeout must be positive")
	}
	conn, err := clickhouse.Open(&clickhouse.Options{
		Addr:        o.Addrs,
		Auth:        clickhouse.Auth{Username: o.User, Password: o.Password},
		TLS:         o.TLS,
		DialTimeout: o.Timeout,
		ReadTimeout: o.Timeout,
	})
	if err != nil {
		return nil, fmt.Errorf("clickhouse %s: %w", strings.Join(o.Addrs, ","), err)
	}
	s := &Store{conn: conn, db: o.Database, timeout: o.Timeout}
	if err := s.checkSchema(ctx); err != nil {
		conn.Close()
		return nil, fmt.Errorf("clickhouse %s: %w", strings.Join(o.Addrs, ","), err)
	}
	return s, nil
}

// checkSchema checks that the database has the sink's events_dedup view.
func (s *Store) checkSchema(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	var n uint64
	if err := s.conn.QueryRow(ctx, "SELECT count() FROM system.tables WHERE database = ? AND name = 'events_dedup'", s.db).Scan(&n); err != nil {
		return fmt.Errorf("look for %s.events_dedup: %w", s.db, err)
	}
	if n == 0 {
		return fmt.Errorf("database %q has no events_dedup view: is it the sink's -clickhouse-database?", s.db)
	}
	return nil
}

// Close closes the connections.
func (s *Store) Close() error { return s.conn.Close() }

// RunSelector picks a run's events: the run id and, when the run holds
// events of several adapters (live traffic does), one adapter.
type RunSelector struct {
	RunID   string `json:"run_id"`
	Adapter string `json:"adapter"`
}

// Resolve fills in the adapter of a run that has events of exactly one
// adapter, and checks that the run (with the adapter, when given) has
// events.
func (s *Store) Resolve(ctx context.Context, sel RunSelector) (RunSelector, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	rows, err := s.conn.Query(ctx, "SELECT adapter, count() FROM "+s.db+".events_dedup WHERE run_id = ? GROUP BY adapter", sel.RunID)
	if err != nil {
		return sel, fmt.Errorf("adapters of run %q: %w", sel.RunID, err)
	}
	defer rows.Close()
	counts := map[string]uint64{}
	var adapters []string
	for rows.Next() {
		var a string
		var n uint64
		if err := rows.Scan(&a, &n); err != nil {
			return sel, fmt.Errorf("adapters of run %q: %w", sel.RunID, err)
		}
		counts[a] = n
		adapters = append(adapters, a)
	}
	if err := rows.Err(); err != nil {
		return sel, fmt.Errorf("adapters of run %q: %w", sel.RunID, err)
	}
	sort.Strings(adapters)
	switch {
	case len(adapters) == 0:
		return sel, fmt.Errorf("run %q has no events in %s.events_dedup (wrong run id or database, or the sink has not stored them yet): %w", sel.RunID, s.db, ErrUnknownRun)
	case sel.Adapter != "" && counts[sel.Adapter] == 0:
		return sel, fmt.Errorf("run %q has no events of adapter %q (it has %s): %w", sel.RunID, sel.Adapter, strings.Join(adapters, ", "), ErrUnknownRun)
	case sel.Adapter == "" && len(adapters) > 1:
		return sel, fmt.Errorf("run %q has events of several adapters (%s): choose one", sel.RunID, strings.Join(adapters, ", "))
	case sel.Adapter == "":
		sel.Adapter = adapters[0]
	}
	return sel, nil
}

// Confusion counts the run's messages per (true label, predicted label).
// Messages without ground truth count under an empty true label.
func (s *Store) Confusion(ctx context.Context, sel RunSelector) (Confusion, error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	rows, err := s.conn.Query(ctx, "SELECT true_label, label, count() FROM "+s.db+".events_dedup WHERE run_id = ? AND adapter = ? GROUP BY true_label, label",
		sel.RunID, sel.Adapter)
	if err != nil {
		return nil, fmt.Errorf("outcomes of run %q: %w", sel.RunID, err)
	}
	defer rows.Close()
	c := Confusion{}
	for rows.Next() {
		var o Outcome
		var n uint64
		if err := rows.Scan(&o.True, &o.Predicted, &n); err != nil {
			return nil, fmt.Errorf("outcomes of run %q: %w", sel.RunID, err)
		}
		c[o] += int(n)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("outcomes of run %q: %w", sel.RunID, err)
	}
	return c, nil
}

// pairedRuns is the inner join of two runs' messages on the message id.
func (s *Store) pairedRuns(a, b RunSelector) string {
	side := func(suffix string) string {
		return "(SELECT message_id, text_fingerprint AS fingerprint_" + suffix + ", label AS label_" + suffix +
			" FROM " + s.db + ".events_dedup WHERE run_id = ? AND adapter = ?) AS " + suffix
	}
	// ALL INNER JOIN spells the strictness out: ClickHouse 18.16 requires
	// it and current releases accept it. The aliases are required by
	// current releases (ALIAS_REQUIRED, joined_subquery_requires_alias)
	// and accepted by 18.16, which does not know that setting.
	return side("a") + " ALL INNER JOIN " + side("b") + " USING (message_id)"
}

// Transitions counts the messages both runs labelled per pair of labels,
// and how many messages only one of the runs labelled.
func (s *Store) Transitions(ctx context.Context, a, b RunSelector) (t Transitions, onlyA, onlyB int, err error) {
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	rows, err := s.conn.Query(ctx, "SELECT label_a, label_b, count() FROM "+s.pairedRuns(a, b)+" GROUP BY label_a, label_b",
		a.RunID, a.Adapter, b.RunID, b.Adapter)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("label pairs of runs %q and %q: %w", a.RunID, b.RunID, err)
	}
	defer rows.Close()
	t = Transitions{}
	paired := 0
	for rows.Next() {
		var c Change
		var n uint64
		if err := rows.Scan(&c.A, &c.B, &n); err != nil {
			return nil, 0, 0, fmt.Errorf("label pairs of runs %q and %q: %w", a.RunID, b.RunID, err)
		}
		t[c] += int(n)
		paired += int(n)
	}
	if err := rows.Err(); err != nil {
		return nil, 0, 0, fmt.Errorf("label pairs of runs %q and %q: %w", a.RunID, b.RunID, err)
	}
	na, err := s.count(ctx, a)
	if err != nil {
		return nil, 0, 0, err
	}
	nb, err := s.count(ctx, b)
	if err != nil {
		return nil, 0, 0, err
	}
	return t, na - paired, nb - paired, nil
}

func (s *Store) count(ctx context.Context, sel RunSelector) (int, error) {
	var n uint64
	if err := s.conn.QueryRow(ctx, "SELECT count() FROM "+s.db+".events_dedup WHERE run_id = ? AND adapter = ?", sel.RunID, sel.Adapter).Scan(&n); err != nil {
		return 0, fmt.Errorf("messages of run %q: %w", sel.RunID, err)
	}
	return int(n), nil
}

// ChangedMessage is a message two runs labelled differently.
type ChangedMessage struct {
	MessageID string `json:"message_id"`
	// Fingerprint is the SHA-256 of the normalised text (run A's; it is the
	// same text in both runs unless the message id was reused).
	Fingerprint string `json:"text_fingerprint"`
	A           string `json:"label_a"`
	B           string `json:"label_b"`
}

// Changed returns up to limit messages whose label differs between the
// runs, ordered by message id.
func (s *Store) Changed(ctx context.Context, a, b RunSelector, limit int) ([]ChangedMessage, error) {
	if limit <= 0 {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	rows, err := s.conn.Query(ctx, "SELECT message_id, fingerprint_a, label_a, label_b FROM "+s.pairedRuns(a, b)+
		" WHERE label_a != label_b ORDER BY message_id LIMIT "+fmt.Sprint(limit),
		a.RunID, a.Adapter, b.RunID, b.Adapter)
	if err != nil {
		return nil, fmt.Errorf("changed messages of runs %q and %q: %w", a.RunID, b.RunID, err)
	}
	defer rows.Close()
	var out []ChangedMessage
	for rows.Next() {
		var m ChangedMessage
		if err := rows.Scan(&m.MessageID, &m.Fingerprint, &m.A, &m.B); err != nil {
			return nil, fmt.Errorf("changed messages of runs %q and %q: %w", a.RunID, b.RunID, err)
		}
		out = append(out, m)
	}
	return out, rows.Err()
}
