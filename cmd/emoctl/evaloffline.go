package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/emoflow/emoflow/internal/adapters"
	"github.com/emoflow/emoflow/internal/datasets"
	"github.com/emoflow/emoflow/internal/evaluate"
	"github.com/emoflow/emoflow/internal/replay"
	"github.com/emoflow/emoflow/internal/train"
	"github.com/emoflow/emoflow/labelmaps"
)

// offlineEval is eval without the pipeline: a data set split, turned into
// chat messages exactly as load-dataset publishes them, scored in-process
// by an adapter with the contexts ingest would give them (see
// train.EvaluateAdapter). Its per-message output (-labels-out) is what a
// streamed run of the same topic must reproduce.
type offlineEval struct {
	set, split, dataDir, modelDir, tokDir, adapterDir, labelsOut, dtype string
	limit                                                               int
}

func (o *offlineEval) run(s streams, m *labelmaps.Map, format string) error {
	if o.modelDir == "" || o.adapterDir == "" {
		return errors.New("offline evaluation (-set) needs -model-dir and -adapter-dir")
	}
	if o.limit < 0 {
		return errors.New("-limit must not be negative")
	}
	examples, err := datasets.Read(o.dataDir, datasets.Set(o.set), o.split)
	if err != nil {
		return err
	}
	msgs, _, err := replay.DatasetMessages(examples, replay.DatasetOptions{Set: datasets.Set(o.set), Split: o.split,
		Map: m, Tenant: "datasets", SentAt: time.Unix(0, 0), Limit: o.limit})
	if err != nil {
		return err
	}
	if len(msgs) == 0 {
		return fmt.Errorf("%s/%s holds no messages", o.set, o.split)
	}
	base, tok, err := openBase(o.modelDir, o.tokDir, "cpu", o.dtype)
	if err != nil {
		return err
	}
	defer base.Close()
	a, err := adapters.Load(o.adapterDir, base, tok, adapters.Options{})
	if err != nil {
		return err
	}
	defer a.Close()
	scores, preds, err := train.EvaluateAdapter(a, train.FromMessages(msgs))
	if err != nil {
		return err
	}
	if o.labelsOut != "" {
		if err := writeJSONLines(o.labelsOut, preds); err != nil {
			return fmt.Errorf("-labels-out: %w", err)
		}
	}
	withContext := 0
	for _, p := range preds {
		if p.ContextMessages > 0 {
			withContext++
		}
	}
	if format == "json" {
		return evaluate.WriteJSON(s.out, struct {
			Set             string          `json:"set"`
			Split           string          `json:"split"`
			Adapter         string          `json:"adapter"`
			ContextMessages int             `json:"context_messages"`
			WithContext     int             `json:"messages_with_context"`
			Scores          evaluate.Scores `json:"scores"`
		}{o.set, o.split, a.Manifest.Ref(), a.Input.ContextMessages(), withContext, scores})
	}
	fmt.Fprintf(s.out, "%s on %s/%s, offline: %d messages (%d with context, k=%d)\naccuracy %.4f  macro-F1 %.4f  weighted-F1 %.4f\n",
		a.Manifest.Ref(), o.set, o.split, scores.Messages, withContext, a.Input.ContextMessages(), scores.Accuracy, scores.MacroF1, scores.WeightedF1)
	return nil
}

func writeJSONLines[T any](path string, rows []T) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(f)
	for _, r := range rows {
		if err := enc.Encode(r); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}
