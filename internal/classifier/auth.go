package classifier

import (
	"errors"
	"fmt"
	"net"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/emoflow/emoflow/internal/classifyapi"
	"github.com/emoflow/emoflow/internal/secure"
)

// Client names in the metrics besides those of the tokens file.
const (
	clientAnonymous = "anonymous"       // no -tokens-file: the API is open
	clientAdmin     = "admin"           // the -admin-token
	clientLoopback  = "loopback"        // an admin call from loopback without -admin-token
	clientRefused   = "unauthenticated" // no token, or an unknown one
)

// access is who may call what: with a tokens file, /v1/classify and
// /v1/adapters need one of its tokens; the admin endpoints need the admin
// token, or without one come from loopback. Every answer is counted by
// client, endpoint and status.
type access struct {
	tokens     *secure.Tokens
	adminToken string
	adminAPI   bool
	calls      *prometheus.CounterVec
}

// newAccess reads the tokens and checks that the admin API is not left
// open: without an admin token it must listen on loopback only.
func newAccess(c *Component, listenAddr string, reg prometheus.Registerer) (*access, error) {
	a := &access{adminAPI: c.AdminAPI}
	var err error
	if a.adminToken, err = c.AdminToken.Get(); err != nil {
		return nil, err
	}
	if a.adminToken != "" && len(a.adminToken) < 16 {
		return nil, errors.New("-admin-token is shorter than 16 characters")
	}
	if c.TokensFile != "" {
		if a.tokens, err = secure.ReadTokens(c.TokensFile); err != nil {
			return nil, fmt.Errorf("-tokens-file: %w", err)
		}
	}
	if a.adminAPI && a.adminToken == "" && !secure.IsLoopback(listenAddr) {
		return nil, fmt.Errorf("the admin API (/v1/admin) would listen on %s, which is not a loopback address, without a token: "+
			"set -admin-token-file (or EMOFLOW_ADMIN_TOKEN), bind -http-addr to 127.0.0.1, or turn the admin API off with -admin-api=false", listenAddr)
	}
	a.calls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "emoflow_classifier_http_requests_total",
		Help: "API requests by client (its name in -tokens-file; anonymous without one; unauthenticated when refused), endpoint and HTTP status.",
	}, []string{"client", "endpoint", "status"})
	reg.MustRegister(a.calls)
	return a, nil
}

// statusRecorder remembers the status a handler answered with.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	if s.status == 0 {
		s.status = code
	}
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusRecorder) Write(p []byte) (int, error) {
	if s.status == 0 {
		s.status = http.StatusOK
	}
	return s.ResponseWriter.Write(p)
}

func (a *access) serve(w http.ResponseWriter, r *http.Request, endpoint, client string, next http.HandlerFunc) {
	rec := &statusRecorder{ResponseWriter: w}
	next(rec, r)
	if rec.status == 0 {
		rec.status = http.StatusOK
	}
	a.calls.WithLabelValues(client, endpoint, fmt.Sprint(rec.status)).Inc()
}

func (a *access) refuse(w http.ResponseWriter, endpoint, client string, status int, code, msg string) {
	if status == http.StatusUnauthorized {
		w.Header().Set("WWW-Authenticate", `Bearer realm="emoflow classifier"`)
	}
	writeError(w, status, code, msg)
	a.calls.WithLabelValues(client, endpoint, fmt.Sprint(status)).Inc()
}

// client guards an endpoint of the API clients.
func (a *access) client(endpoint string, next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if a.tokens == nil {
			a.serve(w, r, endpoint, clientAnonymous, next)
			return
		}
		token, ok := secure.BearerToken(r)
		if !ok {
			a.refuse(w, endpoint, clientRefused, http.StatusUnauthorized, classifyapi.CodeUnauthorized, "this endpoint needs Authorization: Bearer <token> with a token of the classifier's -tokens-file")
			return
		}
		name, ok := a.tokens.Client(token)
		if !ok {
			a.refuse(w, endpoint, clientRefused, http.StatusUnauthorized, classifyapi.CodeUnauthorized, "unknown bearer token")
			return
		}
		a.serve(w, r, endpoint, name, next)
	}
}

// admin guards an admin endpoint: the admin token when one is configured,
// otherwise loopback clients only.
func (a *access) admin(endpoint string, next http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !a.adminAPI {
			a.refuse(w, endpoint, clientRefused, http.StatusForbidden, classifyapi.CodeForbidden, "the admin API is off (-admin-api=false)")
			return
		}
		if a.adminToken == "" {
			if host, _, err := net.SplitHostPort(r.RemoteAddr); err != nil || !net.ParseIP(host).IsLoopback() {
				a.refuse(w, endpoint, clientRefused, http.StatusForbidden, classifyapi.CodeForbidden, "admin endpoints answer loopback clients only unless -admin-token is set")
				return
			}
			a.serve(w, r, endpoint, clientLoopback, next)
			return
		}
		token, ok := secure.BearerToken(r)
		switch {
		case !ok:
			a.refuse(w, endpoint, clientRefused, http.StatusUnauthorized, classifyapi.CodeUnauthorized, "admin endpoints need Authorization: Bearer <admin token>")
		case secure.TokenMatches(token, a.adminToken):
			a.serve(w, r, endpoint, clientAdmin, next)
		default:
			// A client's own token is known but not enough here.
			if a.tokens != nil {
				if name, known := a.tokens.Client(token); known {
					a.refuse(w, endpoint, name, http.StatusForbidden, classifyapi.CodeForbidden, "admin endpoints need the admin token; client "+name+"'s token does not open them")
					return
				}
			}
			a.refuse(w, endpoint, clientRefused, http.StatusUnauthorized, classifyapi.CodeUnauthorized, "wrong admin token")
		}
	}
}
