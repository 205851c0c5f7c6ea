package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/contract"
)

// phrases are chat lines in several languages and scripts; a message's
// text is one of them, alone (a text many messages share: cache hits) or
// with a number of its own (a text nobody sent before: a classifier call).
var phrases = map[string][]string{
	"en": {"I can't believe it worked, thank you so much!", "This is the third time my order is late.", "Why does nobody answer my tickets?", "ok, see you tomorrow", "That was a scary moment, honestly."},
	"de": {"Vielen Dank, das hat wirklich geholfen!", "Ich warte seit einer Woche auf eine Antwort.", "Das ist doch nicht euer Ernst?!", "Alles klar, bis morgen."},
	"fr": {"Merci beaucoup, c'est parfait !", "Je suis vraiment déçu par ce service.", "Quoi ? Vous avez annulé ma commande ?", "D'accord, à demain."},
	"es": {"¡Muchas gracias, me salvaste el día!", "Estoy harto de esperar.", "¿En serio? No me lo esperaba.", "Vale, hasta luego."},
	"ru": {"Спасибо огромное, всё работает!", "Я жду ответа уже неделю.", "Это просто ужасно.", "Хорошо, до завтра."},
	"ja": {"本当にありがとうございます！", "まだ荷物が届きません。", "えっ、本当ですか？", "わかりました、また明日。"},
	"zh": {"太感谢了，问题解决了！", "我的订单又迟到了。", "真的吗？太意外了。", "好的，明天见。"},
	"ar": {"شكرا جزيلا، لقد ساعدتني كثيرا!", "أنا غاضب جدا من التأخير.", "حسنا، أراك غدا."},
	"hi": {"बहुत धन्यवाद, अब सब ठीक है!", "मेरा ऑर्डर फिर से देर से आया।", "ठीक है, कल मिलते हैं।"},
}

// languages are the keys of phrases in a fixed order (map order is random).
var languages = []string{"en", "de", "fr", "es", "ru", "ja", "zh", "ar", "hi"}

// TokenizerLines are texts that train the tiny model's tokenizer: every
// phrase and the prompt's words, so that the model sees real pieces.
func TokenizerLines() []string {
	lines := []string{"Classify the emotion of this chat message as one of: anger, disgust, fear, joy, neutral, sadness, surprise."}
	for _, l := range languages {
		for _, p := range phrases[l] {
			lines = append(lines, p, strings.ToLower(p))
		}
	}
	return lines
}

// badKind is one way a chat message can be invalid, with the dead-letter
// reason ingest must give it.
type badKind struct {
	reason contract.Reason
	value  func(id string) []byte
}

var badKinds = []badKind{
	{contract.ReasonMalformedJSON, func(id string) []byte { return []byte(`{"id": "` + id + `", "text": "unterminated`) }},
	{contract.ReasonInvalidUTF8, func(id string) []byte { return []byte("\xff\xfe " + id + " not utf-8") }},
	{contract.ReasonEmptyText, func(id string) []byte {
		return chatJSON(contract.ChatMessage{ID: id, ConversationID: "bad", Tenant: "acme", SpeakerRole: "customer", Text: " \t ", SentAt: time.Now().UTC(), Language: "en"})
	}},
	{contract.ReasonSchema, func(id string) []byte {
		return []byte(`{"id":"` + id + `","conversation_id":"bad","tenant":"acme","speaker_role":"customer","text":"hi","sent_at":1767225600,"language":"en"}`)
	}},
	{contract.ReasonUnknownAdapter, func(id string) []byte {
		return chatJSON(contract.ChatMessage{ID: id, ConversationID: "bad", Tenant: "acme", SpeakerRole: "customer", Text: "adapter that does not exist", SentAt: time.Now().UTC(), Language: "en", Adapter: "no-such-adapter"})
	}},
}

func chatJSON(m contract.ChatMessage) []byte {
	v, err := json.Marshal(m)
	if err != nil {
		panic(err) // a ChatMessage always marshals
	}
	return v
}

// sentMessage is one message the producer wrote.
type sentMessage struct {
	phase int
	// bad is the reason a malformed message must be dead-lettered with;
	// empty for a valid message.
	bad    contract.Reason
	sentAt time.Time
}

// traffic produces the steady stream of chat messages: rate messages a
// second (times the current multiplier), a share of them malformed, each
// timestamped when it is due, written in order by one writer that retries
// until Kafka takes them (a broker outage builds a backlog, not a gap).
type traffic struct {
	name      string
	writer    *kafka.Writer
	rate      float64
	malformed float64
	log       *slog.Logger

	mu         sync.Mutex
	multiplier float64
	phase      int
	paused     bool
	seq        int
	pending    []kafka.Message
	sent       map[string]sentMessage // by message id (good) or Kafka key (bad)
	wake       chan struct{}
	rng        *rand.Rand
}

