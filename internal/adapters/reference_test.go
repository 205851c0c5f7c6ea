package adapters

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emoflow/emoflow/internal/model"
	"github.com/emoflow/emoflow/internal/prompt"
	"github.com/emoflow/emoflow/internal/tensor"
	"github.com/emoflow/emoflow/internal/testenv"
	"github.com/emoflow/emoflow/internal/tokenizer"
)

// The reference parity tests run tools/reference/peft_adapters.py, which
// writes the tiny reference model (transformers' and THUDM's names), LoRA
// and prefix-tuning adapters made and saved by PEFT, THUDM P-tuning v2
// checkpoints, and the logits transformers computes with each. Its output
// is cached in $EMOFLOW_CACHE/testdata/adapters, keyed by a hash of the
// scripts and of the pinned Python packages.

// refTolerance bounds |engine - reference| per logit in float32.
const refTolerance = 1e-4

// minEffect is the least an adapter must move some logit for its parity to
// mean anything: far above the tolerance.
const minEffect = 100 * refTolerance

type peftRefManifest struct {
	Torch        string `json:"torch"`
	Transformers string `json:"transformers"`
	PEFT         string `json:"peft"`
	Config       struct {
		Vocab int `json:"vocab"`
	} `json:"config"`
	Bases     map[string]string `json:"bases"`
	Cases     []refCase         `json:"cases"`
	BaseFiles map[string]string `json:"base_files"`
	Adapters  []refAdapter      `json:"adapters"`
}

// refCase is one input: rows of tokens with their attention mask (1 for
// real tokens) and rotary positions.
type refCase struct {
	Name      string    `json:"name"`
	Tokens    [][]int64 `json:"tokens"`
	Mask      [][]int   `json:"mask"`
	Positions [][]int64 `json:"positions"`
}

// refAdapter is one adapter folder and its reference logits per case.
type refAdapter struct {
	Name   string            `json:"name"`
	Method string            `json:"method"`
	Base   string            `json:"base"`
	Format string            `json:"format"`
	Files  map[string]string `json:"files"`
	Effect float64           `json:"effect"`
	// Positions overrides the case's positions (PEFT prefix tuning).
	Positions     map[string][][]int64 `json:"positions"`
	VirtualTokens int                  `json:"virtual_tokens"`
}

// peftReference returns the folder the tool wrote and its manifest, running
// the tool when the cache lacks its current output.
func peftReference(t *testing.T) (string, peftRefManifest) {
	t.Helper()
	// peft_adapters.py imports glm_checkpoints.py.
	dir := testenv.ReferenceOutput(t, "adapters", "peft_adapters.py", "glm_checkpoints.py")
	raw, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	var man peftRefManifest
	if err := json.Unmarshal(raw, &man); err != nil {
		t.Fatalf("%s: %v", filepath.Join(dir, "manifest.json"), err)
	}
	if len(man.Adapters) == 0 || len(man.Cases) == 0 {
		t.Fatalf("%s lists no adapters or no cases", dir)
	}
	return dir, man
}

// batch is the case as an engine batch after a past of pastLen positions
// that every real token sees. Padding sees only itself.
func (c refCase) batch(positions [][]int64, pastLen int) *model.Batch {
	rows, n := len(c.Tokens), len(c.Tokens[0])
	T := pastLen + n
	b := &model.Batch{Rows: rows, Len: n, Visible: make([]bool, rows*n*T)}
	for r := 0; r < rows; r++ {
		b.Tokens = append(b.Tokens, c.Tokens[r]...)
		b.Pos = append(b.Pos, positions[r]...)
		for i := 0; i < n; i++ {
			vis := b.Visible[(r*n+i)*T : (r*n+i+1)*T]
			if c.Mask[r][i] != 1 {
				vis[pastLen+i] = true
				continue
			}
			for j := 0; j < pastLen; j++ {
				vis[j] = true
			}
			for j := 0; j <= i; j++ {
				vis[pastLen+j] = c.Mask[r][j] == 1
			}
		}
	}
	return b
}

func readLogits(t *testing.T, path string, n int) []float32 {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) != 4*n {
		t.Fatalf("%s holds %d logits, want %d", path, len(raw)/4, n)
	}
	out := make([]float32, n)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(raw[4*i:]))
	}
	return out
}

