package contract

import (
	"bytes"
	"encoding/base64"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// TestJSONImplementationsAgree: the binaries are built with
// GOEXPERIMENT=jsonv2 (Taskfile.yml), which runs encoding/json on the new
// implementation: decoding an event is about twice as fast. A dead letter
// or a stored row must not depend on that choice, so this test builds
// ./jsonagree both ways and requires the same verdict and the same decoded
// value, for chat messages, events and classify requests, over the fuzz
// corpora of those decoders and thousands of mutations of them (bytes cut,
// inserted and replaced, keys duplicated or in other cases, numbers out of
// range, invalid UTF-8 and escapes).
func TestJSONImplementationsAgree(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a program twice")
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command:", err)
	}
	inputs := mutate(corpus(t), 4000, rand.New(rand.NewPCG(16, 12)))
	var lines bytes.Buffer
	for _, in := range inputs {
		lines.WriteString(base64.StdEncoding.EncodeToString(in))
		lines.WriteByte('\n')
	}
	dir := t.TempDir()
	run := func(experiment string) []string {
		bin := filepath.Join(dir, experiment)
		build := exec.Command(goBin, "build", "-o", bin, "./jsonagree")
		build.Env = append(os.Environ(), "GOEXPERIMENT="+experiment, "CGO_ENABLED=0")
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("GOEXPERIMENT=%s go build: %v\n%s", experiment, err, out)
		}
		cmd := exec.Command(bin)
		cmd.Stdin = bytes.NewReader(lines.Bytes())
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("%s: %v", bin, err)
		}
		return strings.Split(strings.TrimSuffix(string(out), "\n"), "\n")
	}
	classic, v2 := run("nojsonv2"), run("jsonv2")
	const kinds = 3 // lines per input: message, event, classify request
	if len(classic) != kinds*len(inputs) || len(v2) != len(classic) {
		t.Fatalf("%d inputs gave %d and %d lines", len(inputs), len(classic), len(v2))
	}
	accepted, differ := 0, 0
	for i := range classic {
		if strings.Contains(classic[i], " ok ") {
			accepted++
		}
		if classic[i] != v2[i] {
			differ++
			if differ <= 5 {
				t.Errorf("input %q:\n classic: %s\n jsonv2:  %s", inputs[i/kinds], classic[i], v2[i])
			}
		}
	}
	if differ > 0 {
		t.Fatalf("%d of %d verdicts differ", differ, len(classic))
	}
	// The mutations must leave both verdicts represented, or the
	// comparison proves little.
	if accepted < len(classic)/20 || accepted > len(classic)*19/20 {
		t.Fatalf("%d of %d decodings accepted: the corpus does not exercise both verdicts", accepted, len(classic))
	}
	t.Logf("%d inputs, %d decodings (%d accepted), identical", len(inputs), len(classic), accepted)
}

// corpus is the fuzz corpora of the JSON decoders plus a full event and a
// classify request.
func corpus(t *testing.T) [][]byte {
	t.Helper()
	seeds := [][]byte{
		[]byte(valid),
		[]byte(`{"message_id":"m1","run_id":"live","conversation_id":"c1","tenant":"acme","speaker_role":"customer",` +
			`"language":"en","text_fingerprint":"ab12","label":"joy","probs":{"joy":0.75,"anger":0.25},"truncated":false,` +
			`"model":"glm","label_set":"ekman","cache_hit":true,"sent_at":"2026-01-02T03:04:05Z",` +
			`"received_at":"2026-01-02T03:04:05.5+01:00","classified_at":"2026-01-02T03:04:06Z","cache_ms":0.5,` +
			`"classify_ms":12,"pipeline_ms":30,"source_topic":"chat","source_partition":3,"source_offset":12345}`),
		[]byte(`{"texts":["hello","so sad"],"adapter":"support@2","deadline_ms":250,"contexts":[[{"role":"agent","text":"hi"}],[]]}`),
	}
	for _, dir := range []string{
		"testdata/fuzz/FuzzDecodeChatMessage",
		"../sink/testdata/fuzz/FuzzDecodeEvent",
		"../classifier/testdata/fuzz/FuzzClassifyRequest",
	} {
		files, err := filepath.Glob(filepath.Join(dir, "*"))
		if err != nil || len(files) == 0 {
			t.Fatalf("fuzz corpus %s: %v (%d files)", dir, err, len(files))
		}
		for _, f := range files {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			// go test fuzz v1, then one []byte("...") line
			_, lit, ok := strings.Cut(string(raw), "[]byte(")
			if !ok {
				t.Fatalf("%s: not a []byte corpus entry", f)
			}
			s, err := strconv.Unquote(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(lit), ")")))
			if err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			seeds = append(seeds, []byte(s))
		}
	}
	return seeds
}

// mutate returns the seeds and n mutations of them.
func mutate(seeds [][]byte, n int, r *rand.Rand) [][]byte {
	const alphabet = `{}[]":,\ 0123456789eE+-.tfnulrsaAbBxX` + "\x00\x7f\xc3\xa9\xed\xa0\x80\xff\u2028"
	numbers := []string{"1e400", "-0", "18446744073709551616", "9223372036854775808", "1.5", "-1", "0x10", "01", "1e-400", "NaN"}
	out := append([][]byte(nil), seeds...)
	for len(out) < len(seeds)+n {
		b := append([]byte(nil), seeds[r.IntN(len(seeds))]...)
		for k := 1 + r.IntN(3); k > 0 && len(b) > 0; k-- {
			i := r.IntN(len(b))
			switch r.IntN(8) {
			case 0: // delete a byte
				b = append(b[:i], b[i+1:]...)
			case 1: // insert one
				b = append(b[:i], append([]byte{alphabet[r.IntN(len(alphabet))]}, b[i:]...)...)
			case 2: // replace one
				b[i] = alphabet[r.IntN(len(alphabet))]
			case 3: // cut the end
				b = b[:i]
			case 4: // a key in other cases
				if j := bytes.IndexByte(b[i:], '"'); j >= 0 && i+j+2 < len(b) {
					b[i+j+1] ^= 0x20
				}
			case 5: // duplicate a member
				if j := bytes.IndexByte(b, ','); j > 0 {
					if k := bytes.IndexByte(b[j+1:], ','); k > 0 {
						member := append([]byte(nil), b[j:j+1+k]...)
						b = append(b[:j], append(member, b[j:]...)...)
					}
				}
			case 6: // a number out of range or of another form
				if j := bytes.IndexAny(b[i:], "0123456789"); j >= 0 {
					at := i + j
					end := at
					for end < len(b) && bytes.IndexByte([]byte("0123456789.eE+-"), b[end]) >= 0 {
						end++
					}
					b = append(b[:at], append([]byte(numbers[r.IntN(len(numbers))]), b[end:]...)...)
				}
			case 7: // a value replaced by null, a string, an array or an object
				if j := bytes.IndexByte(b[i:], ':'); j >= 0 {
					at := i + j + 1
					vals := []string{"null", `"x"`, "[]", "{}", "true", `"\ud800"`, `"\u0000"`}
					b = append(b[:at], append([]byte(vals[r.IntN(len(vals))]+","), b[at:]...)...)
				}
			}
		}
		out = append(out, b)
	}
	return out
}
