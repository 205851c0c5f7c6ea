// Package service owns what every emoflow binary shares: configuration from
// flags and environment variables, structured logging with log/slog, the HTTP
// server with /healthz, /readyz and /metrics, and the lifecycle that ends in a
// graceful shutdown on SIGTERM or SIGINT.
//
// A binary is a Component. Its main function is one line:
//
//	func main() { os.Exit(service.Main("ingest", &ingest.Component{}, ":9101")) }
//
// Run starts the HTTP server, calls Component.Run with a context that is
// cancelled on SIGTERM, waits for it to finish its in-flight work (bounded by
// -shutdown-timeout) and then stops the HTTP server.
package service

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/emoflow/emoflow/internal/secure"
)

// Component is one binary's work.
type Component interface {
	// RegisterFlags declares the component's configuration on fs. Every flag
	// can also be set by its environment variable (see EnvName).
	RegisterFlags(fs *flag.FlagSet)
	// Run works until ctx is cancelled, then finishes or hands back its
	// in-flight work and returns. It calls rt.SetReady once it can serve.
	Run(ctx context.Context, rt *Runtime) error
}

// Runtime is what a running component gets from the service: its logger,
// its metrics registry and the HTTP mux it may add handlers to.
type Runtime struct {
	Name   string
	Logger *slog.Logger
	// Metrics holds the component's own metrics. /metrics serves them with
	// the Go runtime's and the process's, which live in a registry of their
	// own: gathering Metrics alone (as the benchmarks do every 50 ms) then
	// costs no reads of /proc.
	Metrics *prometheus.Registry
	// Mux is served on -http-addr next to /healthz, /readyz and /metrics.
	// Register handlers on it before calling SetReady.
	Mux *http.ServeMux
	// Addr is the address the HTTP server listens on (useful with port 0).
	Addr string
	// TLS is true when the HTTP server serves HTTPS (-tls-cert-file).
	TLS bool

	mu       sync.Mutex
	notReady string
}

// SetReady marks the component ready: /readyz answers 200.
func (rt *Runtime) SetReady() { rt.SetNotReady("") }

// SetNotReady makes /readyz answer 503 with reason (an empty reason means
// ready).
func (rt *Runtime) SetNotReady(reason string) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	rt.notReady = reason
}

// Ready reports whether the component is ready and, if not, why.
func (rt *Runtime) Ready() (bool, string) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	return rt.notReady == "", rt.notReady
}

// handler serves Mux, except that while the component is not ready a
// request for a path without a handler gets 503 with Retry-After rather
// than the mux's 404: components register their API when they can serve it
// (the classifier after loading its model), and a client must not take "not
// yet" for "no such thing" (ingest dead-letters messages when the
// classifier answers 404 to /v1/classify).
func (rt *Runtime) handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if _, pattern := rt.Mux.Handler(r); pattern == "" {
			if ready, why := rt.Ready(); !ready {
				w.Header().Set("Retry-After", "1")
				http.Error(w, "not ready: "+why, http.StatusServiceUnavailable)
				return
			}
		}
		rt.Mux.ServeHTTP(w, r)
	})
}

// Options are the settings every binary has.
type Options struct {
	HTTPAddr        string
	LogLevel        string
	LogFormat       string
	ShutdownTimeout time.Duration
	TLS             secure.TLSServer
}

// RegisterFlags declares the shared settings on fs.
func (o *Options) RegisterFlags(fs *flag.FlagSet, defaultHTTPAddr string) {
	fs.StringVar(&o.HTTPAddr, "http-addr", defaultHTTPAddr, "listen address of the HTTP server (/healthz, /readyz, /metrics; the classifier's API too)")
	fs.StringVar(&o.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&o.LogFormat, "log-format", "json", "log format: json or text")
	fs.DurationVar(&o.ShutdownTimeout, "shutdown-timeout", 30*time.Second, "how long to wait for in-flight work after SIGTERM before exiting anyway")
	o.TLS.Register(fs, "the HTTP server")
}

// NewLogger builds the slog logger the options describe.
func (o *Options) NewLogger(w io.Writer, name string) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(o.LogLevel)); err != nil {
		return nil, fmt.Errorf("-log-level %q: %w", o.LogLevel, err)
	}
	hopts := &slog.HandlerOptions{Level: level}
	var h slog.Handler
	switch strings.ToLower(o.LogFormat) {
	case "json":
		h = slog.NewJSONHandler(w, hopts)
	case "text":
		h = slog.NewTextHandler(w, hopts)
	default:
		return nil, fmt.Errorf("-log-format %q: want json or text", o.LogFormat)
	}
	return slog.New(h).With("service", name), nil
}

