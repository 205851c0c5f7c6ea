package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/classifier"
	"github.com/emoflow/emoflow/internal/classifyapi"
	"github.com/emoflow/emoflow/internal/contract"
	"github.com/emoflow/emoflow/internal/datasets"
	"github.com/emoflow/emoflow/internal/evaluate"
	"github.com/emoflow/emoflow/internal/randmodel"
	"github.com/emoflow/emoflow/internal/replay"
	"github.com/emoflow/emoflow/internal/sink"
	"github.com/emoflow/emoflow/internal/testenv"
)

// pipeline is one integration test's world on the real local services: the
// real classifier with a tiny random model, a sink into a database of its
// own, and the topics and names of the test.
type pipeline struct {
	t             *testing.T
	name          string
	brokers       string
	redis         string
	data          string
	input, events string
	classifierURL string
	adapter       string
	admin         *kafka.Client
	ch            driver.Conn
}

func newPipeline(t *testing.T) *pipeline {
	t.Helper()
	p := &pipeline{t: t, name: testenv.Name(t, "emoctl"), brokers: testenv.Kafka(t), redis: testenv.Redis(t), data: testenv.Shared(t, "data")}
	chAddr := testenv.ClickHouse(t)
	p.input, p.events = p.name+"_in", p.name+"_events"
	p.admin = &kafka.Client{Addr: kafka.TCP(strings.Split(p.brokers, ",")...), Timeout: 20 * time.Second}

	examples, err := datasets.Read(p.data, datasets.MELD, "test")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	lines := []string{"Classify the emotion of this chat message as one of: anger, disgust, fear, joy, neutral, sadness, surprise."}
	for _, e := range examples[:400] {
		lines = append(lines, e.Text)
	}
	if err := randmodel.TrainTokenizer(context.Background(), dir, lines, 1000); err != nil {
		t.Fatal(err)
	}
	spec := randmodel.Spec{Arch: "chatglm2", Layers: 2, Hidden: 64, Heads: 4, Groups: 2, FFN: 128, Vocab: 1088, Seed: 5, Std: 0.3, EOSIDs: []int{2}}
	if err := randmodel.Write(dir, spec); err != nil {
		t.Fatal(err)
	}
	cls := testenv.Start(t, "classifier", &classifier.Component{}, "-dtype=float32", "-model-dir="+dir, "-max-queue-delay=5ms")
	p.classifierURL = "http://" + cls.RT.Addr
	testenv.Start(t, "sink", &sink.Component{}, "-kafka-brokers="+p.brokers, "-events-topic="+p.events,
		"-dead-letter-topic="+p.events+"_dlq", "-group-id="+p.name+"_sink", "-clickhouse-addr="+chAddr,
		"-clickhouse-database="+p.name, "-flush-interval=200ms", "-topic-partitions=3")

	resp, err := http.Get(p.classifierURL + "/v1/adapters")
	if err != nil {
		t.Fatal(err)
	}
	var ads classifyapi.AdaptersResponse
	err = json.NewDecoder(resp.Body).Decode(&ads)
	resp.Body.Close()
	if err != nil || ads.Default == "" {
		t.Fatalf("adapters: %+v %v", ads, err)
	}
	p.adapter = ads.Default

	if p.ch, err = clickhouse.Open(&clickhouse.Options{Addr: []string{chAddr}, DialTimeout: 10 * time.Second, ReadTimeout: time.Minute}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = p.ch.Exec(ctx, "DROP DATABASE IF EXISTS "+p.name)
		p.ch.Close()
		_, _ = p.admin.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: []string{p.input, p.events, p.events + "_dlq", p.name + "_dlq"}})
	})
	return p
}

// streams returns the streams of a command run by the test: no
// environment, output into buffers.
func (p *pipeline) streams() (streams, *bytes.Buffer, *testenv.LogBuffer) {
	var out bytes.Buffer
	errOut := &testenv.LogBuffer{}
	return streams{out: &out, err: errOut, lookup: noEnv}, &out, errOut
}

