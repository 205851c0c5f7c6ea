package sink

import (
	"regexp"
	"strings"
	"testing"
)

// TestClusterMigrationsMirrorSingleNode checks, without a server, that
// migrations/cluster has the single-node migrations' versions and names,
// that every statement runs ON CLUSTER, that every MergeTree is replicated
// under the database's own ZooKeeper path, and that events is sharded by
// the message id (the first column of the dedup key).
func TestClusterMigrationsMirrorSingleNode(t *testing.T) {
	single, err := schemaMigrations("")
	if err != nil {
		t.Fatal(err)
	}
	cluster, err := schemaMigrations("c1")
	if err != nil {
		t.Fatal(err)
	}
	if len(single) != len(cluster) {
		t.Fatalf("%d single-node migrations, %d clustered", len(single), len(cluster))
	}
	for i := range single {
		if single[i].Version != cluster[i].Version || single[i].Name != cluster[i].Name {
			t.Errorf("migration %d: %04d_%s single-node, %04d_%s clustered", i, single[i].Version, single[i].Name, cluster[i].Version, cluster[i].Name)
		}
	}
	stmts, err := ClusterSchemaStatements("db1", "c1")
	if err != nil {
		t.Fatal(err)
	}
	engine := regexp.MustCompile(`ENGINE = (\w+)\(([^)]*)`)
	sharded := false
	for _, s := range stmts {
		if !strings.Contains(s, " ON CLUSTER c1") {
			t.Errorf("not ON CLUSTER: %s", firstLine(s))
		}
		m := engine.FindStringSubmatch(s)
		switch {
		case m == nil:
		case strings.HasSuffix(m[1], "MergeTree"):
			if !strings.HasPrefix(m[1], "Replicated") || !strings.HasPrefix(m[2], "'/clickhouse/emoflow/c1/db1/") {
				t.Errorf("%s: engine %s(%s), want Replicated under /clickhouse/emoflow/c1/db1/", firstLine(s), m[1], m[2])
			}
		case m[1] == "Distributed":
			if strings.Contains(s, ".events ON CLUSTER") {
				sharded = m[2] == "c1, db1, events_local, cityHash64(message_id"
			}
		default:
			t.Errorf("%s: unexpected engine %s", firstLine(s), m[1])
		}
	}
	if !sharded {
		t.Errorf("events is not Distributed over events_local by cityHash64(message_id)")
	}
	for _, bad := range []string{"", "my-cluster", "c1; DROP", "1c"} {
		if _, err := ClusterSchemaStatements("db1", bad); err == nil {
			t.Errorf("cluster name %q accepted", bad)
		}
	}
	single0, _ := SchemaStatements("db1")
	for _, s := range single0 {
		if strings.Contains(s, "CLUSTER") || strings.Contains(s, "Replicated") || strings.Contains(s, "${") {
			t.Errorf("single-node statement mentions a cluster: %s", firstLine(s))
		}
	}
}
