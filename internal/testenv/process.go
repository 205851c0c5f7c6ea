package testenv

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// BuildCommand compiles the main package pkg (a path from the repository
// root, such as "./cmd/sink") into a temporary folder and returns the
// binary's path.
func BuildCommand(t testing.TB, pkg string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), filepath.Base(pkg))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, pkg)
	cmd.Dir = RepoRoot(t)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", pkg, err, out)
	}
	return bin
}

// Process is a binary running as a child process of a test, for tests
// that kill it (Cmd.Process.Signal) and start it again.
type Process struct {
	Cmd  *exec.Cmd
	name string
	done chan error
}

// StartProcess starts bin with args, its output going to a log file. At
// the end of the test the process is killed if still running and, if the
// test failed, the end of its log is logged.
func StartProcess(t testing.TB, bin string, args []string, name string) *Process {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "process.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &Process{Cmd: cmd, name: name, done: make(chan error, 1)}
	go func() {
		p.done <- cmd.Wait()
		logFile.Close()
	}()
	t.Cleanup(func() {
		// Whatever happened, leave no process behind.
		_ = cmd.Process.Kill()
		<-p.done
		p.done <- nil
		if t.Failed() {
			out, _ := os.ReadFile(logPath)
			if len(out) > 20000 {
				out = out[len(out)-20000:]
			}
			t.Logf("%s log (end):\n%s", name, out)
		}
	})
	return p
}

// Wait waits for the process to exit and returns what it exited with; the
// test fails if that takes longer than timeout.
func (p *Process) Wait(t testing.TB, timeout time.Duration) error {
	t.Helper()
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(timeout):
		t.Fatalf("%s (pid %d) did not exit within %s", p.name, p.Cmd.Process.Pid, timeout)
		return nil
	}
}

// WaitUntil polls cond until it holds or timeout passes; then it fails the
// test with cond's description of the state.
func WaitUntil(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, state := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s; %s", timeout, what, state)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
