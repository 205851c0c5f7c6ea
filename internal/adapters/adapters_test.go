package adapters

import (
	"errors"
	"log/slog"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/emoflow/emoflow/internal/model"
	"github.com/emoflow/emoflow/internal/prompt"
	"github.com/emoflow/emoflow/internal/randmodel"
	"github.com/emoflow/emoflow/internal/tensor"
	"github.com/emoflow/emoflow/internal/tokenizer"
)

// fixture is a tiny random model with a trained tokenizer.
type fixture struct {
	dir  string
	base *model.Model
	tok  tokenizer.Tokenizer
}

var sample = []string{
	"I am so happy with the new plan, thank you!", "This is the worst service ever.", "Where is my parcel?",
	"I am scared something is wrong with my account.", "Wow, I did not expect a refund.", "That smells disgusting.",
	"My cat died and I feel empty.", "Classify the emotion of this chat message as one of: anger, disgust, fear, joy, neutral, sadness, surprise.",
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	dir := t.TempDir()
	var lines []string
	for i := 0; i < 30; i++ {
		lines = append(lines, sample...)
	}
	if err := randmodel.TrainTokenizer(t.Context(), dir, lines, 400); err != nil {
		t.Skipf("no spm_train: %v", err)
	}
	spec := randmodel.Spec{Arch: "chatglm2", Layers: 2, Hidden: 64, Heads: 4, Groups: 2, FFN: 96, Vocab: 512, Seed: 5, Std: 0.3, EOSIDs: []int{2}}
	if err := randmodel.Write(dir, spec); err != nil {
		t.Fatal(err)
	}
	base, err := model.Load(dir, model.Options{DType: tensor.Float32})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(base.Close)
	tok, err := tokenizer.Load(dir, tokenizer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{dir: dir, base: base, tok: tok}
}

func (f *fixture) manifest(id, version, method string) Manifest {
	return Manifest{ID: id, Version: version, Method: method, Template: prompt.Default(), Language: "en",
		BaseModel: BaseModel{Name: f.base.Config().Name, Fingerprint: f.base.Fingerprint()}}
}

func randParts(t *testing.T, base *model.Model, seed uint64, rank int, targets ...string) []model.LoRAPart {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 1))
	var parts []model.LoRAPart
	for layer := 0; layer < base.Config().Layers; layer++ {
		for _, target := range targets {
			_, _, rows, err := base.TargetModule(target)
			if err != nil {
				t.Fatal(err)
			}
			in := base.Config().Hidden
			if target == "dense_4h_to_h" {
				in = base.Config().FFN
			}
			p := model.LoRAPart{Layer: layer, Target: target, Rank: rank, A: make([]float32, rank*in), B: make([]float32, rows*rank)}
			for i := range p.A {
				p.A[i] = float32(rng.NormFloat64() * 0.4)
			}
			for i := range p.B {
				p.B[i] = float32(rng.NormFloat64() * 0.4)
			}
			parts = append(parts, p)
		}
	}
	return parts
}

func (f *fixture) writeLoRA(t *testing.T, dir string, man Manifest, parts []model.LoRAPart, cfg PEFTLoRAConfig) {
	t.Helper()
	if err := WritePEFTLoRA(dir, f.base, parts, cfg); err != nil {
		t.Fatal(err)
	}
	if err := WriteManifest(dir, man); err != nil {
		t.Fatal(err)
	}
}

var texts = [][]int64{{30, 31, 32}, {40, 41}, {50, 51, 52, 53, 54}}

