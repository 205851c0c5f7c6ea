package model

import (
	"encoding/binary"
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"testing"

	"github.com/emoflow/emoflow/internal/safetensors"
	"github.com/emoflow/emoflow/internal/tensor"
	"github.com/emoflow/emoflow/internal/testenv"
)

// The chatglm.cpp fixtures (../shared/fixtures/chatglm-cpp-tiny, see its
// LAYOUT.md) are raw float32 dumps of one-layer random models and the
// reference last hidden states for a prefill of three tokens and two decode
// steps with a KV cache. These tests write each dump as a checkpoint in
// THUDM's tensor names, load it through the normal loader and compare.

type fixtureReader struct {
	t    *testing.T
	data []byte
	off  int
}

func (r *fixtureReader) f32(n int) []byte {
	r.t.Helper()
	if r.off+4*n > len(r.data) {
		r.t.Fatalf("fixture too short: want %d more floats at %d", n, r.off)
	}
	b := r.data[r.off : r.off+4*n]
	r.off += 4 * n
	return b
}

func (r *fixtureReader) i32(n int) []int64 {
	out := make([]int64, n)
	for i := range out {
		out[i] = int64(int32(binary.LittleEndian.Uint32(r.data[r.off:])))
		r.off += 4
	}
	return out
}

func floats(b []byte) []float32 {
	out := make([]float32, len(b)/4)
	for i := range out {
		out[i] = math.Float32frombits(binary.LittleEndian.Uint32(b[4*i:]))
	}
	return out
}

type fixtureStep struct {
	tokens []int64
	want   []float32
}

