// Package train trains adapters on a frozen ChatGLM base model inside the
// product — LoRA as PEFT does, P-tuning v2 as THUDM's scripts do, prefix
// tuning as PEFT does — and writes them in those tools' formats with an
// emoflow manifest, so the classifier serves them as it serves adapters
// trained elsewhere. It also pretrains small base models from scratch
// (pretrain.go) for machines without published weights.
//
// The loop (Run) is the usual one: shuffled length-grouped batches of
// labelled texts, the answer-only loss of model.PromptLoss, gradient
// accumulation and clipping, AdamW with warm-up and linear or cosine decay,
// evaluation on a dev split with early stopping, the best adapter kept,
// and a checkpoint of the parameters and optimizer moments from which a
// killed run resumes exactly. Only adapter parameters get gradients; the
// base weights are shared with the forward pass, never copied.
package train

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/emoflow/emoflow/internal/adapters"
	"github.com/emoflow/emoflow/internal/contract"
	"github.com/emoflow/emoflow/internal/evaluate"
	"github.com/emoflow/emoflow/internal/model"
	"github.com/emoflow/emoflow/internal/prompt"
	"github.com/emoflow/emoflow/internal/tensor"
	"github.com/emoflow/emoflow/internal/tokenizer"
)

// Config is a training run: the adapter to make and how.
type Config struct {
	// Method is adapters.MethodLoRA, MethodPTuningV2 or MethodPrefixTuning.
	Method string       `json:"method"`
	LoRA   LoRAConfig   `json:"lora"`
	Prefix PrefixConfig `json:"prefix"`
	// Init is an adapter folder of the same method and shapes to start
	// from instead of the methods' initialisation ("" for none).
	Init string `json:"init,omitempty"`
	// Template is the prompt and label set the adapter is trained and
	// served with.
	Template prompt.Template `json:"template"`
	// ID and Version go into the manifest.
	ID      string `json:"id"`
	Version string `json:"version"`

	Epochs    int `json:"epochs"`
	MaxSteps  int `json:"max_steps"` // optimizer updates; 0: Epochs
	BatchSize int `json:"batch_size"`
	GradAccum int `json:"grad_accum"`
	// LR is the peak learning rate; WarmupRatio the share of updates that
	// warm up; Cosine selects cosine decay (linear otherwise).
	LR          float64 `json:"lr"`
	WarmupRatio float64 `json:"warmup_ratio"`
	Cosine      bool    `json:"cosine"`
	WeightDecay float64 `json:"weight_decay"`
	ClipNorm    float64 `json:"clip_norm"`
	Seed        uint64  `json:"seed"`
	// MaxTextTokens cuts longer texts (counted in the report).
	MaxTextTokens int `json:"max_text_tokens"`

	// EvalEvery is the number of updates between dev evaluations (0: only
	// at the end); EvalMax caps the dev examples scored (0: all);
	// Patience stops after that many evaluations without a better
	// macro-F1 (0: never).
	EvalEvery int `json:"eval_every"`
	EvalMax   int `json:"eval_max"`
	Patience  int `json:"patience"`
	// CheckpointEvery is the number of updates between saved states.
	CheckpointEvery int `json:"checkpoint_every"`

	// Out is the adapter folder to write. It must not hold an adapter
	// unless Overwrite.
	Out       string `json:"-"`
	Overwrite bool   `json:"-"`
	// Progress receives the progress line (nil: none); Terminal redraws
	// it in place.
	Progress io.Writer    `json:"-"`
	Terminal bool         `json:"-"`
	Logger   *slog.Logger `json:"-"`
}

