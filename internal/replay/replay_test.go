package replay

import (
	"bytes"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emoflow/emoflow/internal/datasets"
	"github.com/emoflow/emoflow/internal/testenv"
	"github.com/emoflow/emoflow/labelmaps"
)

func TestRunIDsAndAdapters(t *testing.T) {
	for _, ok := range []string{"r1", "eval-2024.06_a", strings.Repeat("x", 64)} {
		if err := CheckRunID(ok); err != nil {
			t.Errorf("%q refused: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "live", "-r", "a/b", "a b", strings.Repeat("x", 65), "é"} {
		if err := CheckRunID(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	if err := CheckAdapterVersion("emo@3"); err != nil {
		t.Error(err)
	}
	for _, bad := range []string{"emo", "", "@3", "emo@"} {
		if err := CheckAdapterVersion(bad); err == nil {
			t.Errorf("adapter %q accepted", bad)
		}
	}
	if GroupID("r1") == PlanGroupID("r1") || strings.Contains(GroupID("r1"), "/") {
		t.Errorf("groups %q and %q", GroupID("r1"), PlanGroupID("r1"))
	}
}

func TestRequestCheck(t *testing.T) {
	base := Request{RunID: "r", Topic: "t", Adapter: "a@1"}
	if err := base.check(); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	bad := map[string]func(r *Request){
		"from after to":        func(r *Request) { r.From, r.To = now, now.Add(-time.Hour) },
		"from equals to":       func(r *Request) { r.From, r.To = now, now },
		"start offsets + from": func(r *Request) { r.From, r.StartOffsets = now, map[int]int64{0: 1} },
		"end offsets + to":     func(r *Request) { r.To, r.EndOffsets = now, map[int]int64{0: 1} },
		"no topic":             func(r *Request) { r.Topic = "" },
		"live run":             func(r *Request) { r.RunID = "live" },
		"adapter without @":    func(r *Request) { r.Adapter = "a" },
	}
	for name, f := range bad {
		r := base
		f(&r)
		if err := r.check(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestPlanHelpers(t *testing.T) {
	p := Plan{RunID: "r", Start: map[int]int64{0: 10, 2: 0}, End: map[int]int64{0: 15, 2: 7}}
	if p.Total() != 12 || p.StopAtOffsets() != "0:15,2:7" || !reflect.DeepEqual(p.Partitions(), []int{0, 2}) {
		t.Errorf("total %d, stop %q, partitions %v", p.Total(), p.StopAtOffsets(), p.Partitions())
	}
	// Partition 0 committed 3 of 5, partition 2 nothing yet; a committed
	// offset outside the range counts as its nearer end.
	if got := done(p, map[int]int64{0: 13}); got != 3 {
		t.Errorf("done %d, want 3", got)
	}
	if got := done(p, map[int]int64{0: 99, 2: 7}); got != 12 {
		t.Errorf("done %d, want 12", got)
	}
	if got := done(p, map[int]int64{0: 2}); got != 0 {
		t.Errorf("done %d, want 0", got)
	}
}

func TestMeterRateAndETA(t *testing.T) {
	m := NewMeter(10 * time.Second)
	t0 := time.Unix(1000, 0)
	p := m.Observe(t0, 0, 1000)
	if p.Rate != 0 || p.ETA >= 0 {
		t.Errorf("first observation: rate %v ETA %v, want 0 and unknown", p.Rate, p.ETA)
	}
	p = m.Observe(t0.Add(2*time.Second), 100, 1000)
	if p.Rate != 50 || p.ETA != 18*time.Second {
		t.Errorf("after 2s: rate %v ETA %v, want 50/s and 18s", p.Rate, p.ETA)
	}
	// Faster later: after the window, the rate forgets the start.
	m.Observe(t0.Add(10*time.Second), 500, 1000)
	p = m.Observe(t0.Add(20*time.Second), 900, 1000)
	if p.Rate != 40 || p.ETA != 2500*time.Millisecond {
		t.Errorf("over the last window: rate %v ETA %v, want (900-500)/10s = 40/s and 2.5s", p.Rate, p.ETA)
	}
	p = m.Observe(t0.Add(21*time.Second), 1000, 1000)
	if !p.Complete() || p.ETA != 0 {
		t.Errorf("complete: %+v", p)
	}
}

func TestFormatAndPrinter(t *testing.T) {
	got := Format(Progress{Done: 25, Total: 100, Rate: 12.4, ETA: 6*time.Second + 400*time.Millisecond}, 10)
	if want := "[==>       ]  25.0%  25/100 messages  12 msg/s  ETA 6s"; got != want {
		t.Errorf("Format = %q, want %q", got, want)
	}
	if got := Format(Progress{Done: 100, Total: 100, ETA: 0}, 4); got != "[====] 100.0%  100/100 messages  0 msg/s  ETA 0s" {
		t.Errorf("Format complete = %q", got)
	}
	if got := Format(Progress{Total: 10, ETA: -1}, 4); !strings.HasSuffix(got, "ETA --") {
		t.Errorf("unknown ETA: %q", got)
	}

	var term bytes.Buffer
	pr := NewPrinter(&term, true, time.Minute)
	t0 := time.Unix(0, 0)
	pr.Print(t0, Progress{Done: 1, Total: 2, ETA: -1})
	pr.Print(t0.Add(time.Second), Progress{Done: 2, Total: 2})
	pr.Done()
	if lines := strings.Count(term.String(), "\r"); lines != 2 || !strings.HasSuffix(term.String(), "\n") {
		t.Errorf("terminal output %q: want two redraws and a final newline", term.String())
	}
	var log bytes.Buffer
	pr = NewPrinter(&log, false, 10*time.Second)
	for i := range 25 {
		pr.Print(t0.Add(time.Duration(i)*time.Second), Progress{Done: int64(i), Total: 100, ETA: -1})
	}
	pr.Print(t0.Add(26*time.Second), Progress{Done: 100, Total: 100})
	pr.Print(t0.Add(27*time.Second), Progress{Done: 100, Total: 100})
	// At 0s, 10s, 20s, and the completion, once.
	if n := strings.Count(log.String(), "\n"); n != 4 || strings.Contains(log.String(), "\r") {
		t.Errorf("log output %q: want 4 plain lines", log.String())
	}
}

func TestIngestArgs(t *testing.T) {
	o := RunOptions{
		Plan:    Plan{RunID: "r9", Topic: "chat", Adapter: "emo@2", Start: map[int]int64{0: 1}, End: map[int]int64{0: 9}},
		Brokers: []string{"b1:9092", "b2:9092"}, ClassifierURLs: []string{"http://c:8080"}, HTTPAddr: "127.0.0.1:0",
		IngestArgs: []string{"-batch-size=8", "-log-level", "info"},
	}
	args, err := IngestArgs(o)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"-group-id=emoflow-replay-r9", "-run-id=r9", "-priority=replay", "-adapter=emo@2",
		"-stop-at-offsets=0:9", "-input-topic=chat", "-kafka-brokers=b1:9092,b2:9092", "-stop-at-end=false"} {
		if !slices.Contains(args, want) {
			t.Errorf("args %q lack %s", args, want)
		}
	}
	// The caller's flags come after the quiet defaults, so they win.
	if i, j := slices.Index(args, "-log-level=warn"), slices.Index(args, "-log-level"); i < 0 || j < i {
		t.Errorf("args %q: the caller's -log-level must follow the default", args)
	}
	for _, bad := range []string{"-group-id=x", "--run-id", "-adapter=other@1", "-stop-at-end"} {
		o.IngestArgs = []string{bad}
		if _, err := IngestArgs(o); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

func TestDatasetMessages(t *testing.T) {
	ex := []datasets.Example{
		{ID: "d1u0", Conversation: "d1", Text: "I'm so happy!", Label: "Joyful"},
		{ID: "d1u1", Conversation: "d1", Text: "Calm down.", Label: "Peaceful"},
		{ID: "d1u2", Conversation: "d1", Text: "  \u200b ", Label: "Mad"},
		{ID: "d2u0", Conversation: "d2", Text: "Two labels", Label: ""},
		{ID: "d2u1", Conversation: "d2", Text: "Leave me alone", Label: "Mad"},
	}
	em, err := labelmaps.Load("emorynlp-ekman")
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	o := DatasetOptions{Set: datasets.EmoryNLP, Split: "test", Map: em, Tenant: "datasets", SentAt: at}
	msgs, st, err := DatasetMessages(ex, o)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 2 || st.Messages != 2 || st.Examples != 5 || st.NoCounterpart != 1 || st.Invalid != 1 || st.NoSingleLabel != 1 {
		t.Fatalf("%d messages, stats %+v", len(msgs), st)
	}
	m := msgs[1]
	if m.ID != "emorynlp-test-d2u1" || m.ConversationID != "emorynlp-test-d2" || m.Label != "anger" ||
		!m.SentAt.Equal(at.Add(4*time.Second)) || m.Tenant != "datasets" || m.SpeakerRole != "user" {
		t.Errorf("message %+v", m)
	}
	if !reflect.DeepEqual(st.Labels, map[string]int{"joy": 1, "anger": 1}) {
		t.Errorf("labels %v", st.Labels)
	}
	again, _, _ := DatasetMessages(ex, o)
	if !reflect.DeepEqual(again, msgs) {
		t.Error("loading twice gives other messages")
	}
	o.KeepUnmapped, o.Limit = true, 2
	msgs, st, err = DatasetMessages(ex, o)
	if err != nil || len(msgs) != 2 || msgs[1].Label != "Peaceful" || st.NoCounterpart != 0 {
		t.Errorf("keep unmapped, limit 2: %v %+v %v", msgs, st, err)
	}
	o.Set = datasets.MELD
	if _, _, err := DatasetMessages(ex, o); err == nil || !strings.Contains(err.Error(), "maps emorynlp labels, not meld") {
		t.Errorf("a map of another data set: %v", err)
	}
}

// TestDatasetMessagesFromSharedData loads every data set's test split: all
// become valid messages with unique ids, and the label maps leave only
// Ekman labels.
func TestDatasetMessagesFromSharedData(t *testing.T) {
	root := testenv.Shared(t, "data")
	maps := map[datasets.Set]string{datasets.DailyDialog: "dailydialog-ekman", datasets.EmoryNLP: "emorynlp-ekman", datasets.CARER: "carer-ekman"}
	for _, set := range datasets.Sets {
		ex, err := datasets.Read(root, set, "test")
		if err != nil {
			t.Fatal(err)
		}
		o := DatasetOptions{Set: set, Split: "test", Tenant: "datasets", SentAt: time.Unix(0, 0)}
		if name, ok := maps[set]; ok {
			if o.Map, err = labelmaps.Load(name); err != nil {
				t.Fatal(err)
			}
		}
		msgs, st, err := DatasetMessages(ex, o)
		if err != nil {
			t.Fatalf("%s: %v", set, err)
		}
		if st.Messages+st.NoSingleLabel+st.NoCounterpart+st.Invalid != st.Examples || st.Messages < st.Examples/2 {
			t.Errorf("%s: stats %+v do not add up", set, st)
		}
		ids := map[string]bool{}
		for _, m := range msgs {
			if ids[m.ID] {
				t.Fatalf("%s: message id %s twice", set, m.ID)
			}
			ids[m.ID] = true
			if !slices.Contains(labelmaps.Ekman(), m.Label) {
				t.Fatalf("%s: label %q is not an Ekman label", set, m.Label)
			}
		}
		t.Logf("%s test: %+v", set, st)
	}
}
