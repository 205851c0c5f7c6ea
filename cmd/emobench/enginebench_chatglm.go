package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// chatglmCppTypes are the weight types chatglm.cpp 0.4.2 loads, in the
// order they are measured.
var chatglmCppTypes = []string{"f32", "f16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"}

// parseChatGLMCppTypes reads -chatglm-cpp-types.
func parseChatGLMCppTypes(s string) ([]string, error) {
	var out []string
	for _, t := range strings.Split(s, ",") {
		t = strings.ToLower(strings.TrimSpace(t))
		if !slices.Contains(chatglmCppTypes, t) {
			return nil, fmt.Errorf("-chatglm-cpp-types: %q is not one of %s", t, strings.Join(chatglmCppTypes, ", "))
		}
		if slices.Contains(out, t) {
			return nil, fmt.Errorf("-chatglm-cpp-types: %q twice", t)
		}
		out = append(out, t)
	}
	return out, nil
}

// ccppRequest and ccppAnswer are bench_chatglm_cpp.py's protocol.
type ccppRequest struct {
	WeightType string `json:"weight_type"`
	LogProbs   bool   `json:"logprobs"`
}

type ccppAnswer struct {
	hfAnswer
	Threads int      `json:"threads"`
	SIMD    []string `json:"simd"`
}

// ccppSide is a running tools/reference/bench_chatglm_cpp.py.
type ccppSide struct {
	*peerProcess
	threads int      // what chatglm.cpp reported using
	simd    []string // the instruction sets its ggml was compiled for
}

// ensureChatGLMCpp installs chatglm.cpp into python's environment (a no-op
// once built; tools/reference/chatglm_cpp/install.sh), converts the
// benchmark model to its GGML files beside modelDir for the weight types
// missing there, and checks the float32 file against transformers on
// hfDir (check_ggml.py). It returns the folder of the GGML files.
func ensureChatGLMCpp(ctx context.Context, python, dir, modelDir, hfDir string, types []string) (string, error) {
	install := exec.CommandContext(ctx, filepath.Join(dir, "install.sh"), python)
	install.Stdout, install.Stderr = os.Stderr, os.Stderr
	if err := install.Run(); err != nil {
		return "", fmt.Errorf("installing chatglm.cpp (%s): %w", install.Path, err)
	}
	out := filepath.Join(filepath.Dir(modelDir), "model-chatglm-cpp")
	convert := exec.CommandContext(ctx, python, filepath.Join(dir, "to_ggml.py"), "--model", modelDir, "--out", out,
		"--types", strings.Join(types, ","))
	convert.Stdout, convert.Stderr = os.Stderr, os.Stderr
	if err := convert.Run(); err != nil {
		return "", fmt.Errorf("converting the benchmark model for chatglm.cpp: %w", err)
	}
	check := exec.CommandContext(ctx, python, filepath.Join(dir, "check_ggml.py"), "--hf", hfDir, "--ggml", out,
		"--types", strings.Join(types, ","))
	check.Stdout, check.Stderr = os.Stdout, os.Stderr
	if err := check.Run(); err != nil {
		return "", fmt.Errorf("checking chatglm.cpp's copy of the benchmark model against transformers: %w", err)
	}
	return out, nil
}

// startChatGLMCpp starts bench_chatglm_cpp.py on the GGML files in
// modelsDir and the workload file.
func startChatGLMCpp(python, script, modelsDir, workloadPath string, threads int) (*ccppSide, error) {
	p, err := startPeer("chatglm.cpp side", exec.Command(python, script, "--models", modelsDir,
		"--workload", workloadPath, "--threads", strconv.Itoa(threads)))
	if err != nil {
		return nil, err
	}
	return &ccppSide{peerProcess: p}, nil
}

// run asks for one pass over the workload with one weight type.
func (c *ccppSide) run(req ccppRequest) (ccppAnswer, error) {
	var a ccppAnswer
	if err := c.call(req, &a); err != nil {
		return a, err
	}
	c.threads, c.simd = a.Threads, a.SIMD
	return a, nil
}

// ccppAgreement compares chatglm.cpp's label log-probabilities with the
// engine's float32 ones. Its float32 weights must give the same numbers up
// to its float16 key/value cache; the quantized types are only described.
func ccppAgreement(weightType string, engine, ccpp [][]float64) (string, error) {
	if len(engine) != len(ccpp) {
		return "", fmt.Errorf("engine scored %d messages, chatglm.cpp %d", len(engine), len(ccpp))
	}
	worst, same := 0.0, 0
	for i := range engine {
		if len(engine[i]) != len(ccpp[i]) {
			return "", fmt.Errorf("message %d: engine scored %d labels, chatglm.cpp %d", i, len(engine[i]), len(ccpp[i]))
		}
		if argmax(engine[i]) == argmax(ccpp[i]) {
			same++
		}
		for k := range engine[i] {
			worst = math.Max(worst, math.Abs(engine[i][k]-ccpp[i][k]))
		}
	}
	// chatglm.cpp keeps keys and values in float16: a few thousandths at
	// most here. More means the conversion or the scoring is wrong.
	if weightType == "f32" && !(worst < 5e-2) {
		return "", fmt.Errorf("engine (float32) and chatglm.cpp (f32) disagree by up to %g in a label log-probability: they do not compute the same thing", worst)
	}
	return fmt.Sprintf("max |Δ log p| %.2g, same best label for %.1f%% of messages", worst, 100*float64(same)/float64(len(engine))), nil
}

// ccppSummary is chatglm.cpp's part of the report: the median rate of each
// weight type, the fastest, and engine_vs_chatglm_cpp.
type ccppSummary struct {
	rates   map[string]float64 // median msgs/s per weight type
	cpuMS   map[string]float64
	fastest string
	ratio   float64 // the engine's best median rate over the fastest type's
}

func summarizeChatGLMCpp(types []string, passes map[engineConfig][]enginePass, engineBest float64) ccppSummary {
	s := ccppSummary{rates: map[string]float64{}, cpuMS: map[string]float64{}}
	for _, t := range types {
		var rates, cpu []float64
		for _, p := range passes[engineConfig{side: ccppSideName, weightType: t}] {
			rates = append(rates, p.rate)
			cpu = append(cpu, p.cpuMS)
		}
		if len(rates) == 0 {
			continue
		}
		s.rates[t], s.cpuMS[t] = median(rates), median(cpu)
		if s.fastest == "" || s.rates[t] > s.rates[s.fastest] {
			s.fastest = t
		}
	}
	s.ratio = math.NaN()
	if s.fastest != "" {
		s.ratio = engineBest / s.rates[s.fastest]
	}
	return s
}

// ccppSideName is the side of chatglm.cpp's configurations.
const ccppSideName = "chatglm.cpp"