func writeCheckpoint(t *testing.T, config map[string]any, tensors []safetensors.Tensor) string {
	t.Helper()
	dir := t.TempDir()
	cj, _ := json.Marshal(config)
	if err := os.WriteFile(filepath.Join(dir, "config.json"), cj, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := safetensors.Write(filepath.Join(dir, "model.safetensors"), tensors, nil); err != nil {
		t.Fatal(err)
	}
	return dir
}

func f32t(name string, data []byte, shape ...int64) safetensors.Tensor {
	return safetensors.Tensor{Name: name, DType: "F32", Shape: shape, Data: data}
}

// readGLM2Fixture turns a glm2/glm3/glm4 dump into a checkpoint folder.
func readGLM2Fixture(t *testing.T, file string, prefixBytes int, config map[string]any) (string, []byte, []fixtureStep) {
	raw, err := os.ReadFile(testenv.Shared(t, "fixtures/chatglm-cpp-tiny/"+file))
	if err != nil {
		t.Fatal(err)
	}
	prefix := raw[:prefixBytes]
	r := &fixtureReader{t: t, data: raw[prefixBytes:]}
	p := "transformer.encoder.layers.0."
	tensors := []safetensors.Tensor{
		f32t("transformer.embedding.word_embeddings.weight", r.f32(5*32), 5, 32),
		f32t(p+"input_layernorm.weight", r.f32(32), 32),
		f32t(p+"self_attention.query_key_value.weight", r.f32(48*32), 48, 32),
		f32t(p+"self_attention.query_key_value.bias", r.f32(48), 48),
		f32t(p+"self_attention.dense.weight", r.f32(32*32), 32, 32),
		f32t(p+"post_attention_layernorm.weight", r.f32(32), 32),
		f32t(p+"mlp.dense_h_to_4h.weight", r.f32(96*32), 96, 32),
		f32t(p+"mlp.dense_4h_to_h.weight", r.f32(32*48), 32, 48),
		f32t("transformer.encoder.final_layernorm.weight", r.f32(32), 32),
		// The fixture stops at the last hidden state; any output layer will do.
		f32t("transformer.output_layer.weight", make([]byte, 4*5*32), 5, 32),
	}
	steps := readSteps(r)
	base := map[string]any{
		"model_type": "chatglm", "num_layers": 1, "hidden_size": 32, "num_attention_heads": 8,
		"kv_channels": 4, "ffn_hidden_size": 48, "padded_vocab_size": 5, "layernorm_epsilon": 1e-5,
		"multi_query_attention": true, "multi_query_group_num": 2, "add_qkv_bias": true,
		"add_bias_linear": false, "rmsnorm": true, "post_layer_norm": true, "original_rope": true,
	}
	for k, v := range config {
		base[k] = v
	}
	return writeCheckpoint(t, base, tensors), prefix, steps
}

func readSteps(r *fixtureReader) []fixtureStep {
	var steps []fixtureStep
	for _, n := range []int{3, 1, 1} {
		tok := r.i32(n)
		steps = append(steps, fixtureStep{tokens: tok, want: floats(r.f32(n * 32))})
	}
	if r.off != len(r.data) {
		r.t.Fatalf("fixture has %d bytes left over: layout misread", len(r.data)-r.off)
	}
	return steps
}

// runSteps runs the prefill and decode steps with a growing KV cache and
// compares the hidden states. positions and visible give each step's
// rotary positions and mask (over past+new keys).
type stepLayout func(step int, past int) (pos, block []int64, visible []bool)

func runSteps(t *testing.T, m *Model, baseline *KV, steps []fixtureStep, layout stepLayout, tol float64) {
	t.Helper()
	past := baseline
	pastLen := 0
	if baseline != nil {
		pastLen = baseline.Len
	}
	var owned []*KV
	defer func() {
		for _, kv := range owned {
			kv.Free()
		}
	}()
	for i, st := range steps {
		pos, block, vis := layout(i, pastLen)
		b := &Batch{Rows: 1, Len: len(st.tokens), Tokens: st.tokens, Pos: pos, BlockPos: block, Visible: vis, Past: past}
		got, kv, err := m.Forward(b, true)
		if err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
		owned = append(owned, kv)
		if d := maxAbsDiff(got, st.want); d > tol {
			t.Fatalf("step %d: hidden states differ from the reference by %g (> %g)\ngot  %v\nwant %v", i, d, tol, got[:8], st.want[:8])
		}
		joined, err := m.JoinKV(past, kv)
		if err != nil {
			t.Fatal(err)
		}
		owned = append(owned, joined)
		past, pastLen = joined, joined.Len
	}
}

func maxAbsDiff(a, b []float32) float64 {
	if len(a) != len(b) {
		return math.Inf(1)
	}
	d := 0.0
	for i := range a {
		d = math.Max(d, math.Abs(float64(a[i]-b[i])))
	}
	return d
}

// causalLayout: step 0 has 3 tokens at positions 0..2, later steps one
// token each, all keys visible up to the token itself.
func causalLayout(prefix int) stepLayout {
	return func(step, pastLen int) ([]int64, []int64, []bool) {
		n := 1
		start := pastLen - prefix
		if step == 0 {
			n, start = 3, 0
		}
		pos := make([]int64, n)
		vis := make([]bool, n*(pastLen+n))
		for i := 0; i < n; i++ {
			pos[i] = int64(start + i)
			for j := 0; j < pastLen+n; j++ {
				vis[i*(pastLen+n)+j] = j < pastLen || j-pastLen <= i
			}
		}
		return pos, nil, vis
	}
}

func TestChatGLMCppFixturesGLM2Family(t *testing.T) {
	for _, tc := range []struct {
		file   string
		config map[string]any
	}{
		{"glm2_model.data", nil},
		{"glm3_model.data", nil},
		{"glm4_model.data", map[string]any{"rope_ratio": 500, "layernorm_epsilon": 1.5625e-07}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			dir, _, steps := readGLM2Fixture(t, tc.file, 0, tc.config)
			m, err := Load(dir, Options{DType: tensor.Float32})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			runSteps(t, m, nil, steps, causalLayout(0), 1e-5)
		})
	}
}

// ptuningFixtureTolerance is the bound for glm3_ptuning_v2_model.data: the
// fixture stores its prefix as float16 while the reference states were
// computed from the float32 prefix, so float16 rounding (relative 2^-11 on
// values up to 0.5) limits the agreement. (The ChatGLM-6B P-tuning fixture
// agrees within 1e-5.)
const ptuningFixtureTolerance = 3e-4

func TestChatGLMCppFixtureGLM3PTuningV2(t *testing.T) {
	const preSeqLen = 5
	dir, prefixRaw, steps := readGLM2Fixture(t, "glm3_ptuning_v2_model.data", 160, nil)
	m, err := Load(dir, Options{DType: tensor.Float32})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	prefix, err := m.PrefixFromRaw(prefixRaw, tensor.Float16, preSeqLen)
	if err != nil {
		t.Fatal(err)
	}
	defer prefix.Free()
	runSteps(t, m, prefix, steps, causalLayout(preSeqLen), ptuningFixtureTolerance)
}

