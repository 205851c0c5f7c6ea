package prompt

import (
	"strings"
	"testing"

	"github.com/emoflow/emoflow/internal/tokenizer"
)

// words is a tokenizer with one token per whitespace-separated word (ids
// from a growing table), enough to check what goes where in a prompt.
type words struct {
	tokenizer.Tokenizer
	ids   map[string]int
	names []string
}

func newWords() *words { return &words{ids: map[string]int{}} }

func (w *words) Encode(text string) []int {
	var out []int
	for _, f := range strings.Fields(text) {
		id, ok := w.ids[f]
		if !ok {
			id = len(w.names)
			w.ids[f] = id
			w.names = append(w.names, f)
		}
		out = append(out, id)
	}
	return out
}

func (w *words) text(ids []int64) string {
	var parts []string
	for _, id := range ids {
		parts = append(parts, w.names[id])
	}
	return strings.Join(parts, " ")
}

func TestContextTokensKeepTheNewestTurnsThatFit(t *testing.T) {
	tok := newWords()
	tmpl := Default().WithContext(2)
	tmpl.Context.MaxTokens = 6
	tmpl.Context.Turn = "{role}: {text} |"
	if err := tmpl.Validate(); err != nil {
		t.Fatal(err)
	}
	in, err := tmpl.Input(tok, 4)
	if err != nil {
		t.Fatal(err)
	}
	turns := []Turn{{"customer", "first"}, {"agent", "second msg"}, {"customer", "third"}}
	ids, used, cut := in.Tokens(turns, "fine thanks")
	// k = 2 keeps second and third; "agent: second msg |" is 4 tokens and
	// "customer: third |" 3, so only the newest fits in 6.
	if got, want := tok.text(ids), "customer: third | Message: fine thanks"; got != want || used != 1 || cut {
		t.Fatalf("tokens %q used %d cut %v, want %q used 1", got, used, cut, want)
	}
	tmpl.Context.MaxTokens = 7
	in, _ = tmpl.Input(tok, 4)
	ids, used, _ = in.Tokens(turns, "fine thanks")
	if got, want := tok.text(ids), "agent: second msg | customer: third | Message: fine thanks"; got != want || used != 2 {
		t.Fatalf("tokens %q used %d, want %q used 2", got, used, want)
	}
	if len(ids) > in.MaxTokens() {
		t.Fatalf("%d tokens exceed MaxTokens %d", len(ids), in.MaxTokens())
	}
	// A previous message longer than the whole budget leaves no context,
	// rather than a window with a hole in it.
	ids, used, _ = in.Tokens([]Turn{{"customer", "one"}, {"agent", "a b c d e f g h"}}, "ok")
	if got := tok.text(ids); got != "Message: ok" || used != 0 {
		t.Fatalf("tokens %q used %d, want no context", got, used)
	}
	// The message is cut to the text limit, the context is not.
	ids, _, cut = in.Tokens(nil, "w1 w2 w3 w4 w5")
	if got := tok.text(ids); got != "Message: w1 w2 w3 w4" || !cut {
		t.Fatalf("tokens %q cut %v, want the first 4 words, cut", got, cut)
	}
}

func TestTemplatesWithoutContextAreUnchanged(t *testing.T) {
	plain := Default()
	// The version of the built-in template is part of every cache key and
	// stored label set: it must not move.
	const builtIn = "e7310a5cac762230" // the version before templates had context
	if v := plain.Version(); v != builtIn || plain.WithContext(0).Version() != v {
		t.Fatalf("version of the built-in template moved: %s, want %s", v, builtIn)
	}
	ctx := plain.WithContext(2)
	if ctx.Version() == plain.Version() {
		t.Fatal("a context template has the version of the plain one")
	}
	k4 := plain.WithContext(4)
	if k4.Version() == ctx.Version() {
		t.Fatal("k=2 and k=4 share a version")
	}
	spelled := plain.WithContext(2)
	spelled.Context.MaxTokens, spelled.Context.Turn = defaultContextSize, defaultContextTurn
	if spelled.Version() != ctx.Version() {
		t.Fatal("spelling the defaults out changed the version")
	}
	tok := newWords()
	in, err := plain.Input(tok, 8)
	if err != nil {
		t.Fatal(err)
	}
	ids, used, _ := in.Tokens([]Turn{{"customer", "ignored"}}, "hello there")
	if tok.text(ids) != "hello there" || used != 0 || in.ContextMessages() != 0 {
		t.Fatalf("plain template: %q used %d", tok.text(ids), used)
	}
	// Compile's prefix stops at {context}: the shared part is the same
	// instruction for every message whatever its context.
	p, err := ctx.Compile(chatless{tok})
	if err != nil {
		t.Fatal(err)
	}
	if got := tok.text(p.Prefix); strings.Contains(got, "Message:") || !strings.HasSuffix(got, "surprise.") {
		t.Fatalf("prefix %q", got)
	}
}

func TestContextTemplateValidation(t *testing.T) {
	base := Default()
	for name, mutate := range map[string]func(*Template){
		"context without settings": func(t *Template) { t.Text = "{context}" + t.Text },
		"settings without context": func(t *Template) { t.Context = &Context{Messages: 2} },
		"context after text":       func(t *Template) { *t = t.WithContext(2); t.Text = "{text} {context}" },
		"zero messages":            func(t *Template) { *t = t.WithContext(2); t.Context.Messages = 0 },
		"too many messages":        func(t *Template) { *t = t.WithContext(2); t.Context.Messages = MaxContextMessages + 1 },
		"negative budget":          func(t *Template) { *t = t.WithContext(2); t.Context.MaxTokens = -1 },
		"turn without text":        func(t *Template) { *t = t.WithContext(2); t.Context.Turn = "{role}" },
	} {
		tmpl := base
		mutate(&tmpl)
		if err := tmpl.Validate(); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if err := base.WithContext(MaxContextMessages).Validate(); err != nil {
		t.Fatal(err)
	}
}

// chatless gives the word tokenizer the raw family's special tokens.
type chatless struct{ *words }

func (chatless) Family() tokenizer.Family       { return tokenizer.ChatGLM3 }
func (chatless) SpecialID(string) (int, bool)   { return 0, true }
func (c chatless) BuildInputs(ids []int) []int  { return ids }
func (chatless) StopIDs() []int                 { return []int{0} }
func (c chatless) Encode(text string) []int     { return c.words.Encode(text) }
func (c chatless) Decode([]int) (string, error) { return "", nil }
func (c chatless) VocabSize() int               { return len(c.names) }
func (c chatless) ChatPrompt(q string) []int    { return c.words.Encode(q) }
