package classifyclient

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emoflow/emoflow/internal/classifyapi"
)

// fakeServer is a classifier endpoint whose answers the test scripts.
type fakeServer struct {
	*httptest.Server
	calls atomic.Int32
	mu    sync.Mutex
	reqs  []classifyapi.ClassifyRequest
}

// newFake starts an endpoint; answer writes the answer to the n-th (from 1)
// classify request, or nil for a well-formed success.
func newFake(t *testing.T, answer func(n int, w http.ResponseWriter, r *http.Request) bool) *fakeServer {
	t.Helper()
	f := &fakeServer{}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/classify", func(w http.ResponseWriter, r *http.Request) {
		n := int(f.calls.Add(1))
		var req classifyapi.ClassifyRequest
		if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		f.mu.Lock()
		f.reqs = append(f.reqs, req)
		f.mu.Unlock()
		if answer != nil && answer(n, w, r) {
			return
		}
		writeResults(w, req)
	})
	mux.HandleFunc("GET /v1/adapters", func(w http.ResponseWriter, r *http.Request) {
		n := int(f.calls.Add(1))
		if answer != nil && answer(n, w, r) {
			return
		}
		_ = json.NewEncoder(w).Encode(classifyapi.AdaptersResponse{
			Model: "glm-test", Default: "emo@1",
			Adapters: []classifyapi.AdapterInfo{{ID: "emo", Version: "1", Method: "lora", LabelSet: "ls1", Default: true}},
		})
	})
	f.Server = httptest.NewServer(mux)
	t.Cleanup(f.Close)
	return f
}

func (f *fakeServer) requests() []classifyapi.ClassifyRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]classifyapi.ClassifyRequest(nil), f.reqs...)
}

