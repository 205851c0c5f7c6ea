package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ClickHouse/clickhouse-go/v2"
	"github.com/ClickHouse/clickhouse-go/v2/lib/driver"
	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
	"github.com/segmentio/kafka-go"

	"github.com/emoflow/emoflow/internal/benchmodel"
	"github.com/emoflow/emoflow/internal/classifier"
	"github.com/emoflow/emoflow/internal/classifyapi"
	"github.com/emoflow/emoflow/internal/contract"
	"github.com/emoflow/emoflow/internal/ingest"
	"github.com/emoflow/emoflow/internal/sink"
)

// pipelineBenchConfig is the pipeline benchmark's flags.
type pipelineBenchConfig struct {
	dataDir        string
	brokers        string
	redisAddr      string
	clickhouseAddr string
	rounds         int
	missMessages   int
	missSeconds    float64
	cachedMessages int
	partitions     int
	producers      int
	timeout        time.Duration
	cpuProfile     string
	classifierArgs string
	ingestArgs     string
	sinkArgs       string
	seed           uint64
}

func (c *pipelineBenchConfig) register(fs *flag.FlagSet) {
	fs.StringVar(&c.dataDir, "data", defaultDataDir(), "shared data folder (GoEmotions and MELD test texts)")
	fs.StringVar(&c.brokers, "kafka-brokers", "127.0.0.1:19092", "Kafka bootstrap brokers")
	fs.StringVar(&c.redisAddr, "redis-addr", "127.0.0.1:16379", "Redis address")
	fs.StringVar(&c.clickhouseAddr, "clickhouse-addr", "127.0.0.1:19000", "ClickHouse native-protocol address")
	fs.IntVar(&c.rounds, "rounds", 3, "rounds (each: classifier alone, all-miss pass, classifier alone again, cached pass); the last line gives medians")
	fs.IntVar(&c.missMessages, "miss-messages", 1500, "fewest messages of the all-miss pass, each with a text of its own (new texts every round)")
	fs.Float64Var(&c.missSeconds, "miss-seconds", 30, "size the all-miss pass to this much of the classifier's work at its measured pace, when that is more than -miss-messages (0: -miss-messages exactly); capped by the distinct texts the data sets have")
	fs.IntVar(&c.cachedMessages, "cached-messages", 200000, "messages of the cached pass (texts of the round's miss pass)")
	fs.IntVar(&c.partitions, "partitions", 8, "partitions of the topics")
	fs.IntVar(&c.producers, "producers", 4, "goroutines producing the chat messages")
	fs.DurationVar(&c.timeout, "pass-timeout", 10*time.Minute, "longest wait for a pass's rows in ClickHouse")
	fs.StringVar(&c.cpuProfile, "cpuprofile", "", "write a CPU profile of the cached passes (every component runs in this process) to this file")
	fs.StringVar(&c.classifierArgs, "classifier-args", "", "extra classifier flags, space-separated")
	fs.StringVar(&c.ingestArgs, "ingest-args", "", "extra ingest flags, space-separated")
	fs.StringVar(&c.sinkArgs, "sink-args", "", "extra sink flags, space-separated")
	fs.Uint64Var(&c.seed, "seed", 1, "seed of the text draws")
}

// pipelineRound is one round's figures.
type pipelineRound struct {
	// classifierAlone is the mean of the classifier's pace alone just
	// before and just after the all-miss pass (texts per second): on a
	// shared machine whose speed drifts by minutes, the pass is compared
	// with the classifier over the same stretch of time.
	classifierAlone         float64
	aloneBefore, aloneAfter float64
	aloneBatches            int     // the classifier's batches before the pass
	alonePadding            float64 // and their mean padding ratio
	miss, cached            passResult
}

