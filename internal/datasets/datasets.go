// Package datasets reads the labelled emotion data sets kept in ../shared/data
// (GoEmotions, MELD, EmoryNLP, CARER, DailyDialog) into one shape: texts
// with their conversation, speaker and ground-truth label. The demo
// producer, the benchmarks and the data-set loader of replays use it; the
// files themselves are never copied into the repository.
package datasets

import (
	"bufio"
	"encoding/csv"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// Example is one labelled utterance.
type Example struct {
	// ID is unique within the data set and split.
	ID string
	// Conversation groups utterances of one dialogue (the comment id for
	// GoEmotions, which has no dialogues).
	Conversation string
	Speaker      string
	Text         string
	// Label is the data set's own label name ("" when the row has several
	// GoEmotions labels: multi-label rows have no single ground truth).
	Label string
}

// Set names a data set this package reads.
type Set string

// The data sets.
const (
	GoEmotionsEkman Set = "goemotions-ekman"
	MELD            Set = "meld"
	EmoryNLP        Set = "emorynlp"
	CARER           Set = "carer"
	DailyDialog     Set = "dailydialog"
)

// Sets lists every data set.
var Sets = []Set{GoEmotionsEkman, MELD, EmoryNLP, CARER, DailyDialog}

// Labels is each data set's label set, in its own order.
func Labels(set Set) []string {
	switch set {
	case GoEmotionsEkman:
		return []string{"anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise"}
	case MELD:
		return []string{"neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear"}
	case EmoryNLP:
		return []string{"Neutral", "Joyful", "Peaceful", "Powerful", "Scared", "Mad", "Sad"}
	case CARER:
		return []string{"sadness", "joy", "love", "anger", "fear", "surprise"}
	case DailyDialog:
		return []string{"no emotion", "anger", "disgust", "fear", "happiness", "sadness", "surprise"}
	}
	return nil
}

// Read returns the examples of split ("train", "dev" or "test") of set,
// from root (the shared data folder).
func Read(root string, set Set, split string) ([]Example, error) {
	var (
		ex  []Example
		err error
	)
	switch set {
	case GoEmotionsEkman:
		ex, err = readGoEmotions(filepath.Join(root, "goemotions", "ekman", split+".tsv"))
	case MELD:
		ex, err = readMELD(filepath.Join(root, "meld", split+"_sent_emo.csv"))
	case EmoryNLP:
		ex, err = readEmoryNLP(filepath.Join(root, "emorynlp", "emorynlp_"+split+"_final.csv"))
	case CARER:
		name := split
		if split == "dev" {
			name = "val"
		}
		ex, err = readCARER(filepath.Join(root, "carer", name+".txt"))
	case DailyDialog:
		name := split
		if split == "dev" {
			name = "validation"
		}
		ex, err = readDailyDialog(filepath.Join(root, "dailydialog", "dialogues_"+name+".txt"),
			filepath.Join(root, "dailydialog", "dialogues_emotion_"+name+".txt"))
	default:
		return nil, fmt.Errorf("datasets: unknown data set %q", set)
	}
	if err != nil {
		return nil, fmt.Errorf("datasets: %s %s: %w", set, split, err)
	}
	return ex, nil
}

func readGoEmotions(path string) ([]Example, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	labels := Labels(GoEmotionsEkman)
	var out []Example
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for n := 1; sc.Scan(); n++ {
		cols := strings.Split(sc.Text(), "\t")
		if len(cols) != 3 {
			return nil, fmt.Errorf("line %d: %d columns, want 3", n, len(cols))
		}
		label := ""
		if idx := strings.Split(cols[1], ","); len(idx) == 1 {
			i, err := strconv.Atoi(idx[0])
			if err != nil || i < 0 || i >= len(labels) {
				return nil, fmt.Errorf("line %d: bad label %q", n, cols[1])
			}
			label = labels[i]
		}
		out = append(out, Example{ID: cols[2], Conversation: cols[2], Speaker: "user", Text: cols[0], Label: label})
	}
	return out, sc.Err()
}

// readCSV returns the rows of a CSV file with a header, as maps.
func readCSV(path string, want ...string) ([]map[string]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	r := csv.NewReader(f)
	r.LazyQuotes = true
	header, err := r.Read()
	if err != nil {
		return nil, fmt.Errorf("header: %w", err)
	}
	col := map[string]int{}
	for i, h := range header {
		col[strings.TrimPrefix(h, "\ufeff")] = i
	}
	for _, w := range want {
		if _, ok := col[w]; !ok {
			return nil, fmt.Errorf("no column %q", w)
		}
	}
	var rows []map[string]string
	for {
		rec, err := r.Read()
		if err == io.EOF {
			return rows, nil
		}
		if err != nil {
			return nil, err
		}
		row := map[string]string{}
		for _, w := range want {
			if i := col[w]; i < len(rec) {
				row[w] = rec[i]
			}
		}
		rows = append(rows, row)
	}
}

func readMELD(path string) ([]Example, error) {
	rows, err := readCSV(path, "Utterance", "Speaker", "Emotion", "Dialogue_ID", "Utterance_ID")
	if err != nil {
		return nil, err
	}
	out := make([]Example, len(rows))
	for i, r := range rows {
		out[i] = Example{
			ID:           "d" + r["Dialogue_ID"] + "u" + r["Utterance_ID"],
			Conversation: "d" + r["Dialogue_ID"], Speaker: r["Speaker"], Text: r["Utterance"], Label: r["Emotion"],
		}
	}
	return out, nil
}

func readEmoryNLP(path string) ([]Example, error) {
	rows, err := readCSV(path, "Utterance", "Speaker", "Emotion", "Scene_ID", "Utterance_ID", "Season", "Episode")
	if err != nil {
		return nil, err
	}
	out := make([]Example, len(rows))
	for i, r := range rows {
		conv := "s" + r["Season"] + "e" + r["Episode"] + "c" + r["Scene_ID"]
		out[i] = Example{
			ID: conv + "u" + r["Utterance_ID"], Conversation: conv,
			Speaker: strings.Trim(r["Speaker"], "[]'\""), Text: r["Utterance"], Label: r["Emotion"],
		}
	}
	return out, nil
}

func readCARER(path string) ([]Example, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []Example
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue // val.txt starts with a blank line
		}
		i := strings.LastIndexByte(line, ';')
		if i < 0 {
			return nil, fmt.Errorf("line %d: no ';label'", n)
		}
		id := fmt.Sprintf("l%d", n)
		out = append(out, Example{ID: id, Conversation: id, Speaker: "user", Text: line[:i], Label: line[i+1:]})
	}
	return out, sc.Err()
}

