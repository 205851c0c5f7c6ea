// Package labelmaps owns the mappings between the label sets of the
// labelled data sets and the label set adapters predict (Ekman's six
// emotions plus neutral): small JSON files in this folder, embedded in the
// binaries, applied to ground-truth labels when a data set is loaded
// (emoctl load-dataset) or when a run is evaluated (emoctl eval).
//
// A file names the source and target label sets, maps every source label
// that has a counterpart, and lists those that have none, so that every
// label of the source set is accounted for:
//
//	{"from": "dailydialog", "to": "ekman",
//	 "map": {"happiness": "joy", "no emotion": "neutral", ...},
//	 "no_counterpart": []}
package labelmaps

import (
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

//go:embed *.json
var files embed.FS

// Ekman is the target label set of the maps: Ekman's six basic emotions
// plus neutral, the labels of the classifier's default prompt.
func Ekman() []string {
	return []string{"anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"}
}

// Map is one label mapping.
type Map struct {
	// Name is the file name without ".json" ("dailydialog-ekman"), or the
	// path of a file given by path.
	Name string `json:"-"`
	// From and To name the source and target label sets.
	From string `json:"from"`
	To   string `json:"to"`
	// Note says, for people, why the mapping is what it is.
	Note string `json:"note,omitempty"`
	// Labels maps source labels to target labels.
	Labels map[string]string `json:"map"`
	// NoCounterpart are the source labels without a target label.
	NoCounterpart []string `json:"no_counterpart"`
}

// Errors of Map.Apply.
var (
	// ErrNoCounterpart is a source label the map says has no target label.
	ErrNoCounterpart = errors.New("no counterpart")
	// ErrUnknownLabel is a label that is not in the map's source label set.
	ErrUnknownLabel = errors.New("not a label of the map's source set")
)

// Apply returns the target label of a source label.
func (m *Map) Apply(label string) (string, error) {
	if to, ok := m.Labels[label]; ok {
		return to, nil
	}
	for _, l := range m.NoCounterpart {
		if l == label {
			return "", fmt.Errorf("label %q (%s to %s): %w", label, m.From, m.To, ErrNoCounterpart)
		}
	}
	return "", fmt.Errorf("label %q (%s to %s): %w", label, m.From, m.To, ErrUnknownLabel)
}

// Sources returns the source labels the map knows, mapped or not, sorted.
func (m *Map) Sources() []string {
	var out []string
	for l := range m.Labels {
		out = append(out, l)
	}
	out = append(out, m.NoCounterpart...)
	sort.Strings(out)
	return out
}

// Names lists the embedded maps.
func Names() []string {
	entries, err := fs.Glob(files, "*.json")
	if err != nil {
		return nil // only a malformed pattern fails
	}
	names := make([]string, len(entries))
	for i, e := range entries {
		names[i] = strings.TrimSuffix(e, ".json")
	}
	return names
}

// Load returns the embedded map called name ("dailydialog-ekman"), or, when
// name is a path (it contains a slash or ends in ".json"), the map in that
// file.
func Load(name string) (*Map, error) {
	var raw []byte
	var err error
	if strings.ContainsRune(name, filepath.Separator) || strings.ContainsRune(name, '/') || strings.HasSuffix(name, ".json") {
		raw, err = os.ReadFile(name)
	} else {
		raw, err = files.ReadFile(name + ".json")
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("label map %q: no such map (the maps are %s, or give a file path)", name, strings.Join(Names(), ", "))
		}
	}
	if err != nil {
		return nil, fmt.Errorf("label map %q: %w", name, err)
	}
	m, err := parse(raw)
	if err != nil {
		return nil, fmt.Errorf("label map %q: %w", name, err)
	}
	m.Name = strings.TrimSuffix(filepath.Base(name), ".json")
	return m, nil
}

func parse(raw []byte) (*Map, error) {
	var m Map
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("decode: %w", err)
	}
	var errs []error
	if m.From == "" || m.To == "" {
		errs = append(errs, errors.New(`"from" and "to" are required`))
	}
	if len(m.Labels) == 0 {
		errs = append(errs, errors.New(`"map" is empty`))
	}
	for from, to := range m.Labels {
		if from == "" || to == "" {
			errs = append(errs, fmt.Errorf("empty label in %q: %q", from, to))
		}
	}
	seen := map[string]bool{}
	for _, l := range m.NoCounterpart {
		if _, mapped := m.Labels[l]; mapped {
			errs = append(errs, fmt.Errorf("label %q is both mapped and without counterpart", l))
		}
		if seen[l] {
			errs = append(errs, fmt.Errorf("label %q listed twice without counterpart", l))
		}
		seen[l] = true
	}
	return &m, errors.Join(errs...)
}
