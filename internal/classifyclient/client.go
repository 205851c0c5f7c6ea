// Package classifyclient owns the Go client of the classifier's HTTP API
// (the wire types are in internal/classifyapi). One Client spreads calls
// over several classifier endpoints (least outstanding requests first,
// skipping endpoints that are down or overloaded), retries what may succeed
// when retried (with exponential back-off), derives every request's
// deadline_ms from the caller's context, and reports overload so that
// callers can slow down.
package classifyclient

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/emoflow/emoflow/internal/classifyapi"
)

// Config configures a Client. Zero durations and counts take the defaults
// named in their comments.
type Config struct {
	// Endpoints are the base URLs of the classifier workers, such as
	// "http://10.0.0.5:8080". At least one is required.
	Endpoints []string
	// MaxAttempts bounds the tries of one call, the first one included
	// (default 4). The caller's context bounds them too.
	MaxAttempts int
	// InitialBackoff and MaxBackoff bound the exponential, jittered wait
	// between tries (defaults 50ms and 2s).
	InitialBackoff time.Duration
	MaxBackoff     time.Duration
	// EndpointCooldown is how long an endpoint that could not be reached, or
	// answered 503, is skipped; it doubles with every further consecutive
	// failure up to MaxEndpointCooldown (defaults 500ms and 30s).
	EndpointCooldown    time.Duration
	MaxEndpointCooldown time.Duration
	// DefaultRetryAfter is how long an endpoint that answered 429 without a
	// usable Retry-After is left alone (default 1s); MaxRetryAfter caps
	// what servers ask for (default 30s).
	DefaultRetryAfter time.Duration
	MaxRetryAfter     time.Duration
	// HTTPClient sends the requests; nil means a client with keep-alive
	// connections sized for concurrent calls.
	HTTPClient *http.Client
	// TLS is the TLS configuration of the default HTTP client (https
	// endpoints); nil: Go's defaults (the system's roots).
	TLS *tls.Config
	// Token, when set, is sent as "Authorization: Bearer <Token>" (the
	// classifier's -tokens-file).
	Token string
	// OnAttempt, when set, is called after every HTTP attempt, for metrics.
	// It must not block.
	OnAttempt func(Attempt)
}

// Attempt describes one HTTP request to one endpoint.
type Attempt struct {
	// Op is "classify" or "adapters".
	Op       string
	Endpoint string
	// Status is the HTTP status, 0 when no answer came.
	Status   int
	Err      error
	Duration time.Duration
}

// Client calls the classifier API on several endpoints. It is safe for
// concurrent use.
type Client struct {
	cfg  Config
	http *http.Client

	mu        sync.Mutex
	endpoints []*endpoint
	// rotor breaks ties between equally loaded endpoints, so that an idle
	// pool is used round robin rather than always from its first member.
	rotor int
}

// endpoint is one classifier worker and what the client knows of its
// health. Fields are guarded by Client.mu.
type endpoint struct {
	base        string
	outstanding int
	// failures counts consecutive connection failures and 503s.
	failures       int
	downUntil      time.Time
	throttledUntil time.Time
}

// New returns a Client for cfg.
func New(cfg Config) (*Client, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("classifyclient: no endpoints")
	}
	setDefault(&cfg.MaxAttempts, 4)
	setDefault(&cfg.InitialBackoff, 50*time.Millisecond)
	setDefault(&cfg.MaxBackoff, 2*time.Second)
	setDefault(&cfg.EndpointCooldown, 500*time.Millisecond)
	setDefault(&cfg.MaxEndpointCooldown, 30*time.Second)
	setDefault(&cfg.DefaultRetryAfter, time.Second)
	setDefault(&cfg.MaxRetryAfter, 30*time.Second)
	c := &Client{cfg: cfg, http: cfg.HTTPClient}
	if c.http == nil {
		tr := http.DefaultTransport.(*http.Transport).Clone()
		// Many batches run at once; the default of 2 idle connections per
		// host would open and close connections all the time.
		tr.MaxIdleConnsPerHost = 64
		if cfg.TLS != nil {
			tr.TLSClientConfig = cfg.TLS
		}
		c.http = &http.Client{Transport: tr}
	}
	for _, raw := range cfg.Endpoints {
		u, err := url.Parse(strings.TrimSpace(raw))
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return nil, fmt.Errorf("classifyclient: endpoint %q: want an http(s) base URL", raw)
		}
		c.endpoints = append(c.endpoints, &endpoint{base: strings.TrimRight(u.String(), "/")})
	}
	return c, nil
}

func setDefault[T int | time.Duration](v *T, def T) {
	if *v <= 0 {
		*v = def
	}
}

