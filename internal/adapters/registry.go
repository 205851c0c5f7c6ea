package adapters

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/emoflow/emoflow/internal/classifyapi"
	"github.com/emoflow/emoflow/internal/model"
	"github.com/emoflow/emoflow/internal/tokenizer"
)

// Errors of the registry.
var (
	ErrUnknown      = errors.New("unknown adapter")
	ErrExists       = errors.New("adapter version already loaded")
	ErrIsDefault    = errors.New("the default adapter cannot be unloaded")
	ErrBaseReserved = errors.New("the base pseudo-adapter cannot be unloaded")
)

// entry is a registered adapter version and its users.
type entry struct {
	a       *Adapter
	refs    int
	removed bool
	// source and stamp identify the folder it came from, for the watcher.
	source string
	stamp  time.Time
}

// Registry is the set of adapters a classifier serves. It is safe for
// concurrent use.
type Registry struct {
	base *model.Model
	tok  tokenizer.Tokenizer
	opts Options
	log  *slog.Logger

	mu      sync.Mutex
	entries map[string]*entry // by id@version
	def     string            // default id@version
	bareRef string
}

// NewRegistry starts a registry whose default is bare, the base model with
// the default template. The registry owns bare.
func NewRegistry(base *model.Model, tok tokenizer.Tokenizer, bare *Adapter, opts Options, log *slog.Logger) *Registry {
	r := &Registry{base: base, tok: tok, opts: opts, log: log, entries: map[string]*entry{}}
	ref := bare.Manifest.Ref()
	r.entries[ref] = &entry{a: bare}
	r.def, r.bareRef = ref, ref
	return r
}

// Handle is a user's hold on an adapter: the adapter stays loaded until
// every handle is released, even after Unload.
type Handle struct {
	*Adapter
	r    *Registry
	e    *entry
	once sync.Once
}

// Release lets the adapter go. Releasing twice is a no-op.
func (h *Handle) Release() {
	h.once.Do(func() { h.r.release(h.e) })
}

func (r *Registry) release(e *entry) {
	r.mu.Lock()
	e.refs--
	free := e.removed && e.refs == 0
	r.mu.Unlock()
	if free {
		e.a.Close()
	}
}

// Acquire resolves ref ("" for the default, "id" for the id's newest
// version — or the default when it has that id — or "id@version") and holds
// it.
func (r *Registry) Acquire(ref string) (*Handle, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, err := r.resolveLocked(ref)
	if err != nil {
		return nil, err
	}
	e.refs++
	return &Handle{Adapter: e.a, r: r, e: e}, nil
}

func (r *Registry) resolveLocked(ref string) (*entry, error) {
	if ref == "" {
		return r.entries[r.def], nil
	}
	id, version, err := classifyapi.ParseAdapterRef(ref)
	if err != nil {
		return nil, err
	}
	if version != "" {
		e, ok := r.entries[id+"@"+version]
		if !ok {
			return nil, fmt.Errorf("%w %q", ErrUnknown, ref)
		}
		return e, nil
	}
	if strings.HasPrefix(r.def, id+"@") {
		return r.entries[r.def], nil
	}
	var best *entry
	for _, e := range r.entries {
		if e.a.Manifest.ID == id && (best == nil || versionLess(best.a.Manifest.Version, e.a.Manifest.Version)) {
			best = e
		}
	}
	if best == nil {
		return nil, fmt.Errorf("%w %q", ErrUnknown, ref)
	}
	return best, nil
}

// versionLess orders versions naturally: numeric runs as numbers, so
// "10" comes after "9".
func versionLess(a, b string) bool {
	for a != "" && b != "" {
		an, ar := splitNum(a)
		bn, br := splitNum(b)
		switch {
		case an != "" && bn != "":
			if len(an) != len(bn) {
				return len(an) < len(bn)
			}
			if an != bn {
				return an < bn
			}
		case a[0] != b[0]:
			return a[0] < b[0]
		default:
			ar, br = a[1:], b[1:]
		}
		a, b = ar, br
	}
	return len(a) < len(b)
}

