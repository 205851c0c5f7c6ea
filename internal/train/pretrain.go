package train

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/emoflow/emoflow/internal/model"
	"github.com/emoflow/emoflow/internal/prompt"
	"github.com/emoflow/emoflow/internal/randmodel"
	"github.com/emoflow/emoflow/internal/safetensors"
	"github.com/emoflow/emoflow/internal/tensor"
	"github.com/emoflow/emoflow/internal/tokenizer"
)

// PretrainConfig is a small ChatGLM3-architecture base model trained from
// scratch: its own SentencePiece tokenizer (spm_train, ChatGLM3's
// settings), then full-parameter causal language modelling.
type PretrainConfig struct {
	// Out is the checkpoint folder to write (config.json, model.safetensors,
	// tokenizer.model, tokenizer_config.json); Overwrite replaces one.
	Out       string
	Overwrite bool
	// Name goes into config.json.
	Name string
	// Texts are plain documents (chat messages), each trained on as
	// [gMASK] sop text </s>.
	Texts []string
	// Tasks are labelled examples trained on in their chat-template form
	// (prompt, answer, end of turn): instruction data, as chat models are
	// trained on, from which adapters start.
	Tasks []Task
	// TokenizerVocab is the SentencePiece vocabulary size.
	TokenizerVocab int
	// The architecture.
	Layers, Hidden, Heads, Groups, FFN int
	// MaxTokens cuts longer sequences.
	MaxTokens int
	BatchSize int
	Steps     int
	LR        float64
	// WarmupRatio of the steps warm up; the rate then decays by cosine.
	WarmupRatio float64
	WeightDecay float64
	ClipNorm    float64
	Seed        uint64
	// Autocast is the dtype of the matrix products (BFloat16 on CPUs with
	// AMX or AVX-512 BF16); weights and optimizer stay float32.
	Autocast tensor.DType
	Progress io.Writer
	Terminal bool
	Logger   *slog.Logger
}

// Task is labelled data in a template's chat form.
type Task struct {
	Template prompt.Template
	Examples []Example
}

// PretrainReport is what Pretrain made.
type PretrainReport struct {
	Params    int     `json:"parameters"`
	Sequences int     `json:"sequences"`
	Steps     int     `json:"steps"`
	Tokens    int     `json:"tokens"`
	Seconds   float64 `json:"seconds"`
	FirstLoss float64 `json:"first_loss"`
	LastLoss  float64 `json:"last_loss"`
}

