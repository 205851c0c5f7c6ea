// Package prompt owns classification prompt templates: the instruction
// around a message, the label set, the conversation context placed before
// the message, and how a template becomes the token layout the engine
// scores (model.Prompt, and Input for the per-message tokens) for each
// model family's chat format. A template's Version hashes everything that
// changes the model's answer, so cached results of one template are never
// served for another.
package prompt

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/emoflow/emoflow/internal/model"
	"github.com/emoflow/emoflow/internal/tokenizer"
)

// Wrap says how a template's text is wrapped into the model's input.
type Wrap string

const (
	// WrapChat wraps the text in the family's single-turn chat format (the
	// format THUDM's ChatGLM2/3 and GLM-4 fine-tuning scripts train on).
	WrapChat Wrap = "chat"
	// WrapRaw only adds the family's special tokens ([gMASK] sop, or
	// [gMASK] <sop> after the text for ChatGLM-6B), as ChatGLM-6B's P-tuning
	// v2 scripts do.
	WrapRaw Wrap = "raw"
)

// Template is a classification prompt.
type Template struct {
	// Name is a human label such as "ekman-en-v1".
	Name string `json:"name"`
	// Text is the user turn; it must contain {text} exactly once (the
	// message) and may contain {labels} (the labels joined by ", ").
	Text string `json:"text"`
	// Labels are the answers, in the order results report them.
	Labels []string `json:"labels"`
	// Wrap is chat (default) or raw.
	Wrap Wrap `json:"wrap,omitempty"`
	// Language is the language of the messages the template is meant for
	// (BCP 47), informational.
	Language string `json:"language,omitempty"`
	// Context, when set, puts the previous messages of the message's
	// conversation into the prompt where Text has {context} (which must
	// come before {text}). Nil: messages are classified alone.
	Context *Context `json:"context,omitempty"`
}

// Default is the template used when none is configured: Ekman's six basic
// emotions plus neutral, the label space GoEmotions-ekman, MELD and
// DailyDialog share.
func Default() Template {
	return Template{
		Name:     "ekman-en-v1",
		Text:     "Classify the emotion of this chat message as one of: {labels}.\nMessage: {text}\nAnswer with one word.",
		Labels:   []string{"anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"},
		Wrap:     WrapChat,
		Language: "en",
	}
}

// Read loads a template from a JSON file.
func Read(path string) (Template, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return Template{}, fmt.Errorf("prompt template: %w", err)
	}
	var t Template
	if err := json.Unmarshal(raw, &t); err != nil {
		return Template{}, fmt.Errorf("prompt template %s: %w", path, err)
	}
	if err := t.Validate(); err != nil {
		return Template{}, fmt.Errorf("prompt template %s: %w", path, err)
	}
	return t, nil
}

// Errors of Validate.
var (
	ErrNoLabels       = errors.New("empty label set")
	ErrDuplicateLabel = errors.New("duplicate label")
)

// Validate checks the template's shape.
func (t Template) Validate() error {
	if strings.Count(t.Text, "{text}") != 1 {
		return fmt.Errorf("template text must contain {text} exactly once")
	}
	if len(t.Labels) == 0 {
		return ErrNoLabels
	}
	seen := map[string]bool{}
	for _, l := range t.Labels {
		if strings.TrimSpace(l) == "" {
			return fmt.Errorf("%w: an empty label", ErrNoLabels)
		}
		if seen[l] {
			return fmt.Errorf("%w %q", ErrDuplicateLabel, l)
		}
		seen[l] = true
	}
	switch t.Wrap {
	case "", WrapChat, WrapRaw:
	default:
		return fmt.Errorf("wrap must be chat or raw, got %q", t.Wrap)
	}
	return t.validateContext()
}

