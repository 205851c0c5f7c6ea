package model

import (
	"archive/zip"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emoflow/emoflow/internal/randmodel"
	"github.com/emoflow/emoflow/internal/safetensors"
	"github.com/emoflow/emoflow/internal/tensor"
	"github.com/emoflow/emoflow/internal/testenv"
)

// The reference parity tests run tools/reference/glm_checkpoints.py, which
// writes one tiny random GlmForCausalLM in every checkpoint form the engine
// loads (transformers' and THUDM's tensor names; safetensors and PyTorch
// .bin, single and sharded; float32, float16 and bfloat16) together with
// logits computed by transformers. Its output is cached outside the
// repository, in $EMOFLOW_CACHE/testdata/model, keyed by a hash of the
// script and of the pinned Python packages.

// float32Tolerance bounds |engine - transformers| per logit in float32.
const float32Tolerance = 1e-4

// bf16ToleranceFactor times transformers' own bfloat16 change of a logit
// (recorded by the tool) bounds the engine's bfloat16 change.
const bf16ToleranceFactor = 3

// refManifest is the tool's manifest.json.
type refManifest struct {
	Torch        string `json:"torch"`
	Transformers string `json:"transformers"`
	Seed         int    `json:"seed"`
	Config       struct {
		Vocab int `json:"vocab"`
	} `json:"config"`
	BF16Change   float64              `json:"bf16_max_logit_change"`
	BlockEffects map[string]float64   `json:"block_logit_effects"`
	Cases        []refCase            `json:"cases"`
	References   map[string]refLogits `json:"references"`
	Variants     []refVariant         `json:"variants"`
}

// refCase is one input: rows of tokens with their attention mask (1 for
// real tokens) and rotary positions.
type refCase struct {
	Name      string    `json:"name"`
	Tokens    [][]int64 `json:"tokens"`
	Mask      [][]int   `json:"mask"`
	Positions [][]int64 `json:"positions"`
}

// refLogits are the reference logits of every case for weights stored in
// one dtype: raw float32 files [rows, len, vocab].
type refLogits struct {
	Files     map[string]string `json:"files"`
	MinMargin float64           `json:"min_margin"`
}

// refVariant is one checkpoint folder.
type refVariant struct {
	Name        string `json:"name"`
	Layout      string `json:"layout"`
	Format      string `json:"format"`
	StoredDType string `json:"stored_dtype"`
	Shards      int    `json:"shards"`
}

// referenceCheckpoints returns the folder the tool wrote and its manifest,
// running the tool when the cache lacks its current output.
func referenceCheckpoints(t *testing.T) (string, refManifest) {
	t.Helper()
	dir := testenv.ReferenceOutput(t, "model", "glm_checkpoints.py")
	raw, err := os.ReadFile(filepath.Join(dir, "manifest.json"))
	if err != nil {
		t.Fatal(err)
	}
	var man refManifest
	if err := json.Unmarshal(raw, &man); err != nil {
		t.Fatalf("%s: %v", filepath.Join(dir, "manifest.json"), err)
	}
	if len(man.Variants) == 0 || len(man.Cases) == 0 {
		t.Fatalf("%s lists no variants or no cases", dir)
	}
	return dir, man
}

// batch is the case as an engine batch. Padding positions see only
// themselves (their outputs are never compared); real tokens see the real
// tokens up to themselves.
func (c refCase) batch() *Batch {
	rows, n := len(c.Tokens), len(c.Tokens[0])
	b := &Batch{Rows: rows, Len: n, Visible: make([]bool, rows*n*n)}
	for r := 0; r < rows; r++ {
		b.Tokens = append(b.Tokens, c.Tokens[r]...)
		b.Pos = append(b.Pos, c.Positions[r]...)
		for i := 0; i < n; i++ {
			for j := 0; j < n; j++ {
				vis := j == i
				if c.Mask[r][i] == 1 {
					vis = j <= i && c.Mask[r][j] == 1
				}
				b.Visible[(r*n+i)*n+j] = vis
			}
		}
	}
	return b
}

