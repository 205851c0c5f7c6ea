package model

import (
	"fmt"

	"github.com/emoflow/emoflow/internal/tensor"
)

// This file is the engine's side of training (package train drives it):
// the losses, built in a tensor.Scope with autograd on, and the trainable
// forms of the adapters. The forward pass is the serving one, so what is
// trained is exactly what is served.

// LoRALeaf is one trainable low-rank update: for layer Layer's checkpoint
// module Target, A [rank, in] and B [rows, rank] as PEFT stores them
// (usually float32 leaves with requires_grad), the scale that multiplies
// B·A, and PEFT's lora_dropout on the update's input.
type LoRALeaf struct {
	Layer   int
	Target  string
	A, B    *tensor.Tensor
	Scale   float64
	Dropout float64
}

// BindLoRA builds, inside s, the update that leaves describe, as graph
// nodes of s: gradients flow back to the leaves. Several leaves that feed
// one fused projection (q, k, v) are stacked as NewLoRA stacks them. The
// result belongs to s (do not Free it).
func (m *Model) BindLoRA(s *tensor.Scope, leaves []LoRALeaf) (*LoRA, error) {
	if m.cfg.Arch == ArchGLM1 {
		return nil, fmt.Errorf("lora training: ChatGLM-6B is not supported (its fused projection interleaves heads)")
	}
	type acc struct {
		as, bs  []*tensor.Tensor
		dropout float64
	}
	accs := make([][numModules]*acc, m.cfg.Layers)
	for _, l := range leaves {
		if l.Layer < 0 || l.Layer >= m.cfg.Layers {
			return nil, fmt.Errorf("lora training: layer %d outside the model's %d layers", l.Layer, m.cfg.Layers)
		}
		mod, start, rows, err := m.TargetModule(l.Target)
		if err != nil {
			return nil, fmt.Errorf("lora training: layer %d: %w", l.Layer, err)
		}
		out, in := m.moduleShape(mod)
		r := l.A.Size(0)
		if l.A.Dim() != 2 || l.A.Size(1) != int64(in) || l.B.Dim() != 2 || l.B.Size(0) != int64(rows) || l.B.Size(1) != r {
			return nil, fmt.Errorf("lora training: layer %d %s: A %v and B %v do not fit [r, %d] and [%d, r]", l.Layer, l.Target, l.A.Shape(), l.B.Shape(), in, rows)
		}
		b := s.Scale(s.ToDType(l.B, m.opts.DType), l.Scale)
		if rows != out { // a part of the fused projection: zero rows around it
			var pieces []*tensor.Tensor
			if start > 0 {
				pieces = append(pieces, s.Zeros([]int64{int64(start), r}, m.opts.DType, m.opts.Device))
			}
			pieces = append(pieces, b)
			if rest := out - start - rows; rest > 0 {
				pieces = append(pieces, s.Zeros([]int64{int64(rest), r}, m.opts.DType, m.opts.Device))
			}
			b = s.Cat(pieces, 0)
		}
		a := accs[l.Layer][mod]
		if a == nil {
			a = &acc{}
			accs[l.Layer][mod] = a
		}
		a.as = append(a.as, s.ToDType(l.A, m.opts.DType))
		a.bs = append(a.bs, b)
		a.dropout = max(a.dropout, l.Dropout)
	}
	lo := &LoRA{m: m, layers: make([][numModules]*loraModule, m.cfg.Layers)}
	for i := range accs {
		for mod, a := range accs[i] {
			if a == nil {
				continue
			}
			lo.layers[i][mod] = &loraModule{a: s.Cat(a.as, 0), b: s.Cat(a.bs, 1), dropout: a.dropout}
			lo.Rank = max(lo.Rank, int(lo.layers[i][mod].a.Size(0)))
		}
	}
	return lo, s.Err()
}

