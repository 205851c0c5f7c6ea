package prompt

import (
	"fmt"
	"strings"

	"github.com/emoflow/emoflow/internal/classifyapi"
	"github.com/emoflow/emoflow/internal/tokenizer"
)

// Context says how the previous messages of a conversation go into a
// template's prompt. The same rules build the prompt on the live stream,
// in replays, in offline evaluation and in training (see Input), so a
// message gets the same prompt wherever it is classified.
type Context struct {
	// Messages is the most previous messages put before the message (k),
	// oldest first. Callers may send more; only the last Messages count.
	Messages int `json:"messages"`
	// MaxTokens is the context's token budget. Messages are taken from the
	// newest back while they fit; the first one that does not fit ends the
	// context (a window is never gappy), so a previous message longer
	// than the budget alone leaves the context empty. Default 256.
	MaxTokens int `json:"max_tokens,omitempty"`
	// Turn formats one previous message, with {role} (its speaker role)
	// and {text}. Default "{role}: {text}\n".
	Turn string `json:"turn,omitempty"`
}

// Context limits.
const (
	MaxContextMessages = classifyapi.MaxContextTurns
	defaultContextTurn = "{role}: {text}\n"
	defaultContextSize = 256
)

// withDefaults fills the defaults in, so that a template that spells them
// out and one that leaves them to us are the same template.
func (c Context) withDefaults() Context {
	if c.MaxTokens == 0 {
		c.MaxTokens = defaultContextSize
	}
	if c.Turn == "" {
		c.Turn = defaultContextTurn
	}
	return c
}

// Turn is a previous message of the conversation.
type Turn struct {
	Role string `json:"role"`
	Text string `json:"text"`
}

// validateContext checks {context} against Context.
func (t Template) validateContext() error {
	n := strings.Count(t.Text, "{context}")
	if t.Context == nil {
		if n > 0 {
			return fmt.Errorf("template text has {context} but no context settings")
		}
		return nil
	}
	c := t.Context
	switch {
	case n != 1:
		return fmt.Errorf("a context template's text must contain {context} exactly once")
	case strings.Index(t.Text, "{context}") > strings.Index(t.Text, "{text}"):
		return fmt.Errorf("{context} must come before {text}")
	case c.Messages < 1 || c.Messages > MaxContextMessages:
		return fmt.Errorf("context messages must be 1-%d, got %d", MaxContextMessages, c.Messages)
	case c.MaxTokens < 0 || c.MaxTokens > 4096:
		return fmt.Errorf("context max_tokens must be 0 (default %d) to 4096, got %d", defaultContextSize, c.MaxTokens)
	case c.Turn != "" && strings.Count(c.Turn, "{text}") != 1:
		return fmt.Errorf("context turn format must contain {text} exactly once")
	}
	return nil
}

// WithContext returns t with a context of k previous messages placed
// before its message line (t's text must start the message on a line of
// its own, "...\nMessage: {text}"), or t itself for k = 0.
func (t Template) WithContext(k int) Template {
	if k == 0 {
		return t
	}
	c := t
	c.Name = fmt.Sprintf("%s-ctx%d", t.Name, k)
	c.Context = &Context{Messages: k}
	if i := strings.LastIndex(t.Text[:max(strings.Index(t.Text, "{text}"), 0)], "\n"); i >= 0 {
		c.Text = t.Text[:i+1] + "{context}" + t.Text[i+1:]
	} else {
		c.Text = "{context}" + t.Text
	}
	return c
}

// Input builds, for one message, the tokens that go between its prompt's
// Prefix and Suffix: the context turns that fit, the template's text
// between {context} and {text}, and the message (cut to the text limit).
type Input struct {
	tok tokenizer.Tokenizer
	// ctx is nil for templates without context.
	ctx *Context
	// mid is the template text between {context} and {text}, tokenized.
	mid     []int64
	maxText int
}

// Input prepares t's per-message tokens for tok; a message's text keeps
// at most maxTextTokens tokens.
func (t Template) Input(tok tokenizer.Tokenizer, maxTextTokens int) (Input, error) {
	if err := t.Validate(); err != nil {
		return Input{}, err
	}
	if maxTextTokens <= 0 {
		return Input{}, fmt.Errorf("text limit must be positive, got %d", maxTextTokens)
	}
	in := Input{tok: tok, maxText: maxTextTokens}
	if t.Context != nil {
		c := t.Context.withDefaults()
		in.ctx = &c
		text := strings.ReplaceAll(t.Text, "{labels}", strings.Join(t.Labels, ", "))
		_, rest, _ := strings.Cut(text, "{context}")
		mid, _, _ := strings.Cut(rest, "{text}")
		in.mid = tokenizer.Int64s(tok.Encode(mid))
	}
	return in, nil
}

// ContextMessages is k, the most previous messages the template uses (0
// for templates without context).
func (in Input) ContextMessages() int {
	if in.ctx == nil {
		return 0
	}
	return in.ctx.Messages
}

// MaxTokens bounds the length of what Tokens returns.
func (in Input) MaxTokens() int {
	if in.ctx == nil {
		return in.maxText
	}
	return in.ctx.MaxTokens + len(in.mid) + in.maxText
}

// Tokens returns the message's tokens with the last of turns (the
// conversation's previous messages, oldest first) as its context, how
// many turns it used, and whether the text was cut. Templates without
// context ignore turns. Text that tokenizes to nothing (only control
// characters) is still a message: it is scored as a single space.
func (in Input) Tokens(turns []Turn, text string) (ids []int64, used int, truncated bool) {
	msg := tokenizer.Int64s(in.tok.Encode(text))
	if len(msg) == 0 {
		msg = tokenizer.Int64s(in.tok.Encode(" "))
	}
	if len(msg) > in.maxText {
		msg, truncated = msg[:in.maxText], true
	}
	if in.ctx == nil {
		return msg, 0, truncated
	}
	turns = turns[max(0, len(turns)-in.ctx.Messages):]
	var blocks [][]int64
	size := 0
	for i := len(turns) - 1; i >= 0; i-- {
		r := strings.NewReplacer("{role}", turns[i].Role, "{text}", turns[i].Text)
		b := tokenizer.Int64s(in.tok.Encode(r.Replace(in.ctx.Turn)))
		if size+len(b) > in.ctx.MaxTokens {
			break
		}
		size += len(b)
		blocks = append(blocks, b)
	}
	ids = make([]int64, 0, size+len(in.mid)+len(msg))
	for i := len(blocks) - 1; i >= 0; i-- {
		ids = append(ids, blocks[i]...)
	}
	ids = append(append(ids, in.mid...), msg...)
	return ids, len(blocks), truncated
}
