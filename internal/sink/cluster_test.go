package sink

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"

	"github.com/emoflow/emoflow/internal/evaluate"
	"github.com/emoflow/emoflow/internal/service"
	"github.com/emoflow/emoflow/internal/testenv"
)

// clusterTables are the objects of the clustered schema on every host.
var clusterTables = []string{
	"alerts:Distributed",
	"alerts_dedup:Distributed",
	"alerts_dedup_local:View",
	"alerts_local:ReplicatedReplacingMergeTree",
	"events:Distributed",
	"events_dedup:Distributed",
	"events_dedup_local:View",
	"events_local:ReplicatedReplacingMergeTree",
	"label_counts_per_minute:View",
	"label_counts_per_minute_mv:MaterializedView",
	"label_counts_per_minute_state:Distributed",
	"label_counts_per_minute_state_local:ReplicatedAggregatingMergeTree",
	"schema_migrations:ReplicatedReplacingMergeTree",
}

// clusterFixture is a 2-shard, 2-replica ClickHouse 18.16 cluster with a
// connection to each node.
type clusterFixture struct {
	*testenv.ClickHouseCluster
	conns []driver.Conn
}

func (f *clusterFixture) migrator(node int, database string, timeout time.Duration) *migrator {
	return &migrator{conn: f.conns[node], database: database, cluster: f.Name, user: "default", timeout: timeout}
}

func (f *clusterFixture) query(t *testing.T, node int, query string, args ...any) [][]string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	got, err := testenv.Replay(ctx, f.conns[node], testenv.Statement{Kind: testenv.Query, SQL: query, Args: args})
	if err != nil {
		t.Fatalf("node %d: %s: %v", node+1, query, err)
	}
	return got.Data
}

func (f *clusterFixture) exec(t *testing.T, node int, stmt string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := f.conns[node].Exec(ctx, stmt); err != nil {
		t.Fatalf("node %d: %s: %v", node+1, stmt, err)
	}
}

func (f *clusterFixture) tables(t *testing.T, node int, database string) []string {
	t.Helper()
	var out []string
	for _, r := range f.query(t, node, "SELECT name, engine FROM system.tables WHERE database = ? ORDER BY name", database) {
		out = append(out, r[0]+":"+r[1])
	}
	return out
}

// syncReplicas waits until every replica of database's replicated tables
// has fetched what the others wrote.
func (f *clusterFixture) syncReplicas(t *testing.T, database string) {
	t.Helper()
	for i := range f.Nodes {
		for _, table := range []string{"events_local", "label_counts_per_minute_state_local", "schema_migrations"} {
			f.exec(t, i, "SYSTEM SYNC REPLICA "+database+"."+table)
		}
	}
}

