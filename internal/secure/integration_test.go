package secure_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/secure"
	"github.com/emoflow/emoflow/internal/testenv"
)

func kafkaConn(t *testing.T, args ...string) *secure.KafkaConn {
	t.Helper()
	var k secure.Kafka
	parse(t, k.Register, args...)
	conn, err := k.Connect()
	if err != nil {
		t.Fatal(err)
	}
	return conn
}

// TestKafkaSASLSSL creates a topic, produces and consumes in a consumer
// group on the broker's SASL_SSL listener, with the SCRAM-SHA-512 user and
// with the PLAIN user, through the dialers and transports every emoflow
// Kafka client gets; a wrong password, a missing CA and a connection
// without TLS or without SASL are refused.
func TestKafkaSASLSSL(t *testing.T) {
	s := testenv.Secure(t)
	brokers := strings.Split(s.KafkaBrokers, ",")
	for _, tc := range []struct {
		name, mechanism, user, passwordFile string
		extra                               []string
	}{
		{"scram-sha-512", secure.SASLScramSHA512, s.ScramUser, s.ScramPasswordFile, nil},
		{"plain", secure.SASLPlain, s.PlainUser, s.PlainPasswordFile, nil},
		// The listener checks a client certificate when one is offered.
		{"scram-sha-512-mutual-tls", secure.SASLScramSHA512, s.ScramUser, s.ScramPasswordFile,
			[]string{"-kafka-tls-cert-file=" + s.ClientCertFile, "-kafka-tls-key-file=" + s.ClientKeyFile}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn := kafkaConn(t, append([]string{"-kafka-tls-ca-file=" + s.CAFile, "-kafka-sasl-mechanism=" + tc.mechanism,
				"-kafka-sasl-username=" + tc.user, "-kafka-sasl-password-file=" + tc.passwordFile}, tc.extra...)...)
			topic := testenv.Name(t, "sasl")
			ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
			defer cancel()
			resp, err := conn.Client(brokers, 30*time.Second).CreateTopics(ctx, &kafka.CreateTopicsRequest{
				Topics: []kafka.TopicConfig{{Topic: topic, NumPartitions: 2, ReplicationFactor: 1}}})
			if err != nil || resp.Errors[topic] != nil {
				t.Fatalf("create topic over SASL_SSL: %v %v", err, resp)
			}
			w := &kafka.Writer{Addr: kafka.TCP(brokers...), Topic: topic, Transport: conn.Transport(),
				RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond, MaxAttempts: 10}
			defer w.Close()
			const n = 20
			var msgs []kafka.Message
			for i := range n {
				msgs = append(msgs, kafka.Message{Key: []byte(fmt.Sprint(i)), Value: []byte(fmt.Sprintf("m%d", i))})
			}
			if err := w.WriteMessages(ctx, msgs...); err != nil {
				t.Fatalf("produce over SASL_SSL: %v", err)
			}
			r := kafka.NewReader(kafka.ReaderConfig{Brokers: brokers, Topic: topic, GroupID: topic + "_group",
				StartOffset: kafka.FirstOffset, Dialer: conn.Dialer(0), MaxWait: 200 * time.Millisecond})
			defer r.Close()
			got := map[string]bool{}
			for len(got) < n {
				m, err := r.FetchMessage(ctx)
				if err != nil {
					t.Fatalf("consume in a group over SASL_SSL after %d messages: %v", len(got), err)
				}
				got[string(m.Value)] = true
				if err := r.CommitMessages(ctx, m); err != nil {
					t.Fatalf("commit over SASL_SSL: %v", err)
				}
			}
		})
	}

	refused := func(name string, conn *secure.KafkaConn) {
		t.Run(name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			_, err := conn.Client(brokers, 10*time.Second).Metadata(ctx, &kafka.MetadataRequest{})
			if err == nil {
				t.Fatal("the SASL_SSL listener answered")
			}
			t.Logf("refused as expected: %v", err)
		})
	}
	refused("wrong-password", kafkaConn(t, "-kafka-tls-ca-file="+s.CAFile, "-kafka-sasl-mechanism=scram-sha-512",
		"-kafka-sasl-username="+s.ScramUser, "-kafka-sasl-password=not-the-password"))
	refused("plain-user-wrong-password", kafkaConn(t, "-kafka-tls-ca-file="+s.CAFile, "-kafka-sasl-mechanism=plain",
		"-kafka-sasl-username="+s.PlainUser, "-kafka-sasl-password=not-the-password"))
	refused("unknown-ca", kafkaConn(t, "-kafka-tls", "-kafka-sasl-mechanism=scram-sha-512",
		"-kafka-sasl-username="+s.ScramUser, "-kafka-sasl-password-file="+s.ScramPasswordFile))
	refused("tls-without-sasl", kafkaConn(t, "-kafka-tls-ca-file="+s.CAFile))
	refused("sasl-without-tls", kafkaConn(t, "-kafka-sasl-mechanism=scram-sha-512",
		"-kafka-sasl-username="+s.ScramUser, "-kafka-sasl-password-file="+s.ScramPasswordFile))
}

func redisClient(t *testing.T, addr string, args ...string) *redis.Client {
	t.Helper()
	var r secure.Redis
	parse(t, r.Register, args...)
	opts := &redis.Options{Addr: addr, DialTimeout: 5 * time.Second, MaxRetries: -1,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}}
	if err := r.Apply(opts); err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opts)
	t.Cleanup(func() { c.Close() })
	return c
}

