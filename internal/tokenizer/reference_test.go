package tokenizer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/emoflow/emoflow/internal/testenv"
)

// The parity tests train real SentencePiece models with spm_train (in the
// modes ChatGLM's files use) and a tiktoken-format byte-level BPE on the
// shared data sets, cache them outside the repository, and compare this
// package with the Python reference libraries on every line of the data.

// referenceEnv is what the parity tests need from the machine.
type referenceEnv struct {
	python   string // the reference venv's interpreter
	spmTrain string
	cache    string // where generated models are kept between runs
	tools    string // tools/reference
}

func newReferenceEnv(t testing.TB) referenceEnv {
	t.Helper()
	python := os.Getenv("EMOFLOW_PYTHON")
	if python == "" {
		testenv.SkipOrFail(t, "EMOFLOW_PYTHON is not set: the reference Python (scripts/setup.sh makes $EMOFLOW_CACHE/venv)")
	}
	spmTrain, err := exec.LookPath("spm_train")
	if err != nil {
		testenv.SkipOrFail(t, "spm_train (Debian package sentencepiece) is not installed: %v", err)
	}
	cache := testenv.CacheDir(t, "tokenizer")
	if err := os.MkdirAll(cache, 0o755); err != nil {
		t.Fatal(err)
	}
	return referenceEnv{python: python, spmTrain: spmTrain, cache: cache,
		tools: filepath.Join(testenv.RepoRoot(t), "tools", "reference")}
}

