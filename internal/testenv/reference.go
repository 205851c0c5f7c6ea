package testenv

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// SkipOrFail skips the test, or fails it when EMOFLOW_TEST_REQUIRE_SERVICES=1
// (CI, where a missing prerequisite is a broken set-up, not a reason to
// pass).
func SkipOrFail(t testing.TB, format string, args ...any) {
	t.Helper()
	if os.Getenv("EMOFLOW_TEST_REQUIRE_SERVICES") == "1" {
		t.Fatalf(format+" (EMOFLOW_TEST_REQUIRE_SERVICES=1)", args...)
	}
	t.Skipf(format, args...)
}

// Python is the reference Python interpreter ($EMOFLOW_PYTHON, made by
// scripts/setup.sh pyref), or SkipOrFail.
func Python(t testing.TB) string {
	t.Helper()
	python := os.Getenv("EMOFLOW_PYTHON")
	if python == "" {
		SkipOrFail(t, "EMOFLOW_PYTHON is not set: the reference Python (scripts/setup.sh pyref makes $EMOFLOW_CACHE/venv/bin/python)")
	}
	return python
}

// CacheDir is where generated test data is kept between runs, outside the
// repository: $EMOFLOW_CACHE/testdata/sub.
func CacheDir(t testing.TB, sub string) string {
	t.Helper()
	cache := os.Getenv("EMOFLOW_CACHE")
	if cache == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			t.Fatal(err)
		}
		cache = filepath.Join(home, ".cache", "emoflow")
	}
	return filepath.Join(cache, "testdata", sub)
}

// ReferenceOutput returns the folder that tools/reference/script writes
// (it takes the folder as its only argument and writes manifest.json last
// among its files), running it when the cache lacks the output of the
// current script. The cache key hashes the script, the files it depends
// on (deps, in tools/reference) and the pinned requirements.
func ReferenceOutput(t testing.TB, sub, script string, deps ...string) string {
	t.Helper()
	python := Python(t)
	tools := filepath.Join(RepoRoot(t), "tools", "reference")
	h := sha256.New()
	for _, f := range append([]string{script, "requirements.txt"}, deps...) {
		b, err := os.ReadFile(filepath.Join(tools, f))
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(h, "%s:%d:", f, len(b))
		h.Write(b)
	}
	parent := CacheDir(t, sub)
	name := script[:len(script)-len(filepath.Ext(script))]
	dir := filepath.Join(parent, name+"-"+hex.EncodeToString(h.Sum(nil))[:16])
	if _, err := os.Stat(filepath.Join(dir, "manifest.json")); err == nil {
		return dir
	}
	// Generated into a temporary folder beside dir and renamed into place,
	// so that concurrent runs never see half of it.
	if err := os.MkdirAll(parent, 0o755); err != nil {
		t.Fatal(err)
	}
	tmp, err := os.MkdirTemp(parent, ".build-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, python, filepath.Join(tools, script), tmp).CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", python, script, err, out)
	}
	if err := os.Rename(tmp, dir); err != nil {
		if _, statErr := os.Stat(filepath.Join(dir, "manifest.json")); statErr != nil {
			t.Fatal(err) // not a concurrent run that got there first
		}
	}
	return dir
}
