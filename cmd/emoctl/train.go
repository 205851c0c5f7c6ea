package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"

	"github.com/emoflow/emoflow/internal/adapters"
	"github.com/emoflow/emoflow/internal/datasets"
	"github.com/emoflow/emoflow/internal/model"
	"github.com/emoflow/emoflow/internal/prompt"
	"github.com/emoflow/emoflow/internal/service"
	"github.com/emoflow/emoflow/internal/tensor"
	"github.com/emoflow/emoflow/internal/tokenizer"
	"github.com/emoflow/emoflow/internal/train"
)

func trainCommand(ctx context.Context, args []string) error { return runTrain(ctx, args, osStreams()) }

// runTrain trains an adapter on a labelled data set (emoctl train).
func runTrain(ctx context.Context, args []string, s streams) error {
	fs := flag.NewFlagSet("train", flag.ContinueOnError)
	fs.SetOutput(s.err)
	var cfg train.Config
	modelDir := fs.String("model-dir", "", "base model checkpoint folder (required)")
	tokDir := fs.String("tokenizer-dir", "", "folder with the tokenizer (default: -model-dir)")
	device := fs.String("device", "cpu", "where to train: cpu, cuda or cuda:N")
	dtype := fs.String("dtype", "bfloat16", "compute dtype of the frozen base: bfloat16 (CPUs with AMX/AVX-512 BF16, GPUs) or float32; adapter weights and optimizer are float32")
	threads := fs.Int("threads", 0, "libtorch threads (0: all cores)")
	data := fs.String("data", "", "training data: a data set ("+setList()+") or a .jsonl/.csv file with text and label (required)")
	dev := fs.String("dev", "", "dev data for evaluation and early stopping: a data set, a file, or none (default: the data set's dev split; none for files)")
	dataDir := fs.String("data-dir", defaultDataDir(), "shared data folder of the data sets")
	labelMap := fs.String("label-map", "auto", "map the data's labels to the template's: a labelmaps name, a JSON file, auto (the set's map to ekman, if any) or none")
	tmplFile := fs.String("template", "", "prompt template JSON (text with {text}, labels, wrap, optional {context} and context settings); default: the built-in Ekman template")
	contextMessages := fs.Int("context-messages", 0, "put this many previous messages of each example's conversation (data sets with dialogues: meld, emorynlp, dailydialog; files: conversation_id and speaker_role fields) into the prompt, before the message line of the template; 0: the template's own setting")
	fs.StringVar(&cfg.Method, "method", adapters.MethodLoRA, "lora, ptuning-v2 (THUDM) or prefix-tuning (PEFT)")
	fs.IntVar(&cfg.LoRA.Rank, "lora-r", 8, "LoRA rank")
	fs.Float64Var(&cfg.LoRA.Alpha, "lora-alpha", 16, "LoRA alpha")
	targets := fs.String("lora-targets", "", "LoRA target modules, comma-separated (default: query_key_value, or q_proj,k_proj,v_proj on transformers' glm)")
	fs.BoolVar(&cfg.LoRA.RSLoRA, "lora-rslora", false, "rank-stabilised LoRA (scale alpha/sqrt(r))")
	fs.Float64Var(&cfg.LoRA.Dropout, "lora-dropout", 0.05, "LoRA dropout")
	fs.IntVar(&cfg.Prefix.PreSeqLen, "pre-seq-len", 32, "virtual tokens of a P-tuning v2 / prefix-tuning prefix")
	fs.BoolVar(&cfg.Prefix.Projection, "prefix-projection", false, "P-tuning v2: reparameterise the prefix with a two-layer MLP")
	fs.Float64Var(&cfg.Prefix.Dropout, "prefix-dropout", 0.1, "dropout on the prefix's keys and values in training (ChatGLM2/3's)")
	fs.StringVar(&cfg.Init, "init", "", "start from this adapter folder (same method and shapes)")
	fs.IntVar(&cfg.Epochs, "epochs", 1, "passes over the training data")
	fs.IntVar(&cfg.MaxSteps, "max-steps", 0, "optimizer updates (0: -epochs)")
	fs.IntVar(&cfg.BatchSize, "batch-size", 32, "examples per micro-batch")
	fs.IntVar(&cfg.GradAccum, "grad-accum", 1, "micro-batches per optimizer update")
	fs.Float64Var(&cfg.LR, "lr", 0, "peak learning rate (0: 2e-4 for LoRA, 2e-2 for prefixes)")
	fs.Float64Var(&cfg.WarmupRatio, "warmup-ratio", 0.06, "share of the updates that warm the rate up")
	schedule := fs.String("schedule", "linear", "decay after warm-up: linear or cosine")
	fs.Float64Var(&cfg.WeightDecay, "weight-decay", 0, "AdamW weight decay")
	fs.Float64Var(&cfg.ClipNorm, "clip-norm", 1, "clip the gradient's L2 norm to this")
	fs.Uint64Var(&cfg.Seed, "seed", 42, "seed of the initialisation, the data order and dropout: one seed, one result")
	fs.IntVar(&cfg.MaxTextTokens, "max-text-tokens", 128, "texts longer than this many tokens are cut (and counted)")
	fs.IntVar(&cfg.EvalEvery, "eval-every", 0, "updates between dev evaluations (0: at the end only)")
	fs.IntVar(&cfg.EvalMax, "eval-max", 2000, "dev examples scored per evaluation (0: all)")
	fs.IntVar(&cfg.CheckpointEvery, "checkpoint-every", 50, "updates between saved states (a killed run resumes from the last)")
	fs.IntVar(&cfg.Patience, "patience", 0, "stop after this many evaluations without a better dev macro-F1 (0: never)")
	fs.StringVar(&cfg.Out, "out", "", "adapter folder to write (required); a -adapters-dir subfolder serves it at once")
	fs.BoolVar(&cfg.Overwrite, "overwrite", false, "replace an adapter already at -out")
	fs.StringVar(&cfg.ID, "id", "", "adapter id in the manifest (default: the -out folder's name)")
	fs.StringVar(&cfg.Version, "version", "1", "adapter version in the manifest")
	if err := service.ParseConfig(fs, args, s.lookup); err != nil {
		return err
	}
	if *modelDir == "" || *data == "" || cfg.Out == "" {
		return errors.New("-model-dir, -data and -out are required")
	}
	if *schedule != "linear" && *schedule != "cosine" {
		return fmt.Errorf("-schedule %q: want linear or cosine", *schedule)
	}
	cfg.Cosine = *schedule == "cosine"
	if cfg.ID == "" {
		cfg.ID = filepath.Base(filepath.Clean(cfg.Out))
	}
	if *targets != "" {
		cfg.LoRA.Targets = splitList(*targets)
	}
	cfg.Template = prompt.Default()
	if *tmplFile != "" {
		t, err := prompt.Read(*tmplFile)
		if err != nil {
			return err
		}
		cfg.Template = t
	}
	if *contextMessages != 0 {
		if cfg.Template.Context != nil {
			return errors.New("-context-messages: the template already sets its context")
		}
		cfg.Template = cfg.Template.WithContext(*contextMessages)
		if err := cfg.Template.Validate(); err != nil {
			return fmt.Errorf("-context-messages: %w", err)
		}
	}
	setThreads(*threads)
	base, tok, err := openBase(*modelDir, *tokDir, *device, *dtype)
	if err != nil {
		return err
	}
	defer base.Close()
	trainSrc, err := source(*data, "train", *dataDir, *labelMap)
	if err != nil {
		return fmt.Errorf("-data: %w", err)
	}
	examples, st, err := train.Load(trainSrc, cfg.Template.Labels)
	if err != nil {
		return err
	}
	fmt.Fprintf(s.err, "training data %s: %d examples (%d read; %d without a single label, %d without a counterpart, %d empty)\n",
		trainSrc, st.Kept, st.Read, st.NoLabel, st.Unmapped, st.Empty)
	var devEx []train.Example
	devName := *dev
	if devName == "" && trainSrc.Set != "" {
		devName = trainSrc.Set
	}
	if devName != "" && devName != "none" {
		devSrc, err := source(devName, "dev", *dataDir, *labelMap)
		if err != nil {
			return fmt.Errorf("-dev: %w", err)
		}
		if devEx, _, err = train.Load(devSrc, cfg.Template.Labels); err != nil {
			return err
		}
	}
	cfg.Progress = s.err
	cfg.Terminal = isTerminal(s.err)
	cfg.Logger = slog.New(slog.NewTextHandler(s.err, &slog.HandlerOptions{Level: slog.LevelWarn}))
	res, err := train.Run(ctx, cfg, base, tok, examples, devEx)
	if err != nil {
		return err
	}
	r := res.Report
	fmt.Fprintf(s.out, "wrote %s (%s %s, %d trainable parameters, %d updates in %.0fs)\n", res.Dir, r.Method, cfg.ID+"@"+cfg.Version, r.Params, len(r.History), r.Seconds)
	if r.Best != nil && len(r.Evals) > 0 {
		fmt.Fprintf(s.out, "dev (%d examples, update %d): accuracy %.4f, macro-F1 %.4f, weighted F1 %.4f\n", r.DevExamples, r.Best.Step, r.Best.Accuracy, r.Best.MacroF1, r.Best.WeightedF1)
	}
	fmt.Fprintf(s.out, "report: %s\n", filepath.Join(res.Dir, "training-report.html"))
	return nil
}

