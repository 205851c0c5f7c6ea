package ingest

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/emoflow/emoflow/internal/classifyapi"
)

// target is what a message is classified with: the base model, the adapter
// version and the label set. It is part of the cache key, so it is resolved
// to exact versions before the cache lookup.
type target struct {
	Model string
	// Adapter is "id@version", empty for the bare base model.
	Adapter  string
	LabelSet string
}

// cacheable reports whether results for t may be cached: a target whose
// label set is unknown could be served results of another prompt.
func (t target) cacheable() bool { return t.Model != "" && t.LabelSet != "" }

// errUnknownAdapter is a message's adapter hint that no classifier serves.
var errUnknownAdapter = errors.New("unknown adapter")

// adapterLister is the part of the classifier client the catalog needs.
type adapterLister interface {
	Adapters(ctx context.Context) (*classifyapi.AdaptersResponse, error)
}

// catalog is the classifier's current model, default adapter and adapter
// versions (GET /v1/adapters), refreshed periodically and on demand, used
// to resolve adapter hints ("", "id", "id@version") to targets.
type catalog struct {
	lister adapterLister
	// minGap spaces on-demand refreshes, so that a stream of messages naming
	// an unknown adapter does not become a stream of requests.
	minGap time.Duration

	refreshMu sync.Mutex // one refresh at a time
	kicks     chan struct{}

	mu          sync.RWMutex
	cur         *classifyapi.AdaptersResponse
	byRef       map[string]classifyapi.AdapterInfo
	latestByID  map[string]classifyapi.AdapterInfo
	refreshedAt time.Time
}

func newCatalog(lister adapterLister, minGap time.Duration) *catalog {
	return &catalog{lister: lister, minGap: minGap, kicks: make(chan struct{}, 1)}
}

// refresh fetches the adapters now.
func (c *catalog) refresh(ctx context.Context) error {
	c.refreshMu.Lock()
	defer c.refreshMu.Unlock()
	return c.refreshLocked(ctx)
}

func (c *catalog) refreshLocked(ctx context.Context) error {
	resp, err := c.lister.Adapters(ctx)
	if err != nil {
		return err
	}
	byRef := make(map[string]classifyapi.AdapterInfo, len(resp.Adapters))
	latest := map[string]classifyapi.AdapterInfo{}
	for _, a := range resp.Adapters {
		byRef[a.Ref()] = a
		prev, seen := latest[a.ID]
		// For a bare "id" hint: the default adapter's version when the
		// default is that id, otherwise the highest version served.
		switch {
		case !seen, a.Default || a.Ref() == resp.Default:
			latest[a.ID] = a
		case prev.Default || prev.Ref() == resp.Default:
		case versionLess(prev.Version, a.Version):
			latest[a.ID] = a
		}
	}
	c.mu.Lock()
	c.cur, c.byRef, c.latestByID, c.refreshedAt = resp, byRef, latest, time.Now()
	c.mu.Unlock()
	return nil
}

// refreshIfStale refreshes unless the last refresh is more recent than the
// minimum gap; it reports whether it refreshed.
func (c *catalog) refreshIfStale(ctx context.Context) (bool, error) {
	c.refreshMu.Lock()
	defer c.refreshMu.Unlock()
	c.mu.RLock()
	fresh := time.Since(c.refreshedAt) < c.minGap
	c.mu.RUnlock()
	if fresh {
		return false, nil
	}
	return true, c.refreshLocked(ctx)
}

// refreshSince refreshes unless a refresh has completed after since: many
// batches that meet the same change at once cause one request.
func (c *catalog) refreshSince(ctx context.Context, since time.Time) error {
	c.refreshMu.Lock()
	defer c.refreshMu.Unlock()
	c.mu.RLock()
	done := c.refreshedAt.After(since)
	c.mu.RUnlock()
	if done {
		return nil
	}
	return c.refreshLocked(ctx)
}

// kick asks the periodic refresher (run) for a refresh soon.
func (c *catalog) kick() {
	select {
	case c.kicks <- struct{}{}:
	default: // one is already pending
	}
}

