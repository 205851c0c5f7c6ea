package classifier

import (
	"context"
	"fmt"
	"unicode/utf8"

	"github.com/emoflow/emoflow/internal/adapters"
	"github.com/emoflow/emoflow/internal/batcher"
	"github.com/emoflow/emoflow/internal/classifyapi"
	"github.com/emoflow/emoflow/internal/model"
)

// job is one text on its way through the batcher, with a hold on the
// adapter that scores it.
type job struct {
	adapter *adapters.Handle
	tokens  []int64
}

// sharedGroup is the batch group of every adapter that runs on the base
// weights (the bare model, P-tuning and prefix tuning, unmerged LoRA): their
// rows can share a forward pass. A merged LoRA adapter has its own weights
// and its own group.
const sharedGroup = "shared"

func groupOf(a *adapters.Adapter) string {
	if a.Merged() {
		return "merged:" + a.Manifest.Ref()
	}
	return sharedGroup
}

// engine owns the model and the adapters (each with its own prompt input).
type engine struct {
	model *model.Model
	reg   *adapters.Registry
}

// run computes one batch: rows of one group, possibly of several adapters.
func (e *engine) run(_ context.Context, b *batcher.Batch[job]) ([]model.Result, error) {
	rows := make([]model.Row, len(b.Payloads))
	for i, j := range b.Payloads {
		if g := groupOf(j.adapter.Adapter); g != b.Group {
			return nil, fmt.Errorf("internal error: a row of group %s in a batch of group %s", g, b.Group)
		}
		rows[i] = model.Row{Scorer: j.adapter.Scorer, Text: j.tokens}
	}
	return model.ScoreRows(rows)
}

// warmUp runs one batch so that the first real request does not pay for
// libtorch's lazy initialisation.
func (e *engine) warmUp() error {
	h, err := e.reg.Acquire("")
	if err != nil {
		return err
	}
	defer h.Release()
	ids, _, _ := h.Adapter.Input.Tokens(nil, "warm up")
	_, err = h.Scorer.Score([][]int64{ids})
	return err
}

// validText reports why a text cannot be classified, or "".
func validText(s string, maxBytes int) (code, msg string) {
	switch {
	case s == "":
		return classifyapi.CodeBadRequest, "empty text"
	case !utf8.ValidString(s):
		return classifyapi.CodeBadRequest, "text is not valid UTF-8"
	case len(s) > maxBytes:
		return classifyapi.CodeTooLarge, fmt.Sprintf("text of %d bytes exceeds the limit of %d", len(s), maxBytes)
	}
	return "", ""
}
