package classifier

import (
	"context"
	"fmt"
	"unicode/utf8"

	"github.com/emoflow/emoflow/internal/batcher"
	"github.com/emoflow/emoflow/internal/classifyapi"
	"github.com/emoflow/emoflow/internal/model"
	"github.com/emoflow/emoflow/internal/prompt"
	"github.com/emoflow/emoflow/internal/tokenizer"
)

// head is one way of answering requests: a prompt template compiled for the
// model, with its scorer (and, later, an adapter). Requests that name the
// same head share batches.
type head struct {
	info     classifyapi.AdapterInfo
	template prompt.Template
	scorer   *model.Scorer
}

// key groups the batcher's requests: one batch computes one head.
func (h *head) key() string { return h.info.Ref() }

// job is one text on its way through the batcher.
type job struct {
	head   *head
	tokens []int64
}

// engine owns the model, its tokenizer and the heads.
type engine struct {
	model *model.Model
	tok   tokenizer.Tokenizer
	base  *head
	heads map[string]*head // by id@version
	byID  map[string]*head // by id: the current version
}

func newEngine(m *model.Model, tok tokenizer.Tokenizer, tmpl prompt.Template, maxTextTokens int) (*engine, error) {
	if tok.VocabSize() > m.Config().Vocab {
		return nil, fmt.Errorf("tokenizer has %d tokens but the model's vocabulary is %d: they do not belong together", tok.VocabSize(), m.Config().Vocab)
	}
	p, err := tmpl.Compile(tok)
	if err != nil {
		return nil, fmt.Errorf("prompt template %q: %w", tmpl.Name, err)
	}
	sc, err := model.NewScorer(m, p, model.ScorerOptions{MaxTextTokens: maxTextTokens})
	if err != nil {
		return nil, fmt.Errorf("prompt template %q: %w", tmpl.Name, err)
	}
	base := &head{
		template: tmpl,
		scorer:   sc,
		info: classifyapi.AdapterInfo{
			ID: "base", Version: tmpl.Version(), Method: "none", Labels: tmpl.Labels,
			LabelSet: tmpl.Version(), Language: tmpl.Language, Default: true,
		},
	}
	e := &engine{model: m, tok: tok, base: base,
		heads: map[string]*head{base.key(): base}, byID: map[string]*head{base.info.ID: base}}
	return e, nil
}

func (e *engine) close() {
	for _, h := range e.heads {
		h.scorer.Close()
	}
}

// resolve finds the head a request names ("" = the default).
func (e *engine) resolve(ref string) (*head, error) {
	if ref == "" {
		return e.base, nil
	}
	id, version, err := classifyapi.ParseAdapterRef(ref)
	if err != nil {
		return nil, err
	}
	var h *head
	if version == "" {
		h = e.byID[id]
	} else {
		h = e.heads[id+"@"+version]
	}
	if h == nil {
		return nil, errUnknownAdapter
	}
	return h, nil
}

var errUnknownAdapter = fmt.Errorf("unknown adapter")

// encode tokenizes a text (already checked to be valid UTF-8).
func (e *engine) encode(text string) []int64 {
	ids := e.tok.Encode(text)
	out := make([]int64, len(ids))
	for i, id := range ids {
		out[i] = int64(id)
	}
	return out
}

// run computes one batch of one head.
func (e *engine) run(_ context.Context, b *batcher.Batch[job]) ([]model.Result, error) {
	h := b.Payloads[0].head
	texts := make([][]int64, len(b.Payloads))
	for i, j := range b.Payloads {
		if j.head != h {
			return nil, fmt.Errorf("internal error: batch mixes heads %s and %s", h.key(), j.head.key())
		}
		texts[i] = j.tokens
	}
	return h.scorer.Score(texts)
}

// warmUp runs one batch so that the first real request does not pay for
// libtorch's lazy initialisation.
func (e *engine) warmUp() error {
	_, err := e.base.scorer.Score([][]int64{e.encode("warm up")})
	return err
}

// validText reports why a text cannot be classified, or "".
func validText(s string, maxBytes int) (code, msg string) {
	switch {
	case s == "":
		return classifyapi.CodeBadRequest, "empty text"
	case !utf8.ValidString(s):
		return classifyapi.CodeBadRequest, "text is not valid UTF-8"
	case len(s) > maxBytes:
		return classifyapi.CodeTooLarge, fmt.Sprintf("text of %d bytes exceeds the limit of %d", len(s), maxBytes)
	}
	return "", ""
}