func splitNum(s string) (num, rest string) {
	i := 0
	for i < len(s) && s[i] >= '0' && s[i] <= '9' {
		i++
	}
	num = strings.TrimLeft(s[:i], "0")
	if i > 0 && num == "" {
		num = "0"
	}
	return num, s[i:]
}

// LoadDir loads the adapter in dir. A bad adapter never replaces a good
// version: the registry is unchanged when loading fails.
func (r *Registry) LoadDir(dir string) (*Adapter, error) {
	man, err := ReadManifest(dir)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	_, exists := r.entries[man.Ref()]
	r.mu.Unlock()
	if exists {
		return nil, fmt.Errorf("%w: %s", ErrExists, man.Ref())
	}
	a, err := Load(dir, r.base, r.tok, r.opts)
	if err != nil {
		return nil, err
	}
	stamp := manifestStamp(dir)
	r.mu.Lock()
	if _, exists := r.entries[man.Ref()]; exists {
		r.mu.Unlock()
		a.Close()
		return nil, fmt.Errorf("%w: %s", ErrExists, man.Ref())
	}
	r.entries[man.Ref()] = &entry{a: a, source: filepath.Clean(dir), stamp: stamp}
	r.mu.Unlock()
	r.log.Info("adapter loaded", "adapter", man.Ref(), "method", man.Method, "merged", a.merged, "dir", dir)
	return a, nil
}

func manifestStamp(dir string) time.Time {
	st, err := os.Stat(filepath.Join(dir, ManifestFile))
	if err != nil {
		return time.Time{}
	}
	return st.ModTime()
}

// Unload removes id@version; batches already holding it finish on it.
func (r *Registry) Unload(ref string) error {
	r.mu.Lock()
	e, ok := r.entries[ref]
	switch {
	case !ok:
		r.mu.Unlock()
		return fmt.Errorf("%w %q", ErrUnknown, ref)
	case ref == r.bareRef:
		r.mu.Unlock()
		return ErrBaseReserved
	case ref == r.def:
		r.mu.Unlock()
		return fmt.Errorf("%w (%s); make another adapter the default first", ErrIsDefault, ref)
	}
	delete(r.entries, ref)
	e.removed = true
	holders := e.refs
	r.mu.Unlock()
	if holders == 0 {
		e.a.Close()
	}
	r.log.Info("adapter unloaded", "adapter", ref, "in_flight_holders", holders)
	return nil
}

// SetDefault makes ref (id@version, or id for its newest version) the
// adapter of requests that name none.
func (r *Registry) SetDefault(ref string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	e, err := r.resolveLocked(ref)
	if err != nil {
		return err
	}
	r.def = e.a.Manifest.Ref()
	r.log.Info("default adapter", "adapter", r.def)
	return nil
}

// Default is the default adapter's id@version.
func (r *Registry) Default() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.def
}

// List describes every loaded adapter version, sorted by id and version.
func (r *Registry) List() []classifyapi.AdapterInfo {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]classifyapi.AdapterInfo, 0, len(r.entries))
	for ref, e := range r.entries {
		out = append(out, Info(e.a, ref == r.def))
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].ID != out[j].ID {
			return out[i].ID < out[j].ID
		}
		return versionLess(out[i].Version, out[j].Version)
	})
	return out
}

// Info describes an adapter for the API.
func Info(a *Adapter, isDefault bool) classifyapi.AdapterInfo {
	m := a.Manifest
	return classifyapi.AdapterInfo{ID: m.ID, Version: m.Version, Method: m.Method, Labels: m.Template.Labels,
		LabelSet: m.Template.Version(), Language: m.Language, Default: isDefault, Merged: a.merged,
		ContextMessages: a.Input.ContextMessages()}
}

// Close frees every adapter. Call it after the last batch.
func (r *Registry) Close() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for ref, e := range r.entries {
		e.removed = true
		if e.refs == 0 {
			e.a.Close()
		}
		delete(r.entries, ref)
	}
}

