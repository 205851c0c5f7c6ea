package sink

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"testing"
	"testing/fstest"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/emoflow/emoflow/internal/contract"
	"github.com/emoflow/emoflow/internal/service"
	"github.com/emoflow/emoflow/internal/testenv"
)

func TestDecodeEventFlattensAValidEvent(t *testing.T) {
	ev := validEvent(7)
	ev.SentAt = ev.SentAt.In(time.FixedZone("UTC+8", 8*3600))
	ev.CacheHit = true
	ev.Truncated = true
	ev.Text = "hello"
	ev.TrueLabel = "anger"
	ev.ContextMessages = 2
	ev.ContextSource = "redis"
	raw, _ := json.Marshal(ev)
	got, err := decodeEvent(raw, 4096)
	if err != nil {
		t.Fatalf("decodeEvent: %v", err)
	}
	row := newEventRow(&got, 3, 42)
	if row.ContextMessages != 2 || row.ContextSource != "redis" {
		t.Errorf("context %d %q, want 2 \"redis\"", row.ContextMessages, row.ContextSource)
	}
	if row.MessageID != "m7" || row.Adapter != "support@v1" || row.RunID != contract.LiveRun || row.Tenant != "acme" ||
		row.Label != "joy" || row.TrueLabel != "anger" || row.Text != "hello" || !row.CacheHit || !row.Truncated {
		t.Errorf("row fields wrong: %+v", row)
	}
	if !slices.Equal(row.ProbLabels, []string{"anger", "joy"}) || !slices.Equal(row.ProbValues, []float32{0.25, 0.75}) {
		t.Errorf("probabilities %v %v, want sorted labels [anger joy] with [0.25 0.75]", row.ProbLabels, row.ProbValues)
	}
	if row.SentAt.Location() != time.UTC || !row.SentAt.Equal(ev.SentAt) {
		t.Errorf("sent_at %v, want %v in UTC", row.SentAt, ev.SentAt)
	}
	if row.EventPartition != 3 || row.EventOffset != 42 || row.SourceTopic != "chat" || row.SourcePartition != 1 || row.SourceOffset != 1007 {
		t.Errorf("positions: event %d@%d source %s/%d@%d", row.EventPartition, row.EventOffset, row.SourceTopic, row.SourcePartition, row.SourceOffset)
	}
	if row.ClassifyMs != 12.25 || row.PipelineMs != 20 || row.CacheMs != 0.5 {
		t.Errorf("timings %v %v %v", row.CacheMs, row.ClassifyMs, row.PipelineMs)
	}
}

func TestDecodeEventRejectsWithAReason(t *testing.T) {
	mutate := func(f func(*contract.EmotionEvent)) []byte {
		ev := validEvent(1)
		f(&ev)
		raw, _ := json.Marshal(ev)
		return raw
	}
	cases := []struct {
		name string
		raw  []byte
		want contract.Reason
	}{
		{"too large", []byte(`{"message_id":"` + strings.Repeat("a", 2000) + `"}`), contract.ReasonTooLarge},
		{"invalid UTF-8", []byte("{\"message_id\":\"\xff\"}"), contract.ReasonInvalidUTF8},
		{"not JSON", []byte("hello"), contract.ReasonMalformedJSON},
		{"empty", []byte(""), contract.ReasonMalformedJSON},
		{"trailing data", append(mutate(func(*contract.EmotionEvent) {}), []byte(" {}")...), contract.ReasonMalformedJSON},
		{"wrong type", []byte(`{"message_id": 5}`), contract.ReasonSchema},
		{"bad time", []byte(`{"sent_at": "yesterday"}`), contract.ReasonSchema},
		{"numeric time", []byte(`{"sent_at": 42}`), contract.ReasonSchema},
		{"null", []byte(`null`), contract.ReasonSchema},
		{"no message id", mutate(func(e *contract.EmotionEvent) { e.MessageID = "" }), contract.ReasonSchema},
		{"no run id", mutate(func(e *contract.EmotionEvent) { e.RunID = "" }), contract.ReasonSchema},
		{"no tenant", mutate(func(e *contract.EmotionEvent) { e.Tenant = "" }), contract.ReasonSchema},
		{"no label", mutate(func(e *contract.EmotionEvent) { e.Label = "" }), contract.ReasonSchema},
		{"no sent_at", mutate(func(e *contract.EmotionEvent) { e.SentAt = time.Time{} }), contract.ReasonSchema},
		{"sent_at before 1970", mutate(func(e *contract.EmotionEvent) { e.SentAt = time.Date(1969, 12, 31, 0, 0, 0, 0, time.UTC) }), contract.ReasonSchema},
		{"classified_at after 2105", mutate(func(e *contract.EmotionEvent) { e.ClassifiedAt = time.Date(2106, 1, 1, 0, 0, 0, 0, time.UTC) }), contract.ReasonSchema},
		{"no received_at", mutate(func(e *contract.EmotionEvent) { e.ReceivedAt = time.Time{} }), contract.ReasonSchema},
		{"negative source partition", mutate(func(e *contract.EmotionEvent) { e.Source.Partition = -1 }), contract.ReasonSchema},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := decodeEvent(c.raw, 1024)
			var inv *contract.InvalidError
			if !errors.As(err, &inv) {
				t.Fatalf("decodeEvent(%.40q) = %v, want an InvalidError", c.raw, err)
			}
			if inv.Reason != c.want || inv.Detail == "" {
				t.Errorf("reason %q detail %q, want reason %q and a detail", inv.Reason, inv.Detail, c.want)
			}
		})
	}
}

