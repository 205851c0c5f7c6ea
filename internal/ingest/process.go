package ingest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/cenkalti/backoff/v4"
	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/classifyapi"
	"github.com/emoflow/emoflow/internal/classifyclient"
	"github.com/emoflow/emoflow/internal/contract"
)

// work is one consumed message on its way through ingest.
type work struct {
	msg        kafka.Message
	receivedAt time.Time
	// done marks the message complete: its offset may be committed.
	done func()

	chat contract.ChatMessage
	// context is the conversation's previous messages (see contextWindows),
	// from contextSource; sent is the part of it sent with the text, for
	// the target's template.
	context       []classifyapi.Turn
	contextSource string
	sent          []classifyapi.Turn
	target        target
	key           string
	// Exactly one of res and reject is set once the message is processed.
	res      *classification
	reject   *contract.InvalidError
	cacheHit bool
	timings  contract.Timings
}

// classifier is the part of the classifier client the processor needs.
type classifier interface {
	Classify(ctx context.Context, req classifyapi.ClassifyRequest) (*classifyapi.ClassifyResponse, error)
}

// processor turns batches of consumed messages into published events and
// dead letters.
type processor struct {
	cfg     *Config
	client  classifier
	catalog *catalog
	cache   *resultCache
	windows *contextWindows // nil without -context-messages
	joins   *joiner
	pub     *publisher
	log     *slog.Logger
	warn    *logLimiter
	m       *metrics
}

// prepare decodes and validates a batch and gives its messages their
// conversation context, when ingest keeps conversation windows. It runs on
// one goroutine, batch after batch in fetch order, so that contexts follow
// partition order (see contextWindows); process then runs on many. Without
// windows it does nothing, and process decodes, in parallel.
func (p *processor) prepare(ctx context.Context, ws []*work) {
	if p.windows != nil {
		p.decode(ws)
		p.windows.assign(ctx, ws)
	}
}

// process handles one prepared batch: decode (unless prepare did), resolve adapters, look up
// the cache, classify the misses, publish events and dead letters, and mark
// every message done once its output is acknowledged. It retries transient
// failures until ctx ends; then it returns without marking anything done,
// so that nothing unfinished is committed.
func (p *processor) process(ctx context.Context, ws []*work) {
	p.m.batchSize.Observe(float64(len(ws)))
	if p.windows == nil {
		p.decode(ws)
	}
	var decoded []*work
	for _, w := range ws {
		if w.reject == nil {
			decoded = append(decoded, w)
		}
	}
	valid, err := p.resolveTargets(ctx, decoded)
	if err != nil {
		return
	}
	if err := p.classifyAll(ctx, valid); err != nil {
		return
	}
	msgs := make([]kafka.Message, 0, len(ws))
	for _, w := range ws {
		msgs = append(msgs, p.output(w))
	}
	if err := p.pub.publish(ctx, msgs); err != nil {
		return
	}
	now := time.Now()
	for _, w := range ws {
		w.done()
		switch {
		case w.reject != nil:
			p.m.messages.WithLabelValues("dead_letter", string(w.reject.Reason)).Inc()
		case w.cacheHit:
			p.m.messages.WithLabelValues("cache_hit", "").Inc()
		default:
			p.m.messages.WithLabelValues("classified", "").Inc()
		}
		if w.reject == nil {
			p.m.endToEnd.Observe(max(now.Sub(w.chat.SentAt).Seconds(), 0))
		}
	}
}

// decode parses and validates every message of the batch, rejecting the
// invalid ones, applies -adapter, and returns the valid ones.
func (p *processor) decode(ws []*work) []*work {
	var valid []*work
	for _, w := range ws {
		chat, err := contract.DecodeChatMessage(w.msg.Value, p.cfg.Limits)
		if err != nil {
			var inv *contract.InvalidError
			if !errors.As(err, &inv) {
				inv = &contract.InvalidError{Reason: contract.ReasonMalformedJSON, Detail: err.Error()}
			}
			w.reject = inv
			continue
		}
		if p.cfg.Adapter != "" {
			chat.Adapter = p.cfg.Adapter
		}
		w.chat = chat
		valid = append(valid, w)
	}
	return valid
}