// openBase loads the base model and its tokenizer.
func openBase(modelDir, tokDir, device, dtype string) (*model.Model, tokenizer.Tokenizer, error) {
	dev, err := tensor.ParseDevice(device)
	if err != nil {
		return nil, nil, err
	}
	dt, err := tensor.ParseDType(dtype)
	if err != nil {
		return nil, nil, err
	}
	if tokDir == "" {
		tokDir = modelDir
	}
	tok, err := tokenizer.Load(tokDir, tokenizer.Options{})
	if err != nil {
		return nil, nil, err
	}
	base, err := model.Load(modelDir, model.Options{Device: dev, DType: dt})
	if err != nil {
		return nil, nil, err
	}
	return base, tok, nil
}

// source reads a -data/-dev value: a data set name (with split) or a file.
func source(v, split, dataDir, labelMap string) (train.Source, error) {
	if labelMap == "none" {
		labelMap = ""
	}
	for _, set := range datasets.Sets {
		if v == string(set) {
			return train.Source{Set: v, Split: split, DataDir: dataDir, LabelMap: labelMap}, nil
		}
	}
	if _, err := os.Stat(v); err != nil {
		return train.Source{}, fmt.Errorf("%q is neither a data set (%s) nor a readable file: %w", v, setList(), err)
	}
	if labelMap == "auto" {
		labelMap = ""
	}
	return train.Source{File: v, LabelMap: labelMap}, nil
}

