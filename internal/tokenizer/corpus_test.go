package tokenizer

import (
	"bufio"
	"encoding/csv"
	"encoding/json"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emoflow/emoflow/internal/testenv"
)

// corpusLines returns every distinct line of text of the shared emotion
// data sets, in file order: GoEmotions comments, MELD and EmoryNLP
// utterances, CARER tweets and DailyDialog utterances.
func corpusLines(t testing.TB) []string {
	t.Helper()
	seen := make(map[string]bool)
	var lines []string
	add := func(s string) {
		s = strings.ToValidUTF8(s, "\uFFFD") // JSON to Python could not carry invalid UTF-8
		if s != "" && !seen[s] {
			seen[s] = true
			lines = append(lines, s)
		}
	}
	for _, set := range []string{"ekman", "original"} {
		for _, split := range []string{"train", "dev", "test"} {
			eachLine(t, testenv.Shared(t, "data/goemotions/"+set+"/"+split+".tsv"), func(line string) {
				text, _, _ := strings.Cut(line, "\t")
				add(text)
			})
		}
	}
	for _, f := range []string{"train_sent_emo", "dev_sent_emo", "test_sent_emo"} {
		csvColumn(t, testenv.Shared(t, "data/meld/"+f+".csv"), "Utterance", add)
	}
	for _, f := range []string{"train", "dev", "test"} {
		csvColumn(t, testenv.Shared(t, "data/emorynlp/emorynlp_"+f+"_final.csv"), "Utterance", add)
	}
	for _, f := range []string{"train", "val", "test"} {
		eachLine(t, testenv.Shared(t, "data/carer/"+f+".txt"), func(line string) {
			if i := strings.LastIndexByte(line, ';'); i >= 0 {
				add(line[:i])
			}
		})
	}
	for _, f := range []string{"test", "validation"} {
		eachLine(t, testenv.Shared(t, "data/dailydialog/dialogues_"+f+".txt"), func(line string) {
			for _, u := range strings.Split(line, "__eou__") {
				add(strings.TrimSpace(u))
			}
		})
	}
	if len(lines) < 100000 {
		t.Fatalf("only %d distinct lines in the shared data sets; expected over 100000", len(lines))
	}
	return lines
}

func eachLine(t testing.TB, path string, fn func(string)) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		fn(strings.TrimSuffix(sc.Text(), "\r"))
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// csvColumn calls fn with every value of the named column of a CSV file
// with a header row.
func csvColumn(t testing.TB, path, column string, fn func(string)) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := csv.NewReader(f)
	r.FieldsPerRecord = -1
	header, err := r.Read()
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	col := -1
	for i, h := range header {
		if strings.TrimPrefix(h, "\uFEFF") == column {
			col = i
		}
	}
	if col < 0 {
		t.Fatalf("%s has no %q column: %q", path, column, header)
	}
	for {
		rec, err := r.Read()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if col < len(rec) {
			fn(rec[col])
		}
	}
}

// fixtureInputs are the 37 inputs of ../shared/fixtures/tokenizer-vectors,
// chosen by their authors as tokenizer edge cases.
func fixtureInputs(t testing.TB) []string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(testenv.Shared(t, "fixtures/tokenizer-vectors"), "models--THUDM--chatglm3-6b.json"))
	if err != nil {
		t.Fatal(err)
	}
	var f vectorFile
	if err := json.Unmarshal(data, &f); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, d := range f.Datasets {
		out = append(out, d.Input)
	}
	return out
}

