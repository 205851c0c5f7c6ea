// Package classifier is the classifier worker: it loads a ChatGLM checkpoint
// and its tokenizer, serves the HTTP API of internal/classifyapi
// (POST /v1/classify, GET /v1/adapters), and feeds the model through the
// dynamic batcher so that requests arriving one by one are computed in
// batches, live traffic first.
package classifier

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/emoflow/emoflow/internal/adapters"
	"github.com/emoflow/emoflow/internal/batcher"
	"github.com/emoflow/emoflow/internal/classifyapi"
	"github.com/emoflow/emoflow/internal/model"
	"github.com/emoflow/emoflow/internal/prompt"
	"github.com/emoflow/emoflow/internal/secure"
	"github.com/emoflow/emoflow/internal/service"
	"github.com/emoflow/emoflow/internal/tensor"
	"github.com/emoflow/emoflow/internal/tokenizer"
)

// Component is the classifier binary.
type Component struct {
	ModelDir       string
	TokenizerDir   string
	PromptFile     string
	Device         string
	DType          string
	Threads        int
	Workers        int
	Lanes          int
	MaxTexts       int
	MaxTextBytes   int
	MaxTextTokens  int
	MaxBatchRows   int
	MaxBatchTokens int
	BatchMinFill   float64
	BatchWindow    int
	MaxQueueDelay  time.Duration
	QueueLive      int
	QueueReplay    int
	DefaultDL      time.Duration
	MaxDL          time.Duration
	AdaptersDir    string
	AdaptersPoll   time.Duration
	DefaultAdapter string
	Unmerged       bool
	AdminToken     secure.Secret
	AdminAPI       bool
	TokensFile     string
}

