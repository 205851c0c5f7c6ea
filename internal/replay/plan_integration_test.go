package replay

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/testenv"
)

// kafkaTopic is a test topic of n partitions, each holding perPartition
// messages whose timestamps are base + i minutes (i = offset).
type kafkaTopic struct {
	client *kafka.Client
	name   string
	base   time.Time
}

func newKafkaTopic(t *testing.T, partitions, perPartition int) *kafkaTopic {
	t.Helper()
	brokers := testenv.Kafka(t)
	k := &kafkaTopic{
		client: &kafka.Client{Addr: kafka.TCP(strings.Split(brokers, ",")...), Timeout: 20 * time.Second},
		name:   testenv.Name(t, "replay"),
		base:   time.Now().Add(-time.Hour).Truncate(time.Minute),
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resp, err := k.client.CreateTopics(ctx, &kafka.CreateTopicsRequest{Topics: []kafka.TopicConfig{{Topic: k.name, NumPartitions: partitions, ReplicationFactor: 1}}})
	if err != nil || resp.Errors[k.name] != nil {
		t.Fatalf("create topic: %v %v", err, resp)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		_, _ = k.client.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: []string{k.name}})
	})
	w := &kafka.Writer{Addr: kafka.TCP(strings.Split(brokers, ",")...), Topic: k.name, RequiredAcks: kafka.RequireAll,
		BatchTimeout: time.Millisecond, MaxAttempts: 20,
		Balancer: kafka.BalancerFunc(func(m kafka.Message, _ ...int) int { return m.Partition })}
	defer w.Close()
	var msgs []kafka.Message
	for p := range partitions {
		for i := range perPartition {
			msgs = append(msgs, kafka.Message{Partition: p, Value: fmt.Appendf(nil, "%d/%d", p, i), Time: k.base.Add(time.Duration(i) * time.Minute)})
		}
	}
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		t.Fatal(err)
	}
	return k
}

