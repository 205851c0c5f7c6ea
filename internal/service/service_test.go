package service

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"
)

func TestEnvName(t *testing.T) {
	if got := EnvName("kafka-brokers"); got != "EMOFLOW_KAFKA_BROKERS" {
		t.Fatalf("EnvName = %s", got)
	}
}

func TestFlagsWinOverEnvironmentOverDefaults(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	a := fs.String("alpha", "default-a", "")
	b := fs.String("beta", "default-b", "")
	c := fs.Int("gamma", 1, "")
	env := map[string]string{"EMOFLOW_ALPHA": "env-a", "EMOFLOW_BETA": "env-b"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	if err := ParseConfig(fs, []string{"-beta", "flag-b"}, lookup); err != nil {
		t.Fatal(err)
	}
	if *a != "env-a" || *b != "flag-b" || *c != 1 {
		t.Fatalf("alpha=%s beta=%s gamma=%d", *a, *b, *c)
	}
}

func TestBadEnvironmentValueIsAConfigError(t *testing.T) {
	fs := flag.NewFlagSet("x", flag.ContinueOnError)
	fs.Int("gamma", 1, "")
	err := ParseConfig(fs, nil, func(k string) (string, bool) { return "many", k == "EMOFLOW_GAMMA" })
	if err == nil || !strings.Contains(err.Error(), "EMOFLOW_GAMMA") {
		t.Fatalf("err = %v", err)
	}
	if err := ParseConfig(flag.NewFlagSet("y", flag.ContinueOnError), []string{"stray"}, func(string) (string, bool) { return "", false }); err == nil {
		t.Fatal("stray argument accepted")
	}
}

// waiter is a component that becomes ready, then finishes its in-flight
// work (a delay) after its context ends.
type waiter struct {
	drain    time.Duration
	finished bool
}

func (w *waiter) RegisterFlags(fs *flag.FlagSet) {}

func (w *waiter) Run(ctx context.Context, rt *Runtime) error {
	rt.Mux.HandleFunc("GET /hello", func(rw http.ResponseWriter, _ *http.Request) { io.WriteString(rw, "hi") })
	rt.SetReady()
	<-ctx.Done()
	time.Sleep(w.drain)
	w.finished = true
	return nil
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestLifecycleHealthReadinessMetricsAndGracefulStop(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	w := &waiter{drain: 50 * time.Millisecond}
	started := make(chan *Runtime, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, "waiter", w, "127.0.0.1:0", nil, func(string) (string, bool) { return "", false }, io.Discard,
			func(rt *Runtime) { started <- rt })
	}()
	rt := <-started
	base := "http://" + rt.Addr
	deadline := time.Now().Add(10 * time.Second)
	for {
		if code, _ := get(t, base+"/readyz"); code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("never ready")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if code, body := get(t, base+"/healthz"); code != 200 || !strings.Contains(body, "ok") {
		t.Fatalf("/healthz = %d %q", code, body)
	}
	if code, body := get(t, base+"/metrics"); code != 200 || !strings.Contains(body, "go_goroutines") || !strings.Contains(body, "process_cpu_seconds_total") {
		t.Fatalf("/metrics = %d, without the Go runtime's or the process's metrics", code)
	}
	// The component's registry holds its own metrics only.
	fams, err := rt.Metrics.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if strings.HasPrefix(f.GetName(), "go_") || strings.HasPrefix(f.GetName(), "process_") {
			t.Fatalf("Runtime.Metrics gathers %s", f.GetName())
		}
	}
	if code, body := get(t, base+"/hello"); code != 200 || body != "hi" {
		t.Fatalf("component handler = %d %q", code, body)
	}
	rt.SetNotReady("draining")
	if code, body := get(t, base+"/readyz"); code != http.StatusServiceUnavailable || !strings.Contains(body, "draining") {
		t.Fatalf("/readyz while not ready = %d %q", code, body)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run = %v", err)
	}
	if !w.finished {
		t.Fatal("Run returned before the component finished its in-flight work")
	}
}

func TestShutdownTimeoutBoundsTheDrain(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	started := make(chan *Runtime, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, "slow", &waiter{drain: time.Hour}, "127.0.0.1:0", []string{"-shutdown-timeout=50ms"},
			func(string) (string, bool) { return "", false }, io.Discard, func(rt *Runtime) { started <- rt })
	}()
	<-started
	cancel()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "shutdown-timeout") {
			t.Fatalf("Run = %v, want the shutdown timeout error", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run ignored -shutdown-timeout")
	}
}