func newTraffic(name string, w *kafka.Writer, rate, malformed float64, seed uint64, log *slog.Logger) *traffic {
	return &traffic{name: name, writer: w, rate: rate, malformed: malformed, log: log, multiplier: 1, paused: true,
		sent: map[string]sentMessage{}, wake: make(chan struct{}, 1), rng: rand.New(rand.NewPCG(seed, 7))}
}

// setPhase labels the messages generated from now on.
func (t *traffic) setPhase(p int) {
	t.mu.Lock()
	t.phase = p
	t.mu.Unlock()
}

// setMultiplier scales the rate (2 for the overload).
func (t *traffic) setMultiplier(m float64) {
	t.mu.Lock()
	t.multiplier = m
	t.mu.Unlock()
}

// pause stops and resume restarts the generation of new messages.
func (t *traffic) pause()  { t.setPaused(true) }
func (t *traffic) resume() { t.setPaused(false) }
func (t *traffic) setPaused(p bool) {
	t.mu.Lock()
	t.paused = p
	t.mu.Unlock()
}

// run generates and writes messages until ctx ends.
func (t *traffic) run(ctx context.Context) {
	var wg sync.WaitGroup
	wg.Go(func() { t.generate(ctx) })
	wg.Go(func() { t.write(ctx) })
	wg.Wait()
}

// generate adds due messages every 20 ms.
func (t *traffic) generate(ctx context.Context) {
	const tick = 20 * time.Millisecond
	tk := time.NewTicker(tick)
	defer tk.Stop()
	owed := 0.0
	last := time.Now()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-tk.C:
			t.mu.Lock()
			if t.paused {
				owed, last = 0, now
				t.mu.Unlock()
				continue
			}
			owed += now.Sub(last).Seconds() * t.rate * t.multiplier
			last = now
			for ; owed >= 1; owed-- {
				t.addLocked(now)
			}
			t.mu.Unlock()
			select {
			case t.wake <- struct{}{}:
			default:
			}
		}
	}
}

// addLocked makes the next message: every 1/malformed-th one is invalid
// (one of badKinds, drawn at random), the others valid.
func (t *traffic) addLocked(now time.Time) {
	t.seq++
	id := fmt.Sprintf("%s-p%d-%06d", t.name, t.phase, t.seq)
	if t.malformed > 0 && t.seq%max(int(math.Round(1/t.malformed)), 1) == 0 {
		kind := badKinds[t.rng.IntN(len(badKinds))]
		key := "bad-" + id
		t.pending = append(t.pending, kafka.Message{Key: []byte(key), Value: kind.value(id)})
		t.sent[key] = sentMessage{phase: t.phase, bad: kind.reason, sentAt: now}
		return
	}
	lang := languages[t.rng.IntN(len(languages))]
	list := phrases[lang]
	text := list[t.rng.IntN(len(list))]
	if t.rng.IntN(10) < 7 {
		text = fmt.Sprintf("%s (%d)", text, t.seq) // a text of its own: a cache miss
	}
	conv := fmt.Sprintf("conv-%d", t.rng.IntN(64))
	m := contract.ChatMessage{ID: id, ConversationID: conv, Tenant: "acme", SpeakerRole: "customer", Text: text, SentAt: now.UTC(), Language: lang}
	t.pending = append(t.pending, kafka.Message{Key: []byte(conv), Value: chatJSON(m)})
	t.sent[id] = sentMessage{phase: t.phase, sentAt: now}
}

// write sends the pending messages in order, retrying a failed write (the
// same messages again: a retry after an unacknowledged write may store a
// message twice, which ingest and the sink must absorb).
func (t *traffic) write(ctx context.Context) {
	for {
		t.mu.Lock()
		batch := t.pending[:min(len(t.pending), 500)]
		t.mu.Unlock()
		if len(batch) == 0 {
			select {
			case <-ctx.Done():
				return
			case <-t.wake:
				continue
			}
		}
		wctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		err := t.writer.WriteMessages(wctx, batch...)
		cancel()
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			t.log.Debug("producing chat messages failed; retrying", "err", err)
			select {
			case <-ctx.Done():
				return
			case <-time.After(200 * time.Millisecond):
			}
			continue
		}
		t.mu.Lock()
		t.pending = t.pending[len(batch):]
		t.mu.Unlock()
	}
}

// backlog is the number of generated messages Kafka has not acknowledged.
func (t *traffic) backlog() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.pending)
}

// phaseMessages returns the valid message ids of phase with their send
// times, and the malformed messages' keys with their expected reasons.
func (t *traffic) phaseMessages(phase int) (good map[string]time.Time, bad map[string]contract.Reason) {
	t.mu.Lock()
	defer t.mu.Unlock()
	good, bad = map[string]time.Time{}, map[string]contract.Reason{}
	for k, m := range t.sent {
		if m.phase != phase {
			continue
		}
		if m.bad != "" {
			bad[k] = m.bad
		} else {
			good[k] = m.sentAt
		}
	}
	return good, bad
}