// cached returns path if it exists, else runs make(tmp) to create it in a
// temporary file beside it and renames it into place, so concurrent test
// runs never see half a file.
func cached(t testing.TB, path string, make func(tmp string) error) string {
	t.Helper()
	if _, err := os.Stat(path); err == nil {
		return path
	}
	tmp, err := os.MkdirTemp(filepath.Dir(path), ".build-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	out := filepath.Join(tmp, "out")
	if err := make(out); err != nil {
		t.Fatalf("making %s: %v", path, err)
	}
	if err := os.Rename(out, path); err != nil {
		t.Fatal(err)
	}
	return path
}

func hashOf(parts ...string) string {
	h := sha256.New()
	for _, p := range parts {
		fmt.Fprintf(h, "%d:%s;", len(p), p)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// trainingCorpus writes the corpus lines to a cached file.
func (e referenceEnv) trainingCorpus(t testing.TB, lines []string) (path, hash string) {
	t.Helper()
	text := strings.Join(lines, "\n") + "\n"
	hash = hashOf(text)
	path = cached(t, filepath.Join(e.cache, "corpus-"+hash+".txt"), func(tmp string) error {
		return os.WriteFile(tmp, []byte(text), 0o644)
	})
	return path, hash
}

// spmRecipe is one spm_train configuration.
type spmRecipe struct {
	name string
	args []string
}

// spmRecipes mirror the real ChatGLM files and cover the encoder options:
// "bpe" is trained like ChatGLM2/3's tokenizer.model (BPE, byte fallback,
// identity normalization, whitespace kept, digits split, whitespace-only
// pieces); "ice" is a ChatGLM-6B-style unigram model with ice_text.model's
// user-defined symbols; the other two add the nmt_nfkc and nfkc_cf
// charsmaps, unknown-piece merging (no byte fallback), control symbols and
// whitespace as a suffix.
func spmRecipes() []spmRecipe {
	ice := []string{"<n>", "<|tab|>"}
	for n := 2; n <= chatGLMMaxBlank; n++ {
		ice = append(ice, fmt.Sprintf("<|blank_%d|>", n))
	}
	ice = append(ice, "[MASK]", "[gMASK]", "[sMASK]", "<unused_0>", "<sop>", "<eop>", "<ENC>", "<dBLOCK>")
	return []spmRecipe{
		{"bpe", []string{"--model_type=bpe", "--vocab_size=8000", "--byte_fallback=true",
			"--normalization_rule_name=identity", "--add_dummy_prefix=true", "--remove_extra_whitespaces=false",
			"--split_digits=true", "--allow_whitespace_only_pieces=true", "--character_coverage=0.9995"}},
		{"ice", []string{"--model_type=unigram", "--vocab_size=6000", "--byte_fallback=true",
			"--normalization_rule_name=nmt_nfkc", "--remove_extra_whitespaces=false", "--pad_id=3",
			"--user_defined_symbols=" + strings.Join(ice, ",")}},
		{"unigram-nfkc", []string{"--model_type=unigram", "--vocab_size=5000", "--byte_fallback=false",
			"--normalization_rule_name=nmt_nfkc", "--control_symbols=<ctl>,<sep>", "--character_coverage=0.999"}},
		{"bpe-suffix", []string{"--model_type=bpe", "--vocab_size=4000", "--byte_fallback=false",
			"--normalization_rule_name=nfkc_cf", "--treat_whitespace_as_suffix=true",
			"--user_defined_symbols=☺,<sep>,@@,the", "--character_coverage=0.999"}},
	}
}

func (e referenceEnv) spmModel(t testing.TB, corpus, corpusHash string, r spmRecipe) string {
	t.Helper()
	name := fmt.Sprintf("spm-%s-%s.model", r.name, hashOf(append([]string{corpusHash}, r.args...)...))
	return cached(t, filepath.Join(e.cache, name), func(tmp string) error {
		args := append([]string{"--input=" + corpus, "--model_prefix=" + tmp, "--num_threads=2",
			"--input_sentence_size=0", "--minloglevel=2"}, r.args...)
		out, err := exec.Command(e.spmTrain, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("spm_train %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return os.Rename(tmp+".model", tmp)
	})
}

// byteBPEMerges is the size of the test GLM-4-style vocabulary beyond its
// 256 single bytes.
const byteBPEMerges = 3000

func (e referenceEnv) byteBPEModel(t testing.TB, corpus, corpusHash string) string {
	t.Helper()
	script := filepath.Join(e.tools, "train_bytebpe.py")
	code, err := os.ReadFile(script)
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("bytebpe-%s.tiktoken", hashOf(corpusHash, string(code), fmt.Sprint(byteBPEMerges)))
	return cached(t, filepath.Join(e.cache, name), func(tmp string) error {
		cmd := exec.Command(e.python, script, corpus, tmp, fmt.Sprint(byteBPEMerges))
		cmd.Dir = e.tools
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v\n%s", script, err, out)
		}
		return nil
	})
}

// refJob is one job of tokenize_ref.py.
type refJob struct {
	Name          string   `json:"name"`
	Kind          string   `json:"kind"`
	Model         string   `json:"model"`
	Texts         []string `json:"texts"`
	Decode        [][]int  `json:"decode"`
	Chat          []string `json:"chat,omitempty"`
	ImageTokens   int      `json:"image_tokens"`
	EncodeSpecial bool     `json:"encode_special"`
}

// refResult is tokenize_ref.py's answer for a job.
// DecodeEncoded[i] is nil when decoding Encode[i] gives back Texts[i].
type refResult struct {
	Encode        [][]int   `json:"encode"`
	DecodeEncoded []*string `json:"decode_encoded"`
	Decode        []string  `json:"decode"`
	Chat          [][]int   `json:"chat"`
	Meta          refMeta   `json:"meta"`
}

type refMeta struct {
	Size    int            `json:"size"`
	Unk     int            `json:"unk"`
	Bos     int            `json:"bos"`
	Eos     int            `json:"eos"`
	Pad     int            `json:"pad"`
	Pieces  []refPiece     `json:"pieces"`
	Special map[string]int `json:"special"`
}

// refPiece is [piece, kind, score].
type refPiece struct {
	Piece string
	Kind  string
	Score float64
}

func (p *refPiece) UnmarshalJSON(b []byte) error {
	var raw []json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil || len(raw) != 3 {
		return fmt.Errorf("piece %s: want [piece, kind, score]", b)
	}
	if err := json.Unmarshal(raw[0], &p.Piece); err != nil {
		return err
	}
	if err := json.Unmarshal(raw[1], &p.Kind); err != nil {
		return err
	}
	return json.Unmarshal(raw[2], &p.Score)
}

// runReference runs tokenize_ref.py once on all jobs.
func (e referenceEnv) runReference(t testing.TB, jobs []refJob) map[string]refResult {
	t.Helper()
	dir := t.TempDir()
	req, err := json.Marshal(map[string]any{"jobs": jobs})
	if err != nil {
		t.Fatal(err)
	}
	reqPath, respPath := filepath.Join(dir, "request.json"), filepath.Join(dir, "response.json")
	if err := os.WriteFile(reqPath, req, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	start := time.Now()
	cmd := exec.CommandContext(ctx, e.python, filepath.Join(e.tools, "tokenize_ref.py"), reqPath, respPath)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tokenize_ref.py: %v\n%s", err, out)
	}
	data, err := os.ReadFile(respPath)
	if err != nil {
		t.Fatal(err)
	}
	var resp map[string]refResult
	if err := json.Unmarshal(data, &resp); err != nil {
		t.Fatalf("tokenize_ref.py response: %v", err)
	}
	t.Logf("reference: %d jobs in %v (%d MB of answers)", len(jobs), time.Since(start).Round(time.Millisecond), len(data)>>20)
	return resp
}

// randomIDs makes n id sequences below size, half of their ids drawn from
// favour (the byte pieces, or special tokens) so that partial UTF-8
// sequences and special tokens are common. Deterministic.
func randomIDs(n, size int, favour []int, seed uint64) [][]int {
	rng := rand.New(rand.NewPCG(seed, 7))
	out := make([][]int, n)
	for i := range out {
		seq := make([]int, 1+rng.IntN(12))
		for k := range seq {
			if len(favour) > 0 && rng.IntN(2) == 0 {
				seq[k] = favour[rng.IntN(len(favour))]
			} else {
				seq[k] = rng.IntN(size)
			}
		}
		out[i] = seq
	}
	return out
}

// parityCase pairs a reference job with our tokenizer for it.
type parityCase struct {
	job    refJob
	encode func(string) []int
	decode func([]int) (string, error)
	chat   func(string) []int
	check  func(t *testing.T, meta refMeta) // checks the vocabulary metadata
}

func TestReferenceParity(t *testing.T) {
	env := newReferenceEnv(t)
	corpus := corpusLines(t)
	corpusPath, corpusHash := env.trainingCorpus(t, corpus)

	extra := slices.Concat(trickyLines(), fixtureInputs(t), randomLines(5000), longLines(corpus))
	all := slices.Concat(corpus, extra)
	// Family wrappers share the base encoders, which see every line; they
	// get the edge cases and a slice of the corpus.
	familyTexts := slices.Concat(extra, corpus[:5000])
	chats := slices.Concat(trickyLines()[:40], corpus[:300])

	var cases []parityCase
	for _, r := range spmRecipes() {
		path := env.spmModel(t, corpusPath, corpusHash, r)
		sp, err := LoadSentencePiece(path)
		if err != nil {
			t.Fatalf("%s: %v", r.name, err)
		}
		var bytes []int
		for _, id := range sp.byteIDs {
			if id >= 0 {
				bytes = append(bytes, int(id))
			}
		}
		texts := all
		if r.name == "ice" {
			texts = familyTexts // the chatglm-6b job runs every line through this model
		}
		cases = append(cases, parityCase{
			job:    refJob{Name: "spm-" + r.name, Kind: "sentencepiece", Model: path, Texts: texts, Decode: randomIDs(3000, sp.VocabSize(), bytes, 1)},
			encode: sp.Encode, decode: sp.Decode,
			check: func(t *testing.T, m refMeta) { checkSentencePieceMeta(t, sp, m) },
		})
		switch r.name {
		case "bpe":
			for _, fam := range []struct {
				name    string
				tok     Tokenizer
				special bool
			}{
				{"chatglm2-6b", NewChatGLM2(sp), false},
				{"chatglm3-6b", NewChatGLM3(sp, false), false},
				{"chatglm3-6b", NewChatGLM3(sp, true), true},
			} {
				name := fam.name
				if fam.special {
					name += "-encode-special"
				}
				cases = append(cases, familyCase(refJob{Name: name, Kind: fam.name, Model: path, Texts: familyTexts,
					EncodeSpecial: fam.special, Chat: chats}, fam.tok, bytes, 2))
			}
		case "ice":
			const images = DefaultImageTokens
			tok, err := NewChatGLM(sp, images)
			if err != nil {
				t.Fatal(err)
			}
			shifted := []int{0, 1, images - 1}
			for _, id := range bytes {
				shifted = append(shifted, id+images)
			}
			cases = append(cases, familyCase(refJob{Name: "chatglm-6b", Kind: "chatglm-6b", Model: path, Texts: all,
				ImageTokens: images, Chat: chats}, tok, shifted, 3))
		}
	}

	bpePath := env.byteBPEModel(t, corpusPath, corpusHash)
	bpe, err := LoadByteBPE(bpePath)
	if err != nil {
		t.Fatal(err)
	}
	singleBytes := make([]int, 0, 256)
	for c := range 256 {
		singleBytes = append(singleBytes, bpe.ranks[string([]byte{byte(c)})])
	}
	cases = append(cases, parityCase{
		job:    refJob{Name: "tiktoken-glm4", Kind: "tiktoken-glm4", Model: bpePath, Texts: all, Decode: randomIDs(3000, bpe.VocabSize(), singleBytes, 4)},
		encode: bpe.Encode, decode: bpe.Decode,
		check: func(t *testing.T, m refMeta) {
			if m.Size != bpe.VocabSize() {
				t.Errorf("vocabulary size %d, reference %d", bpe.VocabSize(), m.Size)
			}
		},
	})
	for _, special := range []bool{false, true} {
		tok, err := NewGLM4(bpe, nil, special)
		if err != nil {
			t.Fatal(err)
		}
		name := "glm-4"
		if special {
			name += "-encode-special"
		}
		cases = append(cases, familyCase(refJob{Name: name, Kind: "glm-4", Model: bpePath, Texts: familyTexts,
			EncodeSpecial: special, Chat: chats}, tok, singleBytes, 5))
	}

	jobs := make([]refJob, len(cases))
	for i, c := range cases {
		jobs[i] = c.job
	}
	resp := env.runReference(t, jobs)
	for _, c := range cases {
		t.Run(c.job.Name, func(t *testing.T) {
			want, ok := resp[c.job.Name]
			if !ok {
				t.Fatalf("no reference answer for %s", c.job.Name)
			}
			compareWithReference(t, c, want)
		})
	}
}

// familyCase makes the parity case of a family tokenizer; favour are ids to
// draw often in random decodes, besides the special tokens.
func familyCase(job refJob, tok Tokenizer, favour []int, seed uint64) parityCase {
	for _, name := range allSpecialNames() {
		if id, ok := tok.SpecialID(name); ok {
			favour = append(favour, id)
		}
	}
	job.Decode = randomIDs(3000, tok.VocabSize(), favour, seed)
	return parityCase{
		job: job, encode: tok.Encode, decode: tok.Decode, chat: tok.ChatPrompt,
		check: func(t *testing.T, m refMeta) {
			if m.Size != tok.VocabSize() {
				t.Errorf("VocabSize %d, reference %d", tok.VocabSize(), m.Size)
			}
			for name, want := range m.Special {
				if got, ok := tok.SpecialID(name); !ok || got != want {
					t.Errorf("SpecialID(%q) = %d, %v; reference %d", name, got, ok, want)
				}
			}
		},
	}
}

// allSpecialNames lists the special-token names of every family.
func allSpecialNames() []string {
	return slices.Concat(chatGLM6BSpecial(), chatGLM2Special(), chatGLM3Roles(), glm4Special())
}

func compareWithReference(t *testing.T, c parityCase, want refResult) {
	job := c.job
	if len(want.Encode) != len(job.Texts) || len(want.DecodeEncoded) != len(job.Texts) || len(want.Decode) != len(job.Decode) {
		t.Fatalf("reference answered %d encodes, %d decodes of them, %d decodes; asked %d texts and %d decodes",
			len(want.Encode), len(want.DecodeEncoded), len(want.Decode), len(job.Texts), len(job.Decode))
	}
	c.check(t, want.Meta)
	const show = 8 // mismatches shown per kind
	failures := 0
	report := func(format string, args ...any) {
		failures++
		if failures <= show {
			t.Errorf(format, args...)
		}
	}
	for i, text := range job.Texts {
		got := c.encode(text)
		if !slices.Equal(got, want.Encode[i]) {
			report("Encode(%q)\n got %v\nwant %v", clip(text), clip(fmt.Sprint(got)), clip(fmt.Sprint(want.Encode[i])))
			continue
		}
		wantText := text
		if want.DecodeEncoded[i] != nil {
			wantText = *want.DecodeEncoded[i]
		}
		dec, err := c.decode(want.Encode[i])
		if err != nil || dec != wantText {
			report("Decode(Encode(%q)) = %q, %v; want %q", clip(text), clip(dec), err, clip(wantText))
		}
	}
	for i, ids := range job.Decode {
		dec, err := c.decode(ids)
		if err != nil || dec != want.Decode[i] {
			report("Decode(%v) = %q, %v; want %q", ids, dec, err, want.Decode[i])
		}
	}
	if len(job.Chat) > 0 {
		if len(want.Chat) != len(job.Chat) {
			t.Fatalf("reference answered %d chat prompts, asked %d", len(want.Chat), len(job.Chat))
		}
		for i, q := range job.Chat {
			if got := c.chat(q); !slices.Equal(got, want.Chat[i]) {
				report("ChatPrompt(%q)\n got %v\nwant %v", clip(q), got, want.Chat[i])
			}
		}
	}
	if failures > show {
		t.Errorf("... %d mismatches in all", failures)
	}
	t.Logf("%s: %d texts encoded and decoded, %d id lists decoded, %d chat prompts: %d mismatches",
		job.Name, len(job.Texts), len(job.Decode), len(job.Chat), failures)
}

func clip(s string) string {
	if len(s) > 300 {
		return s[:300] + "..."
	}
	return s
}

// checkSentencePieceMeta compares the model as we parsed it with the
// sentencepiece library's view of it: every piece, its kind and score, and
// the special ids.
func checkSentencePieceMeta(t *testing.T, sp *SentencePiece, m refMeta) {
	t.Helper()
	if m.Size != sp.VocabSize() || len(m.Pieces) != sp.VocabSize() {
		t.Fatalf("vocabulary size %d, reference %d (%d pieces)", sp.VocabSize(), m.Size, len(m.Pieces))
	}
	for name, ids := range map[string][2]int{
		"unk": {sp.UnkID(), m.Unk}, "bos": {sp.BOSID(), m.Bos}, "eos": {sp.EOSID(), m.Eos}, "pad": {sp.PadID(), m.Pad},
	} {
		if ids[0] != ids[1] {
			t.Errorf("%s id %d, reference %d", name, ids[0], ids[1])
		}
	}
	kinds := map[pieceType]string{pieceNormal: "normal", pieceUserDefined: "normal", pieceUnknown: "unknown",
		pieceControl: "control", pieceByte: "byte", pieceUnused: "unused"}
	for id, want := range m.Pieces {
		p := sp.pieces[id]
		if p.text != want.Piece || kinds[p.typ] != want.Kind || float64(p.score) != want.Score {
			t.Errorf("piece %d = %q %s %v; reference %q %s %v", id, p.text, kinds[p.typ], p.score, want.Piece, want.Kind, want.Score)
		}
		if got := sp.PieceToID(want.Piece); got != id && sp.pieces[got].text != want.Piece {
			t.Errorf("PieceToID(%q) = %d, want %d", want.Piece, got, id)
		}
	}
}
