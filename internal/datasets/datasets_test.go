package datasets

import (
	"strconv"
	"strings"
	"testing"

	"github.com/emoflow/emoflow/internal/testenv"
)

func TestReadEverySplit(t *testing.T) {
	root := testenv.Shared(t, "data")
	want := map[Set]map[string]int{
		GoEmotionsEkman: {"train": 43410, "dev": 5426, "test": 5427},
		MELD:            {"train": 9989, "dev": 1109, "test": 2610},
		EmoryNLP:        {"train": 7551, "dev": 954, "test": 984},
		CARER:           {"train": 16000, "dev": 2000, "test": 2000},
		DailyDialog:     {"dev": 8069, "test": 7740},
	}
	for set, splits := range want {
		labels := map[string]bool{}
		for _, l := range Labels(set) {
			labels[l] = true
		}
		for split, n := range splits {
			ex, err := Read(root, set, split)
			if err != nil {
				t.Fatalf("%s %s: %v", set, split, err)
			}
			if len(ex) != n {
				t.Errorf("%s %s: %d examples, want %d", set, split, len(ex), n)
			}
			ids := map[string]bool{}
			for _, e := range ex {
				if e.Text == "" || e.ID == "" || e.Conversation == "" {
					t.Fatalf("%s %s: incomplete example %+v", set, split, e)
				}
				if e.Label != "" && !labels[e.Label] {
					t.Fatalf("%s %s: label %q not in the set's labels", set, split, e.Label)
				}
				if ids[e.ID] {
					t.Fatalf("%s %s: duplicate id %s", set, split, e.ID)
				}
				ids[e.ID] = true
			}
		}
	}
}

// TestDialogueOrder: the sets with dialogues come in dialogue order, each
// dialogue's utterances together and in order, as conversation contexts
// (offline and streamed alike) take them.
func TestDialogueOrder(t *testing.T) {
	root := testenv.Shared(t, "data")
	for _, set := range []Set{MELD, EmoryNLP, DailyDialog} {
		for _, split := range []string{"dev", "test"} {
			ex, err := Read(root, set, split)
			if err != nil {
				t.Fatal(err)
			}
			done := map[string]bool{}
			last := map[string]int{}
			prev := ""
			for _, e := range ex {
				if e.Conversation != prev {
					if done[e.Conversation] {
						t.Fatalf("%s %s: dialogue %s comes back after others", set, split, e.Conversation)
					}
					done[prev] = true
					prev = e.Conversation
				}
				u := utterance(e.ID)
				if n, ok := last[e.Conversation]; ok && u <= n {
					t.Fatalf("%s %s: %s after utterance %d of its dialogue", set, split, e.ID, n)
				}
				last[e.Conversation] = u
			}
			if len(last) < 50 {
				t.Fatalf("%s %s: only %d dialogues", set, split, len(last))
			}
		}
	}
}

// utterance is the number after the last "u" of an example id.
func utterance(id string) int {
	n, _ := strconv.Atoi(id[strings.LastIndex(id, "u")+1:])
	return n
}
