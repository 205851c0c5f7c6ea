// Package e2e holds the end-to-end tests of the whole pipeline: the real
// classifier (a tiny random ChatGLM3-architecture model on libtorch), ingest
// and sink, in-process, against the real local Kafka, Redis and ClickHouse.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/classifier"
	"github.com/emoflow/emoflow/internal/classifyapi"
	"github.com/emoflow/emoflow/internal/contract"
	"github.com/emoflow/emoflow/internal/datasets"
	"github.com/emoflow/emoflow/internal/ingest"
	"github.com/emoflow/emoflow/internal/randmodel"
	"github.com/emoflow/emoflow/internal/sink"
	"github.com/emoflow/emoflow/internal/testenv"
)

// tinyModel writes a random ChatGLM3-architecture checkpoint with a real
// SentencePiece tokenizer trained on some GoEmotions texts.
func tinyModel(t *testing.T, texts []string) string {
	t.Helper()
	dir := t.TempDir()
	lines := append(append([]string{}, texts...), "Classify the emotion of this chat message as one of: anger, disgust, fear, joy, neutral, sadness, surprise.")
	if err := randmodel.TrainTokenizer(context.Background(), dir, lines, 1500); err != nil {
		t.Fatal(err)
	}
	spec := randmodel.Spec{Arch: "chatglm2", Layers: 2, Hidden: 64, Heads: 4, Groups: 2, FFN: 128, Vocab: 1600, Seed: 3, Std: 0.3, EOSIDs: []int{2}}
	if err := randmodel.Write(dir, spec); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestPipelineEndToEnd sends labelled chat messages and a few bad ones
// through ingest, the real classifier and sink: every valid message becomes
// exactly one row in ClickHouse's deduplicated view, with the label and
// probabilities the classifier gives for its text, and every bad message
// lands in the dead-letter topic with its reason.
func TestPipelineEndToEnd(t *testing.T) {
	brokers, redisAddr, chAddr := testenv.Kafka(t), testenv.Redis(t), testenv.ClickHouse(t)
	examples, err := datasets.Read(testenv.Shared(t, "data"), datasets.GoEmotionsEkman, "test")
	if err != nil {
		t.Fatal(err)
	}
	const n = 300
	var texts []string
	for _, e := range examples[:n] {
		texts = append(texts, e.Text)
	}
	dir := tinyModel(t, texts)

	name := testenv.Name(t, "e2e")
	in, events, dlq := name+"_in", name+"_events", name+"_dlq"
	cls := testenv.Start(t, "classifier", &classifier.Component{}, "-dtype=float32", "-model-dir="+dir, "-max-queue-delay=5ms")
	classifierURL := "http://" + cls.RT.Addr
	snk := testenv.Start(t, "sink", &sink.Component{}, "-kafka-brokers="+brokers, "-events-topic="+events,
		"-dead-letter-topic="+events+"_dlq", "-group-id="+name+"_sink", "-clickhouse-addr="+chAddr,
		"-clickhouse-database="+name, "-flush-interval=200ms")
	ing := testenv.Start(t, "ingest", &ingest.Component{}, "-kafka-brokers="+brokers, "-input-topic="+in,
		"-events-topic="+events, "-dead-letter-topic="+dlq, "-group-id="+name+"_ingest",
		"-redis-addr="+redisAddr, "-redis-key-prefix="+name+":", "-classifier-urls="+classifierURL, "-topic-partitions=4")

	conn, err := clickhouse.Open(&clickhouse.Options{Addr: []string{chAddr}, DialTimeout: 10 * time.Second, ReadTimeout: 60 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name)
		conn.Close()
	})

	// Produce: n labelled messages and bad ones in between.
	w := &kafka.Writer{Addr: kafka.TCP(brokers), Topic: in, Balancer: &kafka.Hash{}, RequiredAcks: kafka.RequireAll, BatchTimeout: time.Millisecond}
	defer w.Close()
	var msgs []kafka.Message
	sent := map[string]contract.ChatMessage{}
	for i, e := range examples[:n] {
		m := contract.ChatMessage{ID: fmt.Sprintf("%s-%d", name, i), ConversationID: "c" + e.Conversation, Tenant: "acme",
			SpeakerRole: "customer", Text: e.Text, SentAt: time.Now().UTC().Truncate(time.Second), Language: "en", Label: e.Label}
		v, _ := json.Marshal(m)
		msgs = append(msgs, kafka.Message{Key: []byte(m.ConversationID), Value: v})
		sent[m.ID] = m
		if i%100 == 50 {
			msgs = append(msgs,
				kafka.Message{Key: []byte("bad"), Value: []byte(`{"id": "broken`)},
				kafka.Message{Key: []byte("bad"), Value: []byte("\xff\xfe not utf-8")},
				kafka.Message{Key: []byte("bad"), Value: []byte(`{"id":"x","conversation_id":"c","tenant":"acme","speaker_role":"customer","text":"   ","sent_at":"2026-01-01T00:00:00Z","language":"en"}`)},
			)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}

	// Wait for every valid message in the deduplicated view.
	deadline := time.Now().Add(4 * time.Minute)
	for {
		var got uint64
		if err := conn.QueryRow(ctx, "SELECT count() FROM "+name+".events_dedup").Scan(&got); err == nil && got >= n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d events reached ClickHouse", got, n)
		}
		time.Sleep(500 * time.Millisecond)
	}

	// Labels and probabilities equal what the classifier says for each text.
	type row struct {
		id, label, trueLabel string
		labels               []string
		probs                []float32
	}
	qctx, qcancel := context.WithTimeout(context.Background(), time.Minute)
	defer qcancel()
	rows, err := conn.Query(qctx, "SELECT message_id, label, true_label, prob_labels, prob_values FROM "+name+".events_dedup")
	if err != nil {
		t.Fatal(err)
	}
	var stored []row
	for rows.Next() {
		var r row
		if err := rows.Scan(&r.id, &r.label, &r.trueLabel, &r.labels, &r.probs); err != nil {
			t.Fatal(err)
		}
		stored = append(stored, r)
	}
	rows.Close()
	if len(stored) != n {
		t.Fatalf("%d rows in the deduplicated view, want %d", len(stored), n)
	}
	var reqTexts []string
	for _, r := range stored {
		reqTexts = append(reqTexts, contract.NormalizeText(sent[r.id].Text))
	}
	want := classify(t, classifierURL, reqTexts)
	for i, r := range stored {
		m, ok := sent[r.id]
		if !ok {
			t.Fatalf("row for unknown message %s", r.id)
		}
		if r.trueLabel != m.Label {
			t.Errorf("%s: true_label %q, sent %q", r.id, r.trueLabel, m.Label)
		}
		if r.label != want[i].Label {
			t.Errorf("%s: stored label %q, classifier says %q", r.id, r.label, want[i].Label)
		}
		for j, l := range r.labels {
			if math.Abs(float64(r.probs[j])-want[i].Probabilities[l]) > 1e-4 {
				t.Errorf("%s: P(%s) stored %v, classifier %v", r.id, l, r.probs[j], want[i].Probabilities[l])
			}
		}
	}

	// Every bad message is in the dead-letter topic with its reason.
	reasons := readReasons(t, brokers, dlq, 9)
	for _, want := range []string{string(contract.ReasonMalformedJSON), string(contract.ReasonInvalidUTF8), string(contract.ReasonEmptyText)} {
		if reasons[want] != 3 {
			t.Errorf("dead letters with reason %s: %d, want 3 (all: %v)", want, reasons[want], reasons)
		}
	}
	for _, r := range []*testenv.Running{ing, snk, cls} {
		if err := r.Stop(); err != nil {
			t.Errorf("%s stopped with an error: %v", r.Name, err)
		}
	}
}