// Pretrain trains the tokenizer and the model and writes the checkpoint,
// through a temporary folder renamed into place.
func Pretrain(ctx context.Context, cfg PretrainConfig) (PretrainReport, error) {
	var rep PretrainReport
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if _, err := os.Stat(filepath.Join(cfg.Out, "model.safetensors")); err == nil && !cfg.Overwrite {
		return rep, fmt.Errorf("pretrain: %s already holds a model (use -overwrite to replace it)", cfg.Out)
	}
	if len(cfg.Texts) == 0 && len(cfg.Tasks) == 0 {
		return rep, fmt.Errorf("pretrain: %w: no texts", ErrBadData)
	}
	if cfg.Steps <= 0 || cfg.BatchSize <= 0 || cfg.LR <= 0 || cfg.MaxTokens < 2 {
		return rep, fmt.Errorf("pretrain: bad schedule (steps %d, batch %d, lr %g, max tokens %d)", cfg.Steps, cfg.BatchSize, cfg.LR, cfg.MaxTokens)
	}
	tmp := filepath.Join(filepath.Dir(cfg.Out), "."+filepath.Base(cfg.Out)+".pretrain")
	if err := os.RemoveAll(tmp); err != nil {
		return rep, err
	}
	defer os.RemoveAll(tmp)
	corpus := append([]string{}, cfg.Texts...)
	for _, task := range cfg.Tasks {
		corpus = append(corpus, task.Template.Text)
		for _, e := range task.Examples {
			corpus = append(corpus, e.Text)
		}
		corpus = append(corpus, task.Template.Labels...)
	}
	if err := randmodel.TrainTokenizer(ctx, tmp, corpus, cfg.TokenizerVocab); err != nil {
		return rep, fmt.Errorf("pretrain: tokenizer: %w", err)
	}
	tok, err := tokenizer.Load(tmp, tokenizer.Options{})
	if err != nil {
		return rep, fmt.Errorf("pretrain: the trained tokenizer does not load: %w", err)
	}
	seqs, err := pretrainSequences(cfg, tok)
	if err != nil {
		return rep, err
	}
	spec := randmodel.Spec{Arch: "chatglm2", Layers: cfg.Layers, Hidden: cfg.Hidden, Heads: cfg.Heads, Groups: cfg.Groups,
		FFN: cfg.FFN, Vocab: (tok.VocabSize() + 63) / 64 * 64, Seed: cfg.Seed, Std: 0.02, EOSIDs: tok.StopIDs(), Name: cfg.Name}
	if err := randmodel.Write(tmp, spec); err != nil {
		return rep, fmt.Errorf("pretrain: %w", err)
	}
	m, err := model.Load(tmp, model.Options{DType: tensor.Float32, Autocast: cfg.Autocast})
	if err != nil {
		return rep, fmt.Errorf("pretrain: %w", err)
	}
	defer m.Close()
	weights, err := m.Weights()
	if err != nil {
		return rep, fmt.Errorf("pretrain: %w", err)
	}
	var leaves []*tensor.Tensor
	for _, w := range weights {
		if err := tensor.SetRequiresGrad(w.Tensor, true); err != nil {
			return rep, err
		}
		leaves = append(leaves, w.Tensor)
		rep.Params += int(w.Tensor.Numel())
	}
	opt, err := NewAdamW(leaves, tensor.CPU, 0.9, 0.95, 1e-8, cfg.WeightDecay)
	if err != nil {
		return rep, err
	}
	defer opt.Free()
	sched := Schedule{Peak: cfg.LR, Warmup: int(cfg.WarmupRatio * float64(cfg.Steps)), Total: cfg.Steps, Cosine: true}
	rep.Sequences = len(seqs)
	cfg.Logger.Info("pretraining", "parameters", rep.Params, "sequences", len(seqs), "steps", cfg.Steps)
	started, printed := time.Now(), time.Time{}
	var epoch [][]int
	for step := 0; step < cfg.Steps; step++ {
		if err := ctx.Err(); err != nil {
			return rep, fmt.Errorf("pretrain: stopped at step %d: %w", step, err)
		}
		if len(epoch) == 0 {
			epoch = lengthBatches(seqs, cfg.BatchSize, rand.New(rand.NewPCG(cfg.Seed, uint64(step)+11)))
		}
		batch := epoch[0]
		epoch = epoch[1:]
		loss, tokens, err := pretrainStep(m, seqs, batch)
		if err != nil {
			return rep, fmt.Errorf("pretrain: step %d: %w", step+1, err)
		}
		if _, err := opt.ClipAndStep(sched.At(step), cfg.ClipNorm); err != nil {
			return rep, fmt.Errorf("pretrain: step %d: %w: %v", step+1, ErrNaN, err)
		}
		if step == 0 {
			rep.FirstLoss = loss
		}
		rep.LastLoss, rep.Tokens, rep.Steps = loss, rep.Tokens+tokens, step+1
		if w := cfg.Progress; w != nil && (cfg.Terminal || time.Since(printed) > 10*time.Second || step+1 == cfg.Steps) {
			printed = time.Now()
			el := time.Since(started)
			eta := time.Duration(float64(el) / float64(step+1) * float64(cfg.Steps-step-1)).Round(time.Second)
			line := fmt.Sprintf("pretrain step %d/%d loss %.4f %.0f tok/s ETA %s", step+1, cfg.Steps, loss, float64(rep.Tokens)/el.Seconds(), eta)
			if cfg.Terminal {
				fmt.Fprintf(w, "\r%s\x1b[K", line)
			} else {
				fmt.Fprintln(w, line)
			}
		}
	}
	if cfg.Progress != nil && cfg.Terminal {
		fmt.Fprintln(cfg.Progress)
	}
	rep.Seconds = time.Since(started).Seconds()
	if err := saveWeights(filepath.Join(tmp, "model.safetensors"), weights); err != nil {
		return rep, err
	}
	_ = os.Remove(cfg.Out + ".old")
	if _, err := os.Stat(cfg.Out); err == nil {
		if err := os.Rename(cfg.Out, cfg.Out+".old"); err != nil {
			return rep, err
		}
	}
	if err := os.Rename(tmp, cfg.Out); err != nil {
		return rep, err
	}
	return rep, os.RemoveAll(cfg.Out + ".old")
}

