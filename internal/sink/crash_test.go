package sink

import (
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/emoflow/emoflow/internal/testenv"
)

func TestSinkKilledMidStreamStoresEveryEventExactlyOnce(t *testing.T) {
	in := newIntegration(t)
	bin := testenv.BuildCommand(t, "./cmd/sink")
	events := testEvents(8000)
	// Small batches and a producer faster than the sink: the sink is always
	// busy, so a kill can fall between an insert and its commit, or during an
	// insert.
	args := in.args("-batch-size=200", "-flush-interval=50ms")
	produced := in.produceSlowly(t, events, 500, 20*time.Millisecond)

	// Kill -9 three times, at different points of the stream, restarting
	// each time.
	sink := testenv.StartProcess(t, bin, args, "sink 1")
	for i, storedBeforeKill := range []int64{1000, 3000, 5000} {
		testenv.WaitUntil(t, 2*time.Minute, fmt.Sprintf("%d events stored", storedBeforeKill), func() (bool, string) {
			n := in.dedupCount(t)
			return n >= storedBeforeKill, fmt.Sprintf("events_dedup has %d rows", n)
		})
		if err := sink.Cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		_ = sink.Wait(t, 30*time.Second)
		atKill := in.dedupCount(t)
		if atKill >= int64(len(events)) {
			t.Fatalf("all %d events were stored before kill %d; the test proves nothing", len(events), i+1)
		}
		t.Logf("kill %d: %d of %d events stored", i+1, atKill, len(events))
		sink = testenv.StartProcess(t, bin, args, fmt.Sprintf("sink %d", i+2))
	}
	if err := <-produced; err != nil {
		t.Fatal(err)
	}
	in.waitForDedupCount(t, int64(len(events)), 3*time.Minute)
	in.checkEachEventOnce(t, events)
	in.checkPerMinuteCounts(t, events)
	t.Logf("events holds %d rows for %d events (re-inserted ones not merged away yet)",
		in.queryUint64(t, "SELECT count() FROM ${database}.events"), len(events))

	if err := sink.Cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := sink.Wait(t, 60*time.Second); err != nil {
		t.Errorf("the last sink exited with %v after SIGTERM, want 0", err)
	}
	if ok, state := in.committedToTheEnd(t); !ok {
		t.Errorf("offsets not committed to the end after SIGTERM: %s", state)
	}
}
