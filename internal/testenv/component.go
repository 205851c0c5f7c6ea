package testenv

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/emoflow/emoflow/internal/service"
)

// Running is a component (ingest, classifier, sink) that a test started
// in-process with service.Run.
type Running struct {
	Name string
	// RT is the component's runtime: its HTTP address, metrics and
	// readiness.
	RT     *service.Runtime
	cancel context.CancelFunc
	done   chan error
	mu     sync.Mutex
	logs   bytes.Buffer
	err    error
	ended  bool
}

func (r *Running) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.logs.Write(p)
}

// Logs returns what the component logged so far.
func (r *Running) Logs() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.logs.String()
}

// Start runs c as name with args (an HTTP address on a free port is added)
// and waits until it is ready. The component is stopped when the test ends;
// its log is printed if the test failed.
func Start(t testing.TB, name string, c service.Component, args ...string) *Running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &Running{Name: name, cancel: cancel, done: make(chan error, 1)}
	started := make(chan *service.Runtime, 1)
	go func() {
		r.done <- service.Run(ctx, name, c, "127.0.0.1:0", append([]string{"-http-addr=127.0.0.1:0", "-shutdown-timeout=60s"}, args...),
			func(string) (string, bool) { return "", false }, r, func(rt *service.Runtime) { started <- rt })
	}()
	select {
	case r.RT = <-started:
	case err := <-r.done:
		t.Fatalf("%s exited at start: %v\n%s", name, err, r.Logs())
	case <-time.After(60 * time.Second):
		t.Fatalf("%s did not start", name)
	}
	t.Cleanup(func() {
		if err := r.Stop(); err != nil {
			t.Errorf("%s stopped with an error: %v", name, err)
		}
		if t.Failed() {
			t.Logf("%s log:\n%s", name, r.Logs())
		}
	})
	deadline := time.Now().Add(3 * time.Minute)
	for {
		if ok, _ := r.RT.Ready(); ok {
			return r
		}
		select {
		case err := <-r.done:
			r.finish(err)
			t.Fatalf("%s exited before it was ready: %v\n%s", name, err, r.Logs())
		default:
		}
		if time.Now().After(deadline) {
			_, why := r.RT.Ready()
			t.Fatalf("%s not ready after 3 minutes: %s", name, why)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (r *Running) finish(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.ended {
		r.ended, r.err = true, err
	}
}

// Stop shuts the component down gracefully (as SIGTERM would) and returns
// the error service.Run returned. Calling it again returns the same error.
func (r *Running) Stop() error {
	r.cancel()
	r.mu.Lock()
	ended := r.ended
	r.mu.Unlock()
	if !ended {
		select {
		case err := <-r.done:
			r.finish(err)
		case <-time.After(90 * time.Second):
			r.finish(context.DeadlineExceeded)
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}
