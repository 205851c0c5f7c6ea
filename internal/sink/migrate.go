package sink

import (
	"context"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"net"
	"path"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
)

// migrationFiles are the schema's migrations, NNNN_name.sql, applied in
// order of NNNN. Each file is a list of statements ended by ";" (no ";"
// inside literals or comments); "${database}" stands for the sink's
// database. Every statement must be safe to run again (IF NOT EXISTS),
// because sinks starting together may run the same migration at once and a
// migration interrupted halfway runs again from its first statement. The
// exception is ALTER TABLE ... ADD COLUMN, which ClickHouse 18.16 cannot
// make conditional: each must add one column, and a column that is there
// already counts as added (columnAlreadyAdded).
// Never edit a released migration: add a new one.
//
// migrations/cluster holds the same migrations (same versions, names and
// columns) for a ClickHouse cluster (-clickhouse-cluster): "${cluster}"
// stands for the cluster's name there. A new migration is added to both.
//
//go:embed migrations/*.sql migrations/cluster/*.sql
var migrationFiles embed.FS

// Folders of migrationFiles.
const (
	singleNodeMigrations = "migrations"
	clusterMigrations    = "migrations/cluster"
)

// schemaMigrations returns the migrations for a single server (cluster
// empty) or for a cluster.
func schemaMigrations(cluster string) ([]migration, error) {
	if cluster == "" {
		return loadMigrations(migrationFiles, singleNodeMigrations)
	}
	return loadMigrations(migrationFiles, clusterMigrations)
}

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
		if e.IsDir() {
			continue
		}
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
		for i, stmt := range stmts {
			if err := checkAlter(stmt); err != nil {
				return nil, fmt.Errorf("migration %s statement %d: %w", e.Name(), i+1, err)
			}
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

// addColumn matches the one form of ALTER a migration may hold: ALTER TABLE
// t [ON CLUSTER c] ADD COLUMN name Type, one column.
var addColumn = regexp.MustCompile(`(?is)^ALTER\s+TABLE\s+\S+(?:\s+ON\s+CLUSTER\s+\S+)?\s+ADD\s+COLUMN\s+([A-Za-z_][A-Za-z0-9_]*)\s+(\S.*)$`)

// checkAlter fails for an ALTER statement that is not one ADD COLUMN: only
// then does "column already exists" on a rerun mean that the statement's
// whole change is in place.
func checkAlter(stmt string) error {
	if !strings.EqualFold(strings.Fields(stmt)[0], "ALTER") {
		return nil
	}
	m := addColumn.FindStringSubmatch(stmt)
	if m == nil || hasTopLevelComma(m[2]) {
		return fmt.Errorf("an ALTER must add exactly one column (ALTER TABLE t ADD COLUMN c Type): %s", firstLine(stmt))
	}
	return nil
}

// hasTopLevelComma reports whether s has a comma outside parentheses (a
// second column, not a type such as Decimal(9, 2)).
func hasTopLevelComma(s string) bool {
	depth := 0
	for _, r := range s {
		switch r {
		case '(':
			depth++
		case ')':
			depth--
		case ',':
			if depth == 0 {
				return true
			}
		}
	}
	return false
}

// columnAlreadyAdded reports whether err, from running stmt, says that the
// column stmt adds exists already: a rerun of its migration (ClickHouse
// 18.16 has no ADD COLUMN IF NOT EXISTS), or another sink running it at
// the same time. 18.16 answers ILLEGAL_COLUMN (44), current releases
// DUPLICATE_COLUMN (15), both with "Cannot add column NAME: column with
// this name already exists" (current releases quote NAME in backticks); ON
// CLUSTER, the code and message are the first failing host's.
func columnAlreadyAdded(stmt string, err error) bool {
	m := addColumn.FindStringSubmatch(stmt)
	var ex *clickhouse.Exception
	if m == nil || !errors.As(err, &ex) || (ex.Code != 15 && ex.Code != 44) {
		return false
	}
	for _, name := range []string{m[1], "`" + m[1] + "`"} {
		if strings.Contains(ex.Message, "Cannot add column "+name+": column with this name already exists") {
			return true
		}
	}
	return false
}

// migrator applies migrations to one database.
type migrator struct {
	conn     driver.Conn
	database string
	// cluster, when set, is the ClickHouse cluster (remote_servers) the
	// schema is created on, ON CLUSTER, with the migrations of
	// migrations/cluster.
	cluster string
	// user and password reach every host of the cluster through remote()
	// for the check that each host has the whole schema.
	user, password string
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
//
// On a cluster, Migrate first checks that the server knows the cluster and
// runs no DDL when every version is recorded already (ON CLUSTER waits for
// every host, and a sink must be able to start while a replica is down); at
// the end it checks that every host of the cluster has every table and
// view of the recorded migrations. A host that lacks some (it was
// replaced, or missed a DDL task) gets every migration's statements again
// (they are idempotent); if objects are still missing, Migrate fails, so
// the sink never writes into a schema that is only partly there.
func (m *migrator) Migrate(ctx context.Context, ms []migration) (applied, changed []int, err error) {
	var done map[int]string
	if m.cluster != "" {
		if err := m.checkCluster(ctx); err != nil {
			return nil, nil, err
		}
		// A current schema needs no DDL: skip the bootstrap, which ON
		// CLUSTER waits for every host, so that a sink can start while a
		// replica is down.
		if recorded, err := m.recorded(ctx); err == nil && !pending(ms, recorded) {
			done = recorded
		}
	}
	if done == nil {
		for _, stmt := range bootstrapStatements(m.database, m.cluster) {
			if err := m.exec(ctx, stmt); err != nil {
				return nil, nil, err
			}
		}
		if done, err = m.recorded(ctx); err != nil {
			return nil, nil, err
		}
	}
	for _, mig := range ms {
		if sum, ok := done[mig.Version]; ok {
			if sum != mig.Checksum {
				changed = append(changed, mig.Version)
			}
			continue
		}
		if err := m.apply(ctx, mig); err != nil {
			return applied, changed, err
		}
		if err := m.record(ctx, mig); err != nil {
			return applied, changed, err
		}
		applied = append(applied, mig.Version)
	}
	if m.cluster == "" {
		return applied, changed, nil
	}
	missing, err := m.missingObjects(ctx, ms)
	if err != nil || len(missing) == 0 {
		return applied, changed, err
	}
	// Some host lacks objects of recorded migrations: give it the
	// replicated tables as they are now, then run the migrations again.
	if err := m.recreateReplicas(ctx); err != nil {
		return applied, changed, fmt.Errorf("completing the schema on the cluster's hosts (%s): %w", strings.Join(missing, "; "), err)
	}
	for _, mig := range ms {
		if err := m.apply(ctx, mig); err != nil {
			return applied, changed, fmt.Errorf("completing the schema on the cluster's hosts (%s): %w", strings.Join(missing, "; "), err)
		}
	}
	if missing, err = m.missingObjects(ctx, ms); err != nil {
		return applied, changed, err
	}
	if len(missing) > 0 {
		return applied, changed, fmt.Errorf("clickhouse cluster %s: schema incomplete after running the migrations again: %s", m.cluster, strings.Join(missing, "; "))
	}
	return applied, changed, nil
}

// pending reports whether a migration of ms is not in done.
func pending(ms []migration, done map[int]string) bool {
	for _, mig := range ms {
		if _, ok := done[mig.Version]; !ok {
			return true
		}
	}
	return false
}

func (m *migrator) apply(ctx context.Context, mig migration) error {
	for i, stmt := range mig.statementsFor(m.database, m.cluster) {
		if err := m.exec(ctx, stmt); err != nil && !columnAlreadyAdded(stmt, err) {
			return fmt.Errorf("migration %04d_%s statement %d: %w", mig.Version, mig.Name, i+1, err)
		}
	}
	return nil
}

// bootstrapStatements create the database and its schema_migrations table;
// Migrate runs them before reading which versions are applied. On a
// cluster, every host keeps a replica of schema_migrations (one ZooKeeper
// path for the whole cluster, so the replica name joins shard and replica).
func bootstrapStatements(database, cluster string) []string {
	columns := `
(
    version    UInt32,
    name       String,
    checksum   String,
    applied_at DateTime('UTC')
)
`
	if cluster == "" {
		return []string{
			"CREATE DATABASE IF NOT EXISTS " + database,
			`CREATE TABLE IF NOT EXISTS ` + database + `.schema_migrations` + columns + `ENGINE = ReplacingMergeTree(applied_at)
ORDER BY version`,
		}
	}
	return []string{
		"CREATE DATABASE IF NOT EXISTS " + database + " ON CLUSTER " + cluster,
		`CREATE TABLE IF NOT EXISTS ` + database + `.schema_migrations ON CLUSTER ` + cluster + columns +
			`ENGINE = ReplicatedReplacingMergeTree('` + zooKeeperPrefix(database, cluster) + `/schema_migrations', '{shard}-{replica}', applied_at)
ORDER BY version`,
	}
}

// zooKeeperPrefix is where the replicated tables of database on cluster
// keep their ZooKeeper nodes (the migrations spell it out the same way).
func zooKeeperPrefix(database, cluster string) string {
	return "/clickhouse/emoflow/" + cluster + "/" + database
}

// statementsFor returns the migration's statements for database (and
// cluster, for the clustered migrations), as Migrate runs them.
func (mig migration) statementsFor(database, cluster string) []string {
	r := strings.NewReplacer("${database}", database, "${cluster}", cluster)
	out := make([]string, len(mig.Statements))
	for i, stmt := range mig.Statements {
		out[i] = r.Replace(stmt)
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
	return schemaStatements(database, "")
}

// ClusterSchemaStatements is SchemaStatements for -clickhouse-cluster
// cluster: the DDL, ON CLUSTER, of the clustered schema.
func ClusterSchemaStatements(database, cluster string) ([]string, error) {
	if !identifier.MatchString(cluster) {
		return nil, fmt.Errorf("clickhouse cluster %q: want a plain identifier", cluster)
	}
	return schemaStatements(database, cluster)
}

func schemaStatements(database, cluster string) ([]string, error) {
	if !identifier.MatchString(database) {
		return nil, fmt.Errorf("clickhouse database %q: want a plain identifier", database)
	}
	ms, err := schemaMigrations(cluster)
	if err != nil {
		return nil, err
	}
	stmts := bootstrapStatements(database, cluster)
	for _, mig := range ms {
		stmts = append(stmts, mig.statementsFor(database, cluster)...)
	}
	return stmts, nil
}

// checkCluster fails, permanently, when the server does not define the
// cluster: every statement ON CLUSTER would fail, and retrying does not help.
func (m *migrator) checkCluster(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, m.timeout)
	defer cancel()
	rows, err := m.conn.Query(ctx, "SELECT DISTINCT cluster FROM system.clusters ORDER BY cluster")
	if err != nil {
		return fmt.Errorf("read system.clusters: %w", err)
	}
	defer rows.Close()
	var known []string
	for rows.Next() {
		var name string
		if err := rows.Scan(&name); err != nil {
			return fmt.Errorf("read system.clusters: %w", err)
		}
		if name == m.cluster {
			return nil
		}
		known = append(known, name)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read system.clusters: %w", err)
	}
	defined := "none"
	if len(known) > 0 {
		defined = strings.Join(known, ", ")
	}
	return &unknownClusterError{cluster: m.cluster, defined: defined}
}

// unknownClusterError is -clickhouse-cluster naming a cluster that the
// server's remote_servers does not define.
type unknownClusterError struct{ cluster, defined string }

func (e *unknownClusterError) Error() string {
	return fmt.Sprintf("-clickhouse-cluster %s: the ClickHouse server does not define this cluster (remote_servers defines: %s)", e.cluster, e.defined)
}

// clusterHost is one host of the cluster as system.clusters lists it.
type clusterHost struct {
	Addr           string
	Shard, Replica uint32
}

func (m *migrator) clusterHosts(ctx context.Context) ([]clusterHost, error) {
	ctx, cancel := context.WithTimeout(ctx, m.timeout)
	defer cancel()
	rows, err := m.conn.Query(ctx, "SELECT host_name, port, shard_num, replica_num FROM system.clusters WHERE cluster = ? ORDER BY shard_num, replica_num", m.cluster)
	if err != nil {
		return nil, fmt.Errorf("read the hosts of cluster %s: %w", m.cluster, err)
	}
	defer rows.Close()
	var hosts []clusterHost
	for rows.Next() {
		var h clusterHost
		var name string
		var port uint16
		if err := rows.Scan(&name, &port, &h.Shard, &h.Replica); err != nil {
			return nil, fmt.Errorf("read the hosts of cluster %s: %w", m.cluster, err)
		}
		h.Addr = net.JoinHostPort(name, strconv.Itoa(int(port)))
		hosts = append(hosts, h)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the hosts of cluster %s: %w", m.cluster, err)
	}
	if len(hosts) == 0 {
		return nil, fmt.Errorf("cluster %s has no hosts", m.cluster)
	}
	return hosts, nil
}

// createdObject finds the table or view a migration statement creates.
var createdObject = regexp.MustCompile(`(?is)^CREATE\s+(?:TABLE|VIEW|MATERIALIZED\s+VIEW)\s+IF\s+NOT\s+EXISTS\s+\$\{database\}\.([A-Za-z0-9_]+)`)

// missingObjects returns, per host of the cluster that answers, the tables
// and views of ms (and schema_migrations) that it lacks, as "host: a, b".
// A host that does not answer is left out: it holds no writes while down,
// and it runs the DDL tasks it missed from ZooKeeper when it is back.
func (m *migrator) missingObjects(ctx context.Context, ms []migration) ([]string, error) {
	want := []string{"schema_migrations"}
	for _, mig := range ms {
		for _, stmt := range mig.Statements {
			if match := createdObject.FindStringSubmatch(stmt); match != nil {
				want = append(want, match[1])
			}
		}
	}
	hosts, err := m.answeringHosts(ctx)
	if err != nil {
		return nil, err
	}
	var missing []string
	for _, h := range hosts {
		var lacks []string
		for _, name := range want {
			if _, ok := h.tables[name]; !ok {
				lacks = append(lacks, name)
			}
		}
		if len(lacks) > 0 {
			missing = append(missing, fmt.Sprintf("host %s (shard %d, replica %d) lacks %s.%s", h.Addr, h.Shard, h.Replica, m.database, strings.Join(lacks, ", "+m.database+".")))
		}
	}
	return missing, nil
}

// hostSchema is a host of the cluster that answered, with the tables and
// views of the database it holds.
type hostSchema struct {
	clusterHost
	tables map[string]hostTable
}

// answeringHosts reads the database's tables on every host of the cluster.
// A host that does not answer is left out; none answering is an error.
func (m *migrator) answeringHosts(ctx context.Context) ([]hostSchema, error) {
	hosts, err := m.clusterHosts(ctx)
	if err != nil {
		return nil, err
	}
	var answered []hostSchema
	for _, h := range hosts {
		have, err := m.hostTables(ctx, h.Addr)
		if err != nil {
			var ex *clickhouse.Exception
			if errors.As(err, &ex) && unreachableHost[ex.Code] {
				continue
			}
			return nil, err
		}
		answered = append(answered, hostSchema{clusterHost: h, tables: have})
	}
	if len(answered) == 0 {
		return nil, fmt.Errorf("clickhouse cluster %s: none of its %d hosts answered", m.cluster, len(hosts))
	}
	return answered, nil
}

// unreachableHost are the ClickHouse error codes of remote() that mean the
// host did not answer: NETWORK_ERROR, SOCKET_TIMEOUT,
// ALL_CONNECTION_TRIES_FAILED.
var unreachableHost = map[int32]bool{209: true, 210: true, 279: true}

// hostTable is a table or view of the database on one host: its engine
// and the CREATE statement the host keeps for it.
type hostTable struct{ engine, create string }

// hostTables returns the tables and views of the database on the host at
// addr by name, read through remote() by the server the sink is connected
// to.
func (m *migrator) hostTables(ctx context.Context, addr string) (map[string]hostTable, error) {
	ctx, cancel := context.WithTimeout(ctx, m.timeout)
	defer cancel()
	query := fmt.Sprintf("SELECT name, engine, create_table_query FROM remote(%s, system, tables, %s, %s) WHERE database = ?",
		quoteString(addr), quoteString(m.user), quoteString(m.password))
	rows, err := m.conn.Query(ctx, query, m.database)
	if err != nil {
		return nil, fmt.Errorf("read the tables on host %s: %w", addr, err)
	}
	defer rows.Close()
	have := map[string]hostTable{}
	for rows.Next() {
		var name string
		var t hostTable
		if err := rows.Scan(&name, &t.engine, &t.create); err != nil {
			return nil, fmt.Errorf("read the tables on host %s: %w", addr, err)
		}
		have[name] = t
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read the tables on host %s: %w", addr, err)
	}
	return have, nil
}

// recreateReplicas creates every replicated table that some hosts have on
// the hosts that lack it, with the definition the others hold now. A host
// rebuilt empty would otherwise get its replicated tables from the first
// migration's CREATE, and ClickHouse refuses a replica whose columns differ
// from those its peers keep in ZooKeeper ("Table structure in ZooKeeper is
// too different from local table structure") once a later migration has
// added one. The engine's ZooKeeper path and replica name keep their
// macros in the stored definition, so each host fills in its own; IF NOT
// EXISTS ON CLUSTER changes nothing where the table is.
func (m *migrator) recreateReplicas(ctx context.Context) error {
	hosts, err := m.answeringHosts(ctx)
	if err != nil {
		return err
	}
	defs := map[string]string{}
	for _, h := range hosts {
		for name, t := range h.tables {
			if strings.HasPrefix(t.engine, "Replicated") && defs[name] == "" {
				defs[name] = t.create
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(defs)) {
		if !slices.ContainsFunc(hosts, func(h hostSchema) bool { _, ok := h.tables[name]; return !ok }) {
			continue
		}
		head := "CREATE TABLE " + m.database + "." + name + " "
		body, ok := strings.CutPrefix(defs[name], head)
		if !ok {
			return fmt.Errorf("recreate %s.%s: its definition does not start with %q: %s", m.database, name, head, firstLine(defs[name]))
		}
		if err := m.exec(ctx, "CREATE TABLE IF NOT EXISTS "+m.database+"."+name+" ON CLUSTER "+m.cluster+" "+body); err != nil {
			return err
		}
	}
	return nil
}

// quoteString is s as a ClickHouse string literal.
func quoteString(s string) string {
	return "'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(s) + "'"
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
