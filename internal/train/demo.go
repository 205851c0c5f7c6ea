package train

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/emoflow/emoflow/internal/adapters"
	"github.com/emoflow/emoflow/internal/datasets"
	"github.com/emoflow/emoflow/internal/model"
	"github.com/emoflow/emoflow/internal/prompt"
	"github.com/emoflow/emoflow/internal/tensor"
	"github.com/emoflow/emoflow/internal/tokenizer"
	"github.com/emoflow/emoflow/labelmaps"
)

// PaperPrompt is the instruction of Peng et al. ("Classify the sentiment of
// the sentence to E1, E2, ... or Ek: <sentence>"), with emotion for
// sentiment.
const PaperPrompt = "Classify the emotion of the sentence to {labels}: {text}"

// SetTemplate is the paper's prompt with a data set's own labels.
func SetTemplate(set datasets.Set) prompt.Template {
	return prompt.Template{Name: "paper-" + string(set), Text: PaperPrompt, Labels: datasets.Labels(set), Wrap: prompt.WrapChat, Language: "en"}
}

// EkmanTemplate is the paper's prompt with Ekman's six emotions and
// neutral: the demo adapters' template.
func EkmanTemplate() prompt.Template {
	return prompt.Template{Name: "paper-ekman", Text: PaperPrompt, Labels: labelmaps.Ekman(), Wrap: prompt.WrapChat, Language: "en"}
}

// DemoRecipe is how the demo model is made on a machine without published
// ChatGLM weights: a small ChatGLM3-architecture base pretrained from
// scratch on the data sets' train splits (the labelled examples in the
// paper's prompt, each set with its own labels, every token predicted),
// then a LoRA and a P-tuning v2 adapter trained on GoEmotions-ekman's train
// split.
// Every field enters the cache key: change one and the model is rebuilt.
type DemoRecipe struct {
	Version int      `json:"version"`
	Sets    []string `json:"sets"`
	// Texts adds the sets' texts as plain documents to the instruction
	// rows (measured: at this budget the instruction rows alone do better).
	Texts bool `json:"texts"`
	// Dialogues adds the dialogues of the sets that have them (MELD,
	// EmoryNLP) as plain documents: runs of consecutive utterances written
	// as conversation context is ("user: <text>" lines), so that the base
	// has seen conversations and positions as long as MaxTokens, as a
	// general chat model has.
	Dialogues  bool    `json:"dialogues,omitempty"`
	Vocab      int     `json:"tokenizer_vocab"`
	Layers     int     `json:"layers"`
	Hidden     int     `json:"hidden"`
	Heads      int     `json:"heads"`
	Groups     int     `json:"groups"`
	FFN        int     `json:"ffn"`
	MaxTokens  int     `json:"max_tokens"`
	Batch      int     `json:"batch"`
	Steps      int     `json:"steps"`
	LR         float64 `json:"lr"`
	Seed       uint64  `json:"seed"`
	LoRA       Config  `json:"lora"`
	PTuning    Config  `json:"ptuning"`
	AdapterSet string  `json:"adapter_set"`
}

