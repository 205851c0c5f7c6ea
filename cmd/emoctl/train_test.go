package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emoflow/emoflow/internal/adapters"
	"github.com/emoflow/emoflow/internal/model"
	"github.com/emoflow/emoflow/internal/randmodel"
	"github.com/emoflow/emoflow/internal/tensor"
	"github.com/emoflow/emoflow/internal/testenv"
	"github.com/emoflow/emoflow/internal/tokenizer"
)

// tinyBase writes a tiny random ChatGLM3-architecture model with a real
// SentencePiece tokenizer.
func tinyBase(t *testing.T) string {
	t.Helper()
	lines := []string{"what a lovely sunny day", "this is gloomy and sad", "I am furious about it", "joy sadness anger"}
	for i := 0; i < 5; i++ {
		lines = append(lines, lines...)
	}
	return testenv.TinyModel(t, lines, 400, randmodel.Spec{Arch: "chatglm2", Layers: 1, Hidden: 32, Heads: 2, Groups: 1, FFN: 48, Vocab: 448, Seed: 1, Std: 0.1, EOSIDs: []int{2}})
}

// TestTrainCommandOnUserFiles trains from the user formats (JSONL and CSV)
// with a template file, and the classifier's loader serves the result.
func TestTrainCommandOnUserFiles(t *testing.T) {
	base := tinyBase(t)
	dir := t.TempDir()
	tmpl := filepath.Join(dir, "tmpl.json")
	os.WriteFile(tmpl, []byte(`{"name":"toy","text":"Emotion: {text}","labels":["joy","sadness","anger"]}`), 0o644)
	var jsonl, csv strings.Builder
	csv.WriteString("id,text,label\n")
	for i, row := range [][2]string{{"what a lovely sunny day", "joy"}, {"this is gloomy and sad", "sadness"}, {"I am furious about it", "anger"}} {
		for k := 0; k < 4; k++ {
			fmt.Fprintf(&jsonl, `{"id": "%d-%d", "text": %q, "label": %q}`+"\n", i, k, row[0], row[1])
			fmt.Fprintf(&csv, "%d-%d,\"%s\",%s\n", i, k, row[0], row[1])
		}
	}
	files := map[string]string{"data.jsonl": jsonl.String(), "data.csv": csv.String()}
	for name, content := range files {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, name)
			os.WriteFile(path, []byte(content), 0o644)
			out := filepath.Join(t.TempDir(), "adapters", "toy")
			var stdout, stderr bytes.Buffer
			args := []string{"-model-dir", base, "-data", path, "-dev", path, "-template", tmpl, "-out", out, "-dtype", "float32",
				"-lora-r", "2", "-epochs", "2", "-batch-size", "4", "-lr", "1e-2"}
			if err := runTrain(context.Background(), args, streams{out: &stdout, err: &stderr, lookup: noEnv}); err != nil {
				t.Fatalf("%v\n%s", err, stderr.String())
			}
			if !strings.Contains(stdout.String(), "dev (12 examples") || !strings.Contains(stdout.String(), "training-report.html") {
				t.Errorf("summary: %q", stdout.String())
			}
			m, err := model.Load(base, model.Options{DType: tensor.Float32})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			tok, err := tokenizer.Load(base, tokenizer.Options{})
			if err != nil {
				t.Fatal(err)
			}
			a, err := adapters.Load(out, m, tok, adapters.Options{})
			if err != nil {
				t.Fatalf("the trained adapter does not load: %v", err)
			}
			defer a.Close()
			if a.Manifest.ID != "toy" || a.Manifest.Method != adapters.MethodLoRA || a.Manifest.Template.Name != "toy" {
				t.Errorf("manifest %+v", a.Manifest)
			}
		})
	}
}

func TestTrainCommandRefusesBadInput(t *testing.T) {
	base := tinyBase(t)
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte(content), 0o644)
		return p
	}
	cases := []struct {
		name string
		args []string
		want string
	}{
		{"missing flags", []string{"-data", "x"}, "-model-dir, -data and -out are required"},
		{"unknown data", []string{"-model-dir", base, "-data", "imdb", "-out", dir + "/a"}, "neither a data set"},
		{"bad JSONL", []string{"-model-dir", base, "-data", write("bad.jsonl", "{\"text\": 3}\n"), "-out", dir + "/a"}, "line 1"},
		{"CSV without label", []string{"-model-dir", base, "-data", write("bad.csv", "text\nhi\n"), "-out", dir + "/a"}, "want text and label columns"},
		{"empty file", []string{"-model-dir", base, "-data", write("empty.jsonl", ""), "-out", dir + "/a"}, "no usable labelled text"},
		{"foreign label", []string{"-model-dir", base, "-data", write("f.jsonl", `{"text":"hi","label":"boredom"}`+"\n"), "-out", dir + "/a"}, `label "boredom"`},
		{"bad schedule", []string{"-model-dir", base, "-data", write("ok.jsonl", `{"text":"hi","label":"joy"}`+"\n"), "-out", dir + "/a", "-schedule", "step"}, "-schedule"},
		{"bad model", []string{"-model-dir", dir, "-data", "meld", "-out", dir + "/a"}, "tokenizer"},
	}
	for _, c := range cases {
		var out, errOut bytes.Buffer
		err := runTrain(context.Background(), c.args, streams{out: &out, err: &errOut, lookup: noEnv})
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.name, err, c.want)
		}
	}
}