// Watch keeps the registry in step with the adapter folders under root
// (each holding a manifest), checking every interval until ctx ends: new
// folders are loaded, removed ones unloaded, changed ones reloaded. Folders
// whose name starts with a dot are work in progress and skipped. Errors
// are logged; a bad folder never takes a good version down.
func (r *Registry) Watch(ctx context.Context, root string, interval time.Duration) {
	r.Sync(root)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.Sync(root)
		}
	}
}

// Sync brings the registry in step with root once (see Watch).
func (r *Registry) Sync(root string) {
	dirs, err := filepath.Glob(filepath.Join(root, "*", ManifestFile))
	if err != nil {
		r.log.Error("adapter folder scan", "root", root, "err", err)
		return
	}
	nested, _ := filepath.Glob(filepath.Join(root, "*", "*", ManifestFile))
	seen := map[string]bool{}
	for _, f := range append(dirs, nested...) {
		dir := filepath.Clean(filepath.Dir(f))
		if hiddenBelow(root, dir) {
			continue // work in progress: emoctl train's state, half-written copies
		}
		seen[dir] = true
		r.mu.Lock()
		var known *entry
		var knownRef string
		for ref, e := range r.entries {
			if e.source == dir {
				known, knownRef = e, ref
			}
		}
		r.mu.Unlock()
		stamp := manifestStamp(dir)
		if known != nil && known.stamp.Equal(stamp) {
			continue
		}
		if known != nil {
			r.reload(dir, knownRef)
			continue
		}
		if _, err := r.LoadDir(dir); err != nil && !errors.Is(err, ErrExists) {
			r.log.Error("adapter not loaded", "dir", dir, "err", err)
		}
	}
	r.mu.Lock()
	var gone []string
	for ref, e := range r.entries {
		if e.source != "" && strings.HasPrefix(e.source, filepath.Clean(root)+string(filepath.Separator)) && !seen[e.source] {
			gone = append(gone, ref)
		}
	}
	r.mu.Unlock()
	for _, ref := range gone {
		if err := r.Unload(ref); err != nil {
			r.log.Error("adapter folder removed but the adapter stays", "adapter", ref, "err", err)
		}
	}
}

// hiddenBelow reports whether a folder on the path from root to dir starts
// with a dot.
func hiddenBelow(root, dir string) bool {
	rel, err := filepath.Rel(root, dir)
	if err != nil {
		return false
	}
	for _, part := range strings.Split(rel, string(filepath.Separator)) {
		if strings.HasPrefix(part, ".") && part != "." && part != ".." {
			return true
		}
	}
	return false
}

// reload replaces the version loaded from dir (ref) with the folder's
// current files. The new version is built first; if that fails the loaded
// one stays. Batches holding the old version finish on it.
func (r *Registry) reload(dir, ref string) {
	a, err := Load(dir, r.base, r.tok, r.opts)
	if err != nil {
		r.log.Error("adapter folder changed but does not load; keeping the loaded version", "adapter", ref, "dir", dir, "err", err)
		return
	}
	newRef := a.Manifest.Ref()
	r.mu.Lock()
	if other, ok := r.entries[newRef]; ok && other.source != dir {
		r.mu.Unlock()
		a.Close()
		r.log.Error("adapter folder changed to a version another folder holds", "adapter", newRef, "dir", dir)
		return
	}
	old := r.entries[ref]
	delete(r.entries, ref)
	r.entries[newRef] = &entry{a: a, source: dir, stamp: manifestStamp(dir)}
	if r.def == ref {
		r.def = newRef
	}
	old.removed = true
	free := old.refs == 0
	r.mu.Unlock()
	if free {
		old.a.Close()
	}
	r.log.Info("adapter reloaded", "adapter", newRef, "replaced", ref, "dir", dir)
}

// Share returns another handle on the same adapter version, held until its
// own Release (a request's texts each hold one).
func (h *Handle) Share() *Handle {
	h.r.mu.Lock()
	h.e.refs++
	h.r.mu.Unlock()
	return &Handle{Adapter: h.Adapter, r: h.r, e: h.e}
}
