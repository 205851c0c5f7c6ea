package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"strings"
	"testing"
	"time"
)

func noEnv(string) (string, bool) { return "", false }

// TestBadInputGivesClearErrors: every command refuses bad flags with an
// error naming the problem, before it touches the network (the addresses
// point nowhere, so a command that tried would fail differently or wait).
func TestBadInputGivesClearErrors(t *testing.T) {
	nowhere := []string{"-kafka-brokers", "127.0.0.1:1"}
	cases := []struct {
		name string
		run  func(context.Context, []string, streams) error
		args []string
		want string
	}{
		{"replay without run id", runReplay, []string{"-adapter", "a@1"}, "-run-id and -adapter are required"},
		{"replay of live", runReplay, []string{"-run-id", "live", "-adapter", "a@1"}, "live traffic's"},
		{"replay with a bad run id", runReplay, []string{"-run-id", "a/b", "-adapter", "a@1"}, "-run-id"},
		{"replay without version", runReplay, []string{"-run-id", "r", "-adapter", "emo"}, "exact version"},
		{"replay with a bad time", runReplay, []string{"-run-id", "r", "-adapter", "a@1", "-from", "yesterday"}, "-from"},
		{"replay with bad offsets", runReplay, []string{"-run-id", "r", "-adapter", "a@1", "-end-offsets", "0-5"}, "-end-offsets"},
		{"replay with a controlled ingest flag", runReplay, []string{"-run-id", "r", "-adapter", "a@1", "--", "-group-id=x"}, "set by the replay itself"},
		{"replay with a stray argument", runReplay, []string{"-run-id", "r", "-adapter", "a@1", "extra"}, "unexpected arguments"},
		{"replay with an unknown flag", runReplay, []string{"-run-id", "r", "-speed", "9"}, "flag provided but not defined"},
		{"load-dataset of an unknown set", runLoadDataset, []string{"-topic", "t", "-set", "imdb"}, `-set "imdb": want one of goemotions-ekman, meld`},
		{"load-dataset without topic", runLoadDataset, []string{"-set", "meld"}, "-topic is required"},
		{"load-dataset of an unknown split", runLoadDataset, []string{"-topic", "t", "-set", "meld", "-split", "validation"}, "-split"},
		{"load-dataset with an unknown map", runLoadDataset, []string{"-topic", "t", "-set", "meld", "-labelmap", "meld-klingon"}, "no such map"},
		{"load-dataset with a map of another set", runLoadDataset, []string{"-topic", "t", "-set", "meld", "-labelmap", "carer-ekman"}, "maps carer labels, not meld"},
		{"load-dataset from a missing folder", runLoadDataset, []string{"-topic", "t", "-set", "meld", "-data", "/nonexistent"}, "/nonexistent"},
		{"eval without run", runEval, nil, "-run is required"},
		{"eval with a bad format", runEval, []string{"-run", "r", "-format", "xml"}, `-format "xml"`},
		{"eval with an unknown map", runEval, []string{"-run", "r", "-labelmap", "nope"}, "no such map"},
		{"eval with a bad database", runEval, []string{"-run", "r", "-clickhouse-database", "x; DROP TABLE y"}, "plain identifier"},
		{"compare without b", runCompare, []string{"-a", "r"}, "-a and -b are required"},
		{"compare of a run with itself", runCompare, []string{"-a", "r", "-b", "r"}, "same run"},
		{"compare with a negative limit", runCompare, []string{"-a", "r", "-b", "s", "-limit", "-1"}, "-limit"},
	}
	for _, c := range cases {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var out, errOut bytes.Buffer
		args := c.args
		if strings.HasPrefix(c.name, "replay") || strings.HasPrefix(c.name, "load") {
			args = append(append([]string{}, nowhere...), args...)
		}
		err := c.run(ctx, args, streams{out: &out, err: &errOut, lookup: noEnv})
		cancel()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
		if out.Len() > 0 {
			t.Errorf("%s: wrote %q to standard output", c.name, out.String())
		}
	}
}

func TestHelpIsNotAnError(t *testing.T) {
	for name, run := range map[string]func(context.Context, []string, streams) error{
		"replay": runReplay, "load-dataset": runLoadDataset, "eval": runEval, "compare": runCompare,
		"train": runTrain, "pretrain": runPretrain, "demo-model": runDemoModel,
	} {
		var errOut bytes.Buffer
		err := run(context.Background(), []string{"-h"}, streams{out: &bytes.Buffer{}, err: &errOut, lookup: noEnv})
		if !errors.Is(err, flag.ErrHelp) || !strings.Contains(errOut.String(), "-") {
			t.Errorf("%s -h: %v, usage %q", name, err, errOut.String())
		}
	}
}

// TestFlagsFromTheEnvironment: the commands read EMOFLOW_* variables like
// the services, flags winning.
func TestFlagsFromTheEnvironment(t *testing.T) {
	env := map[string]string{"EMOFLOW_RUN": "from-env", "EMOFLOW_FORMAT": "yaml"}
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	err := runEval(context.Background(), nil, streams{out: &bytes.Buffer{}, err: &bytes.Buffer{}, lookup: lookup})
	if err == nil || !strings.Contains(err.Error(), `-format "yaml"`) {
		t.Errorf("eval with EMOFLOW_RUN and EMOFLOW_FORMAT: %v", err)
	}
	err = runEval(context.Background(), []string{"-format", "xml"}, streams{out: &bytes.Buffer{}, err: &bytes.Buffer{}, lookup: lookup})
	if err == nil || !strings.Contains(err.Error(), `-format "xml"`) {
		t.Errorf("the flag must win over the environment: %v", err)
	}
}
