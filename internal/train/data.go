package train

import (
	"bufio"
	"encoding/csv"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/emoflow/emoflow/internal/contract"
	"github.com/emoflow/emoflow/internal/datasets"
	"github.com/emoflow/emoflow/internal/prompt"
	"github.com/emoflow/emoflow/labelmaps"
)

// Example is one labelled text for training or evaluation, its label in
// the template's label set.
type Example struct {
	ID    string `json:"id,omitempty"`
	Text  string `json:"text"`
	Label string `json:"label"`
	// Conversation and Role place the example in a dialogue (examples of
	// one conversation in dialogue order); Context, set by WithContexts,
	// is the conversation's previous examples.
	Conversation string        `json:"conversation_id,omitempty"`
	Role         string        `json:"speaker_role,omitempty"`
	Context      []prompt.Turn `json:"-"`
}

// DatasetRole is the speaker role data-set utterances get, as on the
// topics emoctl load-dataset writes (their speakers are characters or
// users, none of them an agent or a bot).
const DatasetRole = "user"

// WithContexts returns copies of ex, each with the (at most k) examples
// before it in its conversation as Context: the context the pipeline
// gives a message whose conversation's valid messages came in ex's order.
// Examples without a conversation have none.
func WithContexts(ex []Example, k int) []Example {
	out := slices.Clone(ex)
	windows := map[string][]prompt.Turn{}
	for i, e := range out {
		if e.Conversation == "" || k == 0 {
			out[i].Context = nil
			continue
		}
		w := windows[e.Conversation]
		out[i].Context = slices.Clone(w[max(0, len(w)-k):])
		role := e.Role
		if role == "" {
			role = DatasetRole
		}
		w = append(w, prompt.Turn{Role: role, Text: e.Text})
		windows[e.Conversation] = w[max(0, len(w)-k):]
	}
	return out
}

// Encode builds every example's tokens with in (its Context, then its
// text) and counts the texts cut to the text limit.
func Encode(in prompt.Input, ex []Example) (ids [][]int64, truncated int) {
	ids = make([][]int64, len(ex))
	for i, e := range ex {
		var cut bool
		if ids[i], _, cut = in.Tokens(e.Context, e.Text); cut {
			truncated++
		}
	}
	return ids, truncated
}

// Source names labelled data: a data set of ../shared/data ("meld",
// "goemotions-ekman", ...; see datasets.Sets) with a split, or a file of
// the user's own (JSONL with text and label fields, or CSV with text and
// label columns).
type Source struct {
	// Set is a data-set name, or "" for File.
	Set string
	// Split is train, dev or test (data sets only).
	Split string
	// File is a .jsonl or .csv file.
	File string
	// DataDir is the shared data folder (data sets only).
	DataDir string
	// LabelMap maps the source's labels to the template's ("" for none;
	// "auto" picks the labelmaps file from the set to ekman if there is one).
	LabelMap string
}

func (src Source) String() string {
	if src.File != "" {
		return src.File
	}
	return src.Set + "/" + src.Split
}

// DataStats count what loading a source kept and dropped.
type DataStats struct {
	Read int `json:"read"`
	Kept int `json:"kept"`
	// NoLabel rows have no single ground truth (multi-label GoEmotions).
	NoLabel int `json:"no_label"`
	// Unmapped rows have a label the label map gives no counterpart.
	Unmapped int `json:"unmapped"`
	// Empty rows have no text after normalisation.
	Empty int `json:"empty"`
}

// ErrBadData is data that cannot train or evaluate an adapter.
var ErrBadData = errors.New("bad training data")