// maxDiff is the largest |got - want| over the real tokens of rows (all
// rows when rows is nil), and where it is.
func maxDiff(c refCase, vocab int, rows []int, got, want []float32) (float64, string) {
	if rows == nil {
		for r := range c.Tokens {
			rows = append(rows, r)
		}
	}
	n := len(c.Tokens[0])
	worst, where := 0.0, ""
	for _, r := range rows {
		for i := 0; i < n; i++ {
			if c.Mask[r][i] != 1 {
				continue
			}
			for k := 0; k < vocab; k++ {
				at := (r*n+i)*vocab + k
				if d := math.Abs(float64(got[at] - want[at])); d > worst || math.IsNaN(d) {
					worst, where = d, fmt.Sprintf("row %d, position %d, token %d: %g, want %g", r, i, k, got[at], want[at])
				}
			}
		}
	}
	return worst, where
}

// byteTokenizer maps each byte of a text to one token of the tiny reference
// vocabulary: enough to compile a template for a model without a tokenizer.
type byteTokenizer struct{}

const refVocab = 300

func (byteTokenizer) Family() tokenizer.Family { return tokenizer.ChatGLM2 }
func (byteTokenizer) Encode(text string) []int {
	out := make([]int, len(text))
	for i := 0; i < len(text); i++ {
		out[i] = 3 + int(text[i])%(refVocab-5)
	}
	return out
}
func (byteTokenizer) Decode(ids []int) (string, error) { return fmt.Sprint(ids), nil }
func (byteTokenizer) VocabSize() int                   { return refVocab }
func (byteTokenizer) SpecialID(string) (int, bool)     { return 0, false }
func (byteTokenizer) BuildInputs(ids []int) []int {
	return append([]int{refVocab - 2, refVocab - 1}, ids...)
}
func (tk byteTokenizer) ChatPrompt(q string) []int { return tk.BuildInputs(tk.Encode(q)) }
func (byteTokenizer) StopIDs() []int               { return []int{2} }

var refTemplate = prompt.Template{Name: "parity", Text: "Feeling: {text}. One of {labels}?", Labels: []string{"joy", "anger", "calm"}, Wrap: prompt.WrapRaw}

// refBases loads the reference base models by manifest name.
func refBases(t *testing.T, dir string, man peftRefManifest) map[string]*model.Model {
	t.Helper()
	bases := map[string]*model.Model{}
	for name, sub := range man.Bases {
		m, err := model.Load(filepath.Join(dir, sub), model.Options{DType: tensor.Float32})
		if err != nil {
			t.Fatalf("base %s: %v", name, err)
		}
		t.Cleanup(m.Close)
		bases[name] = m
	}
	return bases
}

// loadRef copies the adapter's folder as the tool wrote it, adds the
// manifest the loader requires, lets edit change the copy, and loads it.
func loadRef(t *testing.T, dir string, a refAdapter, base *model.Model, merge bool, opts Options, edit func(dir string)) (*Adapter, error) {
	t.Helper()
	src := filepath.Join(dir, a.Name)
	dst := filepath.Join(t.TempDir(), a.Name)
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		raw, err := os.ReadFile(filepath.Join(src, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), raw, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	man := Manifest{ID: strings.ReplaceAll(a.Name, "_", "-"), Version: "1", Method: a.Method, Template: refTemplate, Merge: merge,
		BaseModel: BaseModel{Name: base.Config().Name, Fingerprint: base.Fingerprint()}}
	if err := WriteManifest(dst, man); err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(dst)
	}
	return Load(dst, base, byteTokenizer{}, opts)
}

// adapterLogits runs case c through a loaded adapter as the engine serves
// it: on the merged copy, with the per-row LoRA update, or after the prefix.
func adapterLogits(t *testing.T, a *Adapter, ra refAdapter, c refCase) []float32 {
	t.Helper()
	positions := c.Positions
	if p, ok := ra.Positions[c.Name]; ok {
		positions = p
	}
	pastLen := 0
	if a.prefix != nil {
		pastLen = a.prefix.Len
	}
	b := c.batch(positions, pastLen)
	b.Past = a.prefix
	if a.lora != nil {
		b.LoRA = make([]*model.LoRA, b.Rows)
		for r := range b.LoRA {
			b.LoRA[r] = a.lora
		}
	}
	got, err := a.Model.Logits(b)
	if err != nil {
		t.Fatalf("case %s: %v", c.Name, err)
	}
	return got
}