func TestDecodeEventIgnoresUnknownFields(t *testing.T) {
	raw, _ := json.Marshal(validEvent(1))
	raw = append([]byte(`{"added_later": [1, 2],`), raw[1:]...)
	if _, err := decodeEvent(raw, 0); err != nil {
		t.Errorf("an event with an unknown field: %v", err)
	}
}

func TestGroupByMonthSplitsOnlyAcrossMonths(t *testing.T) {
	row := func(id string, t time.Time) eventRow { return eventRow{MessageID: id, SentAt: t} }
	march := time.Date(2025, 3, 31, 23, 59, 0, 0, time.UTC)
	april := time.Date(2025, 4, 1, 0, 0, 1, 0, time.UTC)
	nextMarch := time.Date(2026, 3, 2, 0, 0, 0, 0, time.UTC)
	ids := func(groups [][]eventRow) [][]string {
		var out [][]string
		for _, g := range groups {
			var s []string
			for _, r := range g {
				s = append(s, r.MessageID)
			}
			out = append(out, s)
		}
		return out
	}
	same := []eventRow{row("a", march), row("b", march)}
	if got := groupByMonth(same); len(got) != 1 || &got[0][0] != &same[0] {
		t.Errorf("one month: got %v, want the rows unchanged", ids(got))
	}
	mixed := []eventRow{row("a", march), row("b", april), row("c", march), row("d", nextMarch), row("e", april)}
	got := ids(groupByMonth(mixed))
	want := [][]string{{"a", "c"}, {"b", "e"}, {"d"}}
	if !slices.EqualFunc(got, want, slices.Equal) {
		t.Errorf("groups %v, want %v", got, want)
	}
	if groupByMonth(nil) != nil {
		t.Error("no rows: want no groups")
	}
}

func TestEmbeddedMigrationsAreNumberedAndSplit(t *testing.T) {
	for _, dir := range []string{singleNodeMigrations, clusterMigrations} {
		ms, err := loadMigrations(migrationFiles, dir)
		if err != nil {
			t.Fatal(err)
		}
		if len(ms) < 2 {
			t.Fatalf("%s: %d migrations, want at least 2", dir, len(ms))
		}
		for i, m := range ms {
			if m.Version != i+1 || len(m.Statements) == 0 || len(m.Checksum) != 64 {
				t.Errorf("%s: migration %d: %+v", dir, i, m)
			}
			// An object dropped to be created again with new columns must be
			// created in the same migration, later: a rerun ends with it.
			dropped := map[string]bool{}
			for _, s := range m.Statements {
				switch drop := droppedObject.FindStringSubmatch(s); {
				case strings.HasPrefix(s, "CREATE ") && strings.Contains(s, "IF NOT EXISTS"):
					if created := createdObject.FindStringSubmatch(s); created != nil {
						delete(dropped, created[1])
					}
				case drop != nil:
					dropped[drop[1]] = true
				case addColumn.MatchString(s):
					// Rerun: columnAlreadyAdded.
				default:
					t.Errorf("%s: migration %04d statement is not an idempotent CREATE, DROP or ADD COLUMN: %.60q", dir, m.Version, s)
				}
				if strings.Contains(s, "--") || strings.HasSuffix(s, ";") {
					t.Errorf("%s: migration %04d statement keeps a comment or the separator: %.60q", dir, m.Version, s)
				}
			}
			for name := range dropped {
				t.Errorf("%s: migration %04d drops %s without creating it again after", dir, m.Version, name)
			}
		}
	}
}

var droppedObject = regexp.MustCompile(`^DROP TABLE IF EXISTS \$\{database\}\.(\w+)`)

func TestColumnAlreadyAddedOnlyForThatColumn(t *testing.T) {
	const stmt = "ALTER TABLE db.events ON CLUSTER c ADD COLUMN context_source String"
	exists := func(code int32, msg string) error {
		return fmt.Errorf("clickhouse: %s: %w", stmt, &clickhouse.Exception{Code: code, Message: msg})
	}
	cases := []struct {
		name string
		stmt string
		err  error
		want bool
	}{
		{"18.16", stmt, exists(44, "Cannot add column context_source: column with this name already exists"), true},
		{"current", stmt, exists(15, "Cannot add column `context_source`: column with this name already exists"), true},
		{"on cluster", stmt, exists(44, "There was an error on [ch-1:9000]: Code: 44, e.displayText() = DB::Exception: Cannot add column context_source: column with this name already exists"), true},
		{"another column", stmt, exists(44, "Cannot add column context: column with this name already exists"), false},
		{"another error", stmt, exists(44, "Cannot add column context_source: something else"), false},
		{"another code", stmt, exists(159, "Cannot add column context_source: column with this name already exists"), false},
		{"not an exception", stmt, errors.New("Cannot add column context_source: column with this name already exists"), false},
		{"not an ALTER", "CREATE TABLE IF NOT EXISTS db.t (context_source String) ENGINE = Memory", exists(44, "Cannot add column context_source: column with this name already exists"), false},
	}
	for _, c := range cases {
		if got := columnAlreadyAdded(c.stmt, c.err); got != c.want {
			t.Errorf("%s: columnAlreadyAdded = %v, want %v", c.name, got, c.want)
		}
	}
}

