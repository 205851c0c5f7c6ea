package dashboards

import (
	"context"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"

	"github.com/emoflow/emoflow/internal/sink"
	"github.com/emoflow/emoflow/internal/testenv"
)

// base is when the sample conversations of the tests begin.
func base() time.Time { return time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC) }

// sampleEvent is one stored emotion event of the tests.
type sampleEvent struct {
	id, adapter, run, conversation, tenant, role, label string
	sent                                                time.Time
	cacheHit                                            bool
	pipelineMs, classifyMs                              float32
}

// conversation returns a customer's messages in one conversation, a minute
// apart from base+offset, labelled in order.
func conversation(id, tenant, adapter string, offset time.Duration, cacheHit bool, labels ...string) []sampleEvent {
	var out []sampleEvent
	for i, l := range labels {
		out = append(out, sampleEvent{
			id: id + "-" + strconv.Itoa(i+1), adapter: adapter, run: "live", conversation: id, tenant: tenant,
			role: "customer", label: l, sent: base().Add(offset + time.Duration(i)*time.Minute), cacheHit: cacheHit,
			pipelineMs: float32(10 * (i + 1)), classifyMs: float32(5 * (i + 1)),
		})
	}
	return out
}

// sampleEvents are the tests' events (all within an hour of base unless
// said otherwise) and the ones delivered a second time.
func sampleEvents() (events, redelivered []sampleEvent) {
	esc := conversation("c-esc", "acme", "emo@1", 0, false, "joy", "neutral", "joy", "anger", "joy", "sadness", "anger", "sadness")
	calm := conversation("c-calm", "acme", "emo@1", 10*time.Second, true, "anger", "sadness", "joy", "joy", "joy")
	short := conversation("c-short", "beta", "emo@1", 20*time.Second, false, "anger", "anger", "anger")
	baseModel := conversation("c-beta", "beta", "", 40*time.Second, false, "joy", "joy", "fear", "sadness")
	agent := sampleEvent{id: "c-esc-agent", adapter: "emo@1", run: "live", conversation: "c-esc", tenant: "acme",
		role: "agent", label: "anger", sent: base().Add(30 * time.Second), pipelineMs: 7, classifyMs: 3}
	early := sampleEvent{id: "early", adapter: "emo@1", run: "live", conversation: "c-old", tenant: "acme",
		role: "customer", label: "anger", sent: base().Add(-3 * time.Hour), pipelineMs: 1} // outside the range
	replay := sampleEvent{id: "c-esc-1", adapter: "emo@1", run: "replay-1", conversation: "c-esc", tenant: "acme",
		role: "customer", label: "fear", sent: base(), pipelineMs: 1} // another run
	events = append(append(append(append(esc, calm...), short...), baseModel...), agent, early, replay)
	return events, append(append([]sampleEvent(nil), esc...), baseModel[2])
}

// insertStatement inserts events into db's events table, the way the
// current-engine tests of sink and evaluate do.
func insertStatement(db string, events []sampleEvent, version uint64) testenv.Statement {
	s := testenv.Statement{
		Kind: testenv.Insert,
		SQL: "INSERT INTO " + db + ".events (message_id, adapter, run_id, conversation_id, tenant, speaker_role, " +
			"text_fingerprint, label, cache_hit, sent_at, received_at, classified_at, cache_ms, classify_ms, pipeline_ms, inserted_at, version)",
	}
	for _, e := range events {
		hit := uint8(0)
		if e.cacheHit {
			hit = 1
		}
		s.Rows = append(s.Rows, []any{e.id, e.adapter, e.run, e.conversation, e.tenant, e.role,
			"fp-" + e.id, e.label, hit, e.sent, e.sent.Add(time.Second), e.sent.Add(2 * time.Second),
			float32(0.5), e.classifyMs, e.pipelineMs, base().Add(time.Duration(version) * time.Hour), version})
	}
	return s
}

func schemaStatements(t *testing.T, db string) []testenv.Statement {
	t.Helper()
	schema, err := sink.SchemaStatements(db)
	if err != nil {
		t.Fatal(err)
	}
	var out []testenv.Statement
	for _, s := range schema {
		out = append(out, testenv.Statement{Kind: testenv.Exec, SQL: s})
	}
	return out
}