// trickyLines exercise normalization, whitespace handling, byte fallback,
// the ChatGLM-6B preprocessing and GLM-4's pre-tokenizer.
func trickyLines() []string {
	lines := []string{
		" ", "  ", "\t", "\n", "\r\n", "a", " a", "a ", "  a  b  ", "a\u3000b\u00a0c",
		"Hello World", "I'M HERE, YOU'RE THERE, WE'VE, THEY'LL, SHE'D, HE'S, IT'S",
		"don'tʼs 'sfoo 'ſ 'ſt 'Ll", "123 4567 89012 ３４５ ٣٤٥ ½ Ⅻ ①②③",
		"ＡＢＣ full width ｶﾀｶﾅ ﬁﬂ ㍻ ™ ℃ …", "e\u0301 é Å Å", "\u200b\u200d\ufeff zero width",
		"中文测试，你好！生活的真谛是。", "日本語のテキスト、カタカナ。", "한국어 텍스트", "Ελληνικά Русский текст",
		"emoji 😀🙃🦙👍🏽👨‍👩‍👧 ❤️", "math ∑∫√∞ ≠ ≤ ≥", "tabs\tand\ttabs\t\t\tend\t",
		"newlines\n\nin\n\n\n\nthe middle\n", "\r\rcarriage\r\n\r\nreturns\r",
		"mixed \t\n \t\n whitespace  \n", "trailing spaces     ", "     leading spaces",
		"<n> <|tab|> <|blank_2|> <|blank_80|> <|blank_81|> [gMASK] <sop> <eop> [MASK] [sMASK]",
		"<s> </s> <unk> <pad> <0x0A> ▁ ▁▁ ▁x", "<|user|>hi<|assistant|>yo<|system|><|observation|>",
		"<|endoftext|>[gMASK]<sop><|begin_of_image|><|end_of_video|>", "sop eop [gMASK]sop",
		"\x01\x02\x7f control \u0085 nel \u2028 ls \u2029 ps", "\uFFFD replacement",
		strings.Repeat("ha", 300), strings.Repeat("😀", 50), strings.Repeat(" ", 200) + "x",
		"a" + strings.Repeat(" ", 79) + "b" + strings.Repeat(" ", 80) + "c" + strings.Repeat(" ", 81) + "d" + strings.Repeat(" ", 161) + "e",
	}
	for n := 1; n <= 170; n++ {
		lines = append(lines, "x"+strings.Repeat(" ", n)+"y", strings.Repeat(" ", n), "\t"+strings.Repeat(" ", n)+"\n")
	}
	return lines
}

// randomLines are strings drawn from an alphabet of characters in every
// class the tokenizers treat differently: a differential fuzz of
// normalization, pre-tokenization and merging. Deterministic.
func randomLines(n int) []string {
	alphabet := []string{
		" ", " ", " ", "\t", "\n", "\r", "\u00a0", "\u3000", "\u2028", "\u0085", "\v", "\f",
		"a", "b", "e", "s", "t", "r", "l", "d", "m", "v", "S", "T", "L", "ſ", "é", "ß", "İ",
		"0", "1", "7", "٣", "½", "Ⅻ", "３", "'", "’", "\"", "!", ".", ",", "?", "-", "_", "(", ")", "#",
		"中", "文", "日", "ｶ", "😀", "🦙", "\u0301", "\u200b", "ﬁ", "™", "<", ">", "|", "▁", "\uFFFD",
		"<n>", "<|tab|>", "[gMASK]", "<|user|>", "the", "ing", "ed", "n't", "'s",
	}
	rng := rand.New(rand.NewPCG(1, 2))
	out := make([]string, 0, n)
	for range n {
		var b strings.Builder
		for k := 1 + rng.IntN(24); k > 0; k-- {
			b.WriteString(alphabet[rng.IntN(len(alphabet))])
		}
		out = append(out, b.String())
	}
	return out
}

// longLines joins corpus lines into a few long texts, to check that long
// inputs tokenize the same (and fast).
func longLines(corpus []string) []string {
	var out []string
	for _, n := range []int{200, 2000} {
		out = append(out, strings.Join(corpus[:min(n, len(corpus))], " "))
	}
	out = append(out, strings.Join(corpus[:min(500, len(corpus))], "\n"))
	return out
}