// readGLM1Fixture turns a ChatGLM-6B dump into a checkpoint folder.
func readGLM1Fixture(t *testing.T, file string, prefixBytes int) (string, []byte, []fixtureStep) {
	raw, err := os.ReadFile(testenv.Shared(t, "fixtures/chatglm-cpp-tiny/"+file))
	if err != nil {
		t.Fatal(err)
	}
	prefix := raw[:prefixBytes]
	r := &fixtureReader{t: t, data: raw[prefixBytes:]}
	p := "transformer.layers.0."
	tensors := []safetensors.Tensor{
		f32t("transformer.word_embeddings.weight", r.f32(5*32), 5, 32),
		f32t(p+"input_layernorm.weight", r.f32(32), 32),
		f32t(p+"input_layernorm.bias", r.f32(32), 32),
		f32t(p+"attention.query_key_value.weight", r.f32(96*32), 96, 32),
		f32t(p+"attention.query_key_value.bias", r.f32(96), 96),
		f32t(p+"attention.dense.weight", r.f32(32*32), 32, 32),
		f32t(p+"attention.dense.bias", r.f32(32), 32),
		f32t(p+"post_attention_layernorm.weight", r.f32(32), 32),
		f32t(p+"post_attention_layernorm.bias", r.f32(32), 32),
		f32t(p+"mlp.dense_h_to_4h.weight", r.f32(128*32), 128, 32),
		f32t(p+"mlp.dense_h_to_4h.bias", r.f32(128), 128),
		f32t(p+"mlp.dense_4h_to_h.weight", r.f32(32*128), 32, 128),
		f32t(p+"mlp.dense_4h_to_h.bias", r.f32(32), 32),
		f32t("transformer.final_layernorm.weight", r.f32(32), 32),
		f32t("transformer.final_layernorm.bias", r.f32(32), 32),
	}
	steps := readSteps(r)
	config := map[string]any{
		"model_type": "chatglm", "num_layers": 1, "hidden_size": 32, "num_attention_heads": 8,
		"inner_hidden_size": 128, "vocab_size": 5, "layernorm_epsilon": 1e-5, "position_encoding_2d": true,
		"max_sequence_length": 8, "gmask_token_id": 1, "bos_token_id": 2, "eos_token_id": 4, "mask_token_id": 3,
	}
	return writeCheckpoint(t, config, tensors), prefix, steps
}

// glm1Layout: the prompt [x, [gMASK], <sop>] is the context up to <sop>
// (bidirectional), then generation is causal; positions stay at the
// [gMASK] position while block positions count the generated tokens.
func glm1Layout(prefix int) stepLayout {
	return func(step, pastLen int) ([]int64, []int64, []bool) {
		if step == 0 {
			P := pastLen
			vis := make([]bool, 3*(P+3))
			for i := 0; i < 3; i++ {
				for j := 0; j < P+3; j++ {
					k := j - P
					vis[i*(P+3)+j] = j < P || k < 2 || k <= i
				}
			}
			return []int64{0, 1, 1}, []int64{0, 0, 1}, vis
		}
		vis := make([]bool, pastLen+1)
		for j := range vis {
			vis[j] = true
		}
		return []int64{1}, []int64{int64(step + 1)}, vis
	}
}

func TestChatGLMCppFixtureGLM1(t *testing.T) {
	dir, _, steps := readGLM1Fixture(t, "glm_model.data", 0)
	m, err := Load(dir, Options{DType: tensor.Float32})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	runSteps(t, m, nil, steps, glm1Layout(0), 1e-5)
}

func TestChatGLMCppFixtureGLM1PTuningV2(t *testing.T) {
	const preSeqLen = 5
	dir, prefixRaw, steps := readGLM1Fixture(t, "glm_ptuning_v2_model.data", 640)
	m, err := Load(dir, Options{DType: tensor.Float32})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	prefix, err := m.PrefixFromRaw(prefixRaw, tensor.Float16, preSeqLen)
	if err != nil {
		t.Fatal(err)
	}
	defer prefix.Free()
	runSteps(t, m, prefix, steps, glm1Layout(preSeqLen), 1e-5)
}