// RegisterFlags declares the classifier's configuration.
func (c *Component) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.ModelDir, "model-dir", "", "checkpoint folder: config.json and model.safetensors / pytorch_model.bin (single or sharded) (required)")
	fs.StringVar(&c.TokenizerDir, "tokenizer-dir", "", "folder with tokenizer.model or ice_text.model (default: -model-dir)")
	fs.StringVar(&c.PromptFile, "prompt", "", "prompt template JSON (text with {text}, labels, wrap); default: the built-in Ekman template")
	fs.StringVar(&c.Device, "device", "cpu", "where the model runs: cpu, cuda or cuda:N")
	fs.StringVar(&c.DType, "dtype", "auto", "compute dtype: auto (bfloat16 on CUDA and on CPUs with AVX-512 BF16 or AMX, else float32), float32, bfloat16 or float16 (float16 on CUDA only)")
	fs.IntVar(&c.Threads, "threads", 0, "libtorch intra-op threads (0: CPU cores / -workers)")
	fs.IntVar(&c.Workers, "workers", 1, "batches computed at once (one per GPU; on CPU, thread groups)")
	fs.IntVar(&c.Lanes, "lanes", 0, "on the CPU, a batch's rows are split into up to this many groups computed at once, each on its own share of the worker's threads (0: one group per thread; 1: every operation split across the threads instead)")
	fs.IntVar(&c.MaxTexts, "max-texts", 64, "most texts in one /v1/classify request")
	fs.IntVar(&c.MaxTextBytes, "max-text-bytes", 4096, "longest text accepted, in bytes")
	fs.IntVar(&c.MaxTextTokens, "max-text-tokens", 256, "texts longer than this many tokens are truncated (and flagged)")
	// 64 on GPUs and CPUs alike: on the CPU a batch's rows still share the
	// read of the output layer's weights and the per-operation costs, and
	// lanes need 16 rows each; on the benchmark model 64-row batches compute
	// 1.5 times as many texts a second as 16-row ones (emobench engine).
	fs.IntVar(&c.MaxBatchRows, "max-batch-rows", 64, "most texts in one model batch")
	fs.IntVar(&c.MaxBatchTokens, "max-batch-tokens", 8192, "token budget of one model batch: rows × padded length")
	// On the CPU a row costs about as much as a batch's fixed cost, so 15%
	// padding in a batch of 16 costs about one more batch. A window of 16
	// batches finds texts of similar lengths (padding efficiency 0.97
	// against 0.92 with 4, in cmd/emobench's saturation phase) while a
	// request's texts still finish close together.
	fs.Float64Var(&c.BatchMinFill, "batch-min-fill", 0.85, "least share of a batch's computed tokens that are its texts' own: a text that would pad a batch more waits for one nearer its length (0 turns it off)")
	fs.IntVar(&c.BatchWindow, "batch-window", 16, "batches' worth of the oldest queued texts a batch is chosen from (0: the whole queue)")
	fs.DurationVar(&c.MaxQueueDelay, "max-queue-delay", 10*time.Millisecond, "longest a text waits for others to fill its batch")
	fs.IntVar(&c.QueueLive, "queue-live", 4096, "most queued live texts; more are rejected with 429")
	fs.IntVar(&c.QueueReplay, "queue-replay", 8192, "most queued replay texts; more are rejected with 429")
	fs.DurationVar(&c.DefaultDL, "default-deadline", 30*time.Second, "deadline of a request that sets none")
	fs.DurationVar(&c.MaxDL, "max-deadline", 10*time.Minute, "longest deadline a request may ask for")
	fs.StringVar(&c.AdaptersDir, "adapters-dir", "", "folder of adapter folders (each with emoflow-adapter.json) loaded at start and watched; empty: none")
	fs.DurationVar(&c.AdaptersPoll, "adapters-poll", 10*time.Second, "how often -adapters-dir is checked for new, changed and removed adapters")
	fs.StringVar(&c.DefaultAdapter, "default-adapter", "", "adapter (id or id@version) of requests that name none; empty: the base model with -prompt")
	fs.BoolVar(&c.Unmerged, "unmerged", false, "serve LoRA adapters unmerged even when their manifest asks to merge (a worker that mixes many adapters)")
	c.AdminToken.Register(fs, "admin-token", "bearer token of the /v1/admin endpoints, at least 16 characters")
	fs.BoolVar(&c.AdminAPI, "admin-api", true, "serve the /v1/admin endpoints (load, unload, default adapter); without an admin token they answer loopback clients only, and the classifier refuses to start on a non-loopback -http-addr")
	fs.StringVar(&c.TokensFile, "tokens-file", "", "file of the API clients' bearer tokens, one \"client-name token\" or \"client-name sha256:<hex>\" a line; when set, /v1/classify and /v1/adapters need one (401 otherwise) and the metrics name the client; empty: open")
}

func (c *Component) validate() error {
	switch {
	case c.ModelDir == "":
		return errors.New("-model-dir is required")
	case c.Workers <= 0:
		return errors.New("-workers must be positive")
	case c.Lanes < 0:
		return errors.New("-lanes must not be negative")
	case c.MaxTexts <= 0 || c.MaxTextBytes <= 0 || c.MaxTextTokens <= 0:
		return errors.New("-max-texts, -max-text-bytes and -max-text-tokens must be positive")
	case c.BatchMinFill < 0 || c.BatchMinFill > 1 || c.BatchWindow < 0:
		return errors.New("-batch-min-fill must be between 0 and 1 and -batch-window must not be negative")
	case c.MaxBatchRows <= 0 || c.MaxBatchTokens <= 0:
		return errors.New("-max-batch-rows and -max-batch-tokens must be positive")
	case c.QueueLive <= 0 || c.QueueReplay <= 0:
		return errors.New("-queue-live and -queue-replay must be positive")
	case c.DefaultDL <= 0 || c.MaxDL < c.DefaultDL:
		return errors.New("-default-deadline must be positive and not above -max-deadline")
	}
	return nil
}

