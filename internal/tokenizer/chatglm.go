package tokenizer

import (
	"fmt"
	"strconv"
	"strings"
)

// ChatGLM-6B's text preprocessing (THUDM's SPTokenizer): ice_text.model has
// pieces for a newline, a tab and runs of 2 to 80 spaces.
const (
	chatGLMNewline  = "<n>"
	chatGLMTab      = "<|tab|>"
	chatGLMBlank    = "<|blank_" // followed by the run length and "|>"
	chatGLMMaxBlank = 80
	// DefaultImageTokens is num_image_tokens of THUDM's ChatGLMTokenizer
	// when tokenizer_config.json does not set it: text ids are offset by
	// this many image-token ids. The current THUDM/chatglm-6b config sets
	// 0, which gives [gMASK] = 130001; the first release used 20000.
	DefaultImageTokens = 20000
)

// chatGLM6B is ChatGLM-6B's tokenizer (THUDM's ChatGLMTokenizer on
// ice_text.model).
type chatGLM6B struct {
	sp          *SentencePiece
	imageTokens int
	special     *specialTable
}

// chatGLM6BSpecial are the special tokens ChatGLMTokenizer names; they are
// pieces of ice_text.model.
func chatGLM6BSpecial() []string {
	return []string{"[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>"}
}

// NewChatGLM wraps ChatGLM-6B's ice_text.model. imageTokens is the
// tokenizer's num_image_tokens (0 for the current THUDM/chatglm-6b, see
// DefaultImageTokens).
func NewChatGLM(sp *SentencePiece, imageTokens int) (Tokenizer, error) {
	if imageTokens < 0 || imageTokens > maxVocab-sp.VocabSize() {
		return nil, fmt.Errorf("%w: chatglm-6b num_image_tokens %d is negative or makes more than %d ids", ErrCorrupt, imageTokens, maxVocab)
	}
	t := &chatGLM6B{sp: sp, imageTokens: imageTokens, special: newSpecialTable()}
	for _, name := range chatGLM6BSpecial() {
		id := sp.PieceToID(name)
		if id == sp.UnkID() {
			return nil, fmt.Errorf("%w: chatglm-6b vocabulary has no %s piece", ErrCorrupt, name)
		}
		t.special.add(name, id+imageTokens)
	}
	return t, nil
}

func (t *chatGLM6B) Family() Family { return ChatGLM }

func (t *chatGLM6B) VocabSize() int { return t.imageTokens + t.sp.VocabSize() }

func (t *chatGLM6B) SpecialID(name string) (int, bool) {
	id, ok := t.special.ids[name]
	return id, ok
}

func (t *chatGLM6B) Encode(text string) []int {
	ids := t.sp.Encode(chatGLMPreprocess(text))
	for i := range ids {
		ids[i] += t.imageTokens
	}
	return ids
}

// chatGLMPreprocess replaces newlines, tabs and runs of 2 to 80 spaces with
// ice_text.model's pieces for them. THUDM replaces runs longest first, so a
// run longer than 80 becomes <|blank_80|> pieces and then the remainder
// (a single leftover space stays a space).
func chatGLMPreprocess(text string) string {
	if !strings.ContainsAny(text, "\n\t ") {
		return text
	}
	var b strings.Builder
	b.Grow(len(text) + len(text)/4)
	for i := 0; i < len(text); {
		switch text[i] {
		case '\n':
			b.WriteString(chatGLMNewline)
			i++
		case '\t':
			b.WriteString(chatGLMTab)
			i++
		case ' ':
			run := 1
			for i+run < len(text) && text[i+run] == ' ' {
				run++
			}
			i += run
			for ; run >= chatGLMMaxBlank; run -= chatGLMMaxBlank {
				writeBlank(&b, chatGLMMaxBlank)
			}
			switch run {
			case 0:
			case 1:
				b.WriteByte(' ')
			default:
				writeBlank(&b, run)
			}
		default:
			b.WriteByte(text[i])
			i++
		}
	}
	return b.String()
}

func writeBlank(b *strings.Builder, n int) {
	b.WriteString(chatGLMBlank)
	b.WriteString(strconv.Itoa(n))
	b.WriteString("|>")
}

