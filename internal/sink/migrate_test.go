package sink

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

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
