package ingest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"

	"github.com/emoflow/emoflow/internal/classifyapi"
	"github.com/emoflow/emoflow/internal/secure"
)

// classification is the result for one text, as published in events and
// stored in the cache (JSON).
type classification struct {
	Label         string             `json:"label"`
	Probabilities map[string]float64 `json:"probabilities"`
	Truncated     bool               `json:"truncated,omitempty"`
	// ContextMessages is how many previous messages were in the prompt.
	ContextMessages int       `json:"context_messages,omitempty"`
	Model           string    `json:"model"`
	Adapter         string    `json:"adapter"`
	LabelSet        string    `json:"label_set"`
	ClassifiedAt    time.Time `json:"classified_at"`
}

// cacheKey is the Redis key of the classification of text (normalised) by
// t with turns as its context: a hash of the model, the exact adapter
// version, the label set, the text and the context's fingerprint, so that
// a new model, adapter version, prompt or context never reuses old
// results. A text without context keeps the key it had before contexts
// existed. The "v1" names the value format.
func cacheKey(prefix string, t target, text string, turns []classifyapi.Turn) string {
	h := sha256.New()
	parts := []string{t.Model, t.Adapter, t.LabelSet, text}
	if fp := classifyapi.ContextFingerprint(turns); fp != "" {
		parts = append(parts, "context", fp)
	}
	for _, part := range parts {
		h.Write([]byte(part))
		h.Write([]byte{0}) // separator: ("ab","c") and ("a","bc") differ
	}
	return prefix + "v1:" + hex.EncodeToString(h.Sum(nil))
}

// resultCache is the Redis cache of classifications. When Redis fails, the
// cache steps aside (every lookup misses, writes are skipped) and probes
// Redis again after probeEvery, so an outage costs one timeout per probe
// rather than one per batch; the outage and the recovery are logged once.
// A nil *resultCache is a disabled cache.
type resultCache struct {
	rdb        *redis.Client
	ttl        time.Duration
	timeout    time.Duration
	probeEvery time.Duration
	log        *slog.Logger
	m          *metrics

	mu      sync.Mutex
	up      bool
	retryAt time.Time
}

// openResultCache returns a cache on the Redis at addr, reached with sec's
// TLS and user.
func openResultCache(addr string, sec *secure.Redis, ttl, timeout time.Duration, log *slog.Logger, m *metrics) (*resultCache, error) {
	opts := &redis.Options{
		Addr:         addr,
		DialTimeout:  timeout,
		ReadTimeout:  timeout,
		WriteTimeout: timeout,
		// One retry at most: the cache is an optimisation, a slow answer is
		// worse than a miss.
		MaxRetries: 1,
		// Keep a down Redis from costing a dial per batch in go-redis too.
		PoolTimeout: timeout,
		// Redis 7 does not know the maintenance-notification handshake.
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled},
	}
	if err := sec.Apply(opts); err != nil {
		return nil, err
	}
	rdb := redis.NewClient(opts)
	m.redisUp.Set(1)
	return &resultCache{rdb: rdb, ttl: ttl, timeout: timeout, probeEvery: time.Second, log: log, m: m, up: true}, nil
}

func (c *resultCache) close() error {
	if c == nil {
		return nil
	}
	return c.rdb.Close()
}

// usable reports whether Redis should be asked now: it is up, or it is
// down and due for a probe (then only one caller at a time probes).
func (c *resultCache) usable() bool {
	if c == nil {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.up {
		return true
	}
	if now := time.Now(); !now.Before(c.retryAt) {
		c.retryAt = now.Add(c.probeEvery)
		return true
	}
	return false
}

// outcome records whether a Redis call worked, logging state changes.
func (c *resultCache) outcome(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err == nil {
		if !c.up {
			c.up = true
			c.m.redisUp.Set(1)
			c.log.Info("redis cache is available again")
		}
		return
	}
	c.m.cacheErrors.Inc()
	if c.up {
		c.up = false
		c.retryAt = time.Now().Add(c.probeEvery)
		c.m.redisUp.Set(0)
		c.log.Warn("redis cache unavailable; classifying without the cache until it returns", "err", err)
	}
}

// get looks keys up with one MGET. The result has one entry per key, nil
// for a miss (or when the cache is disabled, down or the entry unreadable).
func (c *resultCache) get(ctx context.Context, keys []string) []*classification {
	out := make([]*classification, len(keys))
	if c == nil || len(keys) == 0 {
		return out
	}
	if !c.usable() {
		c.m.cacheLookups.WithLabelValues("skipped").Add(float64(len(keys)))
		return out
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	vals, err := c.rdb.MGet(ctx, keys...).Result()
	if cerr := ctx.Err(); cerr != nil && !errors.Is(cerr, context.DeadlineExceeded) {
		return out // the caller gave up; says nothing about Redis
	}
	c.outcome(err)
	if err != nil {
		c.m.cacheLookups.WithLabelValues("skipped").Add(float64(len(keys)))
		return out
	}
	hits := 0
	for i, v := range vals {
		s, ok := v.(string)
		if !ok {
			continue
		}
		var r classification
		if json.Unmarshal([]byte(s), &r) != nil || r.Label == "" {
			c.m.cacheErrors.Inc() // unreadable entry: classify again, overwrite it
			continue
		}
		out[i] = &r
		hits++
	}
	c.m.cacheLookups.WithLabelValues("hit").Add(float64(hits))
	c.m.cacheLookups.WithLabelValues("miss").Add(float64(len(keys) - hits))
	return out
}

// set writes entries with the TTL in one pipeline. Failures only cost
// future misses, so they are recorded and otherwise ignored.
func (c *resultCache) set(ctx context.Context, entries map[string]classification) {
	if len(entries) == 0 || !c.usable() {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	pipe := c.rdb.Pipeline()
	for k, v := range entries {
		raw, err := json.Marshal(v)
		if err != nil {
			continue
		}
		pipe.Set(ctx, k, raw, c.ttl)
	}
	_, err := pipe.Exec(ctx)
	if cerr := ctx.Err(); cerr != nil && !errors.Is(cerr, context.DeadlineExceeded) {
		return
	}
	c.outcome(err)
}