func TestPEFTReferenceLogits(t *testing.T) {
	dir, man := peftReference(t)
	t.Logf("reference: torch %s, transformers %s, peft %s", man.Torch, man.Transformers, man.PEFT)
	bases := refBases(t, dir, man)
	vocab := man.Config.Vocab
	for name, base := range bases {
		for _, c := range man.Cases {
			got, err := base.Logits(c.batch(c.Positions, 0))
			if err != nil {
				t.Fatal(err)
			}
			want := readLogits(t, filepath.Join(dir, man.BaseFiles[c.Name]), len(got))
			if d, where := maxDiff(c, vocab, nil, got, want); !(d <= refTolerance) {
				t.Fatalf("base %s, case %s: %g at %s", name, c.Name, d, where)
			}
		}
	}
	for _, ra := range man.Adapters {
		t.Run(ra.Name, func(t *testing.T) {
			if !(ra.Effect >= minEffect) {
				t.Fatalf("the adapter moves the logits by only %g: parity within %g would not show it working", ra.Effect, refTolerance)
			}
			want := map[string]string{"safetensors": "adapter_model.safetensors", "bin": "adapter_model.bin"}[ra.Format]
			if ra.Method == MethodPTuningV2 {
				want = map[string]string{"safetensors": "model.safetensors", "bin": "pytorch_model.bin"}[ra.Format]
			}
			if _, err := os.Stat(filepath.Join(dir, ra.Name, want)); err != nil {
				t.Fatalf("format %s: %v", ra.Format, err)
			}
			base := bases[ra.Base]
			modes := []bool{false}
			if ra.Method == MethodLoRA {
				modes = []bool{false, true}
			}
			for _, merge := range modes {
				a, err := loadRef(t, dir, ra, base, merge, Options{}, nil)
				if err != nil {
					t.Fatal(err)
				}
				if a.Merged() != merge {
					t.Fatalf("merge %v: loaded with Merged() = %v", merge, a.Merged())
				}
				mode := map[bool]string{false: "unmerged", true: "merged"}[merge]
				if ra.Method != MethodLoRA {
					mode = "prefix"
				}
				for _, c := range man.Cases {
					got := adapterLogits(t, a, ra, c)
					d, where := maxDiff(c, vocab, nil, got, readLogits(t, filepath.Join(dir, ra.Files[c.Name]), len(got)))
					if !(d <= refTolerance) {
						t.Errorf("%s, case %s: logits differ from the reference by %g (> %g) at %s", mode, c.Name, d, refTolerance, where)
					}
					t.Logf("%s %s, case %s: max |engine - reference| = %.2g (adapter effect %.3g)", ra.Name, mode, c.Name, d, ra.Effect)
				}
				a.Close()
			}
		})
	}
}