// PastFromPrefix turns a prefix encoder's output [P, layers·2·groups·headDim]
// (a graph node of s) into the past keys and values it stands for, one row,
// as THUDM's ChatGLM2/3 split it: layer l's keys at 2l, values at 2l+1.
// The result belongs to s.
func (m *Model) PastFromPrefix(s *tensor.Scope, prefix *tensor.Tensor) (*KV, error) {
	c := m.cfg
	P := prefix.Size(0)
	if prefix.Dim() != 2 || prefix.Size(1) != int64(2*c.Layers*c.KVGroups*c.HeadDim) {
		return nil, fmt.Errorf("prefix encoder output %v, want [P, %d]", prefix.Shape(), 2*c.Layers*c.KVGroups*c.HeadDim)
	}
	all := s.ToDType(s.Permute(s.Reshape(prefix, P, int64(2*c.Layers), int64(c.KVGroups), int64(c.HeadDim)), 1, 2, 0, 3), m.opts.DType)
	kv := &KV{Len: int(P)}
	for l := 0; l < c.Layers; l++ {
		kv.K = append(kv.K, s.Unsqueeze(s.Select(all, 0, int64(2*l)), 0))
		kv.V = append(kv.V, s.Unsqueeze(s.Select(all, 0, int64(2*l+1)), 0))
	}
	return kv, s.Err()
}

// LossRow is one labelled example: its text's tokens and the index of its
// gold label in the prompt's label set.
type LossRow struct {
	Text  []int64
	Label int
}

// Tuning is what adapts the model in a training step: a bound LoRA update
// and/or an adapter past (one row), both graph nodes of the step's scope.
type Tuning struct {
	LoRA *LoRA
	Past *KV
	// PastPositions is the rotary position of the first token after Past
	// (see ScorerOptions.AdapterPastPositions).
	PastPositions int
}

// LossOptions shape a loss batch.
type LossOptions struct {
	// MaxTextTokens cuts longer texts (their beginning is kept).
	MaxTextTokens int
	// PadTo rounds the batch length up to a multiple: libtorch 2.1's
	// bfloat16 attention backward crashes at odd lengths, and multiples of
	// 8 suit the matrix units.
	PadTo int
}

// LossStats count what a loss batch held.
type LossStats struct {
	// Targets is the number of predicted tokens the loss averages over.
	Targets int
	// Tokens is the number of real (not padding) tokens computed, the
	// shared prompt prefix once.
	Tokens int
	// Truncated is the number of texts cut to MaxTextTokens.
	Truncated int
}

// PromptLoss is the training objective of THUDM's P-tuning scripts and of
// PEFT's causal-LM fine-tuning on a classification prompt: every row is the
// prompt around its text followed by its gold label's tokens and the stop
// token; the prompt's tokens are masked out and the loss is the mean
// negative log-likelihood of the answer tokens (the label's and the stop
// token) over the batch. It returns the scalar loss, a graph node of s.
//
// The prompt prefix is the same for every row, so it is computed once for
// the batch and its keys and values are shared: the gradient is the same as
// computing it per row, at a fraction of the cost.
func (m *Model) PromptLoss(s *tensor.Scope, p Prompt, rows []LossRow, tu Tuning, o LossOptions) (*tensor.Tensor, LossStats, error) {
	var st LossStats
	if m.cfg.Arch == ArchGLM1 {
		return nil, st, fmt.Errorf("training: ChatGLM-6B's prefix-LM attention is not supported")
	}
	if len(rows) == 0 {
		return nil, st, fmt.Errorf("training: empty batch")
	}
	if o.MaxTextTokens <= 0 {
		o.MaxTextTokens = 512
	}
	past, err := m.promptPast(s, p, tu)
	if err != nil {
		return nil, st, err
	}
	posBase := tu.PastPositions + len(p.Prefix)
	seqs := make([][]int64, len(rows))
	starts := make([]int, len(rows))
	for r, row := range rows {
		if row.Label < 0 || row.Label >= len(p.Labels) {
			return nil, st, fmt.Errorf("training: row %d: label %d outside the %d labels", r, row.Label, len(p.Labels))
		}
		text := row.Text
		if len(text) == 0 {
			return nil, st, fmt.Errorf("training: row %d: %w", r, ErrEmptyText)
		}
		if len(text) > o.MaxTextTokens {
			text = text[:o.MaxTextTokens]
			st.Truncated++
		}
		seq := append(append(append([]int64{}, text...), p.Suffix...), p.Labels[row.Label]...)
		starts[r] = len(text) + len(p.Suffix)
		if p.Stop >= 0 {
			seq = append(seq, p.Stop)
		}
		seqs[r] = seq
	}
	st.Tokens = len(p.Prefix)
	loss, targets, tokens, err := m.causalLoss(s, seqs, starts, past, posBase, o.PadTo, tu.LoRA)
	st.Targets, st.Tokens = targets, st.Tokens+tokens
	return loss, st, err
}

