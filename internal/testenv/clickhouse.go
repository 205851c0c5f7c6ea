package testenv

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os/exec"
	"path/filepath"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// StatementKind is how a statement reached ClickHouse.
type StatementKind string

// The kinds of statement a RecordingConn records.
const (
	// Exec is conn.Exec: DDL and other statements without rows.
	Exec StatementKind = "exec"
	// Query is conn.Query, QueryRow or Select: a statement with rows.
	Query StatementKind = "query"
	// Insert is conn.PrepareBatch: an INSERT whose rows follow as data.
	Insert StatementKind = "insert"
)

// Statement is one statement the product sent to ClickHouse, exactly as it
// sent it: the SQL text, the positional arguments bound to its "?" (Exec,
// Query) or the rows appended to the batch (Insert).
type Statement struct {
	Kind StatementKind
	SQL  string
	Args []any
	Rows [][]any
}

// RecordingConn is a driver.Conn that runs nothing: it records every
// statement sent through it, so that a test can run what the product sends
// on other engines (RunCurrentClickHouse, Replay). Queries answer no rows
// (QueryRow's Scan leaves its destinations as they were); Exec, batches and
// Ping succeed. Methods the product does not use panic.
type RecordingConn struct {
	driver.Conn // nil: the methods below are the ones the product calls

	mu         sync.Mutex
	statements []Statement
}

// Statements returns the statements recorded so far, in order.
func (c *RecordingConn) Statements() []Statement {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Statement(nil), c.statements...)
}

func (c *RecordingConn) add(s Statement) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.statements = append(c.statements, s)
}

// Exec records an Exec.
func (c *RecordingConn) Exec(_ context.Context, query string, args ...any) error {
	c.add(Statement{Kind: Exec, SQL: query, Args: args})
	return nil
}

// Query records a Query; its rows are empty.
func (c *RecordingConn) Query(_ context.Context, query string, args ...any) (driver.Rows, error) {
	c.add(Statement{Kind: Query, SQL: query, Args: args})
	return noRows{}, nil
}

// QueryRow records a QueryRow; its Scan sets nothing.
func (c *RecordingConn) QueryRow(_ context.Context, query string, args ...any) driver.Row {
	c.add(Statement{Kind: Query, SQL: query, Args: args})
	return noRows{}
}

// PrepareBatch returns a batch whose Send records the INSERT with the rows
// appended to it.
func (c *RecordingConn) PrepareBatch(_ context.Context, query string, _ ...driver.PrepareBatchOption) (driver.Batch, error) {
	return &recordingBatch{conn: c, query: query}, nil
}

// Ping succeeds.
func (c *RecordingConn) Ping(context.Context) error { return nil }

// Close succeeds.
func (c *RecordingConn) Close() error { return nil }

type noRows struct{ driver.Rows }

func (noRows) Next() bool               { return false }
func (noRows) Scan(...any) error        { return nil }
func (noRows) Err() error               { return nil }
func (noRows) Close() error             { return nil }
func (noRows) ScanStruct(any) error     { return nil }
func (noRows) Columns() []string        { return nil }
func (noRows) Totals(dest ...any) error { return nil }

type recordingBatch struct {
	driver.Batch
	conn  *RecordingConn
	query string
	rows  [][]any
	sent  bool
}

func (b *recordingBatch) Append(v ...any) error {
	b.rows = append(b.rows, append([]any(nil), v...))
	return nil
}

func (b *recordingBatch) Abort() error { b.sent = true; return nil }
func (b *recordingBatch) IsSent() bool { return b.sent }
func (b *recordingBatch) Rows() int    { return len(b.rows) }

func (b *recordingBatch) Send() error {
	if b.sent {
		return errors.New("recording batch: already sent")
	}
	b.sent = true
	b.conn.add(Statement{Kind: Insert, SQL: b.query, Rows: b.rows})
	return nil
}

