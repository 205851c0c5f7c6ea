package contract

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// jsonFields lists the JSON names of a struct's fields, and those without
// omitempty (which a schema must require).
func jsonFields(t reflect.Type) (all, required []string) {
	for i := 0; i < t.NumField(); i++ {
		tag := t.Field(i).Tag.Get("json")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "" || name == "-" {
			continue
		}
		all = append(all, name)
		if !strings.Contains(opts, "omitempty") {
			required = append(required, name)
		}
	}
	sort.Strings(all)
	sort.Strings(required)
	return all, required
}

// TestSchemasMatchTheGoContracts keeps api/schemas in step with the structs:
// the same properties, and the fields that are always present required.
func TestSchemasMatchTheGoContracts(t *testing.T) {
	for file, typ := range map[string]reflect.Type{
		"chat-message.schema.json":  reflect.TypeOf(ChatMessage{}),
		"emotion-event.schema.json": reflect.TypeOf(EmotionEvent{}),
	} {
		raw, err := os.ReadFile(filepath.Join("..", "..", "api", "schemas", file))
		if err != nil {
			t.Fatal(err)
		}
		var schema struct {
			Required   []string                   `json:"required"`
			Properties map[string]json.RawMessage `json:"properties"`
		}
		if err := json.Unmarshal(raw, &schema); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		var props []string
		for p := range schema.Properties {
			props = append(props, p)
		}
		sort.Strings(props)
		sort.Strings(schema.Required)
		all, required := jsonFields(typ)
		if !reflect.DeepEqual(props, all) {
			t.Errorf("%s properties %v, Go fields %v", file, props, all)
		}
		if !reflect.DeepEqual(schema.Required, required) {
			t.Errorf("%s required %v, Go fields without omitempty %v", file, schema.Required, required)
		}
	}
}
