package service

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// CacheDir is the download and build cache, outside the repository:
// $EMOFLOW_CACHE, or ~/.cache/emoflow.
func CacheDir() string {
	if c := os.Getenv("EMOFLOW_CACHE"); c != "" {
		return c
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "emoflow-cache")
	}
	return filepath.Join(home, ".cache", "emoflow")
}

// EnvPrefix starts the name of every environment variable the binaries read.
const EnvPrefix = "EMOFLOW_"

// EnvName is the environment variable that sets the flag called name:
// "kafka-brokers" is set by EMOFLOW_KAFKA_BROKERS.
func EnvName(name string) string {
	return EnvPrefix + strings.ToUpper(strings.NewReplacer("-", "_", ".", "_").Replace(name))
}

// ParseConfig parses args into fs, then fills every flag that args did not
// set from its environment variable (see EnvName), if lookup finds one.
// Flags win over the environment, the environment over defaults.
func ParseConfig(fs *flag.FlagSet, args []string, lookup func(string) (string, bool)) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	explicit := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { explicit[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if explicit[f.Name] {
			return
		}
		v, ok := lookup(EnvName(f.Name))
		if !ok {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			errs = append(errs, fmt.Errorf("environment variable %s=%q: %w", EnvName(f.Name), v, err))
		}
	})
	return errors.Join(errs...)
}

// WriteConfigReference writes a Markdown table of every flag in fs, with its
// environment variable, default and usage. The README's configuration
// reference is made of these tables (see internal/configref).
func WriteConfigReference(w io.Writer, fs *flag.FlagSet) {
	var rows []*flag.Flag
	fs.VisitAll(func(f *flag.Flag) { rows = append(rows, f) })
	sort.Slice(rows, func(i, j int) bool { return rows[i].Name < rows[j].Name })
	fmt.Fprintln(w, "| flag | environment variable | default | meaning |")
	fmt.Fprintln(w, "|---|---|---|---|")
	for _, f := range rows {
		def := f.DefValue
		if def == "" {
			def = " "
		} else {
			def = "`" + def + "`"
		}
		usage := strings.ReplaceAll(f.Usage, "|", `\|`)
		fmt.Fprintf(w, "| `-%s` | `%s` | %s | %s |\n", f.Name, EnvName(f.Name), def, usage)
	}
}

// LookupEnv is os.LookupEnv; it is the lookup binaries pass to ParseConfig.
func LookupEnv(name string) (string, bool) { return os.LookupEnv(name) }