// Version is a short hash of everything in the template that changes the
// model's answers.
func (t Template) Version() string {
	h := sha256.New()
	wrap := t.Wrap
	if wrap == "" {
		wrap = WrapChat
	}
	fmt.Fprintf(h, "%q\x00%q\x00", t.Text, wrap)
	for _, l := range t.Labels {
		fmt.Fprintf(h, "%q\x00", l)
	}
	if t.Context != nil {
		c := t.Context.withDefaults()
		// Only context templates hash these, so the versions (and cache
		// keys) of templates without context are what they always were.
		fmt.Fprintf(h, "context\x00%d\x00%d\x00%q\x00", c.Messages, c.MaxTokens, c.Turn)
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// Compile tokenizes the template for tok's family. The message text goes
// between Prefix and Suffix; each label's answer is the family's assistant
// reply opening (a newline for ChatGLM3 and GLM-4 chat) and the label, and
// the reply ends with the family's end-of-turn token.
func (t Template) Compile(tok tokenizer.Tokenizer) (model.Prompt, error) {
	if err := t.Validate(); err != nil {
		return model.Prompt{}, err
	}
	text := strings.ReplaceAll(t.Text, "{labels}", strings.Join(t.Labels, ", "))
	before, after, _ := strings.Cut(text, "{text}")
	// With context, the prompt's shared prefix ends at {context}: what
	// follows it up to the message is per message (see Input).
	before, _, _ = strings.Cut(before, "{context}")
	pre, post, answerOpen, err := wrapTokens(tok, t.Wrap)
	if err != nil {
		return model.Prompt{}, err
	}
	p := model.Prompt{
		Prefix: tokenizer.Int64s(append(pre, tok.Encode(before)...)),
		Suffix: tokenizer.Int64s(append(tok.Encode(after), post...)),
		Stop:   -1,
	}
	if stops := tok.StopIDs(); len(stops) > 0 {
		p.Stop = int64(stops[0])
	}
	for _, l := range t.Labels {
		p.Labels = append(p.Labels, tokenizer.Int64s(append(append([]int{}, answerOpen...), tok.Encode(l)...)))
	}
	return p, nil
}

// wrapTokens are the tokens a family puts before and after the user turn,
// and at the start of the assistant's reply.
func wrapTokens(tok tokenizer.Tokenizer, wrap Wrap) (pre, post, answerOpen []int, err error) {
	special := func(names ...string) ([]int, error) {
		var out []int
		for _, n := range names {
			id, ok := tok.SpecialID(n)
			if !ok {
				return nil, fmt.Errorf("tokenizer of %s lacks special token %s", tok.Family(), n)
			}
			out = append(out, id)
		}
		return out, nil
	}
	fam := tok.Family()
	if wrap == WrapRaw {
		// BuildInputs of an empty text shows where the family's special
		// tokens go: before the text, or after it (ChatGLM-6B).
		marks := tok.BuildInputs(nil)
		if fam == tokenizer.ChatGLM {
			return nil, marks, nil, nil
		}
		return marks, nil, nil, nil
	}
	switch fam {
	case tokenizer.ChatGLM3:
		pre, err = special("[gMASK]", "sop", "<|user|>")
		if err != nil {
			return nil, nil, nil, err
		}
		post, err = special("<|assistant|>")
		return append(pre, tok.Encode("\n")...), post, tok.Encode("\n"), err
	case tokenizer.GLM4:
		pre, err = special("[gMASK]", "<sop>", "<|user|>")
		if err != nil {
			return nil, nil, nil, err
		}
		post, err = special("<|assistant|>")
		return append(pre, tok.Encode("\n")...), post, tok.Encode("\n"), err
	case tokenizer.ChatGLM2:
		pre, err = special("[gMASK]", "sop")
		return append(pre, tok.Encode("[Round 1]\n\n问：")...), tok.Encode("\n\n答："), nil, err
	case tokenizer.ChatGLM:
		// ChatGLM-6B's chat() sends a first turn bare; "[Round N]" framing
		// only appears with history.
		post, err = special("[gMASK]", "<sop>")
		return nil, post, nil, err
	}
	return nil, nil, nil, fmt.Errorf("no chat format for tokenizer family %q", fam)
}
