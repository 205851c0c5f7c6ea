package train

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/emoflow/emoflow/internal/model"
	"github.com/emoflow/emoflow/internal/tensor"
	"github.com/emoflow/emoflow/internal/testenv"
)

// referenceRun is tools/reference/train_reference.py's output: the loss,
// gradients and one AdamW step that torch and PEFT compute for a batch.
type referenceRun struct {
	dir    string
	Base   string `json:"base"`
	Prompt struct {
		Prefix []int64   `json:"prefix"`
		Suffix []int64   `json:"suffix"`
		Labels [][]int64 `json:"labels"`
		Stop   int64     `json:"stop"`
	} `json:"prompt"`
	Rows    []model.LossRow `json:"-"`
	RawRows []struct {
		Text  []int64 `json:"text"`
		Label int     `json:"label"`
	} `json:"rows"`
	Optimizer struct {
		LR          float64   `json:"lr"`
		Betas       []float64 `json:"betas"`
		Eps         float64   `json:"eps"`
		WeightDecay float64   `json:"weight_decay"`
		ClipNorm    float64   `json:"clip_norm"`
	} `json:"optimizer"`
	Cases map[string]struct {
		Method    string  `json:"method"`
		Init      string  `json:"init"`
		Grads     string  `json:"grads"`
		AfterStep string  `json:"after_step"`
		Loss      float64 `json:"loss"`
		GradNorm  float64 `json:"grad_norm"`
		LossAfter float64 `json:"loss_after"`
		Targets   int     `json:"targets"`
	} `json:"cases"`
}

func loadReferenceRun(t *testing.T) *referenceRun {
	t.Helper()
	dir := testenv.ReferenceOutput(t, "train", "train_reference.py", "glm_checkpoints.py", "peft_adapters.py")
	raw, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	r := &referenceRun{dir: dir}
	if err := json.Unmarshal(raw, r); err != nil {
		t.Fatal(err)
	}
	for _, row := range r.RawRows {
		r.Rows = append(r.Rows, model.LossRow{Text: row.Text, Label: row.Label})
	}
	return r
}

