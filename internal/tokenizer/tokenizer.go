package tokenizer

// Family names a generation of the ChatGLM family. The family fixes the
// tokenizer file format, the special tokens and the prompt format.
type Family string

// The families this package tokenizes for.
const (
	ChatGLM  Family = "chatglm-6b"  // ChatGLM-6B: ice_text.model (SentencePiece) with text preprocessing
	ChatGLM2 Family = "chatglm2-6b" // ChatGLM2-6B: tokenizer.model (SentencePiece BPE)
	ChatGLM3 Family = "chatglm3-6b" // ChatGLM3-6B: ChatGLM2's vocabulary plus role tokens
	GLM4     Family = "glm-4"       // GLM-4-9B: tokenizer.model in tiktoken format
)

// Tokenizer turns text into the token ids of one model family and back.
// Implementations are immutable and safe for concurrent use.
type Tokenizer interface {
	// Family is the model family.
	Family() Family
	// Encode tokenizes text without adding any special token, like the
	// family's own tokenizer.encode(text, add_special_tokens=False).
	// Special-token names inside text are ordinary text unless
	// Options.EncodeSpecialTokens is set.
	Encode(text string) []int
	// Decode turns ids back into text, dropping the family's special tokens
	// (mask, sop/eop, role tokens) and SentencePiece control pieces. An id
	// outside the vocabulary is an error wrapping ErrInvalidID.
	Decode(ids []int) (string, error)
	// VocabSize is one more than the largest id the tokenizer produces: the
	// text vocabulary plus the special tokens. Model embedding tables are
	// often padded beyond it.
	VocabSize() int
	// SpecialID returns the id of a special token by the family's own
	// name for it, such as "[gMASK]", "sop" (ChatGLM2/3), "<sop>"
	// (ChatGLM-6B, GLM-4) or "<|user|>".
	SpecialID(name string) (int, bool)
	// BuildInputs adds the special tokens the model expects around encoded
	// text, as build_inputs_with_special_tokens does: [gMASK] and sop
	// before it (ChatGLM2/3, GLM-4) or after it (ChatGLM-6B).
	BuildInputs(ids []int) []int
	// ChatPrompt returns the model input for a single user turn followed by
	// the start of the assistant's reply, as the family's chat code builds
	// it.
	ChatPrompt(query string) []int
	// StopIDs are the ids that end the assistant's reply during generation
	// (the eos_token_id list of the family's generation config).
	StopIDs() []int
}

// Options change how a tokenizer is loaded.
type Options struct {
	// Family forces the family instead of detecting it from the folder.
	Family Family
	// EncodeSpecialTokens makes Encode turn special-token names found in
	// the text into their ids: the role tokens for ChatGLM3 (its
	// encode_special_tokens option) and every special token for GLM-4 (as
	// Hugging Face does for added tokens). Leave it off for user-supplied
	// text, so that nobody can inject a role token. ChatGLM-6B recognizes
	// its special tokens as vocabulary pieces regardless; ChatGLM2 never
	// does.
	EncodeSpecialTokens bool
}

// maxVocab bounds a vocabulary: every id, special tokens' included, fits an
// int32, as in every model's embedding table. It keeps ids that a
// configuration file sets (GLM-4's added tokens, ChatGLM-6B's image tokens)
// from overflowing.
const maxVocab = 1<<31 - 1

// specialTable is a name-to-id table of special tokens.
type specialTable struct {
	names []string // in id order
	ids   map[string]int
	isID  map[int]bool
}

func newSpecialTable() *specialTable {
	return &specialTable{ids: make(map[string]int), isID: make(map[int]bool)}
}

func (t *specialTable) add(name string, id int) {
	t.names = append(t.names, name)
	t.ids[name] = id
	t.isID[id] = true
}

// id returns the id of a special token the caller knows is present.
func (t *specialTable) id(name string) int { return t.ids[name] }

// Int64s converts token ids to the int64 ids the engine takes.
func Int64s(ids []int) []int64 {
	out := make([]int64, len(ids))
	for i, id := range ids {
		out[i] = int64(id)
	}
	return out
}