// reference reads the logits transformers computed for case c with weights
// stored in dtype.
func (man refManifest) reference(t *testing.T, dir, dtype string, c refCase) []float32 {
	t.Helper()
	ref, ok := man.References[dtype]
	if !ok {
		t.Fatalf("manifest has no reference for weights stored as %s", dtype)
	}
	raw, err := os.ReadFile(filepath.Join(dir, ref.Files[c.Name]))
	if err != nil {
		t.Fatal(err)
	}
	want := floats(raw)
	if n := len(c.Tokens) * len(c.Tokens[0]) * man.Config.Vocab; len(want) != n {
		t.Fatalf("reference %s of case %s has %d logits, want %d", dtype, c.Name, len(want), n)
	}
	return want
}

// forRealPositions calls f with the logits of every real (unpadded) token
// of case c.
func forRealPositions(c refCase, vocab int, got, want []float32, f func(row, pos int, got, want []float32)) {
	n := len(c.Tokens[0])
	for r := range c.Tokens {
		for i := 0; i < n; i++ {
			if c.Mask[r][i] != 1 {
				continue
			}
			at := (r*n + i) * vocab
			f(r, i, got[at:at+vocab], want[at:at+vocab])
		}
	}
}

func argmax(xs []float32) int {
	best := 0
	for i, x := range xs {
		if x > xs[best] {
			best = i
		}
	}
	return best
}

// checkVariantFiles makes sure a variant holds the files its manifest
// entry claims, so that each loader path is really taken.
func checkVariantFiles(t *testing.T, dir string, v refVariant) {
	t.Helper()
	single := "model.safetensors"
	if v.Format == "bin" {
		single = "pytorch_model.bin"
	}
	if v.Shards <= 1 {
		if _, err := os.Stat(filepath.Join(dir, single)); err != nil {
			t.Fatalf("variant %s: %v", v.Name, err)
		}
		return
	}
	raw, err := os.ReadFile(filepath.Join(dir, single+".index.json"))
	if err != nil {
		t.Fatalf("variant %s: %v", v.Name, err)
	}
	var idx struct {
		WeightMap map[string]string `json:"weight_map"`
	}
	if err := json.Unmarshal(raw, &idx); err != nil {
		t.Fatalf("variant %s: %v", v.Name, err)
	}
	shards := map[string]bool{}
	for _, s := range idx.WeightMap {
		shards[s] = true
	}
	if len(shards) != v.Shards {
		t.Fatalf("variant %s: index names %d shards, manifest %d", v.Name, len(shards), v.Shards)
	}
}

func TestReferenceLogitsFloat32(t *testing.T) {
	dir, man := referenceCheckpoints(t)
	t.Logf("reference: torch %s, transformers %s, seed %d", man.Torch, man.Transformers, man.Seed)
	for _, v := range man.Variants {
		t.Run(v.Name, func(t *testing.T) {
			vdir := filepath.Join(dir, v.Name)
			checkVariantFiles(t, vdir, v)
			m, err := Load(vdir, Options{DType: tensor.Float32})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			if string(m.Config().Layout) != v.Layout {
				t.Fatalf("loaded as layout %s, want %s", m.Config().Layout, v.Layout)
			}
			for _, c := range man.Cases {
				got, err := m.Logits(c.batch())
				if err != nil {
					t.Fatalf("case %s: %v", c.Name, err)
				}
				want := man.reference(t, dir, v.StoredDType, c)
				if len(got) != len(want) {
					t.Fatalf("case %s: %d logits, want %d", c.Name, len(got), len(want))
				}
				worst, where := 0.0, ""
				forRealPositions(c, man.Config.Vocab, got, want, func(r, i int, g, w []float32) {
					for k := range g {
						if d := math.Abs(float64(g[k] - w[k])); d > worst || math.IsNaN(d) {
							worst, where = d, fmt.Sprintf("row %d, position %d, token %d: %g, want %g", r, i, k, g[k], w[k])
						}
					}
				})
				if !(worst <= float32Tolerance) {
					t.Errorf("case %s: logits differ from transformers by %g (> %g) at %s", c.Name, worst, float32Tolerance, where)
				}
				t.Logf("case %s: max |engine - transformers| = %.2g", c.Name, worst)
			}
		})
	}
}