// NewFlagSet returns the flag set of component c under name: the shared
// options and the component's own flags.
func NewFlagSet(name string, c Component, defaultHTTPAddr string, opts *Options) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	opts.RegisterFlags(fs, defaultHTTPAddr)
	c.RegisterFlags(fs)
	return fs
}

// redisLog writes go-redis's own messages to a component's log.
type redisLog struct{ log *slog.Logger }

func (l redisLog) Printf(ctx context.Context, format string, v ...any) {
	l.log.WarnContext(ctx, "redis client: "+strings.TrimSpace(fmt.Sprintf(format, v...)))
}

// Main runs component c as the program called name and returns the exit
// code: 0 after a clean shutdown, 1 after a failure, 2 for a bad
// configuration.
func Main(name string, c Component, defaultHTTPAddr string) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	// go-redis logs some failures itself (connection-pool errors while
	// Redis is down) through a process-wide logger; the process's one
	// component gets them into its own JSON log.
	err := Run(ctx, name, c, defaultHTTPAddr, os.Args[1:], LookupEnv, os.Stderr, func(rt *Runtime) {
		redis.SetLogger(redisLog{rt.Logger})
	})
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, new(*ConfigError)):
		fmt.Fprintf(os.Stderr, "%s: %v\n", name, err)
		return 2
	default:
		return 1
	}
}

// ConfigError is a configuration that cannot be used.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return "configuration: " + e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// Run is Main without the process: tests run components in-process with it.
// started, when not nil, receives the Runtime once the HTTP server listens.
func Run(ctx context.Context, name string, c Component, defaultHTTPAddr string, args []string,
	lookup func(string) (string, bool), logOut io.Writer, started func(*Runtime)) error {
	var opts Options
	fs := NewFlagSet(name, c, defaultHTTPAddr, &opts)
	fs.SetOutput(logOut)
	if err := ParseConfig(fs, args, lookup); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return &ConfigError{err}
	}
	logger, err := opts.NewLogger(logOut, name)
	if err != nil {
		return &ConfigError{err}
	}

	reg, sys := prometheus.NewRegistry(), prometheus.NewRegistry()
	sys.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	rt := &Runtime{Name: name, Logger: logger, Metrics: reg, Mux: http.NewServeMux(), notReady: "starting"}
	rt.Mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		fmt.Fprintln(w, "ok")
	})
	rt.Mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if ok, why := rt.Ready(); !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not ready:", why)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	rt.Mux.Handle("GET /metrics", promhttp.HandlerFor(prometheus.Gatherers{reg, sys}, promhttp.HandlerOpts{Registry: reg}))

	tlsCfg, err := opts.TLS.Config()
	if err != nil {
		return &ConfigError{err}
	}
	ln, err := net.Listen("tcp", opts.HTTPAddr)
	if err != nil {
		logger.Error("cannot listen", "addr", opts.HTTPAddr, "err", err)
		return fmt.Errorf("listen on %s: %w", opts.HTTPAddr, err)
	}
	rt.Addr = ln.Addr().String()
	if tlsCfg != nil {
		ln = tls.NewListener(ln, tlsCfg)
		rt.TLS = true
	}
	srv := &http.Server{Handler: rt.handler(), ReadHeaderTimeout: 10 * time.Second}
	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	logger.Info("started", "http_addr", rt.Addr, "tls", rt.TLS)
	if started != nil {
		started(rt)
	}

	runCtx, cancelRun := context.WithCancel(ctx)
	defer cancelRun()
	runErr := make(chan error, 1)
	go func() { runErr <- c.Run(runCtx, rt) }()

	var result error
	select {
	case result = <-runErr:
	case err := <-serveErr:
		cancelRun()
		result = fmt.Errorf("http server: %w", err)
		<-runErr
	case <-ctx.Done():
		logger.Info("shutting down: finishing in-flight work", "timeout", opts.ShutdownTimeout)
		rt.SetNotReady("shutting down")
		select {
		case result = <-runErr:
		case <-time.After(opts.ShutdownTimeout):
			result = fmt.Errorf("in-flight work not finished within -shutdown-timeout %s", opts.ShutdownTimeout)
		}
	}
	rt.SetNotReady("stopped")
	shutCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutCtx)
	if result != nil && !errors.Is(result, context.Canceled) {
		logger.Error("stopped with an error", "err", result)
		return result
	}
	logger.Info("stopped")
	return nil
}
