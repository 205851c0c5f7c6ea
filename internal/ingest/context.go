package ingest

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/redis/go-redis/v9"

	"github.com/emoflow/emoflow/internal/classifyapi"
)

// Conversation context on the stream.
//
// The context of a message is the k valid messages before it in its
// conversation, in the order of its input partition. Windows hold each
// conversation's latest messages (offset, role, text), keyed by input
// topic, partition, tenant and conversation, in a Redis sorted set scored
// by offset, with a TTL and a size cap, and in a bounded in-memory copy
// that stands in while Redis is unavailable.
//
// Contexts are assigned by one goroutine, batch after batch in fetch order,
// before the batches are processed concurrently: a message's context is
// read as of its offset (entries below it) and never includes a later
// message, however the batches complete. A message delivered again (a
// crash, a rebalance) reads the same entries, because a window is read
// below the message's offset and written idempotently (same member, same
// score), so it gets the same context and label, as long as its window
// still holds the k messages before it: fewer than cap-k messages of the
// conversation were processed past the last commit.

// Context sources recorded in events.
const (
	contextFromRedis  = "redis"
	contextFromMemory = "memory"
)

// windowEntry is one message in a conversation's window (JSON in Redis:
// the same message always encodes to the same member).
type windowEntry struct {
	Offset int64  `json:"o"`
	Role   string `json:"r"`
	Text   string `json:"t"`
}

// contextWindows assigns contexts to messages and keeps the windows.
type contextWindows struct {
	k, size int
	ttl     time.Duration
	prefix  string
	// cache gives the Redis client and its availability; nil when ingest
	// runs without Redis (then windows live in memory only).
	cache *resultCache
	local *lru.Cache[string, []windowEntry]
	m     *metrics
}

func newContextWindows(cfg *Config, cache *resultCache, m *metrics) (*contextWindows, error) {
	local, err := lru.New[string, []windowEntry](cfg.ContextLocalConversations)
	if err != nil {
		return nil, fmt.Errorf("context windows: %w", err)
	}
	return &contextWindows{k: cfg.ContextMessages, size: cfg.ContextWindow, ttl: cfg.ContextTTL, prefix: cfg.ContextKeyPrefix,
		cache: cache, local: local, m: m}, nil
}

// windowKey names w's conversation window. The partition is part of it:
// offsets order messages only within one partition, so a conversation
// whose messages move to another partition (a changed key or partition
// count) starts a new context there.
func (c *contextWindows) windowKey(w *work) string {
	return c.prefix + w.msg.Topic + ":" + strconv.Itoa(w.msg.Partition) + ":" + w.chat.Tenant + ":" + w.chat.ConversationID
}

// assign gives every valid message of a batch (in fetch order) its context
// and adds the messages to their windows. It never fails: without Redis it
// uses the windows this process holds.
func (c *contextWindows) assign(ctx context.Context, ws []*work) {
	var convs []*conversation
	byKey := map[string]*conversation{}
	for _, w := range ws {
		if w.reject != nil {
			continue
		}
		key := c.windowKey(w)
		cv := byKey[key]
		if cv == nil {
			cv = &conversation{key: key}
			byKey[key] = cv
			convs = append(convs, cv)
		}
		cv.ws = append(cv.ws, w)
	}
	if len(convs) == 0 {
		return
	}
	// Before: the window entries below each conversation's first message
	// of the batch (newest first, at most k).
	before := make([][]windowEntry, len(convs))
	source := contextFromMemory
	if c.cache.usable() {
		if err := c.exchange(ctx, convs, before); err == nil {
			source = contextFromRedis
		} else {
			clear(before)
		}
	}
	for i, cv := range convs {
		first := cv.ws[0].msg.Offset
		if source == contextFromMemory {
			before[i] = c.localBefore(cv.key, first)
		}
		// The window as each message sees it: the entries before the
		// batch, then the batch's own earlier messages.
		window := slices.Clone(before[i])
		slices.Reverse(window)
		var added []windowEntry
		for _, w := range cv.ws {
			turns := window[max(0, len(window)-c.k):]
			w.context = make([]classifyapi.Turn, len(turns))
			for j, e := range turns {
				w.context[j] = classifyapi.Turn{Role: e.Role, Text: e.Text}
			}
			w.contextSource = source
			e := windowEntry{Offset: w.msg.Offset, Role: w.chat.SpeakerRole, Text: w.chat.Text}
			window = append(window, e)
			added = append(added, e)
		}
		c.localAdd(cv.key, added)
	}
	c.m.contextAssigned.WithLabelValues(source).Add(float64(len(ws)))
}