// ModelOptions are the model.Options the flags ask for: the device, the
// compute dtype (auto resolved for the device), the threads of a worker and
// its lanes. The classifier benchmark's static baseline loads with them too.
func (c *Component) ModelOptions() (model.Options, error) {
	dev, err := tensor.ParseDevice(c.Device)
	if err != nil {
		return model.Options{}, err
	}
	dt := tensor.FastDType(dev)
	if c.DType != "auto" {
		if dt, err = tensor.ParseDType(c.DType); err != nil {
			return model.Options{}, err
		}
	}
	threads := c.Threads
	if threads <= 0 {
		threads = max(1, runtime.NumCPU()/c.Workers)
	}
	lanes := c.Lanes
	if lanes == 0 {
		lanes = threads
	}
	return model.Options{Device: dev, DType: dt, Threads: threads, Lanes: lanes}, nil
}

// Run loads the model, serves until ctx ends, then drains the queue.
func (c *Component) Run(ctx context.Context, rt *service.Runtime) error {
	if err := c.validate(); err != nil {
		return &service.ConfigError{Err: err}
	}
	acc, err := newAccess(c, rt.Addr, rt.Metrics)
	if err != nil {
		return &service.ConfigError{Err: err}
	}
	opts, err := c.ModelOptions()
	if err != nil {
		return &service.ConfigError{Err: err}
	}
	opts.Logger = rt.Logger
	tmpl := prompt.Default()
	if c.PromptFile != "" {
		if tmpl, err = prompt.Read(c.PromptFile); err != nil {
			return &service.ConfigError{Err: err}
		}
	}
	tensor.SetThreads(opts.Threads)

	rt.SetNotReady("loading the model")
	start := time.Now()
	m, err := model.Load(c.ModelDir, opts)
	if err != nil {
		return fmt.Errorf("load model: %w", err)
	}
	defer m.Close()
	tokDir := c.TokenizerDir
	if tokDir == "" {
		tokDir = c.ModelDir
	}
	tok, err := tokenizer.Load(tokDir, tokenizer.Options{})
	if err != nil {
		return fmt.Errorf("load tokenizer: %w", err)
	}
	aopts := adapters.Options{MaxTextTokens: c.MaxTextTokens, ForceUnmerged: c.Unmerged}
	bare, err := adapters.Bare(m, tok, tmpl, aopts)
	if err != nil {
		return &service.ConfigError{Err: err}
	}
	reg := adapters.NewRegistry(m, tok, bare, aopts, rt.Logger)
	defer reg.Close()
	eng := &engine{model: m, reg: reg}
	rt.Logger.Info("model loaded", "model", m.ID(), "arch", m.Config().Arch, "layers", m.Config().Layers,
		"hidden", m.Config().Hidden, "vocab", m.Config().Vocab, "dtype", opts.DType.String(), "device", opts.Device.String(), "threads", opts.Threads, "lanes", opts.Lanes,
		"tokenizer", tok.Family(), "template", tmpl.Name, "labels", tmpl.Labels, "took", time.Since(start).Round(time.Millisecond).String())
	if c.AdaptersDir != "" {
		reg.Sync(c.AdaptersDir)
		watchCtx, stopWatch := context.WithCancel(ctx)
		defer stopWatch()
		go reg.Watch(watchCtx, c.AdaptersDir, c.AdaptersPoll)
	}
	if c.DefaultAdapter != "" {
		if err := reg.SetDefault(c.DefaultAdapter); err != nil {
			return &service.ConfigError{Err: fmt.Errorf("-default-adapter: %w", err)}
		}
	}

	rt.SetNotReady("warming up")
	if err := eng.warmUp(); err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}

	met := newMetrics(rt.Metrics)
	b, err := batcher.New(batcher.Config{
		MaxRows: c.MaxBatchRows, MaxTokens: c.MaxBatchTokens,
		RowOverhead: labelBlockTokens(reg), MinFill: c.BatchMinFill, Window: c.BatchWindow * c.MaxBatchRows, MaxDelay: c.MaxQueueDelay,
		QueueSize: [2]int{c.QueueLive, c.QueueReplay}, Workers: c.Workers, PaddedTokens: m.PaddedTokens,
	}, eng.run, met)
	if err != nil {
		return &service.ConfigError{Err: err}
	}
	workCtx, stopWork := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWork()
	b.Start(workCtx)

	srv := &server{cfg: c, eng: eng, batcher: b, met: met}
	rt.Mux.HandleFunc("POST /v1/classify", acc.client("classify", srv.classify))
	rt.Mux.HandleFunc("GET /v1/adapters", acc.client("adapters", srv.adapters))
	rt.Mux.HandleFunc("POST /v1/admin/adapters", acc.admin("admin_load", srv.loadAdapter))
	rt.Mux.HandleFunc("DELETE /v1/admin/adapters/{ref}", acc.admin("admin_unload", srv.unloadAdapter))
	rt.Mux.HandleFunc("PUT /v1/admin/default", acc.admin("admin_default", srv.setDefault))
	rt.SetReady()
	rt.Logger.Info("ready", "addr", rt.Addr)

	<-ctx.Done()
	srv.draining.Store(true)
	rt.Logger.Info("draining the queue", "live", b.Depth(batcher.Live), "replay", b.Depth(batcher.Replay))
	// The service bounds the drain with -shutdown-timeout.
	if err := b.Close(context.Background()); err != nil {
		return err
	}
	return nil
}

