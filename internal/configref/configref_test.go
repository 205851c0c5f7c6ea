package configref

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the README's configuration reference")

func TestREADMEConfigurationReferenceIsCurrent(t *testing.T) {
	path := filepath.Join("..", "..", "README.md")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	readme := string(raw)
	begin := strings.Index(readme, BeginMarker)
	end := strings.Index(readme, EndMarker)
	if begin < 0 || end < begin {
		t.Fatalf("README.md lacks the markers %q and %q", BeginMarker, EndMarker)
	}
	want := BeginMarker + "\n" + Render() + "\n" + EndMarker
	got := readme[begin : end+len(EndMarker)]
	if got == want {
		return
	}
	if *update {
		if err := os.WriteFile(path, []byte(readme[:begin]+want+readme[end+len(EndMarker):]), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	t.Fatal("README.md's configuration reference is out of date: run go test ./internal/configref -update")
}

func TestEveryFlagIsDocumented(t *testing.T) {
	ref := Render()
	for _, name := range []string{"-kafka-brokers", "-model-dir", "-clickhouse-addr", "-http-addr", "EMOFLOW_MODEL_DIR"} {
		if !strings.Contains(ref, name) {
			t.Errorf("reference lacks %s", name)
		}
	}
}
