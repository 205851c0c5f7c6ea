package train

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/emoflow/emoflow/internal/model"
	"github.com/emoflow/emoflow/internal/randmodel"
	"github.com/emoflow/emoflow/internal/safetensors"
)

// A run's state lives in its work folder beside the output (".<name>.train"):
//
//	state.safetensors  the parameters under their adapter names, and the
//	                   AdamW moments as adamw.m.<name> / adamw.v.<name>
//	state.json         the recipe hash, the update count and the report so far
//	best/              the best adapter so far, complete
//
// The tensors are written first and the JSON last, each through a renamed
// temporary file, so a kill leaves the previous state or the new one.

type savedState struct {
	Recipe string `json:"recipe"`
	Step   int    `json:"step"`
	Report Report `json:"report"`
}

// checkpoint saves the parameters, the optimizer and the report.
func (t *trainer) checkpoint() error {
	if err := os.MkdirAll(t.work, 0o755); err != nil {
		return fmt.Errorf("train: checkpoint: %w", err)
	}
	ps := t.method.params()
	vals, err := values(ps)
	if err != nil {
		return fmt.Errorf("train: checkpoint: %w", err)
	}
	m, v, err := t.opt.Moments()
	if err != nil {
		return fmt.Errorf("train: checkpoint: %w", err)
	}
	var ts []safetensors.Tensor
	for i, p := range ps {
		shape := p.t.Shape()
		ts = append(ts,
			safetensors.Tensor{Name: p.name, DType: "F32", Shape: shape, Data: randmodel.Encode(vals[i], "F32")},
			safetensors.Tensor{Name: "adamw.m." + p.name, DType: "F32", Shape: shape, Data: randmodel.Encode(m[i], "F32")},
			safetensors.Tensor{Name: "adamw.v." + p.name, DType: "F32", Shape: shape, Data: randmodel.Encode(v[i], "F32")})
	}
	step := strconv.Itoa(t.opt.Step)
	if err := safetensors.Write(filepath.Join(t.work, "state.safetensors"), ts, map[string]string{"step": step, "recipe": t.report.Recipe}); err != nil {
		return fmt.Errorf("train: checkpoint: %w", err)
	}
	raw, err := json.MarshalIndent(savedState{Recipe: t.report.Recipe, Step: t.opt.Step, Report: t.report}, "", "  ")
	if err != nil {
		return err
	}
	tmp := filepath.Join(t.work, ".state.json.tmp")
	if err := os.WriteFile(tmp, raw, 0o644); err != nil {
		return fmt.Errorf("train: checkpoint: %w", err)
	}
	return os.Rename(tmp, filepath.Join(t.work, "state.json"))
}

// resume restores the state saved by a run of the same recipe; a state of
// another recipe is discarded.
func (t *trainer) resume() error {
	raw, err := os.ReadFile(filepath.Join(t.work, "state.json"))
	if errors.Is(err, os.ErrNotExist) {
		return os.RemoveAll(t.work) // a best/ without state belongs to no run to resume
	}
	if err != nil {
		return fmt.Errorf("train: resume: %w", err)
	}
	var st savedState
	if err := json.Unmarshal(raw, &st); err != nil || st.Recipe != t.report.Recipe {
		t.log.Warn("discarding the saved state of another run", "dir", t.work)
		return os.RemoveAll(t.work)
	}
	ckpt, err := model.OpenCheckpoint(t.work, "state")
	if err != nil {
		return fmt.Errorf("train: resume: %w", err)
	}
	defer ckpt.Close()
	ps := t.method.params()
	m := make([][]float32, len(ps))
	v := make([][]float32, len(ps))
	for i, p := range ps {
		if m[i], err = ckpt.Float32s("adamw.m." + p.name); err != nil {
			return fmt.Errorf("train: resume: %w", err)
		}
		if v[i], err = ckpt.Float32s("adamw.v." + p.name); err != nil {
			return fmt.Errorf("train: resume: %w", err)
		}
	}
	if err := loadInto(ps, filepath.Join(t.work, "state.safetensors"), t.base.Device()); err != nil {
		return fmt.Errorf("train: resume: %w", err)
	}
	if err := t.opt.SetMoments(m, v, st.Step); err != nil {
		return fmt.Errorf("train: resume: %w", err)
	}
	keep := t.report
	t.report = st.Report
	t.report.Config, t.report.Truncated = keep.Config, keep.Truncated
	t.report.resumedAt = st.Step
	t.report.Resumed = append(t.report.Resumed, st.Step)
	t.log.Info("resumed", "update", st.Step, "dir", t.work)
	return nil
}
