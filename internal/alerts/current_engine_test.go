package alerts

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/emoflow/emoflow/internal/contract"
	"github.com/emoflow/emoflow/internal/sink"
	"github.com/emoflow/emoflow/internal/stage"
	"github.com/emoflow/emoflow/internal/testenv"
)

// TestCurrentClickHouseAlerts runs what the alerter sends to ClickHouse
// (the look-up of the alerts table, inserts of alerts, one redelivered) over
// the sink's schema on a current ClickHouse release in-process (chDB),
// checks alerts_dedup there, then replays the same statements on the 18.16
// server and compares every query's rows.
func TestCurrentClickHouseAlerts(t *testing.T) {
	db := testenv.Name(t, "current")
	ddl, err := sink.SchemaStatements(db)
	if err != nil {
		t.Fatal(err)
	}
	var statements []testenv.Statement
	for _, s := range ddl {
		statements = append(statements, testenv.Statement{Kind: testenv.Exec, SQL: s})
	}
	rec := &testenv.RecordingConn{}
	clock := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	store := &clickhouseAlerts{conn: rec, database: db, now: func() time.Time { clock = clock.Add(time.Minute); return clock }}
	ctx := context.Background()
	_ = store.tableExists(ctx) // recorded; answered by the engines below
	sent := time.Date(2026, 11, 30, 23, 59, 59, 0, time.UTC)
	share := Alert{AlertID: ID("acme", "c1", "share", "m4"), Tenant: "acme", ConversationID: "c1", Rule: "share", Kind: KindShare,
		MessageID: "m4", SpeakerRole: "customer", Label: "anger", Share: 2.0 / 3, WindowMessages: 6, MatchingMessages: 4, Threshold: 0.6,
		ConversationMessages: 5, Adapter: "support@1", SentAt: sent, Source: contract.Source{Topic: "chat", Partition: 2, Offset: 91344}}
	run := Alert{AlertID: ID("beta", "c'2", "run", "m9"), Tenant: "beta", ConversationID: "c'2", Rule: "run", Kind: KindRun,
		MessageID: "m9", SpeakerRole: "customer", Label: "sadness", RunLength: 3, ConversationMessages: 10,
		SentAt: sent.Add(time.Second), Source: contract.Source{Topic: "chat", Partition: 0, Offset: 7}}
	// The second insert is a redelivery after a crash before the state was
	// saved: the same alert again.
	for _, batch := range [][]Alert{{share, run}, {share}} {
		if err := store.Insert(ctx, batch); err != nil {
			t.Fatal(err)
		}
	}
	statements = append(statements, rec.Statements()...)
	tableLookup := len(ddl)
	dedup := len(statements)
	statements = append(statements,
		testenv.Statement{Kind: testenv.Query, SQL: "SELECT alert_id, tenant, conversation_id, rule, message_id, share, window_messages, run_length, sent_at, source_offset, inserted_at FROM " + db + ".alerts_dedup"},
		testenv.Statement{Kind: testenv.Query, SQL: "SELECT count() FROM " + db + ".alerts_dedup"},
	)

	cur := testenv.RunCurrentClickHouse(t, statements)
	t.Logf("ClickHouse %s (chDB): %d statements in %.2fs", cur.Version, len(statements), cur.Seconds)
	if major, _ := strconv.Atoi(strings.Split(cur.Version, ".")[0]); major < 24 {
		t.Errorf("chDB runs ClickHouse %s, not a current release", cur.Version)
	}
	for i, r := range cur.Results {
		if r.Error != "" {
			t.Fatalf("ClickHouse %s refused statement %d (%s):\n%s\n%s", cur.Version, i+1, statements[i].Kind, statements[i].SQL, r.Error)
		}
	}
	want := map[int][][]string{
		tableLookup: {{"1"}},
		dedup: {
			{share.AlertID, "acme", "c1", "share", "m4", "0.6666667", "6", "0", "2026-11-30 23:59:59", "91344", "2026-12-06 12:02:00"},
			{run.AlertID, "beta", "c'2", "run", "m9", "0", "0", "3", "2026-12-01 00:00:00", "7", "2026-12-06 12:01:00"},
		},
		dedup + 1: {{"2"}},
	}
	for i, rows := range want {
		got := cur.Results[i]
		if err := testenv.SameRows(got, testenv.Result{Columns: got.Columns, Data: rows}); err != nil {
			t.Errorf("ClickHouse %s: %v\n%s", cur.Version, err, statements[i].SQL)
		}
	}
	if t.Failed() {
		return
	}

	t.Run("same rows on 18.16", func(t *testing.T) {
		conn, err := openClickHouse(stage.SplitList(testenv.ClickHouse(t)), "default", "", nil, 30*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		testenv.DropAtCleanup(t, conn, db)
		testenv.CompareOnServer(t, conn, statements, cur)
	})
}