func TestLoadMigrationsRejectsBadSets(t *testing.T) {
	cases := map[string]fstest.MapFS{
		"gap": {
			"m/0001_a.sql": {Data: []byte("CREATE TABLE IF NOT EXISTS a (x UInt8) ENGINE = Memory;")},
			"m/0003_c.sql": {Data: []byte("CREATE TABLE IF NOT EXISTS c (x UInt8) ENGINE = Memory;")},
		},
		"bad name": {"m/1_a.sql": {Data: []byte("SELECT 1;")}},
		"empty":    {"m/0001_a.sql": {Data: []byte("-- nothing;\n")}},
		// A rerun can tell only a single ADD COLUMN is done.
		"two columns in one ALTER": {"m/0001_a.sql": {Data: []byte("ALTER TABLE a ADD COLUMN x UInt8, ADD COLUMN y UInt8;")}},
		"another ALTER":            {"m/0001_a.sql": {Data: []byte("ALTER TABLE a DROP COLUMN x;")}},
	}
	for name, fsys := range cases {
		if _, err := loadMigrations(fsys, "m"); err == nil {
			t.Errorf("%s: loadMigrations accepted it", name)
		}
	}
	ms, err := loadMigrations(fstest.MapFS{
		"m/0002_b.sql": {Data: []byte("-- two; statements\nCREATE VIEW IF NOT EXISTS v AS SELECT 1;\n\nCREATE VIEW IF NOT EXISTS w AS SELECT 2")},
		"m/0001_a.sql": {Data: []byte("CREATE TABLE IF NOT EXISTS a (x UInt8) ENGINE = Memory;\nalter table a add column d Decimal(9, 2);")},
	}, "m")
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 2 || ms[0].Name != "a" || ms[1].Name != "b" ||
		!slices.Equal(ms[1].Statements, []string{"CREATE VIEW IF NOT EXISTS v AS SELECT 1", "CREATE VIEW IF NOT EXISTS w AS SELECT 2"}) {
		t.Errorf("loaded %+v", ms)
	}
}

func TestHealthFollowsPings(t *testing.T) {
	ready := &readiness{}
	h := newHealth(ready.set, prometheus.NewGauge(prometheus.GaugeOpts{Name: "up"}))
	h.started()
	results := make(chan error)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.watch(ctx, time.Millisecond, time.Second, func(ctx context.Context) error {
			select {
			case err := <-results:
				return err
			case <-ctx.Done():
				return ctx.Err()
			}
		})
	}()
	results <- errors.New("connection refused")
	testenv.WaitUntil(t, 5*time.Second, "readiness to follow a failed ping", func() (bool, string) {
		hist := ready.history()
		return hist[len(hist)-1] == "clickhouse unreachable: connection refused", strings.Join(hist, "|")
	})
	results <- nil
	testenv.WaitUntil(t, 5*time.Second, "readiness to follow a good ping", func() (bool, string) {
		hist := ready.history()
		return hist[len(hist)-1] == "", strings.Join(hist, "|")
	})
	cancel()
	<-done
}

func TestConfigFromFlagsAndEnvironment(t *testing.T) {
	var c Component
	fs := flag.NewFlagSet("sink", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.RegisterFlags(fs)
	env := map[string]string{"EMOFLOW_BATCH_SIZE": "7", "EMOFLOW_CLICKHOUSE_DATABASE": "analytics"}
	err := service.ParseConfig(fs, []string{"-flush-interval=250ms"}, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	if err != nil {
		t.Fatal(err)
	}
	if c.cfg.BatchSize != 7 || c.cfg.ClickHouseDatabase != "analytics" || c.cfg.FlushInterval != 250*time.Millisecond ||
		c.cfg.KafkaBrokers != "127.0.0.1:19092" || c.cfg.ClickHouseAddr != "127.0.0.1:19000" {
		t.Errorf("config %+v", c.cfg)
	}
	if err := c.cfg.validate(); err != nil {
		t.Errorf("defaults do not validate: %v", err)
	}
	bad := c.cfg
	bad.DeadLetterTopic = bad.EventsTopic
	bad.ClickHouseDatabase = "x; DROP TABLE y"
	bad.BatchSize = 0
	err = bad.validate()
	for _, want := range []string{"-dead-letter-topic", "-clickhouse-database", "-batch-size"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("validate() = %v, want it to mention %s", err, want)
		}
	}
}