// methodFromInit builds the trainable form of a reference case's initial
// adapter, as emoctl train -init does.
func methodFromInit(t *testing.T, base *model.Model, dir string) method {
	t.Helper()
	rng := rand.New(rand.NewPCG(1, 1))
	var m method
	var err error
	if raw, e := os.ReadFile(filepath.Join(dir, "adapter_config.json")); e == nil {
		var kind struct {
			PeftType         string `json:"peft_type"`
			NumVirtualTokens int    `json:"num_virtual_tokens"`
		}
		if err := json.Unmarshal(raw, &kind); err != nil {
			t.Fatal(err)
		}
		if kind.PeftType == "PREFIX_TUNING" {
			m, err = newPrefix(base, PrefixConfig{PreSeqLen: kind.NumVirtualTokens}, true, rng)
		} else {
			var c LoRAConfig
			if err := json.Unmarshal(raw, &c); err != nil {
				t.Fatal(err)
			}
			m, err = newLoRA(base, c, rng)
		}
	} else {
		raw, e := os.ReadFile(filepath.Join(dir, "config.json"))
		if e != nil {
			t.Fatal(e)
		}
		var c PrefixConfig
		if err := json.Unmarshal(raw, &c); err != nil {
			t.Fatal(err)
		}
		m, err = newPrefix(base, c, false, rng)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { freeParams(m.params()) })
	file, err := adapterFile(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := loadInto(m.params(), file, tensor.CPU); err != nil {
		t.Fatal(err)
	}
	return m
}

// TestTrainingStepMatchesPEFT: from the same initial adapter and batch, the
// engine's loss, gradients, clipped AdamW update and the loss after it are
// torch + PEFT's, for LoRA (plain and rsLoRA), P-tuning v2 (with and
// without the projection) and PEFT prefix tuning.
func TestTrainingStepMatchesPEFT(t *testing.T) {
	ref := loadReferenceRun(t)
	base, err := model.Load(filepath.Join(ref.dir, ref.Base), model.Options{DType: tensor.Float32})
	if err != nil {
		t.Fatal(err)
	}
	defer base.Close()
	p := model.Prompt{Prefix: ref.Prompt.Prefix, Suffix: ref.Prompt.Suffix, Labels: ref.Prompt.Labels, Stop: ref.Prompt.Stop}
	for name, c := range ref.Cases {
		t.Run(name, func(t *testing.T) {
			m := methodFromInit(t, base, filepath.Join(ref.dir, c.Init))
			loss := func() (float64, model.LossStats) { return backward(t, base, m, p, ref.Rows) }
			got, st := loss()
			if st.Targets != c.Targets {
				t.Fatalf("%d target tokens, the reference %d", st.Targets, c.Targets)
			}
			if rel := math.Abs(got-c.Loss) / c.Loss; rel > 1e-5 {
				t.Fatalf("loss %.7f, PEFT %.7f (relative %.2g)", got, c.Loss, rel)
			}
			// Gradients, tensor by tensor, relative to the tensor's largest.
			want := readTensors(t, filepath.Join(ref.dir, c.Grads))
			s := tensor.NewScope()
			for _, prm := range m.params() {
				g := s.Float32s(s.Grad(prm.t))
				compareRel(t, "gradient of "+prm.name, g, want[prm.name], 1e-4)
			}
			s.Close()
			var leaves []*tensor.Tensor
			for _, prm := range m.params() {
				leaves = append(leaves, prm.t)
			}
			o := ref.Optimizer
			opt, err := NewAdamW(leaves, tensor.CPU, o.Betas[0], o.Betas[1], o.Eps, o.WeightDecay)
			if err != nil {
				t.Fatal(err)
			}
			defer opt.Free()
			norm, err := opt.ClipAndStep(o.LR, o.ClipNorm)
			if err != nil {
				t.Fatal(err)
			}
			if rel := math.Abs(norm-c.GradNorm) / c.GradNorm; rel > 1e-4 {
				t.Errorf("gradient norm %.6f, torch %.6f", norm, c.GradNorm)
			}
			after := readTensors(t, filepath.Join(ref.dir, c.AfterStep))
			vals, err := values(m.params())
			if err != nil {
				t.Fatal(err)
			}
			// Adam's first update is about ±lr per element whatever the
			// gradient's size, so an element whose gradient is near 0 turns
			// a rounding difference into a visible one: compare the
			// parameters to within 1% of the learning rate.
			for i, prm := range m.params() {
				compareAbs(t, "parameter after the step "+prm.name, vals[i], after[prm.name], 0.01*o.LR)
			}
			got2, _ := loss()
			if rel := math.Abs(got2-c.LossAfter) / c.LossAfter; rel > 1e-4 {
				t.Errorf("loss after the step %.6f, PEFT %.6f", got2, c.LossAfter)
			}
		})
	}
}

// backward computes the loss of rows with m's current values and adds its
// gradients to m's parameters.
func backward(t *testing.T, base *model.Model, m method, p model.Prompt, rows []model.LossRow) (float64, model.LossStats) {
	t.Helper()
	s := tensor.NewScope()
	defer s.Close()
	s.SetGrad(true)
	tu, err := m.tuning(s)
	if err != nil {
		t.Fatal(err)
	}
	l, st, err := base.PromptLoss(s, p, rows, tu, model.LossOptions{PadTo: 8})
	if err != nil {
		t.Fatal(err)
	}
	v := s.Scalar(l)
	s.Backward(l)
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	return v, st
}

func readTensors(t *testing.T, path string) map[string][]float32 {
	t.Helper()
	ckpt, err := model.OpenCheckpoint(filepath.Dir(path), trimExt(filepath.Base(path)))
	if err != nil {
		t.Fatal(err)
	}
	defer ckpt.Close()
	out := map[string][]float32{}
	for _, n := range ckpt.Names() {
		if out[n], err = ckpt.Float32s(n); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// compareRel fails when got and want differ anywhere by more than tol times
// want's largest magnitude.
func compareRel(t *testing.T, what string, got, want []float32, tol float64) {
	t.Helper()
	if len(got) != len(want) || len(want) == 0 {
		t.Fatalf("%s: %d values, the reference %d", what, len(got), len(want))
	}
	scale, diff := 0.0, 0.0
	for i := range want {
		scale = math.Max(scale, math.Abs(float64(want[i])))
		diff = math.Max(diff, math.Abs(float64(got[i])-float64(want[i])))
	}
	if scale == 0 {
		scale = 1
	}
	if diff/scale > tol {
		t.Errorf("%s: max |Δ| %.3g against a largest value of %.3g (relative %.2g > %g)", what, diff, scale, diff/scale, tol)
	}
}

// compareAbs fails when got and want differ anywhere by more than tol.
func compareAbs(t *testing.T, what string, got, want []float32, tol float64) {
	t.Helper()
	if len(got) != len(want) || len(want) == 0 {
		t.Fatalf("%s: %d values, the reference %d", what, len(got), len(want))
	}
	diff := 0.0
	for i := range want {
		diff = math.Max(diff, math.Abs(float64(got[i])-float64(want[i])))
	}
	if diff > tol {
		t.Errorf("%s: max |Δ| %.3g > %g", what, diff, tol)
	}
}

// TestTrainedAdaptersLoadInPEFT: adapters the engine trained and wrote load
// in PEFT (LoRA) and in THUDM's prefix encoder form (P-tuning v2), and give
// the engine's logits there.
func TestTrainedAdaptersLoadInPEFT(t *testing.T) {
	ref := loadReferenceRun(t)
	python := testenv.Python(t)
	baseDir := filepath.Join(ref.dir, ref.Base)
	base, err := model.Load(baseDir, model.Options{DType: tensor.Float32})
	if err != nil {
		t.Fatal(err)
	}
	defer base.Close()
	p := model.Prompt{Prefix: ref.Prompt.Prefix, Suffix: ref.Prompt.Suffix, Labels: ref.Prompt.Labels, Stop: ref.Prompt.Stop}
	rows := [][]int64{append(append([]int64{}, p.Prefix...), ref.Rows[0].Text...), ref.Rows[3].Text}
	for _, name := range []string{"lora-rslora", "ptuning-projection"} {
		t.Run(name, func(t *testing.T) {
			c := ref.Cases[name]
			m := methodFromInit(t, base, filepath.Join(ref.dir, c.Init))
			var leaves []*tensor.Tensor
			for _, prm := range m.params() {
				leaves = append(leaves, prm.t)
			}
			opt, err := NewAdamW(leaves, tensor.CPU, 0.9, 0.999, 1e-8, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer opt.Free()
			for step := 0; step < 3; step++ { // train the adapter away from its initial values
				backward(t, base, m, p, ref.Rows)
				if _, err := opt.ClipAndStep(1e-2, 1); err != nil {
					t.Fatal(err)
				}
			}
			dir := t.TempDir()
			if err := m.writeFiles(dir); err != nil {
				t.Fatal(err)
			}
			inputs := filepath.Join(dir, "inputs.json")
			raw, _ := json.Marshal(map[string]any{"rows": rows})
			if err := os.WriteFile(inputs, raw, 0o644); err != nil {
				t.Fatal(err)
			}
			out := filepath.Join(dir, "logits.json")
			script := filepath.Join(testenv.RepoRoot(t), "tools", "reference", "peft_logits.py")
			if msg, err := exec.Command(python, script, baseDir, dir, inputs, out).CombinedOutput(); err != nil {
				t.Fatalf("peft_logits.py: %v\n%s", err, msg)
			}
			var peft struct {
				Logits [][][]float32 `json:"logits"`
			}
			raw, err = os.ReadFile(out)
			if err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(raw, &peft); err != nil {
				t.Fatal(err)
			}
			for r, row := range rows {
				got := engineLogits(t, base, m, row)
				var want []float32
				for _, pos := range peft.Logits[r] {
					want = append(want, pos...)
				}
				compareAbs(t, fmt.Sprintf("row %d logits", r), got, want, 1e-4)
			}
		})
	}
}

// engineLogits runs one row through the engine with the method's current
// values in their served form (the update NewLoRA builds, or the prefix
// PrefixFromEmbeddings builds), positions from 0 after any prefix.
func engineLogits(t *testing.T, base *model.Model, m method, row []int64) []float32 {
	t.Helper()
	n := len(row)
	b := &model.Batch{Rows: 1, Len: n, Tokens: row, Pos: make([]int64, n)}
	P := 0
	switch mm := m.(type) {
	case *loraMethod:
		vals, err := values(mm.ps)
		if err != nil {
			t.Fatal(err)
		}
		var parts []model.LoRAPart
		for i, w := range mm.where {
			parts = append(parts, model.LoRAPart{Layer: w[0], Target: mm.cfg.Targets[w[1]], Rank: mm.cfg.Rank, A: vals[2*i], B: vals[2*i+1], Scale: mm.cfg.scale()})
		}
		lo, err := base.NewLoRA(parts)
		if err != nil {
			t.Fatal(err)
		}
		defer lo.Free()
		b.LoRA = []*model.LoRA{lo}
	case *prefixMethod:
		s := tensor.NewScope()
		vals := s.Float32s(mm.encode(s))
		s.Close()
		kv, err := base.PrefixFromEmbeddings(vals, mm.cfg.PreSeqLen)
		if err != nil {
			t.Fatal(err)
		}
		defer kv.Free()
		b.Past, P = kv, kv.Len
	}
	b.Visible = make([]bool, n*(P+n))
	for i := 0; i < n; i++ {
		b.Pos[i] = int64(i)
		for j := 0; j < P+n; j++ {
			b.Visible[i*(P+n)+j] = j < P || j-P <= i
		}
	}
	out, err := base.Logits(b)
	if err != nil {
		t.Fatal(err)
	}
	return out
}