func (k *kafkaTopic) committed(t *testing.T, group string) map[int]int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	offsets, err := topicOffsets(ctx, k.client, k.name)
	if err != nil {
		t.Fatal(err)
	}
	var parts []int
	for p := range offsets {
		parts = append(parts, p)
	}
	c, err := committedOffsets(ctx, k.client, group, k.name, parts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (k *kafkaTopic) prepare(t *testing.T, req Request) (Plan, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req.Topic = k.name
	return Prepare(ctx, k.client, req)
}

func (k *kafkaTopic) commit(t *testing.T, group string, offsets map[int]int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := commit(ctx, k.client, group, k.name, offsets, nil); err != nil {
		t.Fatal(err)
	}
}

// TestIntegrationPrepareByTimeThenResume: a time range resolves to the
// offsets of the first messages at or after each end; the run's fresh group
// is positioned at the start, the live group is left alone, and starting
// the run again keeps the offsets the group has committed since.
func TestIntegrationPrepareByTimeThenResume(t *testing.T) {
	k := newKafkaTopic(t, 3, 10)
	live := testenv.Name(t, "live")
	k.commit(t, live, map[int]int64{0: 4, 1: 9, 2: 1})
	run := testenv.Name(t, "run")
	req := Request{RunID: run, Adapter: "emo@2", From: k.base.Add(3 * time.Minute), To: k.base.Add(7*time.Minute - time.Second)}
	plan, err := k.prepare(t, req)
	if err != nil {
		t.Fatal(err)
	}
	want := map[int]int64{0: 3, 1: 3, 2: 3}
	if plan.Resumed || !reflect.DeepEqual(plan.Start, want) || !reflect.DeepEqual(plan.End, map[int]int64{0: 7, 1: 7, 2: 7}) || plan.Total() != 12 {
		t.Fatalf("plan %+v", plan)
	}
	if got := k.committed(t, GroupID(run)); !reflect.DeepEqual(got, want) {
		t.Errorf("the run's group committed %v, want the start offsets %v", got, want)
	}
	if got := k.committed(t, PlanGroupID(run)); !reflect.DeepEqual(got, plan.End) {
		t.Errorf("the plan group holds %v, want the end offsets %v", got, plan.End)
	}

	// Progress made, then the same command again: resumed, not reset.
	k.commit(t, GroupID(run), map[int]int64{0: 6})
	again, err := k.prepare(t, req)
	if err != nil {
		t.Fatal(err)
	}
	if !again.Resumed || !reflect.DeepEqual(again.Start, plan.Start) || !reflect.DeepEqual(again.End, plan.End) || again.Adapter != "emo@2" {
		t.Errorf("resumed plan %+v, want %+v", again, plan)
	}
	if got := k.committed(t, GroupID(run)); got[0] != 6 {
		t.Errorf("resuming moved the group's offsets: %v", got)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if n, err := Committed(ctx, k.client, again); err != nil || n != 3 {
		t.Errorf("committed %d (%v), want 3", n, err)
	}
	// Without range flags it resumes too.
	if _, err := k.prepare(t, Request{RunID: run, Adapter: "emo@2"}); err != nil {
		t.Errorf("resume without range flags: %v", err)
	}
	if got := k.committed(t, live); !reflect.DeepEqual(got, map[int]int64{0: 4, 1: 9, 2: 1}) {
		t.Errorf("the live group's offsets moved: %v", got)
	}

	for name, r := range map[string]Request{
		"another adapter": {RunID: run, Adapter: "emo@3"},
		"another start":   {RunID: run, Adapter: "emo@2", From: k.base.Add(time.Minute)},
		"another end":     {RunID: run, Adapter: "emo@2", EndOffsets: map[int]int64{0: 7}},
	} {
		if _, err := k.prepare(t, r); err == nil || !strings.Contains(err.Error(), "another run id") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestIntegrationPrepareByOffsets: explicit offsets replay only the
// partitions they list; an end left open is the partition's end.
func TestIntegrationPrepareByOffsets(t *testing.T) {
	k := newKafkaTopic(t, 3, 10)
	run := testenv.Name(t, "run")
	plan, err := k.prepare(t, Request{RunID: run, Adapter: "a@1", StartOffsets: map[int]int64{0: 2, 2: 0}})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(plan.Start, map[int]int64{0: 2, 2: 0}) || !reflect.DeepEqual(plan.End, map[int]int64{0: 10, 2: 10}) {
		t.Fatalf("plan %+v", plan)
	}
	if got := k.committed(t, GroupID(run)); !reflect.DeepEqual(got, plan.Start) {
		t.Errorf("group committed %v", got)
	}
	// From the last message on: the end is the partition's end.
	plan, err = k.prepare(t, Request{RunID: testenv.Name(t, "run"), Adapter: "a@1", From: k.base.Add(9 * time.Minute)})
	if err != nil || plan.Total() != 3 {
		t.Errorf("the last minute: %+v %v", plan, err)
	}
}

func TestIntegrationPrepareRefusesBadRanges(t *testing.T) {
	k := newKafkaTopic(t, 2, 5)
	cases := map[string]struct {
		req  Request
		want string
	}{
		"end past the end":     {Request{EndOffsets: map[int]int64{0: 6}}, "past the partition's end offset 5"},
		"start after end":      {Request{StartOffsets: map[int]int64{1: 4}, EndOffsets: map[int]int64{1: 2}}, "after end offset"},
		"unknown partition":    {Request{StartOffsets: map[int]int64{7: 0}}, "has 2 partitions"},
		"after every message":  {Request{From: time.Now().Add(time.Hour)}, "nothing to replay"},
		"before every message": {Request{To: k.base.Add(-time.Hour)}, "nothing to replay"},
	}
	for name, c := range cases {
		c.req.RunID, c.req.Adapter = testenv.Name(t, "run"), "a@1"
		_, err := k.prepare(t, c.req)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %v, want an error with %q", name, err, c.want)
		}
		if got := k.committed(t, PlanGroupID(c.req.RunID)); len(got) != 0 {
			t.Errorf("%s: a refused run stored a plan %v", name, got)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := Prepare(ctx, k.client, Request{RunID: "r", Topic: k.name + "_missing", Adapter: "a@1"}); err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("a missing topic: %v", err)
	}
	used := testenv.Name(t, "run")
	k.commit(t, GroupID(used), map[int]int64{0: 1})
	if _, err := k.prepare(t, Request{RunID: used, Adapter: "a@1"}); err == nil || !strings.Contains(err.Error(), "not made by a replay") {
		t.Errorf("a group that was used otherwise: %v", err)
	}
	other := newKafkaTopic(t, 1, 3)
	run := testenv.Name(t, "run")
	if _, err := other.prepare(t, Request{RunID: run, Adapter: "a@1"}); err != nil {
		t.Fatal(err)
	}
	if _, err := k.prepare(t, Request{RunID: run, Adapter: "a@1"}); err == nil || !strings.Contains(err.Error(), "replays topic "+other.name) {
		t.Errorf("the same run id on another topic: %v", err)
	}
}