// Classify sends req to one of the endpoints and returns its answer, trying
// again (on another endpoint when there is one) after retryable failures.
// The request's DeadlineMs is set from ctx's deadline at every try (or kept,
// when the caller set a shorter one), so that the server drops work the
// caller no longer waits for. Errors are *APIError, *TransportError or the
// context's error, wrapped.
func (c *Client) Classify(ctx context.Context, req classifyapi.ClassifyRequest) (*classifyapi.ClassifyResponse, error) {
	if len(req.Texts) == 0 {
		return nil, errors.New("classify: no texts")
	}
	var resp classifyapi.ClassifyResponse
	build := func() ([]byte, error) {
		r := req
		if dl, ok := ctx.Deadline(); ok {
			ms := time.Until(dl).Milliseconds()
			if ms <= 0 {
				return nil, context.DeadlineExceeded
			}
			if r.DeadlineMs <= 0 || ms < r.DeadlineMs {
				r.DeadlineMs = ms
			}
		}
		return json.Marshal(r)
	}
	check := func() error {
		if len(resp.Results) != len(req.Texts) {
			return fmt.Errorf("%w: %d results for %d texts", ErrBadResponse, len(resp.Results), len(req.Texts))
		}
		return nil
	}
	if err := c.call(ctx, "classify", http.MethodPost, "/v1/classify", build, &resp, check); err != nil {
		return nil, fmt.Errorf("classify %d texts: %w", len(req.Texts), err)
	}
	return &resp, nil
}

// Adapters returns the model and adapters a classifier endpoint serves
// (GET /v1/adapters), with the same retries as Classify.
func (c *Client) Adapters(ctx context.Context) (*classifyapi.AdaptersResponse, error) {
	var resp classifyapi.AdaptersResponse
	if err := c.call(ctx, "adapters", http.MethodGet, "/v1/adapters", nil, &resp, nil); err != nil {
		return nil, fmt.Errorf("list adapters: %w", err)
	}
	return &resp, nil
}

// OverloadedUntil returns the time until which every endpoint has asked to
// be left alone (429 with Retry-After), or the zero time when at least one
// endpoint takes work. Callers use it to slow down what feeds them.
func (c *Client) OverloadedUntil() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	var until time.Time
	for _, ep := range c.endpoints {
		if !ep.throttledUntil.After(now) {
			return time.Time{}
		}
		if until.IsZero() || ep.throttledUntil.Before(until) {
			until = ep.throttledUntil
		}
	}
	return until
}

// call runs one API call with retries. build makes the request body at each
// try (nil for no body); check validates a decoded 2xx answer.
func (c *Client) call(ctx context.Context, op, method, path string, build func() ([]byte, error), out any, check func() error) error {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = c.cfg.InitialBackoff
	b.MaxInterval = c.cfg.MaxBackoff
	b.MaxElapsedTime = 0 // bounded by MaxAttempts and ctx instead
	b.Reset()

	var last *endpoint
	var lastErr error
	for attempt := 1; ; attempt++ {
		ep, wait := c.pick(last)
		if err := sleep(ctx, wait); err != nil {
			c.release(ep)
			return gaveUp(err, lastErr)
		}
		err := c.attempt(ctx, op, ep, method, path, build, out, check)
		if err == nil {
			return nil
		}
		if ctxErr := ctx.Err(); ctxErr != nil {
			if errors.Is(err, ctxErr) {
				return gaveUp(err, lastErr)
			}
			return gaveUp(ctxErr, err)
		}
		if !IsRetryable(err) || attempt >= c.cfg.MaxAttempts {
			return err
		}
		last, lastErr = ep, err
		if err := sleep(ctx, b.NextBackOff()); err != nil {
			return gaveUp(err, lastErr)
		}
	}
}

// gaveUp is the error of a call whose context ended (or would end before
// the next try), wrapping what failed last too, so that an outage or an
// overload is not reported as a mere timeout.
func gaveUp(ctxErr, lastErr error) error {
	if lastErr == nil {
		return ctxErr
	}
	return fmt.Errorf("%w (last failure: %w)", ctxErr, lastErr)
}

