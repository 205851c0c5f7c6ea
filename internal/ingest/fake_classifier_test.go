package ingest

import (
	"encoding/json"
	"hash/fnv"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emoflow/emoflow/internal/classifyapi"
)

// The fake classifier's model, adapters and labels.
const (
	fakeModel          = "glm-fake@0001"
	fakeDefaultAdapter = "emo@2"
)

var (
	fakeLabels   = []string{"anger", "joy", "neutral", "sadness"}
	fakeAdapters = []classifyapi.AdapterInfo{
		{ID: "emo", Version: "1", Method: "lora", Labels: fakeLabels, LabelSet: "ls-a"},
		{ID: "emo", Version: "2", Method: "lora", Labels: fakeLabels, LabelSet: "ls-a", Default: true},
		{ID: "other", Version: "1", Method: "ptuning-v2", Labels: fakeLabels, LabelSet: "ls-b"},
		// ctx's template takes the 2 previous messages as context.
		{ID: "ctx", Version: "1", Method: "lora", Labels: fakeLabels, LabelSet: "ls-c", ContextMessages: 2},
	}
)

// fakeContextLabel is the fake classifier's answer with context: a pure
// function of the adapter, the text and the (at most k) last turns.
func fakeContextLabel(adapter, text string, turns []classifyapi.Turn, k int) (string, int) {
	turns = turns[max(0, len(turns)-k):]
	if len(turns) == 0 {
		return fakeLabel(adapter, text), 0
	}
	return fakeLabel(adapter, text+"\x00"+classifyapi.ContextFingerprint(turns)), len(turns)
}

// fakeLabel is the fake classifier's answer: a pure function of the adapter
// and the text, so tests know every expected label.
func fakeLabel(adapter, text string) string {
	h := fnv.New64a()
	h.Write([]byte(adapter + "\x00" + text))
	return fakeLabels[h.Sum64()%uint64(len(fakeLabels))]
}

// fakeClassifier implements the classifier API deterministically:
// POST /v1/classify labels each text with fakeLabel, answers 404 for an
// adapter it does not serve, 400 for a request holding a text that contains
// "REJECT", refuses the next `overload` requests with 429, and holds a request with a text starting with "HOLD" until
// release is called (or the client gives up).
type fakeClassifier struct {
	*httptest.Server
	requests atomic.Int64
	texts    atomic.Int64
	// delay (nanoseconds) slows every classify answer, to keep work in
	// flight.
	delay atomic.Int64
	// overload is how many more classify requests to refuse with 429 and
	// Retry-After: 3; overloaded counts the refusals.
	overload, overloaded atomic.Int64

	mu         sync.Mutex
	perText    map[string]int
	priorities map[string]int
	arrived    chan struct{} // receives once per request that holds
	held       chan struct{} // closed by release
	releaseOne sync.Once
}

func newFakeClassifier(t testing.TB) *fakeClassifier {
	t.Helper()
	f := &fakeClassifier{perText: map[string]int{}, priorities: map[string]int{},
		arrived: make(chan struct{}, 100), held: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/adapters", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, classifyapi.AdaptersResponse{Model: fakeModel, Default: fakeDefaultAdapter, Adapters: fakeAdapters})
	})
	mux.HandleFunc("POST /v1/classify", f.classify)
	f.Server = httptest.NewServer(mux)
	t.Cleanup(func() {
		f.release()
		f.Close()
	})
	return f
}

func (f *fakeClassifier) classify(w http.ResponseWriter, r *http.Request) {
	f.requests.Add(1)
	var req classifyapi.ClassifyRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil || len(req.Texts) == 0 {
		writeJSON(w, http.StatusBadRequest, classifyapi.ErrorResponse{Error: classifyapi.ErrorBody{Code: classifyapi.CodeBadRequest, Message: "bad body"}})
		return
	}
	if f.overload.Add(-1) >= 0 {
		f.overloaded.Add(1)
		w.Header().Set("Retry-After", "3")
		writeJSON(w, http.StatusTooManyRequests, classifyapi.ErrorResponse{Error: classifyapi.ErrorBody{Code: classifyapi.CodeOverloaded, Message: "queue full"}})
		return
	}
	ref := req.Adapter
	if ref == "" {
		ref = fakeDefaultAdapter
	}
	var info *classifyapi.AdapterInfo
	for i := range fakeAdapters {
		if fakeAdapters[i].Ref() == ref {
			info = &fakeAdapters[i]
		}
	}
	if info == nil {
		writeJSON(w, http.StatusNotFound, classifyapi.ErrorResponse{Error: classifyapi.ErrorBody{Code: classifyapi.CodeUnknownAdapter, Message: "no adapter " + ref}})
		return
	}
	for _, text := range req.Texts {
		if strings.Contains(text, "REJECT") {
			writeJSON(w, http.StatusBadRequest, classifyapi.ErrorResponse{Error: classifyapi.ErrorBody{Code: classifyapi.CodeBadRequest, Message: "cannot classify that"}})
			return
		}
	}
	for _, text := range req.Texts {
		if strings.HasPrefix(text, "HOLD") {
			select {
			case f.arrived <- struct{}{}:
			default: // nobody counts arrivals beyond the buffer
			}
			select {
			case <-f.held:
			case <-r.Context().Done():
				return
			}
			break
		}
	}
	if d := time.Duration(f.delay.Load()); d > 0 {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return
		}
	}
	f.mu.Lock()
	for _, text := range req.Texts {
		f.perText[text]++
	}
	f.priorities[req.Priority] += len(req.Texts)
	f.mu.Unlock()
	f.texts.Add(int64(len(req.Texts)))

	resp := classifyapi.ClassifyResponse{Model: fakeModel, Adapter: info.Ref(), LabelSet: info.LabelSet, Labels: fakeLabels}
	for i, text := range req.Texts {
		var turns []classifyapi.Turn
		if i < len(req.Contexts) {
			turns = req.Contexts[i]
		}
		label, used := fakeContextLabel(info.Ref(), text, turns, info.ContextMessages)
		probs := map[string]float64{}
		for _, l := range fakeLabels {
			probs[l] = 0.1
		}
		probs[label] = 0.7
		resp.Results = append(resp.Results, classifyapi.Result{Label: label, Probabilities: probs, ContextMessages: used})
	}
	writeJSON(w, http.StatusOK, resp)
}

// release lets held requests (and later ones) through.
func (f *fakeClassifier) release() { f.releaseOne.Do(func() { close(f.held) }) }

// classified returns how often text was classified.
func (f *fakeClassifier) classified(text string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.perText[text]
}

func (f *fakeClassifier) priority(p string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.priorities[p]
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}