func score(t *testing.T, sc *model.Scorer) []model.Result {
	t.Helper()
	res, err := sc.Score(texts)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func sameScores(t *testing.T, what string, a, b []model.Result) {
	t.Helper()
	for r := range a {
		for k := range a[r].LogProbs {
			// float32 sums of another order: absolute and relative slack.
			if d := math.Abs(a[r].LogProbs[k] - b[r].LogProbs[k]); d > 1e-5+1e-6*math.Abs(b[r].LogProbs[k]) || math.IsNaN(d) {
				t.Fatalf("%s: text %d label %d: %.7f vs %.7f", what, r, k, a[r].LogProbs[k], b[r].LogProbs[k])
			}
		}
	}
}

// expectScorer scores with the engine's own LoRA built from parts and the
// scales PEFT's config implies.
func (f *fixture) expectScorer(t *testing.T, parts []model.LoRAPart, scale func(p model.LoRAPart) float64) *model.Scorer {
	t.Helper()
	scaled := make([]model.LoRAPart, len(parts))
	for i, p := range parts {
		p.Scale = scale(p)
		scaled[i] = p
	}
	l, err := f.base.NewLoRA(scaled)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(l.Free)
	p, err := prompt.Default().Compile(f.tok)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := model.NewScorer(f.base, p, model.ScorerOptions{LoRA: l})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sc.Close)
	return sc
}

func TestPEFTLoRAScalesRSLoRAAndPatterns(t *testing.T) {
	f := newFixture(t)
	qkv := randParts(t, f.base, 1, 4, "query_key_value")
	dense := randParts(t, f.base, 2, 8, "dense")
	parts := append(qkv, dense...)
	for _, tc := range []struct {
		name  string
		cfg   PEFTLoRAConfig
		scale func(p model.LoRAPart) float64
	}{
		{"alpha over r with a rank pattern", PEFTLoRAConfig{R: 4, LoraAlpha: 16, TargetModules: []string{"query_key_value", "dense"},
			RankPattern: map[string]int{"dense": 8}, AlphaPattern: map[string]float64{"self_attention.dense": 4}},
			func(p model.LoRAPart) float64 {
				if p.Target == "dense" {
					return 4.0 / 8
				}
				return 16.0 / 4
			}},
		{"rslora", PEFTLoRAConfig{R: 4, LoraAlpha: 16, TargetModules: []string{"query_key_value", "dense"}, UseRSLoRA: true,
			RankPattern: map[string]int{"dense": 8}},
			func(p model.LoRAPart) float64 { return 16 / math.Sqrt(float64(p.Rank)) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "a")
			f.writeLoRA(t, dir, f.manifest("a", "1", MethodLoRA), parts, tc.cfg)
			a, err := Load(dir, f.base, f.tok, Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer a.Close()
			sameScores(t, "loaded PEFT adapter vs expected scales", score(t, a.Scorer), score(t, f.expectScorer(t, parts, tc.scale)))
		})
	}
}