// passResult is one pass through the pipeline.
type passResult struct {
	messages  int
	produced  time.Duration // producing alone
	ingested  time.Duration // first produce to ingest's last event published
	elapsed   time.Duration // first produce to the last row visible
	inserts   int           // the sink's ClickHouse inserts
	inserting time.Duration // their total duration
	// computed is the texts the classifier computed, answered or not;
	// classifierRejected its requests refused (429), classifierLate those
	// that failed later (504 past the deadline, or the caller gone);
	// classifyFailures ingest's classifier calls that failed after their
	// retries (the batch starts over).
	computed, classifierRejected, classifierLate, classifyFailures int
	computing                                                      time.Duration // the classifier's batches
	batches                                                        int           // how many
	padding                                                        float64       // their mean padding ratio
	lost, dups                                                     int
	cacheHits                                                      int
}

func (p passResult) rate() float64 { return float64(p.messages) / p.elapsed.Seconds() }

// pipelineBench is the running pipeline and its names.
type pipelineBench struct {
	cfg                     pipelineBenchConfig
	log                     *slog.Logger
	name                    string
	input, events, database string
	cls, ing, snk           *component
	producer                *kafka.Writer
	ch                      driver.Conn
	clsURL                  string
}

func runPipelineBench(ctx context.Context, log *slog.Logger, args []string) (err error) {
	var cfg pipelineBenchConfig
	fs := flag.NewFlagSet("emobench pipeline", flag.ContinueOnError)
	cfg.register(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if cfg.rounds <= 0 || cfg.missMessages <= 0 || cfg.cachedMessages <= 0 || cfg.producers <= 0 {
		return errors.New("-rounds, -miss-messages, -cached-messages and -producers must be positive")
	}
	log.Info("preparing the benchmark model (written once into the cache)", "cache", benchmodel.CacheDir())
	modelDir, err := benchmodel.Ensure(ctx, cfg.dataDir)
	if err != nil {
		return err
	}
	texts, err := pipelineTexts(cfg.dataDir)
	if err != nil {
		return err
	}
	mrand.New(mrand.NewPCG(cfg.seed, 0)).Shuffle(len(texts), func(i, j int) { texts[i], texts[j] = texts[j], texts[i] })
	// The last texts calibrate, the probe takes the one before them, and
	// the rounds take theirs from the start.
	calibration := texts[len(texts)-calibrationTexts:]
	probe := texts[len(texts)-calibrationTexts-1]
	texts = texts[:len(texts)-calibrationTexts-1]

	var suffix [4]byte
	_, _ = rand.Read(suffix[:])
	name := "emobench_" + hex.EncodeToString(suffix[:])
	b := &pipelineBench{cfg: cfg, log: log, name: name, input: name + "_in", events: name + "_events", database: name}
	defer func() { err = errors.Join(err, b.cleanUp()) }()
	if err := b.start(ctx, modelDir); err != nil {
		return err
	}
	fmt.Printf("pipeline in this process: classifier, ingest and sink; Kafka %s, Redis %s, ClickHouse %s; topics %s_*, %d partitions\n",
		cfg.brokers, cfg.redisAddr, cfg.clickhouseAddr, name, cfg.partitions)
	fmt.Printf("local services' niceness (this process: 0): %s\n", servicesNiceness())

	// One message through the whole pipeline: the consumer groups have
	// joined and the model is warm before anything is timed.
	if _, err := b.pass(ctx, "probe", []string{probe}, false); err != nil {
		return fmt.Errorf("probe message: %w", err)
	}
	// The all-miss pass ends with the sink's flush interval and the last
	// ClickHouse insert, a second or so whatever the pass's size: sized to
	// the classifier's pace, that tail weighs the same with a fast model as
	// with a slow one (about 3% of a 30 s pass).
	missMessages := cfg.missMessages
	if cfg.missSeconds > 0 {
		pace, err := b.classifierAlone(ctx, calibration)
		if err != nil {
			return fmt.Errorf("calibration: %w", err)
		}
		missMessages = max(missMessages, min(int(pace*cfg.missSeconds), len(texts)/cfg.rounds))
		fmt.Printf("calibration: the classifier alone computes %.1f texts/s; all-miss passes of %.0f s of that work (%.0f s)\n",
			pace, cfg.missSeconds, float64(missMessages)/pace)
	}
	if need := cfg.rounds * missMessages; need > len(texts) {
		return fmt.Errorf("%d rounds of %d new texts need %d distinct texts; the data sets have %d", cfg.rounds, missMessages, need, len(texts))
	}
	fmt.Printf("per round: %d new texts (all misses), then %d messages with those texts (all cached)\n", missMessages, cfg.cachedMessages)
	var profile *os.File
	if cfg.cpuProfile != "" {
		if profile, err = os.Create(cfg.cpuProfile); err != nil {
			return err
		}
		defer profile.Close()
	}

	var rounds []pipelineRound
	for r := 0; r < cfg.rounds; r++ {
		roundTexts := texts[r*missMessages : (r+1)*missMessages]
		var round pipelineRound
		log.Info("classifier alone", "round", r+1, "texts", len(roundTexts))
		clsBefore, err := b.cls.snapshot()
		if err != nil {
			return err
		}
		if round.aloneBefore, err = b.classifierAlone(ctx, roundTexts); err != nil {
			return err
		}
		clsAfter, err := b.cls.snapshot()
		if err != nil {
			return err
		}
		if round.aloneBatches = int(delta(clsBefore, clsAfter, "emoflow_classifier_batch_rows_count")); round.aloneBatches > 0 {
			round.alonePadding = delta(clsBefore, clsAfter, "emoflow_classifier_batch_padding_ratio_sum") / float64(round.aloneBatches)
		}
		log.Info("all-miss pass", "round", r+1, "messages", len(roundTexts))
		if round.miss, err = b.pass(ctx, fmt.Sprintf("r%d-miss", r), roundTexts, false); err != nil {
			return err
		}
		log.Info("classifier alone again", "round", r+1, "texts", len(roundTexts))
		if round.aloneAfter, err = b.classifierAlone(ctx, roundTexts); err != nil {
			return err
		}
		round.classifierAlone = (round.aloneBefore + round.aloneAfter) / 2
		cached := make([]string, cfg.cachedMessages)
		rng := mrand.New(mrand.NewPCG(cfg.seed, uint64(r)+1))
		for i := range cached {
			cached[i] = roundTexts[rng.IntN(len(roundTexts))]
		}
		log.Info("cached pass", "round", r+1, "messages", len(cached))
		if profile != nil && r == 0 {
			if err := pprof.StartCPUProfile(profile); err != nil {
				return err
			}
		}
		round.cached, err = b.pass(ctx, fmt.Sprintf("r%d-hit", r), cached, true)
		if profile != nil && r == 0 {
			pprof.StopCPUProfile()
		}
		if err != nil {
			return err
		}
		rounds = append(rounds, round)
		printPipelineRound(r, round)
	}
	printPipelineSummary(rounds)
	return nil
}

// start creates the producer and the ClickHouse connection and starts the
// classifier, the sink and ingest.
func (b *pipelineBench) start(ctx context.Context, modelDir string) error {
	var err error
	b.ch, err = clickhouse.Open(&clickhouse.Options{Addr: []string{b.cfg.clickhouseAddr}, DialTimeout: 10 * time.Second, ReadTimeout: time.Minute})
	if err != nil {
		return fmt.Errorf("clickhouse: %w", err)
	}
	b.producer = &kafka.Writer{
		Addr: kafka.TCP(strings.Split(b.cfg.brokers, ",")...), Topic: b.input,
		// Keyed by conversation, as chat applications would produce.
		Balancer: &kafka.Murmur2Balancer{}, RequiredAcks: kafka.RequireAll,
		BatchSize: 2000, BatchBytes: 4 << 20, BatchTimeout: 2 * time.Millisecond,
	}
	partitions := "-topic-partitions=" + strconv.Itoa(b.cfg.partitions)
	b.cls, err = startComponent(ctx, "classifier", &classifier.Component{},
		append([]string{"-model-dir=" + modelDir}, strings.Fields(b.cfg.classifierArgs)...)...)
	if err != nil {
		return err
	}
	b.clsURL = "http://" + b.cls.rt.Addr
	b.snk, err = startComponent(ctx, "sink", &sink.Component{}, append([]string{
		"-kafka-brokers=" + b.cfg.brokers, "-events-topic=" + b.events, "-dead-letter-topic=" + b.events + "_dlq",
		"-group-id=" + b.name + "_sink", "-clickhouse-addr=" + b.cfg.clickhouseAddr, "-clickhouse-database=" + b.database, partitions,
	}, strings.Fields(b.cfg.sinkArgs)...)...)
	if err != nil {
		return err
	}
	b.ing, err = startComponent(ctx, "ingest", &ingest.Component{}, append([]string{
		"-kafka-brokers=" + b.cfg.brokers, "-input-topic=" + b.input, "-events-topic=" + b.events, "-dead-letter-topic=" + b.input + "_dlq",
		"-group-id=" + b.name + "_ingest", "-redis-addr=" + b.cfg.redisAddr, "-redis-key-prefix=" + b.name + ":",
		"-classifier-urls=" + b.clsURL, partitions,
	}, strings.Fields(b.cfg.ingestArgs)...)...)
	return err
}

// classifierAlone is the classifier's saturation throughput on texts:
// requests of 64 texts (as ingest sends its misses), 16 of them in flight
// (1,024 texts: the queue never empties, and stays under the classifier's
// admission limit); texts per second to the last answer.
func (b *pipelineBench) classifierAlone(ctx context.Context, texts []string) (float64, error) {
	client := &http.Client{}
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, len(texts)/64+1)
	inFlight := make(chan struct{}, 16)
	for i := 0; i < len(texts); i += 64 {
		chunk := texts[i:min(i+64, len(texts))]
		inFlight <- struct{}{}
		wg.Go(func() {
			defer func() { <-inFlight }()
			body, err := json.Marshal(classifyapi.ClassifyRequest{Texts: chunk, DeadlineMs: (10 * time.Minute).Milliseconds()})
			if err != nil {
				errs <- err
				return
			}
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.clsURL+"/v1/classify", bytes.NewReader(body))
			if err != nil {
				errs <- err
				return
			}
			resp, err := client.Do(req)
			if err != nil {
				errs <- fmt.Errorf("classifier alone: %w", err)
				return
			}
			defer resp.Body.Close()
			raw, _ := io.ReadAll(resp.Body)
			if resp.StatusCode != http.StatusOK {
				errs <- fmt.Errorf("classifier alone: %s: %s", resp.Status, raw)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	for err := range errs {
		return 0, err
	}
	return float64(len(texts)) / elapsed.Seconds(), nil
}

// snapshotEvery is how often a pass looks at the components' counters.
const snapshotEvery = 50 * time.Millisecond

// pass produces one chat message per text (ids <name>-<tag>-<i>) and waits
// until every one is a row in ClickHouse, then checks the deduplicated
// view for lost and duplicated events.
func (b *pipelineBench) pass(ctx context.Context, tag string, texts []string, wantCached bool) (passResult, error) {
	res := passResult{messages: len(texts)}
	prefix := b.name + "-" + tag + "-"
	sentAt := time.Now().UTC().Truncate(time.Second)
	msgs := make([]kafka.Message, len(texts))
	for i, t := range texts {
		m := contract.ChatMessage{ID: prefix + strconv.Itoa(i), ConversationID: "c" + strconv.Itoa(i%5000), Tenant: "bench",
			SpeakerRole: "customer", Text: t, SentAt: sentAt, Language: "en"}
		v, err := json.Marshal(m)
		if err != nil {
			return res, err
		}
		msgs[i] = kafka.Message{Key: []byte(m.ConversationID), Value: v}
	}
	before, err := b.snk.snapshot()
	if err != nil {
		return res, err
	}
	ingBefore, err := b.ing.snapshot()
	if err != nil {
		return res, err
	}
	clsBefore, err := b.cls.snapshot()
	if err != nil {
		return res, err
	}
	inserted, handled := "emoflow_sink_rows_inserted_total", "emoflow_ingest_messages_total"
	target := before.sum(inserted) + float64(len(texts))
	ingTarget := ingBefore.sum(handled) + float64(len(texts))

	start := time.Now()
	if err := b.produce(ctx, msgs); err != nil {
		return res, err
	}
	res.produced = time.Since(start)
	// The sink counts rows once their insert returned: they are visible
	// then; ClickHouse confirms below. Ingest's counter says when ingest
	// had published the last event. Each look gathers the component's own
	// registry (the Go runtime's and process collectors, which read /proc,
	// live in another), taken from the pass it measures; the end is seen
	// within snapshotEvery of it (a 30 s pass: 0.2%).
	deadline := start.Add(b.cfg.timeout)
	var after metricSnapshot
	for {
		if res.ingested == 0 {
			s, err := b.ing.snapshot()
			if err != nil {
				return res, err
			}
			if s.sum(handled) >= ingTarget {
				res.ingested = time.Since(start)
			}
		}
		// the sink cannot be done before ingest is: it is looked at only
		// from then on (and at the deadline)
		if res.ingested != 0 || time.Now().After(deadline) {
			if after, err = b.snk.snapshot(); err != nil {
				return res, err
			}
			if after.sum(inserted) >= target || time.Now().After(deadline) {
				break
			}
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(snapshotEvery):
		}
	}
	clsAfter, err := b.cls.snapshot()
	if err != nil {
		return res, err
	}
	ingAfter, err := b.ing.snapshot()
	if err != nil {
		return res, err
	}
	res.computed = int(delta(clsBefore, clsAfter, "emoflow_classifier_batch_rows_sum"))
	res.computing = time.Duration(delta(clsBefore, clsAfter, "emoflow_classifier_batch_compute_seconds_sum") * float64(time.Second))
	res.batches = int(delta(clsBefore, clsAfter, "emoflow_classifier_batch_rows_count"))
	if res.batches > 0 {
		res.padding = delta(clsBefore, clsAfter, "emoflow_classifier_batch_padding_ratio_sum") / float64(res.batches)
	}
	res.classifyFailures = int(delta(ingBefore, ingAfter, "emoflow_ingest_classify_failures_total"))
	res.classifierRejected = int(delta(clsBefore, clsAfter, "emoflow_classifier_requests_total", "outcome=overloaded"))
	res.classifierLate = int(delta(clsBefore, clsAfter, "emoflow_classifier_requests_total") -
		delta(clsBefore, clsAfter, "emoflow_classifier_requests_total", "outcome=ok") - float64(res.classifierRejected))
	res.inserts = int(delta(before, after, "emoflow_sink_insert_duration_seconds_count"))
	res.inserting = time.Duration(delta(before, after, "emoflow_sink_insert_duration_seconds_sum") * float64(time.Second))
	for {
		var got uint64
		if err := b.ch.QueryRow(ctx, fmt.Sprintf("SELECT uniqExact(message_id) FROM %s.events WHERE message_id LIKE '%s%%'", b.database, prefix)).Scan(&got); err != nil {
			return res, fmt.Errorf("count rows: %w", err)
		}
		res.elapsed = time.Since(start)
		if int(got) >= len(texts) || time.Now().After(deadline) {
			break
		}
		select {
		case <-ctx.Done():
			return res, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}

	// Lost: sent but not in the deduplicated view. Duplicated: rows of the
	// view beyond one per message. Cache hits as the events say.
	var rows, distinct, hits uint64
	q := fmt.Sprintf("SELECT count(), uniqExact(message_id), sum(cache_hit) FROM %s.events_dedup WHERE message_id LIKE '%s%%'", b.database, prefix)
	if err := b.ch.QueryRow(ctx, q).Scan(&rows, &distinct, &hits); err != nil {
		return res, fmt.Errorf("check the deduplicated view: %w", err)
	}
	res.lost, res.dups, res.cacheHits = len(texts)-int(distinct), int(rows-distinct), int(hits)
	if wantCached && res.cacheHits != int(rows) {
		b.log.Warn("cached pass: not every event is a cache hit", "rows", rows, "cache_hits", res.cacheHits)
	}
	if !wantCached && res.cacheHits > 0 {
		b.log.Warn("miss pass: some events are cache hits", "rows", rows, "cache_hits", res.cacheHits)
	}
	return res, nil
}

// produce writes msgs with cfg.producers concurrent writers' calls.
func (b *pipelineBench) produce(ctx context.Context, msgs []kafka.Message) error {
	var wg sync.WaitGroup
	errs := make([]error, b.cfg.producers)
	per := (len(msgs) + b.cfg.producers - 1) / b.cfg.producers
	for p := 0; p < b.cfg.producers; p++ {
		part := msgs[min(p*per, len(msgs)):min((p+1)*per, len(msgs))]
		wg.Go(func() {
			for i := 0; i < len(part); i += 5000 {
				if err := b.producer.WriteMessages(ctx, part[i:min(i+5000, len(part))]...); err != nil {
					errs[p] = fmt.Errorf("produce: %w", err)
					return
				}
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// cleanUp stops the components and removes the run's topics, consumer
// groups, database and cache keys.
func (b *pipelineBench) cleanUp() error {
	var errs []error
	for _, c := range []*component{b.ing, b.snk, b.cls} {
		if c != nil {
			errs = append(errs, c.stop())
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if b.producer != nil {
		errs = append(errs, b.producer.Close())
	}
	admin := &kafka.Client{Addr: kafka.TCP(strings.Split(b.cfg.brokers, ",")...), Timeout: 30 * time.Second}
	topics := []string{b.input, b.input + "_dlq", b.events, b.events + "_dlq"}
	if _, err := admin.DeleteTopics(ctx, &kafka.DeleteTopicsRequest{Topics: topics}); err != nil {
		errs = append(errs, fmt.Errorf("delete topics: %w", err))
	}
	if _, err := admin.DeleteGroups(ctx, &kafka.DeleteGroupsRequest{GroupIDs: []string{b.name + "_ingest", b.name + "_sink"}}); err != nil {
		errs = append(errs, fmt.Errorf("delete consumer groups: %w", err))
	}
	if b.ch != nil {
		if err := b.ch.Exec(ctx, "DROP DATABASE IF EXISTS "+b.database); err != nil {
			errs = append(errs, fmt.Errorf("drop database %s: %w", b.database, err))
		}
		errs = append(errs, b.ch.Close())
	}
	rdb := redis.NewClient(&redis.Options{Addr: b.cfg.redisAddr,
		MaintNotificationsConfig: &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}})
	defer rdb.Close()
	iter := rdb.Scan(ctx, 0, b.name+":*", 1000).Iterator()
	var keys []string
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if err := iter.Err(); err != nil {
		errs = append(errs, fmt.Errorf("list cache keys: %w", err))
	}
	for i := 0; i < len(keys); i += 1000 {
		if err := rdb.Del(ctx, keys[i:min(i+1000, len(keys))]...).Err(); err != nil {
			errs = append(errs, fmt.Errorf("delete cache keys: %w", err))
			break
		}
	}
	return errors.Join(errs...)
}

func printPipelineRound(r int, p pipelineRound) {
	fmt.Printf("round %d\n", r+1)
	fmt.Printf("  classifier alone: %.1f texts/s (%.1f before the all-miss pass, %d batches, %.1f%% padding; %.1f after)\n",
		p.classifierAlone, p.aloneBefore, p.aloneBatches, 100*p.alonePadding, p.aloneAfter)
	for _, x := range []struct {
		name string
		res  passResult
	}{{"all misses", p.miss}, {"all cached", p.cached}} {
		fmt.Printf("  %s: %d messages in %.2f s = %.0f msgs/s; lost %d, duplicated %d, cache hits %d\n",
			x.name, x.res.messages, x.res.elapsed.Seconds(), x.res.rate(), x.res.lost, x.res.dups, x.res.cacheHits)
		fmt.Printf("    producing done at %.2f s, ingest's last event at %.2f s; sink: %d inserts, %.2f s inserting; classifier: %d texts computed in %.2f s (%d batches, %.1f%% padding), %d requests refused (429), %d failed later (504, caller gone); ingest: %d classify calls failed\n",
			x.res.produced.Seconds(), x.res.ingested.Seconds(), x.res.inserts, x.res.inserting.Seconds(), x.res.computed, x.res.computing.Seconds(),
			x.res.batches, 100*x.res.padding, x.res.classifierRejected, x.res.classifierLate, x.res.classifyFailures)
	}
	fmt.Printf("  all misses / classifier alone: %.3f\n", p.miss.rate()/p.classifierAlone)
}

func printPipelineSummary(rounds []pipelineRound) {
	col := func(f func(pipelineRound) float64) []float64 {
		var xs []float64
		for _, r := range rounds {
			xs = append(xs, f(r))
		}
		return xs
	}
	cached := col(func(r pipelineRound) float64 { return r.cached.rate() })
	ratio := col(func(r pipelineRound) float64 { return r.miss.rate() / r.classifierAlone })
	lost, dups := 0, 0
	for _, r := range rounds {
		lost += r.miss.lost + r.cached.lost
		dups += r.miss.dups + r.cached.dups
	}
	fmt.Printf("summary over %d round(s): median (min, max)\n", len(rounds))
	fmt.Printf("  all cached msgs/s:             %s (goal ≥ 25000)\n", spread(cached, "%.0f"))
	fmt.Printf("  all misses msgs/s:             %s\n", spread(col(func(r pipelineRound) float64 { return r.miss.rate() }), "%.1f"))
	fmt.Printf("  classifier alone texts/s:      %s\n", spread(col(func(r pipelineRound) float64 { return r.classifierAlone }), "%.1f"))
	fmt.Printf("  misses / classifier alone:     %s (goal ≥ 0.95)\n", spread(ratio, "%.3f"))
	fmt.Printf("  lost, duplicated (all passes): %d, %d\n", lost, dups)
	fmt.Printf("cached_msgs_per_s=%.0f miss_ratio_to_classifier=%.3f lost=%d duplicated=%d\n", median(cached), median(ratio), lost, dups)
}

// servicesNiceness describes the niceness of the local services that
// scripts/services.sh started (their pid files in EMOFLOW_STATE, by
// default .local/services): ./task bench:pipeline lowers it, so that the
// report says under which priorities its figures were measured.
func servicesNiceness() string {
	state := os.Getenv("EMOFLOW_STATE")
	if state == "" {
		state = filepath.Join(".local", "services")
	}
	var parts []string
	for _, name := range []string{"kafka", "redis", "clickhouse"} {
		nice := "unknown"
		if raw, err := os.ReadFile(filepath.Join(state, name+".pid")); err == nil {
			if stat, err := os.ReadFile("/proc/" + strings.TrimSpace(string(raw)) + "/stat"); err == nil {
				// The fields after the command's closing parenthesis; the
				// niceness is the 19th field of the whole line.
				if i := bytes.LastIndexByte(stat, ')'); i > 0 {
					if f := strings.Fields(string(stat[i+1:])); len(f) > 16 {
						nice = f[16]
					}
				}
			}
		}
		parts = append(parts, name+" "+nice)
	}
	return strings.Join(parts, ", ")
}