func readDailyDialog(textPath, labelPath string) ([]Example, error) {
	texts, err := os.ReadFile(textPath)
	if err != nil {
		return nil, err
	}
	labels, err := os.ReadFile(labelPath)
	if err != nil {
		return nil, err
	}
	names := Labels(DailyDialog)
	tLines := strings.Split(strings.TrimRight(string(texts), "\n"), "\n")
	lLines := strings.Split(strings.TrimRight(string(labels), "\n"), "\n")
	if len(tLines) != len(lLines) {
		return nil, fmt.Errorf("%d dialogues but %d label lines", len(tLines), len(lLines))
	}
	var out []Example
	for d, line := range tLines {
		utts := strings.Split(strings.TrimSuffix(strings.TrimSpace(line), "__eou__"), "__eou__")
		labs := strings.Fields(lLines[d])
		if len(utts) != len(labs) {
			return nil, fmt.Errorf("dialogue %d: %d utterances but %d labels", d+1, len(utts), len(labs))
		}
		conv := fmt.Sprintf("d%d", d+1)
		for u, text := range utts {
			i, err := strconv.Atoi(labs[u])
			if err != nil || i < 0 || i >= len(names) {
				return nil, fmt.Errorf("dialogue %d: bad label %q", d+1, labs[u])
			}
			speaker := "A"
			if u%2 == 1 {
				speaker = "B"
			}
			out = append(out, Example{ID: fmt.Sprintf("%su%d", conv, u), Conversation: conv, Speaker: speaker, Text: strings.TrimSpace(text), Label: names[i]})
		}
	}
	return out, nil
}