// Defaults fills unset fields with the values of the paper's recipes
// (Peng et al.: LoRA rank 8, P-tuning v2 with 32 virtual tokens) and
// PEFT's and THUDM's scripts.
func (c *Config) Defaults(base model.Config) {
	if c.Method == "" {
		c.Method = adapters.MethodLoRA
	}
	if c.LoRA.Rank == 0 {
		c.LoRA.Rank = 8
	}
	if c.LoRA.Alpha == 0 {
		c.LoRA.Alpha = 2 * float64(c.LoRA.Rank)
	}
	if len(c.LoRA.Targets) == 0 {
		c.LoRA.Targets = DefaultLoRATargets(base)
	}
	if c.Prefix.PreSeqLen == 0 {
		c.Prefix.PreSeqLen = 32
	}
	if c.Epochs == 0 && c.MaxSteps == 0 {
		c.Epochs = 1
	}
	if c.BatchSize == 0 {
		c.BatchSize = 32
	}
	if c.GradAccum == 0 {
		c.GradAccum = 1
	}
	if c.LR == 0 {
		c.LR = 2e-4
		if c.Method != adapters.MethodLoRA {
			c.LR = 2e-2 // THUDM's P-tuning v2 scripts
		}
	}
	if c.ClipNorm == 0 {
		c.ClipNorm = 1
	}
	if c.MaxTextTokens == 0 {
		c.MaxTextTokens = 128
	}
	if c.Template.Text == "" {
		c.Template = prompt.Default()
	}
	if c.Version == "" {
		c.Version = "1"
	}
	if c.CheckpointEvery == 0 {
		c.CheckpointEvery = max(c.EvalEvery, 50)
	}
}

// Result is what a run made.
type Result struct {
	Report Report
	// Dir is the adapter folder written.
	Dir string
}

// trainer is one run's state.
type trainer struct {
	cfg    Config
	base   *model.Model
	prompt model.Prompt
	method method
	opt    *AdamW
	sched  Schedule
	rows   []model.LossRow
	dev    []Example
	devIDs [][]int64
	// maxTokens bounds a row's tokens: context, template text and message.
	maxTokens int
	tok       tokenizer.Tokenizer
	work      string
	report    Report
	epochOf   map[int][][]int // epoch → batches of row indices
	log       *slog.Logger
}

// ErrNaN is a loss or gradient that is not a number.
var ErrNaN = errors.New("training diverged")

// Run trains an adapter on train, evaluating on dev (may be empty), and
// writes it to cfg.Out. A run whose state was saved in the work folder
// beside Out (".<name>.train") with the same recipe resumes from it.
func Run(ctx context.Context, cfg Config, base *model.Model, tok tokenizer.Tokenizer, train, dev []Example) (Result, error) {
	cfg.Defaults(base.Config())
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if c := cfg.Template.Context; c != nil {
		train, dev = WithContexts(train, c.Messages), WithContexts(dev, c.Messages)
	}
	t := &trainer{cfg: cfg, base: base, tok: tok, dev: dev, epochOf: map[int][][]int{}, log: cfg.Logger}
	if err := t.prepare(train); err != nil {
		return Result{}, err
	}
	defer freeParams(t.method.params())
	defer t.opt.Free()
	if err := t.resume(); err != nil {
		return Result{}, err
	}
	if err := t.loop(ctx); err != nil {
		return Result{}, err
	}
	dir, err := t.finish()
	return Result{Report: t.report, Dir: dir}, err
}

