package labelmaps

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"testing"

	"github.com/emoflow/emoflow/internal/datasets"
	"github.com/emoflow/emoflow/internal/prompt"
)

// TestEveryMapAccountsForItsDataSet: every label of the source data set is
// mapped or listed without counterpart, nothing else is, and every target
// label is one the default prompt predicts.
func TestEveryMapAccountsForItsDataSet(t *testing.T) {
	names := Names()
	if want := []string{"carer-ekman", "dailydialog-ekman", "emorynlp-ekman"}; !reflect.DeepEqual(names, want) {
		t.Fatalf("maps %v, want %v", names, want)
	}
	if !reflect.DeepEqual(Ekman(), prompt.Default().Labels) {
		t.Fatalf("Ekman() %v differs from the default prompt's labels %v", Ekman(), prompt.Default().Labels)
	}
	for _, name := range names {
		m, err := Load(name)
		if err != nil {
			t.Fatal(err)
		}
		if m.Name != name || m.To != "ekman" {
			t.Errorf("%s: name %q to %q", name, m.Name, m.To)
		}
		want := append([]string{}, datasets.Labels(datasets.Set(m.From))...)
		sort.Strings(want)
		if len(want) == 0 || !reflect.DeepEqual(m.Sources(), want) {
			t.Errorf("%s: source labels %v, data set %s has %v", name, m.Sources(), m.From, want)
		}
		for from, to := range m.Labels {
			if !slices.Contains(Ekman(), to) {
				t.Errorf("%s: %q maps to %q, not an Ekman label", name, from, to)
			}
		}
	}
}

func TestApply(t *testing.T) {
	dd, err := Load("dailydialog-ekman")
	if err != nil {
		t.Fatal(err)
	}
	for from, want := range map[string]string{"happiness": "joy", "no emotion": "neutral", "anger": "anger"} {
		if got, err := dd.Apply(from); err != nil || got != want {
			t.Errorf("%q -> %q, %v; want %q", from, got, err, want)
		}
	}
	if _, err := dd.Apply("joy"); !errors.Is(err, ErrUnknownLabel) {
		t.Errorf("a target label as source: %v, want ErrUnknownLabel", err)
	}
	em, err := Load("emorynlp-ekman")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []string{"Peaceful", "Powerful"} {
		if _, err := em.Apply(l); !errors.Is(err, ErrNoCounterpart) {
			t.Errorf("%s: %v, want ErrNoCounterpart", l, err)
		}
	}
	if got, err := em.Apply("Mad"); err != nil || got != "anger" {
		t.Errorf("Mad -> %q, %v", got, err)
	}
}

func TestLoadRejectsBadMaps(t *testing.T) {
	if _, err := Load("klingon-ekman"); err == nil {
		t.Error("an unknown map name loaded")
	}
	dir := t.TempDir()
	bad := map[string]string{
		"missing-from.json": `{"to": "ekman", "map": {"a": "joy"}}`,
		"empty-map.json":    `{"from": "x", "to": "ekman", "map": {}}`,
		"both.json":         `{"from": "x", "to": "ekman", "map": {"a": "joy"}, "no_counterpart": ["a"]}`,
		"typo-field.json":   `{"from": "x", "to": "ekman", "mapping": {"a": "joy"}}`,
		"not-json.json":     `from: x`,
	}
	for file, body := range bad {
		path := filepath.Join(dir, file)
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := Load(path); err == nil {
			t.Errorf("%s loaded", file)
		}
	}
	good := filepath.Join(dir, "mine.json")
	if err := os.WriteFile(good, []byte(`{"from": "x", "to": "y", "map": {"a": "b"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if m, err := Load(good); err != nil || m.Name != "mine" {
		t.Errorf("a map from a file: %+v, %v", m, err)
	}
}
