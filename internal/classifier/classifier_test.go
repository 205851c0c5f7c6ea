package classifier

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"math"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emoflow/emoflow/internal/adapters"
	"github.com/emoflow/emoflow/internal/classifyapi"
	"github.com/emoflow/emoflow/internal/model"
	"github.com/emoflow/emoflow/internal/prompt"
	"github.com/emoflow/emoflow/internal/randmodel"
	"github.com/emoflow/emoflow/internal/tensor"
	"github.com/emoflow/emoflow/internal/testenv"
)

var corpus = []string{
	"I am so happy with the new plan, thank you!", "This is the worst service ever.", "Where is my parcel?",
	"I am scared something is wrong with my account.", "Wow, I did not expect a refund.", "That smells disgusting.",
	"My cat died and I feel empty.", "Classify the emotion of this chat message as one of: anger, disgust, fear, joy, neutral, sadness, surprise.",
}

// setup writes a tiny random model and, in adapters/, a LoRA adapter
// "lora@1" and a P-tuning v2 adapter "pt@1".
func setup(t *testing.T) (modelDir, adaptersDir string) {
	t.Helper()
	modelDir = t.TempDir()
	var lines []string
	for i := 0; i < 30; i++ {
		lines = append(lines, corpus...)
	}
	if err := randmodel.TrainTokenizer(t.Context(), modelDir, lines, 400); err != nil {
		t.Skipf("no spm_train: %v", err)
	}
	spec := randmodel.Spec{Arch: "chatglm2", Layers: 2, Hidden: 64, Heads: 4, Groups: 2, FFN: 96, Vocab: 512, Seed: 5, Std: 0.3, EOSIDs: []int{2}}
	if err := randmodel.Write(modelDir, spec); err != nil {
		t.Fatal(err)
	}
	base, err := model.Load(modelDir, model.Options{DType: tensor.Float32})
	if err != nil {
		t.Fatal(err)
	}
	defer base.Close()
	adaptersDir = t.TempDir()
	rng := rand.New(rand.NewPCG(1, 2))
	normal := func(n int) []float32 {
		v := make([]float32, n)
		for i := range v {
			v[i] = float32(rng.NormFloat64() * 0.4)
		}
		return v
	}
	man := func(id, method string) adapters.Manifest {
		return adapters.Manifest{ID: id, Version: "1", Method: method, Template: prompt.Default(),
			BaseModel: adapters.BaseModel{Name: base.Config().Name, Fingerprint: base.Fingerprint()}}
	}
	var parts []model.LoRAPart
	for layer := 0; layer < 2; layer++ {
		parts = append(parts, model.LoRAPart{Layer: layer, Target: "dense", Rank: 4, A: normal(4 * 64), B: normal(64 * 4)})
	}
	lora := filepath.Join(adaptersDir, "lora")
	if err := adapters.WritePEFTLoRA(lora, base, parts, adapters.PEFTLoRAConfig{R: 4, LoraAlpha: 8, TargetModules: []string{"dense"}}); err != nil {
		t.Fatal(err)
	}
	if err := adapters.WriteManifest(lora, man("lora", adapters.MethodLoRA)); err != nil {
		t.Fatal(err)
	}
	pt := filepath.Join(adaptersDir, "pt")
	c := base.Config()
	if err := adapters.WriteTHUDMPrefix(pt, base, normal(4*2*c.Layers*c.KVGroups*c.HeadDim), 4); err != nil {
		t.Fatal(err)
	}
	if err := adapters.WriteManifest(pt, man("pt", adapters.MethodPTuningV2)); err != nil {
		t.Fatal(err)
	}
	return modelDir, adaptersDir
}