// Load reads src, maps its labels, normalises texts as the pipeline does
// and checks every label is one of labels.
func Load(src Source, labels []string) ([]Example, DataStats, error) {
	var raw []Example
	var st DataStats
	var err error
	if src.File != "" {
		raw, err = readFile(src.File)
	} else {
		var ex []datasets.Example
		ex, err = datasets.Read(src.DataDir, datasets.Set(src.Set), src.Split)
		for _, e := range ex {
			raw = append(raw, Example{ID: e.ID, Text: e.Text, Label: e.Label, Conversation: e.Conversation, Role: DatasetRole})
		}
	}
	if err != nil {
		return nil, st, fmt.Errorf("%w: %s: %v", ErrBadData, src, err)
	}
	var lm *labelmaps.Map
	switch name := src.LabelMap; {
	case name == "auto" && src.Set != "":
		for _, n := range labelmaps.Names() {
			if n == src.Set+"-ekman" {
				if lm, err = labelmaps.Load(n); err != nil {
					return nil, st, err
				}
			}
		}
	case name != "" && name != "auto":
		if lm, err = labelmaps.Load(name); err != nil {
			return nil, st, err
		}
	}
	known := map[string]bool{}
	for _, l := range labels {
		known[l] = true
	}
	var out []Example
	for i, e := range raw {
		st.Read++
		if e.Label == "" {
			st.NoLabel++
			continue
		}
		if lm != nil {
			mapped, err := lm.Apply(e.Label)
			if errors.Is(err, labelmaps.ErrNoCounterpart) {
				st.Unmapped++
				continue
			}
			if err != nil {
				return nil, st, fmt.Errorf("%w: %s row %d: %v", ErrBadData, src, i+1, err)
			}
			e.Label = mapped
		}
		if !known[e.Label] {
			return nil, st, fmt.Errorf("%w: %s row %d: label %q is not in the template's label set %v (a label map? -label-map)", ErrBadData, src, i+1, e.Label, labels)
		}
		e.Text = contract.NormalizeText(e.Text)
		if e.Text == "" {
			st.Empty++
			continue
		}
		if e.ID == "" {
			e.ID = fmt.Sprintf("%d", i+1)
		}
		out = append(out, e)
	}
	st.Kept = len(out)
	if len(out) == 0 {
		return nil, st, fmt.Errorf("%w: %s holds no usable labelled text (%d rows read)", ErrBadData, src, st.Read)
	}
	return out, st, nil
}

// CheckClasses refuses training data with a single class: the adapter
// would learn a constant.
func CheckClasses(ex []Example, what string) error {
	for _, e := range ex[1:] {
		if e.Label != ex[0].Label {
			return nil
		}
	}
	return fmt.Errorf("%w: every %s example has the label %q; training needs at least two classes", ErrBadData, what, ex[0].Label)
}

// readFile reads the user format: JSONL ({"text": ..., "label": ...} per
// line, "id" optional) or CSV with a header naming text and label columns.
func readFile(path string) ([]Example, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	switch strings.ToLower(filepath.Ext(path)) {
	case ".jsonl", ".ndjson":
		return readJSONL(f)
	case ".csv":
		return readUserCSV(f)
	}
	return nil, fmt.Errorf("unknown format %q (want .jsonl or .csv)", filepath.Ext(path))
}

func readJSONL(r io.Reader) ([]Example, error) {
	var out []Example
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<16), 1<<24)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var e struct {
			ID           json.RawMessage `json:"id"`
			Text         *string         `json:"text"`
			Label        *string         `json:"label"`
			Conversation string          `json:"conversation_id"`
			Role         string          `json:"speaker_role"`
		}
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		if e.Text == nil || e.Label == nil {
			return nil, fmt.Errorf("line %d: want string fields text and label", n)
		}
		id := strings.Trim(string(e.ID), `"`)
		out = append(out, Example{ID: id, Text: *e.Text, Label: strings.TrimSpace(*e.Label), Conversation: e.Conversation, Role: e.Role})
	}
	return out, sc.Err()
}

func readUserCSV(r io.Reader) ([]Example, error) {
	cr := csv.NewReader(r)
	header, err := cr.Read()
	if err != nil {
		return nil, fmt.Errorf("header: %w", err)
	}
	col := map[string]int{}
	for i, h := range header {
		col[strings.ToLower(strings.TrimSpace(strings.TrimPrefix(h, "\ufeff")))] = i
	}
	ti, okT := col["text"]
	li, okL := col["label"]
	if !okT || !okL {
		return nil, fmt.Errorf("header %v: want text and label columns", header)
	}
	ii, okI := col["id"]
	ci, okC := col["conversation_id"]
	ri, okR := col["speaker_role"]
	var out []Example
	for n := 2; ; n++ {
		rec, err := cr.Read()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("row %d: %w", n, err)
		}
		e := Example{Text: rec[ti], Label: strings.TrimSpace(rec[li])}
		if okI {
			e.ID = rec[ii]
		}
		if okC {
			e.Conversation = rec[ci]
		}
		if okR {
			e.Role = rec[ri]
		}
		out = append(out, e)
	}
}
