package ingest

import (
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/emoflow/emoflow/internal/contract"
	"github.com/emoflow/emoflow/internal/testenv"
)

// buildIngest builds cmd/ingest into a temporary folder.
func buildIngest(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "ingest")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/emoflow/emoflow/cmd/ingest")
	cmd.Dir = testenv.RepoRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build cmd/ingest: %v\n%s", err, out)
	}
	return bin
}

// process is ingest running as a subprocess.
type process struct {
	cmd    *exec.Cmd
	logs   *testenv.LogBuffer
	exited chan error
}

func (h *harness) startProcess(bin string, extra ...string) *process {
	h.t.Helper()
	p := &process{logs: &testenv.LogBuffer{}, exited: make(chan error, 1)}
	p.cmd = exec.Command(bin, h.args(extra...)...)
	p.cmd.Stdout, p.cmd.Stderr = p.logs, p.logs
	if err := p.cmd.Start(); err != nil {
		h.t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	h.t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		select {
		case err := <-p.exited:
			p.exited <- err
		case <-time.After(30 * time.Second):
		}
		if h.t.Failed() {
			h.t.Logf("ingest process log:\n%s", p.logs.Tail(100))
		}
	})
	return p
}

// signal sends sig and waits for the process to exit, returning its exit
// error.
func (p *process) signal(t *testing.T, sig syscall.Signal) error {
	t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.exited:
		p.exited <- err
		return err
	case <-time.After(60 * time.Second):
		t.Fatalf("ingest did not exit within 60s of %v", sig)
		return nil
	}
}

func TestIntegrationKilledMidStreamLosesNothing(t *testing.T) {
	h := newHarness(t, 4)
	bin := buildIngest(t)
	// About 400 messages/s, so that the kill lands mid-stream.
	h.fake.delay.Store(int64(20 * time.Millisecond))
	const n = 3000
	msgs := make([]contract.ChatMessage, n)
	for i := range msgs {
		msgs[i] = chat(fmt.Sprintf("k%d", i), fmt.Sprintf("crash text %d", i), "")
	}
	h.produceChats(msgs)
	slow := []string{"-batch-size", "8", "-workers", "1", "-max-in-flight", "64"}

	p := h.startProcess(bin, slow...)
	h.waitCount(h.events, 300, 2*time.Minute)
	err := p.signal(t, syscall.SIGKILL)
	var exitErr *exec.ExitError
	if !errors.As(err, &exitErr) {
		t.Fatalf("want a killed process, got %v", err)
	}
	// Offsets committed before the kill never pass a message without an
	// event.
	committed := h.committed()
	prefix, _ := completedPrefix(h.readEvents(), h.input, 4)
	for part, c := range committed {
		if c > prefix[part] {
			t.Fatalf("partition %d committed at %d but offset %d has no event", part, c, prefix[part])
		}
	}
	if eventsAtKill := h.count(h.events); eventsAtKill >= n {
		t.Logf("all %d messages had events before the kill; the restart only checks recovery", n)
	}

	p = h.startProcess(bin, slow...)
	waitUntil(t, 3*time.Minute, "every message has an event", func() bool {
		if h.count(h.events) < n {
			return false
		}
		seen := map[string]bool{}
		for _, ev := range h.readEvents() {
			seen[ev.MessageID] = true
		}
		return len(seen) == n
	})
	waitUntil(t, time.Minute, "all offsets committed", func() bool { return equalOffsets(h.committed(), h.endOffsets(h.input)) })
	if err := p.signal(t, syscall.SIGTERM); err != nil {
		t.Fatalf("ingest did not exit cleanly after SIGTERM: %v", err)
	}
	counts := map[string]int{}
	for _, ev := range h.readEvents() {
		counts[ev.MessageID]++
	}
	dups := 0
	for _, m := range msgs {
		if counts[m.ID] == 0 {
			t.Errorf("no event for %s", m.ID)
		}
		dups += max(counts[m.ID]-1, 0)
	}
	t.Logf("%d events for %d messages: %d redelivered after the kill (at-least-once)", len(counts)+dups, n, dups)
}