func TestBadConfigurationIsAConfigError(t *testing.T) {
	err := Run(context.Background(), "x", &waiter{}, "127.0.0.1:0", []string{"-log-level=loud"},
		func(string) (string, bool) { return "", false }, io.Discard, nil)
	var ce *ConfigError
	if !errors.As(err, &ce) {
		t.Fatalf("Run = %v, want a ConfigError", err)
	}
}

// lateAPI registers its endpoint and becomes ready only when release is
// closed, as the classifier does after loading its model.
type lateAPI struct{ release chan struct{} }

func (l *lateAPI) RegisterFlags(fs *flag.FlagSet) {}

func (l *lateAPI) Run(ctx context.Context, rt *Runtime) error {
	rt.SetNotReady("loading")
	select {
	case <-l.release:
	case <-ctx.Done():
		return nil
	}
	rt.Mux.HandleFunc("POST /v1/thing", func(rw http.ResponseWriter, _ *http.Request) { io.WriteString(rw, "done") })
	rt.SetReady()
	<-ctx.Done()
	return nil
}

// TestAPIBeforeReadyAnswers503NotNotFound: a client calling the API while
// the component starts gets 503 with Retry-After (retry later), never the
// mux's 404 (which the classifier's clients read as an unknown adapter);
// once ready, the API answers and unknown paths are 404 again.
func TestAPIBeforeReadyAnswers503NotNotFound(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l := &lateAPI{release: make(chan struct{})}
	started := make(chan *Runtime, 1)
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, "late", l, "127.0.0.1:0", []string{"-http-addr=127.0.0.1:0"}, func(string) (string, bool) { return "", false },
			io.Discard, func(rt *Runtime) { started <- rt })
	}()
	rt := <-started
	post := func(path string) (int, string, string) {
		resp, err := http.Post("http://"+rt.Addr+path, "application/json", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Retry-After"), string(b)
	}
	// started fires before the component's Run has said why it is not
	// ready: wait for its reason, so that the check below sees it.
	waitUntil := time.Now().Add(10 * time.Second)
	for _, reason := rt.Ready(); reason != "loading"; _, reason = rt.Ready() {
		if time.Now().After(waitUntil) {
			t.Fatalf("not-ready reason %q, want the component's \"loading\"", reason)
		}
		time.Sleep(time.Millisecond)
	}
	if code, retry, body := post("/v1/thing"); code != http.StatusServiceUnavailable || retry != "1" || !strings.Contains(body, "loading") {
		t.Fatalf("before ready: %d (Retry-After %q) %q, want 503 with Retry-After 1 and the reason", code, retry, body)
	}
	close(l.release)
	deadline := time.Now().Add(10 * time.Second)
	for ready, _ := rt.Ready(); !ready; ready, _ = rt.Ready() {
		if time.Now().After(deadline) {
			t.Fatal("not ready")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if code, _, body := post("/v1/thing"); code != http.StatusOK || body != "done" {
		t.Fatalf("when ready: %d %q", code, body)
	}
	if code, _, _ := post("/v1/nothing"); code != http.StatusNotFound {
		t.Fatalf("unknown path when ready: %d, want 404", code)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestRedisClientMessagesGoToTheComponentLog(t *testing.T) {
	var buf bytes.Buffer
	redisLog{slog.New(slog.NewJSONHandler(&buf, nil))}.Printf(t.Context(), "redis: connection pool: failed to dial after %d attempts: %s\n", 5, "refused")
	var rec struct{ Level, Msg string }
	if err := json.Unmarshal(buf.Bytes(), &rec); err != nil {
		t.Fatalf("not one JSON record: %q (%v)", buf.String(), err)
	}
	if rec.Level != "WARN" || rec.Msg != "redis client: redis: connection pool: failed to dial after 5 attempts: refused" {
		t.Fatalf("record %+v", rec)
	}
}