// Inlined returns the statement as one SQL text with its arguments written
// as literals: an Insert becomes "INSERT ... (columns) VALUES (...), ...".
// It knows the Go types the product passes (strings, integers, floats,
// time.Time as a UTC DateTime, slices of strings and floats).
func (s Statement) Inlined() (string, error) {
	if s.Kind == Insert {
		if len(s.Args) > 0 {
			return "", fmt.Errorf("insert with arguments: %s", s.SQL)
		}
		var b strings.Builder
		b.WriteString(s.SQL)
		b.WriteString(" VALUES")
		for i, row := range s.Rows {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(" (")
			for j, v := range row {
				if j > 0 {
					b.WriteString(", ")
				}
				lit, err := Literal(v)
				if err != nil {
					return "", fmt.Errorf("row %d column %d: %w", i+1, j+1, err)
				}
				b.WriteString(lit)
			}
			b.WriteByte(')')
		}
		return b.String(), nil
	}
	return bindPositional(s.SQL, s.Args)
}

// bindPositional replaces each "?" outside string literals and quoted
// identifiers with the literal of the next argument.
func bindPositional(query string, args []any) (string, error) {
	var b strings.Builder
	next := 0
	var quote byte
	for i := 0; i < len(query); i++ {
		ch := query[i]
		switch {
		case quote != 0:
			b.WriteByte(ch)
			if ch == '\\' && i+1 < len(query) {
				i++
				b.WriteByte(query[i])
			} else if ch == quote {
				quote = 0
			}
		case ch == '\'' || ch == '`' || ch == '"':
			quote = ch
			b.WriteByte(ch)
		case ch == '?':
			if next >= len(args) {
				return "", fmt.Errorf("more ? than the %d arguments: %s", len(args), query)
			}
			lit, err := Literal(args[next])
			if err != nil {
				return "", fmt.Errorf("argument %d: %w", next+1, err)
			}
			b.WriteString(lit)
			next++
		default:
			b.WriteByte(ch)
		}
	}
	if next != len(args) {
		return "", fmt.Errorf("%d arguments for %d ?: %s", len(args), next, query)
	}
	return b.String(), nil
}

// Literal writes v as a ClickHouse SQL literal.
func Literal(v any) (string, error) {
	switch x := v.(type) {
	case string:
		return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(x) + "'", nil
	case time.Time:
		return "'" + x.UTC().Format("2006-01-02 15:04:05") + "'", nil
	case bool:
		if x {
			return "1", nil
		}
		return "0", nil
	case int, int8, int16, int32, int64, uint, uint8, uint16, uint32, uint64:
		return fmt.Sprint(x), nil
	case float32:
		return floatLiteral(float64(x), 32), nil
	case float64:
		return floatLiteral(x, 64), nil
	case []string, []float32, []float64:
		rv := reflect.ValueOf(v)
		parts := make([]string, rv.Len())
		for i := range parts {
			lit, err := Literal(rv.Index(i).Interface())
			if err != nil {
				return "", err
			}
			parts[i] = lit
		}
		return "[" + strings.Join(parts, ", ") + "]", nil
	}
	return "", fmt.Errorf("no SQL literal for %T", v)
}

func floatLiteral(f float64, bits int) string {
	switch {
	case math.IsNaN(f):
		return "nan"
	case math.IsInf(f, 1):
		return "inf"
	case math.IsInf(f, -1):
		return "-inf"
	}
	return strconv.FormatFloat(f, 'g', -1, bits)
}

// Result is what an engine returned for one statement: an error, or (for a
// Query) its columns and rows, every cell in ClickHouse's text form.
type Result struct {
	Error   string     `json:"error"`
	Columns []string   `json:"columns"`
	Types   []string   `json:"types"`
	Data    [][]string `json:"data"`
}

// CurrentRun is the outcome of RunCurrentClickHouse.
type CurrentRun struct {
	// Version is the engine's version(), for example 26.9.2.1.
	Version string `json:"version"`
	// Seconds is how long the engine took, start-up included.
	Seconds float64 `json:"seconds"`
	// Results has one entry per statement.
	Results []Result `json:"results"`
}

