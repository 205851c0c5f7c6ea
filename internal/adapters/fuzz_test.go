package adapters

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/emoflow/emoflow/internal/classifyapi"
	"github.com/emoflow/emoflow/internal/randmodel"
	"github.com/emoflow/emoflow/internal/safetensors"
)

// FuzzReadManifest writes arbitrary bytes as emoflow-adapter.json. A
// refusal names the folder; an accepted manifest has a valid id@version
// (that classifyapi.ParseAdapterRef splits back), method, fingerprint and
// template, is read back the same after WriteManifest, and cut short by its
// last byte is refused.
func FuzzReadManifest(f *testing.F) {
	for _, s := range []string{
		`{"id":"support-ekman","version":"3","method":"lora","base_model":{"name":"chatglm3-6b","fingerprint":"9f2c"},` +
			`"template":{"name":"t","text":"{labels}: {text}","labels":["anger","joy"],"wrap":"chat"},"language":"en","merge":true}`,
		`{"id":"pt","version":"1+b.2","method":"ptuning-v2","base_model":{"fingerprint":"x"},"template":{"text":"{text}","labels":["a"],"wrap":"raw"}}`,
		`{"id":"base","version":"1","method":"lora"}`,
		`{"id":"a","version":"1","method":"prefix-tuning","merge":true}`,
	} {
		f.Add([]byte(s))
	}
	// Inputs run one at a time in a process: they share two folders.
	dir, again := f.TempDir(), f.TempDir()
	f.Fuzz(func(t *testing.T, raw []byte) {
		write(t, filepath.Join(dir, ManifestFile), raw)
		m, err := ReadManifest(dir)
		if err != nil {
			if !strings.Contains(err.Error(), dir) {
				t.Fatalf("error %q does not name the folder", err)
			}
			return
		}
		id, version, err := classifyapi.ParseAdapterRef(m.Ref())
		if err != nil || id != m.ID || version != m.Version || !namePattern.MatchString(m.ID) || !versionPattern.MatchString(m.Version) || m.ID == "base" {
			t.Fatalf("accepted ref %q: %q %q %v", m.Ref(), id, version, err)
		}
		if (m.Method != MethodLoRA && m.Method != MethodPTuningV2 && m.Method != MethodPrefixTuning) ||
			(m.Merge && m.Method != MethodLoRA) || m.BaseModel.Fingerprint == "" || m.Template.Validate() != nil {
			t.Fatalf("accepted %+v", m)
		}
		if err := WriteManifest(again, m); err != nil {
			t.Fatal(err)
		}
		if m2, err := ReadManifest(again); err != nil || !reflect.DeepEqual(m2, m) {
			t.Fatalf("written and read again: %+v, %v; want %+v", m2, err, m)
		}
		trimmed := bytes.TrimSpace(raw)
		write(t, filepath.Join(dir, ManifestFile), trimmed[:len(trimmed)-1])
		if _, err := ReadManifest(dir); err == nil {
			t.Fatalf("accepted %q cut by its last byte", trimmed)
		}
	})
}

// loraPath is the module the FuzzPEFTLoRAConfig adapters hold.
const loraPath = "transformer.encoder.layers.1.self_attention.query_key_value"

// FuzzPEFTLoRAConfig writes arbitrary bytes as adapter_config.json beside a
// valid adapter_model.safetensors of rank rank%3 (0 is an empty pair) for
// one module, and reads the adapter. An accepted adapter is one part of a
// positive rank equal to the tensors', with A and B of that rank, and a
// scale finite in float32 (the engine computes in float32).
//
// readPEFTLoRA does not use the base model yet, so none is loaded; give it
// one if it starts to.
func FuzzPEFTLoRAConfig(f *testing.F) {
	for _, s := range []string{
		`{"peft_type":"LORA","r":2,"lora_alpha":16,"target_modules":["query_key_value"],"bias":"none","use_rslora":true}`,
		`{"peft_type":"LORA","r":8,"lora_alpha":16,"target_modules":".*\\.layers\\.1\\..*","rank_pattern":{"query_key_value":1},"alpha_pattern":{"layers.1.self_attention.query_key_value":2}}`,
		`{"peft_type":"LORA","r":1,"target_modules":"(a|b"}`,
		`{"peft_type":"LORA","r":2,"target_modules":["dense"],"modules_to_save":["x"]}`,
	} {
		f.Add([]byte(s), uint8(2))
		f.Add([]byte(s), uint8(1))
	}
	// One folder per rank, with its weights written once; each input only
	// replaces adapter_config.json.
	dirs := make([]string, 3)
	for r := range dirs {
		dirs[r] = f.TempDir()
		a := make([]float32, r*4)
		b := make([]float32, 6*r)
		for i := range a {
			a[i] = float32(i) / 8
		}
		for i := range b {
			b[i] = -float32(i) / 4
		}
		err := safetensors.Write(filepath.Join(dirs[r], "adapter_model.safetensors"), []safetensors.Tensor{
			{Name: "base_model.model." + loraPath + ".lora_A.weight", DType: "F32", Shape: []int64{int64(r), 4}, Data: randmodel.Encode(a, "F32")},
			{Name: "base_model.model." + loraPath + ".lora_B.weight", DType: "F32", Shape: []int64{6, int64(r)}, Data: randmodel.Encode(b, "F32")},
		}, nil)
		if err != nil {
			f.Fatal(err)
		}
	}
	f.Fuzz(func(t *testing.T, config []byte, rank uint8) {
		r := int(rank % 3)
		write(t, filepath.Join(dirs[r], "adapter_config.json"), config)
		parts, err := readPEFTLoRA(dirs[r], nil)
		if err != nil {
			return
		}
		if len(parts) != 1 {
			t.Fatalf("%d parts from one module", len(parts))
		}
		p := parts[0]
		if p.Rank <= 0 || p.Rank != r || len(p.A) != 4*r || len(p.B) != 6*r || p.Layer != 1 || p.Target != "query_key_value" {
			t.Fatalf("accepted a part of rank %d (tensors of rank %d), layer %d, target %q, %d and %d values",
				p.Rank, r, p.Layer, p.Target, len(p.A), len(p.B))
		}
		if math.IsNaN(p.Scale) || math.Abs(p.Scale) > math.MaxFloat32 {
			t.Fatalf("accepted a scale of %g", p.Scale)
		}
	})
}

func write(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatal(fmt.Errorf("write %s: %w", path, err))
	}
}
