package chaos

import (
	"context"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// process is one of the product's binaries (classifier, ingest, sink,
// emoctl) running as a child process, its output appended to a log file.
type process struct {
	name    string
	bin     string
	args    []string
	logPath string
	// httpAddr is where its /readyz answers; empty for emoctl.
	httpAddr string

	cmd    *exec.Cmd
	exited chan error
}

// childEnv is the environment of the children: the suite's own without
// EMOFLOW_* variables, so that only the suite's flags configure them.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "EMOFLOW_") {
			env = append(env, kv)
		}
	}
	return env
}

// start runs the binary; it does not wait for readiness.
func (p *process) start() error {
	f, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("%s log: %w", p.name, err)
	}
	fmt.Fprintf(f, "=== chaos: starting %s %s at %s\n", p.bin, strings.Join(p.args, " "), time.Now().UTC().Format(time.RFC3339Nano))
	cmd := exec.Command(p.bin, p.args...)
	cmd.Stdout, cmd.Stderr, cmd.Env = f, f, childEnv()
	// Its own process group, so that a Ctrl-C of the suite reaches the
	// suite first and the suite stops its children in order.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		f.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	p.cmd, p.exited = cmd, make(chan error, 1)
	go func() {
		err := cmd.Wait()
		f.Close()
		p.exited <- err
	}()
	return nil
}

// waitReady polls /readyz until it answers 200, the process exits, or
// timeout passes.
func (p *process) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.httpAddr+"/readyz", nil)
		if resp, err := client.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case err := <-p.exited:
			p.exited <- err
			return fmt.Errorf("%s exited before it was ready: %v (log: %s)", p.name, err, p.logPath)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s (log: %s)", p.name, timeout, p.logPath)
		}
	}
}

// running reports whether the process has not exited.
func (p *process) running() bool {
	if p.cmd == nil {
		return false
	}
	select {
	case err := <-p.exited:
		p.exited <- err
		return false
	default:
		return true
	}
}

// kill sends SIGKILL and waits for the exit.
func (p *process) kill() error {
	if !p.running() {
		return fmt.Errorf("%s is not running", p.name)
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill -9 %s: %w", p.name, err)
	}
	<-p.exited
	p.exited <- errors.New("killed")
	return nil
}

// stop sends SIGTERM and waits up to timeout for the exit (then SIGKILL),
// returning the exit error.
func (p *process) stop(timeout time.Duration) error {
	if !p.running() {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.exited:
		p.exited <- err
		return err
	case <-time.After(timeout):
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
		err := <-p.exited
		p.exited <- err
		return fmt.Errorf("%s did not stop within %s of SIGTERM; killed", p.name, timeout)
	}
}

// wait waits for the process to exit by itself, up to timeout.
func (p *process) wait(ctx context.Context, timeout time.Duration) error {
	select {
	case err := <-p.exited:
		p.exited <- err
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(timeout):
		return fmt.Errorf("%s still running after %s", p.name, timeout)
	}
}

// freePort returns a loopback address with a port nobody listens on now.
func freePort() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// stablePort returns a free loopback address for a server that is killed
// and started again on the same port: one below the kernel's ephemeral
// range (32768 and up by default), which it never hands to another
// process's port-0 listener or outgoing connection while the server is
// down. It falls back to freePort.
func stablePort() (string, error) {
	for range 50 {
		addr := fmt.Sprintf("127.0.0.1:%d", 20000+mrand.IntN(12000))
		ln, err := net.Listen("tcp", addr)
		if err == nil {
			ln.Close()
			return addr, nil
		}
	}
	return freePort()
}

// services runs scripts/services.sh (the local Kafka, Redis and
// ClickHouse) with args, in the suite's environment (its EMOFLOW_STATE and
// ports).
func services(ctx context.Context, script string, args ...string) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, script, args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w\n%s", filepath.Base(script), strings.Join(args, " "), err, out)
	}
	return nil
}
