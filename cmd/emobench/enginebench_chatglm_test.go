package main

import (
	"math"
	"slices"
	"strings"
	"testing"
)

func TestParseChatGLMCppTypes(t *testing.T) {
	got, err := parseChatGLMCppTypes("q4_0, F16")
	if err != nil || !slices.Equal(got, []string{"q4_0", "f16"}) {
		t.Fatalf("parseChatGLMCppTypes(q4_0, F16) = %v, %v", got, err)
	}
	for _, bad := range []string{"q4_k", "", "f16,f16", "bf16"} {
		if _, err := parseChatGLMCppTypes(bad); err == nil {
			t.Errorf("parseChatGLMCppTypes(%q) accepted", bad)
		}
	}
	o, err := parseEngineOptions([]string{"-chatglm-cpp", "-chatglm-cpp-types", "q8_0"})
	if err != nil || !o.withCCPP || !slices.Equal(o.ccppTypes, []string{"q8_0"}) {
		t.Fatalf("parseEngineOptions(-chatglm-cpp -chatglm-cpp-types q8_0) = %+v, %v", o, err)
	}
	if o, err := parseEngineOptions(nil); err != nil || o.withCCPP || len(o.ccppTypes) != len(chatglmCppTypes) {
		t.Fatalf("defaults: %+v, %v", o, err)
	}
}

func TestSummarizeChatGLMCpp(t *testing.T) {
	passes := map[engineConfig][]enginePass{
		{side: "engine", batch: 8}:                           {{rate: 100}, {rate: 120}, {rate: 110}},
		{side: "engine", batch: 16}:                          {{rate: 150}, {rate: 90}, {rate: 160}},
		{side: ccppSideName, weightType: "f32"}:              {{rate: 20, cpuMS: 90}, {rate: 30, cpuMS: 70}, {rate: 25, cpuMS: 80}},
		{side: ccppSideName, weightType: "q4_0"}:             {{rate: 40, cpuMS: 50}, {rate: 50, cpuMS: 40}, {rate: 10, cpuMS: 45}},
		{side: "transformers", batch: 8, strategy: "kv"}:     {{rate: 500}},
		{side: ccppSideName, weightType: "q8_0"}:             nil,
		{side: ccppSideName, weightType: "f16", batch: 1000}: {{rate: 1000}}, // not a chatglm.cpp configuration
	}
	best := engineBestRate(passes)
	if best != 150 {
		t.Fatalf("engineBestRate = %v, want 150 (median of batch 16)", best)
	}
	s := summarizeChatGLMCpp([]string{"f32", "q8_0", "q4_0", "f16"}, passes, best)
	if s.fastest != "q4_0" || s.rates["q4_0"] != 40 || s.rates["f32"] != 25 || s.cpuMS["f32"] != 80 {
		t.Fatalf("summary = %+v, want q4_0 fastest at 40 msgs/s, f32 at 25 and 80 CPU ms", s)
	}
	if _, ok := s.rates["q8_0"]; ok {
		t.Errorf("q8_0 without passes has a rate: %+v", s)
	}
	if math.Abs(s.ratio-150.0/40) > 1e-12 {
		t.Errorf("ratio = %v, want %v", s.ratio, 150.0/40)
	}
	if s := summarizeChatGLMCpp([]string{"f32"}, map[engineConfig][]enginePass{}, 10); !math.IsNaN(s.ratio) {
		t.Errorf("ratio without chatglm.cpp passes = %v, want NaN", s.ratio)
	}
}

func TestCCPPAgreement(t *testing.T) {
	engine := [][]float64{{-1, -2, -3}, {-3, -1, -2}}
	close := [][]float64{{-1.001, -2, -3}, {-3, -1, -2.002}}
	got, err := ccppAgreement("f32", engine, close)
	if err != nil || !strings.Contains(got, "100.0%") {
		t.Fatalf("close f32: %q, %v", got, err)
	}
	far := [][]float64{{-1, -2, -3}, {-1, -3, -2}}
	if _, err := ccppAgreement("f32", engine, far); err == nil {
		t.Error("f32 off by 2 accepted")
	}
	got, err = ccppAgreement("q4_0", engine, far)
	if err != nil || !strings.Contains(got, "50.0%") {
		t.Errorf("q4_0 is only described: %q, %v", got, err)
	}
	if _, err := ccppAgreement("q4_0", engine, far[:1]); err == nil {
		t.Error("a missing message accepted")
	}
	if _, err := ccppAgreement("q4_0", engine, [][]float64{{-1}, {-1}}); err == nil {
		t.Error("a missing label accepted")
	}
}