func TestMergedAndUnmergedAdaptersAgree(t *testing.T) {
	f := newFixture(t)
	parts := randParts(t, f.base, 3, 4, "query_key_value", "dense_h_to_4h")
	cfg := PEFTLoRAConfig{R: 4, LoraAlpha: 8, TargetModules: []string{"query_key_value", "dense_h_to_4h"}}
	dir := filepath.Join(t.TempDir(), "m")
	man := f.manifest("m", "1", MethodLoRA)
	man.Merge = true
	f.writeLoRA(t, dir, man, parts, cfg)
	merged, err := Load(dir, f.base, f.tok, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer merged.Close()
	unmerged, err := Load(dir, f.base, f.tok, Options{ForceUnmerged: true})
	if err != nil {
		t.Fatal(err)
	}
	defer unmerged.Close()
	if !merged.Merged() || unmerged.Merged() {
		t.Fatalf("merged=%v unmerged=%v", merged.Merged(), unmerged.Merged())
	}
	sameScores(t, "merged vs unmerged", score(t, merged.Scorer), score(t, unmerged.Scorer))
}

func TestTHUDMAndPEFTPrefixesAgree(t *testing.T) {
	f := newFixture(t)
	c := f.base.Config()
	const P = 6
	rng := rand.New(rand.NewPCG(7, 7))
	emb := make([]float32, P*2*c.Layers*c.KVGroups*c.HeadDim)
	for i := range emb {
		emb[i] = float32(rng.NormFloat64() * 0.5)
	}
	root := t.TempDir()
	thudm, peft := filepath.Join(root, "thudm"), filepath.Join(root, "peft")
	if err := WriteTHUDMPrefix(thudm, f.base, emb, P); err != nil {
		t.Fatal(err)
	}
	if err := WriteManifest(thudm, f.manifest("pt", "1", MethodPTuningV2)); err != nil {
		t.Fatal(err)
	}
	if err := WritePEFTPrefix(peft, f.base, emb, P); err != nil {
		t.Fatal(err)
	}
	if err := WriteManifest(peft, f.manifest("pp", "1", MethodPrefixTuning)); err != nil {
		t.Fatal(err)
	}
	a, err := Load(thudm, f.base, f.tok, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := Load(peft, f.base, f.tok, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	sameScores(t, "THUDM P-tuning v2 vs PEFT prefix tuning", score(t, a.Scorer), score(t, b.Scorer))
	bare, err := Bare(f.base, f.tok, prompt.Default(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer bare.Close()
	if math.Abs(score(t, bare.Scorer)[0].LogProbs[0]-score(t, a.Scorer)[0].LogProbs[0]) < 1e-4 {
		t.Fatal("the prefix changes nothing")
	}
}

func TestBadAdaptersGetClearErrors(t *testing.T) {
	f := newFixture(t)
	parts := randParts(t, f.base, 1, 4, "dense")
	cfg := PEFTLoRAConfig{R: 4, LoraAlpha: 8, TargetModules: []string{"dense"}}
	for _, tc := range []struct {
		name string
		mut  func(dir string, man *Manifest)
		want string
	}{
		{"missing adapter_config.json", func(dir string, _ *Manifest) { os.Remove(filepath.Join(dir, "adapter_config.json")) }, "adapter_config.json"},
		{"malformed adapter_config.json", func(dir string, _ *Manifest) {
			os.WriteFile(filepath.Join(dir, "adapter_config.json"), []byte("{r: 4"), 0o644)
		}, "not valid JSON"},
		{"rank mismatch", func(dir string, _ *Manifest) {
			WritePEFTLoRA(dir, f.base, parts, PEFTLoRAConfig{R: 8, LoraAlpha: 8, TargetModules: []string{"dense"}})
		}, "rank mismatch"},
		{"unknown target module", func(dir string, _ *Manifest) {
			WritePEFTLoRA(dir, f.base, parts, PEFTLoRAConfig{R: 4, LoraAlpha: 8, TargetModules: []string{"query_key_value"}})
		}, "not in target_modules"},
		{"NaN weights", func(dir string, _ *Manifest) {
			bad := append([]model.LoRAPart{}, parts...)
			bad[0].A = append([]float32{float32(math.NaN())}, parts[0].A[1:]...)
			WritePEFTLoRA(dir, f.base, bad, cfg)
		}, "NaN"},
		{"another base model", func(_ string, man *Manifest) { man.BaseModel.Fingerprint = "0123456789abcdef" }, "another base model"},
		{"empty label set", func(_ string, man *Manifest) { man.Template.Labels = nil }, "empty label set"},
		{"duplicate labels", func(_ string, man *Manifest) { man.Template.Labels = []string{"joy", "joy"} }, "duplicate"},
		{"unknown method", func(_ string, man *Manifest) { man.Method = "adalora" }, "method"},
		{"truncated weights", func(dir string, _ *Manifest) {
			p := filepath.Join(dir, "adapter_model.safetensors")
			raw, _ := os.ReadFile(p)
			os.WriteFile(p, raw[:len(raw)/2], 0o644)
		}, "truncated"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "bad")
			man := f.manifest("bad", "1", MethodLoRA)
			f.writeLoRA(t, dir, man, parts, cfg)
			tc.mut(dir, &man)
			if err := WriteManifest(dir, man); err != nil {
				t.Fatal(err)
			}
			a, err := Load(dir, f.base, f.tok, Options{})
			if err == nil {
				a.Close()
				t.Fatal("loaded")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q does not mention %q", err, tc.want)
			}
		})
	}
}

func newRegistry(t *testing.T, f *fixture) *Registry {
	t.Helper()
	bare, err := Bare(f.base, f.tok, prompt.Default(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	r := NewRegistry(f.base, f.tok, bare, Options{}, slog.New(slog.DiscardHandler))
	t.Cleanup(r.Close)
	return r
}

func TestRegistryResolvesDefaultsVersionsAndKeepsHeldVersions(t *testing.T) {
	f := newFixture(t)
	r := newRegistry(t, f)
	root := t.TempDir()
	cfg := PEFTLoRAConfig{R: 4, LoraAlpha: 8, TargetModules: []string{"dense"}}
	for _, v := range []string{"9", "10"} {
		f.writeLoRA(t, filepath.Join(root, "x"+v), f.manifest("x", v, MethodLoRA), randParts(t, f.base, 4, 4, "dense"), cfg)
		if _, err := r.LoadDir(filepath.Join(root, "x"+v)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.LoadDir(filepath.Join(root, "x10")); !errors.Is(err, ErrExists) {
		t.Fatalf("loading a version twice: %v", err)
	}
	h, err := r.Acquire("x")
	if err != nil || h.Manifest.Version != "10" {
		t.Fatalf("x resolves to %v (%v), want the newest version 10", h, err)
	}
	if _, err := r.Acquire("x@11"); !errors.Is(err, ErrUnknown) {
		t.Fatalf("unknown version: %v", err)
	}
	if err := r.SetDefault("x@9"); err != nil {
		t.Fatal(err)
	}
	if d, _ := r.Acquire(""); d.Manifest.Ref() != "x@9" {
		t.Fatalf("default = %s", d.Manifest.Ref())
	} else {
		d.Release()
	}
	if err := r.Unload("x@9"); !errors.Is(err, ErrIsDefault) {
		t.Fatalf("unloading the default: %v", err)
	}
	// x@10 is held: unloading it keeps it usable for the holder.
	if err := r.Unload("x@10"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.Scorer.Score(texts); err != nil {
		t.Fatalf("a held adapter stopped working after Unload: %v", err)
	}
	h.Release()
	h.Release() // no-op
	if _, err := r.Acquire("x@10"); !errors.Is(err, ErrUnknown) {
		t.Fatalf("unloaded version still resolves: %v", err)
	}
	if got := len(r.List()); got != 2 {
		t.Fatalf("List has %d adapters, want base and x@9", got)
	}
}

func TestSyncLoadsReplacesAndRemovesFolders(t *testing.T) {
	f := newFixture(t)
	r := newRegistry(t, f)
	root := t.TempDir()
	dir := filepath.Join(root, "y")
	cfg := PEFTLoRAConfig{R: 4, LoraAlpha: 8, TargetModules: []string{"dense"}}
	f.writeLoRA(t, dir, f.manifest("y", "1", MethodLoRA), randParts(t, f.base, 5, 4, "dense"), cfg)
	r.Sync(root)
	if _, err := r.Acquire("y@1"); err != nil {
		t.Fatalf("new folder not loaded: %v", err)
	}
	// A broken update of the folder keeps the loaded version.
	os.WriteFile(filepath.Join(dir, "adapter_model.safetensors"), []byte("garbage"), 0o644)
	touch(t, filepath.Join(dir, ManifestFile), f.manifest("y", "2", MethodLoRA))
	r.Sync(root)
	if _, err := r.Acquire("y@1"); err != nil {
		t.Fatalf("a bad update replaced the good version: %v", err)
	}
	// A good update replaces it.
	f.writeLoRA(t, dir, f.manifest("y", "2", MethodLoRA), randParts(t, f.base, 6, 4, "dense"), cfg)
	touch(t, filepath.Join(dir, ManifestFile), f.manifest("y", "2", MethodLoRA))
	r.Sync(root)
	if _, err := r.Acquire("y@2"); err != nil {
		t.Fatalf("updated folder not reloaded: %v", err)
	}
	if _, err := r.Acquire("y@1"); !errors.Is(err, ErrUnknown) {
		t.Fatalf("old version still served: %v", err)
	}
	os.RemoveAll(dir)
	r.Sync(root)
	if _, err := r.Acquire("y"); !errors.Is(err, ErrUnknown) {
		t.Fatalf("removed folder still served: %v", err)
	}
}

// TestSyncSkipsHiddenFolders: work in progress (emoctl train's state and
// its half-written copies live in folders starting with a dot) is never
// loaded.
func TestSyncSkipsHiddenFolders(t *testing.T) {
	f := newFixture(t)
	r := newRegistry(t, f)
	root := t.TempDir()
	cfg := PEFTLoRAConfig{R: 4, LoraAlpha: 8, TargetModules: []string{"dense"}}
	for _, dir := range []string{".y.train/best", ".y.new", "z"} {
		f.writeLoRA(t, filepath.Join(root, dir), f.manifest(strings.NewReplacer(".", "", "/", "-").Replace(dir), "1", MethodLoRA), randParts(t, f.base, 5, 4, "dense"), cfg)
	}
	r.Sync(root)
	var ids []string
	for _, a := range r.List() {
		ids = append(ids, a.ID)
	}
	if got := strings.Join(ids, ","); got != "base,z" {
		t.Fatalf("served %s, want base,z (hidden folders skipped)", got)
	}
}

// touch rewrites a manifest with a new modification time.
func touch(t *testing.T, path string, man Manifest) {
	t.Helper()
	if err := WriteManifest(filepath.Dir(path), man); err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(path)
	later := st.ModTime().Add(2e9)
	os.Chtimes(path, later, later)
}

// TestHotLoadUnloadUnderConcurrentScoring loads and unloads versions while
// other goroutines acquire, score and release: every acquired adapter
// scores successfully (run with -race).
func TestHotLoadUnloadUnderConcurrentScoring(t *testing.T) {
	f := newFixture(t)
	r := newRegistry(t, f)
	root := t.TempDir()
	cfg := PEFTLoRAConfig{R: 4, LoraAlpha: 8, TargetModules: []string{"dense"}}
	for v := 1; v <= 4; v++ {
		f.writeLoRA(t, filepath.Join(root, "z", string(rune('0'+v))), f.manifest("z", string(rune('0'+v)), MethodLoRA), randParts(t, f.base, uint64(v), 4, "dense"), cfg)
	}
	if _, err := r.LoadDir(filepath.Join(root, "z", "1")); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var failures sync.Map
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				h, err := r.Acquire("z")
				if errors.Is(err, ErrUnknown) {
					continue
				}
				if err != nil {
					failures.Store(err.Error(), true)
					return
				}
				if _, err := h.Scorer.Score(texts[:1]); err != nil {
					failures.Store(err.Error(), true)
				}
				h.Release()
			}
		}()
	}
	for v := 2; v <= 4; v++ {
		if _, err := r.LoadDir(filepath.Join(root, "z", string(rune('0'+v)))); err != nil {
			t.Fatal(err)
		}
		if err := r.Unload("z@" + string(rune('0'+v-1))); err != nil {
			t.Fatal(err)
		}
	}
	close(stop)
	wg.Wait()
	failures.Range(func(k, _ any) bool { t.Errorf("scoring failed during hot swaps: %v", k); return true })
}

func TestVersionOrderIsNatural(t *testing.T) {
	for _, c := range []struct{ a, b string }{{"9", "10"}, {"1.2", "1.10"}, {"2026-01-02", "2026-11-28"}, {"v1", "v2"}, {"a", "b"}} {
		if !versionLess(c.a, c.b) || versionLess(c.b, c.a) {
			t.Errorf("versionLess(%s, %s) wrong", c.a, c.b)
		}
	}
}
