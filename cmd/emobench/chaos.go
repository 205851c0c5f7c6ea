package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"strings"

	"github.com/emoflow/emoflow/internal/chaos"
)

// runChaos runs the chaos suite (internal/chaos) on the local services
// with the binaries of -bin-dir, prints the table of faults and outcomes
// and, last, the totals line; it fails when a fault was not survived.
func runChaos(ctx context.Context, log *slog.Logger, args []string) error {
	cfg := chaos.DefaultConfig()
	fs := flag.NewFlagSet("emobench chaos", flag.ContinueOnError)
	brokers := fs.String("kafka-brokers", strings.Join(cfg.Brokers, ","), "Kafka bootstrap brokers (the broker scripts/services.sh runs)")
	faultList := fs.String("faults", strings.Join(cfg.Faults, ","), "faults to inject, in order, comma-separated")
	fs.StringVar(&cfg.RedisAddr, "redis-addr", cfg.RedisAddr, "Redis address")
	fs.StringVar(&cfg.ClickHouseAddr, "clickhouse-addr", cfg.ClickHouseAddr, "ClickHouse native-protocol address")
	fs.StringVar(&cfg.ServicesScript, "services-script", cfg.ServicesScript, "scripts/services.sh, which kills and restarts the services (it reads EMOFLOW_STATE and the ports from the environment)")
	fs.StringVar(&cfg.BinDir, "bin-dir", cfg.BinDir, "folder of the classifier, ingest, sink and emoctl binaries")
	fs.StringVar(&cfg.ModelDir, "model-dir", "", "classifier checkpoint; empty: a tiny random model written into -work-dir")
	fs.StringVar(&cfg.WorkDir, "work-dir", "", "folder for the components' logs; empty: a temporary one, removed when every fault was survived")
	fs.Float64Var(&cfg.Rate, "rate", cfg.Rate, "live chat messages per second of the steady stream")
	fs.Float64Var(&cfg.Malformed, "malformed", cfg.Malformed, "share of the messages that are malformed")
	fs.DurationVar(&cfg.Deadline, "deadline", cfg.Deadline, "live deadline: ingest's -classify-timeout and the bound on the live p99")
	fs.DurationVar(&cfg.Warmup, "warmup", cfg.Warmup, "steady stream before each fault")
	fs.DurationVar(&cfg.Settle, "settle", cfg.Settle, "steady stream after recovery (its latency is the p99 after)")
	fs.DurationVar(&cfg.ClassifierDown, "classifier-down", cfg.ClassifierDown, "how long the killed classifier stays down")
	fs.DurationVar(&cfg.KafkaDown, "kafka-down", cfg.KafkaDown, "how long the killed Kafka broker stays down (its restart comes on top)")
	fs.DurationVar(&cfg.RedisDown, "redis-down", cfg.RedisDown, "how long the killed Redis stays down")
	fs.DurationVar(&cfg.ClickHouseDown, "clickhouse-down", cfg.ClickHouseDown, "how long ClickHouse stays stopped")
	fs.DurationVar(&cfg.Stall, "stall", cfg.Stall, "how long the proxy to the classifier forwards nothing")
	fs.DurationVar(&cfg.Overload, "overload", cfg.Overload, "how long live traffic runs at twice the rate while the replay runs")
	fs.IntVar(&cfg.ReplayMessages, "replay-messages", cfg.ReplayMessages, "messages the overload's replay reads (the newest of the input topic)")
	fs.DurationVar(&cfg.RecoverTimeout, "recover-timeout", cfg.RecoverTimeout, "longest wait for recovery and for the drain after each fault")
	fs.IntVar(&cfg.Partitions, "partitions", cfg.Partitions, "partitions of the topics")
	fs.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "seed of the stream's texts")
	fs.BoolVar(&cfg.Keep, "keep", false, "keep the topics and the ClickHouse database")
	if err := fs.Parse(args); err != nil {
		return err
	}
	cfg.Brokers = strings.Split(*brokers, ",")
	cfg.Faults = strings.Split(*faultList, ",")
	cfg.Log = log
	fmt.Printf("chaos suite: faults %s; %.0f messages/s (%.0f%% malformed), live deadline %s; Kafka %s, Redis %s, ClickHouse %s\n",
		strings.Join(cfg.Faults, ", "), cfg.Rate, cfg.Malformed*100, cfg.Deadline, *brokers, cfg.RedisAddr, cfg.ClickHouseAddr)
	rep, err := chaos.Run(ctx, cfg)
	if len(rep.Outcomes) > 0 || rep.Baseline != nil {
		fmt.Print(rep.Table())
		fmt.Println(rep.Line())
	}
	if err != nil {
		return err
	}
	if !rep.OK() {
		return errors.New("a fault was not survived (see the table)")
	}
	return nil
}