// replayArgs are the flags of emoctl replay for run over the test's topic,
// then extra replay flags, then "--" and ingest flags.
func (p *pipeline) replayArgs(run string, extra []string, ingestFlags ...string) []string {
	args := append([]string{"-kafka-brokers", p.brokers, "-classifier-urls", p.classifierURL, "-input-topic", p.input,
		"-run-id", run, "-adapter", p.adapter, "-progress-interval", "100ms"}, extra...)
	return append(append(args, "--", "-events-topic="+p.events, "-dead-letter-topic="+p.name+"_dlq",
		"-redis-addr="+p.redis, "-redis-key-prefix="+p.name+":", "-topic-partitions=3", "-commit-interval=200ms",
		"-session-timeout=6s", "-rebalance-timeout=10s", "-drain-timeout=3s"), ingestFlags...)
}

func (p *pipeline) loadDataset(args ...string) string {
	p.t.Helper()
	s, _, errOut := p.streams()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	args = append([]string{"-kafka-brokers", p.brokers, "-topic", p.input, "-data", p.data, "-topic-partitions", "3"}, args...)
	if err := runLoadDataset(ctx, args, s); err != nil {
		p.t.Fatalf("load-dataset %q: %v\n%s", args, err, errOut)
	}
	return errOut.String()
}

func (p *pipeline) endOffsets() map[int]int64 { return p.topicEnds(p.input) }

// committed returns group's committed offsets on the input topic.
func (p *pipeline) committed(group string) map[int]int64 {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	resp, err := p.admin.OffsetFetch(ctx, &kafka.OffsetFetchRequest{GroupID: group, Topics: map[string][]int{p.input: {0, 1, 2}}})
	if err != nil {
		p.t.Fatal(err)
	}
	out := map[int]int64{}
	for _, part := range resp.Topics[p.input] {
		out[part.Partition] = part.CommittedOffset
	}
	return out
}

// row is a run's event as the deduplicated view holds it.
type row struct {
	id, adapter, fingerprint, label, trueLabel string
}

