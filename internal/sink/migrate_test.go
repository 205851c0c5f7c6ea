package sink

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/emoflow/emoflow/internal/contract"
	"github.com/emoflow/emoflow/internal/stage"
)

func (in *integration) migrator() *migrator {
	return &migrator{conn: in.conn, database: in.database, timeout: 30 * time.Second}
}

func (in *integration) tables(t *testing.T) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rows, err := in.conn.Query(ctx, "SELECT name, engine FROM system.tables WHERE database = ? ORDER BY name", in.database)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var name, engine string
		if err := rows.Scan(&name, &engine); err != nil {
			t.Fatal(err)
		}
		out = append(out, name+":"+engine)
	}
	return out
}

var wantTables = []string{
	"alerts:ReplacingMergeTree",
	"alerts_dedup:View",
	"events:ReplacingMergeTree",
	"events_dedup:View",
	"label_counts_per_minute:View",
	"label_counts_per_minute_mv:MaterializedView",
	"label_counts_per_minute_state:AggregatingMergeTree",
	"schema_migrations:ReplacingMergeTree",
}

func TestMigrationsRunTwiceAreANoOp(t *testing.T) {
	in := newIntegration(t)
	ms, err := loadMigrations(migrationFiles, "migrations")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	applied, changed, err := in.migrator().Migrate(ctx, ms)
	if err != nil {
		t.Fatalf("first run: %v", err)
	}
	if len(applied) != len(ms) || len(changed) != 0 {
		t.Errorf("first run applied %v (changed %v), want all %d", applied, changed, len(ms))
	}
	if got := in.tables(t); !slices.Equal(got, wantTables) {
		t.Errorf("tables %v, want %v", got, wantTables)
	}
	recorded := in.queryUint64(t, "SELECT count() FROM ${database}.schema_migrations")

	applied, changed, err = in.migrator().Migrate(ctx, ms)
	if err != nil {
		t.Fatalf("second run: %v", err)
	}
	if len(applied) != 0 || len(changed) != 0 {
		t.Errorf("second run applied %v and found %v changed, want nothing", applied, changed)
	}
	if again := in.queryUint64(t, "SELECT count() FROM ${database}.schema_migrations"); again != recorded || recorded != uint64(len(ms)) {
		t.Errorf("schema_migrations rows: %d after the first run, %d after the second, want %d both times", recorded, again, len(ms))
	}

	// An edited migration is reported, not applied again.
	edited := slices.Clone(ms)
	edited[0].Checksum = "edited"
	applied, changed, err = in.migrator().Migrate(ctx, edited)
	if err != nil || len(applied) != 0 || !slices.Equal(changed, []int{1}) {
		t.Errorf("with migration 1 edited: applied %v changed %v err %v, want changed [1]", applied, changed, err)
	}
}

func TestMigrationsFromSeveralSinksAtOnce(t *testing.T) {
	in := newIntegration(t)
	ms, err := loadMigrations(migrationFiles, "migrations")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const sinks = 4
	errs := make([]error, sinks)
	var wg sync.WaitGroup
	for i := range sinks {
		wg.Go(func() {
			// Each with its own pool, like separate processes.
			conn, err := openClickHouse(clickhouseOptions{Addrs: stage.SplitList(in.clickhouse), User: "default", Timeout: 30 * time.Second})
			if err != nil {
				errs[i] = err
				return
			}
			defer conn.Close()
			m := &migrator{conn: conn, database: in.database, timeout: 30 * time.Second}
			_, _, errs[i] = m.Migrate(ctx, ms)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("sink %d: %v", i, err)
		}
	}
	if got := in.tables(t); !slices.Equal(got, wantTables) {
		t.Errorf("tables %v, want %v", got, wantTables)
	}
	if n := in.queryUint64(t, "SELECT uniqExact(version) FROM ${database}.schema_migrations"); n != uint64(len(ms)) {
		t.Errorf("%d versions recorded, want %d", n, len(ms))
	}
}

// TestEventContextMigration runs migration 0004 over an events table that
// already holds a row (inserted the way a sink before 0004 did, without the
// context columns), interrupted after its first statement and then run
// again from its first statement, and once more after it was recorded: the
// old row reads 0 and an empty source, a new sink's rows their context,
// through events_dedup.
func TestEventContextMigration(t *testing.T) {
	in := newIntegration(t)
	ms, err := loadMigrations(migrationFiles, "migrations")
	if err != nil {
		t.Fatal(err)
	}
	const contextVersion = 4
	if len(ms) < contextVersion || ms[contextVersion-1].Name != "event_context" {
		t.Fatalf("migration %d is not event_context: %+v", contextVersion, ms)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if applied, _, err := in.migrator().Migrate(ctx, ms[:contextVersion-1]); err != nil || len(applied) != contextVersion-1 {
		t.Fatalf("migrations before %d: applied %v, %v", contextVersion, applied, err)
	}
	sent := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	old, err := in.conn.PrepareBatch(ctx, "INSERT INTO "+in.database+".events (message_id, adapter, run_id, tenant, label, sent_at, received_at, classified_at, version)")
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Append("old", "", contract.LiveRun, "acme", "joy", sent, sent, sent, uint64(1)); err != nil {
		t.Fatal(err)
	}
	if err := old.Send(); err != nil {
		t.Fatal(err)
	}

	// Interrupted after its first statement, then run from the start.
	m := in.migrator()
	if err := m.exec(ctx, ms[contextVersion-1].statementsFor(in.database, "")[0]); err != nil {
		t.Fatal(err)
	}
	applied, _, err := m.Migrate(ctx, ms)
	if err != nil || !slices.Equal(applied, []int{contextVersion}) {
		t.Fatalf("migration %d after an interrupted run: applied %v, %v", contextVersion, applied, err)
	}
	// And every statement again over the finished migration.
	if err := m.apply(ctx, ms[contextVersion-1]); err != nil {
		t.Fatalf("migration %d run again: %v", contextVersion, err)
	}
	if got := in.tables(t); !slices.Equal(got, wantTables) {
		t.Errorf("tables %v, want %v", got, wantTables)
	}

	store := &clickhouseStore{conn: in.conn, database: in.database, now: time.Now}
	row := func(id string, messages int64, source string) eventRow {
		return eventRow{MessageID: id, RunID: contract.LiveRun, Tenant: "acme", Label: "joy", SentAt: sent, ReceivedAt: sent, ClassifiedAt: sent,
			ContextMessages: messages, ContextSource: source}
	}
	if err := store.Insert(ctx, []eventRow{row("redis", 2, "redis"), row("alone", 0, ""), row("memory", 1, "memory")}); err != nil {
		t.Fatal(err)
	}
	rows, err := in.conn.Query(ctx, "SELECT message_id, context_messages, context_source FROM "+in.database+".events_dedup ORDER BY message_id")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var got []string
	for rows.Next() {
		var id, source string
		var messages int64
		if err := rows.Scan(&id, &messages, &source); err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s %d %q", id, messages, source))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	want := []string{`alone 0 ""`, `memory 1 "memory"`, `old 0 ""`, `redis 2 "redis"`}
	if !slices.Equal(got, want) {
		t.Errorf("events_dedup context columns %q, want %q", got, want)
	}
}
