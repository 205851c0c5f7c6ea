// Package replay owns replay runs: re-classifying a range of a chat topic
// with one adapter version under a run id, so that the run's events can be
// evaluated and compared with other runs (internal/evaluate), and loading
// labelled data sets as chat topics to replay.
//
// A run's range is fixed at its first start as a plan: per partition, the
// first offset to replay and the offset to stop before. The plan is kept in
// Kafka itself, as the committed offsets (the end offsets) and commit
// metadata (the start offsets and adapter) of a group nobody consumes,
// PlanGroupID; so a run started again with the same id replays the same
// range on any machine. The run consumes in its own consumer group,
// GroupID, positioned at the start offsets before its first consumer
// joins (kafka-go cannot position a group's reader; an admin commit can).
// Ingest runs in that group with -priority replay, the run id, -adapter and
// -stop-at-offsets, commits as it goes and stops at the end offsets; a run
// killed half-way resumes from the group's committed offsets. Live ingest
// and other runs use other groups, whose offsets a run never touches.
//
// Offsets expire with the broker's offsets.retention.minutes (7 days by
// default) after a group empties: a run can be resumed within that time.
package replay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/classifyapi"
	"github.com/emoflow/emoflow/internal/contract"
)

// runIDPattern is what a run id may be: it names consumer groups and is
// stored in every event.
var runIDPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$`)

// CheckRunID says why id cannot be a replay's run id, or returns nil.
func CheckRunID(id string) error {
	switch {
	case !runIDPattern.MatchString(id):
		return fmt.Errorf("run id %q: want 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit", id)
	case id == contract.LiveRun:
		return fmt.Errorf("run id %q is live traffic's", id)
	}
	return nil
}

// CheckAdapterVersion says why ref is not an exact adapter version
// ("id@version"), or returns nil: a replay pins the version, so that every
// event of the run has the same adapter (and the run's events are one per
// message).
func CheckAdapterVersion(ref string) error {
	_, version, err := classifyapi.ParseAdapterRef(ref)
	if err != nil {
		return err
	}
	if version == "" {
		return fmt.Errorf("adapter %q: a replay needs an exact version, id@version (GET /v1/adapters lists them)", ref)
	}
	return nil
}

// GroupID is the consumer group in which a run consumes its range.
func GroupID(runID string) string { return "emoflow-replay-" + runID }

// PlanGroupID is the group whose commits hold a run's plan. The slash
// cannot occur in a run id, so no run's GroupID is another's PlanGroupID.
func PlanGroupID(runID string) string { return "emoflow-replay-plan/" + runID }

// Request asks for a run. Each side of the range is given by offsets, by
// time, or not at all (the topic's first offsets; its end offsets at the
// run's first start).
type Request struct {
	RunID   string
	Topic   string
	Adapter string
	// From and To are message timestamps: the range holds the messages
	// from the first at or after From to the last before the first at or
	// after To. Zero when not given.
	From, To time.Time
	// StartOffsets and EndOffsets give offsets per partition; with either,
	// only the partitions it lists are replayed.
	StartOffsets, EndOffsets map[int]int64
}

func (r Request) check() error {
	var errs []error
	if err := CheckRunID(r.RunID); err != nil {
		errs = append(errs, err)
	}
	if r.Topic == "" {
		errs = append(errs, errors.New("no topic"))
	}
	if err := CheckAdapterVersion(r.Adapter); err != nil {
		errs = append(errs, err)
	}
	if !r.From.IsZero() && !r.To.IsZero() && !r.From.Before(r.To) {
		errs = append(errs, fmt.Errorf("the range is empty: from %s is not before to %s", r.From.Format(time.RFC3339), r.To.Format(time.RFC3339)))
	}
	if r.StartOffsets != nil && !r.From.IsZero() {
		errs = append(errs, errors.New("start offsets and a start time exclude each other"))
	}
	if r.EndOffsets != nil && !r.To.IsZero() {
		errs = append(errs, errors.New("end offsets and an end time exclude each other"))
	}
	return errors.Join(errs...)
}

// Plan is a run's range: the partitions replayed, each from Start (the
// first offset replayed) to End (the offset replay stops before).
type Plan struct {
	RunID   string
	Topic   string
	Adapter string
	Start   map[int]int64
	End     map[int]int64
	// Resumed is true when an earlier start of the run stored the plan.
	Resumed bool
}

// Total is the number of offsets in the range (messages, unless the topic
// is compacted).
func (p Plan) Total() int64 {
	var n int64
	for part, end := range p.End {
		n += end - p.Start[part]
	}
	return n
}

// Partitions are the replayed partitions, in order.
func (p Plan) Partitions() []int { return slices.Sorted(maps.Keys(p.End)) }

// StopAtOffsets is the plan's end offsets in ingest's -stop-at-offsets form.
func (p Plan) StopAtOffsets() string { return FormatOffsets(p.End) }

// planMetadata is the commit metadata of a partition in the plan group.
type planMetadata struct {
	Start   int64  `json:"start"`
	Adapter string `json:"adapter"`
}

// Prepare returns the run's plan and positions its consumer group. On the
// run's first start it resolves the range, stores the plan and commits the
// start offsets to the run's group, which must be new. On a later start it
// loads the stored plan; the request must agree with it (same adapter, and
// the same offsets wherever the request gives a side of the range), and the
// group keeps the offsets it committed, so that the run resumes.
func Prepare(ctx context.Context, client *kafka.Client, req Request) (Plan, error) {
	if err := req.check(); err != nil {
		return Plan{}, err
	}
	offsets, err := topicOffsets(ctx, client, req.Topic)
	if err != nil {
		return Plan{}, err
	}
	stored, err := loadPlan(ctx, client, req, offsets)
	if err != nil {
		return Plan{}, err
	}
	committed, err := committedOffsets(ctx, client, GroupID(req.RunID), req.Topic, slices.Sorted(maps.Keys(offsets)))
	if err != nil {
		return Plan{}, err
	}
	plan := stored
	if stored == nil {
		if len(committed) > 0 {
			return Plan{}, fmt.Errorf("consumer group %s has committed offsets but no stored plan: it was not made by a replay; choose another run id", GroupID(req.RunID))
		}
		if plan, err = resolve(ctx, client, req, offsets); err != nil {
			return Plan{}, err
		}
		if err := storePlan(ctx, client, plan); err != nil {
			return Plan{}, err
		}
	} else if err := agrees(ctx, client, req, *stored, offsets); err != nil {
		return Plan{}, err
	}
	// Position the partitions the group has no offset for: all of them on
	// the first start, or those a start killed between storing the plan
	// and committing missed.
	missing := map[int]int64{}
	for p, start := range plan.Start {
		if _, ok := committed[p]; !ok {
			missing[p] = start
		}
	}
	if err := commit(ctx, client, GroupID(req.RunID), req.Topic, missing, nil); err != nil {
		return Plan{}, err
	}
	return *plan, nil
}

// partitionOffsets are a partition's first offset and end offset (the next
// to be written).
type partitionOffsets struct{ first, end int64 }

// topicOffsets returns the first and end offsets of every partition of
// topic.
func topicOffsets(ctx context.Context, client *kafka.Client, topic string) (map[int]partitionOffsets, error) {
	meta, err := client.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		return nil, fmt.Errorf("metadata of topic %s: %w", topic, err)
	}
	if len(meta.Topics) != 1 || meta.Topics[0].Error != nil {
		if len(meta.Topics) == 1 && errors.Is(meta.Topics[0].Error, kafka.UnknownTopicOrPartition) {
			return nil, fmt.Errorf("topic %s does not exist", topic)
		}
		return nil, fmt.Errorf("metadata of topic %s: %v", topic, meta.Topics)
	}
	var reqs []kafka.OffsetRequest
	for _, p := range meta.Topics[0].Partitions {
		reqs = append(reqs, kafka.FirstOffsetOf(p.ID), kafka.LastOffsetOf(p.ID))
	}
	resp, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("offsets of topic %s: %w", topic, err)
	}
	out := map[int]partitionOffsets{}
	for _, p := range resp.Topics[topic] {
		if p.Error != nil {
			return nil, fmt.Errorf("offsets of topic %s partition %d: %w", topic, p.Partition, p.Error)
		}
		out[p.Partition] = partitionOffsets{first: p.FirstOffset, end: p.LastOffset}
	}
	if len(out) != len(meta.Topics[0].Partitions) || len(out) == 0 {
		return nil, fmt.Errorf("offsets of topic %s: %d partitions answered of %d", topic, len(out), len(meta.Topics[0].Partitions))
	}
	return out, nil
}

// offsetsAt returns, for every partition, the offset of the first message
// whose timestamp is at or after t, or the partition's end offset when
// there is none.
func offsetsAt(ctx context.Context, client *kafka.Client, topic string, offsets map[int]partitionOffsets, t time.Time) (map[int]int64, error) {
	var reqs []kafka.OffsetRequest
	for p := range offsets {
		reqs = append(reqs, kafka.TimeOffsetOf(p, t))
	}
	resp, err := client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		return nil, fmt.Errorf("offsets of topic %s at %s: %w", topic, t.Format(time.RFC3339), err)
	}
	out := map[int]int64{}
	for _, p := range resp.Topics[topic] {
		if p.Error != nil {
			return nil, fmt.Errorf("offsets of topic %s partition %d at %s: %w", topic, p.Partition, t.Format(time.RFC3339), p.Error)
		}
		// One time was asked for, so there is one answer; the broker says
		// -1 when no message is that recent.
		for o := range p.Offsets {
			out[p.Partition] = o
			if o < 0 {
				out[p.Partition] = offsets[p.Partition].end
			}
		}
	}
	if len(out) != len(offsets) {
		return nil, fmt.Errorf("offsets of topic %s at %s: %d partitions answered of %d", topic, t.Format(time.RFC3339), len(out), len(offsets))
	}
	return out, nil
}

// resolve turns the request's range into offsets.
func resolve(ctx context.Context, client *kafka.Client, req Request, offsets map[int]partitionOffsets) (*Plan, error) {
	start, end := map[int]int64{}, map[int]int64{}
	for p, o := range offsets {
		start[p], end[p] = o.first, o.end
	}
	var err error
	if !req.From.IsZero() {
		if start, err = offsetsAt(ctx, client, req.Topic, offsets, req.From); err != nil {
			return nil, err
		}
	}
	if !req.To.IsZero() {
		if end, err = offsetsAt(ctx, client, req.Topic, offsets, req.To); err != nil {
			return nil, err
		}
	}
	replayed := slices.Sorted(maps.Keys(offsets))
	for _, explicit := range []map[int]int64{req.StartOffsets, req.EndOffsets} {
		if explicit != nil {
			replayed = slices.DeleteFunc(replayed, func(p int) bool { _, ok := explicit[p]; return !ok })
		}
	}
	for p, o := range req.StartOffsets {
		start[p] = o
	}
	for p, o := range req.EndOffsets {
		end[p] = o
	}
	plan := &Plan{RunID: req.RunID, Topic: req.Topic, Adapter: req.Adapter, Start: map[int]int64{}, End: map[int]int64{}}
	var errs []error
	for _, explicit := range []map[int]int64{req.StartOffsets, req.EndOffsets} {
		for p := range explicit {
			if _, ok := offsets[p]; !ok {
				errs = append(errs, fmt.Errorf("partition %d: topic %s has %d partitions", p, req.Topic, len(offsets)))
			}
		}
	}
	for _, p := range replayed {
		o, s, e := offsets[p], start[p], end[p]
		switch {
		case s < o.first:
			errs = append(errs, fmt.Errorf("partition %d: start offset %d is before the first offset still in the topic, %d", p, s, o.first))
		case e > o.end:
			errs = append(errs, fmt.Errorf("partition %d: end offset %d is past the partition's end offset %d", p, e, o.end))
		case s > e:
			errs = append(errs, fmt.Errorf("partition %d: start offset %d is after end offset %d", p, s, e))
		case s < e:
			plan.Start[p], plan.End[p] = s, e
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if plan.Total() == 0 {
		return nil, fmt.Errorf("the range holds no message of topic %s: nothing to replay", req.Topic)
	}
	return plan, nil
}

// storePlan commits the plan to the plan group.
func storePlan(ctx context.Context, client *kafka.Client, plan *Plan) error {
	meta := map[int]string{}
	for p, start := range plan.Start {
		raw, err := json.Marshal(planMetadata{Start: start, Adapter: plan.Adapter})
		if err != nil {
			return fmt.Errorf("store the plan of run %s: %w", plan.RunID, err)
		}
		meta[p] = string(raw)
	}
	if err := commit(ctx, client, PlanGroupID(plan.RunID), plan.Topic, plan.End, meta); err != nil {
		return fmt.Errorf("store the plan of run %s: %w", plan.RunID, err)
	}
	return nil
}

// loadPlan returns the plan an earlier start stored, or nil.
func loadPlan(ctx context.Context, client *kafka.Client, req Request, offsets map[int]partitionOffsets) (*Plan, error) {
	resp, err := client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: PlanGroupID(req.RunID),
		Topics: map[string][]int{req.Topic: slices.Sorted(maps.Keys(offsets))}})
	if err != nil {
		return nil, fmt.Errorf("load the plan of run %s: %w", req.RunID, err)
	}
	if resp.Error != nil {
		return nil, fmt.Errorf("load the plan of run %s: %w", req.RunID, resp.Error)
	}
	plan := &Plan{RunID: req.RunID, Topic: req.Topic, Start: map[int]int64{}, End: map[int]int64{}, Resumed: true}
	for _, p := range resp.Topics[req.Topic] {
		if p.Error != nil {
			return nil, fmt.Errorf("load the plan of run %s, partition %d: %w", req.RunID, p.Partition, p.Error)
		}
		if p.CommittedOffset < 0 {
			continue
		}
		var m planMetadata
		if err := json.Unmarshal([]byte(p.Metadata), &m); err != nil {
			return nil, fmt.Errorf("the plan of run %s, partition %d: unreadable metadata %q: %w", req.RunID, p.Partition, p.Metadata, err)
		}
		plan.Start[p.Partition], plan.End[p.Partition] = m.Start, p.CommittedOffset
		if plan.Adapter != "" && plan.Adapter != m.Adapter {
			return nil, fmt.Errorf("the plan of run %s names two adapters, %s and %s", req.RunID, plan.Adapter, m.Adapter)
		}
		plan.Adapter = m.Adapter
	}
	if len(plan.End) == 0 {
		other, err := planTopics(ctx, client, req.RunID)
		if err != nil {
			return nil, err
		}
		if other != "" {
			return nil, fmt.Errorf("run %s replays topic %s, not %s; choose another run id", req.RunID, other, req.Topic)
		}
		return nil, nil
	}
	return plan, nil
}

// planTopics returns the topic of a run's stored plan ("" when none), for a
// request that names another topic.
func planTopics(ctx context.Context, client *kafka.Client, runID string) (string, error) {
	// No topics: every topic the group has offsets for.
	resp, err := client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: PlanGroupID(runID)})
	if err != nil {
		return "", fmt.Errorf("load the plan of run %s: %w", runID, err)
	}
	for topic, parts := range resp.Topics {
		for _, p := range parts {
			if p.Error == nil && p.CommittedOffset >= 0 {
				return topic, nil
			}
		}
	}
	return "", nil
}

// agrees checks a request against the stored plan of its run.
func agrees(ctx context.Context, client *kafka.Client, req Request, stored Plan, offsets map[int]partitionOffsets) error {
	if req.Adapter != stored.Adapter {
		return fmt.Errorf("run %s replays with adapter %s, not %s: use that adapter to resume it, or another run id", req.RunID, stored.Adapter, req.Adapter)
	}
	if req.From.IsZero() && req.To.IsZero() && req.StartOffsets == nil && req.EndOffsets == nil {
		return nil
	}
	asked, err := resolve(ctx, client, req, offsets)
	if err != nil {
		return fmt.Errorf("run %s exists; its range as asked now: %w", req.RunID, err)
	}
	given := func(start bool) bool {
		if start {
			return !req.From.IsZero() || req.StartOffsets != nil
		}
		return !req.To.IsZero() || req.EndOffsets != nil
	}
	for _, side := range []struct {
		start          bool
		name           string
		stored, wanted map[int]int64
	}{{true, "start", stored.Start, asked.Start}, {false, "end", stored.End, asked.End}} {
		if given(side.start) && !maps.Equal(side.stored, side.wanted) {
			return fmt.Errorf("run %s replays %s offsets %s, but the range asked for now gives %s: resume it without range flags, or use another run id",
				req.RunID, side.name, FormatOffsets(side.stored), FormatOffsets(side.wanted))
		}
	}
	return nil
}

// committedOffsets returns the offsets group has committed for topic's
// partitions (partitions without one are absent).
func committedOffsets(ctx context.Context, client *kafka.Client, group, topic string, partitions []int) (map[int]int64, error) {
	resp, err := client.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{topic: partitions}})
	if err != nil {
		return nil, fmt.Errorf("committed offsets of group %s: %w", group, err)
	}
	if resp.Error != nil {
		return nil, fmt.Errorf("committed offsets of group %s: %w", group, resp.Error)
	}
	out := map[int]int64{}
	for _, p := range resp.Topics[topic] {
		if p.Error != nil {
			return nil, fmt.Errorf("committed offsets of group %s, partition %d: %w", group, p.Partition, p.Error)
		}
		if p.CommittedOffset >= 0 {
			out[p.Partition] = p.CommittedOffset
		}
	}
	return out, nil
}

// commit commits offsets (with metadata, where given) for a group that has
// no active member, as admin tools do: generation -1, no member id. A
// group with members refuses it.
func commit(ctx context.Context, client *kafka.Client, group, topic string, offsets map[int]int64, metadata map[int]string) error {
	if len(offsets) == 0 {
		return nil
	}
	var commits []kafka.OffsetCommit
	for _, p := range slices.Sorted(maps.Keys(offsets)) {
		commits = append(commits, kafka.OffsetCommit{Partition: p, Offset: offsets[p], Metadata: metadata[p]})
	}
	resp, err := client.OffsetCommit(ctx, &kafka.OffsetCommitRequest{GroupID: group, GenerationID: -1, Topics: map[string][]kafka.OffsetCommit{topic: commits}})
	if err != nil {
		return fmt.Errorf("commit offsets of group %s: %w", group, err)
	}
	var errs []error
	for _, p := range resp.Topics[topic] {
		if p.Error != nil {
			errs = append(errs, fmt.Errorf("partition %d: %w", p.Partition, p.Error))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("commit offsets of group %s (does it have active members?): %w", group, err)
	}
	return nil
}

// FormatOffsets writes offsets per partition as "0:12,1:40".
func FormatOffsets(offsets map[int]int64) string {
	var pairs []string
	for _, p := range slices.Sorted(maps.Keys(offsets)) {
		pairs = append(pairs, fmt.Sprintf("%d:%d", p, offsets[p]))
	}
	return strings.Join(pairs, ",")
}
