package sink

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"path"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// migrationFiles are the schema's migrations, NNNN_name.sql, applied in
// order of NNNN. Each file is a list of statements ended by ";" (no ";"
// inside literals or comments); "${database}" stands for the sink's
// database. Every statement must be safe to run again (IF NOT EXISTS),
// because sinks starting together may run the same migration at once and a
// migration interrupted halfway runs again from its first statement.
// Never edit a released migration: add a new one.
//
//go:embed migrations/*.sql
var migrationFiles embed.FS

// migration is one numbered schema change.
type migration struct {
	Version    int
	Name       string
	Statements []string
	// Checksum is the hex SHA-256 of the file; it is recorded with the
	// version so that an edited migration shows up in the logs.
	Checksum string
}

var migrationFileName = regexp.MustCompile(`^(\d{4})_([a-z0-9_]+)\.sql$`)

// loadMigrations reads the migrations under dir of fsys, sorted by version.
// Versions must run 1, 2, 3... without gaps or repeats.
func loadMigrations(fsys fs.FS, dir string) ([]migration, error) {
	entries, err := fs.ReadDir(fsys, dir)
	if err != nil {
		return nil, fmt.Errorf("read migrations: %w", err)
	}
	var ms []migration
	for _, e := range entries {
		match := migrationFileName.FindStringSubmatch(e.Name())
		if match == nil {
			return nil, fmt.Errorf("migration file %s: name must be NNNN_name.sql", e.Name())
		}
		raw, err := fs.ReadFile(fsys, path.Join(dir, e.Name()))
		if err != nil {
			return nil, fmt.Errorf("read migration %s: %w", e.Name(), err)
		}
		version, _ := strconv.Atoi(match[1])
		stmts := splitStatements(string(raw))
		if len(stmts) == 0 {
			return nil, fmt.Errorf("migration %s has no statements", e.Name())
		}
		sum := sha256.Sum256(raw)
		ms = append(ms, migration{Version: version, Name: match[2], Statements: stmts, Checksum: hex.EncodeToString(sum[:])})
	}
	sort.Slice(ms, func(i, j int) bool { return ms[i].Version < ms[j].Version })
	for i, m := range ms {
		if m.Version != i+1 {
			return nil, fmt.Errorf("migration versions must be 1, 2, 3...: found %04d_%s where %04d belongs", m.Version, m.Name, i+1)
		}
	}
	return ms, nil
}

// splitStatements drops "--" comment lines and splits the rest at ";".
func splitStatements(sql string) []string {
	var kept []string
	for _, line := range strings.Split(sql, "\n") {
		if !strings.HasPrefix(strings.TrimSpace(line), "--") {
			kept = append(kept, line)
		}
	}
	var stmts []string
	for _, s := range strings.Split(strings.Join(kept, "\n"), ";") {
		if s = strings.TrimSpace(s); s != "" {
			stmts = append(stmts, s)
		}
	}
	return stmts
}

// migrator applies migrations to one database.
type migrator struct {
	conn     driver.Conn
	database string
	// timeout bounds each statement.
	timeout time.Duration
}

// Migrate creates the database and the schema_migrations table if needed,
// then applies, in order, every migration whose version is not recorded
// there, recording each after its last statement succeeded. It returns the
// versions it applied (none when the schema is current) and the versions
// already recorded whose checksum differs from the embedded file.
//
// schema_migrations is a ReplacingMergeTree keyed by version: two sinks
// recording the same version at once leave two rows until a merge, which
// reading with DISTINCT does not see.
func (m *migrator) Migrate(ctx context.Context, ms []migration) (applied, changed []int, err error) {
	for _, stmt := range bootstrapStatements(m.database) {
		if err := m.exec(ctx, stmt); err != nil {
			return nil, nil, err
		}
	}
	done, err := m.recorded(ctx)
	if err != nil {
		return nil, nil, err
	}
	for _, mig := range ms {
		if sum, ok := done[mig.Version]; ok {
			if sum != mig.Checksum {
				changed = append(changed, mig.Version)
			}
			continue
		}
		for i, stmt := range mig.statementsFor(m.database) {
			if err := m.exec(ctx, stmt); err != nil {
				return applied, changed, fmt.Errorf("migration %04d_%s statement %d: %w", mig.Version, mig.Name, i+1, err)
			}
		}
		if err := m.record(ctx, mig); err != nil {
			return applied, changed, err
		}
		applied = append(applied, mig.Version)
	}
	return applied, changed, nil
}