// backlogMargin is how much longer than its estimate (in percent) a
// request's backlog may take and still make the deadline for the request to
// be accepted: the pace of the last batches can slow (other load on the
// machine, smaller batches), and the batch in progress is not counted.
const backlogMargin = 125

// labelBlockTokens is the number of label tokens a row of the default
// adapter carries (the batcher's per-row overhead).
func labelBlockTokens(reg *adapters.Registry) int {
	h, err := reg.Acquire("")
	if err != nil {
		return 0
	}
	defer h.Release()
	return h.Scorer.LabelTokens()
}

type server struct {
	cfg      *Component
	eng      *engine
	batcher  *batcher.Batcher[job, model.Result]
	met      *metrics
	draining atomic.Bool
	// admit makes checking the backlog and queueing a request's texts one
	// step.
	admit sync.Mutex
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	if status == http.StatusTooManyRequests || status == http.StatusServiceUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	writeJSON(w, status, classifyapi.ErrorResponse{Error: classifyapi.ErrorBody{Code: code, Message: msg}})
}

func (s *server) adapters(w http.ResponseWriter, _ *http.Request) {
	writeJSON(w, http.StatusOK, classifyapi.AdaptersResponse{Model: s.eng.model.ID(), Default: s.eng.reg.Default(), Adapters: s.eng.reg.List()})
}

