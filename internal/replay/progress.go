package replay

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
)

// Progress is how far a run is, from its group's committed offsets.
type Progress struct {
	// Done counts the offsets of the range below the committed offsets;
	// Total counts the whole range.
	Done, Total int64
	// Rate is in messages per second over the meter's window; 0 until two
	// observations are apart.
	Rate float64
	// ETA is the time left at Rate; negative when unknown.
	ETA time.Duration
}

// Complete reports whether the whole range is committed.
func (p Progress) Complete() bool { return p.Done >= p.Total }

// Committed returns how many offsets of the plan's range the run's group
// has committed.
func Committed(ctx context.Context, client *kafka.Client, plan Plan) (int64, error) {
	committed, err := committedOffsets(ctx, client, GroupID(plan.RunID), plan.Topic, plan.Partitions())
	if err != nil {
		return 0, err
	}
	return done(plan, committed), nil
}

// done counts the offsets of the plan's range below committed.
func done(plan Plan, committed map[int]int64) int64 {
	var n int64
	for p, end := range plan.End {
		if c, ok := committed[p]; ok {
			n += min(max(c, plan.Start[p]), end) - plan.Start[p]
		}
	}
	return n
}

// Meter turns successive observations of done work into a rate and an
// estimated time left, over a sliding window.
type Meter struct {
	window  time.Duration
	samples []sample
}

type sample struct {
	at   time.Time
	done int64
}

// NewMeter returns a meter whose rate covers the last window.
func NewMeter(window time.Duration) *Meter { return &Meter{window: window} }

// Observe records that done of total were done at at, and returns the
// progress.
func (m *Meter) Observe(at time.Time, done, total int64) Progress {
	m.samples = append(m.samples, sample{at, done})
	// Keep one sample older than the window, so that the rate always spans
	// at least the window once it has been running that long.
	for len(m.samples) > 2 && at.Sub(m.samples[1].at) >= m.window {
		m.samples = m.samples[1:]
	}
	p := Progress{Done: done, Total: total, ETA: -1}
	first := m.samples[0]
	if span := at.Sub(first.at); span > 0 && done >= first.done {
		p.Rate = float64(done-first.done) / span.Seconds()
	}
	switch {
	case done >= total:
		p.ETA = 0
	case p.Rate > 0:
		p.ETA = time.Duration(float64(total-done) / p.Rate * float64(time.Second))
	}
	return p
}

// Format renders p as a one-line progress bar of width cells.
func Format(p Progress, width int) string {
	frac := 1.0
	if p.Total > 0 {
		frac = min(max(float64(p.Done)/float64(p.Total), 0), 1)
	}
	filled := int(frac * float64(width))
	bar := strings.Repeat("=", filled)
	if filled < width {
		bar += ">" + strings.Repeat(" ", width-filled-1)
	}
	eta := "--"
	if p.ETA >= 0 {
		eta = p.ETA.Round(time.Second).String()
	}
	return fmt.Sprintf("[%s] %5.1f%%  %d/%d messages  %.0f msg/s  ETA %s", bar, 100*frac, p.Done, p.Total, p.Rate, eta)
}

// Printer draws progress on a terminal (redrawing one line) or, on
// anything else, writes a line every interval.
type Printer struct {
	w        io.Writer
	terminal bool
	every    time.Duration
	last     time.Time
	drawn    bool
	// completed: the complete line was written (once is enough).
	completed bool
}

// NewPrinter returns a printer to w; terminal says whether w is one.
func NewPrinter(w io.Writer, terminal bool, every time.Duration) *Printer {
	return &Printer{w: w, terminal: terminal, every: every}
}

// Print shows p as of at.
func (pr *Printer) Print(at time.Time, p Progress) {
	line := Format(p, 30)
	if pr.terminal {
		// \x1b[K clears what a longer previous line left.
		fmt.Fprintf(pr.w, "\r%s\x1b[K", line)
		pr.drawn = true
		return
	}
	if pr.completed {
		return
	}
	if pr.last.IsZero() || at.Sub(pr.last) >= pr.every || p.Complete() {
		fmt.Fprintln(pr.w, line)
		pr.last, pr.completed = at, p.Complete()
	}
}

// Done ends the terminal line.
func (pr *Printer) Done() {
	if pr.drawn {
		fmt.Fprintln(pr.w)
		pr.drawn = false
	}
}
