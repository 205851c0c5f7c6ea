package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/emoflow/emoflow/internal/classifyapi"
	"github.com/emoflow/emoflow/internal/contract"
)

// fault is one thing that goes wrong.
type fault struct {
	name string
	// offLivePath: the fault is not on live traffic's way (the cache, the
	// store, competing load), so live traffic must keep its deadline
	// during it; otherwise only after recovery.
	offLivePath bool
	// inject causes the fault and returns once it is over (the service
	// back and ready, the stall or overload ended).
	inject func(ctx context.Context, s *suite) error
	// check adds fault-specific checks after the drain.
	check func(ctx context.Context, s *suite, o *Outcome) error
}

// faultOrder is the full suite's order.
var faultOrder = []string{"classifier-kill", "kafka-kill", "redis-kill", "clickhouse-stop", "classifier-stall", "overload-replay"}

// FaultNames lists the faults in the full suite's order.
func FaultNames() []string { return append([]string(nil), faultOrder...) }

var faults = map[string]fault{
	"classifier-kill": {name: "classifier-kill", inject: func(ctx context.Context, s *suite) error {
		if err := s.classifier.kill(); err != nil {
			return err
		}
		if err := sleepCtx(ctx, s.cfg.ClassifierDown); err != nil {
			return err
		}
		if err := s.classifier.start(); err != nil {
			return err
		}
		return s.classifier.waitReady(ctx, 3*time.Minute)
	}},
	"kafka-kill": {name: "kafka-kill", inject: func(ctx context.Context, s *suite) error {
		return killAndRestart(ctx, s, "kill", "kafka", s.cfg.KafkaDown)
	}},
	"redis-kill": {name: "redis-kill", offLivePath: true, inject: func(ctx context.Context, s *suite) error {
		return killAndRestart(ctx, s, "kill", "redis", s.cfg.RedisDown)
	}},
	"clickhouse-stop": {name: "clickhouse-stop", offLivePath: true, inject: func(ctx context.Context, s *suite) error {
		return killAndRestart(ctx, s, "stop", "clickhouse", s.cfg.ClickHouseDown)
	}},
	"classifier-stall": {name: "classifier-stall", inject: func(ctx context.Context, s *suite) error {
		s.proxy.Stall(s.cfg.Stall)
		return sleepCtx(ctx, s.cfg.Stall)
	}},
	"overload-replay": {name: "overload-replay", offLivePath: true, inject: func(ctx context.Context, s *suite) error {
		if err := s.startReplay(ctx); err != nil {
			return err
		}
		s.traffic.setMultiplier(2)
		defer s.traffic.setMultiplier(1)
		return sleepCtx(ctx, s.cfg.Overload)
	}, check: func(ctx context.Context, s *suite, o *Outcome) error { return s.checkReplay(ctx, o) }},
}

// killAndRestart stops a local service with how ("kill": SIGKILL, or
// "stop": SIGTERM), keeps it down for down, and starts it again (the
// script waits until it answers).
func killAndRestart(ctx context.Context, s *suite, how, service string, down time.Duration) error {
	if err := services(ctx, s.cfg.ServicesScript, how, service); err != nil {
		return err
	}
	if err := sleepCtx(ctx, down); err != nil {
		return err
	}
	return services(ctx, s.cfg.ServicesScript, "start", service)
}

// replayRun is the overload fault's `emoctl replay`.
type replayRun struct {
	proc   *process
	runID  string
	starts map[int]int64
	ends   map[int]int64
}