func post(t *testing.T, url string, body any) (int, []byte) {
	t.Helper()
	var raw []byte
	switch b := body.(type) {
	case []byte:
		raw = b
	default:
		raw, _ = json.Marshal(b)
	}
	resp, err := http.Post(url, "application/json", bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

func classify(t *testing.T, base string, req classifyapi.ClassifyRequest) (int, classifyapi.ClassifyResponse, classifyapi.ErrorResponse) {
	t.Helper()
	code, raw := post(t, base+"/v1/classify", req)
	var ok classifyapi.ClassifyResponse
	var bad classifyapi.ErrorResponse
	if code == http.StatusOK {
		if err := json.Unmarshal(raw, &ok); err != nil {
			t.Fatalf("bad JSON %s: %v", raw, err)
		}
	} else if err := json.Unmarshal(raw, &bad); err != nil || bad.Error.Code == "" {
		t.Fatalf("status %d without an error body: %s", code, raw)
	}
	return code, ok, bad
}

func TestBadRequestsGetClearErrors(t *testing.T) {
	modelDir, adaptersDir := setup(t)
	c := testenv.Start(t, "classifier", &Component{}, "-dtype=float32", "-model-dir="+modelDir, "-adapters-dir="+adaptersDir,
		"-max-texts=4", "-max-text-bytes=100")
	base := "http://" + c.RT.Addr
	for _, tc := range []struct {
		name   string
		body   []byte
		status int
		code   string
	}{
		{"malformed JSON", []byte(`{"texts": [`), 400, classifyapi.CodeBadRequest},
		{"not UTF-8", []byte("{\"texts\": [\"\xff\"]}"), 400, classifyapi.CodeBadRequest},
		{"no texts", []byte(`{"texts": []}`), 400, classifyapi.CodeBadRequest},
		{"empty text", []byte(`{"texts": [""]}`), 400, classifyapi.CodeBadRequest},
		{"too many texts", []byte(`{"texts": ["a","b","c","d","e"]}`), 413, classifyapi.CodeTooLarge},
		{"oversized text", []byte(`{"texts": ["` + strings.Repeat("x", 101) + `"]}`), 413, classifyapi.CodeTooLarge},
		{"unknown adapter", []byte(`{"texts": ["hi"], "adapter": "nope"}`), 404, classifyapi.CodeUnknownAdapter},
		{"unknown version", []byte(`{"texts": ["hi"], "adapter": "lora@7"}`), 404, classifyapi.CodeUnknownAdapter},
		{"bad adapter ref", []byte(`{"texts": ["hi"], "adapter": "a@"}`), 400, classifyapi.CodeBadRequest},
		{"invalid priority", []byte(`{"texts": ["hi"], "priority": "urgent"}`), 400, classifyapi.CodeBadRequest},
		{"negative deadline", []byte(`{"texts": ["hi"], "deadline_ms": -5}`), 400, classifyapi.CodeBadRequest},
		{"deadline too long", []byte(`{"texts": ["hi"], "deadline_ms": 86400000}`), 400, classifyapi.CodeBadRequest},
		{"deadline overflowing a Duration", []byte(`{"texts": ["hi"], "deadline_ms": 9223372036855}`), 400, classifyapi.CodeBadRequest},
		{"trailing brace", []byte(`{"texts": ["hi"]}}`), 400, classifyapi.CodeBadRequest},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, raw := post(t, base+"/v1/classify", tc.body)
			var e classifyapi.ErrorResponse
			if code != tc.status || json.Unmarshal(raw, &e) != nil || e.Error.Code != tc.code || e.Error.Message == "" {
				t.Fatalf("status %d body %s, want %d with code %s", code, raw, tc.status, tc.code)
			}
		})
	}
	// The worker still answers after all that.
	if code, _, _ := classify(t, base, classifyapi.ClassifyRequest{Texts: []string{"fine"}}); code != 200 {
		t.Fatalf("classify after bad requests: %d", code)
	}
}