// RunCurrentClickHouse runs the statements, in order, in one session of a
// current ClickHouse release in-process (chDB, through
// tools/reference/chdb_exec.py and the reference Python, EMOFLOW_PYTHON),
// over a temporary folder. A statement that fails does not stop the others:
// its Result has the engine's error. The test is skipped (failed with
// EMOFLOW_TEST_REQUIRE_SERVICES=1) when the reference Python lacks chDB.
func RunCurrentClickHouse(t testing.TB, statements []Statement) CurrentRun {
	t.Helper()
	return runCurrentClickHouse(t, "", statements)
}

// RunCurrentClickHouseWithConfig is RunCurrentClickHouse in a session
// started with the server configuration config (an XML document: macros,
// remote_servers, an in-memory Keeper), as the clustered schema needs.
func RunCurrentClickHouseWithConfig(t testing.TB, config string, statements []Statement) CurrentRun {
	t.Helper()
	return runCurrentClickHouse(t, config, statements)
}

func runCurrentClickHouse(t testing.TB, config string, statements []Statement) CurrentRun {
	t.Helper()
	python := Python(t)
	type input struct {
		SQL  string `json:"sql"`
		Rows bool   `json:"rows"`
	}
	in := make([]input, len(statements))
	for i, s := range statements {
		sql, err := s.Inlined()
		if err != nil {
			t.Fatalf("statement %d: %v", i+1, err)
		}
		in[i] = input{SQL: sql, Rows: s.Kind == Query}
	}
	var payload any = in
	if config != "" {
		payload = struct {
			Config     string  `json:"config"`
			Statements []input `json:"statements"`
		}{config, in}
	}
	body, err := json.Marshal(payload)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, python, filepath.Join(RepoRoot(t), "tools", "reference", "chdb_exec.py"))
	cmd.Stdin = bytes.NewReader(body)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		if strings.Contains(stderr.String(), "No module named 'chdb'") {
			SkipOrFail(t, "%s has no chdb: install tools/reference/requirements.txt (scripts/setup.sh pyref)", python)
		}
		t.Fatalf("chdb_exec.py: %v\n%s", err, stderr.String())
	}
	var run CurrentRun
	if err := json.Unmarshal(stdout.Bytes(), &run); err != nil {
		t.Fatalf("chdb_exec.py output: %v\n%s", err, stdout.String())
	}
	if len(run.Results) != len(statements) {
		t.Fatalf("chdb_exec.py returned %d results for %d statements", len(run.Results), len(statements))
	}
	return run
}

// Replay sends s to conn the way the product sent it (Exec with its
// arguments, Query with its arguments, or a batch of its rows) and returns
// a query's rows in ClickHouse's text form, as RunCurrentClickHouse does.
func Replay(ctx context.Context, conn driver.Conn, s Statement) (Result, error) {
	switch s.Kind {
	case Exec:
		return Result{}, conn.Exec(ctx, s.SQL, s.Args...)
	case Insert:
		b, err := conn.PrepareBatch(ctx, s.SQL)
		if err != nil {
			return Result{}, err
		}
		for _, row := range s.Rows {
			if err := b.Append(row...); err != nil {
				_ = b.Abort()
				return Result{}, err
			}
		}
		return Result{}, b.Send()
	}
	rows, err := conn.Query(ctx, s.SQL, s.Args...)
	if err != nil {
		return Result{}, err
	}
	defer rows.Close()
	var r Result
	types := rows.ColumnTypes()
	for _, ct := range types {
		r.Columns = append(r.Columns, ct.Name())
		r.Types = append(r.Types, ct.DatabaseTypeName())
	}
	for rows.Next() {
		dest := make([]any, len(types))
		for i, ct := range types {
			dest[i] = reflect.New(ct.ScanType()).Interface()
		}
		if err := rows.Scan(dest...); err != nil {
			return r, err
		}
		cells := make([]string, len(dest))
		for i, d := range dest {
			cells[i] = textForm(reflect.ValueOf(d).Elem().Interface())
		}
		r.Data = append(r.Data, cells)
	}
	return r, rows.Err()
}

