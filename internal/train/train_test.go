package train

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emoflow/emoflow/internal/adapters"
	"github.com/emoflow/emoflow/internal/datasets"
	"github.com/emoflow/emoflow/internal/model"
	"github.com/emoflow/emoflow/internal/prompt"
	"github.com/emoflow/emoflow/internal/randmodel"
	"github.com/emoflow/emoflow/internal/tensor"
	"github.com/emoflow/emoflow/internal/testenv"
	"github.com/emoflow/emoflow/internal/tokenizer"
)

// A toy task a tiny random model can learn in a few dozen updates: the
// label is decided by one keyword.
var toyWords = map[string]string{"sunny": "joy", "gloomy": "sadness", "furious": "anger"}

func toyExamples(n int) []Example {
	var out []Example
	words := []string{"sunny", "gloomy", "furious"}
	fillers := []string{"today was", "the meeting felt", "my order is", "honestly this is", "the weather looks"}
	for i := 0; i < n; i++ {
		w := words[i%3]
		text := fillers[(i/3)%len(fillers)] + " " + w
		if i%2 == 1 {
			text += " again"
		}
		out = append(out, Example{ID: string(rune('a'+i%26)) + strings.Repeat("x", i/26), Text: text, Label: toyWords[w]})
	}
	return out
}

type fixture struct {
	dir  string
	base *model.Model
	tok  tokenizer.Tokenizer
	tmpl prompt.Template
}

