package sink

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/emoflow/emoflow/internal/testenv"
)

// buildSink compiles cmd/sink into a temporary folder.
func buildSink(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "sink")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/sink")
	cmd.Dir = testenv.RepoRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/sink: %v\n%s", err, out)
	}
	return bin
}

// sinkProcess is the sink binary running as a child process.
type sinkProcess struct {
	cmd  *exec.Cmd
	log  string
	done chan error
}

func startSinkProcess(t *testing.T, bin string, args []string, name string) *sinkProcess {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &sinkProcess{cmd: cmd, log: logPath, done: make(chan error, 1)}
	go func() {
		p.done <- cmd.Wait()
		logFile.Close()
	}()
	t.Cleanup(func() {
		// Whatever happened, leave no process behind.
		_ = cmd.Process.Kill()
		<-p.done
		if t.Failed() {
			out, _ := os.ReadFile(logPath)
			t.Logf("%s log:\n%s", name, out)
		}
	})
	return p
}

func (p *sinkProcess) wait(t *testing.T, timeout time.Duration) error {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(timeout):
		t.Fatalf("sink process %d did not exit within %s", p.cmd.Process.Pid, timeout)
		return nil
	}
}

func TestSinkKilledMidStreamStoresEveryEventExactlyOnce(t *testing.T) {
	in := newIntegration(t)
	bin := buildSink(t)
	events := testEvents(8000)
	// Small batches and a producer faster than the sink: the sink is always
	// busy, so a kill can fall between an insert and its commit, or during an
	// insert.
	args := in.args("-batch-size=200", "-flush-interval=50ms")
	produced := in.produceSlowly(t, events, 500, 20*time.Millisecond)

	// Kill -9 three times, at different points of the stream, restarting
	// each time.
	sink := startSinkProcess(t, bin, args, "sink 1")
	for i, storedBeforeKill := range []int64{1000, 3000, 5000} {
		waitUntil(t, 2*time.Minute, fmt.Sprintf("%d events stored", storedBeforeKill), func() (bool, string) {
			n := in.dedupCount(t)
			return n >= storedBeforeKill, fmt.Sprintf("events_dedup has %d rows", n)
		})
		if err := sink.cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = sink.wait(t, 30*time.Second)
		atKill := in.dedupCount(t)
		if atKill >= int64(len(events)) {
			t.Fatalf("all %d events were stored before kill %d; the test proves nothing", len(events), i+1)
		}
		t.Logf("kill %d: %d of %d events stored", i+1, atKill, len(events))
		sink = startSinkProcess(t, bin, args, fmt.Sprintf("sink %d", i+2))
	}
	if err := <-produced; err != nil {
		t.Fatal(err)
	}
	in.waitForDedupCount(t, int64(len(events)), 3*time.Minute)
	in.checkEachEventOnce(t, events)
	in.checkPerMinuteCounts(t, events)
	t.Logf("events holds %d rows for %d events (re-inserted ones not merged away yet)",
		in.queryUint64(t, "SELECT count() FROM ${database}.events"), len(events))

	if err := sink.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := sink.wait(t, 60*time.Second); err != nil {
		t.Errorf("the last sink exited with %v after SIGTERM, want 0", err)
	}
	if ok, state := in.committedToTheEnd(t); !ok {
		t.Errorf("offsets not committed to the end after SIGTERM: %s", state)
	}
}