// pretrainSequences tokenizes the texts and the tasks' examples.
func pretrainSequences(cfg PretrainConfig, tok tokenizer.Tokenizer) ([][]int64, error) {
	start := tokenizer.Int64s(tok.BuildInputs(nil)) // [gMASK] sop
	stops := tok.StopIDs()
	if len(stops) == 0 {
		return nil, errors.New("pretrain: the tokenizer has no end token")
	}
	eos := int64(stops[0])
	var seqs [][]int64
	add := func(q []int64) {
		if len(q) > cfg.MaxTokens {
			q = q[:cfg.MaxTokens]
		}
		if len(q) >= 2 {
			seqs = append(seqs, q)
		}
	}
	for _, t := range cfg.Texts {
		add(append(append(append([]int64{}, start...), tokenizer.Int64s(tok.Encode(t))...), eos))
	}
	for _, task := range cfg.Tasks {
		p, err := task.Template.Compile(tok)
		if err != nil {
			return nil, fmt.Errorf("pretrain: task template %q: %w", task.Template.Name, err)
		}
		index := map[string]int{}
		for i, l := range task.Template.Labels {
			index[l] = i
		}
		for _, e := range task.Examples {
			k, ok := index[e.Label]
			if !ok {
				return nil, fmt.Errorf("pretrain: %w: task %q: label %q is not in its template", ErrBadData, task.Template.Name, e.Label)
			}
			text := tokenizer.Int64s(tok.Encode(e.Text))
			if len(text) > cfg.MaxTokens/2 {
				text = text[:cfg.MaxTokens/2] // keep the answer inside MaxTokens
			}
			q := append(append(append(append([]int64{}, p.Prefix...), text...), p.Suffix...), p.Labels[k]...)
			if p.Stop >= 0 {
				q = append(q, p.Stop)
			}
			add(q)
		}
	}
	if len(seqs) == 0 {
		return nil, fmt.Errorf("pretrain: %w: no sequence of two tokens or more", ErrBadData)
	}
	return seqs, nil
}

// lengthBatches is one epoch of batches: shuffled, grouped by length in
// windows of 64 batches, the batches shuffled again.
func lengthBatches(seqs [][]int64, bs int, rng *rand.Rand) [][]int {
	perm := rng.Perm(len(seqs))
	var out [][]int
	for lo := 0; lo < len(perm); lo += 64 * bs {
		chunk := perm[lo:min(lo+64*bs, len(perm))]
		sort.SliceStable(chunk, func(a, b int) bool { return len(seqs[chunk[a]]) < len(seqs[chunk[b]]) })
		for i := 0; i < len(chunk); i += bs {
			out = append(out, chunk[i:min(i+bs, len(chunk))])
		}
	}
	rng.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

func pretrainStep(m *model.Model, seqs [][]int64, batch []int) (float64, int, error) {
	s := tensor.NewScope()
	defer s.Close()
	s.SetGrad(true)
	b := make([][]int64, len(batch))
	for i, k := range batch {
		b[i] = seqs[k]
	}
	loss, st, err := m.LMLoss(s, b, 8)
	if err != nil {
		return 0, 0, err
	}
	v := s.Scalar(loss)
	s.Backward(loss)
	return v, st.Tokens, s.Err()
}

// saveWeights writes the trained weights under their checkpoint names.
func saveWeights(path string, weights []model.NamedWeight) error {
	s := tensor.NewScope()
	defer s.Close()
	var ts []safetensors.Tensor
	for _, w := range weights {
		vals := s.Float32s(w.Tensor)
		if err := s.Err(); err != nil {
			return fmt.Errorf("pretrain: %s: %w", w.Name, err)
		}
		ts = append(ts, safetensors.Tensor{Name: w.Name, DType: "F32", Shape: w.Tensor.Shape(), Data: randmodel.Encode(vals, "F32")})
	}
	return safetensors.Write(path, ts, map[string]string{"format": "pt"})
}