func TestReferenceBFloat16(t *testing.T) {
	dir, man := referenceCheckpoints(t)
	tolerance := bf16ToleranceFactor * man.BF16Change
	if tolerance <= 0 {
		t.Fatalf("manifest: bfloat16 change %g", man.BF16Change)
	}
	// The tolerance must be able to notice a broken block.
	for block, effect := range man.BlockEffects {
		if effect < 2*tolerance {
			t.Fatalf("reference model: removing %s moves the logits by only %g, which a tolerance of %g cannot notice", block, effect, tolerance)
		}
	}
	// Logits that each move by at most the tolerance keep their argmax
	// only where the reference's top two are further apart than twice it.
	for dtype, ref := range man.References {
		if ref.MinMargin <= 2*tolerance {
			t.Fatalf("reference for weights stored as %s has an argmax margin of %g, not above twice the tolerance %g", dtype, ref.MinMargin, tolerance)
		}
	}
	for _, v := range man.Variants {
		t.Run(v.Name, func(t *testing.T) {
			m, err := Load(filepath.Join(dir, v.Name), Options{DType: tensor.BFloat16})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			for _, c := range man.Cases {
				got, err := m.Logits(c.batch())
				if err != nil {
					t.Fatalf("case %s: %v", c.Name, err)
				}
				want := man.reference(t, dir, v.StoredDType, c)
				worst := 0.0
				if len(got) != len(want) {
					t.Fatalf("case %s: %d logits, want %d", c.Name, len(got), len(want))
				}
				forRealPositions(c, man.Config.Vocab, got, want, func(r, i int, g, w []float32) {
					if a, b := argmax(g), argmax(w); a != b {
						t.Errorf("case %s row %d position %d: bfloat16 argmax %d, transformers %d", c.Name, r, i, a, b)
					}
					for k := range g {
						if d := math.Abs(float64(g[k] - w[k])); d > worst || math.IsNaN(d) {
							worst = d
						}
					}
				})
				if !(worst <= tolerance) {
					t.Errorf("case %s: bfloat16 logits differ from transformers' float32 by %g (> %g = %d x transformers' own bfloat16 change)",
						c.Name, worst, tolerance, bf16ToleranceFactor)
				}
				t.Logf("case %s: max |engine bfloat16 - transformers float32| = %.3g (tolerance %.3g)", c.Name, worst, tolerance)
			}
		})
	}
}

// loadBounded runs Load on dir and turns a panic or a hang into a test
// failure: a corrupt checkpoint must come back as an error.
func loadBounded(t *testing.T, dir string) error {
	t.Helper()
	type result struct {
		err   error
		panic any
	}
	done := make(chan result, 1)
	go func() {
		defer func() {
			if r := recover(); r != nil {
				done <- result{panic: r}
			}
		}()
		m, err := Load(dir, Options{DType: tensor.Float32})
		if err == nil {
			m.Close()
		}
		done <- result{err: err}
	}()
	select {
	case r := <-done:
		if r.panic != nil {
			t.Fatalf("Load panicked: %v", r.panic)
		}
		return r.err
	case <-time.After(time.Minute):
		t.Fatal("Load did not return within a minute")
	}
	return nil
}