// chatGLMPostprocess undoes chatGLMPreprocess on decoded text. The three
// kinds of marker cannot overlap, so one left-to-right pass equals THUDM's
// successive str.replace calls.
func chatGLMPostprocess(text string) string {
	if !strings.Contains(text, "<") {
		return text
	}
	var b strings.Builder
	b.Grow(len(text))
	for i := 0; i < len(text); {
		rest := text[i:]
		switch {
		case strings.HasPrefix(rest, chatGLMNewline):
			b.WriteByte('\n')
			i += len(chatGLMNewline)
		case strings.HasPrefix(rest, chatGLMTab):
			b.WriteByte('\t')
			i += len(chatGLMTab)
		default:
			if n, size := parseBlank(rest); size > 0 {
				b.WriteString(strings.Repeat(" ", n))
				i += size
				continue
			}
			b.WriteByte(text[i])
			i++
		}
	}
	return b.String()
}

// parseBlank matches "<|blank_N|>" with N written as THUDM writes it (no
// leading zero, 2 <= N <= 80) at the start of s, returning N and the
// marker's length, or a length of 0.
func parseBlank(s string) (n, size int) {
	if !strings.HasPrefix(s, chatGLMBlank) {
		return 0, 0
	}
	digits := s[len(chatGLMBlank):]
	end := strings.Index(digits, "|>")
	if end < 1 || end > 2 || digits[0] == '0' {
		return 0, 0
	}
	n, err := strconv.Atoi(digits[:end])
	if err != nil || n < 2 || n > chatGLMMaxBlank {
		return 0, 0
	}
	return n, len(chatGLMBlank) + end + 2
}

// Decode drops image-token ids, as THUDM's SPTokenizer.decode does, and the
// special tokens, then decodes and undoes the preprocessing.
func (t *chatGLM6B) Decode(ids []int) (string, error) {
	text := make([]int, 0, len(ids))
	for _, id := range ids {
		if id >= t.imageTokens {
			text = append(text, id-t.imageTokens)
		}
	}
	var b strings.Builder
	err := t.sp.appendDecode(&b, text, func(id int) bool { return t.special.isID[id+t.imageTokens] })
	if err != nil {
		return "", fmt.Errorf("chatglm-6b decode: %w", err)
	}
	return chatGLMPostprocess(b.String()), nil
}

// BuildInputs appends [gMASK] <sop>: ChatGLM-6B puts its prefix tokens
// after the text.
func (t *chatGLM6B) BuildInputs(ids []int) []int {
	out := make([]int, 0, len(ids)+2)
	out = append(out, ids...)
	return append(out, t.special.id("[gMASK]"), t.special.id("<sop>"))
}

// ChatPrompt follows ChatGLM-6B's chat(): with no history the prompt is the
// query itself; the "[Round N]\n问：...\n答：" format only appears once
// there is history, which a single turn does not have.
func (t *chatGLM6B) ChatPrompt(query string) []int {
	return t.BuildInputs(t.Encode(query))
}

func (t *chatGLM6B) StopIDs() []int { return []int{t.special.id("<eop>")} }

// chatGLM23 is the tokenizer of ChatGLM2-6B and ChatGLM3-6B (THUDM's
// ChatGLMTokenizer on tokenizer.model): special tokens are numbered after
// the SentencePiece vocabulary.
type chatGLM23 struct {
	family        Family
	sp            *SentencePiece
	special       *specialTable
	encodeSpecial bool
	// bos, eos and pad (which THUDM sets to the unknown id) are
	// SentencePiece ids that the Hugging Face decode drops.
	bos, eos, pad int
}

// chatGLM2Special are ChatGLM2's special tokens in id order, starting at
// the SentencePiece vocabulary size (64789 for the real tokenizer.model,
// so [gMASK] = 64790 and sop = 64792).
func chatGLM2Special() []string {
	return []string{"[MASK]", "[gMASK]", "[sMASK]", "sop", "eop"}
}

// chatGLM3Roles follow chatGLM2Special in ChatGLM3's tokenizer, in this
// order (from memory of THUDM's role_special_tokens; it agrees with
// ChatGLM3's generation config, whose eos_token_id list is [2, 64795,
// 64797] = </s>, <|user|>, <|observation|>): <|system|> = 64794,
// <|user|> = 64795, <|assistant|> = 64796, <|observation|> = 64797.
func chatGLM3Roles() []string {
	return []string{"<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"}
}

// NewChatGLM2 wraps ChatGLM2-6B's tokenizer.model.
func NewChatGLM2(sp *SentencePiece) Tokenizer {
	return newChatGLM23(ChatGLM2, sp, false)
}