// sleep waits for d unless ctx ends first, or would end before d has
// passed: then it returns at once with the context's (future) error.
func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < d {
		return context.DeadlineExceeded
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// pick chooses the endpoint for the next try: among the endpoints that are
// neither down nor overloaded, the one with the fewest outstanding requests,
// preferring another one than avoid (the endpoint that just failed). When
// none is usable it picks the one that becomes usable first and returns how
// long to wait for an overloaded one (a down one is probed at once: the
// back-off between tries already spaces the probes).
func (c *Client) pick(avoid *endpoint) (*endpoint, time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	now := time.Now()
	n := len(c.endpoints)
	c.rotor = (c.rotor + 1) % n
	var best *endpoint
	for i := range n {
		ep := c.endpoints[(c.rotor+i)%n]
		if ep.downUntil.After(now) || ep.throttledUntil.After(now) {
			continue
		}
		if best == nil || (best == avoid && ep != avoid) ||
			(ep != avoid && ep.outstanding < best.outstanding) {
			best = ep
		}
	}
	if best != nil {
		best.outstanding++
		return best, 0
	}
	var soonest time.Time
	for i := range n {
		ep := c.endpoints[(c.rotor+i)%n]
		usable := ep.downUntil
		if ep.throttledUntil.After(usable) {
			usable = ep.throttledUntil
		}
		if best == nil || usable.Before(soonest) {
			best, soonest = ep, usable
		}
	}
	best.outstanding++
	return best, best.throttledUntil.Sub(now)
}

// attempt sends one request to ep and records the outcome in ep's health.
func (c *Client) attempt(ctx context.Context, op string, ep *endpoint, method, path string,
	build func() ([]byte, error), out any, check func() error) (err error) {
	start := time.Now()
	status := 0
	defer func() {
		c.record(ep, status, err)
		if c.cfg.OnAttempt != nil {
			c.cfg.OnAttempt(Attempt{Op: op, Endpoint: ep.base, Status: status, Err: err, Duration: time.Since(start)})
		}
	}()

	var body io.Reader
	if build != nil {
		raw, err := build()
		if err != nil {
			return err
		}
		body = bytes.NewReader(raw)
	}
	req, err := http.NewRequestWithContext(ctx, method, ep.base+path, body)
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	req.Header.Set("Accept", "application/json")
	if c.cfg.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.cfg.Token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return ctxErr
		}
		return &TransportError{Endpoint: ep.base, Err: err}
	}
	defer resp.Body.Close()
	status = resp.StatusCode
	// Answers are at most a few MB (probabilities of a batch); the limit
	// only guards against a misbehaving server.
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return ctxErr
		}
		return &TransportError{Endpoint: ep.base, Err: fmt.Errorf("read answer: %w", err)}
	}
	if status < 200 || status > 299 {
		return c.apiError(ep.base, resp, raw)
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return &TransportError{Endpoint: ep.base, Err: fmt.Errorf("%w: %v", ErrBadResponse, err)}
	}
	if check != nil {
		if err := check(); err != nil {
			return &TransportError{Endpoint: ep.base, Err: err}
		}
	}
	return nil
}

// apiError turns an error answer into an *APIError.
func (c *Client) apiError(base string, resp *http.Response, raw []byte) *APIError {
	e := &APIError{Endpoint: base, Status: resp.StatusCode}
	var doc classifyapi.ErrorResponse
	if json.Unmarshal(raw, &doc) == nil && doc.Error.Code != "" {
		e.Code, e.Message = doc.Error.Code, doc.Error.Message
	} else {
		msg := strings.TrimSpace(string(raw))
		if len(msg) > 200 {
			msg = msg[:200] + "..."
		}
		e.Message = msg
	}
	if resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode == http.StatusServiceUnavailable {
		e.RetryAfter = parseRetryAfter(resp.Header.Get("Retry-After"), time.Now())
	}
	return e
}

// parseRetryAfter reads a Retry-After header: seconds or an HTTP date.
// It returns 0 when the header is absent or unusable.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseFloat(v, 64); err == nil {
		if secs <= 0 || secs > 1e6 {
			return 0
		}
		return time.Duration(secs * float64(time.Second))
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// release gives back the slot pick took on ep, for a try that was not made.
func (c *Client) release(ep *endpoint) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ep.outstanding--
}

// record updates ep's health after a try. Unreachable endpoints and 503s
// are skipped for a cool-down that grows with consecutive failures; a 429
// leaves the endpoint alone for its Retry-After; any answer other than
// those proves the endpoint alive.
func (c *Client) record(ep *endpoint, status int, err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	ep.outstanding--
	now := time.Now()
	var tErr *TransportError
	var apiErr *APIError
	switch {
	case errors.As(err, &tErr) && !errors.Is(err, ErrBadResponse) && isConnectError(tErr.Err):
		c.markDown(ep, now, 0)
	case errors.As(err, &apiErr) && apiErr.Overloaded():
		wait := apiErr.RetryAfter
		if wait <= 0 {
			wait = c.cfg.DefaultRetryAfter
		}
		wait = min(wait, c.cfg.MaxRetryAfter)
		ep.throttledUntil = now.Add(wait)
	case errors.As(err, &apiErr) && apiErr.Status == http.StatusServiceUnavailable:
		c.markDown(ep, now, min(apiErr.RetryAfter, c.cfg.MaxRetryAfter))
	case status != 0:
		ep.failures = 0
		ep.downUntil = time.Time{}
	}
}

// markDown skips ep for its cool-down, or for atLeast when that is longer.
func (c *Client) markDown(ep *endpoint, now time.Time, atLeast time.Duration) {
	ep.failures++
	cool := c.cfg.EndpointCooldown
	for i := 1; i < ep.failures && cool < c.cfg.MaxEndpointCooldown; i++ {
		cool *= 2
	}
	cool = max(min(cool, c.cfg.MaxEndpointCooldown), atLeast)
	ep.downUntil = now.Add(cool)
}

// isConnectError reports whether err means the endpoint is not there
// (refused, unreachable, reset, closed before answering), as opposed to a
// slow answer.
func isConnectError(err error) bool {
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return true
	}
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
}