// promptPast is the past every row of a loss batch attends to: the
// adapter's past, then the prompt prefix's keys and values computed after
// it (with the LoRA update), as graph nodes.
func (m *Model) promptPast(s *tensor.Scope, p Prompt, tu Tuning) (*KV, error) {
	if len(p.Prefix) == 0 {
		return tu.Past, nil
	}
	n := len(p.Prefix)
	P := 0
	if tu.Past != nil {
		P = tu.Past.Len
	}
	b := &Batch{Rows: 1, Len: n, Tokens: p.Prefix, Pos: make([]int64, n), Visible: make([]bool, n*(P+n)), Past: tu.Past}
	if tu.LoRA != nil {
		b.LoRA = []*LoRA{tu.LoRA}
	}
	for i := 0; i < n; i++ {
		b.Pos[i] = int64(tu.PastPositions + i)
		for j := 0; j < P+n; j++ {
			b.Visible[i*(P+n)+j] = j < P || j-P <= i
		}
	}
	_, kv, err := m.forward(s, b, true)
	if err != nil {
		return nil, fmt.Errorf("prompt prefix: %w", err)
	}
	if tu.Past == nil {
		return kv, nil
	}
	joined := &KV{Len: P + n}
	for l := range kv.K {
		joined.K = append(joined.K, s.Cat([]*tensor.Tensor{tu.Past.K[l], kv.K[l]}, 2))
		joined.V = append(joined.V, s.Cat([]*tensor.Tensor{tu.Past.V[l], kv.V[l]}, 2))
	}
	return joined, s.Err()
}

// LMLoss is the causal language-modelling loss of full-parameter
// pretraining: the mean negative log-likelihood of every token of seqs
// after the first, each predicted from the ones before it.
func (m *Model) LMLoss(s *tensor.Scope, seqs [][]int64, padTo int) (*tensor.Tensor, LossStats, error) {
	var st LossStats
	if m.cfg.Arch == ArchGLM1 {
		return nil, st, fmt.Errorf("training: ChatGLM-6B's prefix-LM attention is not supported")
	}
	starts := make([]int, len(seqs))
	for i, q := range seqs {
		if len(q) < 2 {
			return nil, st, fmt.Errorf("training: sequence %d has %d tokens, need 2", i, len(q))
		}
		starts[i] = 1
	}
	loss, targets, tokens, err := m.causalLoss(s, seqs, starts, nil, 0, padTo, nil)
	st.Targets, st.Tokens = targets, tokens
	return loss, st, err
}