// TestClusterSchema runs the clustered schema on a real replicated,
// sharded ClickHouse 18.16 cluster (2 shards x 2 replicas, ZooKeeper):
// an unknown cluster name, the migrations ON CLUSTER (twice), a migration
// interrupted by a replica that is down and completed when it is back, a
// host that lost part of the schema, and inserts with duplicates through
// the Distributed table, deduplicated across shards and replicas.
func TestClusterSchema(t *testing.T) {
	started := time.Now()
	c := testenv.StartClickHouseCluster(t, "emoflow_test", 2, 2)
	t.Logf("cluster of %d ClickHouse servers and ZooKeeper up in %.1fs", len(c.Nodes), time.Since(started).Seconds())
	f := &clusterFixture{ClickHouseCluster: c}
	for _, n := range c.Nodes {
		conn, err := openClickHouse(clickhouseOptions{Addrs: []string{n.Addr}, User: "default", Timeout: 30 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		f.conns = append(f.conns, conn)
	}
	db := testenv.Name(t, "cluster")
	ms, err := schemaMigrations(c.Name)
	if err != nil {
		t.Fatal(err)
	}
	single, err := schemaMigrations("")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	t.Run("unknown cluster", func(t *testing.T) {
		m := f.migrator(0, db, 10*time.Second)
		m.cluster = "no_such_cluster"
		_, _, err := m.Migrate(ctx, ms)
		var unknown *unknownClusterError
		if !errors.As(err, &unknown) || !strings.Contains(err.Error(), "no_such_cluster") || !strings.Contains(err.Error(), c.Name) {
			t.Fatalf("Migrate on an unknown cluster: %v, want an error naming it and the defined ones", err)
		}
		// The sink binary stops at start-up with a configuration error
		// (exit status 2), rather than retrying forever.
		runCtx, cancelRun := context.WithTimeout(ctx, 30*time.Second)
		defer cancelRun()
		var logs testenv.LogBuffer
		err = service.Run(runCtx, "sink", &Component{}, "127.0.0.1:0", []string{
			"-http-addr=127.0.0.1:0", "-kafka-brokers=127.0.0.1:1", "-clickhouse-addr=" + c.Nodes[0].Addr,
			"-clickhouse-database=" + db, "-clickhouse-cluster=no_such_cluster",
		}, func(string) (string, bool) { return "", false }, &logs, nil)
		var config *service.ConfigError
		if !errors.As(err, &config) || !strings.Contains(err.Error(), "does not define this cluster") {
			t.Errorf("sink with an unknown cluster: %v, want a configuration error\n%s", err, logs.String())
		}
		if got := f.query(t, 0, "SELECT count() FROM system.databases WHERE name = ?", db); got[0][0] != "0" {
			t.Errorf("the database was created on an unknown cluster")
		}
	})

	t.Run("interrupted by a replica that is down", func(t *testing.T) {
		// Migration 1 everywhere, then migration 2, half-done already, run
		// again while the second replica of shard 2 is down: the DDL is
		// queued for that replica in ZooKeeper, the statement fails, and
		// version 2 is not recorded.
		if applied, _, err := f.migrator(0, db, 30*time.Second).Migrate(ctx, ms[:1]); err != nil || !slices.Equal(applied, []int{1}) {
			t.Fatalf("migration 1: applied %v, %v", applied, err)
		}
		// A sink that died half-way through migration 2: its first
		// statement ran, on every host.
		f.exec(t, 0, ms[1].statementsFor(db, c.Name)[0])
		down := len(c.Nodes) - 1
		c.Stop(t, down)
		began := time.Now()
		applied, _, err := f.migrator(0, db, 5*time.Second).Migrate(ctx, ms)
		if err == nil || len(applied) != 0 {
			t.Fatalf("migration 2 with a replica down: applied %v, err %v; want an error", applied, err)
		}
		t.Logf("migration 2 with a replica down failed after %.1fs: %v", time.Since(began).Seconds(), err)
		if got := f.query(t, 0, "SELECT DISTINCT version FROM "+db+".schema_migrations ORDER BY version"); len(got) != 1 || got[0][0] != "1" {
			t.Errorf("recorded versions %v after the interrupted migration, want only 1", got)
		}
		c.Start(t, down)
		// The same sink (or another) runs the migrations again: version 2
		// is applied and recorded, and every host has the whole schema.
		m := f.migrator(1, db, 30*time.Second)
		applied, _, err = m.Migrate(ctx, ms)
		var rest []int
		for _, mig := range ms[1:] {
			rest = append(rest, mig.Version)
		}
		if err != nil || !slices.Equal(applied, rest) {
			t.Fatalf("rerun after the replica came back: applied %v, %v; want %v", applied, err, rest)
		}
		missing, err := m.missingObjects(ctx, ms)
		if err != nil || len(missing) != 0 {
			t.Fatalf("after the rerun: missing %v, %v", missing, err)
		}
	})

	t.Run("migrations run twice", func(t *testing.T) {
		// Every replica caught up (the one killed above becomes active
		// again once its old ZooKeeper session has expired).
		f.syncReplicas(t, db)
		for i := range c.Nodes {
			applied, changed, err := f.migrator(i, db, 30*time.Second).Migrate(ctx, ms)
			if err != nil || len(applied) != 0 || len(changed) != 0 {
				t.Errorf("again from node %d: applied %v changed %v err %v, want nothing", i+1, applied, changed, err)
			}
		}
		f.syncReplicas(t, db)
		for i := range c.Nodes {
			if got := f.tables(t, i, db); !slices.Equal(got, clusterTables) {
				t.Errorf("node %d tables %v, want %v", i+1, got, clusterTables)
			}
			if got := f.query(t, i, "SELECT uniqExact(version) FROM "+db+".schema_migrations"); got[0][0] != strconv.Itoa(len(ms)) {
				t.Errorf("node %d: %v versions in schema_migrations, want %d", i+1, got, len(ms))
			}
		}
		// The front objects have the single-node schema's columns.
		singleDB := db + "_single"
		for _, stmt := range func() []string { s, _ := SchemaStatements(singleDB); return s }() {
			f.exec(t, 0, stmt)
		}
		defer f.exec(t, 0, "DROP DATABASE IF EXISTS "+singleDB)
		for _, table := range []string{"events", "events_dedup", "label_counts_per_minute", "label_counts_per_minute_state", "alerts", "alerts_dedup"} {
			describe := func(database string) string {
				var cols []string
				for _, r := range f.query(t, 0, "DESCRIBE TABLE "+database+"."+table) {
					cols = append(cols, r[0]+" "+r[1])
				}
				return strings.Join(cols, ", ")
			}
			if a, b := describe(db), describe(singleDB); a != b {
				t.Errorf("%s: columns of the clustered schema\n%s\ndiffer from the single-node schema's\n%s", table, a, b)
			}
		}
		if len(single) != len(ms) {
			t.Errorf("%d single-node migrations, %d clustered", len(single), len(ms))
		}
	})

	t.Run("a host that lost part of the schema", func(t *testing.T) {
		// The materialized view gone from one replica (a host restored
		// from an old backup): its inserts would miss the per-minute
		// counts. Migrate finds it and creates it again.
		f.exec(t, 2, "DROP TABLE "+db+".label_counts_per_minute_mv")
		m := f.migrator(0, db, 30*time.Second)
		missing, err := m.missingObjects(ctx, ms)
		if err != nil || len(missing) != 1 || !strings.Contains(missing[0], "label_counts_per_minute_mv") || !strings.Contains(missing[0], c.Nodes[2].Addr) {
			t.Fatalf("missing objects %v, %v; want the view on %s", missing, err, c.Nodes[2].Addr)
		}
		if _, _, err := m.Migrate(ctx, ms); err != nil {
			t.Fatal(err)
		}
		if got := f.tables(t, 2, db); !slices.Equal(got, clusterTables) {
			t.Errorf("node 3 tables after Migrate %v, want %v", got, clusterTables)
		}
	})
	if t.Failed() {
		return
	}

	t.Run("a replica rebuilt after the columns were added", func(t *testing.T) {
		// A host replaced by an empty one: 0001 creates its events_local
		// with 0001's columns while ZooKeeper holds 0004's, and 0004's
		// ADD COLUMN then finds them there. The replica must end up with
		// the table's columns (the inserts and reads below go through it).
		f.exec(t, 2, "DROP TABLE "+db+".events_local")
		m := f.migrator(0, db, 30*time.Second)
		if _, _, err := m.Migrate(ctx, ms); err != nil {
			t.Fatal(err)
		}
		if got := f.tables(t, 2, db); !slices.Equal(got, clusterTables) {
			t.Errorf("node 3 tables after Migrate %v, want %v", got, clusterTables)
		}
		cols := f.query(t, 2, "SELECT name FROM system.columns WHERE database = ? AND table = 'events_local' AND name LIKE 'context_%' ORDER BY name", db)
		if len(cols) != 2 || cols[0][0] != "context_messages" || cols[1][0] != "context_source" {
			t.Errorf("node 3 events_local context columns %v, want context_messages and context_source", cols)
		}
	})
	if t.Failed() {
		return
	}

	t.Run("dedup across shards and replicas", func(t *testing.T) {
		base := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
		const events = 200
		var rows []eventRow
		for i := range events {
			sent := base.Add(time.Duration(i) * 7 * time.Second)
			if i%50 == 0 {
				sent = base.AddDate(0, -1, 0) // a second month in the batch
			}
			label := []string{"joy", "anger", "sadness", "fear"}[i%4]
			row := eventRow{
				MessageID: fmt.Sprintf("m-%03d", i), Adapter: "emo@1", RunID: "live", ConversationID: fmt.Sprintf("c-%d", i%9),
				Tenant: []string{"acme", "beta"}[i%2], Label: label, ProbLabels: []string{label}, ProbValues: []float32{1},
				SentAt: sent, ReceivedAt: sent, ClassifiedAt: sent,
			}
			if i%2 == 1 {
				row.ContextMessages, row.ContextSource = 2, "redis"
			}
			rows = append(rows, row)
		}
		// Every event through node 1, the first half again through node
		// 4 (a redelivery to a sink connected elsewhere), a third time
		// twice within one insert through node 2.
		inserts := []struct {
			node int
			rows []eventRow
		}{
			{0, rows},
			{3, rows[:events/2]},
			{1, append(slices.Clone(rows[10:20]), rows[10:20]...)},
		}
		for i, in := range inserts {
			store := &clickhouseStore{conn: f.conns[in.node], database: db, cluster: true, now: steppingClock(base.Add(time.Duration(i) * time.Hour))}
			if err := store.Insert(ctx, in.rows); err != nil {
				t.Fatalf("insert %d through node %d: %v", i+1, in.node+1, err)
			}
		}
		f.syncReplicas(t, db)

		shardRows := map[int]int{}
		for i, n := range c.Nodes {
			// Each replica of a shard holds the same rows; the shards
			// split the events, and no event is on both.
			got := f.query(t, i, "SELECT count(), uniqExact(message_id) FROM "+db+".events_local FINAL")
			if got[0][0] != got[0][1] {
				t.Errorf("node %d: %s rows for %s events in events_local FINAL", i+1, got[0][0], got[0][1])
			}
			rows, _ := strconv.Atoi(got[0][0])
			if prev, ok := shardRows[n.Shard]; ok && prev != rows {
				t.Errorf("shard %d: replicas hold %d and %d events", n.Shard, prev, rows)
			}
			shardRows[n.Shard] = rows
		}
		if shardRows[1] == 0 || shardRows[2] == 0 || shardRows[1]+shardRows[2] != events {
			t.Errorf("events per shard %v: want both shards used, %d events in all", shardRows, events)
		}
		t.Logf("events per shard: %v", shardRows)
		for i := range c.Nodes {
			want := [][]string{{fmt.Sprint(events), fmt.Sprint(events)}}
			if got := f.query(t, i, "SELECT count(), uniqExact(message_id) FROM "+db+".events_dedup"); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("node %d: events_dedup count, uniq %v, want %v", i+1, got, want)
			}
			// Half the events with context, half without, through the
			// Distributed table and the view of every shard.
			byContext := "SELECT countIf(context_messages = 2 AND context_source = 'redis'), countIf(context_messages = 0 AND context_source = '') FROM " + db + ".events_dedup"
			if got, want := f.query(t, i, byContext), [][]string{{fmt.Sprint(events / 2), fmt.Sprint(events / 2)}}; fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("node %d: events_dedup with and without context %v, want %v", i+1, got, want)
			}
			if got := f.query(t, i, "SELECT count() FROM "+db+".events"); got[0][0] != fmt.Sprint(events+events/2+20) {
				t.Errorf("node %d: events holds %v rows, want every insert's %d", i+1, got, events+events/2+20)
			}
			if got := f.query(t, i, "SELECT sum(messages) FROM "+db+".label_counts_per_minute"); got[0][0] != fmt.Sprint(events) {
				t.Errorf("node %d: label_counts_per_minute adds up to %v, want %d", i+1, got, events)
			}
			if got := f.query(t, i, "SELECT uniqExactMerge(messages) FROM "+db+".label_counts_per_minute_state WHERE tenant = 'acme'"); got[0][0] != fmt.Sprint(events/2) {
				t.Errorf("node %d: acme's messages %v, want %d", i+1, got, events/2)
			}
		}
		// The row kept is the latest insert's.
		if got := f.query(t, 2, "SELECT inserted_at FROM "+db+".events_dedup WHERE message_id = 'm-015'"); len(got) != 1 || got[0][0] != "2025-03-01 14:00:00" {
			t.Errorf("m-015 kept from %v, want the third insert (14:00)", got)
		}
	})

	t.Run("a replica down", func(t *testing.T) {
		// A sink (re)starting while the second replica of shard 1 is down:
		// the schema is current, so it runs no DDL (which would wait for
		// that replica) and starts at once; its inserts go to the replica
		// that is up, and the other catches up when it is back.
		const down = 1
		c.Stop(t, down)
		began := time.Now()
		applied, changed, err := f.migrator(0, db, 5*time.Second).Migrate(ctx, ms)
		if err != nil || len(applied) != 0 || len(changed) != 0 {
			t.Fatalf("Migrate with a replica down: applied %v changed %v err %v; want nothing to do", applied, changed, err)
		}
		t.Logf("Migrate with a replica down: %.2fs", time.Since(began).Seconds())
		base := time.Date(2025, 3, 2, 8, 0, 0, 0, time.UTC)
		var rows []eventRow
		for i := range 20 {
			rows = append(rows, eventRow{
				MessageID: fmt.Sprintf("d-%02d", i), Adapter: "emo@1", RunID: "live", Tenant: "acme", Label: "joy",
				SentAt: base, ReceivedAt: base, ClassifiedAt: base,
			})
		}
		store := &clickhouseStore{conn: f.conns[0], database: db, cluster: true, now: steppingClock(base)}
		for range 2 {
			if err := store.Insert(ctx, rows); err != nil {
				t.Fatalf("insert with a replica down: %v", err)
			}
		}
		c.Start(t, down)
		f.syncReplicas(t, db)
		peer := f.query(t, 0, "SELECT count() FROM "+db+".events_local FINAL")
		if got := f.query(t, down, "SELECT count() FROM "+db+".events_local FINAL"); fmt.Sprint(got) != fmt.Sprint(peer) {
			t.Errorf("the replica that was down holds %v events, its peer %v", got, peer)
		}
		for i := range c.Nodes {
			if got := f.query(t, i, "SELECT count() FROM "+db+".events_dedup"); got[0][0] != "220" {
				t.Errorf("node %d: events_dedup holds %v, want 220", i+1, got)
			}
		}
	})

	t.Run("emoctl's queries", func(t *testing.T) {
		// A second run over 100 of the live messages, every label changed,
		// then what emoctl eval and compare ask of the cluster.
		base := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
		var rows []eventRow
		for i := range 100 {
			sent := base.Add(time.Duration(i) * 7 * time.Second)
			if i%50 == 0 {
				sent = base.AddDate(0, -1, 0)
			}
			rows = append(rows, eventRow{
				MessageID: fmt.Sprintf("m-%03d", i), Adapter: "emo@1", RunID: "r2", Tenant: []string{"acme", "beta"}[i%2],
				Label: "surprise", TrueLabel: "joy", SentAt: sent, ReceivedAt: sent, ClassifiedAt: sent,
			})
		}
		store := &clickhouseStore{conn: f.conns[2], database: db, cluster: true, now: steppingClock(base)}
		if err := store.Insert(ctx, rows); err != nil {
			t.Fatal(err)
		}
		f.syncReplicas(t, db)
		es, err := evaluate.OpenStore(ctx, evaluate.StoreOptions{Addrs: []string{c.Nodes[3].Addr}, Database: db, User: "default", Timeout: 30 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer es.Close()
		live, err := es.Resolve(ctx, evaluate.RunSelector{RunID: "live"})
		if err != nil || live.Adapter != "emo@1" {
			t.Fatalf("Resolve(live): %+v, %v", live, err)
		}
		r2, err := es.Resolve(ctx, evaluate.RunSelector{RunID: "r2"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := es.Confusion(ctx, r2); err != nil {
			t.Errorf("Confusion: %v", err)
		}
		transitions, onlyA, onlyB, err := es.Transitions(ctx, live, r2)
		if err != nil {
			t.Fatal(err)
		}
		paired := 0
		for _, n := range transitions {
			paired += n
		}
		if paired != 100 || onlyA != 120 || onlyB != 0 {
			t.Errorf("compare live r2: %d paired, %d only in live, %d only in r2; want 100, 120, 0", paired, onlyA, onlyB)
		}
		changed, err := es.Changed(ctx, live, r2, 1000)
		if err != nil || len(changed) != 100 {
			t.Errorf("Changed: %d messages, %v; want 100", len(changed), err)
		}
	})

	t.Run("the sink binary", func(t *testing.T) {
		// The sink, from Kafka, with -clickhouse-cluster, started on a
		// database without schema while a replica is down: it cannot
		// create the schema (ON CLUSTER waits for that replica), so it is
		// not ready and writes nothing; once the replica is back it
		// creates the schema and stores every event once.
		in := newIntegration(t)
		in.conn.Close()
		conn, err := openClickHouse(clickhouseOptions{Addrs: []string{c.Nodes[0].Addr}, User: "default", Timeout: 30 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		in.conn = conn // newIntegration's clean-up drops the database here
		in.clickhouse = c.Nodes[0].Addr + "," + c.Nodes[1].Addr
		in.database = db + "_sink"
		events := testEvents(60)
		in.produce(t, events)
		in.produce(t, events[:30]) // delivered twice

		const down = 3
		c.Stop(t, down)
		s := startSink(t, in.args("-clickhouse-cluster="+c.Name, "-insert-timeout=3s"))
		testenv.WaitUntil(t, 30*time.Second, "a failed attempt at the migrations", func() (bool, string) {
			_, why := s.rt.Ready()
			return strings.HasPrefix(why, "starting: clickhouse migrations: "), why
		})
		if code, body := s.readyz(t); code != 503 || !strings.Contains(body, "clickhouse migrations") {
			t.Errorf("/readyz with a replica down before the schema exists: %d %q, want 503 starting: clickhouse migrations", code, body)
		}
		if got := f.query(t, 0, "SELECT count() FROM system.tables WHERE database = ? AND name = 'events_local'", in.database); got[0][0] != "0" {
			t.Errorf("events_local exists while the schema could not be completed")
		}
		if n := s.metric(t, "emoflow_sink_rows_inserted_total"); n != 0 {
			t.Errorf("%v rows inserted before the schema was complete", n)
		}
		c.Start(t, down)
		in.waitForDedupCount(t, int64(len(events)), 90*time.Second)
		f.syncReplicas(t, in.database)
		in.checkPerMinuteCounts(t, events)
		if got := f.query(t, down, "SELECT count() FROM "+in.database+".events_dedup"); got[0][0] != fmt.Sprint(len(events)) {
			t.Errorf("events_dedup from the replica that was down: %v, want %d", got, len(events))
		}
		if err := s.stop(t); err != nil {
			t.Errorf("sink stopped with %v", err)
		}
		for i := range c.Nodes {
			f.exec(t, i, "DROP DATABASE IF EXISTS "+in.database)
		}
	})

	dropped := time.Now()
	for i := range c.Nodes {
		f.exec(t, i, "DROP DATABASE IF EXISTS "+db)
	}
	t.Logf("database dropped on every node in %.1fs", time.Since(dropped).Seconds())
}
