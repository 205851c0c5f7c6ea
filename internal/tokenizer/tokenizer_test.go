package tokenizer

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

func TestChatGLMPreprocess(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"plain", "plain"},
		{"a b", "a b"},
		{"a\nb", "a<n>b"},
		{"\t\tx", "<|tab|><|tab|>x"},
		{"a  b", "a<|blank_2|>b"},
		{"a \n  \t   ", "a <n><|blank_2|><|tab|><|blank_3|>"},
		{"x" + strings.Repeat(" ", 80) + "y", "x<|blank_80|>y"},
		{"x" + strings.Repeat(" ", 81) + "y", "x<|blank_80|> y"},
		{"x" + strings.Repeat(" ", 82), "x<|blank_80|><|blank_2|>"},
		{strings.Repeat(" ", 161), "<|blank_80|><|blank_80|> "},
		{"<|blank_5|> stays", "<|blank_5|> stays"},
	} {
		if got := chatGLMPreprocess(c.in); got != c.want {
			t.Errorf("chatGLMPreprocess(%q) = %q, want %q", c.in, got, c.want)
		}
	}
	for _, c := range []struct{ in, want string }{
		{"a<n>b<|tab|>c<|blank_2|>d<|blank_80|>e", "a\nb\tc  d" + strings.Repeat(" ", 80) + "e"},
		{"<|blank_1|><|blank_81|><|blank_02|><|blank_|><|blank_7", "<|blank_1|><|blank_81|><|blank_02|><|blank_|><|blank_7"},
		{"<<n>n>", "<\nn>"},
		{"no markers", "no markers"},
	} {
		if got := chatGLMPostprocess(c.in); got != c.want {
			t.Errorf("chatGLMPostprocess(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

// chatGLM6BModel is a hand model laid out like ice_text.model: <n>, the tab
// and blank pieces are user-defined, and [MASK] [gMASK] [sMASK] <unused_0>
// <sop> <eop> sit at 130000..130005.
func chatGLM6BModel() *handModel {
	m := newHandModel(false, true)
	m.add("<n>", 0, pieceUserDefined)
	m.add("<|tab|>", 0, pieceUserDefined)
	for n := 2; n <= chatGLMMaxBlank; n++ {
		m.add("<|blank_"+strconv.Itoa(n)+"|>", 0, pieceUserDefined)
	}
	m.normal("\u2581", "\u2581hi", "h", "i")
	m.padTo(130000)
	for _, s := range []string{"[MASK]", "[gMASK]", "[sMASK]", "<unused_0>", "<sop>", "<eop>"} {
		m.add(s, 0, pieceUserDefined)
	}
	return m
}

func TestChatGLM6BSpecialTokensAndPrompt(t *testing.T) {
	sp := mustParse(t, chatGLM6BModel())
	tok, err := NewChatGLM(sp, 0) // the current THUDM/chatglm-6b: num_image_tokens 0
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]int{"[MASK]": 130000, "[gMASK]": 130001, "[sMASK]": 130002, "<sop>": 130004, "<eop>": 130005} {
		if got, ok := tok.SpecialID(name); !ok || got != want {
			t.Errorf("SpecialID(%s) = %d, %v; want %d", name, got, ok, want)
		}
	}
	if _, ok := tok.SpecialID("sop"); ok {
		t.Error(`ChatGLM-6B has no "sop" (that is ChatGLM2's name)`)
	}
	hi := sp.PieceToID("\u2581hi")
	newline := sp.PieceToID("<n>")
	blank3 := sp.PieceToID("<|blank_3|>")
	if got, want := tok.Encode("hi\nhi   hi"), []int{hi, newline, sp.PieceToID("h"), sp.PieceToID("i"), blank3, sp.PieceToID("h"), sp.PieceToID("i")}; !slices.Equal(got, want) {
		t.Errorf("Encode = %v, want %v", got, want)
	}
	// ChatGLM-6B appends its prefix tokens; a single turn is the bare query.
	if got, want := tok.ChatPrompt("hi"), []int{hi, 130001, 130004}; !slices.Equal(got, want) {
		t.Errorf("ChatPrompt(hi) = %v, want %v", got, want)
	}
	if got, want := tok.StopIDs(), []int{130005}; !slices.Equal(got, want) {
		t.Errorf("StopIDs = %v, want %v", got, want)
	}
	if got, err := tok.Decode([]int{hi, newline, 130001, blank3, hi, 130004}); err != nil || got != "hi\n    hi" {
		t.Errorf("Decode = %q, %v", got, err)
	}
	if tok.VocabSize() != 130006 {
		t.Errorf("VocabSize = %d, want 130006", tok.VocabSize())
	}

	// The first release offset text ids by 20000 image tokens.
	old, err := NewChatGLM(sp, DefaultImageTokens)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := old.ChatPrompt("hi"), []int{hi + 20000, 150001, 150004}; !slices.Equal(got, want) {
		t.Errorf("ChatPrompt with image tokens = %v, want %v", got, want)
	}
	if got, err := old.Decode([]int{5, hi + 20000, 19999}); err != nil || got != "hi" {
		t.Errorf("Decode drops image tokens: %q, %v", got, err)
	}

	bare := newHandModel(false, false)
	bare.normal("\u2581")
	if _, err := NewChatGLM(mustParse(t, bare), 0); !errors.Is(err, ErrCorrupt) {
		t.Errorf("NewChatGLM without [gMASK]: %v, want ErrCorrupt", err)
	}
}

// chatGLM2Model is a hand model with ChatGLM2/3's layout: <unk> <s> </s>,
// the 256 byte pieces at 3..258 and 64789 pieces in all.
func chatGLM2Model() (*handModel, map[string]int) {
	m := newHandModel(true, true)
	ids := map[string]int{}
	// BPE reaches a piece only through pieces: "▁hi" needs "▁h".
	for _, p := range []string{"\u2581", "h", "i", "[", "\u2581h", "\u2581hi", "\u2581["} {
		ids[p] = m.normal(p)[0]
	}
	m.padTo(64789)
	return m, ids
}

func TestChatGLM2And3SpecialTokensAndPrompt(t *testing.T) {
	m, p := chatGLM2Model()
	sp := mustParse(t, m)
	glm2, glm3 := NewChatGLM2(sp), NewChatGLM3(sp, false)
	// The ids of the real files: [gMASK] = 64790 and sop = 64792 as in
	// ../shared/fixtures/tokenizer-vectors, roles as in ChatGLM3's
	// generation config (eos_token_id [2, 64795, 64797]).
	want := map[string]int{"[MASK]": 64789, "[gMASK]": 64790, "[sMASK]": 64791, "sop": 64792, "eop": 64793,
		"<|system|>": 64794, "<|user|>": 64795, "<|assistant|>": 64796, "<|observation|>": 64797,
		"<bos>": 1, "<eos>": 2, "<unk>": 0, "<pad>": 0}
	for name, id := range want {
		if got, ok := glm3.SpecialID(name); !ok || got != id {
			t.Errorf("chatglm3 SpecialID(%s) = %d, %v; want %d", name, got, ok, id)
		}
		got, ok := glm2.SpecialID(name)
		if isRole := strings.HasPrefix(name, "<|"); ok == isRole || (ok && got != id) {
			t.Errorf("chatglm2 SpecialID(%s) = %d, %v", name, got, ok)
		}
	}
	if glm2.VocabSize() != 64794 || glm3.VocabSize() != 64798 {
		t.Errorf("VocabSize = %d, %d; want 64794, 64798", glm2.VocabSize(), glm3.VocabSize())
	}

	nl := []int{p["\u2581"], 3 + '\n'} // "\n" alone encodes as ▁ <0x0A>, as in the real file (30910, 13)
	if got := glm3.Encode("\n"); !slices.Equal(got, nl) {
		t.Errorf(`Encode("\n") = %v, want %v`, got, nl)
	}
	chat3 := slices.Concat([]int{64790, 64792, 64795}, nl, []int{p["\u2581hi"], 64796})
	if got := glm3.ChatPrompt("hi"); !slices.Equal(got, chat3) {
		t.Errorf("chatglm3 ChatPrompt(hi) = %v, want %v", got, chat3)
	}
	chat2 := slices.Concat([]int{64790, 64792}, glm2.Encode("[Round 1]\n\n问：hi\n\n答："))
	if got := glm2.ChatPrompt("hi"); !slices.Equal(got, chat2) {
		t.Errorf("chatglm2 ChatPrompt(hi) = %v, want %v", got, chat2)
	}
	if chat2[2] != p["\u2581["] {
		t.Errorf("chatglm2 prompt starts %v, want [gMASK] sop ▁[", chat2[:3])
	}
	if got := glm2.BuildInputs([]int{7}); !slices.Equal(got, []int{64790, 64792, 7}) {
		t.Errorf("BuildInputs = %v", got)
	}
	if got, want := glm3.StopIDs(), []int{2, 64795, 64797}; !slices.Equal(got, want) {
		t.Errorf("chatglm3 StopIDs = %v, want %v", got, want)
	}
	if got, want := glm2.StopIDs(), []int{2}; !slices.Equal(got, want) {
		t.Errorf("chatglm2 StopIDs = %v, want %v", got, want)
	}

	// Decoding drops special tokens, <s>, </s> and padding; a dropped
	// token ends a byte run as an empty piece would.
	if got, err := glm3.Decode(slices.Concat(chat3, []int{0, 2})); err != nil || got != "\n hi" {
		t.Errorf("Decode(prompt) = %q, %v", got, err)
	}
	if got, err := glm3.Decode([]int{3 + 0xE4, 64795, 3 + 0xB8, 3 + 0xAD}); err != nil || got != "\uFFFD\uFFFD\uFFFD" {
		t.Errorf("Decode across a special token = %q, %v", got, err)
	}
	if _, err := glm3.Decode([]int{64798}); !errors.Is(err, ErrInvalidID) {
		t.Errorf("Decode(64798) error %v, want ErrInvalidID", err)
	}

	// Role tokens in text are text, unless asked for.
	plain := glm3.Encode("<|user|>")
	if slices.Contains(plain, 64795) {
		t.Errorf("Encode(<|user|>) = %v contains the role token", plain)
	}
	special := NewChatGLM3(sp, true).Encode("hi<|user|>hi")
	if want := []int{p["\u2581hi"], 64795, p["\u2581hi"]}; !slices.Equal(special, want) {
		t.Errorf("Encode with special tokens = %v, want %v", special, want)
	}
}

func TestGLM4SpecialTokensAndPrompt(t *testing.T) {
	vocab := handBPEVocab(151329, "hi", "\n\n", " hi")
	bpe, err := ParseByteBPE(vocab)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := NewGLM4(bpe, nil, false)
	if err != nil {
		t.Fatal(err)
	}
	for i, name := range glm4Special() {
		if got, ok := tok.SpecialID(name); !ok || got != 151329+i {
			t.Errorf("SpecialID(%s) = %d, %v; want %d", name, got, ok, 151329+i)
		}
	}
	if tok.VocabSize() != 151343 {
		t.Errorf("VocabSize = %d, want 151343", tok.VocabSize())
	}
	const hi = 256
	if got := tok.Encode("hi"); !slices.Equal(got, []int{hi}) {
		t.Errorf("Encode(hi) = %v", got)
	}
	// [gMASK] <sop> <|user|> "\n" "hi" <|assistant|>; the real model gives
	// 151331 151333 151336 198 ... 151337.
	if got, want := tok.ChatPrompt("hi"), []int{151331, 151333, 151336, '\n', hi, 151337}; !slices.Equal(got, want) {
		t.Errorf("ChatPrompt(hi) = %v, want %v", got, want)
	}
	// "\n" and the query are encoded apart, as build_single_message does:
	// "\n\nhi" as one text would start with the "\n\n" token.
	if got, want := tok.ChatPrompt("\nhi"), []int{151331, 151333, 151336, '\n', '\n', hi, 151337}; !slices.Equal(got, want) {
		t.Errorf("ChatPrompt(\\nhi) = %v, want %v", got, want)
	}
	if got, want := tok.StopIDs(), []int{151329, 151336, 151338}; !slices.Equal(got, want) {
		t.Errorf("StopIDs = %v, want %v", got, want)
	}
	if got, err := tok.Decode([]int{151331, hi, 151337, 0xE4, 0xB8}); err != nil || got != "hi\uFFFD" {
		t.Errorf("Decode = %q, %v (special tokens dropped, a truncated character is one U+FFFD)", got, err)
	}
	if got := tok.Encode("<|user|>"); slices.Contains(got, 151336) {
		t.Errorf("Encode(<|user|>) = %v contains the role token", got)
	}
	withSpecial, err := NewGLM4(bpe, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := withSpecial.Encode("hi<|user|> hi"), []int{hi, 151336, 256 + 2}; !slices.Equal(got, want) {
		t.Errorf("Encode with special tokens = %v, want %v", got, want)
	}

	if _, err := NewGLM4(bpe, map[string]int{"[gMASK]": 5}, false); !errors.Is(err, ErrCorrupt) {
		t.Errorf("special id inside the vocabulary: %v, want ErrCorrupt", err)
	}
	if _, err := NewGLM4(bpe, map[string]int{"[gMASK]": 151331}, false); !errors.Is(err, ErrCorrupt) {
		t.Errorf("missing <sop>: %v, want ErrCorrupt", err)
	}
}

func TestParseByteBPEErrors(t *testing.T) {
	for _, c := range []struct {
		name, data string
	}{
		{"one field", "aGk=\n"},
		{"bad base64", "!!!! 0\n"},
		{"bad rank", "aGk= x\n"},
		{"gap in ranks", string(handBPEVocab(256)) + "aGk= 300\n"},
		{"rank twice", string(handBPEVocab(256)) + "aGk= 3\n"},
		{"token twice", string(handBPEVocab(256)) + "AA== 256\n"},
		{"missing byte", strings.SplitN(string(handBPEVocab(256)), "\n", 2)[1]},
	} {
		if _, err := ParseByteBPE([]byte(c.data)); !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: error %v, want ErrCorrupt", c.name, err)
		}
	}
	if _, err := ParseByteBPE(handBPEVocab(256)); err != nil {
		t.Errorf("valid vocabulary: %v", err)
	}
}

func TestDecodeUTF8LikePython(t *testing.T) {
	// Expected values are what CPython's bytes.decode("utf-8", "replace")
	// returns.
	for _, c := range []struct{ in, want string }{
		{"\xe4\xb8\xad", "中"},
		{"\xe4\xb8", "\uFFFD"},
		{"\xf0\x9f\x98", "\uFFFD"},
		{"\xf0\x9f\x98a", "\uFFFDa"},
		{"\xed\xa0\x80", "\uFFFD\uFFFD\uFFFD"}, // a surrogate
		{"\xc0\xaf", "\uFFFD\uFFFD"},           // overlong
		{"\xf4\x90\x80\x80", "\uFFFD\uFFFD\uFFFD\uFFFD"},
		{"\xe0\x80", "\uFFFD\uFFFD"},
		{"a\xffb", "a\uFFFDb"},
	} {
		if got := decodeUTF8Replace([]byte(c.in)); got != c.want {
			t.Errorf("decodeUTF8Replace(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestGLM4PreTokenizer(t *testing.T) {
	for _, c := range []struct {
		in   string
		want []string
	}{
		{"Hello world", []string{"Hello", " world"}},
		{"I'M here, they'll've", []string{"I", "'M", " here", ",", " they", "'ll", "'ve"}},
		{"'sup 'ſ x'ſt", []string{"'s", "up", " '", "ſ", " x", "'ſ", "t"}},
		{"1234567", []string{"123", "456", "7"}},
		{"a  b", []string{"a", " ", " b"}},
		{"a\n\n  b", []string{"a", "\n\n", " ", " b"}},
		{"x \t\n y", []string{"x", " \t\n", " y"}},
		{"end   ", []string{"end", "   "}},
		{"...hi!!\n\n", []string{"...", "hi", "!!\n\n"}},
		{" ?? 7", []string{" ??", " ", "7"}},
		{"(abc)", []string{"(abc", ")"}},
		{"中文，测试", []string{"中文", "，测试"}},
	} {
		var got []string
		for s := c.in; s != ""; {
			n := glm4PieceLen(s)
			got = append(got, s[:n])
			s = s[n:]
		}
		if !slices.Equal(got, c.want) {
			t.Errorf("pieces of %q = %q, want %q", c.in, got, c.want)
		}
	}
}

func TestLoad(t *testing.T) {
	spModel, _ := chatGLM2Model()
	spData := spModel.bytes()
	iceData := chatGLM6BModel().bytes()
	glm4Data := handBPEVocab(300)
	write := func(t *testing.T, files map[string][]byte) string {
		dir := t.TempDir()
		for name, data := range files {
			if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	for _, c := range []struct {
		name  string
		files map[string][]byte
		opts  Options
		want  Family
		check func(t *testing.T, tok Tokenizer)
	}{
		{"chatglm-6b with its config", map[string][]byte{"ice_text.model": iceData, "tokenizer_config.json": []byte(`{"num_image_tokens": 0}`)}, Options{}, ChatGLM,
			func(t *testing.T, tok Tokenizer) { wantSpecial(t, tok, "[gMASK]", 130001) }},
		{"chatglm-6b default image tokens", map[string][]byte{"ice_text.model": iceData}, Options{}, ChatGLM,
			func(t *testing.T, tok Tokenizer) { wantSpecial(t, tok, "[gMASK]", 150001) }},
		{"chatglm3 by name", map[string][]byte{"tokenizer.model": spData, "tokenizer_config.json": []byte(`{"name_or_path": "THUDM/chatglm3-6b-base"}`)}, Options{}, ChatGLM3, nil},
		{"chatglm2 by name", map[string][]byte{"tokenizer.model": spData, "tokenizer_config.json": []byte(`{"_name_or_path": "THUDM/chatglm2-6b"}`)}, Options{}, ChatGLM2, nil},
		{"chatglm3 by code", map[string][]byte{"tokenizer.model": spData, "tokenization_chatglm.py": []byte(`role_special_tokens = ["<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"]`)}, Options{}, ChatGLM3, nil},
		{"chatglm2 by code", map[string][]byte{"tokenizer.model": spData, "tokenization_chatglm.py": []byte(`special_tokens = ["[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"]`)}, Options{}, ChatGLM2, nil},
		{"forced family", map[string][]byte{"tokenizer.model": spData}, Options{Family: ChatGLM3, EncodeSpecialTokens: true}, ChatGLM3,
			func(t *testing.T, tok Tokenizer) {
				if got := tok.Encode("<|user|>"); !slices.Equal(got, []int{64795}) {
					t.Errorf("EncodeSpecialTokens not applied: %v", got)
				}
			}},
		{"glm-4", map[string][]byte{"tokenizer.model": glm4Data}, Options{}, GLM4,
			func(t *testing.T, tok Tokenizer) { wantSpecial(t, tok, "[gMASK]", 302) }},
		{"glm-4 with added tokens", map[string][]byte{"tokenizer.model": glm4Data, "tokenizer_config.json": []byte(`{"added_tokens_decoder": {
			"400": {"content": "<|endoftext|>"}, "402": {"content": "[gMASK]"}, "404": {"content": "<sop>"}, "406": {"content": "<|system|>"},
			"407": {"content": "<|user|>"}, "408": {"content": "<|assistant|>"}, "409": {"content": "<|observation|>"}}}`)}, Options{}, GLM4,
			func(t *testing.T, tok Tokenizer) {
				wantSpecial(t, tok, "[gMASK]", 402)
				if tok.VocabSize() != 410 {
					t.Errorf("VocabSize = %d, want 410", tok.VocabSize())
				}
			}},
	} {
		t.Run(c.name, func(t *testing.T) {
			tok, err := Load(write(t, c.files), c.opts)
			if err != nil {
				t.Fatal(err)
			}
			if tok.Family() != c.want {
				t.Fatalf("Family = %s, want %s", tok.Family(), c.want)
			}
			if c.check != nil {
				c.check(t, tok)
			}
		})
	}

	for _, c := range []struct {
		name  string
		files map[string][]byte
		opts  Options
		want  error
	}{
		{"empty folder", nil, Options{}, ErrNoTokenizer},
		{"chatglm2 or 3", map[string][]byte{"tokenizer.model": spData}, Options{}, ErrUnknownFamily},
		{"truncated", map[string][]byte{"tokenizer.model": spData[:len(spData)/2], "tokenizer_config.json": []byte(`{"name_or_path": "chatglm3"}`)}, Options{}, ErrTruncated},
		{"bad config", map[string][]byte{"tokenizer.model": spData, "tokenizer_config.json": []byte(`{`)}, Options{}, ErrCorrupt},
		{"tiktoken forced to chatglm3", map[string][]byte{"tokenizer.model": glm4Data}, Options{Family: ChatGLM3}, ErrUnsupported},
		{"sentencepiece forced to glm-4", map[string][]byte{"tokenizer.model": spData}, Options{Family: GLM4}, ErrUnsupported},
		{"bad added tokens", map[string][]byte{"tokenizer.model": glm4Data, "tokenizer_config.json": []byte(`{"added_tokens_decoder": {"x": {"content": "[gMASK]"}}}`)}, Options{}, ErrCorrupt},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Load(write(t, c.files), c.opts)
			var fe *FileError
			if !errors.Is(err, c.want) || !errors.As(err, &fe) {
				t.Errorf("error %v, want a *FileError wrapping %v", err, c.want)
			}
		})
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing"), Options{}); !errors.Is(err, ErrNoTokenizer) {
		t.Errorf("missing folder: %v, want ErrNoTokenizer", err)
	}
}

func wantSpecial(t *testing.T, tok Tokenizer, name string, want int) {
	t.Helper()
	if got, ok := tok.SpecialID(name); !ok || got != want {
		t.Errorf("SpecialID(%s) = %d, %v; want %d", name, got, ok, want)
	}
}