// TestPEFTReferenceNoticesWrongScales checks that the parity above depends
// on the config: the same weights read with rsLoRA flipped or an alpha
// pattern dropped give logits far from the reference, and without the
// rank pattern the adapter does not load.
func TestPEFTReferenceNoticesWrongScales(t *testing.T) {
	dir, man := peftReference(t)
	bases := refBases(t, dir, man)
	edits := map[string]func(cfg map[string]any){
		"use_rslora flipped":    func(cfg map[string]any) { cfg["use_rslora"] = cfg["use_rslora"] != true },
		"alpha_pattern dropped": func(cfg map[string]any) { delete(cfg, "alpha_pattern") },
		"rank_pattern dropped":  func(cfg map[string]any) { delete(cfg, "rank_pattern") },
	}
	tried := map[string]int{}
	for _, ra := range man.Adapters {
		if ra.Method != MethodLoRA {
			continue
		}
		raw, err := os.ReadFile(filepath.Join(dir, ra.Name, "adapter_config.json"))
		if err != nil {
			t.Fatal(err)
		}
		var cfg map[string]any
		if err := json.Unmarshal(raw, &cfg); err != nil {
			t.Fatal(err)
		}
		for what, edit := range edits {
			switch {
			case what == "use_rslora flipped" && cfg["use_rslora"] != true,
				what == "alpha_pattern dropped" && len(asMap(cfg["alpha_pattern"])) == 0,
				what == "rank_pattern dropped" && len(asMap(cfg["rank_pattern"])) == 0:
				continue
			}
			tried[what]++
			t.Run(ra.Name+"/"+what, func(t *testing.T) {
				a, err := loadRef(t, dir, ra, bases[ra.Base], false, Options{}, func(d string) {
					var c map[string]any
					_ = json.Unmarshal(raw, &c)
					edit(c)
					out, _ := json.Marshal(c)
					if err := os.WriteFile(filepath.Join(d, "adapter_config.json"), out, 0o644); err != nil {
						t.Fatal(err)
					}
				})
				if what == "rank_pattern dropped" {
					if err == nil {
						a.Close()
						t.Fatal("loaded with ranks that do not fit the weights")
					}
					if !strings.Contains(err.Error(), "rank mismatch") {
						t.Fatalf("error does not say the ranks do not fit: %v", err)
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				defer a.Close()
				worst := 0.0
				for _, c := range man.Cases {
					got := adapterLogits(t, a, ra, c)
					d, _ := maxDiff(c, man.Config.Vocab, nil, got, readLogits(t, filepath.Join(dir, ra.Files[c.Name]), len(got)))
					worst = max(worst, d)
				}
				if worst < 100*refTolerance {
					t.Fatalf("with %s the logits stay within %g of the reference: the parity test cannot see this setting", what, worst)
				}
				t.Logf("with %s: max |engine - reference| = %.3g", what, worst)
			})
		}
	}
	for what := range edits {
		if tried[what] == 0 {
			t.Errorf("no reference adapter exercises %s", strings.Fields(what)[0])
		}
	}
}

func asMap(v any) map[string]any {
	m, _ := v.(map[string]any)
	return m
}

// TestPEFTReferenceMixedBatch runs rows of different adapters (and of
// none) in one forward pass: each row's logits are its adapter's reference,
// and scoring mixed rows gives each row what its adapter alone gives.
func TestPEFTReferenceMixedBatch(t *testing.T) {
	dir, man := peftReference(t)
	bases := refBases(t, dir, man)
	vocab := man.Config.Vocab
	loaded := map[string][]*Adapter{}
	refs := map[string][]refAdapter{}
	for _, ra := range man.Adapters {
		a, err := loadRef(t, dir, ra, bases[ra.Base], false, Options{}, nil)
		if err != nil {
			t.Fatalf("%s: %v", ra.Name, err)
		}
		t.Cleanup(a.Close)
		loaded[ra.Base] = append(loaded[ra.Base], a)
		refs[ra.Base] = append(refs[ra.Base], ra)
	}

	// Logits: the unmerged LoRA adapters of a base, one per row, a row of
	// none between them.
	for baseName, base := range bases {
		var lora []int
		for i, a := range loaded[baseName] {
			if a.lora != nil {
				lora = append(lora, i)
			}
		}
		if len(lora) < 2 {
			t.Fatalf("base %s has %d LoRA adapters, want at least 2 to mix", baseName, len(lora))
		}
		for _, c := range man.Cases {
			if len(c.Tokens) < 3 {
				continue
			}
			b := c.batch(c.Positions, 0)
			b.LoRA = make([]*model.LoRA, b.Rows)
			files := make([]string, b.Rows)
			for r := range b.LoRA {
				switch r % 3 {
				case 0:
					i := lora[(r/3)%len(lora)]
					b.LoRA[r], files[r] = loaded[baseName][i].lora, refs[baseName][i].Files[c.Name]
				case 1:
					files[r] = man.BaseFiles[c.Name]
				default:
					i := lora[(r/3+1)%len(lora)]
					b.LoRA[r], files[r] = loaded[baseName][i].lora, refs[baseName][i].Files[c.Name]
				}
			}
			got, err := base.Logits(b)
			if err != nil {
				t.Fatal(err)
			}
			for r := range files {
				want := readLogits(t, filepath.Join(dir, files[r]), len(got))
				if d, where := maxDiff(c, vocab, []int{r}, got, want); !(d <= refTolerance) {
					t.Errorf("base %s, case %s, row %d (%s): mixed-batch logits differ from the reference by %g at %s", baseName, c.Name, r, files[r], d, where)
				}
			}
		}
	}

	// Scores: every adapter of a base and the bare model in one batch.
	texts := [][]int64{{30, 31, 32, 33}, {40, 41}, {50, 51, 52, 53, 54, 55, 56}}
	for baseName, base := range bases {
		bare, err := Bare(base, byteTokenizer{}, refTemplate, Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer bare.Close()
		scorers := []*model.Scorer{bare.Scorer}
		for _, a := range loaded[baseName] {
			scorers = append(scorers, a.Scorer)
		}
		var rows []model.Row
		var alone [][]model.Result
		for _, sc := range scorers {
			res, err := sc.Score(texts)
			if err != nil {
				t.Fatal(err)
			}
			alone = append(alone, res)
		}
		for i := range texts {
			for _, sc := range scorers {
				rows = append(rows, model.Row{Scorer: sc, Text: texts[i]})
			}
		}
		mixed, err := model.ScoreRows(rows)
		if err != nil {
			t.Fatal(err)
		}
		for k := range rows {
			i, s := k/len(scorers), k%len(scorers)
			for l := range mixed[k].LogProbs {
				got, want := mixed[k].LogProbs[l], alone[s][i].LogProbs[l]
				if d := math.Abs(got - want); !(d <= refTolerance) {
					t.Errorf("base %s, scorer %d, text %d, label %d: %.6f mixed, %.6f alone", baseName, s, i, l, got, want)
				}
			}
		}
	}
}

// TestPEFTPrefixScoresNumberTokensAsPEFT checks that a scorer numbers the
// tokens after a prefix as the adapter's tool did: from the number of
// virtual tokens for PEFT prefix tuning on transformers' glm (PEFT drops
// position_ids), from 0 for THUDM's P-tuning v2.
func TestPEFTPrefixScoresNumberTokensAsPEFT(t *testing.T) {
	dir, man := peftReference(t)
	bases := refBases(t, dir, man)
	p, err := refTemplate.Compile(byteTokenizer{})
	if err != nil {
		t.Fatal(err)
	}
	text := []int64{30, 31, 32, 33, 34}
	checked := map[string]bool{}
	for _, ra := range man.Adapters {
		if ra.Method == MethodLoRA {
			continue
		}
		t.Run(ra.Name, func(t *testing.T) {
			a, err := loadRef(t, dir, ra, bases[ra.Base], false, Options{}, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			res, err := a.Scorer.Score([][]int64{text})
			if err != nil {
				t.Fatal(err)
			}
			first := 0
			if ra.Method == MethodPrefixTuning {
				first = ra.VirtualTokens
			}
			var other float64
			for l, label := range p.Labels {
				seq := append(append(append(append([]int64{}, p.Prefix...), text...), p.Suffix...), label...)
				want := sequenceLogProb(t, a, seq, first, len(label), p.Stop)
				if d := math.Abs(res[0].LogProbs[l] - want); !(d <= refTolerance) {
					t.Errorf("label %d: scorer %.6f, the model's sequence log-probability with positions from %d %.6f", l, res[0].LogProbs[l], first, want)
				}
				other = max(other, math.Abs(res[0].LogProbs[l]-sequenceLogProb(t, a, seq, first+5, len(label), p.Stop)))
			}
			if other < 100*refTolerance {
				t.Fatalf("shifting the positions changes the scores by only %g: the check cannot tell", other)
			}
			checked[ra.Method] = true
		})
	}
	if !checked[MethodPrefixTuning] || !checked[MethodPTuningV2] {
		t.Fatalf("checked %v, want both PEFT prefix tuning and THUDM P-tuning v2", checked)
	}
}

// sequenceLogProb is log P(the last n tokens of seq, then stop) after the
// adapter's prefix, with seq's tokens at positions first, first+1, ...
func sequenceLogProb(t *testing.T, a *Adapter, seq []int64, first, n int, stop int64) float64 {
	t.Helper()
	L, P := len(seq), a.prefix.Len
	b := &model.Batch{Rows: 1, Len: L, Tokens: seq, Pos: make([]int64, L), Visible: make([]bool, L*(P+L)), Past: a.prefix}
	for i := 0; i < L; i++ {
		b.Pos[i] = int64(first + i)
		for j := 0; j < P+i+1; j++ {
			b.Visible[i*(P+L)+j] = true
		}
	}
	logits, err := a.Model.Logits(b)
	if err != nil {
		t.Fatal(err)
	}
	V := len(logits) / L
	logSoftmax := func(i int, tok int64) float64 {
		row := logits[i*V : (i+1)*V]
		peak := math.Inf(-1)
		for _, x := range row {
			peak = math.Max(peak, float64(x))
		}
		sum := 0.0
		for _, x := range row {
			sum += math.Exp(float64(x) - peak)
		}
		return float64(row[tok]) - peak - math.Log(sum)
	}
	total := 0.0
	for i := L - n; i < L; i++ {
		total += logSoftmax(i-1, seq[i])
	}
	if stop >= 0 {
		total += logSoftmax(L-1, stop)
	}
	return total
}
