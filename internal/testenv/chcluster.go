package testenv

import (
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// ClickHouseCluster is a replicated, sharded ClickHouse cluster of
// clickhouse-server processes (the installed 18.16) and one ZooKeeper (from
// the Kafka distribution's jars), all on 127.0.0.1, started by
// StartClickHouseCluster for the tests of the clustered schema.
type ClickHouseCluster struct {
	// Name is the cluster's name in remote_servers.
	Name  string
	Nodes []*ClickHouseNode
	dir   string
}

// ClickHouseNode is one server of the cluster.
type ClickHouseNode struct {
	Shard, Replica int
	// Addr is the native-protocol address.
	Addr     string
	HTTPPort int
	config   string
	log      string
	cmd      *exec.Cmd
	done     chan struct{}
}

// clusterPortsEnv picks the first of the ports the test cluster listens on:
// ZooKeeper on it, then three per server (native, HTTP, interserver).
const clusterPortsEnv = "EMOFLOW_TEST_CLICKHOUSE_CLUSTER_PORT"

// StartClickHouseCluster starts ZooKeeper and shards x replicas ClickHouse
// servers configured as cluster name (internal_replication on, macros
// {shard} and {replica}), waits until every server answers and stops them
// all when t ends. The ports are consecutive from
// $EMOFLOW_TEST_CLICKHOUSE_CLUSTER_PORT (default: the port of
// $EMOFLOW_TEST_CLICKHOUSE_ADDR plus 300, else 19300). Without
// clickhouse-server, java or the Kafka jars the test is skipped (failed with
// EMOFLOW_TEST_REQUIRE_SERVICES=1).
func StartClickHouseCluster(t testing.TB, name string, shards, replicas int) *ClickHouseCluster {
	t.Helper()
	server, err := exec.LookPath("clickhouse-server")
	if err != nil {
		SkipOrFail(t, "the clustered-schema test needs clickhouse-server (scripts/setup.sh installs it): %v", err)
	}
	java, err := exec.LookPath("java")
	if err != nil {
		SkipOrFail(t, "the clustered-schema test needs java for ZooKeeper (scripts/setup.sh installs it): %v", err)
	}
	cache := os.Getenv("EMOFLOW_CACHE")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "emoflow")
	}
	jars, _ := filepath.Glob(filepath.Join(cache, "kafka-*", "libs", "zookeeper-[0-9]*.jar"))
	if len(jars) == 0 {
		SkipOrFail(t, "the clustered-schema test runs ZooKeeper from the Kafka jars under %s (scripts/setup.sh kafka)", cache)
	}
	libs := filepath.Dir(jars[0])

	base := 19300
	// Beside the test ClickHouse's port when it is set, so that test runs
	// with their own services (their own ports) get their own cluster ports.
	if _, port, err := net.SplitHostPort(strings.Split(os.Getenv("EMOFLOW_TEST_CLICKHOUSE_ADDR"), ",")[0]); err == nil {
		if p, err := strconv.Atoi(port); err == nil && p+300+1+3*shards*replicas < 65536 {
			base = p + 300
		}
	}
	if v := os.Getenv(clusterPortsEnv); v != "" {
		if base, err = strconv.Atoi(v); err != nil || base <= 0 || base > 65000 {
			t.Fatalf("%s=%q: want a port number", clusterPortsEnv, v)
		}
	}
	ports := 1 + 3*shards*replicas
	for p := base; p < base+ports; p++ {
		if ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p)); err != nil {
			t.Fatalf("the test cluster needs ports %d-%d free (set %s to move them): %v", base, base+ports-1, clusterPortsEnv, err)
		} else {
			ln.Close()
		}
	}

	dir := t.TempDir()
	c := &ClickHouseCluster{Name: name, dir: dir}
	zkPort := base
	zk := exec.Command(java, "-Xms32m", "-Xmx96m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
		"-Dzookeeper.admin.enableServer=false", "-Dzookeeper.jmx.log4j.disable=true",
		"-Dlog4j.configuration=file:/dev/null",
		"-cp", filepath.Join(libs, "*"), "org.apache.zookeeper.server.ZooKeeperServerMain",
		// tickTime 250 ms: sessions may be as short as 0.5 s, so that the
		// session of a killed server expires (and its replicas can become
		// active again after a restart) within the servers' 2 s below.
		strconv.Itoa(zkPort), filepath.Join(dir, "zookeeper"), "250")
	zkLog, err := os.Create(filepath.Join(dir, "zookeeper.log"))
	if err != nil {
		t.Fatal(err)
	}
	zk.Stdout, zk.Stderr = zkLog, zkLog
	zk.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := zk.Start(); err != nil {
		t.Fatalf("start ZooKeeper: %v", err)
	}
	zkDone := make(chan struct{})
	go func() { _ = zk.Wait(); close(zkDone) }()
	t.Cleanup(func() { _ = zk.Process.Kill(); <-zkDone })

	for s := 1; s <= shards; s++ {
		for r := 1; r <= replicas; r++ {
			p := base + 1 + 3*len(c.Nodes)
			c.Nodes = append(c.Nodes, &ClickHouseNode{Shard: s, Replica: r, Addr: fmt.Sprintf("127.0.0.1:%d", p), HTTPPort: p + 1})
		}
	}
	var remote strings.Builder
	for s := 1; s <= shards; s++ {
		remote.WriteString("<shard><internal_replication>true</internal_replication>")
		for _, n := range c.Nodes {
			if n.Shard == s {
				fmt.Fprintf(&remote, "<replica><host>127.0.0.1</host><port>%s</port></replica>", strings.TrimPrefix(n.Addr, "127.0.0.1:"))
			}
		}
		remote.WriteString("</shard>")
	}
	for i, n := range c.Nodes {
		nd := filepath.Join(dir, fmt.Sprintf("ch%d", i+1))
		if err := os.MkdirAll(nd, 0o755); err != nil {
			t.Fatal(err)
		}
		n.config = filepath.Join(nd, "config.xml")
		n.log = filepath.Join(nd, "server.err.log")
		if err := os.WriteFile(n.config, []byte(nodeConfig(nd, n, name, remote.String(), zkPort)), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(nd, "users.xml"), []byte(clusterUsers), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// ZooKeeper first: a server that starts without it keeps its
	// replicated tables read-only until it reconnects.
	waitFor(t, "ZooKeeper on port "+strconv.Itoa(zkPort), 60*time.Second, func() bool {
		return zooKeeperAnswers(fmt.Sprintf("127.0.0.1:%d", zkPort))
	}, filepath.Join(dir, "zookeeper.log"))
	for i := range c.Nodes {
		c.start(t, server, i)
	}
	for i := range c.Nodes {
		c.waitReady(t, i)
	}
	t.Cleanup(func() {
		// The cluster's data goes with the test.
		for i := range c.Nodes {
			c.Stop(t, i)
		}
		if t.Failed() {
			for i, n := range c.Nodes {
				t.Logf("ClickHouse node %d, %s:\n%s", i+1, n.log, tail(n.log))
			}
		}
	})
	return c
}

// Stop kills node i (SIGKILL, as a crash or a lost machine would stop it;
// clickhouse-server 18.16 also takes seconds to stop on SIGTERM) and waits
// for it to exit.
func (c *ClickHouseCluster) Stop(t testing.TB, i int) {
	t.Helper()
	n := c.Nodes[i]
	if n.cmd == nil {
		return
	}
	_ = n.cmd.Process.Kill()
	<-n.done
	n.cmd = nil
}

// Start starts node i again after Stop and waits until it answers.
func (c *ClickHouseCluster) Start(t testing.TB, i int) {
	t.Helper()
	server, err := exec.LookPath("clickhouse-server")
	if err != nil {
		t.Fatal(err)
	}
	c.start(t, server, i)
	c.waitReady(t, i)
}

// Addrs returns every node's native-protocol address, comma-separated.
func (c *ClickHouseCluster) Addrs() string {
	var a []string
	for _, n := range c.Nodes {
		a = append(a, n.Addr)
	}
	return strings.Join(a, ",")
}

func (c *ClickHouseCluster) start(t testing.TB, server string, i int) {
	t.Helper()
	n := c.Nodes[i]
	if n.cmd != nil {
		t.Fatalf("ClickHouse node %d is running", i+1)
	}
	cmd := exec.Command(server, "--config-file="+n.config)
	cmd.Dir = filepath.Dir(n.config)
	out, err := os.OpenFile(filepath.Join(cmd.Dir, "stdout.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start clickhouse-server %d: %v", i+1, err)
	}
	n.cmd = cmd
	n.done = make(chan struct{})
	go func(done chan struct{}) { _ = cmd.Wait(); out.Close(); close(done) }(n.done)
}

func (c *ClickHouseCluster) waitReady(t testing.TB, i int) {
	t.Helper()
	n := c.Nodes[i]
	url := fmt.Sprintf("http://127.0.0.1:%d/ping", n.HTTPPort)
	client := &http.Client{Timeout: time.Second}
	waitFor(t, fmt.Sprintf("ClickHouse node %d (shard %d replica %d)", i+1, n.Shard, n.Replica), 60*time.Second, func() bool {
		select {
		case <-n.done:
			t.Fatalf("clickhouse-server %d exited; its log %s:\n%s", i+1, n.log, tail(n.log))
		default:
		}
		resp, err := client.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, n.log)
}

func waitFor(t testing.TB, what string, limit time.Duration, ready func() bool, log string) {
	t.Helper()
	deadline := time.Now().Add(limit)
	for !ready() {
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready after %s; log %s:\n%s", what, limit, log, tail(log))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// zooKeeperAnswers reports whether the ZooKeeper server at addr accepts a
// session: the port opens before the server serves, and a ClickHouse
// server whose first connection fails keeps its DDL worker waiting.
func zooKeeperAnswers(addr string) bool {
	conn, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(2 * time.Second))
	// ConnectRequest: protocol version, last zxid, timeout, session id,
	// password (length-prefixed), after the frame's length.
	req := make([]byte, 4+4+8+4+8+4+16)
	binary.BigEndian.PutUint32(req, uint32(len(req)-4))
	binary.BigEndian.PutUint32(req[16:], 10000)
	binary.BigEndian.PutUint32(req[32:], 16)
	if _, err := conn.Write(req); err != nil {
		return false
	}
	var head [4]byte
	_, err = io.ReadFull(conn, head[:])
	return err == nil && binary.BigEndian.Uint32(head[:]) > 0
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

func nodeConfig(dir string, n *ClickHouseNode, cluster, remote string, zkPort int) string {
	tcp := strings.TrimPrefix(n.Addr, "127.0.0.1:")
	return fmt.Sprintf(`<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><log>%[1]s/server.log</log><errorlog>%[1]s/server.err.log</errorlog><size>10M</size><count>1</count></logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>%[2]s</tcp_port>
    <http_port>%[3]d</http_port>
    <interserver_http_port>%[4]d</interserver_http_port>
    <interserver_http_host>127.0.0.1</interserver_http_host>
    <max_connections>64</max_connections>
    <max_concurrent_queries>32</max_concurrent_queries>
    <uncompressed_cache_size>16777216</uncompressed_cache_size>
    <mark_cache_size>16777216</mark_cache_size>
    <path>%[1]s/data/</path>
    <tmp_path>%[1]s/tmp/</tmp_path>
    <user_files_path>%[1]s/user_files/</user_files_path>
    <format_schema_path>%[1]s/format_schemas/</format_schema_path>
    <users_config>users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <timezone>UTC</timezone>
    <mlock_executable>false</mlock_executable>
    <background_pool_size>2</background_pool_size>
    <background_schedule_pool_size>4</background_schedule_pool_size>
    <remote_servers><%[5]s>%[6]s</%[5]s></remote_servers>
    <zookeeper><node><host>127.0.0.1</host><port>%[7]d</port></node><session_timeout_ms>2000</session_timeout_ms></zookeeper>
    <macros><shard>%02[8]d</shard><replica>r%[9]d</replica></macros>
    <distributed_ddl><path>/clickhouse/task_queue/ddl</path></distributed_ddl>
</yandex>
`, dir, tcp, n.HTTPPort, n.HTTPPort+1, cluster, remote, zkPort, n.Shard, n.Replica)
}

// clusterUsers is users.xml of the test cluster: the loopback default user,
// and distributed DDL that gives up after 20 s (not 180 s) on a host that
// is down, so that the test of a stopped replica is quick.
const clusterUsers = `<?xml version="1.0"?>
<yandex>
    <profiles><default>
        <max_memory_usage>1000000000</max_memory_usage>
        <distributed_ddl_task_timeout>20</distributed_ddl_task_timeout>
    </default></profiles>
    <users><default><password></password><networks><ip>127.0.0.1</ip><ip>::1</ip></networks><profile>default</profile><quota>default</quota></default></users>
    <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors><result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time></interval></default></quotas>
</yandex>
`