func (s *server) classify(w http.ResponseWriter, r *http.Request) {
	received := time.Now()
	outcome, adapter := "bad_request", ""
	defer func() { s.met.requests.WithLabelValues(adapter, outcome).Inc() }()
	if s.draining.Load() {
		outcome = "unavailable"
		writeError(w, http.StatusServiceUnavailable, classifyapi.CodeUnavailable, "shutting down")
		return
	}
	// Every text may come with as many previous messages as a template
	// can use, each as long as a text (twice, for JSON escapes).
	limit := int64(s.cfg.MaxTexts)*int64(s.cfg.MaxTextBytes)*2*(1+prompt.MaxContextMessages) + 4096
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		outcome = "too_large"
		writeError(w, http.StatusRequestEntityTooLarge, classifyapi.CodeTooLarge, fmt.Sprintf("request body over %d bytes", limit))
		return
	}
	in, bad := s.cfg.parseClassify(body)
	if bad != nil {
		if bad.status == http.StatusRequestEntityTooLarge {
			outcome = "too_large"
		}
		writeError(w, bad.status, bad.code, bad.msg)
		return
	}
	req, prio, deadline := in.req, in.prio, in.deadline
	h, err := s.eng.reg.Acquire(req.Adapter)
	if err != nil {
		if errors.Is(err, adapters.ErrUnknown) {
			outcome = "unknown_adapter"
			writeError(w, http.StatusNotFound, classifyapi.CodeUnknownAdapter, fmt.Sprintf("no adapter %q (GET /v1/adapters lists them)", req.Adapter))
		} else {
			writeError(w, http.StatusBadRequest, classifyapi.CodeBadRequest, err.Error())
		}
		return
	}
	defer h.Release()
	info := adapters.Info(h.Adapter, false)
	adapter = info.Ref()

	tokens := make([][]int64, len(req.Texts))
	contextUsed := make([]int, len(req.Texts))
	truncated := make([]bool, len(req.Texts))
	for i, text := range req.Texts {
		var turns []prompt.Turn
		if i < len(req.Contexts) {
			for _, t := range req.Contexts[i] {
				turns = append(turns, prompt.Turn{Role: t.Role, Text: t.Text})
			}
		}
		tokens[i], contextUsed[i], truncated[i] = h.Adapter.Input.Tokens(turns, text)
	}
	ctx, cancel := context.WithDeadline(r.Context(), received.Add(deadline))
	defer cancel()
	results := make([]model.Result, len(req.Texts))
	errs := make([]error, len(req.Texts))
	var wg sync.WaitGroup
	// Texts that cannot all be computed before the deadline at the current
	// pace are refused now, before they cost anything: accepted, they would
	// be computed in part, then dropped at the deadline, and take the
	// worker's time from requests that can still make theirs. Checking and
	// queueing under one lock keeps concurrent requests from all passing
	// the check against the same queue.
	s.admit.Lock()
	if backlog, ok := s.batcher.Backlog(prio, len(req.Texts)); ok && time.Since(received)+backlog*backlogMargin/100 > deadline {
		s.admit.Unlock()
		outcome = "overloaded"
		s.met.dropped.WithLabelValues(prio.String(), "overloaded").Add(float64(len(req.Texts)))
		writeError(w, http.StatusTooManyRequests, classifyapi.CodeOverloaded,
			fmt.Sprintf("the queue needs about %s, more than the deadline of %s; retry later", backlog.Round(time.Millisecond), deadline))
		return
	}
	for i := range req.Texts {
		hold := h.Share()
		wait, err := s.batcher.Enqueue(ctx, batcher.Request[job]{
			Group: groupOf(h.Adapter), Cost: h.Scorer.RowTokens(len(tokens[i])), Priority: prio,
			Payload: job{adapter: hold, tokens: tokens[i]}, Release: hold.Release,
		})
		if err != nil {
			errs[i] = err
			cancel() // the request fails as a whole: free the rows queued so far
			break
		}
		wg.Go(func() {
			if results[i], errs[i] = wait(); errs[i] != nil {
				cancel() // the request fails as a whole: free the rest of its rows
			}
		})
	}
	s.admit.Unlock()
	wg.Wait()
	if err := firstError(errs); err != nil {
		switch {
		case errors.Is(err, batcher.ErrOverloaded):
			outcome = "overloaded"
			writeError(w, http.StatusTooManyRequests, classifyapi.CodeOverloaded, "queue full; retry later")
		case errors.Is(err, batcher.ErrDeadline), errors.Is(err, context.DeadlineExceeded):
			outcome = "deadline"
			writeError(w, http.StatusGatewayTimeout, classifyapi.CodeDeadline, "deadline passed before the texts were classified")
		case errors.Is(err, batcher.ErrClosed), errors.Is(err, context.Canceled):
			outcome = "unavailable"
			writeError(w, http.StatusServiceUnavailable, classifyapi.CodeUnavailable, "shutting down or the client went away")
		default:
			outcome = "error"
			writeError(w, http.StatusInternalServerError, classifyapi.CodeInternal, err.Error())
		}
		return
	}
	outcome = "ok"
	resp := classifyapi.ClassifyResponse{
		Model: h.Model.ID(), Adapter: info.Ref(), LabelSet: info.LabelSet, Labels: info.Labels,
		Results: make([]classifyapi.Result, len(results)),
	}
	for i, res := range results {
		probs := make(map[string]float64, len(res.Probs))
		for k, p := range res.Probs {
			probs[info.Labels[k]] = p
		}
		resp.Results[i] = classifyapi.Result{Label: info.Labels[res.Best], Probabilities: probs,
			Truncated: truncated[i] || res.Truncated, ContextMessages: contextUsed[i]}
	}
	w.Header().Set("X-Request-Duration-Ms", strconv.FormatInt(time.Since(received).Milliseconds(), 10))
	writeJSON(w, http.StatusOK, resp)
}

