package stage

import (
	"flag"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestConsumerFlagsDefaultsAndChecks(t *testing.T) {
	var f ConsumerFlags
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	f.Register(fs, ConsumerDefaults{Role: "sink", EventsUse: "to store", GroupID: "g", DeadLetterTopic: "dlq",
		DeadLetterUse: "bad events", Topics: "events", BatchSize: 7, BatchUse: "rows", FlushInterval: 3 * time.Second, DrainUse: "store"})
	if err := fs.Parse(nil); err != nil {
		t.Fatal(err)
	}
	if f.GroupID != "g" || f.DeadLetterTopic != "dlq" || f.BatchSize != 7 || f.FlushInterval != 3*time.Second || f.EventsTopic == "" {
		t.Errorf("defaults not applied: %+v", f)
	}
	if !strings.Contains(fs.Lookup("group-id").Usage, "of the sinks") {
		t.Errorf("-group-id's help does not name the role: %q", fs.Lookup("group-id").Usage)
	}
	var problems []string
	check := func(ok bool, format string, _ ...any) {
		if !ok {
			problems = append(problems, format)
		}
	}
	f.Check(check)
	if len(problems) != 0 {
		t.Fatalf("defaults rejected: %v", problems)
	}
	if err := fs.Parse([]string{"-kafka-brokers=", "-dead-letter-topic=emotion.events", "-batch-size=0", "-drain-timeout=0s"}); err != nil {
		t.Fatal(err)
	}
	f.Check(check)
	for _, want := range []string{"-kafka-brokers is empty", "-dead-letter-topic must differ from -events-topic",
		"-batch-size must be positive", "-drain-timeout must be positive"} {
		if !slices.Contains(problems, want) {
			t.Errorf("no %q among %v", want, problems)
		}
	}
	if len(problems) != 4 {
		t.Errorf("%d problems, want 4: %v", len(problems), problems)
	}
}
