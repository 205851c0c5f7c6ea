package classifyclient

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/emoflow/emoflow/internal/classifyapi"
)

// APIError is an error answer (4xx or 5xx) of a classifier endpoint.
type APIError struct {
	// Endpoint is the base URL that answered.
	Endpoint string
	// Status is the HTTP status code.
	Status int
	// Code is the stable error code of the body (classifyapi.Code*), empty
	// when the body was not an error document (a proxy's page, say).
	Code string
	// Message is the body's explanation, for people.
	Message string
	// RetryAfter is the server's Retry-After (429 and 503), 0 when absent.
	RetryAfter time.Duration
}

func (e *APIError) Error() string {
	code := e.Code
	if code == "" {
		code = http.StatusText(e.Status)
	}
	return fmt.Sprintf("classifier %s: %d %s: %s", e.Endpoint, e.Status, code, e.Message)
}

// Retryable reports whether the same request may succeed if sent again:
// overload (429), server failures (500, 502, 503) and a server-side
// deadline (504, retried only while the caller's context has time left),
// and a refused token (401, 403): that is the client's configuration, not
// the request, and retrying keeps the messages until it is fixed rather
// than rejecting them. Other client errors (4xx) are never retried.
func (e *APIError) Retryable() bool {
	// A 404 without the API's error document is not the classifier saying
	// "no such adapter" but something in front of it, or a server not yet
	// serving the API (a proxy's page, a restart): retry rather than let
	// callers reject the texts for good.
	if e.Status == http.StatusNotFound && e.Code == "" {
		return true
	}
	switch e.Status {
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusTooManyRequests, http.StatusInternalServerError, http.StatusBadGateway,
		http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return true
	}
	return false
}

// Overloaded reports whether the endpoint refused the work because its queue
// was full (back-pressure).
func (e *APIError) Overloaded() bool {
	return e.Status == http.StatusTooManyRequests || e.Code == classifyapi.CodeOverloaded
}

// TransportError is a request that got no HTTP answer: the endpoint could
// not be reached, the connection broke or the answer could not be read.
type TransportError struct {
	Endpoint string
	Err      error
}

func (e *TransportError) Error() string {
	return fmt.Sprintf("classifier %s: %v", e.Endpoint, e.Err)
}

func (e *TransportError) Unwrap() error { return e.Err }

// ErrBadResponse marks a 2xx answer that does not match the request (wrong
// number of results, undecodable body). It is wrapped in a TransportError
// and retried: another endpoint may answer properly.
var ErrBadResponse = errors.New("bad response")

// IsRetryable reports whether err (from Classify or Adapters) is worth
// retrying later: true for overload, server failures and transport errors,
// false for client errors and for the caller's own cancellation.
func IsRetryable(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var apiErr *APIError
	if errors.As(err, &apiErr) {
		return apiErr.Retryable()
	}
	var tErr *TransportError
	return errors.As(err, &tErr)
}

// IsOverloaded reports whether err is (or wraps) a 429 overload answer.
func IsOverloaded(err error) bool {
	var apiErr *APIError
	return errors.As(err, &apiErr) && apiErr.Overloaded()
}
