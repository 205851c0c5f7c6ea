package ingest

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/contract"
)

func TestConfigStopAtOffsetsAndAdapter(t *testing.T) {
	cfg, err := parseConfig(t, []string{"-stop-at-offsets", "0:1234, 2:0,1:998", "-adapter", "emo@3",
		"-priority", "replay", "-run-id", "r1"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if want := map[int]int64{0: 1234, 1: 998, 2: 0}; !reflect.DeepEqual(cfg.StopAtOffsets, want) {
		t.Errorf("stop-at-offsets %v, want %v", cfg.StopAtOffsets, want)
	}
	if cfg.Adapter != "emo@3" {
		t.Errorf("adapter %q", cfg.Adapter)
	}
	cfg, err = parseConfig(t, nil, map[string]string{"EMOFLOW_STOP_AT_OFFSETS": "3:7", "EMOFLOW_ADAPTER": "emo"})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg.StopAtOffsets, map[int]int64{3: 7}) || cfg.Adapter != "emo" {
		t.Errorf("from the environment: %v %q", cfg.StopAtOffsets, cfg.Adapter)
	}
	if cfg, _ := parseConfig(t, nil, nil); cfg.StopAtOffsets != nil || cfg.Adapter != "" {
		t.Errorf("defaults: %v %q", cfg.StopAtOffsets, cfg.Adapter)
	}
}

func TestConfigRejectsBadReplayFlags(t *testing.T) {
	cases := map[string][]string{
		"no colon":            {"-stop-at-offsets", "0=12"},
		"negative offset":     {"-stop-at-offsets", "0:-1"},
		"negative partition":  {"-stop-at-offsets", "-1:4"},
		"not a number":        {"-stop-at-offsets", "0:end"},
		"partition twice":     {"-stop-at-offsets", "0:1,0:2"},
		"only commas":         {"-stop-at-offsets", ", ,"},
		"both stop flags":     {"-stop-at-offsets", "0:1", "-stop-at-end"},
		"adapter without id":  {"-adapter", "@v1"},
		"adapter two @":       {"-adapter", "a@1@2"},
		"adapter empty after": {"-adapter", "a@"},
	}
	for name, args := range cases {
		_, err := parseConfig(t, args, nil)
		if err == nil {
			t.Errorf("%s: accepted %q", name, args)
			continue
		}
		if flag := args[0]; !strings.Contains(err.Error(), flag) && name != "both stop flags" {
			t.Errorf("%s: error %q does not name %s", name, err, flag)
		}
	}
}

func TestExplicitEnds(t *testing.T) {
	current := map[int]partitionEnds{0: {first: 0, end: 100}, 1: {first: 50, end: 80}, 2: {first: 0, end: 10}}
	got, err := explicitEnds(current, map[int]int64{0: 40, 1: 20})
	if err != nil {
		t.Fatal(err)
	}
	want := map[int]partitionEnds{
		0: {first: 0, end: 40},
		// Retention deleted up to 50: nothing left of the range.
		1: {first: 50, end: 20},
		// Unlisted: an empty range.
		2: {first: 0, end: 0},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for p, e := range got {
		if empty := e.end <= e.first; empty != (p != 0) {
			t.Errorf("partition %d: empty=%v", p, empty)
		}
	}
	if _, err := explicitEnds(current, map[int]int64{0: 101}); err == nil || !strings.Contains(err.Error(), "past the partition's end offset 100") {
		t.Errorf("offset past the end: %v", err)
	}
	if _, err := explicitEnds(current, map[int]int64{3: 1}); err == nil || !strings.Contains(err.Error(), "3 partitions") {
		t.Errorf("unknown partition: %v", err)
	}
	if got, err := explicitEnds(current, map[int]int64{0: 100}); err != nil || got[0].end != 100 {
		t.Errorf("offset at the end: %v %v", got, err)
	}
}

func TestAdapterFlagOverridesEveryHint(t *testing.T) {
	f := newFakeClassifier(t)
	p := newTestProcessor(t, f)
	p.cfg.Adapter = "other@1"
	var ws []*work
	for i, hint := range []string{"", "emo", "emo@1", "missing"} {
		m := chat(fmt.Sprint(i), "same text", hint)
		v, _ := json.Marshal(m)
		ws = append(ws, &work{msg: kafka.Message{Value: v}})
	}
	bad := &work{msg: kafka.Message{Value: []byte("{")}}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	valid := p.decode(append(ws, bad))
	if len(valid) != len(ws) || bad.reject == nil || bad.reject.Reason != contract.ReasonMalformedJSON {
		t.Fatalf("decode: %d valid, bad reject %+v", len(valid), bad.reject)
	}
	valid, err := p.resolveTargets(ctx, valid)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.classifyAll(ctx, valid); err != nil {
		t.Fatal(err)
	}
	for _, w := range ws {
		if w.reject != nil || w.res == nil || w.res.Adapter != "other@1" || w.res.Label != fakeLabel("other@1", "same text") {
			t.Errorf("message %s: result %+v, reject %+v; want adapter other@1", w.chat.ID, w.res, w.reject)
		}
	}
	if got := f.texts.Load(); got != 1 {
		t.Errorf("fake classified %d texts, want 1 (one text, one adapter)", got)
	}
}

// TestIntegrationReplayStopsAtExplicitOffsets consumes a range of some
// partitions with one adapter for every message: ingest stops once the
// group has committed the given end offsets, publishes events for exactly
// the messages below them (none for the unlisted partition) and uses the
// -adapter for all.
func TestIntegrationReplayStopsAtExplicitOffsets(t *testing.T) {
	h := newHarness(t, 3)
	const n = 60 // 20 per partition
	msgs := make([]contract.ChatMessage, n)
	for i := range msgs {
		msgs[i] = chat(fmt.Sprintf("so%d", i), fmt.Sprintf("range text %d", i), "emo@1")
	}
	h.produceChats(msgs)
	in := h.start("-stop-at-offsets", "0:12,1:5", "-adapter", "other@1", "-run-id", "range-1", "-priority", "replay")
	select {
	case err := <-in.done:
		in.done <- err
		if err != nil {
			t.Fatalf("ingest stopped with %v", err)
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("ingest did not stop at the given end offsets")
	}
	c := h.committed()
	if c[0] != 12 || c[1] != 5 || c[2] >= 0 {
		t.Fatalf("committed %v, want 0:12 1:5 and nothing for partition 2", c)
	}
	evs := h.readEvents()
	seen := map[string]bool{}
	for _, ev := range evs {
		if ev.Source.Partition == 2 || (ev.Source.Partition == 0 && ev.Source.Offset >= 12) || (ev.Source.Partition == 1 && ev.Source.Offset >= 5) {
			t.Errorf("event for %s/%d/%d, outside the range", ev.Source.Topic, ev.Source.Partition, ev.Source.Offset)
		}
		if ev.Adapter != "other@1" || ev.RunID != "range-1" {
			t.Errorf("%s: adapter %q run %q, want other@1 and range-1", ev.MessageID, ev.Adapter, ev.RunID)
		}
		seen[ev.MessageID] = true
	}
	if len(seen) != 12+5 {
		t.Errorf("events for %d messages, want %d", len(seen), 12+5)
	}
}
