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
//	emobench engine [flags]       the engine against Hugging Face transformers (PyTorch eager)
//	                              labelling GoEmotions messages (./task bench:engine)
//	emobench adapters [flags]     mixed unmerged LoRA adapters against one merged, and
//	                              P-tuning v2 against no adapter (./task bench:adapters)
//	emobench context [flags]      conversation context in the prompt on MELD and EmoryNLP: quality
//	                              by k, streamed against offline labels, context cost (./task bench:context)
//	emobench chaos [flags]        faults injected into the pipeline's binaries and services while
//	                              a stream flows (./task chaos, internal/chaos)
//
// `emobench COMMAND -h` lists a command's flags. Progress goes to stderr,
// figures to stdout; the last line of stdout holds the ratios as
// name=value pairs. Benchmarks on a shared machine are noisy: repeat them
// (-rounds) and quote medians.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/emoflow/emoflow/internal/ingest"
	"github.com/emoflow/emoflow/internal/service"
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
	case "chaos":
		err = runChaos(ctx, log, args)
	case "engine":
		err = runEngineBench(ctx, args)
	case "adapters":
		err = runAdaptersBench(ctx, args)
	case "context":
		err = runContextBench(ctx, log, args)
	case "ingest-process":
		// The context benchmark's ingest, a process it can kill -9.
		os.Args = append(os.Args[:1], args...)
		os.Exit(service.Main("ingest", &ingest.Component{}, ":0"))
	case "-h", "-help", "--help", "help":
		usage()
		return
	default:
		fmt.Fprintf(os.Stderr, "emobench: unknown command %q\n", cmd)
		usage()
		os.Exit(2)
	}
	if errors.Is(err, flag.ErrHelp) {
		return // -h: the command's flag set printed its flags
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
  engine       the engine against Hugging Face transformers (PyTorch eager) labelling GoEmotions messages
               on the benchmark model, float32 and bfloat16
  adapters     4 unmerged LoRA adapters mixed in batches against one merged, and P-tuning v2
               (128 virtual tokens) against no adapter, on the benchmark model
  chaos        the chaos suite: the pipeline's binaries on the local services, one fault after another
               (kill -9 of classifier, Kafka and Redis, ClickHouse stopped, a stall, overload with a replay)

emobench COMMAND -h lists the command's flags.
`)
}