// causalLoss runs seqs (after past, left-aligned, padded) and returns the
// mean negative log-likelihood of seqs[r][starts[r]:], each token predicted
// by the position before it.
func (m *Model) causalLoss(s *tensor.Scope, seqs [][]int64, starts []int, past *KV, posBase, padTo int, lora *LoRA) (*tensor.Tensor, int, int, error) {
	L := 0
	for _, q := range seqs {
		L = max(L, len(q))
	}
	if padTo > 1 {
		L = (L + padTo - 1) / padTo * padTo
	}
	B, P := len(seqs), 0
	if past != nil {
		P = past.Len
	}
	T := P + L
	b := &Batch{Rows: B, Len: L, Tokens: make([]int64, B*L), Pos: make([]int64, B*L), Visible: make([]bool, B*L*T), Past: past}
	if lora != nil {
		b.LoRA = make([]*LoRA, B)
		for r := range b.LoRA {
			b.LoRA[r] = lora
		}
	}
	var gather, targets []int64
	tokens := 0
	for r, q := range seqs {
		tokens += len(q)
		for i := 0; i < L; i++ {
			at := r*L + i
			vis := b.Visible[at*T : (at+1)*T]
			b.Pos[at] = int64(posBase + i)
			if i >= len(q) { // padding: sees only itself, is never seen
				vis[P+i] = true
				continue
			}
			b.Tokens[at] = q[i]
			for j := 0; j < P; j++ {
				vis[j] = true
			}
			for j := 0; j <= i; j++ {
				vis[P+j] = true
			}
		}
		for i := max(starts[r], 1); i < len(q); i++ {
			gather = append(gather, int64(r*L+i-1))
			targets = append(targets, q[i])
		}
	}
	if len(targets) == 0 {
		return nil, 0, tokens, fmt.Errorf("training: the batch has no target tokens")
	}
	hidden, _, err := m.forward(s, b, false)
	if err != nil {
		return nil, 0, tokens, err
	}
	dev, D, N := m.opts.Device, int64(m.cfg.Hidden), int64(len(targets))
	h := s.IndexSelect(s.Reshape(hidden, int64(B*L), D), 0, s.FromInt64(gather, []int64{N}, dev))
	logp := s.LogSoftmax(m.linear(s, h, m.head, nil), -1, tensor.Float32)
	picked := s.Gather(logp, 1, s.FromInt64(targets, []int64{N, 1}, dev))
	loss := s.Scale(s.SumDim(s.Reshape(picked, N), false, 0), -1/float64(N))
	return loss, len(targets), tokens, s.Err()
}

// NamedWeight is one of the model's weight tensors under its checkpoint
// name.
type NamedWeight struct {
	Name   string
	Tensor *tensor.Tensor
}

// Weights returns every weight under its THUDM checkpoint name, for
// full-parameter training and for writing the trained checkpoint. The
// tensors are the model's own (updating them in place updates the model).
// Only ChatGLM2/3 checkpoints in THUDM's layout map one to one.
func (m *Model) Weights() ([]NamedWeight, error) {
	c := m.cfg
	if c.Arch != ArchGLM2 || c.Layout != LayoutTHUDM {
		return nil, fmt.Errorf("full-parameter training needs a ChatGLM2/3 checkpoint in THUDM's layout, this is %s/%s", c.Arch, c.Layout)
	}
	if m.head == m.embed {
		return nil, fmt.Errorf("full-parameter training of a model with tied embeddings is not supported")
	}
	embed, finalW, _, head := globalNames(c)
	out := []NamedWeight{{embed, m.embed}}
	for i := range m.layers {
		n, l := namesFor(c, i), &m.layers[i]
		for _, w := range []NamedWeight{
			{n.inNormW, l.inNormW}, {n.qkv, l.qkvW}, {n.qkvBias, l.qkvB}, {n.dense, l.denseW}, {n.denseBias, l.denseB},
			{n.postNormW, l.postNormW}, {n.up, l.upW}, {n.upBias, l.upB}, {n.down, l.downW}, {n.downBias, l.downB},
		} {
			if w.Name != "" && w.Tensor != nil {
				out = append(out, w)
			}
		}
	}
	return append(out, NamedWeight{finalW, m.finalNormW}, NamedWeight{head, m.head}), nil
}
