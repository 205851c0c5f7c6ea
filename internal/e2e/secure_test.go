package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/redis/go-redis/v9"
	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/classifier"
	"github.com/emoflow/emoflow/internal/contract"
	"github.com/emoflow/emoflow/internal/datasets"
	"github.com/emoflow/emoflow/internal/ingest"
	"github.com/emoflow/emoflow/internal/secure"
	"github.com/emoflow/emoflow/internal/sink"
	"github.com/emoflow/emoflow/internal/testenv"
)

// TestSecuredPipeline runs the pipeline with every connection secured as
// the README's "Security" section describes, against the local services'
// secured listeners: the classifier over HTTPS with per-client tokens and
// an admin token; ingest on Kafka's SASL_SSL listener as the SCRAM-SHA-512
// user, on Redis's TLS port as the cache's ACL user, calling the
// classifier with its token; the sink on SASL_SSL as the PLAIN user and on
// ClickHouse's secure port as its own user. Every message becomes a row,
// the cache is written, the classifier counts ingest's calls under its
// name, and no password or token appears in any log. Conversation context
// is on, so the ACL user's commands cover the windows' sorted sets too.
func TestSecuredPipeline(t *testing.T) {
	s := testenv.Secure(t)
	plainRedis := testenv.Redis(t)
	examples, err := datasets.Read(testenv.Shared(t, "data"), datasets.GoEmotionsEkman, "test")
	if err != nil {
		t.Fatal(err)
	}
	const n = 60
	var texts []string
	for _, e := range examples[:n] {
		texts = append(texts, e.Text)
	}
	dir := tinyModel(t, texts)

	secrets := t.TempDir()
	ingestToken, adminToken := randomToken(t), randomToken(t)
	tokensFile, adminFile, ingestTokenFile := filepath.Join(secrets, "tokens"), filepath.Join(secrets, "admin"), filepath.Join(secrets, "ingest-token")
	writeSecret(t, tokensFile, "ingest "+ingestToken+"\nemoctl "+randomToken(t)+"\n")
	writeSecret(t, adminFile, adminToken)
	writeSecret(t, ingestTokenFile, ingestToken)

	name := testenv.Name(t, "sec")
	in, events, dlq := name+"_in", name+"_events", name+"_dlq"
	cls := testenv.Start(t, "classifier", &classifier.Component{}, "-dtype=float32", "-model-dir="+dir, "-max-queue-delay=5ms",
		"-tls-cert-file="+s.ServerCertFile, "-tls-key-file="+s.ServerKeyFile, "-tokens-file="+tokensFile, "-admin-token-file="+adminFile)
	kafkaSCRAM := []string{"-kafka-brokers=" + s.KafkaBrokers, "-kafka-tls-ca-file=" + s.CAFile, "-kafka-sasl-mechanism=scram-sha-512",
		"-kafka-sasl-username=" + s.ScramUser, "-kafka-sasl-password-file=" + s.ScramPasswordFile}
	kafkaPlain := []string{"-kafka-brokers=" + s.KafkaBrokers, "-kafka-tls-ca-file=" + s.CAFile, "-kafka-sasl-mechanism=plain",
		"-kafka-sasl-username=" + s.PlainUser, "-kafka-sasl-password-file=" + s.PlainPasswordFile}
	snk := testenv.Start(t, "sink", &sink.Component{}, append(kafkaPlain, "-events-topic="+events,
		"-dead-letter-topic="+events+"_dlq", "-group-id="+name+"_sink", "-flush-interval=200ms",
		"-clickhouse-addr="+s.ClickHouseAddr, "-clickhouse-tls-ca-file="+s.CAFile, "-clickhouse-user="+s.ClickHouseUser,
		"-clickhouse-password-file="+s.ClickHousePasswordFile, "-clickhouse-database="+s.ClickHouseDatabase)...)
	keyPrefix := "emoflow:" + name + ":"
	ing := testenv.Start(t, "ingest", &ingest.Component{}, append(kafkaSCRAM, "-input-topic="+in,
		"-events-topic="+events, "-dead-letter-topic="+dlq, "-group-id="+name+"_ingest", "-topic-partitions=2",
		"-redis-addr="+s.RedisAddr, "-redis-tls-ca-file="+s.CAFile, "-redis-username="+s.RedisUser,
		"-redis-password-file="+s.RedisPasswordFile, "-redis-key-prefix="+keyPrefix,
		"-context-messages=2", "-context-key-prefix="+keyPrefix+"ctx:",
		"-classifier-urls=https://"+cls.RT.Addr, "-classifier-tls-ca-file="+s.CAFile, "-classifier-token-file="+ingestTokenFile)...)

	// Produce over SASL_SSL as the SCRAM user.
	var k secure.Kafka
	fs := flag.NewFlagSet("producer", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	k.Register(fs)
	if err := fs.Parse(kafkaSCRAM[1:]); err != nil {
		t.Fatal(err)
	}
	kconn, err := k.Connect()
	if err != nil {
		t.Fatal(err)
	}
	w := &kafka.Writer{Addr: kafka.TCP(s.KafkaBrokers), Topic: in, Transport: kconn.Transport(), Balancer: &kafka.Hash{},
		RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond, MaxAttempts: 10}
	defer w.Close()
	var msgs []kafka.Message
	for i, e := range examples[:n] {
		m := contract.ChatMessage{ID: fmt.Sprintf("%s-%d", name, i), ConversationID: "c" + e.Conversation, Tenant: "acme",
			SpeakerRole: "customer", Text: e.Text, SentAt: time.Now().UTC().Truncate(time.Second), Language: "en", Label: e.Label}
		v, _ := json.Marshal(m)
		msgs = append(msgs, kafka.Message{Key: []byte(m.ConversationID), Value: v})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}

	// Every message becomes a row, read back over TLS as the sink's user.
	password := testenv.ReadSecret(t, s.ClickHousePasswordFile)
	chTLS, err := k.TLS.Config() // the services' CA

	if err != nil {
		t.Fatal(err)
	}
	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{s.ClickHouseAddr}, TLS: chTLS,
		Auth: clickhouse.Auth{Username: s.ClickHouseUser, Password: password}, DialTimeout: 10 * time.Second, ReadTimeout: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for {
		var got uint64
		err := conn.QueryRow(ctx, "SELECT count() FROM "+s.ClickHouseDatabase+".events_dedup WHERE startsWith(message_id, ?)", name+"-").Scan(&got)
		if err == nil && got == n {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("%d of %d events reached ClickHouse (%v)", got, n, err)
		}
		time.Sleep(500 * time.Millisecond)
	}

	// The cache was written through TLS as the ACL user.
	rdb := redis.NewClient(&redis.Options{Addr: plainRedis})
	defer rdb.Close()
	keys, err := rdb.Keys(ctx, keyPrefix+"*").Result()
	if err != nil || len(keys) == 0 {
		t.Errorf("no cache keys under %s: %v", keyPrefix, err)
	}
	windows, err := rdb.Keys(ctx, keyPrefix+"ctx:*").Result()
	if err != nil || len(windows) == 0 {
		t.Errorf("no conversation windows under %sctx: (%v): the ACL user lacks their commands?", keyPrefix, err)
	}
	if got := ing.Logs(); strings.Contains(got, "NOPERM") {
		t.Errorf("Redis refused a command of the ACL user:\n%s", got)
	}

	// The classifier counts ingest's calls under its name.
	metrics := httpsGet(t, s.CAFile, "https://"+cls.RT.Addr+"/metrics")
	if !strings.Contains(metrics, `emoflow_classifier_http_requests_total{client="ingest",endpoint="classify",status="200"}`) ||
		!strings.Contains(metrics, `emoflow_classifier_http_requests_total{client="ingest",endpoint="adapters",status="200"}`) {
		t.Errorf("the classifier's metrics do not name ingest's calls")
	}

	for _, r := range []*testenv.Running{ing, snk, cls} {
		if err := r.Stop(); err != nil {
			t.Errorf("%s stopped with an error: %v", r.Name, err)
		}
	}
	// No secret in any log.
	secretValues := map[string]string{
		"Kafka SCRAM password": testenv.ReadSecret(t, s.ScramPasswordFile),
		"Kafka PLAIN password": testenv.ReadSecret(t, s.PlainPasswordFile),
		"Redis password":       testenv.ReadSecret(t, s.RedisPasswordFile),
		"ClickHouse password":  password,
		"ingest's token":       ingestToken,
		"the admin token":      adminToken,
	}
	for _, r := range []*testenv.Running{ing, snk, cls} {
		logs := r.Logs()
		if logs == "" {
			t.Errorf("%s logged nothing", r.Name)
		}
		for what, v := range secretValues {
			if strings.Contains(logs, v) {
				t.Errorf("%s's log shows %s", r.Name, what)
			}
		}
	}
}

func randomToken(t *testing.T) string {
	var b [20]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

func writeSecret(t *testing.T, path, v string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(v+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

func httpsGet(t *testing.T, caFile, url string) string {
	t.Helper()
	var c secure.ClassifierClient
	fs := flag.NewFlagSet("client", flag.ContinueOnError)
	c.Register(fs)
	if err := fs.Parse([]string{"-classifier-tls-ca-file=" + caFile}); err != nil {
		t.Fatal(err)
	}
	tlsCfg, _, err := c.Settings()
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsCfg}}
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	return string(raw)
}
