package ingest

import (
	"log/slog"
	"time"

	"github.com/emoflow/emoflow/internal/secure"
)

// newResultCache returns a cache on a Redis reached without TLS or a user,
// as the tests' Redis is.
func newResultCache(addr string, ttl, timeout time.Duration, log *slog.Logger, m *metrics) *resultCache {
	c, err := openResultCache(addr, &secure.Redis{}, ttl, timeout, log, m)
	if err != nil {
		panic(err) // empty settings cannot fail
	}
	return c
}
