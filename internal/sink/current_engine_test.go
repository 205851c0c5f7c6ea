package sink

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/emoflow/emoflow/internal/stage"
	"github.com/emoflow/emoflow/internal/testenv"
)

// demoQueries returns the ClickHouse queries of scripts/demo.sh (its q
// "SELECT ..." calls and the clickhouse-client --query hint at the end),
// with the script's $db, $run and $n replaced and any trailing FORMAT
// clause removed, so that the test runs the demo's own text.
func demoQueries(t *testing.T, db, run string, n int) []string {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(testenv.RepoRoot(t), "scripts", "demo.sh"))
	if err != nil {
		t.Fatal(err)
	}
	found := regexp.MustCompile(`(?:\bq|--query) "(SELECT [^"]*)"`).FindAllStringSubmatch(string(raw), -1)
	if len(found) < 5 {
		t.Fatalf("scripts/demo.sh: found %d queries, want the 5 it had when this test was written", len(found))
	}
	vars := strings.NewReplacer("$db", db, "$run", run, "$n", strconv.Itoa(n))
	format := regexp.MustCompile(`\s+FORMAT\s+\w+\s*$`)
	var out []string
	for _, m := range found {
		q := format.ReplaceAllString(vars.Replace(m[1]), "")
		if strings.Contains(q, "$") {
			t.Fatalf("scripts/demo.sh query with a variable this test does not know: %s", m[1])
		}
		out = append(out, q)
	}
	return out
}

// steppingClock returns times a minute apart from start, one per call.
func steppingClock(start time.Time) func() time.Time {
	next := start
	return func() time.Time {
		now := next
		next = next.Add(time.Minute)
		return now
	}
}