// TestRedisTLSAndACLUser uses the cache's ACL user over Redis's TLS port:
// the cache's commands work on keys starting with emoflow, and nothing else
// does; a wrong password and an unverified server are refused.
func TestRedisTLSAndACLUser(t *testing.T) {
	s := testenv.Secure(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := redisClient(t, s.RedisAddr, "-redis-tls-ca-file="+s.CAFile, "-redis-username="+s.RedisUser, "-redis-password-file="+s.RedisPasswordFile)
	key := testenv.Name(t, "emoflow")
	if err := c.Set(ctx, key, "v", time.Minute).Err(); err != nil {
		t.Fatalf("SET over TLS as %s: %v", s.RedisUser, err)
	}
	if got, err := c.MGet(ctx, key, key+"_absent").Result(); err != nil || got[0] != "v" || got[1] != nil {
		t.Fatalf("MGET = %v, %v", got, err)
	}
	for name, err := range map[string]error{
		"key outside emoflow*": c.Set(ctx, "other:"+key, "v", time.Minute).Err(),
		"FLUSHALL":             c.FlushAll(ctx).Err(),
		"CONFIG GET":           c.ConfigGet(ctx, "*").Err(),
		"KEYS":                 c.Keys(ctx, "*").Err(),
	} {
		if err == nil || !strings.Contains(err.Error(), "NOPERM") {
			t.Errorf("%s as %s: %v, want NOPERM", name, s.RedisUser, err)
		}
	}
	// With a client certificate too (the server checks one when offered).
	mtls := redisClient(t, s.RedisAddr, "-redis-tls-ca-file="+s.CAFile, "-redis-tls-cert-file="+s.ClientCertFile,
		"-redis-tls-key-file="+s.ClientKeyFile, "-redis-username="+s.RedisUser, "-redis-password-file="+s.RedisPasswordFile)
	if err := mtls.Get(ctx, key).Err(); err != nil {
		t.Errorf("GET with a client certificate: %v", err)
	}

	wrong := redisClient(t, s.RedisAddr, "-redis-tls-ca-file="+s.CAFile, "-redis-username="+s.RedisUser, "-redis-password=not-the-password")
	if err := wrong.Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "WRONGPASS") {
		t.Errorf("a wrong password: %v, want WRONGPASS", err)
	}
	unverified := redisClient(t, s.RedisAddr, "-redis-tls", "-redis-username="+s.RedisUser, "-redis-password-file="+s.RedisPasswordFile)
	if err := unverified.Ping(ctx).Err(); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("a server certificate of an unknown CA: %v, want a certificate error", err)
	}
}

// TestClickHouseTLSAndSinkUser connects to ClickHouse's secure native port
// as the sink's user: it can create tables in its database, insert and
// select there, and cannot touch another database; a wrong password and a
// plain connection to the secure port are refused.
func TestClickHouseTLSAndSinkUser(t *testing.T) {
	s := testenv.Secure(t)
	open := func(args ...string) (clickhouse.Conn, error) {
		var c secure.ClickHouse
		parse(t, c.Register, args...)
		user, password, tlsCfg, err := c.Credentials()
		if err != nil {
			t.Fatal(err)
		}
		conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{s.ClickHouseAddr}, TLS: tlsCfg,
			Auth: clickhouse.Auth{Username: user, Password: password}, DialTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		return conn, conn.Ping(ctx)
	}
	conn, err := open("-clickhouse-tls-ca-file="+s.CAFile, "-clickhouse-user="+s.ClickHouseUser, "-clickhouse-password-file="+s.ClickHousePasswordFile)
	if err != nil {
		t.Fatalf("TLS connection as %s: %v", s.ClickHouseUser, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	db, table := s.ClickHouseDatabase, testenv.Name(t, "t")
	for _, q := range []string{
		"CREATE DATABASE IF NOT EXISTS " + db,
		"CREATE TABLE " + db + "." + table + " (id UInt32) ENGINE = MergeTree ORDER BY id",
	} {
		if err := conn.Exec(ctx, q); err != nil {
			t.Fatalf("%s as %s: %v", q, s.ClickHouseUser, err)
		}
	}
	// A batch insert, as the sink does (18.16 does not answer an INSERT
	// ... VALUES sent by this driver through Exec, TLS or not).
	batch, err := conn.PrepareBatch(ctx, "INSERT INTO "+db+"."+table)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []uint32{1, 2} {
		if err := batch.Append(id); err != nil {
			t.Fatal(err)
		}
	}
	if err := batch.Send(); err != nil {
		t.Fatalf("batch insert as %s over TLS: %v", s.ClickHouseUser, err)
	}
	var n uint64
	if err := conn.QueryRow(ctx, "SELECT count() FROM "+db+"."+table).Scan(&n); err != nil || n != 2 {
		t.Fatalf("count = %d, %v", n, err)
	}
	if err := conn.Exec(ctx, "DROP TABLE "+db+"."+table); err != nil {
		t.Fatal(err)
	}
	other := testenv.Name(t, "other")
	for _, q := range []string{"CREATE DATABASE " + other, "SELECT count() FROM default.nonexistent_table", "CREATE TABLE default." + other + " (id UInt32) ENGINE = Memory"} {
		err := conn.Exec(ctx, q)
		var ex *clickhouse.Exception
		if err == nil || !errors.As(err, &ex) || !strings.Contains(strings.ToLower(ex.Message), "access") {
			t.Errorf("%s as %s: %v, want access denied", q, s.ClickHouseUser, err)
		}
	}
	if _, err := open("-clickhouse-tls-ca-file="+s.CAFile, "-clickhouse-user="+s.ClickHouseUser, "-clickhouse-password=not-the-password"); err == nil {
		t.Error("a wrong password was accepted")
	}
	if _, err := open("-clickhouse-user="+s.ClickHouseUser, "-clickhouse-password-file="+s.ClickHousePasswordFile); err == nil {
		t.Error("a plain connection to the secure port was accepted")
	}
}