// rewriteZip returns the zip archive raw with the entry whose name ends in
// suffix replaced by edit(entry).
func rewriteZip(t *testing.T, raw []byte, suffix string, edit func([]byte) []byte) []byte {
	t.Helper()
	zr, err := zip.NewReader(bytes.NewReader(raw), int64(len(raw)))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	found := false
	for _, f := range zr.File {
		rc, err := f.Open()
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(rc)
		rc.Close()
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(f.Name, suffix) {
			data, found = edit(data), true
		}
		w, err := zw.CreateHeader(&zip.FileHeader{Name: f.Name, Method: zip.Store})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if !found {
		t.Fatalf("archive has no entry ending in %s", suffix)
	}
	return buf.Bytes()
}

func TestCorruptBinCheckpoints(t *testing.T) {
	dir, _ := referenceCheckpoints(t)
	src := filepath.Join(dir, "thudm-bin")
	good, err := os.ReadFile(filepath.Join(src, "pytorch_model.bin"))
	if err != nil {
		t.Fatal(err)
	}
	noise := make([]byte, 4096)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range noise {
		noise[i] = byte(rng.Uint32())
	}
	cases := map[string][]byte{
		"empty file": {},
		// A zero-filled file is an empty tar archive to gotch's reader of
		// the pre-1.6 format.
		"zeros":          make([]byte, 4096),
		"random bytes":   noise,
		"truncated file": good[:len(good)/2],
		"truncated storage": rewriteZip(t, good, "data/0", func(b []byte) []byte {
			return b[:len(b)/3]
		}),
	}
	// gotch allocates a storage of the size the pickle states before
	// reading it: a negative size makes it panic. (With the true size, the
	// same archive is a valid checkpoint.)
	valid := t.TempDir()
	if err := os.WriteFile(filepath.Join(valid, "pytorch_model.bin"), pickledStateDict(t, 1), 0o644); err != nil {
		t.Fatal(err)
	}
	if c, err := openBinCheckpoint(valid, "pytorch_model"); err != nil {
		t.Fatalf("hand-made checkpoint: %v", err)
	} else if shape, ok := c.Shape("w"); !ok || !equalShape(shape, []int64{1}) {
		t.Fatalf("hand-made checkpoint: tensor w has shape %v (%v)", shape, ok)
	}
	cases["negative storage size"] = pickledStateDict(t, -1)
	// Cut the pickle of the state dict at points spread over its length.
	for _, frac := range []int{1, 10, 25, 50, 75, 90, 99} {
		cases[fmt.Sprintf("pickle cut at %d%%", frac)] = rewriteZip(t, good, "data.pkl", func(b []byte) []byte {
			return b[:len(b)*frac/100]
		})
	}
	config, err := os.ReadFile(filepath.Join(src, "config.json"))
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			d := t.TempDir()
			if err := os.WriteFile(filepath.Join(d, "config.json"), config, 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(d, "pytorch_model.bin"), data, 0o644); err != nil {
				t.Fatal(err)
			}
			err := loadBounded(t, d)
			if err == nil {
				t.Fatal("a corrupt checkpoint loaded")
			}
			if msg := err.Error(); !strings.Contains(msg, "pytorch_model.bin") || !strings.Contains(msg, "PyTorch checkpoint") {
				t.Errorf("error does not name the file and say what is wrong with it: %v", err)
			}
			t.Log(err)
		})
	}
}