func (t *trainer) prepare(train []Example) error {
	c := &t.cfg
	if c.Out == "" {
		return errors.New("train: no output folder")
	}
	if _, err := os.Stat(filepath.Join(c.Out, adapters.ManifestFile)); err == nil && !c.Overwrite {
		return fmt.Errorf("train: %s already holds an adapter (use -overwrite to replace it)", c.Out)
	}
	if !adapters.ValidID(c.ID) {
		return fmt.Errorf("train: adapter id %q must be 1-64 letters, digits, '.', '_' or '-' (and not \"base\")", c.ID)
	}
	if c.BatchSize <= 0 || c.GradAccum <= 0 || c.Epochs < 0 || c.MaxSteps < 0 || c.LR <= 0 || c.WarmupRatio < 0 || c.WarmupRatio >= 1 {
		return fmt.Errorf("train: bad schedule (batch %d, accumulation %d, epochs %d, steps %d, lr %g, warm-up %g)", c.BatchSize, c.GradAccum, c.Epochs, c.MaxSteps, c.LR, c.WarmupRatio)
	}
	if len(train) == 0 {
		return fmt.Errorf("train: %w: no training examples", ErrBadData)
	}
	if err := CheckClasses(train, "training"); err != nil {
		return err
	}
	var err error
	if t.prompt, err = c.Template.Compile(t.tok); err != nil {
		return fmt.Errorf("train: template: %w", err)
	}
	in, err := c.Template.Input(t.tok, c.MaxTextTokens)
	if err != nil {
		return fmt.Errorf("train: template: %w", err)
	}
	t.maxTokens = in.MaxTokens()
	index := map[string]int{}
	for i, l := range c.Template.Labels {
		index[l] = i
	}
	for _, e := range train {
		k, ok := index[e.Label]
		if !ok {
			return fmt.Errorf("train: %w: example %s: label %q is not in the template's label set", ErrBadData, e.ID, e.Label)
		}
		ids, _, cut := in.Tokens(e.Context, e.Text)
		if cut {
			t.report.Truncated++
		}
		t.rows = append(t.rows, model.LossRow{Text: ids, Label: k})
	}
	for _, e := range t.dev {
		if _, ok := index[e.Label]; !ok {
			return fmt.Errorf("train: %w: dev example %s: label %q is not in the template's label set", ErrBadData, e.ID, e.Label)
		}
	}
	t.dev = sample(t.dev, c.EvalMax, c.Seed)
	t.devIDs, _ = Encode(in, t.dev)
	if t.method, err = newMethod(*c, t.base); err != nil {
		return fmt.Errorf("train: %w", err)
	}
	if c.Init != "" {
		file, err := adapterFile(c.Init)
		if err == nil {
			err = loadInto(t.method.params(), file, t.base.Device())
		}
		if err != nil {
			freeParams(t.method.params())
			return fmt.Errorf("train: -init: %w", err)
		}
	}
	var leaves []*tensor.Tensor
	for _, p := range t.method.params() {
		leaves = append(leaves, p.t)
	}
	if t.opt, err = NewAdamW(leaves, t.base.Device(), 0.9, 0.999, 1e-8, c.WeightDecay); err != nil {
		freeParams(t.method.params())
		return err
	}
	perEpoch := (len(t.rows) + c.BatchSize*c.GradAccum - 1) / (c.BatchSize * c.GradAccum)
	total := c.MaxSteps
	if total == 0 {
		total = perEpoch * c.Epochs
	}
	t.sched = Schedule{Peak: c.LR, Warmup: int(c.WarmupRatio * float64(total)), Total: total, Cosine: c.Cosine}
	t.work = filepath.Join(filepath.Dir(c.Out), "."+filepath.Base(c.Out)+".train")
	t.report = Report{Config: *c, Recipe: t.recipe(), Method: t.method.kind(), Base: t.base.ID(), DType: t.base.DType().String(),
		TrainExamples: len(t.rows), DevExamples: len(t.dev), Updates: total, Truncated: t.report.Truncated,
		Params: countParams(t.method.params())}
	return nil
}