func newFixture(t *testing.T, dtype tensor.DType) *fixture {
	t.Helper()
	var lines []string
	for _, e := range toyExamples(60) {
		lines = append(lines, e.Text)
	}
	tmpl := prompt.Template{Name: "toy", Text: "Emotion of: {text}", Labels: []string{"joy", "sadness", "anger"}, Wrap: prompt.WrapChat}
	lines = append(lines, tmpl.Text, "joy sadness anger")
	for i := 0; i < 4; i++ {
		lines = append(lines, lines...)
	}
	dir := testenv.TinyModel(t, lines, 600, randmodel.Spec{Arch: "chatglm2", Layers: 2, Hidden: 64, Heads: 4, Groups: 2, FFN: 96, Vocab: 640, Seed: 5, Std: 0.1, EOSIDs: []int{2}})
	base, err := model.Load(dir, model.Options{DType: dtype})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(base.Close)
	tok, err := tokenizer.Load(dir, tokenizer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{dir: dir, base: base, tok: tok, tmpl: tmpl}
}

func (f *fixture) config(t *testing.T, method string) Config {
	return Config{Method: method, ID: "toy-" + method, Template: f.tmpl, Epochs: 6, BatchSize: 8, LR: 1e-2,
		Seed: 3, EvalEvery: 10, Out: filepath.Join(t.TempDir(), "adapters", "toy"),
		LoRA:   LoRAConfig{Rank: 4, Alpha: 8, Targets: []string{"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}},
		Prefix: PrefixConfig{PreSeqLen: 8}}
}

func TestTrainingLearnsTheToyTaskAndServes(t *testing.T) {
	f := newFixture(t, tensor.Float32)
	train, dev := toyExamples(90), toyExamples(30)
	for _, method := range []string{adapters.MethodLoRA, adapters.MethodPTuningV2, adapters.MethodPrefixTuning} {
		t.Run(method, func(t *testing.T) {
			cfg := f.config(t, method)
			switch method {
			case adapters.MethodPTuningV2:
				cfg.Prefix.Projection, cfg.Epochs = true, 10
			case adapters.MethodPrefixTuning:
				cfg.LR, cfg.Epochs = 3e-2, 10
			}
			res, err := Run(t.Context(), cfg, f.base, f.tok, train, dev)
			if err != nil {
				t.Fatal(err)
			}
			h := res.Report.History
			first, last := h[0].Loss, h[len(h)-1].Loss
			if !(last < first/2) {
				t.Errorf("loss %.4f → %.4f: did not halve", first, last)
			}
			// A prefix alone moves a tiny random frozen model little: only
			// LoRA is held to solving the task.
			if res.Report.Best == nil || (method == adapters.MethodLoRA && res.Report.Best.Accuracy < 0.9) {
				t.Fatalf("best dev evaluation %+v, want accuracy ≥ 0.9 on the keyword task", res.Report.Best)
			}
			// The written folder is what the classifier loads, and it
			// scores as the training evaluation did.
			a, err := adapters.Load(res.Dir, f.base, f.tok, adapters.Options{})
			if err != nil {
				t.Fatalf("the trained adapter does not load: %v", err)
			}
			defer a.Close()
			var ids [][]int64
			for _, e := range dev {
				ids = append(ids, tokenizer.Int64s(f.tok.Encode(e.Text)))
			}
			scores, _, err := Evaluate(a.Scorer, f.tmpl.Labels, dev, ids)
			if err != nil {
				t.Fatal(err)
			}
			if math.Abs(scores.Accuracy-res.Report.Best.Accuracy) > 1e-9 {
				t.Errorf("served accuracy %.4f, training's best %.4f", scores.Accuracy, res.Report.Best.Accuracy)
			}
			for _, name := range []string{"training-report.json", "training-report.html", adapters.ManifestFile} {
				if _, err := os.Stat(filepath.Join(res.Dir, name)); err != nil {
					t.Error(err)
				}
			}
			page, _ := os.ReadFile(filepath.Join(res.Dir, "training-report.html"))
			if n := strings.Count(string(page), "<polyline"); n != 3 {
				t.Errorf("the report draws %d lines, want the loss, its moving mean and the dev curve", n)
			}
			if _, err := os.Stat(filepath.Join(filepath.Dir(res.Dir), ".toy.train")); !os.IsNotExist(err) {
				t.Errorf("work folder left behind: %v", err)
			}
		})
	}
}

func TestTrainingIsReproducibleAndResumes(t *testing.T) {
	f := newFixture(t, tensor.Float32)
	train := toyExamples(60)
	cfg := f.config(t, adapters.MethodLoRA)
	cfg.Epochs, cfg.EvalEvery, cfg.CheckpointEvery = 3, 0, 5
	cfg.LoRA.Dropout = 0.1
	whole, err := Run(t.Context(), cfg, f.base, f.tok, train, nil)
	if err != nil {
		t.Fatal(err)
	}
	// The same run again, killed (cancelled) after the 12th update and
	// resumed: its adapter must be the same, bit for bit.
	cfg2 := cfg
	cfg2.Out = filepath.Join(t.TempDir(), "resumed")
	ctx, cancel := context.WithCancel(t.Context())
	cfg2.Progress = progressHook(func(line string) {
		if strings.HasPrefix(line, "step 12/") {
			cancel()
		}
	})
	cfg2.Terminal = true
	_, err = Run(ctx, cfg2, f.base, f.tok, train, nil)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled run: %v", err)
	}
	cfg2.Progress = nil
	resumed, err := Run(t.Context(), cfg2, f.base, f.tok, train, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(resumed.Report.Resumed) != 1 || resumed.Report.Resumed[0] < 10 {
		t.Fatalf("resumed at %v, want one resumption after update 10", resumed.Report.Resumed)
	}
	a, _ := os.ReadFile(filepath.Join(whole.Dir, "adapter_model.safetensors"))
	b, _ := os.ReadFile(filepath.Join(resumed.Dir, "adapter_model.safetensors"))
	if len(a) == 0 || string(a) != string(b) {
		t.Fatalf("the resumed run's adapter differs from the uninterrupted run's (%d and %d bytes)", len(a), len(b))
	}
}

type progressHook func(string)

func (h progressHook) Write(p []byte) (int, error) {
	h(strings.TrimSpace(strings.TrimPrefix(strings.TrimSuffix(string(p), "\x1b[K"), "\r")))
	return len(p), nil
}

func TestTrainingRefusesBadInput(t *testing.T) {
	f := newFixture(t, tensor.Float32)
	good := toyExamples(30)
	cases := []struct {
		name  string
		edit  func(*Config, *[]Example)
		wants string
	}{
		{"empty data", func(c *Config, ex *[]Example) { *ex = nil }, "no training examples"},
		{"single class", func(c *Config, ex *[]Example) {
			*ex = []Example{{ID: "1", Text: "sunny", Label: "joy"}, {ID: "2", Text: "sunny day", Label: "joy"}}
		}, "at least two classes"},
		{"label outside the set", func(c *Config, ex *[]Example) {
			*ex = append(append([]Example{}, good...), Example{ID: "x", Text: "meh", Label: "boredom"})
		}, `label "boredom" is not in the template's label set`},
		{"unknown method", func(c *Config, ex *[]Example) { c.Method = "adalora" }, "unknown method"},
		{"bad id", func(c *Config, ex *[]Example) { c.ID = "base" }, "adapter id"},
		{"init of another method", func(c *Config, ex *[]Example) { c.Init = f.dir }, "-init"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := f.config(t, adapters.MethodLoRA)
			cfg.Epochs = 1
			ex := good
			tc.edit(&cfg, &ex)
			_, err := Run(t.Context(), cfg, f.base, f.tok, ex, nil)
			if err == nil || !strings.Contains(err.Error(), tc.wants) {
				t.Fatalf("err = %v, want one saying %q", err, tc.wants)
			}
			if _, err := os.Stat(cfg.Out); !os.IsNotExist(err) {
				t.Errorf("output folder exists after a refused run: %v", err)
			}
		})
	}
	t.Run("existing adapter without -overwrite", func(t *testing.T) {
		cfg := f.config(t, adapters.MethodLoRA)
		cfg.Epochs = 1
		if _, err := Run(t.Context(), cfg, f.base, f.tok, good, nil); err != nil {
			t.Fatal(err)
		}
		before, _ := os.ReadFile(filepath.Join(cfg.Out, adapters.ManifestFile))
		cfg.Seed = 99
		if _, err := Run(t.Context(), cfg, f.base, f.tok, good, nil); err == nil || !strings.Contains(err.Error(), "-overwrite") {
			t.Fatalf("err = %v, want a refusal naming -overwrite", err)
		}
		after, _ := os.ReadFile(filepath.Join(cfg.Out, adapters.ManifestFile))
		if string(before) != string(after) {
			t.Fatal("the refused run changed the existing adapter")
		}
		cfg.Overwrite = true
		if _, err := Run(t.Context(), cfg, f.base, f.tok, good, nil); err != nil {
			t.Fatalf("with -overwrite: %v", err)
		}
	})
	t.Run("NaN loss keeps the last good checkpoint", func(t *testing.T) {
		cfg := f.config(t, adapters.MethodLoRA)
		cfg.Epochs, cfg.LR, cfg.ClipNorm, cfg.CheckpointEvery = 3, 1e30, -1, 2
		_, err := Run(t.Context(), cfg, f.base, f.tok, good, nil)
		if !errors.Is(err, ErrNaN) {
			t.Fatalf("err = %v, want ErrNaN", err)
		}
		if !strings.Contains(err.Error(), "update") || !strings.Contains(err.Error(), "last good checkpoint") {
			t.Errorf("error %q does not name the update and the checkpoint", err)
		}
		if _, err := os.Stat(filepath.Join(cfg.Out, adapters.ManifestFile)); !os.IsNotExist(err) {
			t.Errorf("a diverged run wrote an adapter where the classifier loads: %v", err)
		}
	})
}

func TestLongTextsAreTruncatedAndCounted(t *testing.T) {
	f := newFixture(t, tensor.Float32)
	ex := toyExamples(12)
	ex[0].Text = strings.Repeat("today was sunny ", 40)
	cfg := f.config(t, adapters.MethodLoRA)
	cfg.Epochs, cfg.MaxTextTokens = 1, 48
	res, err := Run(t.Context(), cfg, f.base, f.tok, ex, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Report.Truncated != 1 {
		t.Fatalf("truncated = %d, want 1", res.Report.Truncated)
	}
	var rep Report
	raw, _ := os.ReadFile(filepath.Join(res.Dir, "training-report.json"))
	if err := json.Unmarshal(raw, &rep); err != nil || rep.Truncated != 1 {
		t.Fatalf("report: %v, truncated %d", err, rep.Truncated)
	}
}

// bfloat16 training at an odd sequence length: libtorch 2.1's bfloat16
// attention backward kills the process at odd lengths without an explicit
// mask; the engine always passes one and pads to a multiple of 8.
func TestBFloat16TrainingStepAtOddLengths(t *testing.T) {
	f := newFixture(t, tensor.BFloat16)
	cfg := f.config(t, adapters.MethodLoRA)
	cfg.Epochs, cfg.BatchSize = 1, 1
	ex := []Example{{ID: "1", Text: "sunny", Label: "joy"}, {ID: "2", Text: "today was gloomy again", Label: "sadness"}, {ID: "3", Text: "furious", Label: "anger"}}
	res, err := Run(t.Context(), cfg, f.base, f.tok, ex, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range res.Report.History {
		if math.IsNaN(p.Loss) || p.Loss <= 0 {
			t.Fatalf("loss %v", p.Loss)
		}
	}
}

func TestPretrainWritesALoadableModelThatLearns(t *testing.T) {
	out := filepath.Join(t.TempDir(), "base")
	var texts []string
	ex := toyExamples(60)
	for _, e := range ex {
		texts = append(texts, e.Text)
	}
	tmpl := prompt.Template{Name: "toy", Text: "Emotion of: {text}", Labels: []string{"joy", "sadness", "anger"}, Wrap: prompt.WrapChat}
	cfg := PretrainConfig{Out: out, Name: "toy-base", Texts: texts, Tasks: []Task{{Template: tmpl, Examples: ex}},
		TokenizerVocab: 600, Layers: 2, Hidden: 64, Heads: 4, Groups: 2, FFN: 96, MaxTokens: 32, BatchSize: 16, Steps: 400,
		LR: 1e-2, WarmupRatio: 0.1, ClipNorm: 1, Seed: 1, Autocast: tensor.BFloat16}
	rep, err := Pretrain(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if !(rep.LastLoss < rep.FirstLoss/2) {
		t.Errorf("loss %.3f → %.3f: did not halve", rep.FirstLoss, rep.LastLoss)
	}
	m, err := model.Load(out, model.Options{DType: tensor.Float32})
	if err != nil {
		t.Fatalf("the pretrained model does not load: %v", err)
	}
	defer m.Close()
	tok, err := tokenizer.Load(out, tokenizer.Options{})
	if err != nil {
		t.Fatalf("its tokenizer does not load: %v", err)
	}
	// The task was in the pretraining data: the base answers it without
	// an adapter.
	a, err := adapters.Bare(m, tok, tmpl, adapters.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	var ids [][]int64
	for _, e := range ex {
		ids = append(ids, tokenizer.Int64s(tok.Encode(e.Text)))
	}
	scores, _, err := Evaluate(a.Scorer, tmpl.Labels, ex, ids)
	if err != nil {
		t.Fatal(err)
	}
	if scores.Accuracy < 0.9 {
		t.Errorf("accuracy %.3f on the pretraining task, want ≥ 0.9", scores.Accuracy)
	}
	if _, err := Pretrain(t.Context(), cfg); err == nil || !strings.Contains(err.Error(), "-overwrite") {
		t.Errorf("second run into the same folder: %v, want a refusal naming -overwrite", err)
	}
	if entries, _ := os.ReadDir(filepath.Dir(out)); len(entries) != 1 {
		t.Errorf("left behind: %v", entries)
	}
}

// contextExamples are two-message conversations whose second message,
// always the same words, takes the first one's emotion: only the context
// tells its label.
func contextExamples(n int) []Example {
	var out []Example
	for i, e := range toyExamples(n) {
		conv := fmt.Sprintf("conv%d", i)
		out = append(out,
			Example{ID: conv + "a", Text: e.Text, Label: e.Label, Conversation: conv, Role: "customer"},
			Example{ID: conv + "b", Text: "honestly this is", Label: e.Label, Conversation: conv, Role: "agent"})
	}
	return out
}

func TestWithContextsFollowsEachConversation(t *testing.T) {
	ex := []Example{{Text: "a1", Conversation: "a"}, {Text: "b1", Conversation: "b", Role: "agent"}, {Text: "a2", Conversation: "a"},
		{Text: "alone"}, {Text: "a3", Conversation: "a"}, {Text: "b2", Conversation: "b"}}
	got := WithContexts(ex, 2)
	want := [][]prompt.Turn{nil, nil, {{Role: "user", Text: "a1"}}, nil, {{Role: "user", Text: "a1"}, {Role: "user", Text: "a2"}}, {{Role: "agent", Text: "b1"}}}
	for i := range got {
		if fmt.Sprint(got[i].Context) != fmt.Sprint(want[i]) {
			t.Errorf("example %d (%s): context %v, want %v", i, ex[i].Text, got[i].Context, want[i])
		}
	}
	if ex[2].Context != nil {
		t.Error("WithContexts changed its input")
	}
	if got := WithContexts(ex, 1)[4].Context; fmt.Sprint(got) != fmt.Sprint([]prompt.Turn{{Role: "user", Text: "a2"}}) {
		t.Errorf("k=1: %v", got)
	}
}

// TestTrainingWithContextLearnsWhatTheMessageAloneCannot: with one
// previous message in the prompt LoRA solves a task that is at chance
// without it, and the served adapter scores as training evaluated it.
func TestTrainingWithContextLearnsWhatTheMessageAloneCannot(t *testing.T) {
	f := newFixture(t, tensor.Float32)
	train, dev := contextExamples(60), contextExamples(24)
	accuracy := map[int]float64{}
	for _, k := range []int{0, 1} {
		cfg := f.config(t, adapters.MethodLoRA)
		cfg.Template, cfg.Epochs = f.tmpl.WithContext(k), 8
		res, err := Run(t.Context(), cfg, f.base, f.tok, train, dev)
		if err != nil {
			t.Fatal(err)
		}
		accuracy[k] = res.Report.Best.Accuracy
		a, err := adapters.Load(res.Dir, f.base, f.tok, adapters.Options{})
		if err != nil {
			t.Fatal(err)
		}
		scores, _, err := EvaluateAdapter(a, dev)
		a.Close()
		if err != nil {
			t.Fatal(err)
		}
		if math.Abs(scores.Accuracy-res.Report.Best.Accuracy) > 1e-9 {
			t.Errorf("k=%d: served accuracy %.4f, training's best %.4f", k, scores.Accuracy, res.Report.Best.Accuracy)
		}
	}
	// Half the dev messages are "honestly this is": alone, at best a third
	// of them can be right.
	if accuracy[1] < 0.9 || accuracy[0] > 0.75 {
		t.Fatalf("dev accuracy with context %.3f (want ≥ 0.9), without %.3f (want ≤ 0.75)", accuracy[1], accuracy[0])
	}
	t.Logf("dev accuracy: %.3f without context, %.3f with one previous message", accuracy[0], accuracy[1])
}

func TestDialogueTextsAreRunsOfOneConversation(t *testing.T) {
	ex := []datasets.Example{{Conversation: "a", Text: "a1"}, {Conversation: "a", Text: "a2"}, {Conversation: "a", Text: "a3"},
		{Conversation: "b", Text: "alone"}, {Conversation: "c", Text: "c1"}, {Conversation: "c", Text: "c2"}}
	got := dialogueTexts(ex, 2)
	// Runs start at every other utterance; a lone last one is no dialogue.
	want := []string{"user: a1\nuser: a2\n", "user: c1\nuser: c2\n"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("dialogue texts %q, want %q", got, want)
	}
}
