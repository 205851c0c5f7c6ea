package testenv

import (
	"bytes"
	"strings"
	"sync"
)

// LogBuffer collects what a component (in-process or a child process)
// writes, from several goroutines; tests print it when they fail.
type LogBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *LogBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String is everything written so far.
func (b *LogBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Tail is the last n lines.
func (b *LogBuffer) Tail(n int) string {
	all := strings.Split(b.String(), "\n")
	if len(all) > n {
		all = all[len(all)-n:]
	}
	return strings.Join(all, "\n")
}

// Count is how many times substr was written.
func (b *LogBuffer) Count(substr string) int { return strings.Count(b.String(), substr) }
