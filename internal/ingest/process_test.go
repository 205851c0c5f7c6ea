package ingest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/emoflow/emoflow/internal/classifyapi"
	"github.com/emoflow/emoflow/internal/classifyclient"
	"github.com/emoflow/emoflow/internal/contract"
)

func TestCacheKeyDependsOnEveryPart(t *testing.T) {
	base := target{Model: "m", Adapter: "a@1", LabelSet: "ls"}
	k := cacheKey("p:", base, "hello", nil)
	if k != cacheKey("p:", base, "hello", nil) {
		t.Fatal("cacheKey is not deterministic")
	}
	variants := map[string]string{
		"model":     cacheKey("p:", target{Model: "m2", Adapter: "a@1", LabelSet: "ls"}, "hello", nil),
		"adapter":   cacheKey("p:", target{Model: "m", Adapter: "a@2", LabelSet: "ls"}, "hello", nil),
		"label set": cacheKey("p:", target{Model: "m", Adapter: "a@1", LabelSet: "ls2"}, "hello", nil),
		"text":      cacheKey("p:", base, "hello!", nil),
		// Moving a byte between fields must not collide.
		"boundary":     cacheKey("p:", target{Model: "m", Adapter: "a@1l", LabelSet: "s"}, "hello", nil),
		"context":      cacheKey("p:", base, "hello", []classifyapi.Turn{{Role: "customer", Text: "hi"}}),
		"context role": cacheKey("p:", base, "hello", []classifyapi.Turn{{Role: "agent", Text: "hi"}}),
	}
	for what, v := range variants {
		if v == k {
			t.Errorf("changing the %s does not change the key", what)
		}
	}
	if got := cacheKey("other:", base, "hello", nil); got[:6] != "other:" || got[6:] != k[2:] {
		t.Errorf("prefix not applied as is: %q vs %q", got, k)
	}
	// Keys of messages without context are the keys of the releases before
	// contexts existed: upgrading ingest keeps the cache warm.
	sum := sha256.Sum256([]byte("m\x00a@1\x00ls\x00hello\x00"))
	if want := "p:v1:" + hex.EncodeToString(sum[:]); k != want {
		t.Errorf("key without context %s, want the earlier %s", k, want)
	}
}

func TestVersionLess(t *testing.T) {
	ordered := []string{"1", "2", "9", "10", "10a", "v1", "v2", "v10", "v10.1", "v10.2"}
	for i := range ordered {
		for j := range ordered {
			if got, want := versionLess(ordered[i], ordered[j]), i < j; got != want {
				t.Errorf("versionLess(%q, %q) = %v, want %v", ordered[i], ordered[j], got, want)
			}
		}
	}
}

type staticLister struct {
	resp  *classifyapi.AdaptersResponse
	calls int
}

func (s *staticLister) Adapters(context.Context) (*classifyapi.AdaptersResponse, error) {
	s.calls++
	if s.resp == nil {
		return nil, errors.New("classifier down")
	}
	return s.resp, nil
}

func TestCatalogResolvesHintsToExactVersions(t *testing.T) {
	lister := &staticLister{resp: &classifyapi.AdaptersResponse{
		Model: "m", Default: "emo@2",
		Adapters: []classifyapi.AdapterInfo{
			{ID: "emo", Version: "1", LabelSet: "a"},
			{ID: "emo", Version: "2", LabelSet: "a", Default: true},
			{ID: "emo", Version: "3", LabelSet: "a3"},
			{ID: "x", Version: "v9", LabelSet: "b"},
			{ID: "x", Version: "v10", LabelSet: "c"},
		},
	}}
	c := newCatalog(lister, time.Hour)
	if _, err := c.resolve(""); !errors.Is(err, errCatalogUnavailable) {
		t.Fatalf("before the first refresh: %v, want errCatalogUnavailable", err)
	}
	if err := c.refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	cases := map[string]target{
		"":      {Model: "m", Adapter: "emo@2", LabelSet: "a"},
		"emo":   {Model: "m", Adapter: "emo@2", LabelSet: "a"}, // the default's version wins
		"emo@3": {Model: "m", Adapter: "emo@3", LabelSet: "a3"},
		"x":     {Model: "m", Adapter: "x@v10", LabelSet: "c"}, // highest version
	}
	for hint, want := range cases {
		got, err := c.resolve(hint)
		if err != nil || got != want {
			t.Errorf("resolve(%q) = %+v, %v; want %+v", hint, got, err, want)
		}
	}
	for _, hint := range []string{"nope", "emo@7", "x@"} {
		if _, err := c.resolve(hint); !errors.Is(err, errUnknownAdapter) {
			t.Errorf("resolve(%q): %v, want errUnknownAdapter", hint, err)
		}
	}
	// An unknown adapter asks for a refresh, but not more than once per gap.
	calls := lister.calls
	if _, err := c.resolveFresh(context.Background(), "nope"); !errors.Is(err, errUnknownAdapter) {
		t.Fatalf("resolveFresh: %v", err)
	}
	if lister.calls != calls {
		t.Fatalf("refreshed within the minimum gap")
	}
}