// textForm writes a scanned value the way ClickHouse's text formats do,
// near enough for SameRows.
func textForm(v any) string {
	switch x := v.(type) {
	case time.Time:
		return x.UTC().Format("2006-01-02 15:04:05")
	case float32:
		return strconv.FormatFloat(float64(x), 'g', -1, 32)
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64)
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Pointer:
		if rv.IsNil() {
			return `\N`
		}
		return textForm(rv.Elem().Interface())
	case reflect.Slice:
		parts := make([]string, rv.Len())
		for i := range parts {
			e := rv.Index(i).Interface()
			if s, ok := e.(string); ok {
				parts[i] = "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
			} else {
				parts[i] = textForm(e)
			}
		}
		return "[" + strings.Join(parts, ",") + "]"
	}
	return fmt.Sprint(v)
}

// SameRows reports how two results of one query differ: column names, and
// rows compared as sets (engines order unordered results differently),
// cells equal as text or as numbers within a relative 1e-6 (engines print
// floats differently).
func SameRows(a, b Result) error {
	if strings.Join(a.Columns, ",") != strings.Join(b.Columns, ",") {
		return fmt.Errorf("columns %v and %v", a.Columns, b.Columns)
	}
	if len(a.Data) != len(b.Data) {
		return fmt.Errorf("%d rows and %d rows:\n%v\n%v", len(a.Data), len(b.Data), a.Data, b.Data)
	}
	sa, sb := sortedRows(a.Data), sortedRows(b.Data)
	for i := range sa {
		if len(sa[i]) != len(sb[i]) {
			return fmt.Errorf("row %v and row %v", sa[i], sb[i])
		}
		for j := range sa[i] {
			if !sameCell(sa[i][j], sb[i][j]) {
				return fmt.Errorf("row %v and row %v (sorted rows:\n%v\n%v)", sa[i], sb[i], sa, sb)
			}
		}
	}
	return nil
}

func sortedRows(rows [][]string) [][]string {
	out := append([][]string(nil), rows...)
	sort.Slice(out, func(i, j int) bool { return strings.Join(out[i], "\x00") < strings.Join(out[j], "\x00") })
	return out
}

func sameCell(a, b string) bool {
	if a == b {
		return true
	}
	x, errA := strconv.ParseFloat(a, 64)
	y, errB := strconv.ParseFloat(b, 64)
	if errA != nil || errB != nil {
		return false
	}
	return math.Abs(x-y) <= 1e-6*math.Max(math.Abs(x), math.Abs(y))
}

// CompareOnServer replays statements on conn (the 18.16 server of the
// integration tests), in order, as Replay does, and fails the test where a
// query's rows differ from those of run (RunCurrentClickHouse of the same
// statements) or a statement fails.
func CompareOnServer(t testing.TB, conn driver.Conn, statements []Statement, run CurrentRun) {
	t.Helper()
	compared := 0
	for i, s := range statements {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		got, err := Replay(ctx, conn, s)
		cancel()
		if err != nil {
			t.Fatalf("server: statement %d (%s): %v\n%s %v", i+1, s.Kind, err, s.SQL, s.Args)
		}
		if s.Kind != Query {
			continue
		}
		compared++
		if err := SameRows(run.Results[i], got); err != nil {
			t.Errorf("statement %d differs between ClickHouse %s and the server: %v\n%s %v", i+1, run.Version, err, s.SQL, s.Args)
		}
	}
	version := "?"
	if v, err := conn.ServerVersion(); err == nil {
		version = fmt.Sprintf("%d.%d.%d", v.Version.Major, v.Version.Minor, v.Version.Patch)
	}
	t.Logf("%d statements on ClickHouse %s: the %d queries gave the rows ClickHouse %s gave", len(statements), version, compared, run.Version)
}

// DropAtCleanup drops database db on conn and closes conn when t ends.
func DropAtCleanup(t testing.TB, conn driver.Conn, db string) {
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+db); err != nil {
			t.Logf("drop database: %v", err)
		}
		conn.Close()
	})
}