// NewChatGLM3 wraps ChatGLM3-6B's tokenizer.model. With encodeSpecial, role
// tokens written in the text are encoded as role tokens (THUDM's
// encode_special_tokens).
func NewChatGLM3(sp *SentencePiece, encodeSpecial bool) Tokenizer {
	return newChatGLM23(ChatGLM3, sp, encodeSpecial)
}

func newChatGLM23(family Family, sp *SentencePiece, encodeSpecial bool) *chatGLM23 {
	t := &chatGLM23{
		family: family, sp: sp, special: newSpecialTable(), encodeSpecial: encodeSpecial,
		bos: sp.BOSID(), eos: sp.EOSID(), pad: sp.UnkID(),
	}
	names := chatGLM2Special()
	if family == ChatGLM3 {
		names = append(names, chatGLM3Roles()...)
	}
	for i, name := range names {
		t.special.add(name, sp.VocabSize()+i)
	}
	return t
}

func (t *chatGLM23) Family() Family { return t.family }

func (t *chatGLM23) VocabSize() int { return t.sp.VocabSize() + len(t.special.names) }

// SpecialID also knows THUDM's get_command names for the SentencePiece
// ids: "<bos>", "<eos>", "<unk>" and "<pad>" (the last two both the
// unknown id).
func (t *chatGLM23) SpecialID(name string) (int, bool) {
	if id, ok := t.special.ids[name]; ok {
		return id, true
	}
	id := -1
	switch name {
	case "<bos>":
		id = t.bos
	case "<eos>":
		id = t.eos
	case "<unk>", "<pad>":
		id = t.pad
	}
	return id, id >= 0
}

func (t *chatGLM23) Encode(text string) []int {
	if !t.encodeSpecial || t.family != ChatGLM3 {
		return t.sp.Encode(text)
	}
	return encodeSplitting(text, chatGLM3Roles(), t.special, t.sp.appendEncode)
}

// encodeSplitting encodes text in which the given special-token names
// count as those tokens: each stretch between them is encoded on its own.
func encodeSplitting(text string, names []string, special *specialTable, encode func([]int, string) []int) []int {
	var ids []int
	for text != "" {
		at, name := -1, ""
		for _, n := range names {
			if i := strings.Index(text, n); i >= 0 && (at < 0 || i < at || (i == at && len(n) > len(name))) {
				at, name = i, n
			}
		}
		if at < 0 {
			return encode(ids, text)
		}
		if at > 0 {
			ids = encode(ids, text[:at])
		}
		ids = append(ids, special.id(name))
		text = text[at+len(name):]
	}
	return ids
}

// Decode decodes like the Hugging Face ChatGLMTokenizer: special tokens,
// <s>, </s> and the padding (= unknown) id become empty pieces.
func (t *chatGLM23) Decode(ids []int) (string, error) {
	var b strings.Builder
	err := t.sp.appendDecode(&b, ids, func(id int) bool {
		return t.special.isID[id] || id == t.bos || id == t.eos || id == t.pad
	})
	if err != nil {
		return "", fmt.Errorf("%s decode: %w", t.family, err)
	}
	return b.String(), nil
}

// BuildInputs prepends [gMASK] sop.
func (t *chatGLM23) BuildInputs(ids []int) []int {
	out := make([]int, 0, len(ids)+2)
	out = append(out, t.special.id("[gMASK]"), t.special.id("sop"))
	return append(out, ids...)
}

// ChatPrompt builds ChatGLM2's "[Round 1]\n\n问：{query}\n\n答：" prompt,
// or ChatGLM3's build_chat_input: <|user|>, the encoded metadata line
// ("" + "\n", encoded on its own), the encoded query, then <|assistant|>.
func (t *chatGLM23) ChatPrompt(query string) []int {
	if t.family == ChatGLM2 {
		return t.BuildInputs(t.sp.Encode("[Round 1]\n\n问：" + query + "\n\n答："))
	}
	ids := []int{t.special.id("<|user|>")}
	ids = t.sp.appendEncode(ids, "\n")
	ids = t.sp.appendEncode(ids, query)
	ids = append(ids, t.special.id("<|assistant|>"))
	return t.BuildInputs(ids)
}

func (t *chatGLM23) StopIDs() []int {
	if t.family == ChatGLM2 {
		return []int{t.eos}
	}
	return []int{t.eos, t.special.id("<|user|>"), t.special.id("<|observation|>")}
}