// recipe hashes everything that decides the run's result, so a saved
// state is resumed only by the same run.
func (t *trainer) recipe() string {
	h := sha256.New()
	cfg, _ := json.Marshal(t.cfg)
	fmt.Fprintf(h, "%s\x00%s\x00%s\x00", cfg, t.base.Fingerprint(), t.base.DType())
	for _, r := range t.rows {
		fmt.Fprintf(h, "%v:%d;", r.Text, r.Label)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// batches returns epoch's batches of row indices (see lengthBatches).
func (t *trainer) batches(epoch int) [][]int {
	if b, ok := t.epochOf[epoch]; ok {
		return b
	}
	texts := make([][]int64, len(t.rows))
	for i, r := range t.rows {
		texts[i] = r.Text
	}
	out := lengthBatches(texts, t.cfg.BatchSize, rand.New(rand.NewPCG(t.cfg.Seed, uint64(epoch)+2)))
	t.epochOf = map[int][][]int{epoch: out} // only the current epoch is kept
	return out
}

// loop runs the updates left.
func (t *trainer) loop(ctx context.Context) error {
	c := t.cfg
	perEpoch := len(t.batches(0))
	started := time.Now()
	tokens := 0
	bad := 0
	for u := t.opt.Step; u < t.sched.Total; u++ {
		if err := ctx.Err(); err != nil {
			_ = t.checkpoint()
			return fmt.Errorf("train: stopped at update %d (state saved in %s; run again to resume): %w", u, t.work, err)
		}
		lr := t.sched.At(u)
		lossSum, n := 0.0, 0
		for k := 0; k < c.GradAccum; k++ {
			idx := u*c.GradAccum + k
			batch := t.batches(idx / perEpoch)[idx%perEpoch]
			loss, st, err := t.step(batch, u, idx)
			if err != nil {
				return err
			}
			lossSum += loss
			n++
			tokens += st.Tokens
		}
		norm, err := t.opt.ClipAndStep(lr, c.ClipNorm)
		if err != nil {
			return fmt.Errorf("train: update %d: %w: %v; the last good checkpoint is in %s", u+1, ErrNaN, err, t.work)
		}
		loss := lossSum / float64(n)
		elapsed := time.Since(started).Seconds()
		t.report.History = append(t.report.History, Point{Step: u + 1, Loss: loss, LR: lr, GradNorm: norm, TokensPerS: float64(tokens) / elapsed})
		t.progress(u+1, loss, float64(tokens)/elapsed, started)
		last := u+1 == t.sched.Total
		if (c.EvalEvery > 0 && (u+1)%c.EvalEvery == 0) || last {
			better, err := t.evaluate(u + 1)
			if err != nil {
				return err
			}
			if better {
				bad = 0
			} else {
				bad++
			}
			if c.Patience > 0 && bad >= c.Patience && !last {
				t.report.StoppedEarly = u + 1
				t.log.Info("early stopping", "update", u+1, "best_update", t.report.Best.Step)
				break
			}
		}
		if (u+1)%c.CheckpointEvery == 0 && !last {
			if err := t.checkpoint(); err != nil {
				return err
			}
		}
	}
	t.report.Seconds = time.Since(started).Seconds()
	if c.Progress != nil && c.Terminal {
		fmt.Fprintln(c.Progress)
	}
	return nil
}

// step computes micro-batch number micro's loss (in update) and
// accumulates its gradients.
func (t *trainer) step(batch []int, update, micro int) (float64, model.LossStats, error) {
	s := tensor.NewScope()
	defer s.Close()
	s.SetGrad(true)
	tensor.ManualSeed(int64(t.cfg.Seed) + int64(micro)) // dropout masks, reproducible on resume
	tu, err := t.method.tuning(s)
	if err != nil {
		return 0, model.LossStats{}, fmt.Errorf("train: %w", err)
	}
	rows := make([]model.LossRow, len(batch))
	for i, r := range batch {
		rows[i] = t.rows[r]
	}
	loss, st, err := t.base.PromptLoss(s, t.prompt, rows, tu, model.LossOptions{MaxTextTokens: t.maxTokens, PadTo: 8})
	if err != nil {
		return 0, st, fmt.Errorf("train: update %d: %w", update+1, err)
	}
	v := s.Scalar(loss)
	if math.IsNaN(v) || math.IsInf(v, 0) {
		t.opt.ZeroGrad()
		return 0, st, fmt.Errorf("train: update %d, batch of rows %v: %w: the loss is %v; the last good checkpoint is in %s", update+1, batch, ErrNaN, v, t.work)
	}
	s.Backward(s.Scale(loss, 1/float64(t.cfg.GradAccum)))
	return v, st, s.Err()
}

// evaluate scores the dev examples with the adapter's current values; a
// better macro-F1 than the best so far replaces the kept best adapter.
func (t *trainer) evaluate(step int) (bool, error) {
	if len(t.dev) == 0 {
		// Without a dev split the last adapter is the result.
		return true, t.writeAdapter(filepath.Join(t.work, "best"))
	}
	sc, release, err := t.method.scorer(t.prompt, t.maxTokens)
	if err != nil {
		return false, fmt.Errorf("train: evaluation: %w", err)
	}
	defer release()
	scores, _, err := Evaluate(sc, t.cfg.Template.Labels, t.dev, t.devIDs)
	if err != nil {
		return false, fmt.Errorf("train: evaluation: %w", err)
	}
	e := Eval{Step: step, Accuracy: scores.Accuracy, MacroF1: scores.MacroF1, WeightedF1: scores.WeightedF1}
	t.report.Evals = append(t.report.Evals, e)
	t.log.Info("dev evaluation", "update", step, "accuracy", e.Accuracy, "macro_f1", e.MacroF1, "weighted_f1", e.WeightedF1)
	if t.report.Best != nil && e.MacroF1 <= t.report.Best.MacroF1 {
		return false, nil
	}
	t.report.Best = &e
	t.report.BestScores = &scores
	return true, t.writeAdapter(filepath.Join(t.work, "best"))
}

// Prediction is an example's predicted label and how many previous
// messages its prompt held.
type Prediction struct {
	ID              string `json:"id"`
	Label           string `json:"label"`
	TrueLabel       string `json:"true_label"`
	ContextMessages int    `json:"context_messages"`
}

// EvaluateAdapter scores examples (in dialogue order) with a loaded
// adapter, each with the context its template takes, as the pipeline
// would, and returns the scores and each example's prediction.
func EvaluateAdapter(a *adapters.Adapter, examples []Example) (evaluate.Scores, []Prediction, error) {
	if c := a.Manifest.Template.Context; c != nil {
		examples = WithContexts(examples, c.Messages)
	}
	ids := make([][]int64, len(examples))
	out := make([]Prediction, len(examples))
	for i, e := range examples {
		ids[i], out[i].ContextMessages, _ = a.Input.Tokens(e.Context, e.Text)
		out[i].ID, out[i].TrueLabel = e.ID, e.Label
	}
	scores, pred, err := Evaluate(a.Scorer, a.Manifest.Template.Labels, examples, ids)
	for i := range pred {
		out[i].Label = pred[i]
	}
	return scores, out, err
}

// FromMessages turns chat messages (in topic order) into examples as
// ingest sees them: normalised texts, their conversations and roles, the
// message ids as ids and the ground truth as labels.
func FromMessages(msgs []contract.ChatMessage) []Example {
	out := make([]Example, len(msgs))
	for i, m := range msgs {
		out[i] = Example{ID: m.ID, Text: contract.NormalizeText(m.Text), Label: m.Label,
			Conversation: m.Tenant + "\x00" + m.ConversationID, Role: m.SpeakerRole}
	}
	return out
}

// Evaluate scores examples (their tokens in ids) with sc and returns the
// scores and the predicted labels.
func Evaluate(sc *model.Scorer, labels []string, examples []Example, ids [][]int64) (evaluate.Scores, []string, error) {
	conf := evaluate.Confusion{}
	pred := make([]string, 0, len(examples))
	const batch = 32
	for lo := 0; lo < len(ids); lo += batch {
		hi := min(lo+batch, len(ids))
		texts := slices.Clone(ids[lo:hi])
		for i := range texts {
			if len(texts[i]) == 0 {
				texts[i] = []int64{0} // an empty text after tokenizing: still scored
			}
		}
		res, err := sc.Score(texts)
		if err != nil {
			return evaluate.Scores{}, nil, err
		}
		for i, r := range res {
			p := labels[r.Best]
			pred = append(pred, p)
			conf[evaluate.Outcome{True: examples[lo+i].Label, Predicted: p}]++
		}
	}
	scores, err := evaluate.Score(conf)
	return scores, pred, err
}

// writeAdapter writes the current values as a complete adapter folder at
// dir, through a temporary folder renamed into place.
func (t *trainer) writeAdapter(dir string) error {
	tmp := filepath.Join(filepath.Dir(dir), "."+filepath.Base(dir)+".tmp")
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		return err
	}
	if err := t.method.writeFiles(tmp); err != nil {
		return fmt.Errorf("train: writing the adapter: %w", err)
	}
	c := t.base.Config()
	man := adapters.Manifest{ID: t.cfg.ID, Version: t.cfg.Version, Method: t.method.kind(),
		BaseModel: adapters.BaseModel{Name: c.Name, Fingerprint: t.base.Fingerprint()},
		Template:  t.cfg.Template, Language: t.cfg.Template.Language}
	if err := adapters.WriteManifest(tmp, man); err != nil {
		return err
	}
	return replaceDir(tmp, dir)
}

// replaceDir renames src to dst, replacing what dst held.
func replaceDir(src, dst string) error {
	old := dst + ".old"
	_ = os.RemoveAll(old)
	if _, err := os.Stat(dst); err == nil {
		if err := os.Rename(dst, old); err != nil {
			return err
		}
	}
	if err := os.Rename(src, dst); err != nil {
		return err
	}
	return os.RemoveAll(old)
}

// finish puts the best adapter (or the last, without a dev split) at
// cfg.Out with the training report, and removes the work folder.
func (t *trainer) finish() (string, error) {
	best := filepath.Join(t.work, "best")
	if _, err := os.Stat(best); err != nil {
		if err := t.writeAdapter(best); err != nil {
			return "", err
		}
	}
	if err := t.report.write(best); err != nil {
		return "", err
	}
	staged := filepath.Join(filepath.Dir(t.cfg.Out), "."+filepath.Base(t.cfg.Out)+".new")
	_ = os.RemoveAll(staged)
	if err := os.Rename(best, staged); err != nil {
		return "", err
	}
	if err := replaceDir(staged, t.cfg.Out); err != nil {
		return "", err
	}
	if err := os.RemoveAll(t.work); err != nil {
		return "", err
	}
	return t.cfg.Out, nil
}

func (t *trainer) progress(step int, loss, tokPerS float64, started time.Time) {
	w := t.cfg.Progress
	if w == nil {
		return
	}
	last := t.report.lastPrinted
	if !t.cfg.Terminal && step != t.sched.Total && time.Since(last) < 10*time.Second {
		return
	}
	t.report.lastPrinted = time.Now()
	total := t.sched.Total
	done := step - t.report.resumedAt
	eta := "--"
	if done > 0 {
		left := time.Duration(float64(time.Since(started)) / float64(done) * float64(total-step))
		eta = left.Round(time.Second).String()
	}
	frac := float64(step) / float64(total)
	width := 24
	filled := int(frac * float64(width))
	bar := strings.Repeat("=", filled) + strings.Repeat(" ", width-filled)
	line := fmt.Sprintf("step %d/%d [%s] %3.0f%% loss %.4f %.0f tok/s ETA %s", step, total, bar, 100*frac, loss, tokPerS, eta)
	if t.cfg.Terminal {
		fmt.Fprintf(w, "\r%s\x1b[K", line)
	} else {
		fmt.Fprintln(w, line)
	}
}

func countParams(ps []param) int {
	n := 0
	for _, p := range ps {
		n += int(p.t.Numel())
	}
	return n
}

// sample keeps at most n examples (0: all), chosen by seed.
func sample(ex []Example, n int, seed uint64) []Example {
	if n <= 0 || len(ex) <= n {
		return ex
	}
	rng := rand.New(rand.NewPCG(seed, 7))
	idx := rng.Perm(len(ex))[:n]
	sort.Ints(idx)
	out := make([]Example, n)
	for i, j := range idx {
		out[i] = ex[j]
	}
	return out
}

// Stepper makes optimizer updates of a freshly initialised adapter on
// batches the caller chooses: benchmarks drive it with the very batches a
// reference trainer gets.
type Stepper struct {
	base   *model.Model
	prompt model.Prompt
	cfg    Config
	method method
	opt    *AdamW
}

// NewStepper prepares cfg's method on base for prompt p.
func NewStepper(cfg Config, base *model.Model, p model.Prompt) (*Stepper, error) {
	cfg.Defaults(base.Config())
	st := &Stepper{base: base, prompt: p, cfg: cfg}
	var err error
	if st.method, err = newMethod(cfg, base); err != nil {
		return nil, err
	}
	var leaves []*tensor.Tensor
	for _, p := range st.method.params() {
		leaves = append(leaves, p.t)
	}
	if st.opt, err = NewAdamW(leaves, base.Device(), 0.9, 0.999, 1e-8, cfg.WeightDecay); err != nil {
		freeParams(st.method.params())
		return nil, err
	}
	return st, nil
}

// Update computes the loss of rows, backpropagates it and makes one
// clipped AdamW update at rate lr.
func (st *Stepper) Update(rows []model.LossRow, lr float64) (float64, model.LossStats, error) {
	s := tensor.NewScope()
	s.SetGrad(true)
	tu, err := st.method.tuning(s)
	if err != nil {
		s.Close()
		return 0, model.LossStats{}, err
	}
	loss, stats, err := st.base.PromptLoss(s, st.prompt, rows, tu, model.LossOptions{MaxTextTokens: st.cfg.MaxTextTokens, PadTo: 8})
	if err != nil {
		s.Close()
		return 0, stats, err
	}
	v := s.Scalar(loss)
	s.Backward(loss)
	err = s.Err()
	s.Close()
	if err != nil {
		return v, stats, err
	}
	_, err = st.opt.ClipAndStep(lr, st.cfg.ClipNorm)
	return v, stats, err
}

// Close frees the adapter and the optimizer.
func (st *Stepper) Close() {
	st.opt.Free()
	freeParams(st.method.params())
}