func TestCatalogUnlistedDefaultIsLeftToTheClassifier(t *testing.T) {
	c := newCatalog(&staticLister{resp: &classifyapi.AdaptersResponse{Model: "m", Default: "ghost@1"}}, time.Hour)
	if err := c.refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	got, err := c.resolve("")
	if err != nil || got != (target{Model: "m", Adapter: "ghost@1"}) || got.cacheable() {
		t.Fatalf("resolve(\"\") = %+v, %v; want ghost@1 without a label set, not cacheable", got, err)
	}
}

func TestCatalogFindsNewAdapterAndReportsOutage(t *testing.T) {
	lister := &staticLister{resp: &classifyapi.AdaptersResponse{Model: "m", Default: "emo@1",
		Adapters: []classifyapi.AdapterInfo{{ID: "emo", Version: "1", LabelSet: "a", Default: true}}}}
	c := newCatalog(lister, 0)
	if err := c.refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	lister.resp = &classifyapi.AdaptersResponse{Model: "m", Default: "emo@1", Adapters: append(lister.resp.Adapters,
		classifyapi.AdapterInfo{ID: "new", Version: "1", LabelSet: "n"})}
	got, err := c.resolveFresh(context.Background(), "new")
	if err != nil || got.Adapter != "new@1" {
		t.Fatalf("resolveFresh(new) = %+v, %v", got, err)
	}
	// While the classifier cannot be asked, an adapter missing from the list
	// is not declared unknown (that would dead-letter good messages).
	lister.resp = nil
	if _, err := c.resolveFresh(context.Background(), "newer"); !errors.Is(err, errCatalogUnavailable) {
		t.Fatalf("resolveFresh during an outage: %v, want errCatalogUnavailable", err)
	}
}