// startReplay starts emoctl replay over the newest ReplayMessages of the
// input topic, through the classifier's default adapter, without the
// cache (so that every replayed text is computed), its events into the
// pipeline's events topic.
func (s *suite) startReplay(ctx context.Context) error {
	adapter, err := s.defaultAdapter(ctx)
	if err != nil {
		return err
	}
	offs, err := topicOffsets(ctx, s.admin, s.input, s.cfg.Partitions)
	if err != nil {
		return err
	}
	run := &replayRun{runID: s.name + "_replay", starts: map[int]int64{}, ends: map[int]int64{}}
	per := int64(s.cfg.ReplayMessages / s.cfg.Partitions)
	var startList, endList []string
	for p := range s.cfg.Partitions {
		run.starts[p] = max(offs[p].first, offs[p].end-per)
		run.ends[p] = offs[p].end
		startList = append(startList, fmt.Sprintf("%d:%d", p, run.starts[p]))
		endList = append(endList, fmt.Sprintf("%d:%d", p, run.ends[p]))
	}
	httpAddr, err := freePort()
	if err != nil {
		return err
	}
	run.proc = &process{name: "emoctl replay", bin: filepath.Join(s.cfg.BinDir, "emoctl"), logPath: filepath.Join(s.workDir, "replay.log"),
		args: []string{"replay", "-kafka-brokers=" + strings.Join(s.cfg.Brokers, ","), "-classifier-urls=http://" + s.proxy.Addr(),
			"-input-topic=" + s.input, "-run-id=" + run.runID, "-adapter=" + adapter,
			"-start-offsets=" + strings.Join(startList, ","), "-end-offsets=" + strings.Join(endList, ","),
			"-ingest-http-addr=" + httpAddr, "-progress-interval=5s", "--",
			"-events-topic=" + s.events, "-dead-letter-topic=" + s.replayDL, "-redis-addr=",
			fmt.Sprintf("-topic-partitions=%d", s.cfg.Partitions)}}
	if err := run.proc.start(); err != nil {
		return err
	}
	s.replay = run
	return nil
}

// defaultAdapter asks the classifier for its default adapter (id@version).
func (s *suite) defaultAdapter(ctx context.Context) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+s.classifierAddr+"/v1/adapters", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", fmt.Errorf("list the classifier's adapters: %w", err)
	}
	defer resp.Body.Close()
	var list classifyapi.AdaptersResponse
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil || list.Default == "" {
		return "", fmt.Errorf("list the classifier's adapters: %s, %v", resp.Status, err)
	}
	return list.Default, nil
}

// checkReplay checks, once the replay has exited, that it finished
// cleanly and stored every valid message of its range exactly once under
// its run id; what it lost or duplicated counts in the fault's figures.
func (s *suite) checkReplay(ctx context.Context, o *Outcome) error {
	run := s.replay
	if run == nil {
		return fmt.Errorf("no replay was started")
	}
	if run.proc.running() {
		return fmt.Errorf("the replay did not finish within the drain")
	}
	if err := run.proc.wait(ctx, time.Second); err != nil {
		return fmt.Errorf("the replay failed: %v (log: %s)", err, run.proc.logPath)
	}
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var conds []string
	parts := make([]int, 0, len(run.ends))
	for p := range run.ends {
		parts = append(parts, p)
	}
	sort.Ints(parts)
	for _, p := range parts {
		conds = append(conds, fmt.Sprintf("(source_partition = %d AND source_offset >= %d AND source_offset < %d)", p, run.starts[p], run.ends[p]))
	}
	rows, err := s.ch.Query(qctx, "SELECT message_id FROM "+s.name+".events_dedup WHERE run_id = ? AND ("+strings.Join(conds, " OR ")+")", contract.LiveRun)
	if err != nil {
		return fmt.Errorf("replay check: %w", err)
	}
	want := map[string]bool{}
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			rows.Close()
			return fmt.Errorf("replay check: %w", err)
		}
		want[id] = true
	}
	rows.Close()
	got, err := storedCounts(qctx, s.ch, s.name, run.runID, "")
	if err != nil {
		return err
	}
	lost, dups := 0, 0
	for id := range want {
		if got[id] == 0 {
			lost++
		}
	}
	for _, n := range got {
		dups += max(n-1, 0)
	}
	o.Lost += lost
	o.Duplicated += dups
	s.log.Info("replay checked", "run", run.runID, "messages", len(want), "stored", len(got), "lost", lost, "duplicated", dups)
	if lost > 0 || dups > 0 {
		return fmt.Errorf("replay of %d messages: %d lost, %d duplicate rows", len(want), lost, dups)
	}
	if len(want) == 0 {
		return fmt.Errorf("the replay's range held no stored live messages")
	}
	return nil
}