func classify(t *testing.T, url string, texts []string) []classifyapi.Result {
	t.Helper()
	var out []classifyapi.Result
	for start := 0; start < len(texts); start += 64 {
		end := min(start+64, len(texts))
		body, _ := json.Marshal(classifyapi.ClassifyRequest{Texts: texts[start:end]})
		resp, err := http.Post(url+"/v1/classify", "application/json", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("classify: %s %s", resp.Status, raw)
		}
		var r classifyapi.ClassifyResponse
		if err := json.Unmarshal(raw, &r); err != nil {
			t.Fatal(err)
		}
		out = append(out, r.Results...)
	}
	return out
}

func readReasons(t *testing.T, brokers, topic string, n int) map[string]int {
	t.Helper()
	r := kafka.NewReader(kafka.ReaderConfig{Brokers: strings.Split(brokers, ","), Topic: topic, GroupID: topic + "_reader",
		StartOffset: kafka.FirstOffset, MaxWait: 100 * time.Millisecond})
	defer r.Close()
	reasons := map[string]int{}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for i := 0; i < n; i++ {
		m, err := r.ReadMessage(ctx)
		if err != nil {
			t.Fatalf("dead letters: read %d of %d: %v", i, n, err)
		}
		for _, h := range m.Headers {
			if h.Key == contract.HeaderReason {
				reasons[string(h.Value)]++
			}
		}
	}
	return reasons
}
