package ingest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/classifyapi"
	"github.com/emoflow/emoflow/internal/contract"
	"github.com/emoflow/emoflow/internal/testenv"
)

// rawChat is the Kafka value of a valid chat message of tenant with text
// (not normalised) and adapter hint.
func rawChat(t *testing.T, id, tenant, text, adapter string) []byte {
	t.Helper()
	raw, err := json.Marshal(contract.ChatMessage{ID: id, ConversationID: "conv-" + id, Tenant: tenant, SpeakerRole: "user",
		Text: text, SentAt: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Language: "en", Adapter: adapter})
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// consumed is a consumed message holding value, at a known position.
func consumed(offset int64, value []byte) *work {
	return &work{msg: kafka.Message{Topic: "chat", Partition: 3, Offset: offset, Key: []byte("k"), Value: value,
		Headers: []kafka.Header{{Key: "trace", Value: []byte("t-1")}}}, receivedAt: time.Now()}
}

// runBatch takes ws through every step of process but the publishing, and
// returns what would be published.
func runBatch(t *testing.T, p *processor, ws []*work) []kafka.Message {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	valid, err := p.resolveTargets(ctx, p.decode(ws))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.classifyAll(ctx, valid); err != nil {
		t.Fatal(err)
	}
	var out []kafka.Message
	for _, w := range ws {
		out = append(out, p.output(w))
	}
	return out
}

func TestEventWithoutIncludeTextCarriesOnlyTheFingerprint(t *testing.T) {
	const raw = "  Private\n\tnote  for\u200b Ann "
	const normalised = "Private note for Ann"
	sum := sha256.Sum256([]byte(normalised))
	wantFP := hex.EncodeToString(sum[:])
	for _, include := range []bool{false, true} {
		p := newTestProcessor(t, newFakeClassifier(t))
		p.cfg.EventsIncludeText = include
		p.cfg.EventsTopic = "events"
		out := runBatch(t, p, []*work{consumed(1, rawChat(t, "m1", "acme", raw, ""))})
		if out[0].Topic != "events" {
			t.Fatalf("include=%v: published to %q, want an event", include, out[0].Topic)
		}
		var ev map[string]any
		if err := json.Unmarshal(out[0].Value, &ev); err != nil {
			t.Fatal(err)
		}
		if ev["text_fingerprint"] != wantFP {
			t.Errorf("include=%v: fingerprint %v, want SHA-256 of the normalised text %s", include, ev["text_fingerprint"], wantFP)
		}
		text, has := ev["text"]
		switch {
		case !include && has:
			t.Errorf("without -events-include-text the event has a text field: %v", text)
		case !include && (strings.Contains(string(out[0].Value), "Private") || strings.Contains(string(out[0].Value), "Ann")):
			t.Errorf("without -events-include-text the event holds part of the text: %s", out[0].Value)
		case include && text != normalised:
			t.Errorf("with -events-include-text: text %q, want %q", text, normalised)
		}
	}
}

func TestCacheKeysAndValuesHoldNoText(t *testing.T) {
	texts := []string{"my card number is visa", "Ich bin so wütend heute", "hello"}
	p := newTestProcessor(t, newFakeClassifier(t))
	var ws []*work
	for i, text := range texts {
		ws = append(ws, consumed(int64(i), rawChat(t, string(rune('a'+i)), "acme", text, "")))
	}
	runBatch(t, p, ws)
	keyPattern := regexp.MustCompile(`^t:v1:[0-9a-f]{64}$`)
	for i, w := range ws {
		if !w.target.cacheable() {
			t.Fatalf("%q: target %+v not cacheable; the test means to check cached keys", texts[i], w.target)
		}
		if !keyPattern.MatchString(w.key) {
			t.Errorf("cache key %q is not prefix + v1: + a hex hash", w.key)
		}
		for _, word := range strings.Fields(texts[i]) {
			if strings.Contains(w.key, word) {
				t.Errorf("cache key %q holds %q of the text", w.key, word)
			}
		}
	}
	// The cached value is a classification: no field for the text.
	raw, err := json.Marshal(*ws[0].res)
	if err != nil {
		t.Fatal(err)
	}
	var fields map[string]any
	if err := json.Unmarshal(raw, &fields); err != nil {
		t.Fatal(err)
	}
	for name := range fields {
		if !map[string]bool{"label": true, "probabilities": true, "truncated": true, "model": true,
			"adapter": true, "label_set": true, "classified_at": true}[name] {
			t.Errorf("cached value has an unexpected field %q (text must never be cached)", name)
		}
	}
	for _, text := range texts {
		if strings.Contains(string(raw), text) {
			t.Errorf("cached value holds the text %q", text)
		}
	}
}

// flakyClassifier fails the first call, to make the processor log a retry.
type flakyClassifier struct {
	classifier
	failed atomic.Bool
}

func (f *flakyClassifier) Classify(ctx context.Context, req classifyapi.ClassifyRequest) (*classifyapi.ClassifyResponse, error) {
	if f.failed.CompareAndSwap(false, true) {
		return nil, errors.New("connection refused")
	}
	return f.classifier.Classify(ctx, req)
}

// secretTexts are texts of messages that must never reach the logs or the
// dead-letter details.
var secretTexts = []string{"SECRET-ALPHA valid text", "SECRET-BRAVO REJECT me", "SECRET-CHARLIE bad role",
	"SECRET-DELTA malformed", "SECRET-ECHO unknown adapter", "SECRET-FOXTROT bad time", "SECRET-GOLF too long text"}

// secretBatch is one message per secretTexts entry: valid, rejected by the
// classifier, a schema violation, malformed JSON, an unknown adapter, a
// sent_at of the wrong type, a text over the limit, and invalid UTF-8.
func secretBatch(t *testing.T) []*work {
	badRole := strings.Replace(string(rawChat(t, "c", "acme", secretTexts[2], "")), `"speaker_role":"user"`, `"speaker_role":"nobody"`, 1)
	badTime := strings.Replace(string(rawChat(t, "f", "acme", secretTexts[5], "")), `"sent_at":"2026-01-02T03:04:05Z"`, `"sent_at":"yesterday"`, 1)
	long := strings.Repeat(secretTexts[6]+" ", 400)
	return []*work{
		consumed(0, rawChat(t, "a", "acme", secretTexts[0], "")),
		consumed(1, rawChat(t, "b", "acme", secretTexts[1], "")),
		consumed(2, []byte(badRole)),
		consumed(3, []byte(`{"id":"d","tenant":"acme","text":"`+secretTexts[3]+`"`)),
		consumed(4, rawChat(t, "e", "acme", secretTexts[4], "missing")),
		consumed(5, []byte(badTime)),
		consumed(6, rawChat(t, "g", "acme", long, "")),
		consumed(7, []byte("{\"tenant\":\"acme\",\"text\":\"SECRET-HOTEL \xff\"}")),
	}
}

func TestLogsAndDeadLetterDetailsHoldNoText(t *testing.T) {
	p := newTestProcessor(t, newFakeClassifier(t))
	logs := &testenv.LogBuffer{}
	p.log = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	p.client = &flakyClassifier{classifier: p.client}
	p.cfg.DeadLetterTopic, p.cfg.DeadLetterMaxBytes = "dlq", 1<<20
	ws := secretBatch(t)
	out := runBatch(t, p, ws)
	wantReasons := []contract.Reason{"", contract.ReasonClassifierRejected, contract.ReasonSchema, contract.ReasonMalformedJSON,
		contract.ReasonUnknownAdapter, contract.ReasonSchema, contract.ReasonTextTooLong, contract.ReasonInvalidUTF8}
	for i, m := range out {
		if wantReasons[i] == "" {
			if m.Topic == "dlq" {
				t.Errorf("message %d dead-lettered: %s", i, header(m, contract.HeaderDetail))
			}
			continue
		}
		if got := header(m, contract.HeaderReason); got != string(wantReasons[i]) {
			t.Errorf("message %d: reason %q, want %q", i, got, wantReasons[i])
		}
		detail := header(m, contract.HeaderDetail)
		for _, s := range append(secretTexts, "SECRET-HOTEL") {
			if strings.Contains(detail, s) || strings.Contains(detail, strings.Fields(s)[0]+" ") {
				t.Errorf("message %d: detail %q quotes the text %q", i, detail, s)
			}
		}
	}
	if !strings.Contains(logs.String(), "classifier call failed") {
		t.Fatalf("the processor logged nothing about the failed call; logs:\n%s", logs)
	}
	for _, s := range append(secretTexts, "SECRET") {
		if strings.Contains(logs.String(), s) {
			t.Errorf("logs hold message text %q:\n%s", s, logs)
		}
	}
}

func TestDeadLetterRedactionDecision(t *testing.T) {
	cases := []struct {
		list   []string
		tenant string
		known  bool
		want   bool
	}{
		{nil, "acme", true, false},
		{[]string{"acme"}, "acme", true, true},
		{[]string{"acme"}, "other", true, false},
		{[]string{"other", "acme"}, "acme", true, true},
		{[]string{"acme"}, "", false, false},
		{[]string{"*"}, "acme", true, true},
		{[]string{"*"}, "", false, true},
	}
	for _, c := range cases {
		cfg := Config{DeadLetterRedactTenants: c.list}
		if got := cfg.redactsDeadLetter(c.tenant, c.known); got != c.want {
			t.Errorf("list %v, tenant %q (known %v): redacts %v, want %v", c.list, c.tenant, c.known, got, c.want)
		}
	}
}

func TestDeadLetterRedactTenantsFlag(t *testing.T) {
	cfg, err := parseConfig(t, nil, map[string]string{"EMOFLOW_DEAD_LETTER_REDACT_TENANTS": " acme, beta.2 ,"})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(cfg.DeadLetterRedactTenants, "|") != "acme|beta.2" {
		t.Fatalf("tenants %q", cfg.DeadLetterRedactTenants)
	}
	if cfg, err := parseConfig(t, nil, nil); err != nil || cfg.DeadLetterRedactTenants != nil {
		t.Fatalf("default: %q, %v; want none", cfg.DeadLetterRedactTenants, err)
	}
	if _, err := parseConfig(t, []string{"-dead-letter-redact-tenants", "*"}, nil); err != nil {
		t.Fatalf("*: %v", err)
	}
	if _, err := parseConfig(t, []string{"-dead-letter-redact-tenants", "acme,bad tenant"}, nil); err == nil ||
		!strings.Contains(err.Error(), "dead-letter-redact-tenants") {
		t.Fatalf("a malformed tenant id: %v, want an error naming the flag", err)
	}
}

func TestDeadLettersOfListedTenantsAreRedacted(t *testing.T) {
	// Per message of secretBatch (the first is valid): whether its tenant
	// can be read. Malformed JSON and invalid UTF-8 cannot.
	tenantKnown := []bool{true, true, true, false, true, true, true, false}
	for _, list := range [][]string{nil, {"other"}, {"acme"}, {"*"}} {
		p := newTestProcessor(t, newFakeClassifier(t))
		p.cfg.DeadLetterTopic, p.cfg.DeadLetterMaxBytes, p.cfg.DeadLetterRedactTenants = "dlq", 1<<20, list
		ws := secretBatch(t)
		out := runBatch(t, p, ws)
		for i, m := range out[1:] {
			i++
			want := len(list) > 0 && (list[0] == "*" || (list[0] == "acme" && tenantKnown[i]))
			redacted := header(m, contract.HeaderValueRedacted)
			switch {
			case m.Topic != "dlq":
				t.Fatalf("list %v, message %d: not dead-lettered", list, i)
			case want && (redacted != "true" || len(m.Value) != 0):
				t.Errorf("list %v, message %d: redacted header %q, value %d bytes; want redacted", list, i, redacted, len(m.Value))
			case !want && (redacted != "" || string(m.Value) != string(ws[i].msg.Value)):
				t.Errorf("list %v, message %d: redacted header %q, value changed %v; want the original value", list, i, redacted,
					string(m.Value) != string(ws[i].msg.Value))
			}
			// What stays: key, original headers, reason, detail, position.
			if string(m.Key) != "k" || header(m, "trace") != "t-1" || header(m, contract.HeaderReason) == "" ||
				header(m, contract.HeaderDetail) == "" || header(m, contract.HeaderSourceTopic) != "chat" ||
				header(m, contract.HeaderSourcePartition) != "3" || header(m, contract.HeaderSourceOffset) != string(rune('0'+i)) ||
				header(m, contract.HeaderRejectedAt) == "" {
				t.Errorf("list %v, message %d: key %q headers %v; want the key, reason, detail and position kept", list, i, m.Key, m.Headers)
			}
			if want {
				for _, h := range m.Headers {
					if strings.Contains(string(h.Value), "SECRET") {
						t.Errorf("list %v, message %d: header %s holds text: %q", list, i, h.Key, h.Value)
					}
				}
			}
		}
	}
}