// classifyInput is a POST /v1/classify body, decoded and checked.
type classifyInput struct {
	req      classifyapi.ClassifyRequest
	prio     batcher.Priority
	deadline time.Duration
}

// requestError is a request refused before any work is done.
type requestError struct {
	status    int
	code, msg string
}

func badRequest(format string, args ...any) *requestError {
	return &requestError{status: http.StatusBadRequest, code: classifyapi.CodeBadRequest, msg: fmt.Sprintf(format, args...)}
}

// parseClassify decodes and checks a POST /v1/classify body (already cut
// to the size limit) against c's limits. The adapter is checked later,
// against the registry.
func (c *Component) parseClassify(body []byte) (classifyInput, *requestError) {
	var in classifyInput
	if !utf8.Valid(body) {
		return in, badRequest("request body is not valid UTF-8")
	}
	req := &in.req
	// Unmarshal, not a Decoder: a Decoder's More() lets a stray ']' or '}'
	// after the object through.
	if err := json.Unmarshal(body, req); err != nil {
		return in, badRequest("malformed JSON: %v", err)
	}
	switch {
	case len(req.Texts) == 0:
		return in, badRequest("texts must hold at least one text")
	case len(req.Texts) > c.MaxTexts:
		return in, &requestError{http.StatusRequestEntityTooLarge, classifyapi.CodeTooLarge,
			fmt.Sprintf("%d texts exceed the limit of %d per request", len(req.Texts), c.MaxTexts)}
	}
	check := func(what, text string) *requestError {
		if code, msg := validText(text, c.MaxTextBytes); code != "" {
			status := http.StatusBadRequest
			if code == classifyapi.CodeTooLarge {
				status = http.StatusRequestEntityTooLarge
			}
			return &requestError{status, code, fmt.Sprintf("%s: %s", what, msg)}
		}
		return nil
	}
	for i, t := range req.Texts {
		if bad := check(fmt.Sprintf("texts[%d]", i), t); bad != nil {
			return in, bad
		}
	}
	if len(req.Contexts) > len(req.Texts) {
		return in, badRequest("%d contexts for %d texts: at most one per text", len(req.Contexts), len(req.Texts))
	}
	for i, turns := range req.Contexts {
		if len(turns) > prompt.MaxContextMessages {
			return in, &requestError{http.StatusRequestEntityTooLarge, classifyapi.CodeTooLarge,
				fmt.Sprintf("contexts[%d]: %d messages exceed the limit of %d", i, len(turns), prompt.MaxContextMessages)}
		}
		for j, t := range turns {
			if t.Role == "" || len(t.Role) > 64 {
				return in, badRequest("contexts[%d][%d]: role must be 1-64 bytes", i, j)
			}
			if bad := check(fmt.Sprintf("contexts[%d][%d]", i, j), t.Text); bad != nil {
				return in, bad
			}
		}
	}
	switch req.Priority {
	case "", classifyapi.PriorityLive:
		in.prio = batcher.Live
	case classifyapi.PriorityReplay:
		in.prio = batcher.Replay
	default:
		return in, badRequest("priority must be %q or %q, got %q", classifyapi.PriorityLive, classifyapi.PriorityReplay, req.Priority)
	}
	in.deadline = c.DefaultDL
	switch {
	case req.DeadlineMs < 0:
		return in, badRequest("deadline_ms must not be negative")
	// Compared in milliseconds: deadline_ms as a Duration overflows from
	// about 9.2e12 on and would pass as a negative deadline.
	case req.DeadlineMs > c.MaxDL.Milliseconds():
		return in, badRequest("deadline_ms %d exceeds the maximum of %d", req.DeadlineMs, c.MaxDL.Milliseconds())
	case req.DeadlineMs > 0:
		in.deadline = time.Duration(req.DeadlineMs) * time.Millisecond
	}
	return in, nil
}