// run refreshes the catalog every interval, and when kicked, until ctx ends.
func (c *catalog) run(ctx context.Context, every time.Duration, onError func(error)) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-c.kicks:
		}
		if err := c.refresh(ctx); err != nil && ctx.Err() == nil {
			onError(err)
		}
	}
}

// contextMessages is how many previous messages t's template takes (0 for
// none, or when the catalog does not list t).
func (c *catalog) contextMessages(t target) int {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.byRef[t.Adapter].ContextMessages
}

// resolve turns a message's adapter hint into a target: "" is the default
// adapter, "id" the version resolveID picks, "id@version" itself. It fails
// with errUnknownAdapter when the catalog does not list the adapter, and
// with errCatalogUnavailable before the first successful refresh.
func (c *catalog) resolve(hint string) (target, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.cur == nil {
		return target{}, errCatalogUnavailable
	}
	ref := hint
	if ref == "" {
		ref = c.cur.Default
		if ref == "" {
			// No default adapter: the bare base model, whose label set the
			// catalog does not say (so its results are not cached).
			return target{Model: c.cur.Model}, nil
		}
	}
	id, version, err := classifyapi.ParseAdapterRef(ref)
	if err != nil {
		return target{}, fmt.Errorf("%w: %v", errUnknownAdapter, err)
	}
	var info classifyapi.AdapterInfo
	var ok bool
	if version == "" {
		info, ok = c.latestByID[id]
	} else {
		info, ok = c.byRef[ref]
	}
	if !ok && hint == "" {
		// The classifier names a default it does not list: let it decide,
		// without caching (the label set is unknown), rather than reject
		// every message that asks for the default.
		return target{Model: c.cur.Model, Adapter: ref}, nil
	}
	if !ok {
		return target{}, fmt.Errorf("%w %q", errUnknownAdapter, hint)
	}
	return target{Model: c.cur.Model, Adapter: info.Ref(), LabelSet: info.LabelSet}, nil
}

// errCatalogUnavailable: the adapter list could not be fetched.
var errCatalogUnavailable = errors.New("the classifier's adapters are not known")

// resolveFresh is resolve that, when the adapter is unknown, refreshes the
// catalog (unless it was refreshed within the minimum gap) and tries again,
// so that an adapter deployed since the last refresh is found. When the
// refresh fails the error is errCatalogUnavailable, a transient one: an
// adapter is only declared unknown by a fresh catalog.
func (c *catalog) resolveFresh(ctx context.Context, hint string) (target, error) {
	t, err := c.resolve(hint)
	if err == nil || (!errors.Is(err, errUnknownAdapter) && !errors.Is(err, errCatalogUnavailable)) {
		return t, err
	}
	refreshed, rerr := c.refreshIfStale(ctx)
	if rerr != nil {
		return target{}, fmt.Errorf("%w: %v", errCatalogUnavailable, rerr)
	}
	if !refreshed {
		return target{}, err
	}
	return c.resolve(hint)
}

// versionLess orders adapter versions naturally: runs of digits compare as
// numbers ("v10" after "v9"), everything else byte by byte.
func versionLess(a, b string) bool {
	for a != "" && b != "" {
		da, db := digitPrefix(a), digitPrefix(b)
		if da > 0 && db > 0 {
			na, errA := strconv.ParseUint(a[:da], 10, 64)
			nb, errB := strconv.ParseUint(b[:db], 10, 64)
			if errA == nil && errB == nil && na != nb {
				return na < nb
			}
			if a[:da] != b[:db] {
				return a[:da] < b[:db]
			}
			a, b = a[da:], b[db:]
			continue
		}
		if a[0] != b[0] {
			return a[0] < b[0]
		}
		a, b = a[1:], b[1:]
	}
	return len(a) < len(b)
}

func digitPrefix(s string) int {
	n := 0
	for n < len(s) && s[n] >= '0' && s[n] <= '9' {
		n++
	}
	return n
}
