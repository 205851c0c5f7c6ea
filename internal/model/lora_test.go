package model

import (
	"encoding/binary"
	"fmt"
	"math"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/emoflow/emoflow/internal/randmodel"
	"github.com/emoflow/emoflow/internal/safetensors"
	"github.com/emoflow/emoflow/internal/tensor"
)

func randFloats(rng *rand.Rand, n int, std float64) []float32 {
	out := make([]float32, n)
	for i := range out {
		out[i] = float32(rng.NormFloat64() * std)
	}
	return out
}

// randomParts draws a LoRA update of the given targets on every layer.
func randomParts(t *testing.T, m *Model, seed uint64, rank int, targets ...string) []LoRAPart {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 9))
	var parts []LoRAPart
	for layer := 0; layer < m.cfg.Layers; layer++ {
		for _, target := range targets {
			mod, _, rows, err := m.TargetModule(target)
			if err != nil {
				t.Fatal(err)
			}
			_, in := m.moduleShape(mod)
			parts = append(parts, LoRAPart{Layer: layer, Target: target, Rank: rank,
				A: randFloats(rng, rank*in, 0.3), B: randFloats(rng, rows*rank, 0.3), Scale: 2.0 / float64(rank)})
		}
	}
	return parts
}

// mergeIntoCheckpoint writes a copy of the checkpoint in dir with W + scale·B·A
// added to every targeted weight, in the checkpoint's own layout: an
// independent way to apply an update, against which the engine's LoRA is
// checked.
func mergeIntoCheckpoint(t *testing.T, m *Model, dir string, parts []LoRAPart) string {
	t.Helper()
	set, err := safetensors.OpenSet(dir, "model")
	if err != nil {
		t.Fatal(err)
	}
	defer set.Close()
	weights := map[string][]float32{}
	var order []string
	shapes := map[string][]int64{}
	for _, n := range set.Names() {
		raw, _ := set.Bytes(n)
		info, _ := set.Info(n)
		weights[n] = floats(raw)
		shapes[n] = info.Shape
		order = append(order, n)
	}
	for _, p := range parts {
		name := checkpointWeightName(m.cfg, p.Layer, p.Target)
		w, ok := weights[name]
		if !ok {
			t.Fatalf("no weight %s", name)
		}
		in := int(shapes[name][1])
		rows := len(p.B) / p.Rank
		for r := 0; r < rows; r++ {
			for c := 0; c < in; c++ {
				sum := 0.0
				for k := 0; k < p.Rank; k++ {
					sum += float64(p.B[r*p.Rank+k]) * float64(p.A[k*in+c])
				}
				w[r*in+c] += float32(sum * p.Scale)
			}
		}
	}
	out := t.TempDir()
	var tensors []safetensors.Tensor
	for _, n := range order {
		data := make([]byte, 4*len(weights[n]))
		for i, v := range weights[n] {
			binary.LittleEndian.PutUint32(data[4*i:], math.Float32bits(v))
		}
		tensors = append(tensors, safetensors.Tensor{Name: n, DType: "F32", Shape: shapes[n], Data: data})
	}
	if err := safetensors.Write(filepath.Join(out, "model.safetensors"), tensors, nil); err != nil {
		t.Fatal(err)
	}
	copyFile(t, filepath.Join(dir, "config.json"), filepath.Join(out, "config.json"))
	return out
}

func checkpointWeightName(c Config, layer int, target string) string {
	switch {
	case c.Layout == LayoutHF && (target == "q_proj" || target == "k_proj" || target == "v_proj" || target == "o_proj"):
		return fmt.Sprintf("model.layers.%d.self_attn.%s.weight", layer, target)
	case c.Layout == LayoutHF:
		return fmt.Sprintf("model.layers.%d.mlp.%s.weight", layer, target)
	case c.Arch == ArchGLM1 && (target == "query_key_value" || target == "dense"):
		return fmt.Sprintf("transformer.layers.%d.attention.%s.weight", layer, target)
	case c.Arch == ArchGLM1:
		return fmt.Sprintf("transformer.layers.%d.mlp.%s.weight", layer, target)
	case target == "query_key_value" || target == "dense":
		return fmt.Sprintf("transformer.encoder.layers.%d.self_attention.%s.weight", layer, target)
	}
	return fmt.Sprintf("transformer.encoder.layers.%d.mlp.%s.weight", layer, target)
}

