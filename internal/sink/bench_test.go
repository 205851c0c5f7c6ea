package sink

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"
)

// benchRows are n decoded rows of testEvents.
func benchRows(b *testing.B, n int) []eventRow {
	b.Helper()
	var rows []eventRow
	for i, ev := range testEvents(n) {
		raw, _ := json.Marshal(ev)
		got, err := decodeEvent(raw, 1<<20)
		if err != nil {
			b.Fatal(err)
		}
		rows = append(rows, newEventRow(&got, i%4, int64(i)))
	}
	return rows
}

// BenchmarkDecodeEvent is the CPU cost of one event before the insert.
func BenchmarkDecodeEvent(b *testing.B) {
	raw, _ := json.Marshal(testEvents(1)[0])
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		ev, err := decodeEvent(raw, 1<<20)
		if err != nil {
			b.Fatal(err)
		}
		_ = newEventRow(&ev, 0, 0)
	}
}

// BenchmarkClickHouseInsert inserts batches of 10,000 rows into the events
// table (and so through the per-minute materialized view) and reports rows/s.
func BenchmarkClickHouseInsert(b *testing.B) {
	const batch = 10000
	in := newIntegration(b)
	ms, err := loadMigrations(migrationFiles, "migrations")
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if _, _, err := in.migrator().Migrate(ctx, ms); err != nil {
		b.Fatal(err)
	}
	store := &clickhouseStore{conn: in.conn, database: in.database, now: time.Now}
	rows := benchRows(b, batch)
	inserted := 0
	start := time.Now()
	for b.Loop() {
		if err := store.Insert(ctx, rows); err != nil {
			b.Fatal(err)
		}
		inserted += batch
	}
	b.ReportMetric(float64(inserted)/time.Since(start).Seconds(), "rows/s")
}

// BenchmarkSinkFromKafka measures the whole sink: b.N events are produced
// first, then one op is one event fetched, decoded, inserted and committed.
func BenchmarkSinkFromKafka(b *testing.B) {
	in := newIntegration(b)
	in.produce(b, testEvents(b.N))
	b.ResetTimer()
	start := time.Now()
	s := startSink(b, in.args("-batch-size=5000", "-flush-interval=200ms"))
	for {
		n := s.metric(b, "emoflow_sink_rows_inserted_total")
		if n >= float64(b.N) {
			break
		}
		if time.Since(start) > 5*time.Minute {
			b.Fatalf("only %v of %d events stored after 5 minutes", n, b.N)
		}
		time.Sleep(20 * time.Millisecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "events/s")
	if err := s.stop(b); err != nil {
		b.Fatal(fmt.Errorf("stop: %w", err))
	}
}