func setList() string {
	var names []string
	for _, s := range datasets.Sets {
		names = append(names, string(s))
	}
	return strings.Join(names, ", ")
}

func setThreads(n int) {
	if n <= 0 {
		n = runtime.NumCPU()
	}
	tensor.SetThreads(n)
}

func pretrainCommand(ctx context.Context, args []string) error {
	return runPretrain(ctx, args, osStreams())
}

// runPretrain trains a small base model from scratch (emoctl pretrain).
func runPretrain(ctx context.Context, args []string, s streams) error {
	fs := flag.NewFlagSet("pretrain", flag.ContinueOnError)
	fs.SetOutput(s.err)
	var cfg train.PretrainConfig
	fs.StringVar(&cfg.Out, "out", "", "checkpoint folder to write (required)")
	fs.BoolVar(&cfg.Overwrite, "overwrite", false, "replace a model already at -out")
	fs.StringVar(&cfg.Name, "name", "emoflow-glm3-small", "model name in config.json")
	dataDir := fs.String("data-dir", defaultDataDir(), "shared data folder")
	sets := fs.String("sets", setList(), "data sets whose train-split texts are the corpus, comma-separated")
	texts := fs.Bool("texts", false, "also train on the sets' train-split texts as plain documents")
	tasks := fs.Bool("tasks", true, "also train on the sets' labelled train examples in chat-template form (instruction data, each set with its own labels)")
	fs.IntVar(&cfg.TokenizerVocab, "tokenizer-vocab", 4000, "SentencePiece vocabulary size")
	fs.IntVar(&cfg.Layers, "layers", 4, "transformer layers")
	fs.IntVar(&cfg.Hidden, "hidden", 256, "hidden size")
	fs.IntVar(&cfg.Heads, "heads", 4, "attention heads")
	fs.IntVar(&cfg.Groups, "groups", 2, "key/value groups")
	fs.IntVar(&cfg.FFN, "ffn", 704, "MLP inner size")
	fs.IntVar(&cfg.MaxTokens, "max-tokens", 64, "longest training sequence")
	fs.IntVar(&cfg.BatchSize, "batch-size", 64, "sequences per step")
	fs.IntVar(&cfg.Steps, "steps", 600, "optimizer steps")
	fs.Float64Var(&cfg.LR, "lr", 2e-3, "peak learning rate (cosine decay)")
	fs.Float64Var(&cfg.WarmupRatio, "warmup-ratio", 0.05, "share of the steps that warm up")
	fs.Float64Var(&cfg.WeightDecay, "weight-decay", 0.01, "AdamW weight decay")
	fs.Float64Var(&cfg.ClipNorm, "clip-norm", 1, "gradient clipping norm")
	fs.Uint64Var(&cfg.Seed, "seed", 42, "seed of the weights and the data order")
	autocast := fs.String("dtype", "bfloat16", "dtype of the matrix products: bfloat16 or float32 (weights stay float32)")
	threads := fs.Int("threads", 0, "libtorch threads (0: all cores)")
	if err := service.ParseConfig(fs, args, s.lookup); err != nil {
		return err
	}
	if cfg.Out == "" {
		return errors.New("-out is required")
	}
	dt, err := tensor.ParseDType(*autocast)
	if err != nil {
		return err
	}
	cfg.Autocast = dt
	setThreads(*threads)
	for _, name := range splitList(*sets) {
		if !slices.Contains(datasets.Sets, datasets.Set(name)) {
			return fmt.Errorf("-sets: unknown data set %q (want %s)", name, setList())
		}
		ex, err := datasets.Read(*dataDir, datasets.Set(name), "train")
		if err != nil {
			return err
		}
		task := train.Task{Template: train.SetTemplate(datasets.Set(name))}
		for _, e := range ex {
			if *texts {
				cfg.Texts = append(cfg.Texts, e.Text)
			}
			if e.Label != "" {
				task.Examples = append(task.Examples, train.Example{ID: e.ID, Text: e.Text, Label: e.Label})
			}
		}
		if *tasks {
			cfg.Tasks = append(cfg.Tasks, task)
		}
	}
	cfg.Progress, cfg.Terminal = s.err, isTerminal(s.err)
	rep, err := train.Pretrain(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(s.out, "wrote %s: %d parameters, %d steps over %d sequences (%d tokens) in %.0fs, loss %.3f → %.3f\n",
		cfg.Out, rep.Params, rep.Steps, rep.Sequences, rep.Tokens, rep.Seconds, rep.FirstLoss, rep.LastLoss)
	return nil
}

func demoModelCommand(ctx context.Context, args []string) error {
	return runDemoModel(ctx, args, osStreams())
}

// runDemoModel builds (once; cached by recipe) the demo model: a small base
// pretrained here and two adapters trained on GoEmotions-ekman.
func runDemoModel(ctx context.Context, args []string, s streams) error {
	fs := flag.NewFlagSet("demo-model", flag.ContinueOnError)
	fs.SetOutput(s.err)
	cache := fs.String("cache", filepath.Join(service.CacheDir(), "demo-model"), "folder of the built demo models, one per recipe")
	dataDir := fs.String("data-dir", defaultDataDir(), "shared data folder")
	threads := fs.Int("threads", 0, "libtorch threads (0: all cores)")
	if err := service.ParseConfig(fs, args, s.lookup); err != nil {
		return err
	}
	setThreads(*threads)
	r := train.Demo()
	dir := filepath.Join(*cache, r.Key(*dataDir))
	if _, err := os.Stat(filepath.Join(dir, train.DemoSummaryF)); err != nil {
		fmt.Fprintf(s.err, "building the demo model into %s (first time only: pretraining a small ChatGLM3-architecture base, then a LoRA and a P-tuning v2 adapter on GoEmotions-ekman)\n", dir)
	}
	log := slog.New(slog.NewTextHandler(s.err, &slog.HandlerOptions{Level: slog.LevelWarn}))
	sum, err := train.BuildDemo(ctx, r, dir, *dataDir, s.err, log)
	if err != nil {
		return err
	}
	fmt.Fprintf(s.err, "  Measured on the GoEmotions-ekman test split (%d messages, 7 labels; chance is about 0.14, the largest class 0.37):\n", sum.Examples)
	for _, name := range []string{"base", r.LoRA.ID, r.PTuning.ID} {
		e := sum.Test[name]
		fmt.Fprintf(s.err, "    %-14s accuracy %.3f   macro-F1 %.3f   weighted F1 %.3f\n", name, e.Accuracy, e.MacroF1, e.WeightedF1)
	}
	fmt.Fprintln(s.out, dir)
	return nil
}