// resolveTargets sets every message's target from its adapter hint; those
// naming an unknown adapter are rejected. It waits, retrying, while the
// classifier's adapter list cannot be fetched. It returns the messages
// still to classify.
func (p *processor) resolveTargets(ctx context.Context, ws []*work) ([]*work, error) {
	b := newRetryBackoff()
	for {
		resolved := map[string]target{}
		var unavailable error
		var out []*work
		for _, w := range ws {
			w.reject = nil // from an earlier round, when the list was older
			hint := w.chat.Adapter
			t, ok := resolved[hint]
			if !ok {
				var err error
				t, err = p.catalog.resolveFresh(ctx, hint)
				switch {
				case errors.Is(err, errUnknownAdapter):
					w.reject = &contract.InvalidError{Reason: contract.ReasonUnknownAdapter, Detail: err.Error()}
					continue
				case err != nil:
					unavailable = err
				}
				resolved[hint] = t
			}
			w.target = t
			out = append(out, w)
		}
		if unavailable == nil {
			return out, nil
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		p.warn.log(p.log, "catalog", "cannot resolve adapters; retrying", "err", unavailable)
		if err := sleepCtx(ctx, b.NextBackOff()); err != nil {
			return nil, err
		}
	}
}

// classifyAll gives every message a result or a rejection: from the cache,
// from a concurrent batch classifying the same text, or from the classifier.
func (p *processor) classifyAll(ctx context.Context, ws []*work) error {
	if len(ws) == 0 {
		return nil
	}
	start := time.Now()
	var keys []string
	var lookups []*work
	for _, w := range ws {
		p.setKey(w)
		if w.target.cacheable() {
			keys = append(keys, w.key)
			lookups = append(lookups, w)
		}
	}
	hits := p.cache.get(ctx, keys)
	cacheMs := msSince(start)
	var misses []*work
	for i, w := range lookups {
		if hits[i] != nil {
			w.res, w.cacheHit = hits[i], true
		}
	}
	for _, w := range ws {
		w.timings.CacheMs = cacheMs
		if w.res == nil {
			misses = append(misses, w)
		}
	}
	for len(misses) > 0 {
		var err error
		if misses, err = p.classifyMisses(ctx, misses); err != nil {
			return err
		}
	}
	return nil
}

// setKey picks the part of w's context its target's template takes and
// sets its cache key.
func (p *processor) setKey(w *work) {
	k := p.catalog.contextMessages(w.target)
	if k > p.cfg.ContextMessages {
		p.warn.log(p.log, "context-"+w.target.Adapter, "the adapter's template takes more previous messages than -context-messages allows: its messages get fewer than it was trained with",
			"adapter", w.target.Adapter, "template_context_messages", k, "context_messages", p.cfg.ContextMessages)
	}
	w.sent = w.context[max(0, len(w.context)-k):]
	w.key = cacheKey(p.cfg.RedisKeyPrefix, w.target, w.chat.Text, w.sent)
}

// ledKey is a key a batch leads, with its flight.
type ledKey struct {
	key string
	f   *flight
}

// classifyMisses classifies the texts this batch leads and waits for those
// other batches lead. It returns the messages that need another round
// (their leader gave up, or their adapter changed under them).
func (p *processor) classifyMisses(ctx context.Context, ws []*work) (retry []*work, err error) {
	byKey := map[string][]*work{}
	var order []string
	for _, w := range ws {
		if _, ok := byKey[w.key]; !ok {
			order = append(order, w.key)
		}
		byKey[w.key] = append(byKey[w.key], w)
	}
	leads := map[target][]ledKey{}
	var targets []target
	follows := map[string]*flight{}
	for _, key := range order {
		f, leader := p.joins.claim(key)
		if !leader {
			follows[key] = f
			continue
		}
		t := byKey[key][0].target
		if _, ok := leads[t]; !ok {
			targets = append(targets, t)
		}
		leads[t] = append(leads[t], ledKey{key, f})
	}
	// Every led flight is finished on every path, or its followers would
	// wait for ever.
	finished := map[string]bool{}
	defer func() {
		for _, group := range leads {
			for _, l := range group {
				if !finished[l.key] {
					p.joins.finish(l.key, l.f, nil, nil, errLeaderGaveUp)
				}
			}
		}
	}()

	for _, t := range targets {
		group := leads[t]
		texts := make([]string, len(group))
		contexts := make([][]classifyapi.Turn, len(group))
		for i, l := range group {
			texts[i], contexts[i] = byKey[l.key][0].chat.Text, byKey[l.key][0].sent
		}
		start := time.Now()
		results, rejects, err := p.classifyTexts(ctx, t, texts, contexts)
		classifyMs := msSince(start)
		if errors.Is(err, errTargetGone) {
			// Followers retry on their own and meet the same answer.
			for _, l := range group {
				p.joins.finish(l.key, l.f, nil, nil, errLeaderGaveUp)
				finished[l.key] = true
			}
			again, err := p.retarget(ctx, group, byKey, t)
			if err != nil {
				return nil, err
			}
			retry = append(retry, again...)
			continue
		}
		if err != nil {
			return nil, err
		}
		fresh := map[string]classification{}
		for i, l := range group {
			for _, w := range byKey[l.key] {
				w.res, w.reject = results[i], rejects[i]
				w.timings.ClassifyMs = classifyMs
			}
			if r := results[i]; r != nil {
				// Cached under what the classifier says it used, which can
				// differ from what the catalog predicted.
				rt := target{Model: r.Model, Adapter: r.Adapter, LabelSet: r.LabelSet}
				if rt.cacheable() {
					fresh[cacheKey(p.cfg.RedisKeyPrefix, rt, texts[i], contexts[i])] = *r
				}
			}
		}
		// Cache first, then release the followers: a batch that claims a
		// key after its flight ended finds the result in the cache.
		p.cache.set(ctx, fresh)
		for i, l := range group {
			p.joins.finish(l.key, l.f, results[i], rejects[i], nil)
			finished[l.key] = true
		}
	}

	for key, f := range follows {
		start := time.Now()
		select {
		case <-f.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		for _, w := range byKey[key] {
			if f.err != nil {
				retry = append(retry, w)
				continue
			}
			w.res, w.reject = f.res, f.reject
			w.timings.ClassifyMs = msSince(start)
		}
	}
	return retry, nil
}

// retarget handles an adapter version the classifier no longer serves: it
// refreshes the catalog and resolves the messages' hints again. Messages
// whose hint now resolves elsewhere go another round; those whose hint
// still resolves to the vanished version, or to nothing, are rejected as
// naming an unknown adapter (the classifier has the last word).
func (p *processor) retarget(ctx context.Context, group []ledKey, byKey map[string][]*work, gone target) ([]*work, error) {
	var ws []*work
	for _, l := range group {
		ws = append(ws, byKey[l.key]...)
	}
	b := newRetryBackoff()
	for {
		err := p.catalog.refreshSince(ctx, time.Now())
		if err == nil {
			break
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		p.warn.log(p.log, "catalog", "cannot refresh the adapter list; retrying", "err", err)
		if err := sleepCtx(ctx, b.NextBackOff()); err != nil {
			return nil, err
		}
	}
	var again []*work
	for _, w := range ws {
		t, err := p.catalog.resolve(w.chat.Adapter)
		switch {
		case err == nil && t != gone:
			w.target = t
			p.setKey(w)
			again = append(again, w)
		case err == nil || errors.Is(err, errUnknownAdapter):
			w.reject = &contract.InvalidError{Reason: contract.ReasonUnknownAdapter,
				Detail: fmt.Sprintf("the classifier does not serve adapter %q (asked for %q)", gone.Adapter, w.chat.Adapter)}
		default:
			again = append(again, w) // catalog emptied meanwhile: resolve later
		}
	}
	return again, nil
}

// errTargetGone: the classifier answered 404 unknown_adapter for an adapter
// version the catalog listed.
var errTargetGone = errors.New("adapter version no longer served")

// classifyTexts classifies texts with t, retrying transient failures with
// back-off until ctx ends. Texts the classifier refuses (400, 413) are
// isolated by splitting the request in halves and rejected one by one, so
// one bad text cannot block the others. It returns one result or rejection
// per text, or errTargetGone, or ctx's error.
func (p *processor) classifyTexts(ctx context.Context, t target, texts []string, contexts [][]classifyapi.Turn) ([]*classification, []*contract.InvalidError, error) {
	results := make([]*classification, len(texts))
	rejects := make([]*contract.InvalidError, len(texts))
	err := p.classifyRange(ctx, t, texts, contexts, results, rejects)
	return results, rejects, err
}

func (p *processor) classifyRange(ctx context.Context, t target, texts []string, contexts [][]classifyapi.Turn, results []*classification, rejects []*contract.InvalidError) error {
	b := newRetryBackoff()
	for {
		callCtx, cancel := context.WithTimeout(ctx, p.cfg.ClassifyTimeout)
		p.m.classifyTexts.Observe(float64(len(texts)))
		req := classifyapi.ClassifyRequest{Texts: texts, Adapter: t.Adapter, Priority: p.cfg.Priority}
		if slices.ContainsFunc(contexts, func(c []classifyapi.Turn) bool { return len(c) > 0 }) {
			req.Contexts = contexts
		}
		resp, err := p.client.Classify(callCtx, req)
		cancel()
		if err == nil {
			now := time.Now()
			got := target{Model: resp.Model, Adapter: resp.Adapter, LabelSet: resp.LabelSet}
			if got != t {
				p.m.targetMismatches.Inc()
				p.warn.log(p.log, "target-mismatch", "the classifier used another model, adapter or label set than its adapter list said; refreshing the list",
					"expected", fmt.Sprintf("%+v", t), "got", fmt.Sprintf("%+v", got))
				p.catalog.kick()
			}
			for i, r := range resp.Results {
				results[i] = &classification{Label: r.Label, Probabilities: r.Probabilities, Truncated: r.Truncated, ContextMessages: r.ContextMessages,
					Model: resp.Model, Adapter: resp.Adapter, LabelSet: resp.LabelSet, ClassifiedAt: now}
			}
			return nil
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var apiErr *classifyclient.APIError
		if errors.As(err, &apiErr) && !apiErr.Retryable() {
			if apiErr.Status == http.StatusNotFound || apiErr.Code == classifyapi.CodeUnknownAdapter {
				return errTargetGone
			}
			if len(texts) > 1 {
				mid := len(texts) / 2
				if err := p.classifyRange(ctx, t, texts[:mid], contexts[:mid], results[:mid], rejects[:mid]); err != nil {
					return err
				}
				return p.classifyRange(ctx, t, texts[mid:], contexts[mid:], results[mid:], rejects[mid:])
			}
			rejects[0] = &contract.InvalidError{Reason: contract.ReasonClassifierRejected, Detail: apiErr.Error()}
			return nil
		}
		p.m.classifyFailures.Inc()
		p.warn.log(p.log, "classify", "classifier call failed; retrying the batch", "texts", len(texts), "err", err)
		if err := sleepCtx(ctx, b.NextBackOff()); err != nil {
			return err
		}
	}
}

// output is the Kafka message that answers w: its event, or its dead
// letter.
func (p *processor) output(w *work) kafka.Message {
	if w.reject == nil {
		ev := p.event(w)
		value, err := json.Marshal(ev)
		if err == nil {
			return kafka.Message{Topic: p.cfg.EventsTopic, Key: []byte(w.chat.ConversationID), Value: value}
		}
		// Only a result the classifier should never send (NaN
		// probabilities) gets here; keep the message rather than lose it.
		w.reject = &contract.InvalidError{Reason: contract.ReasonClassifierRejected, Detail: "cannot encode the event: " + err.Error()}
	}
	return p.deadLetter(w)
}

func (p *processor) event(w *work) contract.EmotionEvent {
	r := w.res
	ev := contract.EmotionEvent{
		MessageID:       w.chat.ID,
		ConversationID:  w.chat.ConversationID,
		Tenant:          w.chat.Tenant,
		SpeakerRole:     w.chat.SpeakerRole,
		Language:        w.chat.Language,
		TextFingerprint: contract.Fingerprint(w.chat.Text),
		Label:           r.Label,
		Probabilities:   r.Probabilities,
		TrueLabel:       w.chat.Label,
		Truncated:       r.Truncated,
		ContextMessages: r.ContextMessages,
		Model:           r.Model,
		Adapter:         r.Adapter,
		LabelSet:        r.LabelSet,
		RunID:           p.cfg.RunID,
		CacheHit:        w.cacheHit,
		SentAt:          w.chat.SentAt,
		ReceivedAt:      w.receivedAt,
		ClassifiedAt:    r.ClassifiedAt,
		Timings:         w.timings,
		Source:          contract.Source{Topic: w.msg.Topic, Partition: w.msg.Partition, Offset: w.msg.Offset},
	}
	if p.windows != nil {
		ev.ContextSource = w.contextSource
	}
	if p.cfg.EventsIncludeText {
		ev.Text = w.chat.Text
	}
	ev.Timings.PipelineMs = msSince(w.receivedAt)
	return ev
}

// deadLetter is w's original key, value and headers, plus headers saying
// why and where from. For a tenant listed in -dead-letter-redact-tenants
// the value is left out (empty) and HeaderValueRedacted added.
func (p *processor) deadLetter(w *work) kafka.Message {
	value := w.msg.Value
	headers := make([]kafka.Header, 0, len(w.msg.Headers)+7)
	headers = append(headers, w.msg.Headers...)
	if len(p.cfg.DeadLetterRedactTenants) > 0 && p.cfg.redactsDeadLetter(rejectedTenant(w)) {
		headers = append(headers, kafka.Header{Key: contract.HeaderValueRedacted, Value: []byte("true")})
		value = nil
	} else if len(value) > p.cfg.DeadLetterMaxBytes {
		headers = append(headers, kafka.Header{Key: contract.HeaderValueTruncated, Value: []byte(strconv.Itoa(len(value)))})
		value = value[:p.cfg.DeadLetterMaxBytes]
	}
	detail := w.reject.Detail
	if len(detail) > 1024 {
		detail = detail[:1024]
	}
	headers = append(headers,
		kafka.Header{Key: contract.HeaderReason, Value: []byte(w.reject.Reason)},
		kafka.Header{Key: contract.HeaderDetail, Value: []byte(detail)},
		kafka.Header{Key: contract.HeaderSourceTopic, Value: []byte(w.msg.Topic)},
		kafka.Header{Key: contract.HeaderSourcePartition, Value: []byte(strconv.Itoa(w.msg.Partition))},
		kafka.Header{Key: contract.HeaderSourceOffset, Value: []byte(strconv.FormatInt(w.msg.Offset, 10))},
		kafka.Header{Key: contract.HeaderRejectedAt, Value: []byte(time.Now().UTC().Format(time.RFC3339Nano))},
	)
	return kafka.Message{Topic: p.cfg.DeadLetterTopic, Key: w.msg.Key, Value: value, Headers: headers}
}

// rejectedTenant is the tenant of a rejected message, and whether it could
// be read: from the decoded message, or else from the raw value when that
// is valid UTF-8 and JSON with a string "tenant" (a message rejected for
// its schema, size or text). Malformed JSON and invalid UTF-8 have none.
func rejectedTenant(w *work) (string, bool) {
	if w.chat.Tenant != "" {
		return w.chat.Tenant, true
	}
	if !utf8.Valid(w.msg.Value) {
		return "", false
	}
	var m struct {
		Tenant *string `json:"tenant"`
	}
	if json.Unmarshal(w.msg.Value, &m) != nil || m.Tenant == nil {
		return "", false
	}
	return *m.Tenant, true
}

// newRetryBackoff is the back-off between retries of a batch's step that
// failed for a reason outside the batch (classifier or Kafka down): it
// never gives up, ctx ends it.
func newRetryBackoff() *backoff.ExponentialBackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = 100 * time.Millisecond
	b.MaxInterval = 5 * time.Second
	b.MaxElapsedTime = 0
	b.Reset()
	return b
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

func msSince(t time.Time) float64 { return float64(time.Since(t).Microseconds()) / 1000 }
