package main

import (
	"os"
	"path/filepath"

	"github.com/emoflow/emoflow/internal/service"
)

// defaultDataDir is EMOFLOW_SHARED/data, or ../shared/data beside the
// repository the benchmark runs from.
func defaultDataDir() string {
	if s := os.Getenv("EMOFLOW_SHARED"); s != "" {
		return filepath.Join(s, "data")
	}
	return filepath.Join("..", "shared", "data")
}

// pythonPath is $EMOFLOW_PYTHON, or the reference venv's.
func pythonPath() string {
	if p := os.Getenv("EMOFLOW_PYTHON"); p != "" {
		return p
	}
	return filepath.Join(service.CacheDir(), "venv", "bin", "python")
}
