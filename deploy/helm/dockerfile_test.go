package helm

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// instruction is one Dockerfile instruction, continuation lines joined.
type instruction struct {
	Line int
	Cmd  string // upper case
	Args string
}

// stage is one FROM and what follows it.
type stage struct {
	Image, Name  string
	Instructions []instruction
}

// parseDockerfile splits a Dockerfile into stages. It knows what the
// project's Dockerfiles use (comments, parser directives, "\" line
// continuations), and fails on anything before the first FROM but ARG.
func parseDockerfile(t *testing.T, path string) []stage {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var ins []instruction
	var cur strings.Builder
	start := 0
	for i, line := range strings.Split(string(raw), "\n") {
		trimmed := strings.TrimSpace(line)
		if cur.Len() == 0 && (trimmed == "" || strings.HasPrefix(trimmed, "#")) {
			continue
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if strings.HasPrefix(trimmed, "#") {
			continue // a comment inside a continued instruction
		}
		if s, ok := strings.CutSuffix(trimmed, "\\"); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(trimmed)
		cmd, args, _ := strings.Cut(cur.String(), " ")
		ins = append(ins, instruction{Line: start, Cmd: strings.ToUpper(cmd), Args: strings.TrimSpace(args)})
		cur.Reset()
	}
	if cur.Len() != 0 {
		t.Fatalf("%s: ends inside a continued instruction", path)
	}
	known := map[string]bool{"FROM": true, "RUN": true, "COPY": true, "ENV": true, "ARG": true, "WORKDIR": true, "USER": true, "EXPOSE": true, "ENTRYPOINT": true, "CMD": true, "LABEL": true}
	var stages []stage
	for _, in := range ins {
		if !known[in.Cmd] {
			t.Errorf("%s:%d: instruction %s not known to this check (ADD, for one, is not wanted: COPY or RUN)", path, in.Line, in.Cmd)
		}
		if in.Cmd == "FROM" {
			f := strings.Fields(in.Args)
			s := stage{Image: f[0]}
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				s.Name = f[2]
			} else if len(f) != 1 {
				t.Errorf("%s:%d: FROM %s", path, in.Line, in.Args)
			}
			stages = append(stages, s)
			continue
		}
		if len(stages) == 0 {
			if in.Cmd != "ARG" {
				t.Errorf("%s:%d: %s before the first FROM", path, in.Line, in.Cmd)
			}
			continue
		}
		stages[len(stages)-1].Instructions = append(stages[len(stages)-1].Instructions, in)
	}
	return stages
}

// TestDockerfiles checks the image of every binary the chart runs, as far
// as it can be checked without a Docker engine: multi-stage, pinned base
// images, COPY --from existing stages, the binary built from its cmd/
// folder, a runtime on distroless (the CUDA runtime for the classifier)
// that runs as the non-root user the chart's pods run as, and an exec-form
// ENTRYPOINT at the copied binary.
func TestDockerfiles(t *testing.T) {
	raw, err := os.ReadFile(filepath.Join("emoflow", "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var values struct {
		PodSecurityContext struct {
			RunAsUser int64 `json:"runAsUser"`
		} `json:"podSecurityContext"`
	}
	if err := yaml.Unmarshal(raw, &values); err != nil {
		t.Fatal(err)
	}
	runtimeBase := map[string]*regexp.Regexp{
		"ingest":     regexp.MustCompile(`^gcr\.io/distroless/static-debian\d+:nonroot$`),
		"sink":       regexp.MustCompile(`^gcr\.io/distroless/static-debian\d+:nonroot$`),
		"alerter":    regexp.MustCompile(`^gcr\.io/distroless/static-debian\d+:nonroot$`),
		"classifier": regexp.MustCompile(`^nvidia/cuda:[0-9.]+-cudnn\d+-runtime-ubuntu[0-9.]+$`),
	}
	for binary, base := range runtimeBase {
		t.Run(binary, func(t *testing.T) {
			if _, err := os.Stat(filepath.Join("..", "..", "cmd", binary)); err != nil {
				t.Fatalf("no cmd/%s: %v", binary, err)
			}
			path := filepath.Join("..", "docker", binary+".Dockerfile")
			stages := parseDockerfile(t, path)
			if len(stages) < 2 {
				t.Fatalf("%d stages, want a build stage and a runtime stage", len(stages))
			}
			names := map[string]bool{}
			built := false
			for i, s := range stages {
				if !regexp.MustCompile(`^[a-z0-9./_-]+(:[A-Za-z0-9._-]+|@sha256:[0-9a-f]{64})$`).MatchString(s.Image) || strings.HasSuffix(s.Image, ":latest") {
					t.Errorf("stage %d: base image %q is not pinned to a tag or digest", i+1, s.Image)
				}
				for _, in := range s.Instructions {
					if in.Cmd == "COPY" {
						if m := regexp.MustCompile(`--from=(\S+)`).FindStringSubmatch(in.Args); m != nil && !names[m[1]] {
							t.Errorf("line %d: COPY --from=%s, not an earlier stage", in.Line, m[1])
						}
					}
					if in.Cmd == "RUN" && regexp.MustCompile(`go build .*-o /out/`+binary+` \./cmd/`+binary+`$`).MatchString(in.Args) {
						built = true
					}
				}
				if s.Name != "" {
					names[s.Name] = true
				}
			}
			if !built {
				t.Errorf("no stage runs go build -o /out/%s ./cmd/%s", binary, binary)
			}
			final := stages[len(stages)-1]
			if !base.MatchString(final.Image) {
				t.Errorf("runtime base %q, want %s", final.Image, base)
			}
			var user, entrypoint *instruction
			copied := map[string]bool{}
			for i, in := range final.Instructions {
				switch in.Cmd {
				case "USER":
					user = &final.Instructions[i]
				case "ENTRYPOINT":
					entrypoint = &final.Instructions[i]
				case "RUN":
					if user != nil {
						t.Errorf("line %d: RUN after USER in the runtime stage", in.Line)
					}
				case "COPY":
					f := strings.Fields(in.Args)
					copied[f[len(f)-1]] = true
				}
			}
			if user == nil {
				t.Fatalf("the runtime stage sets no USER: it would run as root")
			}
			uid, gid, _ := strings.Cut(user.Args, ":")
			if n, err := strconv.ParseInt(uid, 10, 64); err != nil || n == 0 || n != values.PodSecurityContext.RunAsUser {
				t.Errorf("USER %s: want the numeric non-root uid the chart runs pods as (%d), so that runAsNonRoot can verify it", user.Args, values.PodSecurityContext.RunAsUser)
			}
			if gid == "0" {
				t.Errorf("USER %s: root group", user.Args)
			}
			var argv []string
			if entrypoint == nil || json.Unmarshal([]byte(entrypoint.Args), &argv) != nil || len(argv) == 0 {
				t.Fatalf("ENTRYPOINT %v: want the exec (JSON) form, so that SIGTERM reaches the binary", entrypoint)
			}
			if !copied[argv[0]] || filepath.Base(argv[0]) != binary {
				t.Errorf("ENTRYPOINT %s is not the %s binary copied into the runtime stage", argv[0], binary)
			}
		})
	}
}