func loadDashboard(t *testing.T, name string) Dashboard {
	t.Helper()
	d, err := Load(filepath.Join(testenv.RepoRoot(t), "deploy", "grafana", "dashboards", name))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// sampleEnv is Grafana's environment over the sample events: an hour
// either side of base, the given interval, run live, 3 recent messages for
// the escalation candidates, and tenants and adapters (nil: All).
func sampleEnv(interval int, tenants, adapters []string) Env {
	value := func(selected, all []string) Value {
		if selected == nil {
			return Value{All: true, Values: all}
		}
		return Value{Values: selected}
	}
	return Env{
		From: base().Add(-time.Hour), To: base().Add(time.Hour), IntervalSeconds: interval,
		Vars: map[string]Value{
			"run":     {Values: []string{"live"}},
			"recent":  {Values: []string{"3"}},
			"tenant":  value(tenants, []string{"acme", "beta"}),
			"adapter": value(adapters, []string{"", "emo@1"}),
		},
	}
}

// check is one expanded query the test runs and, where want is not nil,
// the rows it must return.
type check struct {
	name string
	sql  string
	want [][]string
}

// TestCurrentClickHouseDashboardQueries expands every ClickHouse query of
// deploy/grafana/dashboards/emoflow-emotions.json (its panels' and its
// template variables') under several selections, runs them on a current
// ClickHouse release in-process (chDB) over the sink's schema holding the
// sample events (duplicates included) and over an empty database, checks
// the rows, and replays everything on the 18.16 server and compares.
func TestCurrentClickHouseDashboardQueries(t *testing.T) {
	d := loadDashboard(t, "emoflow-emotions.json")
	queries := d.ClickHouseQueries()
	if len(queries) < 8 {
		t.Fatalf("%d ClickHouse queries in the dashboard, want its 3 variables' and at least 5 panels'", len(queries))
	}
	db, empty := testenv.Name(t, "dash"), testenv.Name(t, "dash_empty")
	events, redelivered := sampleEvents()

	var statements []testenv.Statement
	statements = append(statements, schemaStatements(t, db)...)
	statements = append(statements, insertStatement(db, events, 1), insertStatement(db, redelivered, 2))
	statements = append(statements, schemaStatements(t, empty)...)

	// The hand-counted rows, by panel title (or "variable NAME") and selection.
	// Within the hour bucket of 12:00, live, in the range:
	// acme has c-esc (8 customer messages and one agent's) and c-calm (5),
	// beta has c-short (3) on emo@1 and c-beta (4) on the base model.
	hour := "2025-03-01 12:00:00"
	want := map[string]map[string][][]string{
		"variable run":     {"all": {{"live"}, {"replay-1"}}},
		"variable tenant":  {"all": {{"acme"}, {"beta"}}},
		"variable adapter": {"all": {{""}, {"emo@1"}}},
		"Messages by label": {
			"hour":            {{hour, "anger", "7"}, {hour, "fear", "1"}, {hour, "joy", "8"}, {hour, "neutral", "1"}, {hour, "sadness", "4"}},
			"acme":            {{hour, "anger", "4"}, {hour, "joy", "6"}, {hour, "neutral", "1"}, {hour, "sadness", "3"}},
			"beta base model": {{hour, "fear", "1"}, {hour, "joy", "2"}, {hour, "sadness", "1"}},
		},
		"Messages by tenant and adapter": {
			"hour": {{hour, "acme / emo@1", "14"}, {hour, "beta / base model", "4"}, {hour, "beta / emo@1", "3"}},
		},
		"Share of negative emotions": {
			// acme: anger 4 + sadness 3 of 14; beta: anger 3 + fear 1 + sadness 1 of 7.
			"hour": {{hour, "acme", "0.5"}, {hour, "beta", strconv.FormatFloat(5.0/7, 'g', -1, 64)}},
			"acme": {{hour, "acme", strconv.FormatFloat(7.0/14, 'g', -1, 64)}},
		},
		"Escalation candidates": {
			// c-esc: 1 of its 5 earlier messages and all 3 recent ones;
			// c-beta: none of 1 earlier, sadness in 1 of 3 recent (fear
			// does not count); c-calm falls, c-short is too short.
			"hour": {
				{"c-esc", "acme", "emo@1", "8", "0.2", "1", "0.8", "2025-03-01 12:07:00"},
				{"c-beta", "beta", "", "4", "0", strconv.FormatFloat(1.0/3, 'g', -1, 64), strconv.FormatFloat(1.0/3, 'g', -1, 64), "2025-03-01 12:03:40"},
			},
			"acme": {{"c-esc", "acme", "emo@1", "8", "0.2", "1", "0.8", "2025-03-01 12:07:00"}},
		},
		"Cache hit rate": {
			// c-calm's 5 of the 17 emo@1 events hit the cache.
			"hour": {{hour, "base model", "0"}, {hour, "emo@1", strconv.FormatFloat(5.0/17, 'g', -1, 64)}},
		},
	}
	envs := []struct {
		name string
		env  Env
	}{
		{"all", sampleEnv(60, nil, nil)},
		{"hour", sampleEnv(3600, nil, nil)},
		{"acme", sampleEnv(3600, []string{"acme"}, []string{"emo@1"})},
		{"beta base model", sampleEnv(3600, []string{"beta"}, []string{""})},
	}
	var checks []check
	queryIndex := map[string]int{}
	covered := map[string]bool{}
	add := func(name, sql string, w [][]string) {
		queryIndex[name] = len(statements)
		checks = append(checks, check{name: name, sql: sql, want: w})
		statements = append(statements, testenv.Statement{Kind: testenv.Query, SQL: sql})
	}
	// The queries name no database: Grafana's data source sets the default
	// database. chDB gets USE; the 18.16 server a connection to the database.
	useDB := len(statements)
	statements = append(statements, testenv.Statement{Kind: testenv.Exec, SQL: "USE " + db})
	for _, e := range envs {
		for _, q := range queries {
			sql, err := Expand(q.SQL, e.env)
			if err != nil {
				t.Fatalf("%s: %v", q.Name, err)
			}
			key := q.Name
			if q.Panel != nil {
				key = q.Panel.Title
			}
			if strings.HasPrefix(key, "variable ") && e.name != "all" {
				continue // variables do not depend on the selection
			}
			covered[key+" under "+e.name] = true
			add(e.name+": "+q.Name+" ("+key+")", sql, want[key][e.name])
		}
	}
	// The empty database: every query answers no rows. A variable without
	// options is All with no values.
	useEmpty := len(statements)
	statements = append(statements, testenv.Statement{Kind: testenv.Exec, SQL: "USE " + empty})
	emptyEnv := sampleEnv(60, nil, nil)
	for _, name := range []string{"tenant", "adapter"} {
		emptyEnv.Vars[name] = Value{All: true}
	}
	for _, q := range queries {
		sql, err := Expand(q.SQL, emptyEnv)
		if err != nil {
			t.Fatalf("%s: %v", q.Name, err)
		}
		add("empty: "+q.Name, sql, [][]string{})
	}
	for key, sels := range want {
		for sel := range sels {
			if !covered[key+" under "+sel] {
				t.Fatalf("rows expected for %q under %q, but the dashboard has no such query", key, sel)
			}
		}
	}

	run := testenv.RunCurrentClickHouse(t, statements)
	t.Logf("ClickHouse %s (chDB): %d statements, %d dashboard queries, in %.2fs", run.Version, len(statements), len(checks), run.Seconds)
	if major, _ := strconv.Atoi(strings.Split(run.Version, ".")[0]); major < 24 {
		t.Errorf("chDB runs ClickHouse %s, not a current release", run.Version)
	}
	for i, r := range run.Results {
		if r.Error != "" {
			t.Errorf("ClickHouse %s refused statement %d (%s):\n%s\n%s", run.Version, i+1, statements[i].Kind, statements[i].SQL, r.Error)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	checked := 0
	for _, c := range checks {
		got := run.Results[queryIndex[c.name]]
		switch {
		case c.want != nil:
			checked++
			if err := testenv.SameRows(got, testenv.Result{Columns: got.Columns, Data: c.want}); err != nil {
				t.Errorf("%s on ClickHouse %s: %v\n%s", c.name, run.Version, err, c.sql)
			}
		case len(got.Data) == 0:
			t.Errorf("%s on ClickHouse %s: no rows over the sample events\n%s", c.name, run.Version, c.sql)
		}
	}
	t.Logf("%d queries' rows checked by hand, the others non-empty (or, over the empty database, empty)", checked)
	if t.Failed() {
		return
	}

	t.Run("same rows on 18.16", func(t *testing.T) {
		addr := testenv.ClickHouse(t)
		// The schema and inserts, then each database's queries on a
		// connection whose default database it is.
		for _, part := range []struct {
			database   string
			start, end int
		}{{"", 0, useDB}, {db, useDB + 1, useEmpty}, {empty, useEmpty + 1, len(statements)}} {
			conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{addr}, Auth: clickhouse.Auth{Database: part.database},
				DialTimeout: 10 * time.Second, ReadTimeout: time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			if part.database == "" {
				t.Cleanup(func() {
					ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
					defer cancel()
					for _, name := range []string{db, empty} {
						if err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name); err != nil {
							t.Logf("drop database: %v", err)
						}
					}
					conn.Close()
				})
			} else {
				defer conn.Close()
			}
			testenv.CompareOnServer(t, conn, statements[part.start:part.end],
				testenv.CurrentRun{Version: run.Version, Results: run.Results[part.start:part.end]})
		}
	})
}