// bootstrapStatements create the database and its schema_migrations table;
// Migrate runs them before reading which versions are applied.
func bootstrapStatements(database string) []string {
	return []string{
		"CREATE DATABASE IF NOT EXISTS " + database,
		`CREATE TABLE IF NOT EXISTS ` + database + `.schema_migrations
(
    version    UInt32,
    name       String,
    checksum   String,
    applied_at DateTime('UTC')
)
ENGINE = ReplacingMergeTree(applied_at)
ORDER BY version`,
	}
}

// statementsFor returns the migration's statements for database, with
// "${database}" replaced, as Migrate runs them.
func (mig migration) statementsFor(database string) []string {
	out := make([]string, len(mig.Statements))
	for i, stmt := range mig.Statements {
		out[i] = strings.ReplaceAll(stmt, "${database}", database)
	}
	return out
}

// SchemaStatements returns the DDL that the sink runs on an empty database
// at start-up, in order: the bootstrap of schema_migrations, then every
// embedded migration's statements with "${database}" replaced by database.
// It leaves out the reads and inserts of schema_migrations. It is the
// schema as the sink makes it, for running on other engines (the tests
// that check it on a current ClickHouse release).
func SchemaStatements(database string) ([]string, error) {
	if !databaseName.MatchString(database) {
		return nil, fmt.Errorf("clickhouse database %q: want a plain identifier", database)
	}
	ms, err := loadMigrations(migrationFiles, "migrations")
	if err != nil {
		return nil, err
	}
	stmts := bootstrapStatements(database)
	for _, mig := range ms {
		stmts = append(stmts, mig.statementsFor(database)...)
	}
	return stmts, nil
}

func (m *migrator) exec(ctx context.Context, stmt string) error {
	ctx, cancel := context.WithTimeout(ctx, m.timeout)
	defer cancel()
	if err := m.conn.Exec(ctx, stmt); err != nil {
		return fmt.Errorf("clickhouse: %s: %w", firstLine(stmt), err)
	}
	return nil
}

// recorded returns the checksum of every recorded version.
func (m *migrator) recorded(ctx context.Context) (map[int]string, error) {
	ctx, cancel := context.WithTimeout(ctx, m.timeout)
	defer cancel()
	rows, err := m.conn.Query(ctx, "SELECT DISTINCT version, checksum FROM "+m.database+".schema_migrations")
	if err != nil {
		return nil, fmt.Errorf("read %s.schema_migrations: %w", m.database, err)
	}
	defer rows.Close()
	done := map[int]string{}
	for rows.Next() {
		var v uint32
		var sum string
		if err := rows.Scan(&v, &sum); err != nil {
			return nil, fmt.Errorf("read %s.schema_migrations: %w", m.database, err)
		}
		done[int(v)] = sum
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read %s.schema_migrations: %w", m.database, err)
	}
	return done, nil
}

func (m *migrator) record(ctx context.Context, mig migration) error {
	ctx, cancel := context.WithTimeout(ctx, m.timeout)
	defer cancel()
	// A batch, not Exec of INSERT ... VALUES: ClickHouse 18.16 waits for
	// data blocks after the latter until the connection times out.
	b, err := m.conn.PrepareBatch(ctx, "INSERT INTO "+m.database+".schema_migrations (version, name, checksum, applied_at)")
	if err != nil {
		return fmt.Errorf("record migration %04d_%s: %w", mig.Version, mig.Name, err)
	}
	if err := b.Append(uint32(mig.Version), mig.Name, mig.Checksum, time.Now().UTC()); err != nil {
		_ = b.Abort()
		return fmt.Errorf("record migration %04d_%s: %w", mig.Version, mig.Name, err)
	}
	if err := b.Send(); err != nil {
		return fmt.Errorf("record migration %04d_%s: %w", mig.Version, mig.Name, err)
	}
	return nil
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " ..."
	}
	return s
}
