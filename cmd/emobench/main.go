// Command emobench measures emoflow against its baselines, both sides in one
// run, and prints the ratios on its last line. It runs every component
// (classifier, ingest, sink) in this process with service.Run, on the
// benchmark model of internal/benchmodel (written once into
// $EMOFLOW_CACHE/bench), with GoEmotions and MELD test texts from the
// shared data folder.
//
//	emobench classifier [flags]   dynamic batching against static batches (./task bench:classifier)
//	emobench pipeline [flags]     Kafka → ingest → Kafka → sink → ClickHouse (./task bench:pipeline)
//	emobench train [flags]        adapter training against torch + PEFT, and adapted models
//	                              against a TF-IDF baseline (./task bench:train)
//
// `emobench COMMAND -h` lists a command's flags. Progress goes to stderr,
// figures to stdout; the last line of stdout holds the ratios as
// name=value pairs. Benchmarks on a shared machine are noisy: repeat them
// (-rounds) and quote medians.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "classifier":
		err = runClassifierBench(ctx, log, args)
	case "pipeline":
		err = runPipelineBench(ctx, log, args)
	case "train":
		err = runTrainBench(ctx, log, args)
	case "-h", "-help", "--help", "help":
		usage()
		return
	default:
		fmt.Fprintf(os.Stderr, "emobench: unknown command %q\n", cmd)
		usage()
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "emobench:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `usage: emobench COMMAND [flags]

commands:
  classifier   the classifier's dynamic batching under open-loop load against static batches of the engine
  pipeline     the whole pipeline on the local Kafka, Redis and ClickHouse: all cached, and all misses
               against the classifier alone
  train        adapter training: throughput against torch + PEFT, and test-split quality of the
               demo base with LoRA and P-tuning v2 against a TF-IDF + logistic regression baseline

emobench COMMAND -h lists the command's flags.
`)
}