// pickledStateDict is a torch.save archive, written by hand, of the state
// dict {"w": a float32 tensor of shape [1]} whose storage claims numel
// elements.
func pickledStateDict(t *testing.T, numel int32) []byte {
	t.Helper()
	var p bytes.Buffer
	str := func(s string) { // BINUNICODE
		p.WriteByte('X')
		p.Write([]byte{byte(len(s)), 0, 0, 0})
		p.WriteString(s)
	}
	p.WriteString("\x80\x02}") // protocol 2, empty dict
	str("w")
	p.WriteString("ctorch._utils\n_rebuild_tensor_v2\n((")
	str("storage")
	p.WriteString("ctorch\nFloatStorage\n")
	str("0")
	str("cpu")
	p.WriteByte('J') // BININT
	p.Write([]byte{byte(numel), byte(numel >> 8), byte(numel >> 16), byte(numel >> 24)})
	// tuple, persistent id; offset 0, size (1,), stride (1,), no grad,
	// empty hooks; tuple, reduce; set item, stop
	p.WriteString("tQK\x00K\x01\x85K\x01\x85\x89ccollections\nOrderedDict\n)RtRs.")
	var buf bytes.Buffer
	zw := zip.NewWriter(&buf)
	for _, e := range []struct {
		name string
		data []byte
	}{{"archive/data.pkl", p.Bytes()}, {"archive/data/0", make([]byte, 4)}} {
		w, err := zw.CreateHeader(&zip.FileHeader{Name: e.name, Method: zip.Store})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := w.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestMissingBinShard(t *testing.T) {
	dir, _ := referenceCheckpoints(t)
	src := filepath.Join(dir, "thudm-bin-sharded")
	d := t.TempDir()
	entries, err := os.ReadDir(src)
	if err != nil {
		t.Fatal(err)
	}
	const missing = "pytorch_model-00002-of-00003.bin"
	for _, e := range entries {
		if e.Name() != missing {
			copyFile(t, filepath.Join(src, e.Name()), filepath.Join(d, e.Name()))
		}
	}
	err = loadBounded(t, d)
	if err == nil || !strings.Contains(err.Error(), missing) || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Load of a checkpoint without %s: %v", missing, err)
	}
}

func TestCorruptSafetensorsCheckpoints(t *testing.T) {
	src := t.TempDir()
	if err := randmodel.Write(src, tinySpec("chatglm2")); err != nil {
		t.Fatal(err)
	}
	good, err := os.ReadFile(filepath.Join(src, "model.safetensors"))
	if err != nil {
		t.Fatal(err)
	}
	headerLen := func(n uint64) []byte {
		b := bytes.Clone(good)
		for i := 0; i < 8; i++ {
			b[i] = byte(n >> (8 * i))
		}
		return b
	}
	garbled := bytes.Clone(good)
	copy(garbled[8:], "{not json")
	cases := map[string][]byte{
		"empty file":          {},
		"truncated file":      good[:len(good)/2],
		"header past the end": headerLen(uint64(len(good))),
		"header not JSON":     garbled,
	}
	for name, data := range cases {
		t.Run(name, func(t *testing.T) {
			d := t.TempDir()
			copyFile(t, filepath.Join(src, "config.json"), filepath.Join(d, "config.json"))
			if err := os.WriteFile(filepath.Join(d, "model.safetensors"), data, 0o644); err != nil {
				t.Fatal(err)
			}
			err := loadBounded(t, d)
			if err == nil {
				t.Fatal("a corrupt checkpoint loaded")
			}
			if !strings.Contains(err.Error(), "model.safetensors") {
				t.Errorf("error does not name the file: %v", err)
			}
			t.Log(err)
		})
	}
	t.Run("missing shard", func(t *testing.T) {
		d := t.TempDir()
		copyFile(t, filepath.Join(src, "config.json"), filepath.Join(d, "config.json"))
		f, err := safetensors.Open(filepath.Join(src, "model.safetensors"))
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		const kept, lost = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
		var first []safetensors.Tensor
		weightMap := map[string]string{}
		for i, name := range f.Names() {
			shard := lost
			if i%2 == 0 {
				info, _ := f.Info(name)
				data, err := f.Bytes(name)
				if err != nil {
					t.Fatal(err)
				}
				first = append(first, safetensors.Tensor{Name: name, DType: info.DType, Shape: info.Shape, Data: data})
				shard = kept
			}
			weightMap[name] = shard
		}
		if err := safetensors.Write(filepath.Join(d, kept), first, nil); err != nil {
			t.Fatal(err)
		}
		index, _ := json.Marshal(map[string]any{"weight_map": weightMap})
		if err := os.WriteFile(filepath.Join(d, "model.safetensors.index.json"), index, 0o644); err != nil {
			t.Fatal(err)
		}
		err = loadBounded(t, d)
		if err == nil || !strings.Contains(err.Error(), lost) {
			t.Fatalf("Load of a checkpoint without %s: %v", lost, err)
		}
	})
}
