package main

import (
	"os"
	"path/filepath"
)

// defaultDataDir is EMOFLOW_SHARED/data, or ../shared/data beside the
// repository the benchmark runs from.
func defaultDataDir() string {
	if s := os.Getenv("EMOFLOW_SHARED"); s != "" {
		return filepath.Join(s, "data")
	}
	return filepath.Join("..", "shared", "data")
}

// cachePath is $EMOFLOW_CACHE, or ~/.cache/emoflow.
func cachePath() string {
	if c := os.Getenv("EMOFLOW_CACHE"); c != "" {
		return c
	}
	home, _ := os.UserHomeDir()
	return filepath.Join(home, ".cache", "emoflow")
}

// pythonPath is $EMOFLOW_PYTHON, or the reference venv's.
func pythonPath() string {
	if p := os.Getenv("EMOFLOW_PYTHON"); p != "" {
		return p
	}
	return filepath.Join(cachePath(), "venv", "bin", "python")
}
