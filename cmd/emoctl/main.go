// Command emoctl is the operator's tool:
//
//	emoctl tiny-model -out DIR      write a tiny random ChatGLM3-architecture
//	                                model with a real SentencePiece tokenizer
//	emoctl produce [flags]          send chat messages (from ../shared/data
//	                                or a built-in sample) to the input topic
//	emoctl load-dataset [flags]     publish a labelled data set as a topic
//	emoctl replay [flags]           replay a topic range with an adapter as a run
//	emoctl eval -run R              score a run against its ground truth
//	emoctl compare -a R1 -b R2      compare two runs
//	emoctl train [flags]            train an adapter (LoRA, P-tuning v2,
//	                                prefix tuning) on labelled data
//	emoctl pretrain [flags]         train a small base model from scratch
//	emoctl demo-model               build (once, cached) the demo model
//
// Run a subcommand with -h for its flags; every flag can also be set by its
// EMOFLOW_* environment variable.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

type command struct {
	name, summary string
	run           func(ctx context.Context, args []string) error
}

func commands() []command {
	return []command{
		{"tiny-model", "write a tiny random ChatGLM3-architecture model and tokenizer", tinyModel},
		{"produce", "send chat messages to the input topic", produce},
		{"load-dataset", "publish a labelled data set as chat messages to a topic", loadDatasetCommand},
		{"replay", "replay a topic range through an adapter as a run (resumable)", replayCommand},
		{"eval", "score a run against the ground truth of its messages", evalCommand},
		{"compare", "compare the labels of two runs", compareCommand},
		{"train", "train a LoRA, P-tuning v2 or prefix-tuning adapter on labelled data", trainCommand},
		{"pretrain", "train a small ChatGLM3-architecture base model and tokenizer from scratch", pretrainCommand},
		{"demo-model", "build (once, cached) the demo model: a small base and two adapters trained here", demoModelCommand},
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: emoctl COMMAND [flags]\n\ncommands:")
	for _, c := range commands() {
		fmt.Fprintf(os.Stderr, "  %-12s %s\n", c.name, c.summary)
	}
}

func main() {
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	for _, c := range commands() {
		if c.name == os.Args[1] {
			err := c.run(ctx, os.Args[2:])
			switch {
			case err == nil:
				os.Exit(0)
			case errors.Is(err, flag.ErrHelp):
				os.Exit(0)
			default:
				fmt.Fprintf(os.Stderr, "emoctl %s: %v\n", c.name, err)
				os.Exit(1)
			}
		}
	}
	usage()
	os.Exit(2)
}
