package testenv

import (
	"os"
	"strings"
	"testing"
)

// SecureServices are the secured listeners of the local services and the
// throwaway CA, certificates and credentials that scripts/services.sh made
// for them in its state folder (see README "Security").
type SecureServices struct {
	// CAFile signs every server certificate; ClientCertFile/KeyFile is a
	// client certificate it signed (mutual TLS). ServerCertFile/KeyFile
	// are for servers a test runs itself (valid for 127.0.0.1).
	CAFile, ClientCertFile, ClientKeyFile, ServerCertFile, ServerKeyFile string
	// KafkaBrokers is the SASL_SSL listener; the users are a SCRAM-SHA-512
	// and a PLAIN one.
	KafkaBrokers                   string
	ScramUser, ScramPasswordFile   string
	PlainUser, PlainPasswordFile   string
	RedisAddr, RedisUser           string
	RedisPasswordFile              string
	ClickHouseAddr, ClickHouseUser string
	ClickHousePasswordFile         string
	ClickHouseDatabase             string
}

// Secure returns the secured services, checking that each listener
// answers; like Kafka, it skips without the EMOFLOW_TEST_* variables and
// fails when EMOFLOW_TEST_REQUIRE_SERVICES=1.
func Secure(t testing.TB) SecureServices {
	t.Helper()
	file := func(env string) string {
		p := os.Getenv(env)
		if p == "" {
			if os.Getenv("EMOFLOW_TEST_REQUIRE_SERVICES") == "1" {
				t.Fatalf("%s is not set: take the variables from scripts/services.sh env", env)
			}
			t.Skipf("integration test: needs %s; run ./task test", env)
		}
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s: %v (start the services with scripts/services.sh start)", env, err)
		}
		return p
	}
	s := SecureServices{
		CAFile:                 file("EMOFLOW_TEST_TLS_CA_FILE"),
		ClientCertFile:         file("EMOFLOW_TEST_TLS_CLIENT_CERT_FILE"),
		ClientKeyFile:          file("EMOFLOW_TEST_TLS_CLIENT_KEY_FILE"),
		ServerCertFile:         file("EMOFLOW_TEST_TLS_SERVER_CERT_FILE"),
		ServerKeyFile:          file("EMOFLOW_TEST_TLS_SERVER_KEY_FILE"),
		KafkaBrokers:           serviceAddr(t, "EMOFLOW_TEST_KAFKA_SASL_SSL_BROKERS", "Kafka's SASL_SSL listener"),
		ScramUser:              os.Getenv("EMOFLOW_TEST_KAFKA_SCRAM_USER"),
		ScramPasswordFile:      file("EMOFLOW_TEST_KAFKA_SCRAM_PASSWORD_FILE"),
		PlainUser:              os.Getenv("EMOFLOW_TEST_KAFKA_PLAIN_USER"),
		PlainPasswordFile:      file("EMOFLOW_TEST_KAFKA_PLAIN_PASSWORD_FILE"),
		RedisAddr:              serviceAddr(t, "EMOFLOW_TEST_REDIS_TLS_ADDR", "Redis's TLS port"),
		RedisUser:              os.Getenv("EMOFLOW_TEST_REDIS_USER"),
		RedisPasswordFile:      file("EMOFLOW_TEST_REDIS_PASSWORD_FILE"),
		ClickHouseAddr:         serviceAddr(t, "EMOFLOW_TEST_CLICKHOUSE_SECURE_ADDR", "ClickHouse's secure native port"),
		ClickHouseUser:         os.Getenv("EMOFLOW_TEST_CLICKHOUSE_SINK_USER"),
		ClickHousePasswordFile: file("EMOFLOW_TEST_CLICKHOUSE_SINK_PASSWORD_FILE"),
		ClickHouseDatabase:     os.Getenv("EMOFLOW_TEST_CLICKHOUSE_SINK_DATABASE"),
	}
	if s.ScramUser == "" || s.PlainUser == "" || s.RedisUser == "" || s.ClickHouseUser == "" || s.ClickHouseDatabase == "" {
		t.Fatal("the EMOFLOW_TEST_* user names are not set: take the variables from scripts/services.sh env")
	}
	return s
}

// ReadSecret returns the contents of a credentials file, for tests that
// must know a secret (to look for it in logs, or to connect with it).
func ReadSecret(t testing.TB, path string) string {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(raw))
}