// TestConcurrentClientsAdaptersAndDrain: many clients at once, on three
// adapters and both priorities, each get the answer a lone request gets;
// then a shutdown with requests in flight loses none of them.
func TestConcurrentClientsAdaptersAndDrain(t *testing.T) {
	modelDir, adaptersDir := setup(t)
	// float32, as in every test that compares numbers: a text's scores must
	// not depend on the batch it shares, to 1e-5. In bfloat16 (-dtype
	// auto's choice on CPUs with AMX) oneDNN's blocking varies with the
	// batch's shape, so they agree only to bfloat16 rounding.
	c := testenv.Start(t, "classifier", &Component{}, "-dtype=float32", "-model-dir="+modelDir, "-adapters-dir="+adaptersDir, "-max-queue-delay=3ms", "-max-batch-rows=8")
	base := "http://" + c.RT.Addr

	var list classifyapi.AdaptersResponse
	resp, err := http.Get(base + "/v1/adapters")
	if err != nil {
		t.Fatal(err)
	}
	json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	if len(list.Adapters) != 3 || !strings.HasPrefix(list.Default, "base@") {
		t.Fatalf("adapters = %+v", list)
	}

	adapterRefs := []string{"", "lora", "pt@1"}
	texts := append([]string{}, corpus...)
	// What each (adapter, text) gets alone.
	alone := map[string]classifyapi.Result{}
	for _, a := range adapterRefs {
		for _, text := range texts {
			code, r, e := classify(t, base, classifyapi.ClassifyRequest{Texts: []string{text}, Adapter: a})
			if code != 200 {
				t.Fatalf("alone: %d %+v", code, e)
			}
			alone[a+"\x00"+text] = r.Results[0]
		}
	}
	if alone["\x00"+texts[0]].Probabilities["joy"] == alone["lora\x00"+texts[0]].Probabilities["joy"] {
		t.Fatal("the LoRA adapter changes nothing: the test could not tell adapters apart")
	}
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := 0; i < 60; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			a := adapterRefs[i%3]
			req := classifyapi.ClassifyRequest{Adapter: a, Priority: []string{"live", "replay"}[i%2]}
			for j := 0; j < 1+i%4; j++ {
				req.Texts = append(req.Texts, texts[(i+j)%len(texts)])
			}
			code, r, e := classify(t, base, req)
			if code != 200 {
				errs <- fmt.Errorf("request %d: %d %+v", i, code, e)
				return
			}
			for k, text := range req.Texts {
				want := alone[a+"\x00"+text]
				got := r.Results[k]
				if got.Label != want.Label || math.Abs(got.Probabilities[got.Label]-want.Probabilities[want.Label]) > 1e-5 {
					errs <- fmt.Errorf("request %d text %d (%s): %s %.6f, alone %s %.6f", i, k, a, got.Label,
						got.Probabilities[got.Label], want.Label, want.Probabilities[want.Label])
				}
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}

	// Graceful drain: requests queued when the shutdown starts all finish.
	var inflight sync.WaitGroup
	codes := make(chan int, 20)
	for i := 0; i < 20; i++ {
		inflight.Add(1)
		go func(i int) {
			defer inflight.Done()
			raw, _ := json.Marshal(classifyapi.ClassifyRequest{Texts: texts, Adapter: adapterRefs[i%3], Priority: "replay"})
			resp, err := http.Post(base+"/v1/classify", "application/json", bytes.NewReader(raw))
			if err != nil {
				codes <- -1
				return
			}
			resp.Body.Close()
			codes <- resp.StatusCode
		}(i)
	}
	// Wait until some of them are queued, then stop.
	for deadline := time.Now().Add(30 * time.Second); queued(c) == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("requests never queued")
		}
	}
	if err := c.Stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	inflight.Wait()
	close(codes)
	ok := 0
	for code := range codes {
		switch code {
		case 200:
			ok++
		case 503, -1:
			// Arrived after the drain began (refused) or after the
			// server closed: never accepted, so not lost.
		default:
			t.Errorf("request during shutdown: status %d", code)
		}
	}
	if ok == 0 {
		t.Fatal("no queued request was finished by the drain")
	}
}

// queued is the classifier's current queue depth (both priorities).
func queued(c *testenv.Running) float64 {
	families, err := c.RT.Metrics.Gather()
	if err != nil {
		return 0
	}
	total := 0.0
	for _, f := range families {
		if f.GetName() == "emoflow_classifier_queue_depth" {
			for _, m := range f.GetMetric() {
				total += m.GetGauge().GetValue()
			}
		}
	}
	return total
}

