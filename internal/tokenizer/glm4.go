package tokenizer

import (
	"fmt"
	"sort"
	"strconv"
)

// glm4Special are GLM-4's special tokens in id order, numbered from the end
// of the BPE vocabulary (151329 for the real tokenizer.model, so [gMASK] =
// 151331, <sop> = 151333, <|user|> = 151336, <|assistant|> = 151337).
func glm4Special() []string {
	return []string{
		"<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>",
		"<|system|>", "<|user|>", "<|assistant|>", "<|observation|>",
		"<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>", "<|end_of_video|>",
	}
}

// glm4 is GLM-4's tokenizer (THUDM's ChatGLM4Tokenizer).
type glm4 struct {
	bpe           *ByteBPE
	special       *specialTable
	encodeSpecial bool
	size          int
}

// NewGLM4 wraps GLM-4's tiktoken vocabulary. specialIDs gives the special
// tokens' ids, as tokenizer_config.json's added_tokens_decoder lists them;
// when it is nil they are numbered from the end of the vocabulary in the
// order of the real model. It must name at least [gMASK], <sop>, the four
// role tokens and <|endoftext|>. With encodeSpecial, special-token names
// written in the text are encoded as those tokens.
func NewGLM4(bpe *ByteBPE, specialIDs map[string]int, encodeSpecial bool) (Tokenizer, error) {
	t := &glm4{bpe: bpe, special: newSpecialTable(), encodeSpecial: encodeSpecial, size: bpe.VocabSize()}
	if specialIDs == nil {
		specialIDs = make(map[string]int)
		for i, name := range glm4Special() {
			specialIDs[name] = bpe.VocabSize() + i
		}
	}
	names := make([]string, 0, len(specialIDs))
	for name := range specialIDs {
		names = append(names, name)
	}
	sort.Slice(names, func(i, j int) bool { return specialIDs[names[i]] < specialIDs[names[j]] })
	for _, name := range names {
		id := specialIDs[name]
		if id < bpe.VocabSize() || id >= maxVocab || t.special.isID[id] {
			return nil, fmt.Errorf("%w: glm-4 special token %s has id %d, inside the vocabulary, reused or beyond %d", ErrCorrupt, name, id, maxVocab-1)
		}
		t.special.add(name, id)
		t.size = max(t.size, id+1)
	}
	for _, name := range []string{"<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"} {
		if _, ok := t.special.ids[name]; !ok {
			return nil, fmt.Errorf("%w: glm-4 special token %s is not defined", ErrCorrupt, name)
		}
	}
	return t, nil
}

func (t *glm4) Family() Family { return GLM4 }

func (t *glm4) VocabSize() int { return t.size }

func (t *glm4) SpecialID(name string) (int, bool) {
	id, ok := t.special.ids[name]
	return id, ok
}

func (t *glm4) Encode(text string) []int {
	if !t.encodeSpecial {
		return t.bpe.Encode(text)
	}
	return encodeSplitting(text, t.special.names, t.special, t.bpe.appendEncode)
}

// Decode drops special tokens (Hugging Face's skip_special_tokens) and
// decodes the remaining bytes with invalid UTF-8 replaced.
func (t *glm4) Decode(ids []int) (string, error) {
	text := make([]int, 0, len(ids))
	for _, id := range ids {
		if !t.special.isID[id] {
			text = append(text, id)
		}
	}
	s, err := t.bpe.Decode(text)
	if err != nil {
		return "", fmt.Errorf("glm-4 decode: %w", err)
	}
	return s, nil
}

// BuildInputs prepends [gMASK] <sop>.
func (t *glm4) BuildInputs(ids []int) []int {
	out := make([]int, 0, len(ids)+2)
	out = append(out, t.special.id("[gMASK]"), t.special.id("<sop>"))
	return append(out, ids...)
}

// ChatPrompt follows GLM-4's build_single_message: <|user|>, the encoded
// metadata line ("" + "\n", encoded on its own), the encoded query, then
// <|assistant|>.
func (t *glm4) ChatPrompt(query string) []int {
	ids := []int{t.special.id("<|user|>")}
	ids = t.bpe.appendEncode(ids, "\n")
	ids = t.bpe.appendEncode(ids, query)
	ids = append(ids, t.special.id("<|assistant|>"))
	return t.BuildInputs(ids)
}

func (t *glm4) StopIDs() []int {
	return []int{t.special.id("<|endoftext|>"), t.special.id("<|user|>"), t.special.id("<|observation|>")}
}

// glm4SpecialFromConfig extracts special-token ids from a
// tokenizer_config.json added_tokens_decoder ({"151329": {"content":
// "<|endoftext|>", ...}, ...}); nil when there is none.
func glm4SpecialFromConfig(decoder map[string]addedToken) (map[string]int, error) {
	if len(decoder) == 0 {
		return nil, nil
	}
	ids := make(map[string]int, len(decoder))
	for key, tok := range decoder {
		id, err := strconv.Atoi(key)
		if err != nil || id < 0 {
			return nil, fmt.Errorf("%w: added_tokens_decoder key %q is not an id", ErrCorrupt, key)
		}
		if tok.Content == "" {
			return nil, fmt.Errorf("%w: added_tokens_decoder %s has no content", ErrCorrupt, key)
		}
		ids[tok.Content] = id
	}
	return ids, nil
}