// waitForRows waits until the view holds want events of run, and returns
// them.
func (p *pipeline) waitForRows(run string, want int) []row {
	p.t.Helper()
	deadline := time.Now().Add(3 * time.Minute)
	for {
		rows := p.rows(run)
		if len(rows) >= want {
			return rows
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("run %s: %d of %d events in ClickHouse after 3 minutes", run, len(rows), want)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func (p *pipeline) rows(run string) []row {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rs, err := p.ch.Query(ctx, "SELECT message_id, adapter, text_fingerprint, label, true_label FROM "+p.name+".events_dedup WHERE run_id = ?", run)
	if err != nil {
		// The sink creates the database at start-up; before its first
		// insert there may be nothing to read.
		return nil
	}
	defer rs.Close()
	var out []row
	for rs.Next() {
		var r row
		if err := rs.Scan(&r.id, &r.adapter, &r.fingerprint, &r.label, &r.trueLabel); err != nil {
			p.t.Fatal(err)
		}
		out = append(out, r)
	}
	return out
}

// scores are accuracy, macro and weighted F1 and UA computed the plain
// way, message by message, from the rows.
func scores(rows []row) (accuracy, macroF1, weightedF1, ua float64) {
	labels := map[string]bool{}
	tp, support, predicted := map[string]float64{}, map[string]float64{}, map[string]float64{}
	correct := 0.0
	for _, r := range rows {
		labels[r.label], labels[r.trueLabel] = true, true
		support[r.trueLabel]++
		predicted[r.label]++
		if r.label == r.trueLabel {
			tp[r.label]++
			correct++
		}
	}
	classesWithSupport := 0.0
	for l := range labels {
		prec, rec := 0.0, 0.0
		if predicted[l] > 0 {
			prec = tp[l] / predicted[l]
		}
		if support[l] > 0 {
			rec = tp[l] / support[l]
			ua += rec
			classesWithSupport++
		}
		f1 := 0.0
		if prec+rec > 0 {
			f1 = 2 * prec * rec / (prec + rec)
		}
		macroF1 += f1 / float64(len(labels))
		weightedF1 += f1 * support[l] / float64(len(rows))
	}
	return correct / float64(len(rows)), macroF1, weightedF1, ua / classesWithSupport
}

func closeTo(t *testing.T, what string, got, want float64) {
	t.Helper()
	if math.Abs(got-want) > 1e-9 {
		t.Errorf("%s: emoctl says %.10f, computed from the rows %.10f", what, got, want)
	}
}

// TestReplayOfLabelledTopicIsEvaluatedAndCompared loads two labelled data
// sets into a topic (DailyDialog mapped to Ekman labels), commits offsets
// for a live group, replays the whole topic and a part of it as two runs at
// once, and checks that eval gives the metrics computed independently from
// the deduplicated rows, that compare gives the agreement computed from the
// same rows, that every event carries its run id and adapter, and that the
// live group's offsets did not move.
func TestReplayOfLabelledTopicIsEvaluatedAndCompared(t *testing.T) {
	p := newPipeline(t)
	p.loadDataset("-set", "meld", "-limit", "150")
	out := p.loadDataset("-set", "dailydialog", "-labelmap", "dailydialog-ekman", "-limit", "60")
	if !strings.Contains(out, "published 60 messages of dailydialog test") || !strings.Contains(out, "labels mapped with dailydialog-ekman") {
		t.Errorf("load-dataset said %q", out)
	}
	// Loading again publishes the same identities: the replay's messages
	// are 210 distinct ids on 420 offsets.
	p.loadDataset("-set", "meld", "-limit", "150")
	p.loadDataset("-set", "dailydialog", "-labelmap", "dailydialog-ekman", "-limit", "60")
	const distinct = 210

	ends := p.endOffsets()
	live := p.name + "_live"
	liveOffsets := map[int]int64{0: ends[0] / 2, 1: 1, 2: ends[2]}
	ctx, cancel := context.WithTimeout(context.Background(), 6*time.Minute)
	defer cancel()
	var commits []kafka.OffsetCommit
	for part, o := range liveOffsets {
		commits = append(commits, kafka.OffsetCommit{Partition: part, Offset: o})
	}
	if _, err := p.admin.OffsetCommit(ctx, &kafka.OffsetCommitRequest{GroupID: live, GenerationID: -1, Topics: map[string][]kafka.OffsetCommit{p.input: commits}}); err != nil {
		t.Fatal(err)
	}

	// Run "all" replays everything; run "half" the first half of each
	// partition, at the same time.
	runAll, runHalf := p.name+"_all", p.name+"_half"
	half := map[int]int64{}
	var halfTotal int64
	var halfEnds []string
	for part, e := range ends {
		half[part] = e / 2
		halfTotal += e / 2
		halfEnds = append(halfEnds, fmt.Sprintf("%d:%d", part, e/2))
	}
	var wg sync.WaitGroup
	errs := make([]error, 2)
	logs := make([]*testenv.LogBuffer, 2)
	for i, args := range [][]string{
		p.replayArgs(runAll, nil),
		p.replayArgs(runHalf, []string{"-start-offsets", "0:0,1:0,2:0", "-end-offsets", strings.Join(halfEnds, ",")}),
	} {
		s, _, errOut := p.streams()
		logs[i] = errOut
		wg.Go(func() { errs[i] = runReplay(ctx, args, s) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("replay %d: %v\n%s", i, err, logs[i])
		}
		if !strings.Contains(logs[i].String(), "complete") || !strings.Contains(logs[i].String(), "msg/s") {
			t.Errorf("replay %d reported %q", i, logs[i])
		}
	}

	all := p.waitForRows(runAll, distinct)
	if len(all) != distinct {
		t.Fatalf("run %s: %d rows, want one per distinct message, %d", runAll, len(all), distinct)
	}
	for _, r := range all {
		if r.adapter != p.adapter || r.trueLabel == "" {
			t.Fatalf("row %+v: want adapter %s and a true label", r, p.adapter)
		}
	}

	// eval, as JSON, against the plain computation.
	s, stdout, errOut := p.streams()
	chArgs := []string{"-clickhouse-addr", testenv.ClickHouse(t), "-clickhouse-database", p.name}
	htmlPath := filepath.Join(t.TempDir(), "eval.html")
	if err := runEval(ctx, append(chArgs, "-run", runAll, "-format", "json", "-html", htmlPath), s); err != nil {
		t.Fatalf("eval: %v\n%s", err, errOut)
	}
	var rep evaluate.RunReport
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("eval output %s: %v", stdout, err)
	}
	acc, macro, weighted, ua := scores(all)
	if rep.Scores.Messages != distinct || rep.Events != distinct || rep.Run.Adapter != p.adapter {
		t.Errorf("eval report: %d messages of %d events, adapter %q", rep.Scores.Messages, rep.Events, rep.Run.Adapter)
	}
	closeTo(t, "accuracy", rep.Scores.Accuracy, acc)
	closeTo(t, "WA", rep.Scores.WA, acc)
	closeTo(t, "macro F1", rep.Scores.MacroF1, macro)
	closeTo(t, "weighted F1", rep.Scores.WeightedF1, weighted)
	closeTo(t, "UA", rep.Scores.UA, ua)
	t.Logf("run %s: accuracy %.4f, macro F1 %.4f, weighted F1 %.4f, UA %.4f (random weights)", runAll, acc, macro, weighted, ua)
	page, err := os.ReadFile(htmlPath)
	if err != nil || !bytes.Contains(page, []byte("<svg")) || !bytes.Contains(page, []byte(runAll)) {
		t.Errorf("HTML report: %v", err)
	}
	s, stdout, _ = p.streams()
	if err := runEval(ctx, append(chArgs, "-run", runAll), s); err != nil || !strings.Contains(stdout.String(), fmt.Sprintf("accuracy (WA)  %.4f", acc)) {
		t.Errorf("eval table: %v\n%s", err, stdout)
	}

	// compare, as JSON, against the plain join of the rows.
	halfDistinct := p.distinctMessages(half)
	halfRows := p.waitForRows(runHalf, halfDistinct)
	if len(halfRows) != halfDistinct {
		t.Errorf("run %s: %d rows for %d distinct messages (%d offsets)", runHalf, len(halfRows), halfDistinct, halfTotal)
	}
	s, stdout, errOut = p.streams()
	if err := runCompare(ctx, append(chArgs, "-a", runAll, "-b", runHalf, "-format", "json", "-limit", "3"), s); err != nil {
		t.Fatalf("compare: %v\n%s", err, errOut)
	}
	var cmp evaluate.ComparisonReport
	if err := json.Unmarshal(stdout.Bytes(), &cmp); err != nil {
		t.Fatalf("compare output %s: %v", stdout, err)
	}
	byID := map[string]string{}
	for _, r := range all {
		byID[r.id] = r.label
	}
	agreed := 0
	for _, r := range halfRows {
		if byID[r.id] == r.label {
			agreed++
		}
	}
	if cmp.Agreement.Messages != len(halfRows) || cmp.OnlyA != distinct-len(halfRows) || cmp.OnlyB != 0 || cmp.Agreement.Agreed != agreed {
		t.Errorf("compare: %d paired (want %d), only a %d (want %d), only b %d, agreed %d (want %d)",
			cmp.Agreement.Messages, len(halfRows), cmp.OnlyA, distinct-len(halfRows), cmp.OnlyB, cmp.Agreement.Agreed, agreed)
	}
	closeTo(t, "agreement", cmp.Agreement.Rate, float64(agreed)/float64(len(halfRows)))

	// The live group's offsets are where they were.
	if got := p.committed(live); fmt.Sprint(got) != fmt.Sprint(liveOffsets) {
		t.Errorf("the live group's offsets moved: %v, were %v", got, liveOffsets)
	}
	// Each run's group is at its end, the plan's.
	if got := p.committed(replay.GroupID(runAll)); fmt.Sprint(got) != fmt.Sprint(ends) {
		t.Errorf("run %s committed %v, want %v", runAll, got, ends)
	}
	if got := p.committed(replay.GroupID(runHalf)); fmt.Sprint(got) != fmt.Sprint(half) {
		t.Errorf("run %s committed %v, want %v", runHalf, got, half)
	}

	// Starting a finished run again does nothing more.
	s, _, errOut = p.streams()
	if err := runReplay(ctx, p.replayArgs(runAll, nil), s); err != nil || !strings.Contains(errOut.String(), "resuming") {
		t.Errorf("restarting a finished run: %v\n%s", err, errOut)
	}
}

// TestKilledReplayResumesAndCountsEachMessageOnce kills emoctl replay
// (SIGKILL: no drain, no final commit) half-way and starts it again with
// the same run id: the second process starts from the group's committed
// offsets, and the run counts every message exactly once however often its
// events were published.
func TestKilledReplayResumesAndCountsEachMessageOnce(t *testing.T) {
	p := newPipeline(t)
	bin := filepath.Join(t.TempDir(), "emoctl")
	build := exec.Command("go", "build", "-o", bin, ".")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	p.loadDataset("-set", "meld", "-limit", "240")
	ends := p.endOffsets()
	var total int64
	for _, e := range ends {
		total += e
	}
	run := p.name + "_r"
	// One message at a time, so that the kill lands half-way.
	args := p.replayArgs(run, nil, "-workers=1", "-batch-size=1", "-max-in-flight=1")

	first := startEmoctl(t, bin, args, "first")
	group := replay.GroupID(run)
	// Kill once a third is committed.
	var atKill int64
	deadline := time.Now().Add(3 * time.Minute)
	for atKill < total/3 {
		atKill = 0
		for _, c := range p.committed(group) {
			atKill += max(c, 0)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the first replay committed %d of %d in 3 minutes", atKill, total)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err := first.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	first.wait(t)
	if atKill >= total {
		t.Fatalf("the replay finished (%d of %d) before it could be killed", atKill, total)
	}
	resumeFrom := p.committed(group)
	eventsBefore := p.eventsEnd()
	t.Logf("killed at %d of %d committed; resuming from %v", atKill, total, resumeFrom)

	second := startEmoctl(t, bin, args, "second")
	if err := second.wait(t); err != nil {
		t.Fatalf("the resumed replay failed: %v\n%s", err, second.output())
	}
	if out := second.output(); !strings.Contains(out, "resuming") || !strings.Contains(out, "complete") {
		t.Errorf("the resumed replay said:\n%s", out)
	}

	// The second process consumed nothing below where the group was.
	for _, ev := range p.readEvents(eventsBefore) {
		if ev.RunID == run && ev.Source.Offset < resumeFrom[ev.Source.Partition] {
			t.Errorf("the resumed run re-read %d/%d, below the committed offset %d", ev.Source.Partition, ev.Source.Offset, resumeFrom[ev.Source.Partition])
		}
	}
	published := 0
	for _, ev := range p.readEvents(nil) {
		if ev.RunID == run {
			published++
		}
	}
	rows := p.waitForRows(run, int(total))
	ids := map[string]bool{}
	for _, r := range rows {
		ids[r.id] = true
	}
	if len(rows) != int(total) || len(ids) != int(total) {
		t.Fatalf("run %s: %d rows for %d distinct ids, want %d of each", run, len(rows), len(ids), total)
	}
	t.Logf("%d events published for %d messages (%d duplicates from the kill)", published, total, published-int(total))

	s, stdout, errOut := p.streams()
	if err := runEval(context.Background(), []string{"-clickhouse-addr", testenv.ClickHouse(t), "-clickhouse-database", p.name, "-run", run, "-format", "json"}, s); err != nil {
		t.Fatalf("eval: %v\n%s", err, errOut)
	}
	var rep evaluate.RunReport
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil || rep.Scores.Messages != int(total) {
		t.Errorf("eval counts %d messages (%v), want %d", rep.Scores.Messages, err, total)
	}
}

// process is emoctl running as a child process.
type process struct {
	cmd  *exec.Cmd
	out  *testenv.LogBuffer
	done chan error
}

func startEmoctl(t *testing.T, bin string, args []string, name string) *process {
	t.Helper()
	pr := &process{cmd: exec.Command(bin, append([]string{"replay"}, args...)...), out: &testenv.LogBuffer{}, done: make(chan error, 1)}
	pr.cmd.Stdout, pr.cmd.Stderr = pr.out, pr.out
	if err := pr.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { pr.done <- pr.cmd.Wait() }()
	t.Cleanup(func() {
		_ = pr.cmd.Process.Kill()
		<-pr.done
		pr.done <- nil
		if t.Failed() {
			t.Logf("emoctl replay (%s):\n%s", name, pr.out)
		}
	})
	return pr
}

func (pr *process) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-pr.done:
		pr.done <- err
		return err
	case <-time.After(5 * time.Minute):
		t.Fatalf("emoctl replay (pid %d) did not exit within 5 minutes", pr.cmd.Process.Pid)
		return nil
	}
}

func (pr *process) output() string { return pr.out.String() }

// topicEnds returns the end offset of every partition of topic.
func (p *pipeline) topicEnds(topic string) map[int]int64 {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	meta, err := p.admin.Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil || len(meta.Topics) != 1 {
		p.t.Fatalf("metadata of %s: %v", topic, err)
	}
	var reqs []kafka.OffsetRequest
	for _, part := range meta.Topics[0].Partitions {
		reqs = append(reqs, kafka.LastOffsetOf(part.ID))
	}
	resp, err := p.admin.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{topic: reqs}})
	if err != nil {
		p.t.Fatal(err)
	}
	out := map[int]int64{}
	for _, part := range resp.Topics[topic] {
		out[part.Partition] = part.LastOffset
	}
	return out
}

func (p *pipeline) eventsEnd() map[int]int64 { return p.topicEnds(p.events) }

// readTopic returns the values of the messages of topic from the offsets
// in from (0 where from has none) to those in to.
func (p *pipeline) readTopic(topic string, from, to map[int]int64) [][]byte {
	p.t.Helper()
	var out [][]byte
	parts := make([]int, 0, len(to))
	for part := range to {
		parts = append(parts, part)
	}
	sort.Ints(parts)
	for _, part := range parts {
		start, end := from[part], to[part]
		if start >= end {
			continue
		}
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: strings.Split(p.brokers, ","), Topic: topic, Partition: part, MaxWait: 100 * time.Millisecond})
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if err := r.SetOffset(start); err != nil {
			p.t.Fatal(err)
		}
		for {
			m, err := r.FetchMessage(ctx)
			if err != nil {
				p.t.Fatalf("read %s/%d: %v", topic, part, err)
			}
			if m.Offset >= end {
				break
			}
			out = append(out, m.Value)
			if m.Offset == end-1 {
				break
			}
		}
		cancel()
		r.Close()
	}
	return out
}

// readEvents returns the events from the offsets in from to the end.
func (p *pipeline) readEvents(from map[int]int64) []contract.EmotionEvent {
	p.t.Helper()
	var out []contract.EmotionEvent
	for _, v := range p.readTopic(p.events, from, p.eventsEnd()) {
		var ev contract.EmotionEvent
		if err := json.Unmarshal(v, &ev); err != nil {
			p.t.Fatalf("event %s: %v", v, err)
		}
		out = append(out, ev)
	}
	return out
}

// distinctMessages counts the distinct message ids on the input topic
// below the offsets in to.
func (p *pipeline) distinctMessages(to map[int]int64) int {
	p.t.Helper()
	ids := map[string]bool{}
	for _, v := range p.readTopic(p.input, nil, to) {
		var m contract.ChatMessage
		if err := json.Unmarshal(v, &m); err != nil {
			p.t.Fatalf("chat message %s: %v", v, err)
		}
		ids[m.ID] = true
	}
	return len(ids)
}
