package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/contract"
	"github.com/emoflow/emoflow/internal/datasets"
	"github.com/emoflow/emoflow/internal/secure"
	"github.com/emoflow/emoflow/internal/service"
)

// produce sends chat messages to the input topic: GoEmotions and MELD test
// utterances (with their ground-truth labels) when the shared data is
// there, else a small built-in sample.
func produce(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("produce", flag.ContinueOnError)
	brokers := fs.String("kafka-brokers", "127.0.0.1:19092", "Kafka bootstrap brokers, comma-separated")
	var kafkaSec secure.Kafka
	kafkaSec.Register(fs)
	topic := fs.String("input-topic", "chat.messages", "topic of the chat messages")
	data := fs.String("data", defaultDataDir(), "shared data folder (a built-in sample when absent)")
	n := fs.Int("n", 1000, "messages to send (the texts repeat when there are fewer)")
	rate := fs.Float64("rate", 0, "messages per second (0: as fast as possible)")
	idPrefix := fs.String("id-prefix", fmt.Sprintf("demo-%d", time.Now().Unix()), "prefix of the message and conversation ids (each run's conversations start afresh)")
	if err := service.ParseConfig(fs, args, service.LookupEnv); err != nil {
		return err
	}
	if *n <= 0 {
		return errors.New("-n must be positive")
	}
	kconn, err := kafkaSec.Connect()
	if err != nil {
		return err
	}
	msgs := demoMessages(*data)
	w := &kafka.Writer{
		Addr: kafka.TCP(strings.Split(*brokers, ",")...), Topic: *topic, Transport: kconn.Transport(),
		Balancer: &kafka.Hash{}, RequiredAcks: kafka.RequireAll,
		BatchSize: 500, BatchTimeout: 5 * time.Millisecond, Compression: kafka.Lz4,
	}
	defer w.Close()
	tenants := []string{"acme", "globex", "initech"}
	start := time.Now()
	batch := make([]kafka.Message, 0, 500)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if err := w.WriteMessages(wctx, batch...); err != nil {
			return fmt.Errorf("write to %s: %w", *topic, err)
		}
		batch = batch[:0]
		return nil
	}
	for i := 0; i < *n; i++ {
		if *rate > 0 {
			next := start.Add(time.Duration(float64(i) / *rate * float64(time.Second)))
			if d := time.Until(next); d > 0 {
				if err := flush(); err != nil {
					return err
				}
				select {
				case <-time.After(d):
				case <-ctx.Done():
					return ctx.Err()
				}
			}
		}
		s := msgs[i%len(msgs)]
		m := contract.ChatMessage{
			ID: fmt.Sprintf("%s-%d", *idPrefix, i), ConversationID: *idPrefix + "-" + s.conversation, Tenant: tenants[i%len(tenants)],
			SpeakerRole: []string{"customer", "agent"}[len(s.speaker)%2], Text: s.text, SentAt: time.Now().UTC(),
			Language: "en", Label: s.label,
		}
		value, err := json.Marshal(m)
		if err != nil {
			return err
		}
		batch = append(batch, kafka.Message{Key: []byte(m.ConversationID), Value: value})
		if len(batch) == cap(batch) {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	if err := flush(); err != nil {
		return err
	}
	el := time.Since(start)
	fmt.Fprintf(os.Stderr, "emoctl produce: sent %d messages to %s in %s (%.0f/s)\n", *n, *topic, el.Round(time.Millisecond), float64(*n)/el.Seconds())
	return nil
}

type sampleMessage struct {
	conversation, speaker, text, label string
}

// demoMessages are GoEmotions-ekman and MELD test utterances with a single
// label, interleaved one for one: MELD's dialogues stay in their order, so
// the traffic holds conversations (for contexts and escalation alerts)
// beside single comments. Without the shared data: the built-in sample.
func demoMessages(dataDir string) []sampleMessage {
	var sets [][]sampleMessage
	for _, set := range []datasets.Set{datasets.GoEmotionsEkman, datasets.MELD} {
		ex, err := datasets.Read(dataDir, set, "test")
		if err != nil {
			continue
		}
		var msgs []sampleMessage
		for _, e := range ex {
			if e.Label != "" {
				msgs = append(msgs, sampleMessage{string(set) + "-" + e.Conversation, e.Speaker, e.Text, e.Label})
			}
		}
		sets = append(sets, msgs)
	}
	var out []sampleMessage
	for i := 0; ; i++ {
		added := false
		for _, msgs := range sets {
			if i < len(msgs) {
				out = append(out, msgs[i])
				added = true
			}
		}
		if !added {
			break
		}
	}
	if len(out) == 0 {
		fmt.Fprintln(os.Stderr, "emoctl produce: no shared data found; sending the built-in sample")
		return builtinSample
	}
	return out
}

// builtinSample is used when ../shared/data is not there.
var builtinSample = []sampleMessage{
	{"c1", "customer", "I have been waiting for two weeks and nobody answers my emails!", "anger"},
	{"c1", "agent", "I am sorry about the delay, let me check your order right now.", "neutral"},
	{"c1", "customer", "Thank you so much, that is a relief.", "joy"},
	{"c2", "customer", "The package arrived crushed and the food inside smelled rotten.", "disgust"},
	{"c2", "agent", "That should never happen. I will send a replacement today.", "neutral"},
	{"c3", "customer", "Wait, you are refunding the whole order? I did not expect that!", "surprise"},
	{"c3", "customer", "My card was charged twice and I am scared I cannot pay rent.", "fear"},
	{"c4", "customer", "My dog died yesterday and I just cannot concentrate on anything.", "sadness"},
	{"c4", "agent", "I am very sorry for your loss. Take all the time you need.", "sadness"},
	{"c5", "customer", "Great service, the new plan works perfectly!", "joy"},
	{"c5", "customer", "Can you tell me when the store opens on Sunday?", "neutral"},
	{"c6", "customer", "This is the third time the app crashed during payment. Unacceptable.", "anger"},
	{"c6", "customer", "Someone logged into my account from another country, what is going on?", "fear"},
	{"c7", "customer", "Ugh, the hotel room had hair all over the bathroom.", "disgust"},
	{"c7", "customer", "Oh wow, an upgrade to a suite? Really?", "surprise"},
	{"c8", "customer", "I miss the old version, it made me happy every morning.", "sadness"},
}