// firstError picks the error that explains a failed request: a failure of
// its own (overload, a computation error) before a passed deadline, and
// both before the cancellations one failed text causes in its siblings.
func firstError(errs []error) error {
	rank := func(err error) int {
		switch {
		case err == nil:
			return 0
		case errors.Is(err, context.Canceled):
			return 1
		case errors.Is(err, batcher.ErrDeadline), errors.Is(err, context.DeadlineExceeded):
			return 2
		}
		return 3
	}
	var worst error
	for _, err := range errs {
		if rank(err) > rank(worst) {
			worst = err
		}
	}
	return worst
}

// decodeBody decodes an admin request body: one JSON value of at most 64
// KiB, with nothing after it.
func decodeBody(w http.ResponseWriter, r *http.Request, v any) bool {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 1<<16))
	if err == nil {
		err = json.Unmarshal(body, v)
	}
	if err != nil {
		writeError(w, http.StatusBadRequest, classifyapi.CodeBadRequest, "malformed JSON: "+err.Error())
		return false
	}
	return true
}

// loadAdapter answers POST /v1/admin/adapters {"path": "/adapters/x/3"}.
func (s *server) loadAdapter(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Path string `json:"path"`
	}
	if !decodeBody(w, r, &req) {
		return
	}
	if req.Path == "" {
		writeError(w, http.StatusBadRequest, classifyapi.CodeBadRequest, "path is required")
		return
	}
	a, err := s.eng.reg.LoadDir(req.Path)
	switch {
	case errors.Is(err, adapters.ErrExists):
		writeError(w, http.StatusConflict, classifyapi.CodeBadRequest, err.Error())
	case err != nil:
		writeError(w, http.StatusUnprocessableEntity, classifyapi.CodeBadRequest, err.Error())
	default:
		writeJSON(w, http.StatusCreated, adapters.Info(a, false))
	}
}

// unloadAdapter answers DELETE /v1/admin/adapters/{id@version}.
func (s *server) unloadAdapter(w http.ResponseWriter, r *http.Request) {
	err := s.eng.reg.Unload(r.PathValue("ref"))
	switch {
	case errors.Is(err, adapters.ErrUnknown):
		writeError(w, http.StatusNotFound, classifyapi.CodeUnknownAdapter, err.Error())
	case err != nil:
		writeError(w, http.StatusConflict, classifyapi.CodeBadRequest, err.Error())
	default:
		w.WriteHeader(http.StatusNoContent)
	}
}

// setDefault answers PUT /v1/admin/default {"adapter": "id@version"}.
func (s *server) setDefault(w http.ResponseWriter, r *http.Request) {
	var req struct {
		Adapter string `json:"adapter"`
	}
	if !decodeBody(w, r, &req) {
		return
	}
	if err := s.eng.reg.SetDefault(req.Adapter); err != nil {
		status := http.StatusBadRequest
		if errors.Is(err, adapters.ErrUnknown) {
			status = http.StatusNotFound
		}
		writeError(w, status, classifyapi.CodeUnknownAdapter, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"default": s.eng.reg.Default()})
}
