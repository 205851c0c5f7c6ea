package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
)

func TestServicesNicenessReadsThePidFiles(t *testing.T) {
	state := t.TempDir()
	t.Setenv("EMOFLOW_STATE", state)
	if got := servicesNiceness(); got != "kafka unknown, redis unknown, clickhouse unknown" {
		t.Fatalf("without pid files: %q", got)
	}
	// This process stands in for Kafka: its niceness is a number.
	if err := os.WriteFile(filepath.Join(state, "kafka.pid"), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := servicesNiceness(); !regexp.MustCompile(`^kafka -?\d+, redis unknown, clickhouse unknown$`).MatchString(got) {
		t.Fatalf("with this process as kafka: %q", got)
	}
}