func TestAdminLoadsUnloadsAndSetsDefault(t *testing.T) {
	modelDir, adaptersDir := setup(t)
	// Start without watching, then load through the admin API.
	c := testenv.Start(t, "classifier", &Component{}, "-dtype=float32", "-model-dir="+modelDir)
	base := "http://" + c.RT.Addr
	code, raw := post(t, base+"/v1/admin/adapters", map[string]string{"path": filepath.Join(adaptersDir, "lora")})
	if code != http.StatusCreated {
		t.Fatalf("load: %d %s", code, raw)
	}
	if code, raw := post(t, base+"/v1/admin/adapters", map[string]string{"path": filepath.Join(adaptersDir, "lora")}); code != http.StatusConflict {
		t.Fatalf("second load: %d %s", code, raw)
	}
	if code, raw := post(t, base+"/v1/admin/adapters", map[string]string{"path": t.TempDir()}); code != http.StatusUnprocessableEntity {
		t.Fatalf("load of an empty folder: %d %s", code, raw)
	}
	req, _ := http.NewRequest(http.MethodPut, base+"/v1/admin/default", strings.NewReader(`{"adapter":"lora@1"}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("set default: %v %v", resp.StatusCode, err)
	}
	resp.Body.Close()
	if code, r, _ := classify(t, base, classifyapi.ClassifyRequest{Texts: []string{"hello"}}); code != 200 || r.Adapter != "lora@1" {
		t.Fatalf("default request served by %q (%d)", r.Adapter, code)
	}
	del := func(ref string) int {
		req, _ := http.NewRequest(http.MethodDelete, base+"/v1/admin/adapters/"+ref, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := del("lora@1"); code != http.StatusConflict {
		t.Fatalf("unloading the default: %d", code)
	}
	list := func() classifyapi.AdaptersResponse {
		resp, err := http.Get(base + "/v1/adapters")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var l classifyapi.AdaptersResponse
		json.NewDecoder(resp.Body).Decode(&l)
		return l
	}
	req, _ = http.NewRequest(http.MethodPut, base+"/v1/admin/default", strings.NewReader(`{"adapter":"base"}`))
	resp, _ = http.DefaultClient.Do(req)
	resp.Body.Close()
	if code := del("lora@1"); code != http.StatusNoContent {
		t.Fatalf("unload: %d", code)
	}
	if l := list(); len(l.Adapters) != 1 {
		t.Fatalf("after unload: %+v", l)
	}
	if code := del("lora@1"); code != http.StatusNotFound {
		t.Fatalf("unloading twice: %d", code)
	}
}

// TestRefusesWhatCannotMakeItsDeadline: once the worker knows its pace, a
// request whose texts cannot be computed before its deadline is refused at
// once with 429 (and costs nothing), instead of being queued and dropped
// at the deadline with 504; requests with time to spare still succeed.
func TestRefusesWhatCannotMakeItsDeadline(t *testing.T) {
	modelDir, adaptersDir := setup(t)
	c := testenv.Start(t, "classifier", &Component{}, "-dtype=float32", "-model-dir="+modelDir, "-adapters-dir="+adaptersDir, "-max-batch-rows=4")
	base := "http://" + c.RT.Addr
	texts := make([]string, 64)
	for i := range texts {
		texts[i] = fmt.Sprintf("message number %d, which is long enough to cost a few tokens", i)
	}
	// Learn the pace.
	if code, _, _ := classify(t, base, classifyapi.ClassifyRequest{Texts: texts}); code != 200 {
		t.Fatalf("first request: status %d", code)
	}
	code, _, bad := classify(t, base, classifyapi.ClassifyRequest{Texts: texts, DeadlineMs: 1})
	if code != http.StatusTooManyRequests || bad.Error.Code != classifyapi.CodeOverloaded || !strings.Contains(bad.Error.Message, "deadline") {
		t.Fatalf("64 texts with a 1 ms deadline: status %d %+v, want 429 %s", code, bad.Error, classifyapi.CodeOverloaded)
	}
	if code, resp, _ := classify(t, base, classifyapi.ClassifyRequest{Texts: texts, DeadlineMs: 60_000}); code != 200 || len(resp.Results) != len(texts) {
		t.Fatalf("64 texts with a minute: status %d, %d results", code, len(resp.Results))
	}
}

// TestContextInThePrompt: an adapter whose template takes context uses
// the last k previous messages sent with a text and says how many; an
// adapter without context ignores them; malformed contexts are refused.
func TestContextInThePrompt(t *testing.T) {
	modelDir, adaptersDir := setup(t)
	man, err := adapters.ReadManifest(filepath.Join(adaptersDir, "pt"))
	if err != nil {
		t.Fatal(err)
	}
	ctxDir := filepath.Join(adaptersDir, "ptctx")
	if err := os.CopyFS(ctxDir, os.DirFS(filepath.Join(adaptersDir, "pt"))); err != nil {
		t.Fatal(err)
	}
	man.ID, man.Template = "ptctx", prompt.Default().WithContext(2)
	if err := adapters.WriteManifest(ctxDir, man); err != nil {
		t.Fatal(err)
	}
	c := testenv.Start(t, "classifier", &Component{}, "-dtype=float32", "-model-dir="+modelDir, "-adapters-dir="+adaptersDir,
		"-max-texts=4", "-max-text-bytes=100")
	base := "http://" + c.RT.Addr
	three := []classifyapi.Turn{{Role: "customer", Text: "this is broken again"}, {Role: "agent", Text: "sorry about that"}, {Role: "customer", Text: "i am so angry"}}
	req := classifyapi.ClassifyRequest{Adapter: "ptctx", Texts: []string{"fine", "fine", "fine", "fine"},
		Contexts: [][]classifyapi.Turn{three, three[1:], nil}}
	code, resp, bad := classify(t, base, req)
	if code != 200 {
		t.Fatalf("classify with context: %d %+v", code, bad)
	}
	r := resp.Results
	if r[0].ContextMessages != 2 || r[1].ContextMessages != 2 || r[2].ContextMessages != 0 || r[3].ContextMessages != 0 {
		t.Fatalf("context messages used: %d %d %d %d, want 2 2 0 0", r[0].ContextMessages, r[1].ContextMessages, r[2].ContextMessages, r[3].ContextMessages)
	}
	// Only the last two turns count: the first two rows see the same prompt.
	if !maps.Equal(r[0].Probabilities, r[1].Probabilities) {
		t.Fatalf("k=2 but the third-last turn changed the answer: %v vs %v", r[0].Probabilities, r[1].Probabilities)
	}
	if maps.Equal(r[0].Probabilities, r[2].Probabilities) || !maps.Equal(r[2].Probabilities, r[3].Probabilities) {
		t.Fatalf("context did not reach the prompt: %v vs %v", r[0].Probabilities, r[2].Probabilities)
	}
	// The adapter of the same weights without context ignores it.
	req.Adapter = "pt"
	if code, resp, bad = classify(t, base, req); code != 200 {
		t.Fatalf("classify on pt: %d %+v", code, bad)
	}
	if resp.Results[0].ContextMessages != 0 || !maps.Equal(resp.Results[0].Probabilities, resp.Results[2].Probabilities) {
		t.Fatalf("an adapter without context used it: %+v", resp.Results[0])
	}
	var list classifyapi.AdaptersResponse
	getJSON(t, base+"/v1/adapters", &list)
	for _, a := range list.Adapters {
		if want := map[string]int{"ptctx": 2}[a.ID]; a.ContextMessages != want {
			t.Errorf("adapter %s lists context_messages %d, want %d", a.ID, a.ContextMessages, want)
		}
	}
	for _, tc := range []struct {
		name   string
		body   string
		status int
	}{
		{"more contexts than texts", `{"texts": ["a"], "contexts": [[], []]}`, 400},
		{"empty role", `{"texts": ["a"], "contexts": [[{"role": "", "text": "x"}]]}`, 400},
		{"empty turn text", `{"texts": ["a"], "contexts": [[{"role": "agent", "text": ""}]]}`, 400},
		{"oversized turn", `{"texts": ["a"], "contexts": [[{"role": "agent", "text": "` + strings.Repeat("x", 101) + `"}]]}`, 413},
		{"too many turns", `{"texts": ["a"], "contexts": [[` + strings.Repeat(`{"role": "agent", "text": "x"},`, prompt.MaxContextMessages) + `{"role": "agent", "text": "x"}]]}`, 413},
	} {
		if code, raw := post(t, base+"/v1/classify", []byte(tc.body)); code != tc.status {
			t.Errorf("%s: status %d (%s), want %d", tc.name, code, raw, tc.status)
		}
	}
}

func getJSON(t *testing.T, url string, out any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil || resp.StatusCode != 200 {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
}
