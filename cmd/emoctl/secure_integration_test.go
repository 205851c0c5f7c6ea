package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/classifier"
	"github.com/emoflow/emoflow/internal/classifyclient"
	"github.com/emoflow/emoflow/internal/datasets"
	"github.com/emoflow/emoflow/internal/randmodel"
	"github.com/emoflow/emoflow/internal/secure"
	"github.com/emoflow/emoflow/internal/testenv"
)

// TestSecuredEmoctlClients runs emoctl's Kafka and classifier clients
// against the secured listeners: load-dataset and produce on Kafka's
// SASL_SSL listener (SCRAM-SHA-512), and a replay that reaches the
// classifier over HTTPS with emoctl's token and hands the same settings to
// its ingest. Every message is replayed, the classifier counts the calls
// under emoctl's name, and no secret is in the output.
func TestSecuredEmoctlClients(t *testing.T) {
	s := testenv.Secure(t)
	plain := testenv.Kafka(t)
	data := testenv.Shared(t, "data")
	examples, err := datasets.Read(data, datasets.MELD, "test")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	lines := []string{"Classify the emotion of this chat message as one of: anger, disgust, fear, joy, neutral, sadness, surprise."}
	for _, e := range examples[:300] {
		lines = append(lines, e.Text)
	}
	if err := randmodel.TrainTokenizer(context.Background(), dir, lines, 800); err != nil {
		t.Fatal(err)
	}
	if err := randmodel.Write(dir, randmodel.Spec{Arch: "chatglm2", Layers: 2, Hidden: 64, Heads: 4, Groups: 2, FFN: 128, Vocab: 888, Seed: 5, Std: 0.3, EOSIDs: []int{2}}); err != nil {
		t.Fatal(err)
	}
	var b [16]byte
	_, _ = rand.Read(b[:])
	token := hex.EncodeToString(b[:])
	secrets := t.TempDir()
	tokensFile, tokenFile := filepath.Join(secrets, "tokens"), filepath.Join(secrets, "emoctl-token")
	if err := os.WriteFile(tokensFile, []byte("emoctl "+token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cls := testenv.Start(t, "classifier", &classifier.Component{}, "-dtype=float32", "-model-dir="+dir, "-max-queue-delay=5ms",
		"-tls-cert-file="+s.ServerCertFile, "-tls-key-file="+s.ServerKeyFile, "-tokens-file="+tokensFile)
	classifierURL := "https://" + cls.RT.Addr
	classifierFlags := []string{"-classifier-urls", classifierURL, "-classifier-tls-ca-file", s.CAFile, "-classifier-token-file", tokenFile}
	kafkaFlags := []string{"-kafka-brokers", s.KafkaBrokers, "-kafka-tls-ca-file", s.CAFile, "-kafka-sasl-mechanism", "scram-sha-512",
		"-kafka-sasl-username", s.ScramUser, "-kafka-sasl-password-file", s.ScramPasswordFile}

	// The adapter the replay asks for, read as emoctl reads it.
	var cc secure.ClassifierClient
	fs := flag.NewFlagSet("c", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	cc.Register(fs)
	if err := fs.Parse(classifierFlags[2:]); err != nil {
		t.Fatal(err)
	}
	tlsCfg, tok, err := cc.Settings()
	if err != nil {
		t.Fatal(err)
	}
	client, err := classifyclient.New(classifyclient.Config{Endpoints: []string{classifierURL}, TLS: tlsCfg, Token: tok, MaxAttempts: 1})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	ads, err := client.Adapters(ctx)
	if err != nil {
		t.Fatal(err)
	}

	name := testenv.Name(t, "secemoctl")
	input, events, produced := name+"_in", name+"_events", name+"_produced"
	out := &testenv.LogBuffer{}
	st := streams{out: out, err: out, lookup: noEnv}
	const n = 40
	runID := "secured-" + hex.EncodeToString(b[:4]) // a replay's plan outlives the test
	if err := runLoadDataset(ctx, append(kafkaFlags, "-topic", input, "-set", "meld", "-split", "test", "-data", data,
		"-limit", "40", "-topic-partitions", "2"), st); err != nil {
		t.Fatalf("load-dataset over SASL_SSL: %v\n%s", err, out)
	}
	if err := runReplay(ctx, append(append(append([]string{}, kafkaFlags...), classifierFlags...),
		"-input-topic", input, "-run-id", runID, "-adapter", ads.Default, "-progress-interval", "200ms",
		"--", "-events-topic="+events, "-dead-letter-topic="+name+"_dlq", "-redis-addr=", "-topic-partitions=2",
		"-commit-interval=200ms"), st); err != nil {
		t.Fatalf("replay over SASL_SSL and HTTPS: %v\n%s", err, out)
	}
	// produce does not create its topic.
	admin := &kafka.Client{Addr: kafka.TCP(strings.Split(plain, ",")...), Timeout: 20 * time.Second}
	if _, err := admin.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{Topic: produced, NumPartitions: 1, ReplicationFactor: 1}}}); err != nil {
		t.Fatal(err)
	}
	if err := produce(ctx, append(kafkaFlags, "-input-topic", produced, "-n", "25", "-data", data)); err != nil {
		t.Fatalf("produce over SASL_SSL: %v", err)
	}
	// Counted on the plain listener: the same broker.
	for topic, want := range map[string]int64{input: n, events: n, produced: 25} {
		if got := topicSize(t, admin, topic); got != want {
			t.Errorf("%s holds %d messages, want %d", topic, got, want)
		}
	}
	metrics := cls.RT.Metrics
	families, err := metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var emoctlCalls float64
	for _, f := range families {
		if f.GetName() != "emoflow_classifier_http_requests_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "client" && l.GetValue() == "emoctl" {
					emoctlCalls += m.GetCounter().GetValue()
				}
			}
		}
	}
	if emoctlCalls < 2 {
		t.Errorf("the classifier counted %v calls of emoctl", emoctlCalls)
	}
	for what, secret := range map[string]string{"the token": token, "the SCRAM password": testenv.ReadSecret(t, s.ScramPasswordFile)} {
		if strings.Contains(out.String(), secret) || strings.Contains(cls.Logs(), secret) {
			t.Errorf("%s is in the output", what)
		}
	}
}

func topicSize(t *testing.T, admin *kafka.Client, topic string) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	meta, err := admin.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil || len(meta.Topics) != 1 || meta.Topics[0].Error != nil {
		t.Fatalf("metadata of %s: %v %v", topic, err, meta)
	}
	var reqs []kafka.OffsetRequest
	for _, p := range meta.Topics[0].Partitions {
		reqs = append(reqs, kafka.FirstOffsetOf(p.ID), kafka.LastOffsetOf(p.ID))
	}
	resp, err := admin.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, p := range resp.Topics[topic] {
		if p.Error != nil {
			t.Fatalf("offsets of %s: %v", topic, p.Error)
		}
		total += p.LastOffset - p.FirstOffset
	}
	return total
}
