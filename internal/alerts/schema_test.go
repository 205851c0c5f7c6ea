package alerts

import (
	"encoding/json"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/emoflow/emoflow/internal/testenv"
)

// TestAlertSchemaMatchesTheGoType keeps api/schemas/alert.schema.json in
// step with Alert: the same properties, and the fields that are always
// present required.
func TestAlertSchemaMatchesTheGoType(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join(testenv.RepoRoot(t), "api", "schemas", "alert.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	var schema struct {
		Required   []string                   `json:"required"`
		Properties map[string]json.RawMessage `json:"properties"`
	}
	if err := json.Unmarshal(raw, &schema); err != nil {
		t.Fatal(err)
	}
	var all, required, props []string
	typ := reflect.TypeOf(Alert{})
	for i := range typ.NumField() {
		name, opts, _ := strings.Cut(typ.Field(i).Tag.Get("json"), ",")
		all = append(all, name)
		if !strings.Contains(opts, "omitempty") {
			required = append(required, name)
		}
	}
	for p := range schema.Properties {
		props = append(props, p)
	}
	slices.Sort(all)
	slices.Sort(required)
	slices.Sort(props)
	slices.Sort(schema.Required)
	if !slices.Equal(props, all) {
		t.Errorf("schema properties %v, Go fields %v", props, all)
	}
	if !slices.Equal(schema.Required, required) {
		t.Errorf("schema required %v, Go fields without omitempty %v", schema.Required, required)
	}
}