func writeResults(w http.ResponseWriter, req classifyapi.ClassifyRequest) {
	resp := classifyapi.ClassifyResponse{Model: "glm-test", Adapter: "emo@1", LabelSet: "ls1", Labels: []string{"joy", "anger"}}
	for range req.Texts {
		resp.Results = append(resp.Results, classifyapi.Result{Label: "joy", Probabilities: map[string]float64{"joy": 0.9, "anger": 0.1}})
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}

func writeError(w http.ResponseWriter, status int, code string, header ...string) {
	for i := 0; i+1 < len(header); i += 2 {
		w.Header().Set(header[i], header[i+1])
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(classifyapi.ErrorResponse{Error: classifyapi.ErrorBody{Code: code, Message: "scripted " + code}})
}

// testConfig has short back-offs so that retries do not slow the tests.
func testConfig(urls ...string) Config {
	return Config{
		Endpoints:      urls,
		InitialBackoff: time.Millisecond,
		MaxBackoff:     5 * time.Millisecond,
		// Long cool-downs: an endpoint marked down stays down for the
		// whole test, whatever the machine's speed.
		EndpointCooldown:    time.Minute,
		MaxEndpointCooldown: time.Minute,
	}
}

func newClient(t *testing.T, cfg Config) *Client {
	t.Helper()
	c, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func request(texts ...string) classifyapi.ClassifyRequest {
	return classifyapi.ClassifyRequest{Texts: texts, Adapter: "emo@1", Priority: classifyapi.PriorityLive}
}

func TestClassifySendsRequestAndReturnsResults(t *testing.T) {
	f := newFake(t, nil)
	c := newClient(t, testConfig(f.URL))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := c.Classify(ctx, request("a", "b", "c"))
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Results) != 3 || resp.Adapter != "emo@1" || resp.LabelSet != "ls1" {
		t.Fatalf("unexpected response %+v", resp)
	}
	reqs := f.requests()
	if len(reqs) != 1 || len(reqs[0].Texts) != 3 || reqs[0].Adapter != "emo@1" || reqs[0].Priority != "live" {
		t.Fatalf("server got %+v", reqs)
	}
}

func TestRetriesOnlyRetryableErrors(t *testing.T) {
	cases := []struct {
		name      string
		status    int
		code      string
		wantCalls int32
		wantOK    bool
	}{
		// Scripted: the first two answers fail, the third succeeds.
		{"internal error is retried", 500, classifyapi.CodeInternal, 3, true},
		{"bad gateway is retried", 502, "", 3, true},
		{"unavailable is retried", 503, classifyapi.CodeUnavailable, 3, true},
		{"server deadline is retried while time is left", 504, classifyapi.CodeDeadline, 3, true},
		// A refused token is the client's configuration: retried (ingest
		// keeps the messages) rather than failing them.
		{"unauthorized is retried", 401, classifyapi.CodeUnauthorized, 3, true},
		{"forbidden is retried", 403, classifyapi.CodeForbidden, 3, true},
		{"bad request is not retried", 400, classifyapi.CodeBadRequest, 1, false},
		{"unknown adapter is not retried", 404, classifyapi.CodeUnknownAdapter, 1, false},
		{"a 404 that is not the API's is retried", 404, "", 3, true},
		{"too large is not retried", 413, classifyapi.CodeTooLarge, 1, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newFake(t, func(n int, w http.ResponseWriter, _ *http.Request) bool {
				if n <= 2 {
					writeError(w, tc.status, tc.code)
					return true
				}
				return false
			})
			cfg := testConfig(f.URL)
			// One endpoint: a 503 marks it down, but with nothing else to
			// use the client must still probe it.
			cfg.EndpointCooldown, cfg.MaxEndpointCooldown = time.Millisecond, time.Millisecond
			c := newClient(t, cfg)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := c.Classify(ctx, request("x"))
			if got := f.calls.Load(); got != tc.wantCalls {
				t.Errorf("server got %d calls, want %d", got, tc.wantCalls)
			}
			if tc.wantOK {
				if err != nil {
					t.Fatalf("want success after retries, got %v", err)
				}
				return
			}
			var apiErr *APIError
			if !errors.As(err, &apiErr) {
				t.Fatalf("want *APIError, got %T %v", err, err)
			}
			if apiErr.Status != tc.status || apiErr.Code != tc.code || IsRetryable(err) {
				t.Fatalf("got %+v (retryable %v), want status %d code %s, not retryable", apiErr, IsRetryable(err), tc.status, tc.code)
			}
		})
	}
}

func TestSendsTheBearerToken(t *testing.T) {
	f := newFake(t, func(_ int, w http.ResponseWriter, r *http.Request) bool {
		if r.Header.Get("Authorization") != "Bearer token-of-this-client-42" {
			writeError(w, 401, classifyapi.CodeUnauthorized)
			return true
		}
		return false
	})
	cfg := testConfig(f.URL)
	cfg.Token = "token-of-this-client-42"
	if _, err := newClient(t, cfg).Classify(context.Background(), request("x")); err != nil {
		t.Fatalf("with the token: %v", err)
	}
	cfg.Token, cfg.MaxAttempts = "", 1
	var apiErr *APIError
	if _, err := newClient(t, cfg).Classify(context.Background(), request("x")); !errors.As(err, &apiErr) || apiErr.Status != 401 {
		t.Fatalf("without the token: %v, want 401", err)
	}
}

func TestGivesUpAfterMaxAttempts(t *testing.T) {
	f := newFake(t, func(_ int, w http.ResponseWriter, _ *http.Request) bool {
		writeError(w, 500, classifyapi.CodeInternal)
		return true
	})
	cfg := testConfig(f.URL)
	cfg.MaxAttempts = 3
	c := newClient(t, cfg)
	_, err := c.Classify(context.Background(), request("x"))
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.Status != 500 || !IsRetryable(err) {
		t.Fatalf("want a retryable 500 *APIError, got %v", err)
	}
	if got := f.calls.Load(); got != 3 {
		t.Fatalf("server got %d calls, want 3", got)
	}
}

func TestBadResponseIsRetried(t *testing.T) {
	f := newFake(t, func(n int, w http.ResponseWriter, _ *http.Request) bool {
		if n == 1 {
			writeResults(w, request()) // no results for one text
			return true
		}
		return false
	})
	c := newClient(t, testConfig(f.URL))
	if _, err := c.Classify(context.Background(), request("x")); err != nil {
		t.Fatal(err)
	}
	if got := f.calls.Load(); got != 2 {
		t.Fatalf("server got %d calls, want 2", got)
	}
}

func TestOverloadMovesToAnotherEndpointAndIsRemembered(t *testing.T) {
	busy := newFake(t, func(_ int, w http.ResponseWriter, _ *http.Request) bool {
		writeError(w, 429, classifyapi.CodeOverloaded, "Retry-After", "60")
		return true
	})
	idle := newFake(t, nil)
	c := newClient(t, testConfig(busy.URL, idle.URL))
	for i := range 10 {
		if _, err := c.Classify(context.Background(), request("x")); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	// The overloaded endpoint is tried at most once: then its Retry-After
	// keeps it out of the rotation.
	if got := busy.calls.Load(); got > 1 {
		t.Fatalf("overloaded endpoint got %d calls, want at most 1", got)
	}
	if got := idle.calls.Load(); got != 10 {
		t.Fatalf("idle endpoint got %d calls, want 10", got)
	}
	if !c.OverloadedUntil().IsZero() {
		t.Fatal("OverloadedUntil is set although one endpoint takes work")
	}
}

func TestOverloadEverywhereIsBackPressure(t *testing.T) {
	f := newFake(t, func(_ int, w http.ResponseWriter, _ *http.Request) bool {
		writeError(w, 429, classifyapi.CodeOverloaded, "Retry-After", "60")
		return true
	})
	c := newClient(t, testConfig(f.URL))
	// The caller cannot wait 60s: the client must not hammer the endpoint
	// again but give up at once, saying why.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := c.Classify(ctx, request("x"))
	if err == nil {
		t.Fatal("want an error")
	}
	if !IsOverloaded(err) || !errors.Is(err, context.DeadlineExceeded) || IsRetryable(err) {
		t.Fatalf("want a deadline error wrapping the overload, got %v", err)
	}
	if got := f.calls.Load(); got != 1 {
		t.Fatalf("server got %d calls, want 1", got)
	}
	until := c.OverloadedUntil()
	// Retry-After: 60 is capped by MaxRetryAfter (30s by default).
	if !until.After(time.Now().Add(20*time.Second)) || until.After(time.Now().Add(31*time.Second)) {
		t.Fatalf("OverloadedUntil = %v, want about 30s from now", until)
	}
}

func TestOverloadWaitsForRetryAfter(t *testing.T) {
	var firstAt, secondAt atomic.Int64 // UnixNano of the two requests
	f := newFake(t, func(n int, w http.ResponseWriter, _ *http.Request) bool {
		if n == 1 {
			firstAt.Store(time.Now().UnixNano())
			writeError(w, 429, classifyapi.CodeOverloaded, "Retry-After", "1")
			return true
		}
		secondAt.Store(time.Now().UnixNano())
		return false
	})
	c := newClient(t, testConfig(f.URL))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := c.Classify(ctx, request("x")); err != nil {
		t.Fatal(err)
	}
	if got := f.calls.Load(); got != 2 {
		t.Fatalf("server got %d calls, want 2", got)
	}
	// A lower bound only: the retry must not come before Retry-After.
	if gap := time.Duration(secondAt.Load() - firstAt.Load()); gap < time.Second {
		t.Fatalf("retried %v after a 429 with Retry-After: 1", gap)
	}
}

func TestDeadlineIsPropagated(t *testing.T) {
	f := newFake(t, func(n int, w http.ResponseWriter, _ *http.Request) bool {
		if n == 1 {
			writeError(w, 503, classifyapi.CodeUnavailable)
			return true
		}
		return false
	})
	cfg := testConfig(f.URL)
	cfg.EndpointCooldown, cfg.MaxEndpointCooldown = time.Millisecond, time.Millisecond
	c := newClient(t, cfg)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if _, err := c.Classify(ctx, request("x")); err != nil {
		t.Fatal(err)
	}
	reqs := f.requests()
	if len(reqs) != 2 {
		t.Fatalf("got %d requests, want 2", len(reqs))
	}
	for i, r := range reqs {
		if r.DeadlineMs <= 0 || r.DeadlineMs > 5000 {
			t.Errorf("request %d: deadline_ms = %d, want in (0, 5000]", i, r.DeadlineMs)
		}
	}
	if reqs[1].DeadlineMs > reqs[0].DeadlineMs {
		t.Errorf("retry has a later deadline (%d ms) than the first try (%d ms)", reqs[1].DeadlineMs, reqs[0].DeadlineMs)
	}

	// Without a deadline the server's default applies; a shorter deadline
	// set by the caller is kept.
	if _, err := c.Classify(context.Background(), request("y")); err != nil {
		t.Fatal(err)
	}
	req := request("z")
	req.DeadlineMs = 100
	if _, err := c.Classify(ctx, req); err != nil {
		t.Fatal(err)
	}
	reqs = f.requests()
	if reqs[2].DeadlineMs != 0 {
		t.Errorf("no deadline: deadline_ms = %d, want 0", reqs[2].DeadlineMs)
	}
	if reqs[3].DeadlineMs != 100 {
		t.Errorf("caller's shorter deadline: deadline_ms = %d, want 100", reqs[3].DeadlineMs)
	}
}

func TestCallerDeadlineCancelsTheRequest(t *testing.T) {
	cancelled := make(chan struct{})
	f := newFake(t, func(_ int, _ http.ResponseWriter, r *http.Request) bool {
		<-r.Context().Done() // the server sees the client go away
		close(cancelled)
		return true
	})
	c := newClient(t, testConfig(f.URL))
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := c.Classify(ctx, request("x"))
	if !errors.Is(err, context.DeadlineExceeded) || IsRetryable(err) {
		t.Fatalf("want a non-retryable deadline error, got %v", err)
	}
	select {
	case <-cancelled:
	case <-time.After(10 * time.Second):
		t.Fatal("the server never saw the request cancelled")
	}
	if got := f.calls.Load(); got != 1 {
		t.Fatalf("server got %d calls, want 1", got)
	}
}

func TestLoadIsSpreadOverEndpoints(t *testing.T) {
	const endpoints, perEndpoint = 3, 2
	// Every request blocks until all have arrived, so that the client has
	// to choose while requests are outstanding: least-outstanding must give
	// each endpoint the same share.
	var arrived sync.WaitGroup
	arrived.Add(endpoints * perEndpoint)
	release := make(chan struct{})
	var blocking atomic.Bool
	blocking.Store(true)
	var fakes []*fakeServer
	var urls []string
	for range endpoints {
		f := newFake(t, func(int, http.ResponseWriter, *http.Request) bool {
			if blocking.Load() {
				arrived.Done()
				<-release
			}
			return false
		})
		fakes = append(fakes, f)
		urls = append(urls, f.URL)
	}
	c := newClient(t, testConfig(urls...))
	var wg sync.WaitGroup
	errs := make(chan error, endpoints*perEndpoint)
	for range endpoints * perEndpoint {
		wg.Go(func() {
			_, err := c.Classify(context.Background(), request("x"))
			errs <- err
		})
	}
	waited := make(chan struct{})
	go func() { arrived.Wait(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(20 * time.Second):
		close(release)
		t.Fatal("requests did not all arrive: some endpoint got more than its share and blocked")
	}
	close(release)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for i, f := range fakes {
		if got := f.calls.Load(); got != perEndpoint {
			t.Errorf("endpoint %d got %d calls, want %d", i, got, perEndpoint)
		}
	}

	// Sequential calls on idle endpoints go round robin.
	blocking.Store(false)
	for _, f := range fakes {
		f.calls.Store(0)
	}
	for range 3 * endpoints {
		if _, err := c.Classify(context.Background(), request("y")); err != nil {
			t.Fatal(err)
		}
	}
	for i, f := range fakes {
		if got := f.calls.Load(); got != 3 {
			t.Errorf("round robin: endpoint %d got %d calls, want 3", i, got)
		}
	}
}

func TestDownEndpointIsSkipped(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := "http://" + ln.Addr().String()
	ln.Close() // nothing listens there any more: connections are refused
	up := newFake(t, nil)

	var mu sync.Mutex
	tries := map[string]int{}
	cfg := testConfig(down, up.URL)
	cfg.OnAttempt = func(a Attempt) {
		mu.Lock()
		tries[a.Endpoint]++
		mu.Unlock()
	}
	c := newClient(t, cfg)
	for i := range 10 {
		if _, err := c.Classify(context.Background(), request("x")); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	if _, err := c.Adapters(context.Background()); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if tries[down] > 1 {
		t.Fatalf("down endpoint tried %d times, want at most 1", tries[down])
	}
	if tries[up.URL] != 11 {
		t.Fatalf("up endpoint tried %d times, want 11", tries[up.URL])
	}
}

func TestAllEndpointsDownIsATransportError(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := "http://" + ln.Addr().String()
	ln.Close()
	cfg := testConfig(down)
	cfg.MaxAttempts = 2
	c := newClient(t, cfg)
	_, err = c.Adapters(context.Background())
	var tErr *TransportError
	if !errors.As(err, &tErr) || !IsRetryable(err) {
		t.Fatalf("want a retryable *TransportError, got %T %v", err, err)
	}
}

func TestAdapters(t *testing.T) {
	f := newFake(t, func(n int, w http.ResponseWriter, _ *http.Request) bool {
		if n == 1 {
			writeError(w, 503, classifyapi.CodeUnavailable)
			return true
		}
		return false
	})
	cfg := testConfig(f.URL)
	cfg.EndpointCooldown, cfg.MaxEndpointCooldown = time.Millisecond, time.Millisecond
	c := newClient(t, cfg)
	resp, err := c.Adapters(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if resp.Default != "emo@1" || len(resp.Adapters) != 1 || resp.Adapters[0].Ref() != "emo@1" {
		t.Fatalf("unexpected adapters %+v", resp)
	}
}

func TestCancelledContextIsNotRetried(t *testing.T) {
	f := newFake(t, nil)
	c := newClient(t, testConfig(f.URL))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err := c.Classify(ctx, request("x"))
	if !errors.Is(err, context.Canceled) || IsRetryable(err) {
		t.Fatalf("want a non-retryable cancellation, got %v", err)
	}
	if got := f.calls.Load(); got != 0 {
		t.Fatalf("server got %d calls, want 0", got)
	}
}

func TestNonJSONErrorBody(t *testing.T) {
	f := newFake(t, func(_ int, w http.ResponseWriter, _ *http.Request) bool {
		http.Error(w, "upstream says no", http.StatusBadRequest)
		return true
	})
	c := newClient(t, testConfig(f.URL))
	_, err := c.Classify(context.Background(), request("x"))
	var apiErr *APIError
	if !errors.As(err, &apiErr) || apiErr.Status != 400 || apiErr.Code != "" || apiErr.Message != "upstream says no" {
		t.Fatalf("got %#v", err)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	cases := map[string]time.Duration{
		"":                              0,
		"3":                             3 * time.Second,
		"0.5":                           500 * time.Millisecond,
		"-1":                            0,
		"soon":                          0,
		"Thu, 02 Jan 2025 03:04:15 GMT": 10 * time.Second,
		"Thu, 02 Jan 2025 03:04:00 GMT": 0, // in the past
	}
	for in, want := range cases {
		if got := parseRetryAfter(in, now); got != want {
			t.Errorf("parseRetryAfter(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestNewRejectsBadEndpoints(t *testing.T) {
	for _, eps := range [][]string{nil, {"127.0.0.1:8080"}, {"ftp://x"}, {"http://"}} {
		if _, err := New(Config{Endpoints: eps}); err == nil {
			t.Errorf("New(%q) accepted", eps)
		}
	}
}
