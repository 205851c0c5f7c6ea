package model

import (
	"fmt"
	"math"

	"github.com/emoflow/emoflow/internal/tensor"
)

// Module is one of a block's linear projections, in the engine's canonical
// layout.
type Module int

// The projections LoRA can target.
const (
	ModQKV   Module = iota // fused query/key/value
	ModDense               // attention output
	ModUp                  // MLP input (gate and up for SwiGLU)
	ModDown                // MLP output
	numModules
)

func (mod Module) String() string {
	return [...]string{"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}[mod]
}

// TargetModule maps a checkpoint's module name (THUDM's or transformers'
// glm names) to the canonical projection and, for transformers' separate
// q/k/v projections, the row range it covers in the fused QKV output.
func (m *Model) TargetModule(name string) (mod Module, rowStart, rows int, err error) {
	c := m.cfg
	qRows, kvRows := c.Heads*c.HeadDim, c.KVGroups*c.HeadDim
	switch name {
	case "query_key_value":
		return ModQKV, 0, qRows + 2*kvRows, nil
	case "q_proj":
		return ModQKV, 0, qRows, nil
	case "k_proj":
		return ModQKV, qRows, kvRows, nil
	case "v_proj":
		return ModQKV, qRows + kvRows, kvRows, nil
	case "dense", "o_proj":
		return ModDense, 0, c.Hidden, nil
	case "dense_h_to_4h", "gate_up_proj":
		up := c.FFN
		if c.Arch == ArchGLM2 {
			up *= 2
		}
		return ModUp, 0, up, nil
	case "dense_4h_to_h", "down_proj":
		return ModDown, 0, c.Hidden, nil
	}
	return 0, 0, 0, fmt.Errorf("unknown target module %q (want query_key_value, dense, dense_h_to_4h, dense_4h_to_h, or q_proj, k_proj, v_proj, o_proj, gate_up_proj, down_proj)", name)
}

// TargetShape is the [rows, in] shape of a LoRA update's B·A on the
// checkpoint module name (see TargetModule).
func (m *Model) TargetShape(name string) (rows, in int, err error) {
	mod, _, rows, err := m.TargetModule(name)
	if err != nil {
		return 0, 0, err
	}
	_, in = m.moduleShape(mod)
	return rows, in, nil
}

// moduleShape is the [out, in] shape of a canonical projection.
func (m *Model) moduleShape(mod Module) (out, in int) {
	c := m.cfg
	switch mod {
	case ModQKV:
		return (c.Heads + 2*c.KVGroups) * c.HeadDim, c.Hidden
	case ModDense:
		return c.Hidden, c.Heads * c.HeadDim
	case ModUp:
		if c.Arch == ArchGLM2 {
			return 2 * c.FFN, c.Hidden
		}
		return c.FFN, c.Hidden
	default:
		return c.Hidden, c.FFN
	}
}

// LoRAPart is one low-rank update as an adapter file stores it: for layer
// Layer, the checkpoint module Target (see TargetModule), A [r, in] and
// B [rows, r] as float32, and the scale (lora_alpha / r, or / sqrt(r) with
// rsLoRA) that multiplies B·A.
type LoRAPart struct {
	Layer  int
	Target string
	Rank   int
	A, B   []float32
	Scale  float64
}

// loraModule is the update of one projection: delta(x) = (x·Aᵀ)·Bᵀ with
// the scale folded into B. Several checkpoint modules that feed one fused
// projection (q, k, v) are stacked: A's rows concatenated, B block-diagonal.
type loraModule struct {
	a, b *tensor.Tensor
	// dropout is PEFT's lora_dropout, applied to the update's input in
	// training only (BindLoRA); served adapters have none.
	dropout float64
}

// LoRA is a set of low-rank updates on a model, ready to be applied per
// row (unmerged) or merged into a copy of the weights.
type LoRA struct {
	m      *Model
	layers [][numModules]*loraModule
	// Rank is the largest rank of the adapter (informational).
	Rank int
}

// NewLoRA checks parts against the model and builds the update. The
// caller owns the result (Free it).
func (m *Model) NewLoRA(parts []LoRAPart) (*LoRA, error) {
	c := m.cfg
	type acc struct {
		as   [][]float32
		bs   [][]float32 // full-height B for the canonical module, one per part
		rank int
	}
	var accs = make([][numModules]*acc, c.Layers)
	maxRank := 0
	for _, p := range parts {
		if p.Layer < 0 || p.Layer >= c.Layers {
			return nil, fmt.Errorf("lora: layer %d outside the model's %d layers", p.Layer, c.Layers)
		}
		mod, start, rows, err := m.TargetModule(p.Target)
		if err != nil {
			return nil, fmt.Errorf("lora: layer %d: %w", p.Layer, err)
		}
		out, in := m.moduleShape(mod)
		if p.Rank <= 0 || len(p.A) != p.Rank*in || len(p.B) != rows*p.Rank {
			return nil, fmt.Errorf("lora: layer %d %s: A has %d values and B %d, want rank %d × %d and %d × %d (rank mismatch or an adapter for another model?)",
				p.Layer, p.Target, len(p.A), len(p.B), p.Rank, in, rows, p.Rank)
		}
		for _, v := range append(p.A[:len(p.A):len(p.A)], p.B...) {
			if math.IsNaN(float64(v)) || math.IsInf(float64(v), 0) {
				return nil, fmt.Errorf("lora: layer %d %s: weights contain NaN or Inf", p.Layer, p.Target)
			}
		}
		full := make([]float32, out*p.Rank)
		for r := 0; r < rows; r++ {
			dst := m.canonicalRow(mod, start+r)
			for k := 0; k < p.Rank; k++ {
				full[dst*p.Rank+k] = p.B[r*p.Rank+k] * float32(p.Scale)
			}
		}
		a := accs[p.Layer][mod]
		if a == nil {
			a = &acc{}
			accs[p.Layer][mod] = a
		}
		a.as = append(a.as, p.A)
		a.bs = append(a.bs, full)
		a.rank += p.Rank
		maxRank = max(maxRank, p.Rank)
	}
	s := tensor.NewScope()
	defer s.Close()
	l := &LoRA{m: m, layers: make([][numModules]*loraModule, c.Layers), Rank: maxRank}
	for i := range accs {
		for mod, a := range accs[i] {
			if a == nil {
				continue
			}
			out, in := m.moduleShape(Module(mod))
			// A: the parts' rows stacked; B: each part's columns side by side.
			A := make([]float32, 0, a.rank*in)
			for _, x := range a.as {
				A = append(A, x...)
			}
			B := make([]float32, out*a.rank)
			col := 0
			for pi, full := range a.bs {
				r := len(a.as[pi]) / in
				for row := 0; row < out; row++ {
					copy(B[row*a.rank+col:row*a.rank+col+r], full[row*r:(row+1)*r])
				}
				col += r
			}
			at := s.ToDType(s.FromFloat32(A, []int64{int64(a.rank), int64(in)}, tensor.CPU), m.opts.DType)
			bt := s.ToDType(s.FromFloat32(B, []int64{int64(out), int64(a.rank)}, tensor.CPU), m.opts.DType)
			if m.opts.Device.IsCUDA() {
				at, bt = s.To(at, m.opts.Device), s.To(bt, m.opts.Device)
			}
			l.layers[i][mod] = &loraModule{a: s.Keep(at), b: s.Keep(bt)}
		}
	}
	if err := s.Err(); err != nil {
		l.Free()
		return nil, fmt.Errorf("lora: %w", err)
	}
	return l, nil
}

// canonicalRow maps an output row of a checkpoint's projection to the
// engine's row: ChatGLM-6B interleaves q, k and v per head, which the
// engine regroups at load time (see loadQKV).
func (m *Model) canonicalRow(mod Module, row int) int {
	if mod != ModQKV || m.cfg.Arch != ArchGLM1 {
		return row
	}
	hd, H := m.cfg.HeadDim, m.cfg.Heads
	head, rest := row/(3*hd), row%(3*hd)
	part, d := rest/hd, rest%hd
	return part*H*hd + head*hd + d
}

// Free releases the update's tensors.
func (l *LoRA) Free() {
	if l == nil {
		return
	}
	for i := range l.layers {
		for _, mod := range l.layers[i] {
			if mod != nil {
				mod.a.Free()
				mod.b.Free()
			}
		}
	}
	l.layers = nil
}

// Merged returns a model whose weights include the update: the targeted
// projections are new tensors W + B·A (computed in float32), every other
// weight is shared with m. Both models must be closed.
func (m *Model) Merged(l *LoRA) (*Model, error) {
	if l.m != m {
		return nil, fmt.Errorf("lora: merging an update built for another model")
	}
	s := tensor.NewScope()
	defer s.Close()
	share := func(t *tensor.Tensor) *tensor.Tensor {
		if t == nil {
			return nil
		}
		return s.Keep(t) // a new handle on the same storage
	}
	mm := &Model{cfg: m.cfg, opts: m.opts, fingerprint: m.fingerprint, invFreq: m.invFreq}
	mm.embed = share(m.embed)
	if m.head == m.embed {
		mm.head = mm.embed
	} else {
		mm.head = share(m.head)
	}
	mm.finalNormW, mm.finalB = share(m.finalNormW), share(m.finalB)
	if m.prefix != nil {
		mm.prefix = &KV{Len: m.prefix.Len}
		for i := range m.prefix.K {
			mm.prefix.K = append(mm.prefix.K, share(m.prefix.K[i]))
			mm.prefix.V = append(mm.prefix.V, share(m.prefix.V[i]))
		}
	}
	mm.layers = make([]layerWeights, len(m.layers))
	for i, lw := range m.layers {
		n := &mm.layers[i]
		n.inNormW, n.inNormB, n.postNormW, n.postNormB = share(lw.inNormW), share(lw.inNormB), share(lw.postNormW), share(lw.postNormB)
		n.qkvB, n.denseB, n.upB, n.downB = share(lw.qkvB), share(lw.denseB), share(lw.upB), share(lw.downB)
		for mod, dst := range map[Module]struct{ src, dst **tensor.Tensor }{
			ModQKV: {&m.layers[i].qkvW, &n.qkvW}, ModDense: {&m.layers[i].denseW, &n.denseW},
			ModUp: {&m.layers[i].upW, &n.upW}, ModDown: {&m.layers[i].downW, &n.downW},
		} {
			u := l.layers[i][mod]
			if u == nil {
				*dst.dst = share(*dst.src)
				continue
			}
			w32 := s.ToDType(*dst.src, tensor.Float32)
			delta := s.Matmul(s.ToDType(u.b, tensor.Float32), s.ToDType(u.a, tensor.Float32))
			*dst.dst = s.Keep(s.ToDType(s.Add(w32, delta), m.opts.DType))
		}
	}
	if err := s.Err(); err != nil {
		mm.Close()
		return nil, fmt.Errorf("lora merge: %w", err)
	}
	return mm, nil
}

// loraBatch is how a batch's rows use low-rank updates: one update for
// every row, or several, stacked so that each projection costs two small
// matrix products whatever the number of adapters.
type loraBatch struct {
	rows     []*LoRA // per row, nil for none
	adapters []*LoRA // distinct updates, in first-use order
	all      bool    // one update, used by every row
	// cache of the stacked factors and row masks, per layer and module.
	stacked map[[2]int]stackedLoRA
}

type stackedLoRA struct {
	a, b, mask *tensor.Tensor // nil when no adapter updates the module
}

func newLoRABatch(rows []*LoRA) *loraBatch {
	lb := &loraBatch{rows: rows, stacked: map[[2]int]stackedLoRA{}}
	seen := map[*LoRA]bool{}
	some := 0
	for _, l := range rows {
		if l == nil {
			continue
		}
		some++
		if !seen[l] {
			seen[l] = true
			lb.adapters = append(lb.adapters, l)
		}
	}
	if len(lb.adapters) == 0 {
		return nil
	}
	lb.all = len(lb.adapters) == 1 && some == len(rows)
	return lb
}

// stack concatenates the adapters' factors of one projection: A's rows and
// B's columns side by side, and a [rows, 1, rank] mask that keeps, for each
// row, the columns of its own adapter.
func (m *Model) stack(s *tensor.Scope, lb *loraBatch, layer int, mod Module) stackedLoRA {
	key := [2]int{layer, int(mod)}
	if st, ok := lb.stacked[key]; ok {
		return st
	}
	var as, bs []*tensor.Tensor
	offset := map[*LoRA][2]int{} // column range of each adapter
	total := 0
	for _, l := range lb.adapters {
		u := l.layers[layer][mod]
		if u == nil {
			continue
		}
		r := int(u.a.Size(0))
		offset[l] = [2]int{total, total + r}
		total += r
		as, bs = append(as, u.a), append(bs, u.b)
	}
	var st stackedLoRA
	if total > 0 {
		mask := make([]float32, len(lb.rows)*total)
		for row, l := range lb.rows {
			if o, ok := offset[l]; ok {
				for c := o[0]; c < o[1]; c++ {
					mask[row*total+c] = 1
				}
			}
		}
		st.a, st.b = s.Cat(as, 0), s.Cat(bs, 1)
		st.mask = s.ToDType(s.FromFloat32(mask, []int64{int64(len(lb.rows)), 1, int64(total)}, m.opts.Device), m.opts.DType)
	}
	lb.stacked[key] = st
	return st
}

// project is a block's linear projection plus the low-rank updates of the
// rows that carry one.
func (m *Model) project(s *tensor.Scope, x, w, b *tensor.Tensor, layer int, mod Module, lb *loraBatch) *tensor.Tensor {
	y := m.linear(s, x, w, b)
	if lb == nil {
		return y
	}
	if lb.all {
		u := lb.adapters[0].layers[layer][mod]
		if u == nil {
			return y
		}
		return s.Add(y, m.linear(s, m.linear(s, s.Dropout(x, u.dropout), u.a, nil), u.b, nil))
	}
	st := m.stack(s, lb, layer, mod)
	if st.a == nil {
		return y
	}
	return s.Add(y, s.Linear(s.Mul(s.Linear(x, st.a, nil), st.mask), st.b, nil))
}

// linear is x·wᵀ + b, in Options.Autocast's dtype when one is set (the
// result is converted back to the compute dtype).
func (m *Model) linear(s *tensor.Scope, x, w, b *tensor.Tensor) *tensor.Tensor {
	ac := m.opts.Autocast
	if ac == 0 || ac == m.opts.DType {
		return s.Linear(x, w, b)
	}
	if b != nil {
		b = s.ToDType(b, ac)
	}
	return s.ToDType(s.Linear(s.ToDType(x, ac), s.ToDType(w, ac), b), m.opts.DType)
}
