package evaluate

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/emoflow/emoflow/internal/sink"
	"github.com/emoflow/emoflow/internal/testenv"
)

// TestCurrentClickHouseStore runs every query emoctl eval and compare send
// (Store's) on a current ClickHouse release in-process (chDB), over the
// sink's schema with events delivered more than once, checks their rows
// there, and replays the same statements on the 18.16 server and compares.
// compare's join of two runs (pairedRuns) is refused by current releases
// without its subquery aliases (Code 206, ALIAS_REQUIRED).
func TestCurrentClickHouseStore(t *testing.T) {
	db := testenv.Name(t, "current_eval")
	schema, err := sink.SchemaStatements(db)
	if err != nil {
		t.Fatal(err)
	}
	var statements []testenv.Statement
	for _, s := range schema {
		statements = append(statements, testenv.Statement{Kind: testenv.Exec, SQL: s})
	}
	// The events of TestIntegrationStoreReadsDeduplicatedRuns, one insert
	// each, so that duplicates sit in separate parts as redelivered events
	// do until a merge.
	sent := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	for _, e := range []event{
		{"m1", "emo@1", "old", "joy", "joy", 1},
		{"m2", "emo@1", "old", "anger", "joy", 1},
		{"m3", "emo@1", "old", "fear", "fear", 1},
		{"m4", "emo@1", "old", "joy", "", 1},
		{"m1", "emo@1", "old", "sadness", "joy", 2}, // redelivered, relabelled: the later wins
		{"m1", "emo@1", "old", "sadness", "joy", 2},
		{"m1", "emo@2", "new", "joy", "joy", 1},
		{"m2", "emo@2", "new", "joy", "joy", 1},
		{"m2", "emo@2", "new", "joy", "joy", 1},
		{"m5", "emo@2", "new", "neutral", "neutral", 1},
		{"x", "emo@1", "live", "joy", "", 1},
		{"x", "emo@2", "live", "joy", "", 1},
	} {
		statements = append(statements, testenv.Statement{
			Kind: testenv.Insert,
			SQL:  "INSERT INTO " + db + ".events (message_id, adapter, run_id, text_fingerprint, label, true_label, sent_at, received_at, classified_at, inserted_at, version)",
			Rows: [][]any{{e.id, e.adapter, e.run, "fp-" + e.id, e.label, e.trueLabel, sent, sent, sent, sent, e.version}},
		})
	}

	// Store's queries, recorded as Store sends them.
	rec := &testenv.RecordingConn{}
	s := &Store{conn: rec, db: db, timeout: time.Minute}
	ctx := context.Background()
	old, nw := RunSelector{RunID: "old", Adapter: "emo@1"}, RunSelector{RunID: "new", Adapter: "emo@2"}
	_ = s.checkSchema(ctx)                           // no rows from the recorder: "no events_dedup view"
	_, _ = s.Resolve(ctx, RunSelector{RunID: "old"}) // likewise ErrUnknownRun
	_, _ = s.Resolve(ctx, RunSelector{RunID: "live"})
	if _, err := s.Confusion(ctx, old); err != nil {
		t.Fatal(err)
	}
	if _, _, _, err := s.Transitions(ctx, old, nw); err != nil { // pairedRuns, then count of each run
		t.Fatal(err)
	}
	if _, err := s.Changed(ctx, old, nw, 10); err != nil { // pairedRuns
		t.Fatal(err)
	}
	queries := rec.Statements()
	first := len(statements)
	statements = append(statements, queries...)
	want := [][][]string{
		{{"1"}},                          // checkSchema
		{{"emo@1", "4"}},                 // Resolve old
		{{"emo@1", "1"}, {"emo@2", "1"}}, // Resolve live
		// Confusion of old: m1 joy→sadness, m2 joy→anger, m3 fear, m4 without truth.
		{{"joy", "sadness", "1"}, {"joy", "anger", "1"}, {"fear", "fear", "1"}, {"", "joy", "1"}},
		{{"sadness", "joy", "1"}, {"anger", "joy", "1"}}, // Transitions: m1 and m2
		{{"4"}}, // count of old
		{{"3"}}, // count of new
		{{"m1", "fp-m1", "sadness", "joy"}, {"m2", "fp-m2", "anger", "joy"}}, // Changed
	}
	if len(queries) != len(want) {
		t.Fatalf("Store sent %d queries, the test expects %d", len(queries), len(want))
	}
	if !strings.Contains(queries[4].SQL, " ALL INNER JOIN ") || !strings.Contains(queries[7].SQL, " ALL INNER JOIN ") {
		t.Fatalf("queries 5 and 8 are not compare's join of two runs:\n%s\n%s", queries[4].SQL, queries[7].SQL)
	}

	run := testenv.RunCurrentClickHouse(t, statements)
	t.Logf("ClickHouse %s (chDB): %d statements in %.2fs", run.Version, len(statements), run.Seconds)
	if major, _ := strconv.Atoi(strings.Split(run.Version, ".")[0]); major < 24 {
		t.Errorf("chDB runs ClickHouse %s, not a current release", run.Version)
	}
	for i, r := range run.Results {
		if r.Error != "" {
			t.Errorf("ClickHouse %s refused statement %d (%s):\n%s %v\n%s", run.Version, i+1, statements[i].Kind, statements[i].SQL, statements[i].Args, r.Error)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	for i, rows := range want {
		got := run.Results[first+i]
		if err := testenv.SameRows(got, testenv.Result{Columns: got.Columns, Data: rows}); err != nil {
			t.Errorf("query %d on ClickHouse %s: %v\n%s", i+1, run.Version, err, queries[i].SQL)
		}
	}
	if got := run.Results[len(statements)-1].Data; len(got) != 2 || got[0][0] != "m1" {
		t.Errorf("Changed is not ordered by message id: %v", got)
	}
	if t.Failed() {
		return
	}

	t.Run("same rows on 18.16", func(t *testing.T) {
		conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{testenv.ClickHouse(t)}, DialTimeout: 10 * time.Second, ReadTimeout: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		testenv.DropAtCleanup(t, conn, db)
		testenv.CompareOnServer(t, conn, statements, run)
	})
}