// Demo is the recipe ./task demo and emobench train use.
func Demo() DemoRecipe {
	tmpl := EkmanTemplate()
	common := Config{Template: tmpl, Version: "1", BatchSize: 32, WarmupRatio: 0.05, ClipNorm: 1, Seed: 7,
		MaxTextTokens: 64, EvalMax: 1000}
	lora := common
	lora.Method, lora.ID, lora.LR, lora.MaxSteps, lora.EvalEvery = adapters.MethodLoRA, "ekman-lora", 2e-3, 600, 200
	lora.LoRA = LoRAConfig{Rank: 8, Alpha: 16, Targets: []string{"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}, Dropout: 0.05}
	pt := common
	pt.Method, pt.ID, pt.LR, pt.MaxSteps, pt.EvalEvery = adapters.MethodPTuningV2, "ekman-ptuning", 2e-2, 600, 200
	pt.Prefix = PrefixConfig{PreSeqLen: 32, Dropout: 0.1}
	return DemoRecipe{Version: 1, Sets: []string{"goemotions-ekman", "meld", "emorynlp", "carer"}, Vocab: 4000,
		Layers: 4, Hidden: 256, Heads: 4, Groups: 2, FFN: 704, MaxTokens: 64, Batch: 64, Steps: 600, LR: 2e-3, Seed: 42,
		LoRA: lora, PTuning: pt, AdapterSet: "goemotions-ekman"}
}

// Key hashes the recipe and the sizes of the data files it reads.
func (r DemoRecipe) Key(dataDir string) string {
	h := sha256.New()
	raw, _ := json.Marshal(r)
	h.Write(raw)
	_ = filepath.WalkDir(dataDir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if info, err := d.Info(); err == nil {
				fmt.Fprintf(h, "%s:%d;", d.Name(), info.Size())
			}
		}
		return nil
	})
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// DemoSummary is what BuildDemo measured, kept beside the model.
type DemoSummary struct {
	Recipe   string          `json:"recipe"`
	Pretrain PretrainReport  `json:"pretrain"`
	Seconds  float64         `json:"seconds"`
	Test     map[string]Eval `json:"test"` // adapter (or "base") → GoEmotions-ekman test scores
	Examples int             `json:"test_examples"`
}

// Demo folder layout.
const (
	DemoBase     = "base"
	DemoAdapters = "adapters"
	DemoSummaryF = "summary.json"
)

// BuildDemoBase makes only the recipe's base model in dir (for
// benchmarks that train their own adapters), unless dir already holds it.
func BuildDemoBase(ctx context.Context, r DemoRecipe, dir, dataDir string, progress io.Writer, log *slog.Logger) (PretrainReport, error) {
	done := filepath.Join(dir, "pretrain-report.json")
	var rep PretrainReport
	if raw, err := os.ReadFile(done); err == nil && json.Unmarshal(raw, &rep) == nil {
		return rep, nil
	}
	rep, err := r.pretrain(ctx, dir, dataDir, progress, log)
	if err != nil {
		return rep, err
	}
	return rep, writeJSON(done, rep)
}

// pretrain trains the recipe's base into out.
func (r DemoRecipe) pretrain(ctx context.Context, out, dataDir string, progress io.Writer, log *slog.Logger) (PretrainReport, error) {
	pc := PretrainConfig{Out: out, Overwrite: true, Name: "emoflow-glm3-demo", TokenizerVocab: r.Vocab,
		Layers: r.Layers, Hidden: r.Hidden, Heads: r.Heads, Groups: r.Groups, FFN: r.FFN, MaxTokens: r.MaxTokens,
		BatchSize: r.Batch, Steps: r.Steps, LR: r.LR, WarmupRatio: 0.05, WeightDecay: 0.01, ClipNorm: 1, Seed: r.Seed,
		Autocast: tensor.BFloat16, Progress: progress, Logger: log}
	for _, name := range r.Sets {
		ex, err := datasets.Read(dataDir, datasets.Set(name), "train")
		if err != nil {
			return PretrainReport{}, err
		}
		task := Task{Template: SetTemplate(datasets.Set(name))}
		for _, e := range ex {
			if r.Texts {
				pc.Texts = append(pc.Texts, e.Text)
			}
			if e.Label != "" {
				task.Examples = append(task.Examples, Example{ID: e.ID, Text: e.Text, Label: e.Label})
			}
		}
		pc.Tasks = append(pc.Tasks, task)
		if r.Dialogues {
			pc.Texts = append(pc.Texts, dialogueTexts(ex, 5)...)
		}
	}
	return Pretrain(ctx, pc)
}

// dialogueTexts writes every run of up to n consecutive utterances of a
// dialogue (starting at every other utterance, never at its last) as
// "user: <text>" lines.
// Sets without dialogues (one utterance per conversation) give none.
func dialogueTexts(ex []datasets.Example, n int) []string {
	var out []string
	for lo := 0; lo < len(ex); {
		hi := lo
		for hi < len(ex) && ex[hi].Conversation == ex[lo].Conversation {
			hi++
		}
		for start := lo; hi-lo > 1 && start < hi-1; start += 2 {
			var b strings.Builder
			for _, e := range ex[start:min(start+n, hi)] {
				b.WriteString(DatasetRole + ": " + e.Text + "\n")
			}
			out = append(out, b.String())
		}
		lo = hi
	}
	return out
}

// BuildDemo makes the demo model in dir (base/, adapters/ekman-lora,
// adapters/ekman-ptuning, summary.json), unless dir already holds a
// complete one. It is deterministic for a given machine and thread count.
func BuildDemo(ctx context.Context, r DemoRecipe, dir, dataDir string, progress io.Writer, log *slog.Logger) (DemoSummary, error) {
	var sum DemoSummary
	if raw, err := os.ReadFile(filepath.Join(dir, DemoSummaryF)); err == nil && json.Unmarshal(raw, &sum) == nil {
		return sum, nil
	}
	started := time.Now()
	sum.Recipe = r.Key(dataDir)
	var err error
	if sum.Pretrain, err = r.pretrain(ctx, filepath.Join(dir, DemoBase), dataDir, progress, log); err != nil {
		return sum, err
	}
	baseDir := filepath.Join(dir, DemoBase)
	base, err := model.Load(baseDir, model.Options{DType: tensor.BFloat16})
	if err != nil {
		return sum, err
	}
	defer base.Close()
	tok, err := tokenizer.Load(baseDir, tokenizer.Options{})
	if err != nil {
		return sum, err
	}
	src := Source{Set: r.AdapterSet, DataDir: dataDir, LabelMap: "auto"}
	labels := r.LoRA.Template.Labels
	src.Split = "train"
	trainEx, _, err := Load(src, labels)
	if err != nil {
		return sum, err
	}
	src.Split = "dev"
	devEx, _, err := Load(src, labels)
	if err != nil {
		return sum, err
	}
	src.Split = "test"
	testEx, _, err := Load(src, labels)
	if err != nil {
		return sum, err
	}
	sum.Examples = len(testEx)
	sum.Test = map[string]Eval{}
	score := func(name string, a *adapters.Adapter) error {
		s, _, err := EvaluateAdapter(a, testEx)
		if err != nil {
			return err
		}
		sum.Test[name] = Eval{Accuracy: s.Accuracy, MacroF1: s.MacroF1, WeightedF1: s.WeightedF1}
		return nil
	}
	bare, err := adapters.Bare(base, tok, r.LoRA.Template, adapters.Options{})
	if err != nil {
		return sum, err
	}
	err = score("base", bare)
	bare.Close()
	if err != nil {
		return sum, err
	}
	for _, cfg := range []Config{r.LoRA, r.PTuning} {
		cfg.Out = filepath.Join(dir, DemoAdapters, cfg.ID)
		cfg.Overwrite, cfg.Progress, cfg.Logger = true, progress, log
		res, err := Run(ctx, cfg, base, tok, trainEx, devEx)
		if err != nil {
			return sum, fmt.Errorf("demo adapter %s: %w", cfg.ID, err)
		}
		a, err := adapters.Load(res.Dir, base, tok, adapters.Options{})
		if err != nil {
			return sum, err
		}
		err = score(cfg.ID, a)
		a.Close()
		if err != nil {
			return sum, err
		}
	}
	sum.Seconds = time.Since(started).Seconds()
	return sum, writeJSON(filepath.Join(dir, DemoSummaryF), sum)
}