// conversation is a window key and the batch's messages that belong to it,
// in offset order.
type conversation struct {
	key string
	ws  []*work
}

// exchange reads, in one Redis pipeline, each conversation's window below
// its first message of the batch (newest first, at most k) and adds the
// batch's messages, trimming the windows to their cap and renewing their
// TTL. Reads and writes of one window touch different offsets, so their
// order in the pipeline does not matter.
func (c *contextWindows) exchange(ctx context.Context, convs []*conversation, before [][]windowEntry) error {
	rc := c.cache
	ctx, cancel := context.WithTimeout(ctx, rc.timeout)
	defer cancel()
	pipe := rc.rdb.Pipeline()
	reads := make([]*redis.StringSliceCmd, len(convs))
	for i, cv := range convs {
		reads[i] = pipe.ZRevRangeByScore(ctx, cv.key, &redis.ZRangeBy{
			Max: "(" + strconv.FormatInt(cv.ws[0].msg.Offset, 10), Min: "-inf", Count: int64(c.k)})
		members := make([]redis.Z, 0, len(cv.ws))
		for _, w := range cv.ws {
			raw, err := json.Marshal(windowEntry{Offset: w.msg.Offset, Role: w.chat.SpeakerRole, Text: w.chat.Text})
			if err != nil {
				return err
			}
			members = append(members, redis.Z{Score: float64(w.msg.Offset), Member: raw})
		}
		pipe.ZAdd(ctx, cv.key, members...)
		pipe.ZRemRangeByRank(ctx, cv.key, 0, int64(-c.size-1))
		pipe.Expire(ctx, cv.key, c.ttl)
	}
	_, err := pipe.Exec(ctx)
	if cerr := ctx.Err(); cerr != nil && !errors.Is(cerr, context.DeadlineExceeded) {
		return cerr // the caller gave up; says nothing about Redis
	}
	rc.outcome(err)
	if err != nil {
		return err
	}
	for i, r := range reads {
		for _, raw := range r.Val() {
			var e windowEntry
			if json.Unmarshal([]byte(raw), &e) != nil {
				// Not ours (or damaged): the window is unreadable as a
				// whole, rather than silently shorter.
				c.m.contextErrors.Inc()
				return fmt.Errorf("window %s holds an unreadable entry", convs[i].key)
			}
			before[i] = append(before[i], e)
		}
	}
	return nil
}

// localBefore is the in-memory window of key below offset, newest first,
// at most k entries.
func (c *contextWindows) localBefore(key string, offset int64) []windowEntry {
	entries, _ := c.local.Get(key)
	var out []windowEntry
	for i := len(entries) - 1; i >= 0 && len(out) < c.k; i-- {
		if entries[i].Offset < offset {
			out = append(out, entries[i])
		}
	}
	return out
}

// localAdd merges entries into key's in-memory window, keeping it sorted
// by offset, free of duplicates and at most size long.
func (c *contextWindows) localAdd(key string, entries []windowEntry) {
	cur, _ := c.local.Get(key)
	merged := append(slices.Clone(cur), entries...)
	slices.SortStableFunc(merged, func(a, b windowEntry) int { return cmp.Compare(a.Offset, b.Offset) })
	merged = slices.CompactFunc(merged, func(a, b windowEntry) bool { return a.Offset == b.Offset })
	if len(merged) > c.size {
		merged = merged[len(merged)-c.size:]
	}
	c.local.Add(key, merged)
}