// newTestProcessor is a processor without Kafka and without cache, talking
// to f.
func newTestProcessor(t *testing.T, f *fakeClassifier) *processor {
	t.Helper()
	cfg := &Config{RedisKeyPrefix: "t:", ClassifyTimeout: 5 * time.Second, Priority: classifyapi.PriorityLive,
		Limits: contract.DefaultLimits, RunID: contract.LiveRun}
	client, err := classifyclient.New(classifyclient.Config{Endpoints: []string{f.URL}, InitialBackoff: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cat := newCatalog(client, 0)
	if err := cat.refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	return &processor{cfg: cfg, client: client, catalog: cat, joins: newJoiner(), log: log,
		warn: newLogLimiter(time.Minute), m: newMetrics(prometheus.NewRegistry())}
}

func validWork(id, text, adapter string) *work {
	return &work{chat: contract.ChatMessage{ID: id, ConversationID: "c", Tenant: "t", SpeakerRole: "user",
		Text: text, SentAt: time.Now(), Language: "en", Adapter: adapter}}
}

func TestRejectedTextsAreIsolated(t *testing.T) {
	f := newFakeClassifier(t)
	p := newTestProcessor(t, f)
	texts := []string{"fine", "REJECT one", "also fine", "third", "REJECT two", "last"}
	var ws []*work
	for i, text := range texts {
		ws = append(ws, validWork(string(rune('a'+i)), text, ""))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ws, err := p.resolveTargets(ctx, ws)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.classifyAll(ctx, ws); err != nil {
		t.Fatal(err)
	}
	for _, w := range ws {
		bad := w.chat.Text == "REJECT one" || w.chat.Text == "REJECT two"
		switch {
		case bad && (w.reject == nil || w.reject.Reason != contract.ReasonClassifierRejected):
			t.Errorf("%q: reject = %+v, want classifier_rejected", w.chat.Text, w.reject)
		case !bad && (w.res == nil || w.res.Label != fakeLabel(fakeDefaultAdapter, w.chat.Text)):
			t.Errorf("%q: result %+v, reject %+v; want label %s", w.chat.Text, w.res, w.reject, fakeLabel(fakeDefaultAdapter, w.chat.Text))
		}
	}
	if got := f.texts.Load(); got != 4 {
		t.Errorf("fake classified %d texts, want each of the 4 good ones once", got)
	}
}

func TestAdapterHintsSelectTheAdapter(t *testing.T) {
	f := newFakeClassifier(t)
	p := newTestProcessor(t, f)
	ws := []*work{
		validWork("1", "same text", ""),
		validWork("2", "same text", "emo"),
		validWork("3", "same text", "emo@1"),
		validWork("4", "same text", "other@1"),
		validWork("5", "same text", "missing"),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	valid, err := p.resolveTargets(ctx, ws)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.classifyAll(ctx, valid); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"1": "emo@2", "2": "emo@2", "3": "emo@1", "4": "other@1"}
	for _, w := range ws {
		if w.chat.ID == "5" {
			if w.reject == nil || w.reject.Reason != contract.ReasonUnknownAdapter {
				t.Errorf("unknown adapter: reject = %+v", w.reject)
			}
			continue
		}
		if w.res == nil || w.res.Adapter != want[w.chat.ID] || w.res.Label != fakeLabel(want[w.chat.ID], "same text") {
			t.Errorf("message %s: result %+v, want adapter %s", w.chat.ID, w.res, want[w.chat.ID])
		}
	}
	// "" and "emo" resolve to the same version: one text classified for both.
	if got := f.texts.Load(); got != 3 {
		t.Errorf("fake classified %d texts, want 3 (one per distinct adapter version)", got)
	}
}

func TestVanishedAdapterVersionIsRetargeted(t *testing.T) {
	f := newFakeClassifier(t)
	p := newTestProcessor(t, f)
	// The catalog still lists emo@0, which the classifier no longer serves
	// (404): the message naming it exactly is rejected, the one asking for
	// the default is classified with the current default.
	p.catalog.mu.Lock()
	p.catalog.byRef["emo@0"] = classifyapi.AdapterInfo{ID: "emo", Version: "0", LabelSet: "old"}
	p.catalog.cur = &classifyapi.AdaptersResponse{Model: fakeModel, Default: "emo@0", Adapters: fakeAdapters}
	p.catalog.mu.Unlock()
	ws := []*work{validWork("1", "text", "emo@0"), validWork("2", "text", "")}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	valid, err := p.resolveTargets(ctx, ws)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.classifyAll(ctx, valid); err != nil {
		t.Fatal(err)
	}
	if ws[0].reject == nil || ws[0].reject.Reason != contract.ReasonUnknownAdapter {
		t.Errorf("exact vanished version: reject = %+v, want unknown_adapter", ws[0].reject)
	}
	if ws[1].res == nil || ws[1].res.Adapter != fakeDefaultAdapter {
		t.Errorf("default hint: result %+v, want the refreshed default %s", ws[1].res, fakeDefaultAdapter)
	}
}

func TestFollowersShareTheLeadersResult(t *testing.T) {
	f := newFakeClassifier(t)
	p := newTestProcessor(t, f)
	ws := []*work{validWork("1", "shared", ""), validWork("2", "own", "")}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ws, err := p.resolveTargets(ctx, ws)
	if err != nil {
		t.Fatal(err)
	}
	// Another batch leads "shared".
	sharedKey := cacheKey("t:", ws[0].target, "shared", nil)
	fl, leader := p.joins.claim(sharedKey)
	if !leader {
		t.Fatal("first claim must lead")
	}
	done := make(chan error, 1)
	go func() { done <- p.classifyAll(ctx, ws) }()
	// The follower must wait: only "own" reaches the classifier.
	waitUntil(t, 10*time.Second, "the batch classified its own text", func() bool { return f.classified("own") == 1 })
	select {
	case err := <-done:
		t.Fatalf("classifyAll returned (%v) before the leader finished", err)
	default:
	}
	res := &classification{Label: "joy", Model: fakeModel, Adapter: fakeDefaultAdapter, LabelSet: "ls-a"}
	p.joins.finish(sharedKey, fl, res, nil, nil)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if ws[0].res != res || f.classified("shared") != 0 {
		t.Fatalf("follower got %+v and the fake classified the shared text %d times", ws[0].res, f.classified("shared"))
	}

	// A leader that gives up hands the key back: the follower classifies it.
	ws2 := []*work{validWork("3", "shared", "")}
	ws2, _ = p.resolveTargets(ctx, ws2)
	fl, _ = p.joins.claim(sharedKey)
	go func() { done <- p.classifyAll(ctx, ws2) }()
	p.joins.finish(sharedKey, fl, nil, nil, errLeaderGaveUp)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if ws2[0].res == nil || ws2[0].res.Label != fakeLabel(fakeDefaultAdapter, "shared") {
		t.Fatalf("after the leader gave up: %+v", ws2[0].res)
	}
}

func waitUntil(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
