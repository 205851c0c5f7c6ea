package model

import (
	"fmt"

	"github.com/emoflow/emoflow/internal/tensor"
)

// Logits runs b and returns the output layer's logits for every token,
// row-major [Rows, Len, Vocab], as float32 (for parity checks; scoring
// computes only the logits it needs).
func (m *Model) Logits(b *Batch) ([]float32, error) {
	s := tensor.NewScope()
	defer s.Close()
	h, _, err := m.forward(s, b, false)
	if err != nil {
		return nil, err
	}
	out := s.Float32s(s.Linear(h, m.head, nil))
	return out, s.Err()
}

// Generate continues prompt greedily (the most probable token each step,
// as THUDM's P-tuning evaluation does with do_sample=False) until one of
// stop or maxNew new tokens, and returns the new tokens. past is an
// adapter's P-tuning prefix (nil: the checkpoint's own, if any).
func (m *Model) Generate(prompt []int64, maxNew int, stop []int64, past *KV) ([]int64, error) {
	if len(prompt) == 0 {
		return nil, ErrEmptyText
	}
	if past == nil {
		past = m.prefix
	}
	P := 0
	if past != nil {
		P = past.Len
	}
	glm1 := m.cfg.Arch == ArchGLM1
	n := len(prompt)
	if glm1 && (n < 2 || prompt[n-2] != int64(m.cfg.GMaskTokenID) || prompt[n-1] != int64(m.cfg.BOSTokenID)) {
		return nil, fmt.Errorf("chatglm-6b prompts must end with [gMASK] <sop>")
	}
	// Prefill: the prompt with the same layout as scoring.
	b := &Batch{Rows: 1, Len: n, Tokens: prompt, Pos: make([]int64, n), Visible: make([]bool, n*(P+n)), Past: past}
	if glm1 {
		b.BlockPos = make([]int64, n)
	}
	for i := 0; i < n; i++ {
		for j := 0; j < P; j++ {
			b.Visible[i*(P+n)+j] = true
		}
		for j := 0; j <= i; j++ {
			b.Visible[i*(P+n)+P+j] = true
		}
		switch {
		case !glm1:
			b.Pos[i] = int64(i)
		case i < n-1:
			b.Pos[i] = int64(i)
			for j := 0; j < n-1; j++ {
				b.Visible[i*(P+n)+P+j] = true
			}
		default:
			b.Pos[i], b.BlockPos[i] = int64(n-2), 1
		}
	}
	var out []int64
	cache := past
	var owned []*KV
	defer func() {
		for _, kv := range owned {
			kv.Free()
		}
	}()
	for step := 0; step < maxNew; step++ {
		next, kv, err := m.nextToken(b)
		if err != nil {
			return nil, err
		}
		owned = append(owned, kv)
		joined, err := m.JoinKV(cache, kv)
		if err != nil {
			return nil, err
		}
		owned = append(owned, joined)
		cache = joined
		out = append(out, next)
		for _, s := range stop {
			if next == s {
				return out, nil
			}
		}
		T := cache.Len + 1
		b = &Batch{Rows: 1, Len: 1, Tokens: []int64{next}, Pos: []int64{int64(n + step)}, Visible: make([]bool, T), Past: cache}
		for j := range b.Visible {
			b.Visible[j] = true
		}
		if glm1 {
			b.Pos[0], b.BlockPos = int64(n-2), []int64{int64(step + 2)}
		}
	}
	return out, nil
}

// nextToken runs b and returns the argmax of the last position's logits and
// the batch's keys and values (owned by the caller).
func (m *Model) nextToken(b *Batch) (int64, *KV, error) {
	s := tensor.NewScope()
	defer s.Close()
	h, kv, err := m.forward(s, b, true)
	if err != nil {
		return 0, nil, err
	}
	last := s.Select(s.Select(h, 0, 0), 0, int64(b.Len-1))
	ids := s.Int64s(s.Argmax(s.Linear(last, m.head, nil), -1))
	if err := s.Err(); err != nil {
		return 0, nil, err
	}
	return ids[0], keepKVTensors(s, kv), nil
}