func scoresOf(t *testing.T, sc *Scorer, texts [][]int64) []Result {
	t.Helper()
	res, err := sc.Score(texts)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func assertSameScores(t *testing.T, what string, a, b []Result, tol float64) {
	t.Helper()
	for r := range a {
		for k := range a[r].LogProbs {
			if d := math.Abs(a[r].LogProbs[k] - b[r].LogProbs[k]); d > tol || math.IsNaN(d) {
				t.Fatalf("%s: text %d label %d: %.7f vs %.7f", what, r, k, a[r].LogProbs[k], b[r].LogProbs[k])
			}
		}
	}
}

// TestLoRAUnmergedAndMergedEqualTheMergedCheckpoint checks, for every
// layout, that the update applied per row and merged into the weights both
// score like a checkpoint whose weights were updated independently.
func TestLoRAUnmergedAndMergedEqualTheMergedCheckpoint(t *testing.T) {
	for _, tc := range []struct {
		name    string
		spec    randmodel.Spec
		targets []string
	}{
		{"chatglm2", tinySpec("chatglm2"), []string{"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}},
		{"chatglm-6b", tinySpec("chatglm-6b"), []string{"query_key_value", "dense_4h_to_h"}},
		{"hf-glm", func() randmodel.Spec { s := tinySpec("chatglm2"); s.HFNames = true; return s }(), []string{"q_proj", "v_proj", "o_proj", "gate_up_proj"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, dir := loadTiny(t, tc.spec, tensor.Float32)
			parts := randomParts(t, m, 1, 4, tc.targets...)
			lora, err := m.NewLoRA(parts)
			if err != nil {
				t.Fatal(err)
			}
			defer lora.Free()
			ref, err := Load(mergeIntoCheckpoint(t, m, dir, parts), Options{DType: tensor.Float32})
			if err != nil {
				t.Fatal(err)
			}
			defer ref.Close()
			merged, err := m.Merged(lora)
			if err != nil {
				t.Fatal(err)
			}
			defer merged.Close()

			p := testPrompt(m)
			want := scoreWith(t, ref, p, ScorerOptions{})
			unmerged := scoreWith(t, m, p, ScorerOptions{LoRA: lora})
			assertSameScores(t, "unmerged LoRA vs merged checkpoint", unmerged, want, 1e-4)
			assertSameScores(t, "merged LoRA vs merged checkpoint", scoreWith(t, merged, p, ScorerOptions{}), want, 1e-4)
			base := scoreWith(t, m, p, ScorerOptions{})
			if math.Abs(base[0].LogProbs[0]-want[0].LogProbs[0]) < 1e-3 {
				t.Fatal("the update changes nothing: the test would not catch a LoRA that is ignored")
			}
		})
	}
}

func scoreWith(t *testing.T, m *Model, p Prompt, opts ScorerOptions) []Result {
	t.Helper()
	sc, err := NewScorer(m, p, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	return scoresOf(t, sc, testTexts)
}

// TestMixedAdapterBatchEqualsEachAlone scores one batch whose rows use
// two LoRA updates, a P-tuning prefix and no adapter, and compares every
// row with a batch of its own scorer only.
func TestMixedAdapterBatchEqualsEachAlone(t *testing.T) {
	for _, arch := range []string{"chatglm2", "chatglm-6b"} {
		t.Run(arch, func(t *testing.T) {
			m, _ := loadTiny(t, tinySpec(arch), tensor.Float32)
			p := testPrompt(m)
			l1, err := m.NewLoRA(randomParts(t, m, 1, 4, "query_key_value", "dense_h_to_4h"))
			if err != nil {
				t.Fatal(err)
			}
			defer l1.Free()
			l2, err := m.NewLoRA(randomParts(t, m, 2, 8, "dense", "dense_4h_to_h"))
			if err != nil {
				t.Fatal(err)
			}
			defer l2.Free()
			rng := rand.New(rand.NewPCG(3, 3))
			c := m.cfg
			raw := randmodel.Encode(randFloats(rng, 2*c.Layers*c.KVGroups*5*c.HeadDim, 0.5), "F32")
			prefix, err := m.PrefixFromRaw(raw, tensor.Float32, 5)
			if err != nil {
				t.Fatal(err)
			}
			defer prefix.Free()
			var scorers []*Scorer
			for _, opts := range []ScorerOptions{{}, {LoRA: l1}, {LoRA: l2}, {AdapterPast: prefix}} {
				sc, err := NewScorer(m, p, opts)
				if err != nil {
					t.Fatal(err)
				}
				defer sc.Close()
				scorers = append(scorers, sc)
			}
			var rows []Row
			for i, text := range testTexts {
				for j := range scorers {
					rows = append(rows, Row{Scorer: scorers[(i+j)%len(scorers)], Text: text})
				}
			}
			mixed, err := ScoreRows(rows)
			if err != nil {
				t.Fatal(err)
			}
			for i, row := range rows {
				alone := scoresOf(t, row.Scorer, [][]int64{row.Text})
				assertSameScores(t, fmt.Sprintf("row %d", i), []Result{mixed[i]}, alone, 1e-5)
			}
			// The adapters really differ from each other.
			if math.Abs(mixed[0].LogProbs[0]-mixed[1].LogProbs[0]) < 1e-4 {
				t.Fatal("two adapters scored the same text identically")
			}
		})
	}
}

func TestLoRARejectsBadUpdates(t *testing.T) {
	m, _ := loadTiny(t, tinySpec("chatglm2"), tensor.Float32)
	good := randomParts(t, m, 1, 4, "dense")[0]
	bad := func(mut func(p *LoRAPart)) LoRAPart {
		p := good
		p.A = append([]float32{}, good.A...)
		mut(&p)
		return p
	}
	for name, p := range map[string]LoRAPart{
		"unknown module": bad(func(p *LoRAPart) { p.Target = "lm_head" }),
		"rank mismatch":  bad(func(p *LoRAPart) { p.Rank = 5 }),
		"layer":          bad(func(p *LoRAPart) { p.Layer = 99 }),
		"nan":            bad(func(p *LoRAPart) { p.A[3] = float32(math.NaN()) }),
		"inf":            bad(func(p *LoRAPart) { p.A[0] = float32(math.Inf(1)) }),
	} {
		if l, err := m.NewLoRA([]LoRAPart{p}); err == nil {
			l.Free()
			t.Errorf("%s: accepted", name)
		}
	}
}
