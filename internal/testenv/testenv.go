// Package testenv gives integration tests the addresses of the real Kafka,
// Redis and ClickHouse that scripts/services.sh starts (and of their
// secured listeners, with the throwaway CA and credentials), names that do
// not collide between tests, the shared data and fixtures folders, and
// throwaway certificate authorities.
//
// Without the EMOFLOW_TEST_* variables (a plain "go test" on a machine without
// the services) integration tests are skipped; with
// EMOFLOW_TEST_REQUIRE_SERVICES=1, which scripts/test.sh sets, a missing
// service fails the test instead, so CI can never pass by skipping.
package testenv

import (
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"
)

func serviceAddr(t testing.TB, env, what string) string {
	t.Helper()
	addr := os.Getenv(env)
	if addr == "" {
		if os.Getenv("EMOFLOW_TEST_REQUIRE_SERVICES") == "1" {
			t.Fatalf("%s is not set but EMOFLOW_TEST_REQUIRE_SERVICES=1: start the services with scripts/services.sh", env)
		}
		t.Skipf("integration test: needs %s (%s); run ./task test", what, env)
	}
	first := strings.Split(addr, ",")[0]
	conn, err := net.DialTimeout("tcp", first, 3*time.Second)
	if err != nil {
		t.Fatalf("%s at %s (%s) is not reachable: %v", what, first, env, err)
	}
	conn.Close()
	return addr
}

// Kafka returns the bootstrap address of the test Kafka broker.
func Kafka(t testing.TB) string {
	return serviceAddr(t, "EMOFLOW_TEST_KAFKA_BROKERS", "Apache Kafka")
}

// Redis returns the address of the test Redis server.
func Redis(t testing.TB) string { return serviceAddr(t, "EMOFLOW_TEST_REDIS_ADDR", "Redis") }

// ClickHouse returns the native-protocol address of the test ClickHouse server.
func ClickHouse(t testing.TB) string {
	return serviceAddr(t, "EMOFLOW_TEST_CLICKHOUSE_ADDR", "ClickHouse")
}

// Services runs scripts/services.sh with args (for example "restart",
// "redis"), for tests that stop, kill or restart a service.
func Services(t testing.TB, args ...string) {
	t.Helper()
	script := os.Getenv("EMOFLOW_TEST_SERVICES_SCRIPT")
	if script == "" {
		script = filepath.Join(RepoRoot(t), "scripts", "services.sh")
	}
	out, err := exec.Command(script, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("services.sh %s: %v\n%s", strings.Join(args, " "), err, out)
	}
}

var unsafeChars = regexp.MustCompile(`[^A-Za-z0-9]+`)

// Name returns a name no other test run uses: prefix, the test's name and a
// random suffix, in characters safe for Kafka topics, consumer groups,
// ClickHouse databases and Redis key prefixes.
func Name(t testing.TB, prefix string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	n := strings.ToLower(unsafeChars.ReplaceAllString(t.Name(), "_"))
	if len(n) > 40 {
		n = n[:40]
	}
	return prefix + "_" + n + "_" + hex.EncodeToString(b[:])
}

// RepoRoot is the repository's top folder.
func RepoRoot(t testing.TB) string {
	t.Helper()
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("cannot locate the repository")
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// Shared returns the path of p inside ../shared (the data sets and fixtures
// beside the repository; EMOFLOW_SHARED overrides the location). The test is
// skipped when the folder is absent, or fails with
// EMOFLOW_TEST_REQUIRE_SERVICES=1.
func Shared(t testing.TB, p string) string {
	t.Helper()
	root := os.Getenv("EMOFLOW_SHARED")
	if root == "" {
		root = filepath.Join(RepoRoot(t), "..", "shared")
	}
	full := filepath.Join(root, p)
	if _, err := os.Stat(full); err != nil {
		if os.Getenv("EMOFLOW_TEST_REQUIRE_SERVICES") == "1" {
			t.Fatalf("shared file %s: %v", full, err)
		}
		t.Skipf("needs %s: %v", full, err)
	}
	return full
}
