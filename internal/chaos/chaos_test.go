package chaos

import (
	"bufio"
	"context"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emoflow/emoflow/internal/testenv"
)

// echoServer answers every line with the same line.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					if _, err := c.Write([]byte(line)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return ln.Addr().String()
}

func roundTrip(t *testing.T, conn net.Conn, r *bufio.Reader, msg string) time.Duration {
	t.Helper()
	start := time.Now()
	if _, err := conn.Write([]byte(msg + "\n")); err != nil {
		t.Fatal(err)
	}
	got, err := r.ReadString('\n')
	if err != nil {
		t.Fatal(err)
	}
	if got != msg+"\n" {
		t.Fatalf("echo %q, want %q", got, msg)
	}
	return time.Since(start)
}

// TestStallProxyHoldsBytesForTheStall: the proxy forwards both ways; a
// stall holds a request on an open connection for the stall's duration,
// then it completes; afterwards traffic flows at once again.
func TestStallProxyHoldsBytesForTheStall(t *testing.T) {
	p, err := NewStallProxy("127.0.0.1:0", echoServer(t))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	conn, err := net.Dial("tcp", p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
	r := bufio.NewReader(conn)
	if d := roundTrip(t, conn, r, "before"); d > 2*time.Second {
		t.Fatalf("round trip before the stall took %s", d)
	}
	const stall = 600 * time.Millisecond
	p.Stall(stall)
	if d := roundTrip(t, conn, r, "during"); d < stall-50*time.Millisecond {
		t.Fatalf("round trip during a %s stall took only %s", stall, d)
	}
	if d := roundTrip(t, conn, r, "after"); d > 2*time.Second {
		t.Fatalf("round trip after the stall took %s", d)
	}
}

// TestReportLineCountsWhatWasMeasured: the totals line adds up the
// outcomes as measured; one loss or duplicate makes the fault not
// survived and the run not OK.
func TestReportLineCountsWhatWasMeasured(t *testing.T) {
	ok := Outcome{Fault: "a", Messages: 100, DeadLettersOK: true, LagZero: true, DeadlineKept: true, Recovered: time.Second, P99After: 10 * time.Millisecond}
	lost := ok
	lost.Fault, lost.Lost, lost.Problems = "b", 2, []string{"2 messages lost"}
	dup := ok
	dup.Fault, dup.Duplicated, dup.DeadLettersOK = "c", 1, false
	rep := Report{Outcomes: []Outcome{ok, lost, dup}, Deadline: time.Second}
	if got, want := rep.Line(), "faults=3 survived=1 lost=2 duplicated=1 dead_letters_ok=2"; got != want {
		t.Fatalf("line %q, want %q", got, want)
	}
	if rep.OK() {
		t.Fatal("a run with a loss is OK")
	}
	if !(Report{Outcomes: []Outcome{ok}}).OK() {
		t.Fatal("a run without problems is not OK")
	}
	if (Report{}).OK() {
		t.Fatal("a run without faults is OK")
	}
	slow := ok
	slow.DeadlineKept = false
	if slow.Survived() {
		t.Fatal("a fault past the deadline survived")
	}
	if table := rep.Table(); !strings.Contains(table, "FAILED: 2 messages lost") || strings.Count(table, "survived") < 1 {
		t.Fatalf("table:\n%s", table)
	}
}

func TestP99(t *testing.T) {
	var ds []time.Duration
	for i := 1; i <= 200; i++ {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	if got := p99(ds); got != 198*time.Millisecond {
		t.Fatalf("p99 of 1..200 ms = %s, want 198ms", got)
	}
	if got := p99(nil); got != -1 {
		t.Fatalf("p99 of nothing = %s", got)
	}
	if got := p99([]time.Duration{5}); got != 5 {
		t.Fatalf("p99 of one = %s", got)
	}
}

func TestUnknownFaultIsRefused(t *testing.T) {
	cfg := DefaultConfig()
	cfg.Faults = []string{"classifier-kill", "meteor"}
	if _, err := Run(context.Background(), cfg); err == nil || !strings.Contains(err.Error(), `unknown fault "meteor"`) {
		t.Fatalf("err = %v", err)
	}
}

// buildBinaries builds the classifier, ingest and sink into a temporary
// folder.
func buildBinaries(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	cmd := exec.Command("go", "build", "-o", dir+"/", "./cmd/classifier", "./cmd/ingest", "./cmd/sink")
	cmd.Dir = testenv.RepoRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return dir
}

// TestIntegrationChaosShort runs the suite's code on the real services with
// two faults that disturb no other test (the classifier's kill -9 and a
// stall of the proxy in front of it), shortened: nothing lost or
// duplicated, the dead letters right, the lag back to 0 and the live p99
// within the deadline.
func TestIntegrationChaosShort(t *testing.T) {
	brokers, redisAddr, chAddr := testenv.Kafka(t), testenv.Redis(t), testenv.ClickHouse(t)
	script := os.Getenv("EMOFLOW_TEST_SERVICES_SCRIPT")
	if script == "" {
		script = filepath.Join(testenv.RepoRoot(t), "scripts", "services.sh")
	}
	cfg := DefaultConfig()
	cfg.Brokers, cfg.RedisAddr, cfg.ClickHouseAddr, cfg.ServicesScript = strings.Split(brokers, ","), redisAddr, chAddr, script
	cfg.BinDir = buildBinaries(t)
	cfg.WorkDir = t.TempDir()
	cfg.Faults = []string{"classifier-kill", "classifier-stall"}
	cfg.Rate, cfg.Warmup, cfg.Settle = 40, time.Second, 2*time.Second
	cfg.ClassifierDown, cfg.Stall = 2*time.Second, 3*time.Second
	// Generous on a shared machine running the other tests at once.
	cfg.Deadline, cfg.RecoverTimeout = 10*time.Second, 90*time.Second
	cfg.Log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelInfo}))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep, err := Run(ctx, cfg)
	t.Logf("\n%s%s", rep.Table(), rep.Line())
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Outcomes) != 2 {
		t.Fatalf("%d outcomes, want 2", len(rep.Outcomes))
	}
	for _, o := range append([]Outcome{*rep.Baseline}, rep.Outcomes...) {
		if o.Messages < 40 || o.Malformed == 0 {
			t.Errorf("%s: %d valid and %d malformed messages; the stream did not flow", o.Fault, o.Messages, o.Malformed)
		}
	}
	if !rep.OK() {
		for _, name := range []string{"classifier.log", "ingest.log", "sink.log"} {
			if b, err := os.ReadFile(filepath.Join(cfg.WorkDir, name)); err == nil {
				t.Logf("%s (last 4 KiB):\n%s", name, b[max(0, len(b)-4096):])
			}
		}
		t.Fatalf("not every fault survived: %s", rep.Line())
	}
}

// testWriter sends the suite's log to t.Log.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
