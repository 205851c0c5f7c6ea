package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
)

// hfSide is a running tools/reference/bench_hf.py: it scores the workload
// with transformers when asked, one request at a time, so that its runs
// interleave with the engine's and both see the same machine load.
type hfSide struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Scanner
}

// hfRequest and hfAnswer are bench_hf.py's protocol, one JSON object a line.
type hfRequest struct {
	DType    string `json:"dtype"`
	Batch    int    `json:"batch"`
	Strategy string `json:"strategy"`
	LogProbs bool   `json:"logprobs"`
}

type hfAnswer struct {
	Seconds    float64     `json:"seconds"`
	CPUSeconds float64     `json:"cpu_seconds"`
	Messages   int         `json:"messages"`
	LogProbs   [][]float64 `json:"logprobs"`
}

// startHF starts bench_hf.py on modelDir and the workload file.
func startHF(python, script, modelDir, workloadPath, attention string, threads int) (*hfSide, error) {
	cmd := exec.Command(python, script, "--model", modelDir, "--workload", workloadPath,
		"--threads", strconv.Itoa(threads), "--attention", attention)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("transformers side: %w", err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, fmt.Errorf("transformers side: %w", err)
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("transformers side (%s): %w", python, err)
	}
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 1<<20), 256<<20) // log-probabilities of every message
	return &hfSide{cmd: cmd, in: in, out: sc}, nil
}

// run asks for one pass over the workload.
func (h *hfSide) run(req hfRequest) (hfAnswer, error) {
	b, err := json.Marshal(req)
	if err != nil {
		return hfAnswer{}, err
	}
	if _, err := h.in.Write(append(b, '\n')); err != nil {
		return hfAnswer{}, fmt.Errorf("transformers side: %w", err)
	}
	if !h.out.Scan() {
		if err := h.out.Err(); err != nil {
			return hfAnswer{}, fmt.Errorf("transformers side: %w", err)
		}
		return hfAnswer{}, fmt.Errorf("transformers side exited without answering %s", b)
	}
	var a hfAnswer
	if err := json.Unmarshal(h.out.Bytes(), &a); err != nil {
		return hfAnswer{}, fmt.Errorf("transformers side answered %q: %w", h.out.Text(), err)
	}
	return a, nil
}

// close ends the process (end of input) and waits for it.
func (h *hfSide) close() error {
	h.in.Close()
	if err := h.cmd.Wait(); err != nil {
		return fmt.Errorf("transformers side: %w", err)
	}
	return nil
}
