package ingest

import (
	"bytes"
	"flag"
	"io"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/emoflow/emoflow/internal/service"
)

// parseConfig parses args and env the way the service does.
func parseConfig(t *testing.T, args []string, env map[string]string) (Config, error) {
	t.Helper()
	var c Component
	fs := flag.NewFlagSet("ingest", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.RegisterFlags(fs)
	lookup := func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	if err := service.ParseConfig(fs, args, lookup); err != nil {
		t.Fatal(err)
	}
	cfg := c.cfg
	return cfg, cfg.validate(c.raw)
}

func TestConfigDefaultsPointAtTheLocalServices(t *testing.T) {
	cfg, err := parseConfig(t, nil, nil)
	if err != nil {
		t.Fatalf("defaults do not validate: %v", err)
	}
	if !reflect.DeepEqual(cfg.Brokers, []string{"127.0.0.1:19092"}) || cfg.RedisAddr != "127.0.0.1:16379" ||
		!reflect.DeepEqual(cfg.ClassifierURLs, []string{"http://127.0.0.1:8080"}) {
		t.Fatalf("defaults %v %v %v", cfg.Brokers, cfg.RedisAddr, cfg.ClassifierURLs)
	}
	if cfg.RunID != "live" || cfg.Priority != "live" || cfg.StopAtEnd {
		t.Fatalf("default run %q priority %q stop-at-end %v", cfg.RunID, cfg.Priority, cfg.StopAtEnd)
	}
}

func TestConfigFromEnvironment(t *testing.T) {
	cfg, err := parseConfig(t, []string{"-batch-size", "32"}, map[string]string{
		"EMOFLOW_CLASSIFIER_URLS": "http://a:1, http://b:2,",
		"EMOFLOW_BATCH_SIZE":      "7", // the flag wins
		"EMOFLOW_CACHE_TTL":       "1h",
		"EMOFLOW_REDIS_ADDR":      "",
	})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg.ClassifierURLs, []string{"http://a:1", "http://b:2"}) || cfg.BatchSize != 32 ||
		cfg.CacheTTL != time.Hour || cfg.RedisAddr != "" {
		t.Fatalf("got urls %v batch %d ttl %v redis %q", cfg.ClassifierURLs, cfg.BatchSize, cfg.CacheTTL, cfg.RedisAddr)
	}
}

func TestConfigRejectsContradictions(t *testing.T) {
	cases := map[string][]string{
		"replay without a run id":      {"-priority", "replay"},
		"unknown priority":             {"-priority", "urgent"},
		"in-flight below the batch":    {"-max-in-flight", "10", "-batch-size", "20"},
		"drain longer than rebalance":  {"-drain-timeout", "40s"},
		"input topic is the event one": {"-input-topic", "x", "-events-topic", "x"},
		"no brokers":                   {"-kafka-brokers", " , "},
		"bad start offset":             {"-start-offset", "middle"},
		"no classifier":                {"-classifier-urls", ""},
		"tiny dead-letter size limit":  {"-dead-letter-max-bytes", "10"},
		"zero batch wait":              {"-batch-wait", "0s"},
		"empty run id":                 {"-run-id", ""},
	}
	for name, args := range cases {
		if _, err := parseConfig(t, args, nil); err == nil {
			t.Errorf("%s: accepted %q", name, args)
		}
	}
	if _, err := parseConfig(t, []string{"-priority", "replay", "-run-id", "eval-42", "-stop-at-end"}, nil); err != nil {
		t.Errorf("a replay configuration was refused: %v", err)
	}
}

func TestLogLimiterHoldsBackRepeats(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	l := newLogLimiter(time.Hour)
	for range 100 {
		l.log(log, "redis", "down")
	}
	l.log(log, "kafka", "down too")
	if got := strings.Count(buf.String(), "msg=down"); got != 1 {
		t.Fatalf("%d lines of one kind within the interval, want 1:\n%s", got, buf.String())
	}
	if !strings.Contains(buf.String(), "down too") {
		t.Fatal("another kind was held back")
	}
}
