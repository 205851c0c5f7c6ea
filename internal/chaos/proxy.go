package chaos

import (
	"context"
	"fmt"
	"net"
	"sync"
	"time"
)

// StallProxy is a TCP proxy between a client and one upstream address that
// can stall: while stalled it accepts connections and keeps them open but
// forwards no bytes in either direction, as a congested or partitioned
// network does (requests neither fail fast nor complete).
type StallProxy struct {
	upstream string
	ln       net.Listener

	mu           sync.Mutex
	stalledUntil time.Time
	resume       chan struct{} // closed by Close, waking stalled pipes
	conns        map[net.Conn]struct{}
	closed       bool
	wg           sync.WaitGroup
}

// NewStallProxy listens on listenAddr (host:port; port 0 picks a free one)
// and forwards every connection to upstream.
func NewStallProxy(listenAddr, upstream string) (*StallProxy, error) {
	ln, err := net.Listen("tcp", listenAddr)
	if err != nil {
		return nil, fmt.Errorf("proxy: listen on %s: %w", listenAddr, err)
	}
	p := &StallProxy{upstream: upstream, ln: ln, resume: make(chan struct{}), conns: map[net.Conn]struct{}{}}
	p.wg.Go(p.accept)
	return p, nil
}

// Addr is the proxy's listen address.
func (p *StallProxy) Addr() string { return p.ln.Addr().String() }

// Stall stops forwarding bytes for d (from now); connections stay open.
func (p *StallProxy) Stall(d time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stalledUntil = time.Now().Add(d)
}

// Close stops listening and closes every connection.
func (p *StallProxy) Close() error {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		_ = c.Close()
	}
	close(p.resume)
	p.mu.Unlock()
	err := p.ln.Close()
	p.wg.Wait()
	return err
}

// waitUnstalled blocks while the proxy is stalled; false once it is closed.
func (p *StallProxy) waitUnstalled() bool {
	for {
		p.mu.Lock()
		closed, wait, resume := p.closed, time.Until(p.stalledUntil), p.resume
		p.mu.Unlock()
		if closed {
			return false
		}
		if wait <= 0 {
			return true
		}
		t := time.NewTimer(min(wait, 50*time.Millisecond))
		select {
		case <-t.C:
		case <-resume:
			t.Stop()
		}
	}
}

func (p *StallProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		_ = c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *StallProxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	_ = c.Close()
}

func (p *StallProxy) accept() {
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return // closed
		}
		if !p.track(client) {
			return
		}
		p.wg.Go(func() { p.serve(client) })
	}
}

func (p *StallProxy) serve(client net.Conn) {
	defer p.untrack(client)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	upstream, err := (&net.Dialer{}).DialContext(ctx, "tcp", p.upstream)
	cancel()
	if err != nil {
		return // the client sees the connection closed, as with the upstream down
	}
	if !p.track(upstream) {
		return
	}
	defer p.untrack(upstream)
	var both sync.WaitGroup
	both.Go(func() { p.pipe(upstream, client) })
	both.Go(func() { p.pipe(client, upstream) })
	both.Wait()
}

// pipe copies src to dst in chunks, holding each chunk while the proxy is
// stalled; when either side ends, both are closed.
func (p *StallProxy) pipe(dst, src net.Conn) {
	defer func() {
		_ = dst.Close()
		_ = src.Close()
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.waitUnstalled() {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // EOF or closed: the other direction ends too
		}
	}
}