// TestCurrentClickHouse runs what the sink sends to ClickHouse (the
// migrations with their schema_migrations bookkeeping, then inserts of
// events, redelivered ones included) and the demo's queries on a current
// ClickHouse release in-process (chDB), checks the deduplicated view and
// the per-minute counts there, and then replays the same statements on the
// 18.16 server and compares every query's rows.
func TestCurrentClickHouse(t *testing.T) {
	db := testenv.Name(t, "current")
	rec := &testenv.RecordingConn{}
	ctx := context.Background()

	// The sink's statements, recorded as the sink sends them.
	ms, err := loadMigrations(migrationFiles, "migrations")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := (&migrator{conn: rec, database: db, timeout: time.Minute}).Migrate(ctx, ms); err != nil {
		t.Fatal(err)
	}
	migration := rec.Statements()
	schema, err := SchemaStatements(db)
	if err != nil {
		t.Fatal(err)
	}
	var ddl []testenv.Statement
	for _, s := range migration {
		if s.Kind == testenv.Exec {
			ddl = append(ddl, s)
		}
	}
	if len(ddl) != len(schema) {
		t.Fatalf("Migrate ran %d statements, SchemaStatements has %d", len(ddl), len(schema))
	}
	for i := range ddl {
		if ddl[i].SQL != schema[i] {
			t.Fatalf("statement %d: Migrate ran\n%s\nSchemaStatements has\n%s", i+1, ddl[i].SQL, schema[i])
		}
	}

	base := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	ev := func(id, tenant, label, trueLabel string, sent time.Time, pipelineMs float32, cacheHit bool) eventRow {
		return eventRow{
			MessageID: id, Adapter: "emo@1", RunID: "live", ConversationID: "c-" + tenant, Tenant: tenant,
			SpeakerRole: "customer", Language: "en", TextFingerprint: "fp-" + id, Text: "it's \\ \"quoted\"",
			Label: label, ProbLabels: []string{"joy", label}, ProbValues: []float32{0.25, 0.75}, TrueLabel: trueLabel,
			Model: "m", LabelSet: "ekman", CacheHit: cacheHit, SentAt: sent, ReceivedAt: sent.Add(time.Second),
			ClassifiedAt: sent.Add(2 * time.Second), CacheMs: 0.5, ClassifyMs: 2, PipelineMs: pipelineMs,
			SourceTopic: "chat", SourcePartition: 1, SourceOffset: 7, EventPartition: 2, EventOffset: 9,
		}
	}
	demo1 := ev("demo-1", "acme", "joy", "joy", base.Add(10*time.Second), 10, false)
	demo1.ContextMessages, demo1.ContextSource = 2, "redis"
	demo2 := ev("demo-2", "acme", "joy", "sadness", base.Add(40*time.Second), 20, true)
	demo2.ContextMessages, demo2.ContextSource = 1, "memory"
	demo3 := ev("demo-3", "acme", "anger", "anger", base.Add(65*time.Second), 30, false)
	demo5 := ev("demo-5", "beta", "sadness", "sadness", base.Add(-12*time.Hour-time.Second), 50, false) // February
	batches := [][]eventRow{
		{
			demo1,
			demo2,
			demo3,
			ev("demo-4", "beta", "joy", "", base.Add(110*time.Second), 40, false),
			demo5,
			ev("other-1", "acme", "joy", "", base.Add(20*time.Second), 5, false),
		},
		// Redelivered after a crash: the same events in a later insert.
		{demo1, demo5},
		// A batch holding an event twice, and one new event.
		{demo3, demo3, ev("demo-6", "acme", "fear", "", base.Add(90*time.Second), 60, false)},
	}
	store := &clickhouseStore{conn: rec, database: db, now: steppingClock(base.Add(5 * time.Minute))}
	for _, b := range batches {
		if err := store.Insert(ctx, b); err != nil {
			t.Fatal(err)
		}
	}
	inserts := 0
	for _, s := range rec.Statements()[len(migration):] {
		if s.Kind != testenv.Insert {
			t.Fatalf("Insert sent %s %s", s.Kind, s.SQL)
		}
		inserts++
	}
	if inserts != 5 { // the first two batches span two months each
		t.Fatalf("%d inserts, want 5", inserts)
	}
	// Then the sink's read of the applied versions (what a restarted sink
	// sends after the bootstrap), the migrations' DDL once more (as a sink
	// whose migration was interrupted runs it again: a no-op over the
	// existing tables and rows), and the read again. The ADD COLUMNs of
	// the second run fail, the column being there: they are sent last, to
	// check that their errors are the ones Migrate takes as done.
	if _, err := (&migrator{conn: rec, database: db, timeout: time.Minute}).recorded(ctx); err != nil {
		t.Fatal(err)
	}
	var addColumns []string
	statements := rec.Statements()
	for _, s := range ddl {
		if addColumn.MatchString(s.SQL) {
			addColumns = append(addColumns, s.SQL)
			continue
		}
		statements = append(statements, s)
	}
	if len(addColumns) == 0 {
		t.Fatal("no ADD COLUMN in the migrations: this test's rerun of them checks nothing")
	}
	statements = append(statements, rec.Statements()[len(rec.Statements())-1])

	// Before migration 4, a row as the sinks before it inserted it: without
	// the context columns, which it reads as 0 and ''.
	contextMigration := slices.IndexFunc(statements, func(s testenv.Statement) bool {
		return s.SQL == ms[3].statementsFor(db, "")[0]
	})
	if ms[3].Name != "event_context" || contextMigration < 0 {
		t.Fatalf("migration 4 (%s) not found in the statements", ms[3].Name)
	}
	oldRow := testenv.Statement{
		Kind: testenv.Insert,
		SQL:  "INSERT INTO " + db + ".events (message_id, adapter, run_id, tenant, label, text, sent_at, received_at, classified_at, inserted_at, version)",
		Rows: [][]any{{"old-1", "emo@1", "live", "acme", "joy", "it's \\ \"quoted\"", base.Add(30 * time.Second), base, base, base.Add(4 * time.Minute), uint64(1)}},
	}
	statements = slices.Insert(statements, contextMigration, oldRow)

	// What the test reads: the deduplicated view, FINAL, the per-minute
	// counts, and the demo's queries.
	checks := map[string]int{}
	check := func(name, sql string) {
		checks[name] = len(statements)
		statements = append(statements, testenv.Statement{Kind: testenv.Query, SQL: sql})
	}
	checks["schema_migrations"] = len(statements) - 1
	check("dedup", "SELECT message_id, tenant, label, inserted_at, prob_values FROM "+db+".events_dedup ORDER BY message_id")
	check("final", "SELECT count(), uniqExact(message_id), any(text) FROM "+db+".events FINAL")
	check("context", "SELECT message_id, context_messages, context_source FROM "+db+".events_dedup ORDER BY message_id")
	check("per minute", "SELECT minute, tenant, adapter, run_id, label, messages FROM "+db+".label_counts_per_minute")
	demo := demoQueries(t, db, "demo", 6)
	for i, q := range demo {
		check("demo "+strconv.Itoa(i+1), q)
	}

	checked := len(statements)
	for _, sql := range addColumns {
		statements = append(statements, testenv.Statement{Kind: testenv.Exec, SQL: sql})
	}

	run := testenv.RunCurrentClickHouse(t, statements)
	t.Logf("ClickHouse %s (chDB): %d statements in %.2fs", run.Version, len(statements), run.Seconds)
	if major, _ := strconv.Atoi(strings.Split(run.Version, ".")[0]); major < 24 {
		t.Errorf("chDB runs ClickHouse %s, not a current release", run.Version)
	}
	failed := false
	code := regexp.MustCompile(`Code: (\d+)\. DB::Exception: `)
	for i, r := range run.Results[checked:] {
		sql := statements[checked+i].SQL
		m := code.FindStringSubmatch(r.Error)
		if m == nil {
			failed = true
			t.Errorf("ClickHouse %s, an ADD COLUMN run again: %q, want it to fail as the column exists\n%s", run.Version, r.Error, sql)
			continue
		}
		n, _ := strconv.Atoi(m[1])
		if err := (&clickhouse.Exception{Code: int32(n), Message: r.Error[len(m[0]):]}); !columnAlreadyAdded(sql, err) {
			failed = true
			t.Errorf("ClickHouse %s, an ADD COLUMN run again: Migrate would not take %q as done\n%s", run.Version, r.Error, sql)
		}
	}
	for i, r := range run.Results[:checked] {
		if r.Error != "" {
			failed = true
			t.Errorf("ClickHouse %s refused statement %d (%s):\n%s\n%s", run.Version, i+1, statements[i].Kind, firstLine(statements[i].SQL), r.Error)
		}
	}
	if failed {
		t.FailNow()
	}

	var applied [][]string
	for _, m := range ms {
		applied = append(applied, []string{strconv.Itoa(m.Version), m.Checksum})
	}
	want := map[string][][]string{
		"schema_migrations": applied,
		// demo-1 and demo-5 from the redelivery (inserted at 12:06), demo-3
		// from the third insert (12:07).
		"dedup": {
			{"demo-1", "acme", "joy", "2025-03-01 12:06:00", "[0.25,0.75]"},
			{"demo-2", "acme", "joy", "2025-03-01 12:05:00", "[0.25,0.75]"},
			{"demo-3", "acme", "anger", "2025-03-01 12:07:00", "[0.25,0.75]"},
			{"demo-4", "beta", "joy", "2025-03-01 12:05:00", "[0.25,0.75]"},
			{"demo-5", "beta", "sadness", "2025-03-01 12:06:00", "[0.25,0.75]"},
			{"demo-6", "acme", "fear", "2025-03-01 12:07:00", "[0.25,0.75]"},
			{"old-1", "acme", "joy", "2025-03-01 12:04:00", "[]"},
			{"other-1", "acme", "joy", "2025-03-01 12:05:00", "[0.25,0.75]"},
		},
		"final": {{"8", "8", `it's \ "quoted"`}},
		"context": {
			{"demo-1", "2", "redis"}, {"demo-2", "1", "memory"}, {"demo-3", "0", ""}, {"demo-4", "0", ""},
			{"demo-5", "0", ""}, {"demo-6", "0", ""}, {"old-1", "0", ""}, {"other-1", "0", ""},
		},
		"per minute": {
			{"2025-02-28 23:59:00", "beta", "emo@1", "live", "sadness", "1"},
			{"2025-03-01 12:00:00", "acme", "emo@1", "live", "joy", "4"},
			{"2025-03-01 12:01:00", "acme", "emo@1", "live", "anger", "1"},
			{"2025-03-01 12:01:00", "acme", "emo@1", "live", "fear", "1"},
			{"2025-03-01 12:01:00", "beta", "emo@1", "live", "joy", "1"},
		},
		// The demo: rows seen, rows by label, latency and cache,
		// agreement, and the per-minute counts, newest first.
		"demo 1": {{"6"}},
		"demo 2": {{"joy", "3", "50"}, {"anger", "1", "16.7"}, {"sadness", "1", "16.7"}, {"fear", "1", "16.7"}},
		"demo 3": {{"6", "1", "35", "59.5", "2"}},
		"demo 4": {{"3", "4", "75"}},
	}
	for name, rows := range want {
		got := run.Results[checks[name]]
		if err := testenv.SameRows(got, testenv.Result{Columns: got.Columns, Data: rows}); err != nil {
			t.Errorf("%s on ClickHouse %s: %v\n%s", name, run.Version, err, statements[checks[name]].SQL)
		}
	}
	if got := run.Results[checks["dedup"]].Data; len(got) == 8 && got[0][0] != "demo-1" {
		t.Errorf("dedup: not ordered by message id: %v", got)
	}
	// The per-minute hint is the demo's last query.
	perMinute := run.Results[checks["demo "+strconv.Itoa(len(demo))]]
	if err := testenv.SameRows(perMinute, testenv.Result{Columns: perMinute.Columns, Data: want["per minute"]}); err != nil {
		t.Errorf("the demo's per-minute query: %v", err)
	}
	if t.Failed() {
		return
	}

	t.Run("same rows on 18.16", func(t *testing.T) {
		conn, err := openClickHouse(clickhouseOptions{Addrs: stage.SplitList(testenv.ClickHouse(t)), User: "default", Timeout: 30 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		testenv.DropAtCleanup(t, conn, db)
		testenv.CompareOnServer(t, conn, statements[:checked], run)
		for _, s := range statements[checked:] {
			execCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err := conn.Exec(execCtx, s.SQL)
			cancel()
			if !columnAlreadyAdded(s.SQL, err) {
				t.Errorf("an ADD COLUMN run again: %v, want the error Migrate takes as done\n%s", err, s.SQL)
			}
		}
	})
}

// TestCurrentClickHouseClusterSchema checks the clustered schema on a
// current ClickHouse release in-process (chDB): every statement as the sink
// sends it is parsed (EXPLAIN AST); then, in a session configured like one
// host of a cluster (macros, remote_servers with this host as the only
// shard, an in-memory Keeper), the DDL without ON CLUSTER (chDB runs no
// distributed DDL) creates the Replicated, Distributed and view objects,
// whose columns are compared with the single-node schema's, and the sink's
// cluster queries and the dashboards' reads run over them. chDB's replicated
// tables stay read-only (no replication threads run in-process), so no rows
// go in here: TestClusterSchema stores and deduplicates them on a real 18.16
// cluster.
func TestCurrentClickHouseClusterSchema(t *testing.T) {
	const cluster = "emoflow_cluster"
	db := testenv.Name(t, "current_cluster")
	ddl, err := ClusterSchemaStatements(db, cluster)
	if err != nil {
		t.Fatal(err)
	}
	m := &migrator{database: db, cluster: cluster, user: "default", password: `it's`}
	remote := strings.Replace(fmt.Sprintf("SELECT name FROM remote(%s, system, tables, %s, %s) WHERE database = ?",
		quoteString("ch-0.ch:9000"), quoteString(m.user), quoteString(m.password)), "?", quoteString(db), 1)
	var statements []testenv.Statement
	add := func(kind testenv.StatementKind, sql string) int {
		statements = append(statements, testenv.Statement{Kind: kind, SQL: sql})
		return len(statements) - 1
	}
	for _, s := range ddl {
		add(testenv.Query, "EXPLAIN AST "+s)
	}
	add(testenv.Query, "EXPLAIN AST "+remote)
	parsed := len(statements)
	// chDB's replicated tables are read-only: an ALTER of one (parsed
	// above) is refused with TABLE_IS_READ_ONLY, so the _local tables, and
	// the objects created from them, lack the columns it adds here.
	readOnly := map[int]bool{}
	notAdded := map[string]bool{}
	replicatedAlter := regexp.MustCompile(`^ALTER TABLE \S+_local `)
	for _, s := range ddl {
		i := add(testenv.Exec, strings.Replace(s, " ON CLUSTER "+cluster, "", 1))
		if replicatedAlter.MatchString(s) {
			readOnly[i] = true
			notAdded[addColumn.FindStringSubmatch(s)[1]] = true
		}
	}
	single := db + "_single"
	singleDDL, err := SchemaStatements(single)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range singleDDL {
		add(testenv.Exec, s)
	}
	created := len(statements)
	tables := add(testenv.Query, "SELECT name, engine FROM system.tables WHERE database = '"+db+"' ORDER BY name")
	clusters := add(testenv.Query, "SELECT DISTINCT cluster FROM system.clusters ORDER BY cluster")
	hosts := add(testenv.Query, "SELECT host_name, port, shard_num, replica_num FROM system.clusters WHERE cluster = '"+cluster+"' ORDER BY shard_num, replica_num")
	front := []string{"events", "events_dedup", "label_counts_per_minute", "label_counts_per_minute_state", "alerts", "alerts_dedup"}
	describe := map[string][2]int{}
	for _, table := range front {
		describe[table] = [2]int{add(testenv.Query, "DESCRIBE TABLE "+db+"."+table), add(testenv.Query, "DESCRIBE TABLE "+single+"."+table)}
	}
	reads := []int{
		add(testenv.Query, "SELECT count(), uniqExact(message_id) FROM "+db+".events_dedup"),
		add(testenv.Query, "SELECT count() FROM "+db+".events FINAL"),
		add(testenv.Query, "SELECT count() FROM "+db+".label_counts_per_minute"),
		add(testenv.Query, "SELECT uniqExactMerge(messages) FROM "+db+".label_counts_per_minute_state"),
	}
	onUnknownCluster := add(testenv.Exec, strings.Replace(ddl[0], " ON CLUSTER "+cluster, " ON CLUSTER no_such_cluster", 1))
	checked := len(statements)
	// Dropped before the session closes: chDB hangs at exit over
	// replicated tables that are still attached.
	add(testenv.Exec, "DROP DATABASE "+db+" SYNC")
	add(testenv.Exec, "DROP DATABASE "+single+" SYNC")

	config := `<clickhouse>
    <tcp_port>9000</tcp_port>
    <zookeeper><implementation>testkeeper</implementation></zookeeper>
    <macros><shard>01</shard><replica>r1</replica></macros>
    <remote_servers><` + cluster + `><shard><internal_replication>true</internal_replication>
        <replica><host>localhost</host><port>9000</port></replica>
    </shard></` + cluster + `></remote_servers>
</clickhouse>`
	run := testenv.RunCurrentClickHouseWithConfig(t, config, statements)
	t.Logf("ClickHouse %s (chDB): %d statements in %.2fs", run.Version, len(statements), run.Seconds)
	for i, r := range run.Results {
		switch {
		case readOnly[i]:
			if !strings.Contains(r.Error, "TABLE_IS_READ_ONLY") {
				t.Errorf("ClickHouse %s, statement %d on a read-only replicated table: %q, want TABLE_IS_READ_ONLY\n%s", run.Version, i+1, r.Error, statements[i].SQL)
			}
		case r.Error != "" && i != onUnknownCluster:
			t.Errorf("ClickHouse %s refused statement %d:\n%s\n%s", run.Version, i+1, statements[i].SQL, r.Error)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	var got []string
	for _, row := range run.Results[tables].Data {
		got = append(got, row[0]+":"+row[1])
	}
	if !slices.Equal(got, clusterTables) {
		t.Errorf("tables on ClickHouse %s: %v, want %v", run.Version, got, clusterTables)
	}
	if got := run.Results[clusters].Data; len(got) != 1 || got[0][0] != cluster {
		t.Errorf("clusters %v, want %s", got, cluster)
	}
	if got := run.Results[hosts].Data; len(got) != 1 || got[0][0] != "localhost" || got[0][1] != "9000" {
		t.Errorf("hosts of the cluster %v", got)
	}
	for _, table := range front {
		a, b := run.Results[describe[table][0]], run.Results[describe[table][1]]
		b.Data = slices.DeleteFunc(slices.Clone(b.Data), func(row []string) bool { return notAdded[row[0]] })
		if err := testenv.SameRows(a, b); err != nil {
			t.Errorf("%s: the clustered schema's columns differ from the single-node schema's on ClickHouse %s: %v", table, run.Version, err)
		}
	}
	for _, i := range reads {
		for _, cell := range run.Results[i].Data[0] {
			if cell != "0" {
				t.Errorf("%s on the empty schema: %v", statements[i].SQL, run.Results[i].Data)
			}
		}
	}
	if err := run.Results[onUnknownCluster].Error; !strings.Contains(err, "CLUSTER_DOESNT_EXIST") {
		t.Errorf("ON CLUSTER with an unknown cluster on ClickHouse %s: %q, want CLUSTER_DOESNT_EXIST", run.Version, err)
	}
	t.Logf("parsed %d statements, created the clustered schema with %d, checked it with %d", parsed, created-parsed, checked-created)
}
